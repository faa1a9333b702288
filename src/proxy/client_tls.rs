//! Why a client's TLS handshake with kt failed on an intercepted connection,
//! and the counters `/metrics` shows for it: a client that does not trust
//! the kt CA fails here, before any request, so nothing else records it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The cause of a failed client handshake, from what the client said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTlsFailure {
    /// The client sent the `unknown_ca` alert: it does not trust the kt CA
    /// (OpenSSL, curl, Python, rustls).
    UntrustedCa,
    /// The client refused the certificate with another certificate alert
    /// (`bad_certificate`, Go's answer to an unknown CA, or
    /// `certificate_unknown`, Chromium's, `unsupported_certificate`,
    /// `..._expired`).
    CertificateRejected,
    /// The client closed the connection mid-handshake without an alert:
    /// what Node.js (so VS Code extensions) does when it does not trust
    /// the kt CA over TLS 1.3.
    Closed,
    /// The handshake did not finish within the client TLS handshake limit.
    Timeout,
    /// Anything else: no common protocol version or cipher, a malformed
    /// ClientHello, another alert.
    Protocol,
    /// kt could not mint a certificate for the name.
    NoCertificate,
}

impl ClientTlsFailure {
    pub const ALL: [ClientTlsFailure; 6] = [
        ClientTlsFailure::UntrustedCa,
        ClientTlsFailure::CertificateRejected,
        ClientTlsFailure::Closed,
        ClientTlsFailure::Timeout,
        ClientTlsFailure::Protocol,
        ClientTlsFailure::NoCertificate,
    ];

    /// The `reason` label and event text.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientTlsFailure::UntrustedCa => "untrusted_ca",
            ClientTlsFailure::CertificateRejected => "certificate_rejected",
            ClientTlsFailure::Closed => "closed",
            ClientTlsFailure::Timeout => "timeout",
            ClientTlsFailure::Protocol => "protocol",
            ClientTlsFailure::NoCertificate => "no_certificate",
        }
    }

    /// Classifies a handshake error as tokio-rustls reports it: TLS errors
    /// (a received alert among them) wrapped in an `io::Error`, and plain
    /// I/O errors for the connection itself.
    pub fn of(e: &std::io::Error) -> ClientTlsFailure {
        use rustls::AlertDescription as A;
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return match tls {
                rustls::Error::AlertReceived(A::UnknownCA) => ClientTlsFailure::UntrustedCa,
                rustls::Error::AlertReceived(
                    A::BadCertificate
                    | A::UnsupportedCertificate
                    | A::CertificateRevoked
                    | A::CertificateExpired
                    | A::CertificateUnknown,
                ) => ClientTlsFailure::CertificateRejected,
                _ => ClientTlsFailure::Protocol,
            };
        }
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe => ClientTlsFailure::Closed,
            _ => ClientTlsFailure::Protocol,
        }
    }

    /// What a user should do about it, for the log line and the event.
    pub fn hint(self) -> &'static str {
        match self {
            ClientTlsFailure::UntrustedCa | ClientTlsFailure::CertificateRejected => {
                "the client does not trust the kt CA: run `kt ca install` on its machine \
                 (Node.js and VS Code also need NODE_EXTRA_CA_CERTS at launch; see `kt doctor`)"
            }
            ClientTlsFailure::Closed => {
                "the client hung up during the handshake: Node.js clients (VS Code extensions) \
                 and the JDK do this when they do not trust the kt CA; launch Node with \
                 NODE_EXTRA_CA_CERTS set, and give a JDK the CA as `kt ca install` says \
                 (see `kt doctor`)"
            }
            ClientTlsFailure::Timeout => "the client stopped answering during the handshake",
            ClientTlsFailure::Protocol => {
                "the client and kt share no TLS version or cipher, or it sent malformed TLS"
            }
            ClientTlsFailure::NoCertificate => "kt could not mint a certificate for the name",
        }
    }
}

