//! The canonical JSON of an [`Event`], written field by field.
//!
//! The output is byte for byte what serde_json writes for the derived
//! `Serialize` (fields in declaration order, which is sorted; absent ones
//! skipped; serde_json's escapes and number formats), and the tests hold it
//! to that. It exists because the writer thread seals every event on the
//! gateway's own core, and serde's generic path spent most of a seal escaping
//! strings that need no escaping.

use super::Event;
use crate::llm::json_text::encode_str_into;

/// Appends the canonical JSON of `event` without its `hash` to `out`, and
/// returns the offset in `out` where `,"hash":…` belongs.
pub(super) fn write_event(event: &Event, out: &mut Vec<u8>) -> Result<usize, serde_json::Error> {
    let e = event;
    out.extend_from_slice(b"{\"action\":\"");
    out.extend_from_slice(e.action.as_str().as_bytes());
    out.push(b'"');
    let mut w = Fields { out };
    w.opt_str("api", e.api.as_deref());
    if let Some(b) = e.cache_hit {
        w.key("cache_hit");
        w.out.extend_from_slice(if b { b"true" } else { b"false" });
    }
    w.opt_str("client_ip", e.client_ip.as_deref());
    w.opt_f64("cost_saved_usd", e.cost_saved_usd)?;
    w.opt_f64("cost_usd", e.cost_usd)?;
    w.opt_str("endpoint", e.endpoint.as_deref());
    let hash_at = w.out.len();
    w.opt_str("host", e.host.as_deref());
    w.str("id", &e.id);
    w.opt_u64("latency_ms", e.latency_ms);
    w.opt_str("method", e.method.as_deref());
    w.opt_str("mode", e.mode.map(|m| m.as_str()));
    w.opt_str("model", e.model.as_deref());
    w.opt_u64("overhead_us", e.overhead_us);
    w.opt_str("path", e.path.as_deref());
    w.str("phase", e.phase.as_str());
    w.opt_str("policy", e.policy.as_deref());
    w.opt_u64("policy_us", e.policy_us);
    if !e.prev_hash.is_empty() {
        w.str("prev_hash", &e.prev_hash);
    }
    w.opt_str("provider", e.provider.as_deref());
    w.opt_str("reason", e.reason.as_deref());
    if let Some(counts) = &e.redactions {
        w.key("redactions");
        w.out.push(b'{');
        for (i, (kind, n)) in counts.iter().enumerate() {
            if i > 0 {
                w.out.push(b',');
            }
            w.string(kind);
            w.out.push(b':');
            w.u64(*n);
        }
        w.out.push(b'}');
    }
    w.opt_str("request_body", e.request_body.as_deref());
    w.opt_str("request_id", e.request_id.as_deref());
    w.opt_str("response_body", e.response_body.as_deref());
    w.opt_u64("status", e.status.map(u64::from));
    w.opt_str("team", e.team.as_deref());
    w.opt_u64("tokens_in", e.tokens_in);
    w.opt_u64("tokens_out", e.tokens_out);
    w.str("ts", &e.ts);
    w.opt_u64("upstream_ms", e.upstream_ms);
    w.opt_str("usage_source", e.usage_source.as_deref());
    w.opt_str("user", e.user.as_deref());
    w.out.push(b'}');
    Ok(hash_at)
}

/// Every field after the first: `,"key":value`.
struct Fields<'a> {
    out: &'a mut Vec<u8>,
}

