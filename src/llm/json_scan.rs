//! Finds the top-level members of a JSON object (or of each object in an
//! array) without parsing the rest.
//!
//! Audit and routing read a handful of top-level fields (`model`, `stream`,
//! `usage`) from bodies that are mostly one long string: a prompt with whole
//! files folded in, or an answer's text. A full parse walks every byte of
//! that text through a tokenizer; this scanner jumps from quote to quote
//! with `memchr`, counts brackets outside strings, and hands the value of a
//! wanted member to serde, which reads just that value.
//!
//! What it checks: the document is one object; its members are
//! `"key": value` separated by commas; strings end; brackets nest and match.
//! What it does not: the spelling of numbers and literals inside values it
//! skips. A body it accepts but a full parser would not is still forwarded
//! and judged by the provider, as before.

use super::json_text::{JsonTextError, MAX_DEPTH};
use memchr::memchr;

type Result<T> = std::result::Result<T, JsonTextError>;

/// Calls `found(i, rest)` for each top-level member of the object `doc`
/// whose key is `keys[i]`, with `rest` starting at the member's value (read
/// one value from it). Members are visited in document order; a name
/// spelled with escapes is decoded before it is compared.
pub fn members<'d>(doc: &'d [u8], keys: &[&str], found: impl FnMut(usize, &'d [u8])) -> Result<()> {
    let mut s = Scanner { doc, at: 0 };
    s.object_members(keys, found)?;
    s.end()
}

/// Calls `found(i, rest)` as [`members`] does, for each member of each
/// object in the array `doc` (Gemini's `:streamGenerateContent` without
/// `alt=sse` answers one array of chunks). Elements are visited in order;
/// every element must be an object.
pub fn element_members<'d>(
    doc: &'d [u8],
    keys: &[&str],
    mut found: impl FnMut(usize, &'d [u8]),
) -> Result<()> {
    let mut s = Scanner { doc, at: 0 };
    s.expect(b'[', "'['")?;
    if s.peek_after_ws()? == b']' {
        s.at += 1;
        return s.end();
    }
    loop {
        s.object_members(keys, &mut found)?;
        match s.peek_after_ws()? {
            b',' => s.at += 1,
            b']' => {
                s.at += 1;
                return s.end();
            }
            _ => return Err(s.syntax("',' or ']'")),
        }
    }
}

/// Whether `doc` is a JSON array (by its first byte that is not
/// whitespace; the rest is not read).
pub fn is_array(doc: &[u8]) -> bool {
    doc.iter()
        .find(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t'))
        .is_some_and(|&b| b == b'[')
}

/// Whether the object at the start of `doc` (what follows it is not read)
/// has a member `key` whose value is the string `value`; when the name
/// repeats, any of its values counts. Reads that object to its end.
pub fn object_has_string(doc: &[u8], key: &str, value: &str) -> Result<bool> {
    let mut s = Scanner { doc, at: 0 };
    let mut hit = false;
    s.object_members(&[key], |_, rest| {
        hit = hit || string_is(rest, value);
    })?;
    Ok(hit)
}

/// Whether `rest` starts with a JSON string literal spelling `value`.
fn string_is(rest: &[u8], value: &str) -> bool {
    if rest.first() != Some(&b'"') {
        return false;
    }
    let mut s = Scanner { doc: rest, at: 1 };
    if s.skip_string_body().is_err() {
        return false;
    }
    let literal = &rest[..s.at];
    let raw = &literal[1..literal.len() - 1];
    if memchr(b'\\', raw).is_none() {
        raw == value.as_bytes()
    } else {
        serde_json::from_slice::<String>(literal).is_ok_and(|v| v == value)
    }
}

/// The index of the next `"` at or after `from`.
fn find_quote(doc: &[u8], from: usize) -> Option<usize> {
    memchr(b'"', doc.get(from..)?).map(|i| from + i)
}

struct Scanner<'d> {
    doc: &'d [u8],
    at: usize,
}

impl<'d> Scanner<'d> {
    /// Reads the object at `self.at` up to and with its closing brace,
    /// calling `found` as [`members`] does.
    fn object_members(
        &mut self,
        keys: &[&str],
        mut found: impl FnMut(usize, &'d [u8]),
    ) -> Result<()> {
        let doc = self.doc;
        self.expect(b'{', "'{'")?;
        if self.peek_after_ws()? == b'}' {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.expect(b'"', "a member name")?;
            let start = self.at;
            self.skip_string_body()?;
            let raw = &doc[start..self.at - 1];
            let wanted = if memchr(b'\\', raw).is_none() {
                keys.iter().position(|k| k.as_bytes() == raw)
            } else {
                // A name spelled with escapes (rare): decode it, quotes included.
                let name: String =
                    serde_json::from_slice(&doc[start - 1..self.at]).map_err(|_| {
                        JsonTextError::Syntax {
                            offset: start,
                            expected: "a valid member name",
                        }
                    })?;
                keys.iter().position(|k| *k == name)
            };
            self.expect(b':', "':'")?;
            self.peek_after_ws()?;
            if let Some(i) = wanted {
                found(i, &doc[self.at..]);
            }
            self.skip_value()?;
            match self.peek_after_ws()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(self.syntax("',' or '}'")),
            }
        }
    }

