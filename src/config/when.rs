//! `when:` conditions that restrict a policy to some requests, and the
//! allocation-free matcher the policy chain runs per request.
//!
//! Semantics: an empty `when` matches every request. Each field that is
//! listed must match (AND); within a field, any listed value may match (OR).
//! Globs know one wildcard, `*`, which matches any run of characters
//! (including `/` and `.`, and the empty run); `?` is not special because it
//! starts a query string in URLs. Hosts and header values compare ASCII
//! case-insensitively; paths, users, teams and providers exactly.

use super::de::Spanned;
use super::error::Problem;
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

pub use crate::llm::recognize::Endpoint;

/// The bit of `e` in a `When`'s endpoint set.
fn endpoint_bit(e: Endpoint) -> u8 {
    1 << (e as u8)
}

/// A pattern with `*` wildcards, compiled once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Box<str>,
    ignore_case: bool,
    literal: bool,
}

impl Glob {
    pub fn new(pattern: &str, ignore_case: bool) -> Self {
        Glob {
            pattern: pattern.into(),
            ignore_case,
            literal: !pattern.contains('*'),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    pub fn matches(&self, text: &str) -> bool {
        let (p, t) = (self.pattern.as_bytes(), text.as_bytes());
        if self.literal {
            return if self.ignore_case {
                p.eq_ignore_ascii_case(t)
            } else {
                p == t
            };
        }
        wildcard_match(p, t, self.ignore_case)
    }
}

/// Iterative `*` matching with single-star backtracking: linear in the
/// common cases, never allocates.
fn wildcard_match(p: &[u8], t: &[u8], ignore_case: bool) -> bool {
    let eq = |a: u8, b: u8| {
        if ignore_case {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && eq(p[pi], t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// One `headers:` condition: the header is present and one of its values
/// matches one of the globs.
#[derive(Debug, Clone)]
pub struct HeaderRule {
    pub name: http::HeaderName,
    pub values: Vec<Glob>,
}

/// A policy's compiled `when:` block.
#[derive(Debug, Clone, Default)]
pub struct When {
    hosts: Vec<Glob>,
    paths: Vec<Glob>,
    providers: Vec<String>,
    /// Bit set of [`Endpoint`]s; 0 means "any endpoint".
    endpoints: u8,
    users: Vec<Glob>,
    teams: Vec<Glob>,
    headers: Vec<HeaderRule>,
}

/// What the chain knows about a request when it decides which policies
/// apply. Everything is borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// Host name, without port (a `:port` suffix is ignored).
    pub host: &'a str,
    /// Request path; a query string is ignored.
    pub path: &'a str,
    /// Provider name (contract §7) or target id; `unknown` if none.
    pub provider: &'a str,
    pub endpoint: Endpoint,
    /// The access key's user and team, when the request carried one.
    pub user: Option<&'a str>,
    pub team: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

impl When {
    /// True when no condition is set (the policy applies everywhere).
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
            && self.paths.is_empty()
            && self.providers.is_empty()
            && self.endpoints == 0
            && self.users.is_empty()
            && self.teams.is_empty()
            && self.headers.is_empty()
    }

    /// True when the request meets every listed condition.
    pub fn matches(&self, f: &RequestFacts<'_>) -> bool {
        self.allows_endpoint(f.endpoint)
            && any_or_empty(&self.hosts, strip_port(f.host))
            && any_or_empty(&self.paths, strip_query(f.path))
            && (self.providers.is_empty() || self.providers.iter().any(|p| p == f.provider))
            && optional(&self.users, f.user)
            && optional(&self.teams, f.team)
            && self.headers.iter().all(|rule| {
                f.headers.get_all(&rule.name).iter().any(|v| {
                    v.to_str()
                        .is_ok_and(|v| rule.values.iter().any(|g| g.matches(v.trim())))
                })
            })
    }

    /// True when `when.endpoints` is empty or lists `endpoint`.
    pub fn allows_endpoint(&self, endpoint: Endpoint) -> bool {
        self.endpoints == 0 || self.endpoints & endpoint_bit(endpoint) != 0
    }

    /// The endpoints listed (empty when any endpoint is allowed).
    pub fn endpoints(&self) -> impl Iterator<Item = Endpoint> + '_ {
        Endpoint::ALL
            .into_iter()
            .filter(|e| self.endpoints & endpoint_bit(*e) != 0)
    }

    /// The conditions other than endpoints, as `key=value,value` words
    /// (`hosts=*.example.com paths=/v1/*`); empty when there are none.
    pub fn describe_conditions(&self) -> String {
        let mut words = Vec::new();
        let globs = |g: &[Glob]| g.iter().map(Glob::as_str).collect::<Vec<_>>().join(",");
        if !self.hosts.is_empty() {
            words.push(format!("hosts={}", globs(&self.hosts)));
        }
        if !self.paths.is_empty() {
            words.push(format!("paths={}", globs(&self.paths)));
        }
        if !self.providers.is_empty() {
            words.push(format!("providers={}", self.providers.join(",")));
        }
        if !self.users.is_empty() {
            words.push(format!("users={}", globs(&self.users)));
        }
        if !self.teams.is_empty() {
            words.push(format!("teams={}", globs(&self.teams)));
        }
        for h in &self.headers {
            words.push(format!("header {}={}", h.name, globs(&h.values)));
        }
        words.join(" ")
    }
}

fn any_or_empty(globs: &[Glob], text: &str) -> bool {
    globs.is_empty() || globs.iter().any(|g| g.matches(text))
}

/// A condition on an optional fact fails when the fact is unknown.
fn optional(globs: &[Glob], value: Option<&str>) -> bool {
    globs.is_empty() || value.is_some_and(|v| globs.iter().any(|g| g.matches(v)))
}

fn strip_port(host: &str) -> &str {
    let host = if host.starts_with('[') {
        // [v6]:port
        host.split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1])
    } else if host.bytes().filter(|&b| b == b':').count() == 1 {
        host.split_once(':').map_or(host, |(h, _)| h)
    } else {
        host
    };
    host.trim_end_matches('.')
}

fn strip_query(path: &str) -> &str {
    path.split_once(['?', '#']).map_or(path, |(p, _)| p)
}

/// `when:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWhen {
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    paths: Vec<Spanned<String>>,
    #[serde(default)]
    providers: Vec<Spanned<String>>,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
    #[serde(default)]
    users: Vec<Spanned<String>>,
    #[serde(default)]
    teams: Vec<Spanned<String>>,
    #[serde(default)]
    headers: HeaderPairs,
}

/// `headers:` in file order: name → one value or a list of values.
#[derive(Debug, Default)]
struct HeaderPairs(Vec<(Spanned<String>, Spanned<OneOrMany>)>);

#[derive(Debug, Clone, PartialEq)]
struct OneOrMany(Vec<String>);

impl<'de> Deserialize<'de> for HeaderPairs {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HeaderPairs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of header name to value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderPairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(k) = map.next_key()? {
                    pairs.push((k, map.next_value()?));
                }
                Ok(HeaderPairs(pairs))
            }
        }
        d.deserialize_map(V)
    }
}

