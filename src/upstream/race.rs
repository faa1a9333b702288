//! Connecting to a name with several addresses the way RFC 8305 (Happy
//! Eyeballs) asks: the families interleaved, the next address tried once
//! the one before has failed or has had [`ATTEMPT_DELAY`] to answer, the
//! first connection made winning. One address that drops SYNs (a dead
//! IPv6 route, a host gone from a DNS round robin) then costs a quarter of
//! a second instead of the whole connect timeout.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// How long an attempt runs alone before the next address is tried too
/// (RFC 8305 §5 recommends 250 ms).
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// The first connection made to any of `addrs`, tried in the order
/// [`interleave`] gives; the last error when none connects. The caller
/// bounds the whole race with its connect timeout; the attempts still
/// running when a connection wins, or when the race is dropped, are
/// aborted.
pub async fn first_connected<F, Fut>(addrs: Vec<SocketAddr>, connect: F) -> io::Result<TcpStream>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = io::Result<TcpStream>> + Send + 'static,
{
    let mut queue = interleave(addrs).into_iter();
    let mut attempts = JoinSet::new();
    let mut last = None;
    loop {
        if attempts.is_empty() {
            match queue.next() {
                Some(sa) => {
                    attempts.spawn(connect(sa));
                }
                None => {
                    return Err(last.unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, "the name has no addresses")
                    }))
                }
            }
        }
        tokio::select! {
            done = attempts.join_next() => match done {
                Some(Ok(Ok(stream))) => return Ok(stream),
                Some(Ok(Err(e))) => {
                    last = Some(e);
                    // A failure starts the next attempt at once.
                    if let Some(sa) = queue.next() {
                        attempts.spawn(connect(sa));
                    }
                }
                // An attempt's task panicked or was aborted: as failed.
                Some(Err(e)) => last = Some(io::Error::other(e)),
                None => {}
            },
            _ = tokio::time::sleep(ATTEMPT_DELAY), if queue.len() > 0 => {
                if let Some(sa) = queue.next() {
                    attempts.spawn(connect(sa));
                }
            }
        }
    }
}

/// `addrs` with the address families alternating, starting with the
/// family of the first (the resolver's preference): a family that does
/// not work costs one attempt delay, not one per address of it.
pub fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first_v6) = addrs.first().map(SocketAddr::is_ipv6) else {
        return addrs;
    };
    let (mut preferred, mut other): (Vec<_>, Vec<_>) =
        addrs.into_iter().partition(|a| a.is_ipv6() == first_v6);
    let mut out = Vec::with_capacity(preferred.len() + other.len());
    preferred.reverse();
    other.reverse();
    loop {
        match (preferred.pop(), other.pop()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn families_alternate_from_the_first() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let got = interleave(vec![
            a("[::1]:1"),
            a("[::2]:1"),
            a("[::3]:1"),
            a("10.0.0.1:1"),
            a("10.0.0.2:1"),
        ]);
        assert_eq!(
            got,
            [
                a("[::1]:1"),
                a("10.0.0.1:1"),
                a("[::2]:1"),
                a("10.0.0.2:1"),
                a("[::3]:1")
            ]
        );
        assert!(interleave(Vec::new()).is_empty());
    }

    /// A listener whose accept queue is full: the kernel drops further
    /// SYNs, so a connect to it hangs, as to a dead route.
    fn black_hole() -> (std::net::TcpListener, Vec<std::net::TcpStream>, SocketAddr) {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&any.into()).unwrap();
        socket.listen(0).unwrap();
        let listener: std::net::TcpListener = socket.into();
        let addr = listener.local_addr().unwrap();
        // Fill the queue (one slot, and one more on some kernels).
        let fill = (0..2)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
            })
            .collect();
        (listener, fill, addr)
    }

    #[tokio::test]
    async fn an_address_that_never_answers_costs_one_attempt_delay() {
        let (_hole, _fill, dead) = black_hole();
        let good = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good_addr = good.local_addr().unwrap();
        let race = first_connected(vec![dead, good_addr], TcpStream::connect::<SocketAddr>);
        // Far below the kernel's SYN retries (a minute and more).
        let stream = tokio::time::timeout(Duration::from_secs(10), race)
            .await
            .expect("the race waited for the dead address")
            .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), good_addr);
    }

    #[tokio::test]
    async fn the_last_error_is_returned_when_nothing_connects() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let err = first_connected(vec![closed, closed], TcpStream::connect::<SocketAddr>)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        let none = first_connected(Vec::new(), TcpStream::connect::<SocketAddr>)
            .await
            .unwrap_err();
        assert_eq!(none.kind(), io::ErrorKind::NotFound);
    }
}
