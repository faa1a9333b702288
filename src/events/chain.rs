//! Canonical JSON and the SHA-256 hash chain linking each event to the one before.
//!
//! `hash = hex(SHA-256(prev_hash || canonical_json(event without hash)))`,
//! with `prev_hash` taken as its 64 ASCII hex digits. Canonical JSON is
//! `serde_json`'s compact output of a `Value` whose objects are `BTreeMap`s
//! (the `preserve_order` feature is off), so keys come out sorted.
//!
//! A stored line is the canonical JSON of the whole event (with `hash`).
//! Because keys are sorted and `action` always precedes `hash`, removing the
//! text `,"hash":"<hex>"` from a line gives back exactly the bytes that were
//! hashed. Verification works on those stored bytes, never on a re-serialised
//! parse, so it cannot be fooled or tripped by float round-tripping.

use super::Event;
use sha2::{Digest, Sha256};

/// `prev_hash` of the very first event of a brand new log.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The canonical JSON of `event` without its `hash`, and the full stored line
/// (canonical JSON with `hash`, no trailing newline), with `hash` computed
/// from `event.prev_hash`. `event.hash` is set as a side effect.
pub fn seal(event: &mut Event) -> Result<String, serde_json::Error> {
    let mut line = Vec::with_capacity(1024);
    seal_into(event, &mut Vec::with_capacity(1024), &mut line)?;
    // serde_json writes UTF-8 only, and the splice adds ASCII.
    String::from_utf8(line).map_err(serde::ser::Error::custom)
}

/// [`seal`], appending the stored line to `out` and using `scratch` for the
/// canonical form: the writer reuses both buffers across a batch, so
/// sealing allocates only the hash.
pub fn seal_into(
    event: &mut Event,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), serde_json::Error> {
    event.hash.clear();
    scratch.clear();
    let hash_at = super::json::write_event(event, scratch)?;
    event.hash = hash_of(&event.prev_hash, scratch);
    // The stored line is the canonical form with `"hash"` in its sorted
    // place, which the writer reported: splicing saves writing it twice.
    out.extend_from_slice(&scratch[..hash_at]);
    out.extend_from_slice(b",\"hash\":\"");
    out.extend_from_slice(event.hash.as_bytes());
    out.push(b'"');
    out.extend_from_slice(&scratch[hash_at..]);
    Ok(())
}

/// `hex(SHA-256(prev_hash || canonical))`.
pub fn hash_of(prev_hash: &str, canonical: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(canonical);
    let mut out = [0u8; 64];
    // 32 bytes always fit 64 hex digits; `hex::encode` would go char by char.
    if hex::encode_to_slice(h.finalize(), &mut out).is_err() {
        return String::new();
    }
    std::str::from_utf8(&out)
        .map(str::to_owned)
        .unwrap_or_default()
}

/// The bytes that were hashed for a stored `line` whose `hash` field is
/// `hash`: the line with `,"hash":"<hash>"` removed. `None` when that text is
/// not in the line exactly once.
pub fn unsealed(line: &str, hash: &str) -> Option<String> {
    let needle = format!(",\"hash\":{}", serde_json::Value::from(hash));
    let mut found = line.match_indices(&needle);
    let (at, _) = found.next()?;
    if found.next().is_some() {
        return None;
    }
    let mut out = String::with_capacity(line.len() - needle.len());
    out.push_str(&line[..at]);
    out.push_str(&line[at + needle.len()..]);
    Some(out)
}

/// Whether `s` looks like a hash: 64 lower-case hex digits.
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Action, Phase};

    #[test]
    fn direct_serialization_is_the_sorted_value_form() {
        let mut e = Event::new(Phase::Output, Action::Redact);
        e.policy = Some("p".into());
        e.reason = Some("r".into());
        e.mode = Some(crate::events::Mode::Proxy);
        e.provider = Some("openai".into());
        e.host = Some("h".into());
        e.method = Some("POST".into());
        e.path = Some("/v1".into());
        e.endpoint = Some("chat/completions".into());
        e.api = Some("openai-chat".into());
        e.model = Some("m".into());
        e.user = Some("u".into());
        e.team = Some("t".into());
        e.status = Some(200);
        e.latency_ms = Some(1);
        e.upstream_ms = Some(1);
        e.policy_us = Some(1);
        e.tokens_in = Some(1);
        e.tokens_out = Some(1);
        e.cost_usd = Some(0.5);
        e.cache_hit = Some(false);
        e.request_id = Some("x".into());
        e.redactions = Some([("b".to_string(), 1), ("a".to_string(), 2)].into());
        e.prev_hash = GENESIS_HASH.into();
        e.hash = GENESIS_HASH.into();
        let direct = serde_json::to_string(&e).unwrap();
        let sorted = serde_json::to_string(&serde_json::to_value(&e).unwrap()).unwrap();
        assert_eq!(direct, sorted);
    }

    #[test]
    fn seal_matches_the_documented_formula_and_sorts_keys() {
        let mut e = Event::new(Phase::Input, Action::Block);
        e.user = Some("dev1".into());
        e.cost_usd = Some(0.1 + 0.2);
        e.prev_hash = GENESIS_HASH.into();
        let line = seal(&mut e).unwrap();
        assert!(is_hash(&e.hash));
        assert!(!line.contains(' ') && !line.contains('\n'));
        // Sorted keys: action first, user last.
        assert!(line.starts_with(r#"{"action":"block","cost_usd":"#));
        assert!(line.ends_with(r#""user":"dev1"}"#));
        let canonical = unsealed(&line, &e.hash).unwrap();
        assert!(!canonical.contains("\"hash\""));
        let manual = {
            let mut h = Sha256::new();
            h.update(GENESIS_HASH.as_bytes());
            h.update(canonical.as_bytes());
            hex::encode(h.finalize())
        };
        assert_eq!(e.hash, manual);
        // Re-parsing and re-serialising the event gives the same bytes.
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn the_spliced_line_is_the_full_serialization() {
        let mut with_host = Event::new(Phase::Output, Action::Pass);
        with_host.host = Some("api.openai.com".into());
        with_host.endpoint = Some("chat/completions".into());
        with_host.api = Some("openai-chat".into());
        with_host.cost_usd = Some(0.25);
        with_host.reason = Some(r#"x,"host":"y"#.into());
        let without_host = Event::new(Phase::Connect, Action::Tunnel);
        for mut e in [with_host, without_host] {
            e.prev_hash = GENESIS_HASH.into();
            let line = seal(&mut e).unwrap();
            assert_eq!(line, serde_json::to_string(&e).unwrap());
        }
    }

    #[test]
    fn hash_depends_on_prev_hash() {
        let mut a = Event::new(Phase::Input, Action::Pass);
        a.prev_hash = GENESIS_HASH.into();
        let mut b = a.clone();
        b.prev_hash = "1".repeat(64);
        seal(&mut a).unwrap();
        seal(&mut b).unwrap();
        assert_ne!(a.hash, b.hash);
    }

    #[test]
    fn hash_text_inside_values_cannot_confuse_unsealing() {
        let mut e = Event::new(Phase::Input, Action::Pass);
        e.prev_hash = GENESIS_HASH.into();
        e.reason = Some(r#","hash":"x""#.into());
        let line = seal(&mut e).unwrap();
        let canonical = unsealed(&line, &e.hash).unwrap();
        assert_eq!(hash_of(&e.prev_hash, canonical.as_bytes()), e.hash);
        assert_eq!(unsealed(&line, &"f".repeat(64)), None);
    }
}
