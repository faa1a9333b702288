//! Addresses kt never dials, whatever a client asks: link-local ranges and
//! the cloud metadata endpoints inside them (169.254.169.254,
//! fd00:ec2::254). A gateway on a cloud VM or in a pod could otherwise be
//! used to read the instance's credentials. Checked on every resolved
//! address, so a host name that points there is refused too.

use std::net::{IpAddr, Ipv6Addr};

/// AWS's IPv6 instance metadata endpoint (outside the link-local range).
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// Whether kt refuses to connect to `ip`.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_forbidden(IpAddr::V4(v4));
            }
            // fe80::/10
            (v6.segments()[0] & 0xffc0) == 0xfe80 || v6 == AWS_METADATA_V6
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_link_local_addresses_are_forbidden() {
        for bad in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "febf::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_forbidden(bad.parse().unwrap()), "{bad}");
        }
        for ok in [
            "127.0.0.1",
            "10.0.0.1",
            "169.253.255.255",
            "1.1.1.1",
            "::1",
            "fec0::1",
            "fd00:ec2::253",
            "2001:db8::1",
        ] {
            assert!(!is_forbidden(ok.parse().unwrap()), "{ok}");
        }
    }
}