/// One header value as written: text, or a plain YAML scalar (`true`, `42`)
/// taken as the text it spells.
struct HeaderText(String);

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a header value")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        // `1.50` reads as 1.5: the header's spelling is lost, and a
        // value matched against text must be the text.
        Err(E::custom(format!(
            "a number with a fraction ({v}) loses its spelling in YAML; write the header value in quotes"
        )))
    }
}

impl<'de> Deserialize<'de> for HeaderText {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The deserializer reads a plain `true`/`1.5` as typed values;
        // header values are text, so ask for whatever was written.
        d.deserialize_any(TextVisitor).map(HeaderText)
    }
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a header value or a list of values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                TextVisitor.visit_str(v).map(|t| OneOrMany(vec![t]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OneOrMany, E> {
                TextVisitor.visit_i64(v).map(|t| OneOrMany(vec![t]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OneOrMany, E> {
                TextVisitor.visit_u64(v).map(|t| OneOrMany(vec![t]))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<OneOrMany, E> {
                TextVisitor.visit_bool(v).map(|t| OneOrMany(vec![t]))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<OneOrMany, E> {
                TextVisitor.visit_f64(v).map(|t| OneOrMany(vec![t]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(HeaderText(v)) = seq.next_element()? {
                    out.push(v);
                }
                Ok(OneOrMany(out))
            }
        }
        // As for one value: whatever was written.
        d.deserialize_any(V)
    }
}

impl RawWhen {
    /// Validates and compiles. `providers` are the names `when.providers`
    /// may use (built-in providers, target ids and `unknown`).
    pub(crate) fn compile(self, providers: &[&str], problems: &mut Vec<Problem>) -> When {
        let mut when = When::default();
        for h in self.hosts {
            match host_pattern_error(&h.value) {
                Some(msg) => problems.push(h.problem(msg)),
                None => when
                    .hosts
                    .push(Glob::new(h.value.trim_end_matches('.'), true)),
            }
        }
        for p in self.paths {
            if !(p.value.starts_with('/') || p.value.starts_with('*')) {
                problems.push(p.problem(format!(
                    "path pattern `{}` must start with `/` (or `*`)",
                    p.value
                )));
            } else if p.value.contains(['?', '#']) {
                problems.push(p.problem("path patterns match the path only, without `?query`"));
            } else {
                when.paths.push(Glob::new(&p.value, false));
            }
        }
        for p in self.providers {
            if providers.contains(&p.value.as_str()) {
                when.providers.push(p.value);
            } else {
                problems
                    .push(p.problem(super::error::unknown_word("provider", &p.value, providers)));
            }
        }
        for e in self.endpoints {
            when.endpoints |= endpoint_bit(e);
        }
        for (field, list, out) in [
            ("user", self.users, &mut when.users),
            ("team", self.teams, &mut when.teams),
        ] {
            for u in list {
                if u.value.trim().is_empty() {
                    problems.push(u.problem(format!("empty {field} name")));
                } else {
                    out.push(Glob::new(&u.value, false));
                }
            }
        }
        for (name, values) in self.headers.0 {
            let header = match http::HeaderName::from_bytes(name.value.as_bytes()) {
                Ok(h) => h,
                Err(_) => {
                    problems
                        .push(name.problem(format!("`{}` is not a valid header name", name.value)));
                    continue;
                }
            };
            if values.value.0.is_empty() {
                problems.push(values.problem("list at least one value (`*` for any)"));
                continue;
            }
            when.headers.push(HeaderRule {
                name: header,
                values: values.value.0.iter().map(|v| Glob::new(v, true)).collect(),
            });
        }
        when
    }
}

/// Why `pattern` cannot be a host pattern, if it cannot.
pub(crate) fn host_pattern_error(pattern: &str) -> Option<String> {
    if pattern.trim().is_empty() {
        return Some("empty host pattern".to_string());
    }
    if pattern.contains("://") || pattern.contains('/') {
        return Some(format!(
            "`{pattern}` is not a host pattern: write the host name only, without scheme or path"
        ));
    }
    if pattern.contains(char::is_whitespace) {
        return Some(format!("host pattern `{pattern}` contains spaces"));
    }
    let is_v6 = pattern.starts_with('[') || pattern.parse::<std::net::Ipv6Addr>().is_ok();
    if pattern.contains(':') && !is_v6 {
        return Some(format!(
            "host pattern `{pattern}` has a port: hosts match on the name alone"
        ));
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::de::{from_node, Sink};
    use crate::config::yaml;

    fn when(text: &str) -> When {
        let root = yaml::parse(text).unwrap().unwrap();
        let sink = Sink::default();
        let raw: RawWhen = from_node(&root, "when", &sink, &[]).unwrap();
        let mut problems = sink.into_inner();
        let w = raw.compile(&["openai", "sourcegraph", "unknown"], &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        w
    }

    fn facts<'a>(host: &'a str, path: &'a str, headers: &'a http::HeaderMap) -> RequestFacts<'a> {
        RequestFacts {
            host,
            path,
            provider: "openai",
            endpoint: Endpoint::ChatCompletions,
            user: Some("dev1"),
            team: None,
            headers,
        }
    }

    #[test]
    fn globs() {
        let g = Glob::new("*.example.com", true);
        assert!(g.matches("a.example.com"));
        assert!(g.matches("A.B.Example.COM"));
        assert!(!g.matches("example.com"));
        assert!(!g.matches("a.example.com.evil"));
        let p = Glob::new("/v1/*/completions", false);
        assert!(p.matches("/v1/engines/completions"));
        assert!(p.matches("/v1/a/b/completions"));
        assert!(!p.matches("/v1/completion"));
        assert!(!p.matches("/V1/x/completions"));
        assert!(Glob::new("*", false).matches(""));
        assert!(Glob::new("a*b*c", false).matches("aXbYbZc"));
        assert!(!Glob::new("a*b*c", false).matches("aXbYbZ"));
        assert!(Glob::new("exact", true).matches("EXACT"));
    }

    #[test]
    fn empty_when_matches_everything() {
        let h = http::HeaderMap::new();
        let w = When::default();
        assert!(w.is_empty());
        for e in Endpoint::ALL {
            assert!(w.allows_endpoint(e));
        }
        assert!(w.matches(&facts("anything", "/x", &h)));
    }

    #[test]
    fn fields_are_anded_values_are_ored() {
        let w = when("hosts: ['*.githubcopilot.com', api.openai.com]\npaths: ['/v1/*']\nproviders: [openai]\n");
        let h = http::HeaderMap::new();
        assert!(w.matches(&facts("api.openai.com:443", "/v1/chat?x=1", &h)));
        assert!(w.matches(&facts("proxy.individual.githubcopilot.com", "/v1/x", &h)));
        assert!(!w.matches(&facts("api.openai.com", "/v2/chat", &h)));
        assert!(!w.matches(&facts("api.anthropic.com", "/v1/chat", &h)));
        let mut f = facts("api.openai.com", "/v1/x", &h);
        f.provider = "sourcegraph";
        assert!(!w.matches(&f));
    }

    #[test]
    fn endpoints_users_and_headers() {
        let w = when(
            "endpoints: [completions, embeddings]\nusers: [dev1, 'bot-*']\nheaders:\n  OpenAI-Intent: copilot-ghost\n",
        );
        let mut h = http::HeaderMap::new();
        let base = facts("h", "/", &h);
        assert!(!w.matches(&RequestFacts {
            endpoint: Endpoint::Completions,
            ..base
        }));
        h.insert(
            "openai-intent",
            http::HeaderValue::from_static("Copilot-Ghost"),
        );
        let f = RequestFacts {
            endpoint: Endpoint::Completions,
            ..facts("h", "/", &h)
        };
        assert!(w.matches(&f));
        assert!(!w.matches(&RequestFacts {
            endpoint: Endpoint::ChatCompletions,
            ..f
        }));
        assert!(w.matches(&RequestFacts {
            user: Some("bot-7"),
            ..f
        }));
        assert!(!w.matches(&RequestFacts { user: None, ..f }));
        assert_eq!(
            w.endpoints().collect::<Vec<_>>(),
            [Endpoint::Completions, Endpoint::Embeddings]
        );
        assert_eq!(
            w.describe_conditions(),
            "users=dev1,bot-* header openai-intent=copilot-ghost"
        );
    }

    #[test]
    fn header_value_lists_and_presence() {
        let w =
            when("headers:\n  OpenAI-Intent: [copilot-ghost, copilot-panel]\n  X-Initiator: '*'\n");
        let mut h = http::HeaderMap::new();
        h.insert(
            "openai-intent",
            http::HeaderValue::from_static("copilot-panel"),
        );
        assert!(!w.matches(&facts("h", "/", &h)), "x-initiator is missing");
        h.insert("x-initiator", http::HeaderValue::from_static("agent"));
        assert!(w.matches(&facts("h", "/", &h)));
        h.insert(
            "openai-intent",
            http::HeaderValue::from_static("conversation-panel"),
        );
        assert!(!w.matches(&facts("h", "/", &h)));
    }

    /// A plain `true` or number is the text it spells, alone or in a
    /// list; a fraction, whose spelling YAML loses, must be quoted.
    #[test]
    fn unquoted_scalars_are_header_text() {
        let w = when("headers:\n  X-Private: true\n  X-Count: 3\n  X-Mode: [false, auto]\n");
        let mut h = http::HeaderMap::new();
        h.insert("x-private", http::HeaderValue::from_static("true"));
        h.insert("x-count", http::HeaderValue::from_static("3"));
        h.insert("x-mode", http::HeaderValue::from_static("false"));
        assert!(w.matches(&facts("h", "/", &h)));
        h.insert("x-private", http::HeaderValue::from_static("false"));
        assert!(!w.matches(&facts("h", "/", &h)));

        let root = yaml::parse("headers:\n  X-Version: 1.50\n")
            .unwrap()
            .unwrap();
        let sink = Sink::default();
        let raw = from_node::<RawWhen>(&root, "when", &sink, &[]);
        let mut problems = sink.into_inner();
        if let Some(raw) = raw {
            raw.compile(&["openai", "unknown"], &mut problems);
        }
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("quotes"), "{problems:?}");
        assert_eq!(problems[0].mark.line, 2, "{problems:?}");
    }

    #[test]
    fn bad_values_are_reported_with_positions() {
        let root = yaml::parse(
            "hosts: ['https://x.com', 'a.com:443']\npaths: [v1/chat]\nproviders: [opnai]\nheaders: {'bad header': x}\n",
        )
        .unwrap()
        .unwrap();
        let sink = Sink::default();
        let raw: RawWhen = from_node(&root, "when", &sink, &[]).unwrap();
        let mut problems = sink.into_inner();
        raw.compile(&["openai", "unknown"], &mut problems);
        let got: Vec<_> = problems
            .iter()
            .map(|p| (p.mark.line, p.mark.column, p.path.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1, 9, "when.hosts[0]"),
                (1, 26, "when.hosts[1]"),
                (2, 9, "when.paths[0]"),
                (3, 13, "when.providers[0]"),
                (4, 11, "when.headers.bad header"),
            ]
        );
        assert!(
            problems[3].message.contains("did you mean `openai`"),
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_endpoint_names_the_choices() {
        let root = yaml::parse("endpoints: [completions, chat]\n")
            .unwrap()
            .unwrap();
        let sink = Sink::default();
        assert!(from_node::<RawWhen>(&root, "when", &sink, &[]).is_none());
        let p = &sink.into_inner()[0];
        assert_eq!((p.mark.line, p.mark.column), (1, 26));
        assert_eq!(p.path, "when.endpoints[1]");
        assert_eq!(
            p.message,
            "unknown value `chat`, expected one of chat/completions, completions, embeddings, models, other"
        );
    }
}