/// A client that does not trust the CA retries without end: its cause is
/// logged at most this often (the counters see every one).
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Failed client handshakes by cause, and the intercepted connections a
/// client closed after a good handshake without sending a request.
#[derive(Debug)]
pub struct ClientTlsStats {
    failures: [AtomicU64; ClientTlsFailure::ALL.len()],
    unused: AtomicU64,
    /// Per cause: when it was last logged, in ms after `start` (+1; 0 =
    /// never).
    logged_at: [AtomicU64; ClientTlsFailure::ALL.len()],
    start: Instant,
}

impl Default for ClientTlsStats {
    fn default() -> Self {
        ClientTlsStats {
            failures: Default::default(),
            unused: AtomicU64::new(0),
            logged_at: Default::default(),
            start: Instant::now(),
        }
    }
}

impl ClientTlsStats {
    /// Counts `failure`; true when it should be logged (the first of its
    /// cause in [`LOG_EVERY`]).
    pub fn count(&self, failure: ClientTlsFailure) -> bool {
        self.failures[failure as usize].fetch_add(1, Relaxed);
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let slot = &self.logged_at[failure as usize];
        let last = slot.load(Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        due && slot.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
    }

    /// Over TLS 1.2, Node.js finishes the handshake before it checks the
    /// certificate, then closes the connection without a word, so this is
    /// where an untrusted CA shows for it; an unused pre-connection
    /// (browsers, Electron) counts here too.
    pub fn count_unused(&self) {
        self.unused.fetch_add(1, Relaxed);
    }

    /// Every cause with its count, in [`ClientTlsFailure::ALL`] order.
    pub fn failures(&self) -> impl Iterator<Item = (ClientTlsFailure, u64)> + '_ {
        ClientTlsFailure::ALL
            .iter()
            .map(|&f| (f, self.failures[f as usize].load(Relaxed)))
    }

    pub fn unused(&self) -> u64 {
        self.unused.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    fn alert(a: rustls::AlertDescription) -> Error {
        Error::new(ErrorKind::InvalidData, rustls::Error::AlertReceived(a))
    }

    #[test]
    fn alerts_and_io_errors_map_to_their_causes() {
        use rustls::AlertDescription as A;
        let cases = [
            (alert(A::UnknownCA), ClientTlsFailure::UntrustedCa),
            (
                alert(A::BadCertificate),
                ClientTlsFailure::CertificateRejected,
            ),
            (
                alert(A::CertificateUnknown),
                ClientTlsFailure::CertificateRejected,
            ),
            (alert(A::ProtocolVersion), ClientTlsFailure::Protocol),
            (
                Error::new(
                    ErrorKind::InvalidData,
                    rustls::Error::PeerIncompatible(
                        rustls::PeerIncompatible::NoCipherSuitesInCommon,
                    ),
                ),
                ClientTlsFailure::Protocol,
            ),
            (
                Error::new(ErrorKind::UnexpectedEof, "tls handshake eof"),
                ClientTlsFailure::Closed,
            ),
            (
                Error::from(ErrorKind::ConnectionReset),
                ClientTlsFailure::Closed,
            ),
            (Error::other("something else"), ClientTlsFailure::Protocol),
        ];
        for (e, want) in cases {
            assert_eq!(ClientTlsFailure::of(&e), want, "{e}");
        }
    }

    #[test]
    fn counts_are_kept_per_cause() {
        let stats = ClientTlsStats::default();
        // The first of a cause is logged, its repeats within a minute not.
        assert!(stats.count(ClientTlsFailure::UntrustedCa));
        assert!(!stats.count(ClientTlsFailure::UntrustedCa));
        assert!(stats.count(ClientTlsFailure::NoCertificate));
        stats.count_unused();
        let got: Vec<_> = stats.failures().map(|(f, n)| (f.as_str(), n)).collect();
        assert_eq!(
            got,
            [
                ("untrusted_ca", 2),
                ("certificate_rejected", 0),
                ("closed", 0),
                ("timeout", 0),
                ("protocol", 0),
                ("no_certificate", 1)
            ]
        );
        assert_eq!(stats.unused(), 1);
    }
}
