//! Open connections per client address, so that one client (a runaway
//! script, a scan) cannot take the whole connection budget of a shared
//! gateway. Peers listed in `auth.trusted_proxies` (load balancers, which
//! carry everybody's connections) are not limited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The per-address counts; shared by the accept loop and the connections.
#[derive(Debug)]
pub struct PerClient {
    limit: usize,
    exempt: Vec<ipnet::IpNet>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct Slot {
    owner: Option<Arc<PerClient>>,
    ip: IpAddr,
}

impl PerClient {
    /// At most `limit` open connections per address (0: no limit).
    pub fn new(limit: usize, exempt: &[ipnet::IpNet]) -> Arc<PerClient> {
        Arc::new(PerClient {
            limit,
            exempt: exempt.to_vec(),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a new connection from `ip`, or `None` when it already
    /// has `limit` open. An IPv4 client of a dual-stack listener comes as
    /// `::ffff:a.b.c.d`: it is counted, and matched against IPv4 exempt
    /// networks, as the IPv4 address it is.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = ip.to_canonical();
        if self.limit == 0 || self.exempt.iter().any(|n| n.contains(&ip)) {
            return Some(Slot { owner: None, ip });
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            owner: Some(self.clone()),
            ip,
        })
    }

    /// Open connections from `ip` (for tests and logs).
    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&ip).copied().unwrap_or(0)
    }

    /// The limit in force (0: none).
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(owner) = &self.owner else { return };
        let mut open = owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // Keeps the map as small as the set of connected clients.
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_budget_and_slots_come_back() {
        let pc = PerClient::new(2, &["10.0.0.0/8".parse().unwrap()]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = pc.admit(a).unwrap();
        let _s2 = pc.admit(a).unwrap();
        assert!(pc.admit(a).is_none(), "a third from the same address");
        assert!(pc.admit(b).is_some(), "another address is not affected");
        drop(s1);
        assert_eq!(pc.open(a), 1);
        assert!(pc.admit(a).is_some(), "a closed connection frees its slot");
        let lb: IpAddr = "10.1.2.3".parse().unwrap();
        let held: Vec<_> = (0..10).map(|_| pc.admit(lb).unwrap()).collect();
        assert_eq!(held.len(), 10, "trusted proxies are not limited");
        assert_eq!(pc.open(lb), 0);
    }

    #[test]
    fn zero_means_no_limit_and_the_map_empties() {
        let pc = PerClient::new(0, &[]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<_> = (0..100).map(|_| pc.admit(a).unwrap()).collect();
        assert_eq!(held.len(), 100);
        let limited = PerClient::new(5, &[]);
        let slots: Vec<_> = (0..5).map(|_| limited.admit(a).unwrap()).collect();
        drop(slots);
        assert!(limited.open.lock().unwrap().is_empty());
    }

    #[test]
    fn an_ipv4_client_of_a_dual_stack_listener_is_its_ipv4_address() {
        let pc = PerClient::new(1, &["10.0.0.0/8".parse().unwrap()]);
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let _held = pc.admit(mapped).unwrap();
        assert_eq!(pc.open("192.0.2.1".parse().unwrap()), 1);
        assert!(pc.admit("192.0.2.1".parse().unwrap()).is_none());
        let lb: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| pc.admit(lb).unwrap()).collect();
        assert_eq!(held.len(), 3, "a trusted proxy on IPv4 is exempt");
    }
}