    fn syntax(&self, expected: &'static str) -> JsonTextError {
        JsonTextError::Syntax {
            offset: self.at,
            expected,
        }
    }

    /// The next byte that is not JSON whitespace, not consumed.
    fn peek_after_ws(&mut self) -> Result<u8> {
        while let Some(&b) = self.doc.get(self.at) {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                return Ok(b);
            }
            self.at += 1;
        }
        Err(JsonTextError::UnexpectedEnd)
    }

    fn expect(&mut self, byte: u8, expected: &'static str) -> Result<()> {
        if self.peek_after_ws()? == byte {
            self.at += 1;
            Ok(())
        } else {
            Err(self.syntax(expected))
        }
    }

    /// Only whitespace may follow the object.
    fn end(&mut self) -> Result<()> {
        match self.peek_after_ws() {
            Err(JsonTextError::UnexpectedEnd) => Ok(()),
            _ => Err(self.syntax("the end of the body")),
        }
    }

    /// From just after an opening quote to just after the closing one. A
    /// quote preceded by an odd run of backslashes is escaped; the scan
    /// jumps from quote to quote and never looks at escapes otherwise.
    fn skip_string_body(&mut self) -> Result<()> {
        let mut from = self.at;
        loop {
            let Some(q) = find_quote(self.doc, from) else {
                self.at = self.doc.len();
                return Err(JsonTextError::UnexpectedEnd);
            };
            // The opening quote bounds the run: it is not a backslash.
            let backslashes = self.doc[..q]
                .iter()
                .rev()
                .take_while(|&&b| b == b'\\')
                .count();
            if backslashes % 2 == 0 {
                self.at = q + 1;
                return Ok(());
            }
            from = q + 1;
        }
    }

    /// Skips one value starting at `self.at` (whitespace already skipped).
    fn skip_value(&mut self) -> Result<()> {
        match self.doc.get(self.at) {
            None => Err(JsonTextError::UnexpectedEnd),
            Some(b'"') => {
                self.at += 1;
                self.skip_string_body()
            }
            Some(b'{' | b'[') => self.skip_container(),
            Some(b',' | b'}' | b']' | b':') => Err(self.syntax("a value")),
            Some(_) => {
                // A number or literal: up to the next delimiter.
                while let Some(&b) = self.doc.get(self.at) {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                        break;
                    }
                    self.at += 1;
                }
                Ok(())
            }
        }
    }

    /// Skips a whole object or array, checking that brackets match. Open
    /// brackets are kept as bits (1 = object) of a 128-bit stack.
    fn skip_container(&mut self) -> Result<()> {
        let mut stack: u128 = 0;
        let mut depth = 0usize;
        while let Some(&b) = self.doc.get(self.at) {
            match b {
                b'{' | b'[' => {
                    if depth == MAX_DEPTH {
                        return Err(JsonTextError::TooDeep { max: MAX_DEPTH });
                    }
                    stack = (stack << 1) | u128::from(b == b'{');
                    depth += 1;
                    self.at += 1;
                }
                b'}' | b']' => {
                    if depth == 0 || (stack & 1 == 1) != (b == b'}') {
                        return Err(self.syntax("a matching bracket"));
                    }
                    stack >>= 1;
                    depth -= 1;
                    self.at += 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                b'"' => {
                    self.at += 1;
                    self.skip_string_body()?;
                }
                _ => {
                    // Runs of plain bytes between structure: jump to the
                    // next byte that matters.
                    let rest = &self.doc[self.at..];
                    let next = rest
                        .iter()
                        .position(|&c| matches!(c, b'{' | b'[' | b'}' | b']' | b'"'));
                    match next {
                        Some(i) => self.at += i,
                        None => self.at = self.doc.len(),
                    }
                }
            }
        }
        Err(JsonTextError::UnexpectedEnd)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn found(doc: &str, keys: &[&str]) -> Result<Vec<(usize, String)>> {
        let mut out = Vec::new();
        members(doc.as_bytes(), keys, |i, rest| {
            let mut de = serde_json::Deserializer::from_slice(rest);
            let v: serde_json::Value = serde::Deserialize::deserialize(&mut de).unwrap();
            out.push((i, v.to_string()));
        })?;
        Ok(out)
    }

    #[test]
    fn finds_top_level_members_only() {
        let doc = r#" { "messages": [{"role":"user","content":"say \"model\": 1 {[ and \\"}],
            "meta": {"model": "inner", "usage": {"x": [1, {"y": "}"}]}},
            "model" : "gpt-4o", "stream":true, "usage":{"prompt_tokens":3} } "#;
        assert_eq!(
            found(doc, &["model", "stream", "usage"]).unwrap(),
            [
                (0, "\"gpt-4o\"".to_string()),
                (1, "true".to_string()),
                (2, r#"{"prompt_tokens":3}"#.to_string())
            ]
        );
        assert_eq!(found("{}", &["model"]).unwrap(), []);
        assert_eq!(found(r#"{"a":{"usage":1}}"#, &["usage"]).unwrap(), []);
    }

    #[test]
    fn numbers_literals_and_escapes_are_skipped() {
        let doc = r#"{"a":-1.5e3,"b":null,"c":false,"d":"\u0022\\","e":[],"model":"m"}"#;
        assert_eq!(found(doc, &["model"]).unwrap(), [(0, "\"m\"".to_string())]);
        let escaped = r#"{"mod\u0065l":"n","\"model\"":"q"}"#;
        assert_eq!(
            found(escaped, &["model"]).unwrap(),
            [(0, "\"n\"".to_string())]
        );
        assert!(found(r#"{"a\x":1}"#, &["model"]).is_err());
    }

    #[test]
    fn broken_structure_is_an_error() {
        for bad in [
            "",
            "[]",
            "\"model\"",
            r#"{"model":"x""#,
            r#"{"model":"x"}}"#,
            r#"{"model":"x" "stream":true}"#,
            r#"{"a":[1,2}"#,
            r#"{"a":{"b":1]}"#,
            r#"{"a":"unterminated}"#,
            r#"{"a":}"#,
            r#"{model:1}"#,
            r#"{"a":1,}"#,
        ] {
            assert!(found(bad, &["model"]).is_err(), "{bad:?}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            found(&deep, &["b"]),
            Err(JsonTextError::TooDeep { max: MAX_DEPTH })
        );
    }

    #[test]
    fn element_members_reads_each_object_of_an_array() {
        let collect = |doc: &str| {
            let mut out = Vec::new();
            element_members(doc.as_bytes(), &["usageMetadata"], |i, rest| {
                let mut de = serde_json::Deserializer::from_slice(rest);
                let v: serde_json::Value = serde::Deserialize::deserialize(&mut de).unwrap();
                out.push((i, v.to_string()));
            })
            .map(|()| out)
        };
        let doc = r#" [{"candidates":[{"usageMetadata":0}]},
            {"usageMetadata":{"promptTokenCount":8}} ,{"usageMetadata":2}] "#;
        assert_eq!(
            collect(doc).unwrap(),
            [
                (0, r#"{"promptTokenCount":8}"#.to_string()),
                (0, "2".to_string())
            ]
        );
        assert_eq!(collect(" [ ] ").unwrap(), []);
        for bad in [
            "",
            "{}",
            "[1]",
            "[{}",
            "[{},]",
            "[{}]]",
            r#"[{"a":1} {"b":2}]"#,
        ] {
            assert!(collect(bad).is_err(), "{bad:?}");
        }
        assert!(is_array(b" \n[{}]"));
        assert!(!is_array(b"{}") && !is_array(b"") && !is_array(b" "));
    }

    #[test]
    fn object_has_string_reads_one_object() {
        let doc = br#"{"data":"x","type":"text"} ,garbage"#;
        assert_eq!(object_has_string(doc, "type", "text"), Ok(true));
        assert_eq!(object_has_string(doc, "type", "base64"), Ok(false));
        assert_eq!(object_has_string(doc, "data", "text"), Ok(false));
        // Any of repeated names; escapes decoded; non-strings never equal.
        let twice = br#"{"type":"base64","type":"text"}"#;
        assert_eq!(object_has_string(twice, "type", "text"), Ok(true));
        let escaped = br#"{"type":"text"}"#;
        assert_eq!(object_has_string(escaped, "type", "text"), Ok(true));
        assert_eq!(object_has_string(br#"{"type":1}"#, "type", "1"), Ok(false));
        assert_eq!(object_has_string(b"{}", "type", "text"), Ok(false));
        assert!(object_has_string(br#"{"type":"text""#, "type", "text").is_err());
        assert!(object_has_string(b"[]", "type", "text").is_err());
    }

    #[test]
    fn agrees_with_serde_on_real_bodies() {
        for body in [
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":false}"#,
            r#"{"id":"x","choices":[{"message":{"content":"a \"usage\": {}"}}],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#,
        ] {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            for key in ["model", "stream", "usage", "choices"] {
                let got = found(body, &[key]).unwrap();
                match v.get(key) {
                    Some(want) => assert_eq!(got, [(0, want.to_string())]),
                    None => assert!(got.is_empty()),
                }
            }
        }
    }
}
