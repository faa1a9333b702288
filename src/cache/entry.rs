//! A cached response: status, end-to-end headers and the body exactly as the
//! client received it (a whole body, or a stream's SSE frames one by one),
//! with the scope that may read it; and its compact binary form for Redis.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The body of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// A whole (JSON) body.
    Whole(Bytes),
    /// SSE frames, each exactly as it went out, replayed one HTTP frame each.
    Frames(Vec<Bytes>),
}

/// One cached response.
#[derive(Debug, Clone)]
pub struct Entry {
    pub status: u16,
    /// End-to-end response headers (no length or framing headers).
    pub headers: HeaderMap,
    pub body: Stored,
    /// The scope id that stored it; an entry is served only to this scope.
    pub scope: String,
    /// The provider that actually answered.
    pub provider: String,
    /// When it was stored (Unix milliseconds), for replicas and the CLI.
    pub created_ms: u64,
    /// How long it lives from `created_ms`.
    pub ttl: Duration,
}

/// A stored entry could not be read back (another version wrote it, or it
/// was damaged).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a kt cache entry (bad magic)")]
    Magic,
    #[error("cache entry truncated")]
    Truncated,
    #[error("cache entry holds an invalid header")]
    Header,
    #[error("cache entry holds invalid text")]
    Text,
}

const MAGIC: &[u8; 4] = b"KTC1";

impl Entry {
    /// Bytes the entry holds (what the size limits count).
    pub fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        let body = match &self.body {
            Stored::Whole(b) => b.len(),
            Stored::Frames(f) => f.iter().map(Bytes::len).sum(),
        };
        headers + body + self.scope.len() + self.provider.len() + 64
    }

    /// True for a streamed (SSE) response.
    pub fn is_stream(&self) -> bool {
        matches!(self.body, Stored::Frames(_))
    }

    /// Time left to live at `now_ms` (Unix milliseconds); zero once expired.
    pub fn remaining(&self, now_ms: u64) -> Duration {
        let age = Duration::from_millis(now_ms.saturating_sub(self.created_ms));
        self.ttl.saturating_sub(age)
    }

    /// The binary form: magic, fixed fields, then length-prefixed parts.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.size() + 64);
        b.put_slice(MAGIC);
        b.put_u16(self.status);
        b.put_u64(self.created_ms);
        b.put_u64(self.ttl.as_millis() as u64);
        put(&mut b, self.scope.as_bytes());
        put(&mut b, self.provider.as_bytes());
        b.put_u32(self.headers.len() as u32);
        for (k, v) in &self.headers {
            put(&mut b, k.as_str().as_bytes());
            put(&mut b, v.as_bytes());
        }
        match &self.body {
            Stored::Whole(body) => {
                b.put_u8(0);
                put(&mut b, body);
            }
            Stored::Frames(frames) => {
                b.put_u8(1);
                b.put_u32(frames.len() as u32);
                for f in frames {
                    put(&mut b, f);
                }
            }
        }
        b.freeze()
    }

    /// Reads [`Entry::encode`]'s output; body parts share `raw`'s memory.
    pub fn decode(mut raw: Bytes) -> Result<Entry, DecodeError> {
        if raw.len() < MAGIC.len() || &raw[..MAGIC.len()] != MAGIC {
            return Err(DecodeError::Magic);
        }
        raw.advance(MAGIC.len());
        let status = get_u16(&mut raw)?;
        let created_ms = get_u64(&mut raw)?;
        let ttl = Duration::from_millis(get_u64(&mut raw)?);
        let scope = text(get(&mut raw)?)?;
        let provider = text(get(&mut raw)?)?;
        let count = get_u32(&mut raw)?;
        let mut headers = HeaderMap::new();
        for _ in 0..count {
            let name = HeaderName::from_bytes(&get(&mut raw)?).map_err(|_| DecodeError::Header)?;
            let value =
                HeaderValue::from_maybe_shared(get(&mut raw)?).map_err(|_| DecodeError::Header)?;
            headers.append(name, value);
        }
        let body = match get_u8(&mut raw)? {
            0 => Stored::Whole(get(&mut raw)?),
            _ => {
                let n = get_u32(&mut raw)?;
                // Each frame needs at least its 4-byte length: a bogus count
                // cannot make this allocate more than the input.
                if n as usize > raw.len() / 4 {
                    return Err(DecodeError::Truncated);
                }
                let mut frames = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    frames.push(get(&mut raw)?);
                }
                Stored::Frames(frames)
            }
        };
        Ok(Entry {
            status,
            headers,
            body,
            scope,
            provider,
            created_ms,
            ttl,
        })
    }
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn put(b: &mut BytesMut, part: &[u8]) {
    b.put_u32(part.len() as u32);
    b.put_slice(part);
}

fn get(raw: &mut Bytes) -> Result<Bytes, DecodeError> {
    let n = get_u32(raw)? as usize;
    if raw.len() < n {
        return Err(DecodeError::Truncated);
    }
    Ok(raw.split_to(n))
}

fn text(b: Bytes) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Text)
}

fn get_u8(raw: &mut Bytes) -> Result<u8, DecodeError> {
    raw.try_get_u8().map_err(|_| DecodeError::Truncated)
}

fn get_u16(raw: &mut Bytes) -> Result<u16, DecodeError> {
    raw.try_get_u16().map_err(|_| DecodeError::Truncated)
}

fn get_u32(raw: &mut Bytes) -> Result<u32, DecodeError> {
    raw.try_get_u32().map_err(|_| DecodeError::Truncated)
}

fn get_u64(raw: &mut Bytes) -> Result<u64, DecodeError> {
    raw.try_get_u64().map_err(|_| DecodeError::Truncated)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(body: Stored) -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        headers.append("x-request-id", HeaderValue::from_static("req_1"));
        Entry {
            status: 200,
            headers,
            body,
            scope: "team:default".into(),
            provider: "openai".into(),
            created_ms: 1_700_000_000_000,
            ttl: Duration::from_secs(3600),
        }
    }

    #[test]
    fn entries_round_trip() {
        for body in [
            Stored::Whole(Bytes::from_static(b"{\"a\":1}")),
            Stored::Frames(vec![
                Bytes::from_static(b"data: {\"x\":1}\n\n"),
                Bytes::from_static(b"data: [DONE]\n\n"),
            ]),
            Stored::Frames(vec![]),
        ] {
            let e = sample(body);
            let back = Entry::decode(e.encode()).unwrap();
            assert_eq!(back.status, e.status);
            assert_eq!(back.headers, e.headers);
            assert_eq!(back.body, e.body);
            assert_eq!(back.scope, e.scope);
            assert_eq!(back.provider, e.provider);
            assert_eq!(back.created_ms, e.created_ms);
            assert_eq!(back.ttl, e.ttl);
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let raw = sample(Stored::Frames(vec![Bytes::from_static(b"data: x\n\n")])).encode();
        for cut in 0..raw.len() {
            assert!(Entry::decode(raw.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert!(matches!(
            Entry::decode(Bytes::from_static(b"XXXX")),
            Err(DecodeError::Magic)
        ));
    }

    #[test]
    fn remaining_time_counts_down_to_zero() {
        let e = sample(Stored::Whole(Bytes::new()));
        assert_eq!(e.remaining(e.created_ms), Duration::from_secs(3600));
        assert_eq!(
            e.remaining(e.created_ms + 3_599_000),
            Duration::from_secs(1)
        );
        assert_eq!(e.remaining(e.created_ms + 4_000_000), Duration::ZERO);
    }
}
