//! Which local addresses listen on a TCP port, and which process owns each
//! (Linux: `/proc/net/tcp{,6}` and the `socket:[inode]` links under
//! `/proc/*/fd`; best effort — other users' processes are not readable
//! without root, and other systems report nothing).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// A listening socket on the port asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    /// `pid (name)` of the owner, when it could be found.
    pub owner: Option<String>,
}

/// The sockets listening on `port`, read from `proc` (normally `/proc`).
pub fn listeners(proc: &Path, port: u16) -> Vec<Listener> {
    let mut found = Vec::new();
    for (file, v6) in [("net/tcp", false), ("net/tcp6", true)] {
        let Ok(table) = std::fs::read_to_string(proc.join(file)) else {
            continue;
        };
        for (addr, inode) in parse_listening(&table, v6) {
            if addr.port() == port {
                found.push((addr, inode));
            }
        }
    }
    if found.is_empty() {
        return Vec::new();
    }
    let owners = owners_of(proc, &found.iter().map(|(_, i)| *i).collect::<Vec<_>>());
    found
        .into_iter()
        .map(|(addr, inode)| Listener {
            addr,
            owner: owners
                .iter()
                .find(|(i, _)| *i == inode)
                .map(|(_, o)| o.clone()),
        })
        .collect()
}

/// `(address, inode)` of the LISTEN rows (state `0A`) of a `/proc/net/tcp`
/// table.
fn parse_listening(table: &str, v6: bool) -> Vec<(SocketAddr, u64)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) != Some(&"0A") {
                return None;
            }
            let (ip, port) = f.get(1)?.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let ip = if v6 { parse_v6(ip)? } else { parse_v4(ip)? };
            let inode = f.get(9)?.parse().ok()?;
            Some((SocketAddr::new(ip, port), inode))
        })
        .collect()
}

/// The kernel prints the address as a host-order (little-endian) u32.
fn parse_v4(hex: &str) -> Option<IpAddr> {
    let n = u32::from_str_radix(hex, 16).ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(n.to_le_bytes())))
}

/// Four host-order u32 words.
fn parse_v6(hex: &str) -> Option<IpAddr> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for w in 0..4 {
        let word = u32::from_str_radix(hex.get(w * 8..w * 8 + 8)?, 16).ok()?;
        bytes[w * 4..w * 4 + 4].copy_from_slice(&word.to_le_bytes());
    }
    let ip = Ipv6Addr::from(bytes);
    Some(match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    })
}

/// `(inode, "pid (name)")` for the processes holding these socket inodes.
fn owners_of(proc: &Path, inodes: &[u64]) -> Vec<(u64, String)> {
    let mut owners = Vec::new();
    let Ok(entries) = std::fs::read_dir(proc) else {
        return owners;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            if inodes.contains(&inode) && !owners.iter().any(|(i, _)| *i == inode) {
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                owners.push((inode, format!("pid {pid} ({})", comm.trim())));
            }
        }
    }
    owners
}

/// True when every listener is on a loopback address.
pub fn loopback_only(listeners: &[Listener]) -> bool {
    !listeners.is_empty() && listeners.iter().all(|l| l.addr.ip().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A0AA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17 1 0000000000000000 100 0 0 10 0
   2: 0100007F:A0AA 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:A0AA 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5151 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn parses_listening_rows_of_both_tables() {
        let v4 = parse_listening(TCP, false);
        assert_eq!(
            v4,
            vec![
                ("127.0.0.1:41130".parse().unwrap(), 4242),
                ("0.0.0.0:22".parse().unwrap(), 17),
            ]
        );
        let v6 = parse_listening(TCP6, true);
        assert_eq!(v6, vec![("[::1]:41130".parse().unwrap(), 5151)]);
    }

    #[test]
    fn finds_the_owner_of_a_socket_in_a_proc_tree() {
        let proc = tempfile::tempdir().unwrap();
        let p = proc.path();
        std::fs::create_dir_all(p.join("net")).unwrap();
        std::fs::write(p.join("net/tcp"), TCP).unwrap();
        std::fs::create_dir_all(p.join("777/fd")).unwrap();
        std::fs::write(p.join("777/comm"), "node\n").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("socket:[4242]", p.join("777/fd/3")).unwrap();
        let found = listeners(p, 41130);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].addr, "127.0.0.1:41130".parse().unwrap());
        if cfg!(unix) {
            assert_eq!(found[0].owner.as_deref(), Some("pid 777 (node)"));
        }
        assert!(loopback_only(&found));
        assert!(listeners(p, 9).is_empty());
    }

    #[test]
    fn finds_this_test_s_own_listener_in_the_real_proc() {
        if !Path::new("/proc/net/tcp").exists() {
            return;
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let found = listeners(Path::new("/proc"), port);
        assert_eq!(found.len(), 1, "{found:?}");
        let me = format!("pid {} (", std::process::id());
        assert!(
            found[0].owner.as_deref().unwrap_or("").starts_with(&me),
            "{found:?}"
        );
    }
}