impl Fields<'_> {
    /// `key` is one of the struct's field names: plain ASCII, no escapes.
    #[inline(always)]
    fn key(&mut self, key: &str) {
        self.out.extend_from_slice(b",\"");
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    #[inline(always)]
    fn string(&mut self, s: &str) {
        self.out.push(b'"');
        encode_str_into(s, self.out);
        self.out.push(b'"');
    }

    #[inline(always)]
    fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        self.string(value);
    }

    #[inline(always)]
    fn opt_str(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.str(key, v);
        }
    }

    #[inline(always)]
    fn u64(&mut self, n: u64) {
        self.out
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }

    #[inline(always)]
    fn opt_u64(&mut self, key: &str, value: Option<u64>) {
        if let Some(n) = value {
            self.key(key);
            self.u64(n);
        }
    }

    /// serde_json's own float formatting (shortest round-trip form, `null`
    /// for non-finite values), so the bytes cannot drift from it.
    fn opt_f64(&mut self, key: &str, value: Option<f64>) -> Result<(), serde_json::Error> {
        if let Some(v) = value {
            self.key(key);
            serde_json::to_writer(&mut *self.out, &v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::events::{Action, Mode, Phase};
    use rand::{Rng, SeedableRng};

    /// The stored form: the canonical JSON with the hash spliced in.
    fn hand(e: &Event) -> String {
        let mut out = Vec::new();
        let at = write_event(e, &mut out).unwrap();
        if !e.hash.is_empty() {
            let field = format!(",\"hash\":\"{}\"", e.hash);
            out.splice(at..at, field.into_bytes());
        }
        String::from_utf8(out).unwrap()
    }

    fn full() -> Event {
        let mut e = Event::new(Phase::Output, Action::Redact);
        e.api = Some("openai-chat".into());
        e.cache_hit = Some(true);
        e.client_ip = Some("::1".into());
        e.cost_saved_usd = Some(0.1 + 0.2);
        e.cost_usd = Some(1e-7);
        e.endpoint = Some("chat/completions".into());
        e.hash = "a".repeat(64);
        e.host = Some("api.openai.com".into());
        e.latency_ms = Some(u64::MAX);
        e.method = Some("POST".into());
        e.mode = Some(Mode::Direct);
        e.model = Some("gpt-4o".into());
        e.overhead_us = Some(0);
        e.path = Some("/v1/chat/completions?x=\"1\"".into());
        e.policy = Some("no-secrets".into());
        e.policy_us = Some(12);
        e.prev_hash = "b".repeat(64);
        e.provider = Some("openai".into());
        e.reason = Some("tab\there, newline\n, quote \" and \\ backslash".into());
        e.redactions = Some([("b\u{1}".to_string(), 1), ("a".to_string(), 2)].into());
        e.request_body = Some("{\"k\":\"ünïcødé ✓ \u{7f} \u{1f}\"}".into());
        e.request_id = Some("r1".into());
        e.response_body = Some(String::new());
        e.status = Some(200);
        e.team = Some("platform".into());
        e.tokens_in = Some(1);
        e.tokens_out = Some(2);
        e.upstream_ms = Some(3);
        e.usage_source = Some("provider".into());
        e.user = Some("dev\u{0}1".into());
        e
    }

    #[test]
    fn matches_serde_json_with_every_field_and_with_none() {
        let e = full();
        assert_eq!(hand(&e), serde_json::to_string(&e).unwrap());
        let bare = Event::new(Phase::Connect, Action::Tunnel);
        assert_eq!(hand(&bare), serde_json::to_string(&bare).unwrap());
    }

    #[test]
    fn floats_are_formatted_as_serde_json_does() {
        for v in [
            0.0,
            -0.0,
            1.0,
            0.3,
            1e21,
            1e-300,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::NAN,
            f64::INFINITY,
        ] {
            let mut e = Event::new(Phase::Output, Action::Pass);
            e.cost_usd = Some(v);
            assert_eq!(hand(&e), serde_json::to_string(&e).unwrap(), "{v}");
        }
    }

    #[test]
    fn random_text_is_escaped_as_serde_json_does() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Control characters, quotes, backslashes, ASCII and multi-byte
        // characters in every mix.
        let alphabet: Vec<char> = (0u32..0x80)
            .filter_map(char::from_u32)
            .chain(['é', 'ß', '✓', '😀', '\u{2028}', '\u{fffd}'])
            .collect();
        for _ in 0..2_000 {
            let len = rng.random_range(0..40);
            let text: String = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect();
            let mut e = full();
            e.reason = Some(text.clone());
            e.user = Some(text.as_str().into());
            e.redactions = Some([(text, 3)].into());
            assert_eq!(hand(&e), serde_json::to_string(&e).unwrap());
        }
    }

    #[test]
    fn the_hash_goes_where_serde_puts_it_with_or_without_a_host() {
        for with_host in [true, false] {
            let mut e = full();
            if !with_host {
                e.host = None;
                e.endpoint = None;
            }
            assert_eq!(hand(&e), serde_json::to_string(&e).unwrap());
            let mut canonical = Vec::new();
            write_event(&e, &mut canonical).unwrap();
            e.hash.clear();
            assert_eq!(canonical, serde_json::to_vec(&e).unwrap());
        }
    }
}
