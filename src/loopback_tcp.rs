//! Loopback sockets without TCP pacing.
//!
//! On a host whose default congestion control is BBR, every TCP socket
//! paces its sends: after each burst the kernel arms a timer for the next
//! one. Pacing spreads a flow over a bottleneck link; loopback has no link,
//! and arming that timer costs a timer reprogramming per burst (a VM exit
//! on a virtual machine). A proxy pays it on both of its legs: relaying a
//! 1 MiB answer on loopback (an IDE and kt on one laptop, kt and a model
//! server on one machine) cost kt about 800 µs of CPU with it and 600
//! without (the README's performance section has the runs).
//!
//! So a socket whose peer is on this machine gets a congestion control
//! that does not pace (CUBIC, or Reno where only it is allowed), chosen
//! before the connection opens: BBR marks a socket as paced when it takes
//! the connection over, and switching later leaves that mark in place.
//! Sockets to other hosts, and every socket on a host whose default does
//! not pace, keep what the administrator chose.

use std::net::IpAddr;

/// Congestion controls tried in turn; Reno is always allowed to
/// unprivileged processes, CUBIC only where the administrator lists it.
#[cfg(target_os = "linux")]
const UNPACED: [&[u8]; 2] = [b"cubic", b"reno"];

/// True for an address on this machine's loopback (an IPv4-mapped one too).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Gives `socket`, which is about to connect to or listen on `ip`, a
/// congestion control that does not pace when `ip` is a loopback address
/// and the host's default paces. Best effort: a refusal leaves the socket
/// as it was, which is only slower.
#[cfg(target_os = "linux")]
pub fn unpace(socket: &impl std::os::fd::AsFd, ip: IpAddr) {
    if !is_loopback(ip) {
        return;
    }
    let socket = socket2::SockRef::from(socket);
    let Ok(current) = socket.tcp_congestion() else {
        return;
    };
    if !paces(&current) {
        return;
    }
    for name in UNPACED {
        if socket.set_tcp_congestion(name).is_ok() {
            return;
        }
    }
}

/// A listener on `addr`, unpaced from the moment it is bound when `addr`
/// is a loopback address: a connection the kernel completes before the
/// first accept takes the listener's congestion control as it is then, and
/// an IDE reconnecting while the gateway starts up would keep a paced
/// connection for its lifetime.
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    unpace(&listener, addr.ip());
    Ok(listener)
}

/// Other systems do not pace loopback sockets by default.
#[cfg(not(target_os = "linux"))]
pub fn unpace<S>(_socket: &S, _ip: IpAddr) {}

/// True for a congestion control that paces its flows itself (BBR in its
/// versions), by the name the kernel reports (NUL-padded).
#[cfg(target_os = "linux")]
fn paces(name: &[u8]) -> bool {
    name.starts_with(b"bbr")
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn congestion(socket: &impl std::os::fd::AsFd) -> Vec<u8> {
        let mut name = socket2::SockRef::from(socket).tcp_congestion().unwrap();
        name.retain(|&b| b != 0);
        name
    }

    /// `socket`, which `unpace` was given for a loopback peer, no longer
    /// paces where the host's `default` does, and kept a default that
    /// does not.
    fn assert_unpaced(what: &str, socket: &impl std::os::fd::AsFd, default: &[u8]) {
        let got = congestion(socket);
        if paces(default) {
            let got = String::from_utf8_lossy(&got);
            assert!(!paces(got.as_bytes()), "{what} still paces: {got}");
        } else {
            assert_eq!(got, default, "{what} lost a default that does not pace");
        }
    }

    #[test]
    fn recognises_loopback_in_both_families() {
        assert!(is_loopback(Ipv4Addr::new(127, 0, 0, 1).into()));
        assert!(is_loopback(Ipv4Addr::new(127, 3, 2, 1).into()));
        assert!(is_loopback(Ipv6Addr::LOCALHOST.into()));
        assert!(is_loopback(Ipv4Addr::LOCALHOST.to_ipv6_mapped().into()));
        assert!(!is_loopback(Ipv4Addr::new(10, 0, 0, 1).into()));
        assert!(!is_loopback(Ipv6Addr::UNSPECIFIED.into()));
    }

    #[test]
    fn only_a_loopback_socket_on_a_pacing_default_is_switched() {
        let default = congestion(&tokio::net::TcpSocket::new_v4().unwrap());

        let remote = tokio::net::TcpSocket::new_v4().unwrap();
        unpace(&remote, Ipv4Addr::new(192, 0, 2, 1).into());
        assert_eq!(
            congestion(&remote),
            default,
            "a remote peer keeps the host's choice"
        );

        let local = tokio::net::TcpSocket::new_v4().unwrap();
        unpace(&local, Ipv4Addr::LOCALHOST.into());
        assert_unpaced("a loopback socket", &local, &default);
    }

    #[test]
    fn both_ends_of_a_loopback_connection_stay_unpaced_once_open() {
        let default = congestion(&tokio::net::TcpSocket::new_v4().unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let (dialed, accepted) = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            unpace(&listener, addr.ip());
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            unpace(&socket, addr.ip());
            let (dialed, accepted) = tokio::join!(socket.connect(addr), listener.accept());
            (dialed.unwrap(), accepted.unwrap().0)
        });
        assert_unpaced("the dialed end", &dialed, &default);
        assert_unpaced("the accepted end", &accepted, &default);
    }
}
