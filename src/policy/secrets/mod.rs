//! The secret scanner: finds credentials (API keys, tokens, private keys,
//! passwords) in prompt text and redacts them to `[REDACTED:<kind>]`.
//!
//! A [`Scanner`] is built once ([`Scanner::builtin`] or
//! [`Scanner::with_custom`]) and shared: it is `Send + Sync`, and a scan
//! takes `&self`. [`Scanner::find`] reports where the secrets are (byte
//! ranges of the secret part only: for `password = "hunter22"` just
//! `hunter22`, for `postgres://u:pw@host` just `pw`); [`Scanner::redact`]
//! replaces each with `[REDACTED:<kind>]`, `<kind>` being exactly the kind
//! name below, and returns the input borrowed when nothing was found.
//!
//! # How a scan works
//!
//! 1. One Aho-Corasick automaton finds every rule keyword (`ghp_`, `AIza`,
//!    `BEGIN`, `key`/`Key`/`KEY`, …) in one pass. Keywords are matched
//!    case-sensitively, listed in the spellings that occur (see
//!    `rules.rs`): an ASCII case-insensitive automaton cannot use the SIMD
//!    prefilter and steps a DFA byte by byte, measured at ~375 MB/s on a
//!    server core, against ~1 GB/s wanted for whole prompts.
//! 2. Each hit opens a window for the rules owning that keyword: a few
//!    hundred bytes around it, 8 KiB after a PEM header, or, for the
//!    generic rules, just the assignment that follows (their gate rejects
//!    hits like `fn key(&self)` without running any regex). Windows of a
//!    rule that overlap are merged; a match that runs into the end of its
//!    window makes the window grow, so a long key is never cut short.
//! 3. The rule's regex (`regex::bytes`, linear time) runs only inside its
//!    windows; then the entropy floor and the rule's check decide.
//! 4. Overlapping findings merge into one covering their union, named after
//!    the most specific rule (a GitHub token in `token = "ghp_…"` is a
//!    `github_pat`, not a `generic_secret`), and findings on a line carrying
//!    [`ALLOW_MARKER`] are dropped.
//!
//! Custom rules have no keywords and run over the whole text (the regex
//! crate's own literal prefilter keeps that cheap for prefixed formats).
//! With [`Scanner::with_max_scan_len`], at most that many bytes are scanned
//! per call; the rest is passed through and the result says `truncated`
//! (the default scans everything).
//!
//! # Kinds
//!
//! | kind | what |
//! |---|---|
//! | `aws_access_key_id` | `AKIA`/`ASIA`/`ABIA`/`ACCA`/`A3T…` + 16 |
//! | `aws_secret_access_key` | 40 base64 chars after an AWS secret name, or after an access key id |
//! | `github_pat` | `ghp_` |
//! | `github_oauth_token` | `gho_` |
//! | `github_app_token` | `ghu_`, `ghs_` |
//! | `github_refresh_token` | `ghr_` |
//! | `github_fine_grained_pat` | `github_pat_` |
//! | `github_copilot_token` | `tid=…;exp=…;…` session tokens |
//! | `gitlab_pat` | `glpat-` |
//! | `gitlab_token` | `gldt-` (deploy), `glrt-` (runner) |
//! | `openai_api_key` | `sk-…T3BlbkFJ…`, `sk-proj-`, `sk-svcacct-`, `sk-admin-` |
//! | `anthropic_api_key` | `sk-ant-api03-`, `sk-ant-admin01-`, … |
//! | `google_api_key` | `AIza` + 35 (Gemini, Maps, Firebase; also in `?key=`) |
//! | `gcp_service_account_key` | the `private_key` PEM of a JSON key file (GCP service accounts) |
//! | `private_key` | PEM, OpenSSH and PGP private key blocks |
//! | `jwt` | `eyJ….eyJ….signature` |
//! | `slack_token` | `xoxb-`, `xoxp-`, `xoxe-`, … and `xapp-` |
//! | `slack_webhook_url` | the path of `hooks.slack.com/services/…` |
//! | `stripe_key` | `sk_live_`, `rk_test_`, …, `whsec_` |
//! | `npm_token` | `npm_` |
//! | `pypi_token` | `pypi-AgEIcHlwaS5vcmc…` (and TestPyPI) |
//! | `huggingface_token` | `hf_` |
//! | `azure_ad_client_secret` | `…Q~…` Entra client secrets |
//! | `azure_openai_key` | 32 hex within 512 bytes of `….azure.com`, or after `api-key:` / `Ocp-Apim-Subscription-Key:` |
//! | `sourcegraph_token` | `sgp_` |
//! | `sourcegraph_cody_gateway_key` | `slk_`, `sgd_` |
//! | `sendgrid_api_key` | `SG.…….…` |
//! | `twilio_api_key` | `SK` + 32 hex within 256 bytes of "twilio" |
//! | `databricks_token` | `dapi` + 32 hex |
//! | `digitalocean_token` | `dop_v1_`, `doo_v1_`, `dor_v1_` |
//! | `shopify_token` | `shpat_`, `shpca_`, `shpss_`, `shppa_` |
//! | `vault_token` | `hvs.`; legacy `s.` + 24 after a `vault…token` name |
//! | `terraform_cloud_token` | `….atlasv1.…` |
//! | `groq_api_key`, `xai_api_key`, `perplexity_api_key`, `openrouter_api_key` | `gsk_`, `xai-`, `pplx-`, `sk-or-v1-` |
//! | `deepseek_api_key` | `sk-` + 32 hex within 256 bytes of "deepseek" |
//! | `atlassian_api_token` | `ATATT3…` |
//! | `age_secret_key` | `AGE-SECRET-KEY-1…` |
//! | `url_credentials` | the password of `scheme://user:password@host`, secret query parameters (`?api_key=`, `&sig=`) |
//! | `http_auth_token` | the credential after `Authorization:` (any scheme) or `Bearer` |
//! | `generic_secret` | a random-looking literal assigned to a key/token/secret/credential/auth name |
//! | `password` | a literal assigned to a password/passwd/pwd/passphrase name |
//!
//! Custom rules use their own name as kind.
//!
//! # Deliberate limits
//!
//! - Placeholders are kept: `sk-xxxx`, `ghp_` followed by one repeated
//!   letter (entropy floor), `<your-key>`, `${VAR}`, `{{ secret }}`, and
//!   stock passwords (`password = "changeme"`, `postgres://u:postgres@…`).
//! - Generic values must be literals: `password = get_password()`,
//!   `token = os.environ["T"]`, `key: String` are code, not secrets.
//!   Generic secrets need 12+ characters mixing letters and digits; a
//!   password needs 6+ characters. Values with spaces, `--password VALUE`
//!   flags and `<password>…</password>` XML are not recognised.
//! - JSON escapes are the caller's business (scan decoded strings), but
//!   literal `\n` escapes inside a pasted PEM, before a token or after an
//!   assigned value (a `.env` file in a tool call's JSON arguments) are
//!   handled.
//! - Keywords are case-sensitive (step 1): a name spelled in odd case
//!   (`aPiKeY = …`) is not seen by the generic rules. To stay within the
//!   SIMD prefilter's 64 keywords, rare formats were left out: Hugging Face
//!   `api_org_`, Vault `hvb.`/`hvr.`, GitLab `glptt-`/`glft-`/`glsoat-`.

mod checks;
mod rules;

pub(crate) use checks::assigned_to_credential;

#[cfg(test)]
mod tests;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex::bytes::{Regex, RegexBuilder};
use rules::{Check, Gate, RuleDef};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::sync::Arc;

/// Default cap on the bytes scanned per call: none. The scan is linear,
/// and the gateway's body limits already bound what it reads; a cap below
/// them would let a secret through past it (a text the redactor cannot
/// finish must not go out half checked).
pub const DEFAULT_MAX_SCAN_LEN: usize = usize::MAX;

/// An inline marker that suppresses findings on its line (like
/// `gitleaks:allow`): `API_KEY=… # kt:allow`.
pub const ALLOW_MARKER: &str = "kt:allow";

/// Cap on [`Scanner::max_secret_len`]: private keys can be longer, but a
/// stream hold-back larger than this costs more latency than it is worth.
const MAX_SECRET_LEN_CAP: usize = 8 << 10;

/// What a custom rule is assumed to match at most, for hold-back sizing.
const CUSTOM_RULE_MAX_LEN: usize = 1024;

/// Compiled-size cap for custom regexes, so a config cannot blow up memory.
const CUSTOM_REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The kinds of the built-in rules (`github_pat`), each once, in rule
/// order: the names `[REDACTED:<kind>]` shows and a `redact` policy's
/// `kinds:` and `disable:` take.
pub fn builtin_kinds() -> Vec<&'static str> {
    let mut kinds: Vec<&'static str> = Vec::new();
    for def in rules::BUILTIN {
        if !kinds.contains(&def.kind) {
            kinds.push(def.kind);
        }
    }
    kinds
}

/// The ids of the built-in rules (`github-pat`), in rule order. `kinds:`
/// and `disable:` also take these, to name one rule of a kind that
/// several share.
pub fn builtin_rule_ids() -> impl Iterator<Item = &'static str> {
    rules::BUILTIN.iter().map(|def| def.id)
}

/// Why a scanner could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secret rule name {name:?} must be 1-64 characters of [A-Za-z0-9_-]")]
    InvalidRuleName { name: String },
    #[error("secret rule {name:?} is defined twice")]
    DuplicateRule { name: String },
    #[error("secret rule {name:?}: invalid regex: {source}")]
    InvalidPattern {
        name: String,
        #[source]
        source: Box<regex::Error>,
    },
    #[error("secret rule {name:?}: the regex matches the empty string")]
    MatchesEmpty { name: String },
}

impl SecretsError {
    /// Stable snake_case label for events and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SecretsError::InvalidRuleName { .. } => "secrets_invalid_rule_name",
            SecretsError::DuplicateRule { .. } => "secrets_duplicate_rule",
            SecretsError::InvalidPattern { .. } => "secrets_invalid_pattern",
            SecretsError::MatchesEmpty { .. } => "secrets_matches_empty",
        }
    }
}

/// A user-defined rule, e.g. from the policy config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomRule {
    /// Rule id and kind (`[REDACTED:<name>]`): 1-64 of `[A-Za-z0-9_-]`.
    pub name: String,
    /// A `regex` crate pattern. If it has a group named `secret`, only that
    /// group is redacted (`token=(?P<secret>\w{20})`), else the whole match.
    pub pattern: String,
}

/// One secret found in a text. Carries no part of the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The secret kind, as in the placeholder (`github_pat`).
    pub kind: Arc<str>,
    /// The rule that found it (`github-pat`; a custom rule's name).
    pub rule: Arc<str>,
    /// Byte range of the secret in the scanned text, on char boundaries.
    pub range: Range<usize>,
    /// Found by a custom rule (the rule it is named after, when matches
    /// overlapped), not a built-in one: a `redact` policy's `kinds`
    /// narrows only the built-in rules.
    pub custom: bool,
}

/// The result of [`Scanner::scan`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// In text order, not overlapping.
    pub findings: Vec<Finding>,
    /// True when the text was longer than [`Scanner::max_scan_len`] and its
    /// tail was not scanned.
    pub truncated: bool,
}

/// The result of [`Scanner::redact`].
#[derive(Debug, Clone)]
pub struct Redacted<'a> {
    /// The text with each finding replaced; borrowed when nothing was found.
    pub text: Cow<'a, str>,
    /// What was replaced; ranges refer to the original text.
    pub findings: Vec<Finding>,
    /// See [`Scan::truncated`]: the unscanned tail is passed through as is.
    pub truncated: bool,
}

impl Redacted<'_> {
    /// How many secrets of each kind were redacted.
    pub fn counts(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for f in &self.findings {
            *counts.entry(&*f.kind).or_insert(0) += 1;
        }
        counts
    }
}

/// A compiled [`RuleDef`] (see there for the fields), or a custom rule.
#[derive(Debug, Clone)]
struct Rule {
    id: Arc<str>,
    kind: Arc<str>,
    regex: Regex,
    /// Index of the `secret` group: the part redacted (else the match).
    secret_group: Option<usize>,
    /// Index of the `ident` group, handed to checks.
    ident_group: Option<usize>,
    before: usize,
    after: usize,
    max_len: usize,
    entropy: Option<f64>,
    boundary: bool,
    gate: Option<Gate>,
    check: Option<Check>,
    priority: u8,
    /// The regex is the rule's pattern rewritten for ASCII-lowercased text
    /// ([`fold`](crate::policy::fold)) and runs over the text's lowered copy.
    folded: bool,
    /// A [`CustomRule`], not a built-in one.
    custom: bool,
}

impl Rule {
    fn new(def: &RuleDef, regex: Regex) -> Rule {
        Rule {
            id: def.id.into(),
            kind: def.kind.into(),
            secret_group: group_index(&regex, "secret"),
            ident_group: group_index(&regex, "ident"),
            regex,
            before: def.before,
            after: def.after,
            max_len: def.max_len,
            entropy: def.entropy,
            boundary: def.boundary,
            gate: def.gate,
            check: def.check,
            priority: def.priority,
            folded: false,
            custom: false,
        }
    }
}

/// The compiled rule set. Cheap to clone (the automaton and regexes are
/// reference-counted inside).
#[derive(Debug, Clone)]
pub struct Scanner {
    rules: Vec<Rule>,
    /// The 3+-byte keywords of all rules; None only if it failed to build,
    /// in which case every rule searches the whole text.
    prefilter: Option<AhoCorasick>,
    /// Automaton pattern id → the rules it opens a window for.
    keyword_rules: Vec<Vec<KeywordRule>>,
    /// Keywords too short for the automaton's prefilter, with their rules.
    short_keywords: Vec<(memchr::memmem::Finder<'static>, Vec<usize>)>,
    /// Rules without keywords: searched over the whole text.
    unkeyed: Vec<usize>,
    max_scan_len: usize,
}

/// A rule fired by an automaton keyword: the keyword it owns starts
/// `offset` bytes into the matched one and is `len` long.
#[derive(Debug, Clone, Copy)]
struct KeywordRule {
    rule: usize,
    offset: usize,
    len: usize,
}

/// A raw regex result before overlap resolution.
#[derive(Debug, Clone, Copy)]
struct Hit {
    rule: usize,
    start: usize,
    end: usize,
}

impl Scanner {
    /// The built-in rules (see the module docs for the kinds).
    pub fn builtin() -> Scanner {
        Scanner::assemble(builtin_rules())
    }

    /// The built-in rules plus `custom` ones.
    pub fn with_custom(custom: &[CustomRule]) -> Result<Scanner, SecretsError> {
        let mut rules = builtin_rules();
        let mut names = HashSet::new();
        for c in custom {
            let name_ok = (1..=64).contains(&c.name.len())
                && c.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !name_ok {
                return Err(SecretsError::InvalidRuleName {
                    name: c.name.clone(),
                });
            }
            if !names.insert(c.name.as_str()) {
                return Err(SecretsError::DuplicateRule {
                    name: c.name.clone(),
                });
            }
            let regex = RegexBuilder::new(&c.pattern)
                .size_limit(CUSTOM_REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| SecretsError::InvalidPattern {
                    name: c.name.clone(),
                    source: Box::new(e),
                })?;
            if regex.is_match(b"") {
                return Err(SecretsError::MatchesEmpty {
                    name: c.name.clone(),
                });
            }
            // A case-blind rule (`(?i)password…`) is left a slow
            // case-insensitive prefilter; on lowered text it has literals.
            let lowered = crate::policy::fold::lowered(&c.pattern).and_then(|p| {
                RegexBuilder::new(&p)
                    .size_limit(CUSTOM_REGEX_SIZE_LIMIT)
                    .build()
                    .ok()
            });
            let folded = lowered.is_some();
            let regex = lowered.unwrap_or(regex);
            let name: Arc<str> = c.name.as_str().into();
            let rule = Rule {
                id: name.clone(),
                kind: name,
                secret_group: group_index(&regex, "secret"),
                ident_group: None,
                regex,
                before: 0,
                after: 0,
                max_len: CUSTOM_RULE_MAX_LEN,
                entropy: None,
                boundary: false,
                gate: None,
                check: None,
                priority: rules::CUSTOM,
                folded,
                custom: true,
            };
            rules.push((rule, &[][..]));
        }
        Ok(Scanner::assemble(rules))
    }

    /// Sets the cap on bytes scanned per call (default
    /// [`DEFAULT_MAX_SCAN_LEN`]).
    pub fn with_max_scan_len(mut self, max: usize) -> Scanner {
        self.max_scan_len = max;
        self
    }

    /// The cap on bytes scanned per call.
    pub fn max_scan_len(&self) -> usize {
        self.max_scan_len
    }

    /// The longest text any rule matches in practice (context such as
    /// `password = ` included), capped at 8 KiB. A streaming caller that
    /// holds back this many bytes before releasing output will not split a
    /// secret of normal size; [`Scanner::find`] works on any such window.
    pub fn max_secret_len(&self) -> usize {
        self.rules
            .iter()
            .map(|r| r.max_len)
            .max()
            .unwrap_or(0)
            .min(MAX_SECRET_LEN_CAP)
    }

    /// How long the word `text` ends in may grow and still be one secret:
    /// the longest match of the rules whose keywords it holds (a JWT's
    /// `eyJ`, a Copilot token's `tid=`), capped like
    /// [`Scanner::max_secret_len`]; 0 when it holds none. A stream holds
    /// such a word up to this rather than its usual hold-back, so a long
    /// token is never half sent before it can be matched whole.
    pub fn open_token_len(&self, text: &str) -> usize {
        let start = text
            .char_indices()
            .rev()
            .find(|&(_, c)| c.is_whitespace() || matches!(c, '"' | '\'' | '`'))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let word = text.get(start..).unwrap_or_default().as_bytes();
        let mut longest = 0;
        let mut note = |rule: usize| {
            if let Some(r) = self.rules.get(rule) {
                longest = longest.max(r.max_len);
            }
        };
        if let Some(Ok(hits)) = self.prefilter.as_ref().map(|ac| ac.try_find_iter(word)) {
            for m in hits {
                for kr in &self.keyword_rules[m.pattern().as_usize()] {
                    note(kr.rule);
                }
            }
        }
        for (finder, owners) in &self.short_keywords {
            if finder.find(word).is_some() {
                owners.iter().for_each(|&r| note(r));
            }
        }
        longest.min(MAX_SECRET_LEN_CAP)
    }

    /// `(rule id, kind)` of every rule, built-in first.
    pub fn rules(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rules.iter().map(|r| (&*r.id, &*r.kind))
    }

    /// Where the secrets in `text` are.
    pub fn find(&self, text: &str) -> Vec<Finding> {
        self.scan(text).findings
    }

    /// Where the secrets in `text` are, and whether the text was cut short.
    pub fn scan(&self, text: &str) -> Scan {
        let limit = floor_char_boundary(text, self.max_scan_len);
        let hay = &text.as_bytes()[..limit];
        let mut hits = self.raw_hits(hay);
        let findings = if hits.is_empty() {
            Vec::new()
        } else {
            for h in &mut hits {
                h.start = floor_char_boundary(text, h.start);
                h.end = ceil_char_boundary(text, h.end);
            }
            self.resolve(hits, text.as_bytes())
        };
        Scan {
            findings,
            truncated: limit < text.len(),
        }
    }

    /// `text` with every secret replaced by `[REDACTED:<kind>]`.
    pub fn redact<'a>(&self, text: &'a str) -> Redacted<'a> {
        let Scan {
            findings,
            truncated,
        } = self.scan(text);
        if findings.is_empty() {
            return Redacted {
                text: Cow::Borrowed(text),
                findings,
                truncated,
            };
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for f in &findings {
            out.push_str(&text[last..f.range.start]);
            out.push_str("[REDACTED:");
            out.push_str(&f.kind);
            out.push(']');
            last = f.range.end;
        }
        out.push_str(&text[last..]);
        Redacted {
            text: Cow::Owned(out),
            findings,
            truncated,
        }
    }

    fn assemble(rules: Vec<(Rule, &'static [&'static str])>) -> Scanner {
        let mut by_keyword: BTreeMap<&'static str, Vec<usize>> = BTreeMap::new();
        let mut unkeyed = Vec::new();
        for (i, (_, keywords)) in rules.iter().enumerate() {
            if keywords.is_empty() {
                unkeyed.push(i);
            }
            for &k in *keywords {
                by_keyword.entry(k).or_default().push(i);
            }
        }
        let rules: Vec<Rule> = rules.into_iter().map(|(r, _)| r).collect();
        let (long, short): (Vec<_>, Vec<_>) = by_keyword.iter().partition(|(k, _)| k.len() >= 3);
        // Leftmost-longest search reports one keyword per position, so a
        // keyword also carries the rules of every keyword inside it, with
        // its offset. (A keyword overlapping the end of another is not
        // reported; tokens start at a word boundary, so it would not count.)
        let keyword_rules: Vec<Vec<KeywordRule>> = long
            .iter()
            .map(|(k, _)| {
                let mut v = Vec::new();
                for (inner, owners) in &long {
                    for (offset, _) in k.match_indices(**inner) {
                        v.extend(owners.iter().map(|&rule| KeywordRule {
                            rule,
                            offset,
                            len: inner.len(),
                        }));
                    }
                }
                v
            })
            .collect();
        if long.len() > rules::MAX_KEYWORDS {
            tracing::warn!(
                keywords = long.len(),
                "secret scanner has too many keywords for its SIMD prefilter; scans will be slower"
            );
        }
        let prefilter = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::DFA))
            .build(long.iter().map(|(k, _)| k));
        let (prefilter, unkeyed) = match prefilter {
            Ok(ac) => (Some(ac), unkeyed),
            Err(e) => {
                tracing::error!(error = %e, "secret scanner keyword automaton failed; scanning whole texts");
                (None, (0..rules.len()).collect())
            }
        };
        let short_keywords = short
            .iter()
            .map(|(k, owners)| {
                (
                    memchr::memmem::Finder::new(k.as_bytes()).into_owned(),
                    (*owners).clone(),
                )
            })
            .collect();
        Scanner {
            rules,
            prefilter,
            keyword_rules,
            short_keywords,
            unkeyed,
            max_scan_len: DEFAULT_MAX_SCAN_LEN,
        }
    }

    /// Every accepted regex match, in no particular order.
    fn raw_hits(&self, hay: &[u8]) -> Vec<Hit> {
        let limit = hay.len();
        // (rule, window start, window end)
        let mut windows: Vec<(usize, usize, usize)> = Vec::new();
        let mut open = |r: usize, hit: Range<usize>| {
            let rule = &self.rules[r];
            let win = hit.start.saturating_sub(rule.before)..limit.min(hit.start + rule.after);
            let win = match rule.gate {
                Some(gate) => gate(hay, hit, win),
                None => Some(win),
            };
            if let Some(w) = win {
                windows.push((r, w.start, w.end));
            }
        };
        let mut scan_all = false;
        if let Some(ac) = &self.prefilter {
            match ac.try_find_iter(hay) {
                Ok(iter) => {
                    for m in iter {
                        for kr in &self.keyword_rules[m.pattern().as_usize()] {
                            let start = m.start() + kr.offset;
                            open(kr.rule, start..start + kr.len);
                        }
                    }
                }
                // Cannot happen with this automaton's configuration; if it
                // did, scanning everything beats scanning nothing.
                Err(_) => scan_all = true,
            }
        }
        for (finder, owners) in &self.short_keywords {
            for at in finder.find_iter(hay) {
                for &r in owners {
                    open(r, at..at + finder.needle().len());
                }
            }
        }
        if scan_all {
            windows.extend((0..self.rules.len()).map(|r| (r, 0, limit)));
        } else {
            windows.extend(self.unkeyed.iter().map(|&r| (r, 0, limit)));
        }
        let mut hits = Vec::new();
        if windows.is_empty() {
            return hits;
        }
        windows.sort_unstable();
        // One lowered copy serves every folded rule; offsets are the same.
        let lowered = windows
            .iter()
            .any(|&(r, ..)| self.rules[r].folded)
            .then(|| hay.to_ascii_lowercase());
        let mut i = 0;
        // Where the previous window of the same rule stopped searching, so a
        // match found once is not found again from an overlapping window.
        let mut resume = (usize::MAX, 0);
        while i < windows.len() {
            let (r, start, mut end) = windows[i];
            i += 1;
            while i < windows.len() && windows[i].0 == r && windows[i].1 <= end {
                end = end.max(windows[i].2);
                i += 1;
            }
            let from = if resume.0 == r {
                start.max(resume.1)
            } else {
                start
            };
            let text = match &lowered {
                Some(low) if self.rules[r].folded => low,
                _ => hay,
            };
            resume = (r, self.search(r, text, from, end, &mut hits));
        }
        hits
    }

    /// Runs rule `r` over `hay[from..end]`, growing `end` while matches run
    /// into it. Returns the end of the last match looked at (not `end`: a
    /// token straddling `end` must still be found from a later window).
    fn search(
        &self,
        r: usize,
        hay: &[u8],
        mut pos: usize,
        mut end: usize,
        out: &mut Vec<Hit>,
    ) -> usize {
        let rule = &self.rules[r];
        let limit = hay.len();
        let mut locs = rule.regex.capture_locations();
        while pos < end {
            let Some(m) = rule.regex.captures_read_at(&mut locs, &hay[..end], pos) else {
                break;
            };
            let secret = rule
                .secret_group
                .and_then(|g| locs.get(g))
                .map_or(m.range(), |(s, e)| s..e);
            if secret.end == end && end < limit {
                // The secret may continue past the window (a terminator
                // matched at the window's end is no such sign): double the
                // window and retry.
                end = limit.min(end + (end - pos).max(rule.after).max(256));
                continue;
            }
            let next = m.end().max(m.start() + 1);
            if secret.is_empty() {
                pos = next;
                continue;
            }
            if rule.boundary && !checks::left_boundary(hay, secret.start) {
                // Glued to a word (`xsk-…`); a real token may still start
                // inside this match, so look again just past its start.
                pos = secret.start + 1;
                continue;
            }
            pos = next;
            let bytes = &hay[secret.clone()];
            if rule
                .entropy
                .is_some_and(|floor| checks::entropy(bytes) < floor)
            {
                continue;
            }
            if let Some(check) = rule.check {
                let cand = checks::Candidate {
                    hay,
                    secret: secret.clone(),
                    ident: rule
                        .ident_group
                        .and_then(|g| locs.get(g))
                        .map(|(s, e)| s..e),
                };
                if !check(&cand) {
                    continue;
                }
            }
            out.push(Hit {
                rule: r,
                start: secret.start,
                end: secret.end,
            });
        }
        pos
    }

    /// Merges overlapping hits (union, named after the strongest rule) and
    /// drops those on a line with [`ALLOW_MARKER`].
    fn resolve(&self, mut hits: Vec<Hit>, text: &[u8]) -> Vec<Finding> {
        hits.sort_unstable_by_key(|h| (h.start, std::cmp::Reverse(h.end)));
        let stronger = |a: &Hit, b: &Hit| {
            let (ra, rb) = (&self.rules[a.rule], &self.rules[b.rule]);
            (ra.priority, a.end - a.start, std::cmp::Reverse(a.rule))
                > (rb.priority, b.end - b.start, std::cmp::Reverse(b.rule))
        };
        let mut merged: Vec<(Hit, Range<usize>)> = Vec::new();
        for h in hits {
            match merged.last_mut() {
                Some((best, span)) if h.start < span.end => {
                    span.end = span.end.max(h.end);
                    if stronger(&h, best) {
                        *best = h;
                    }
                }
                _ => merged.push((h, h.start..h.end)),
            }
        }
        merged
            .into_iter()
            .filter(|(_, span)| !allowed(text, span))
            .map(|(best, span)| {
                let rule = &self.rules[best.rule];
                Finding {
                    kind: rule.kind.clone(),
                    rule: rule.id.clone(),
                    range: span,
                    custom: rule.custom,
                }
            })
            .collect()
    }
}

fn builtin_rules() -> Vec<(Rule, &'static [&'static str])> {
    rules::BUILTIN
        .iter()
        .filter_map(|def| match RegexBuilder::new(def.pattern).unicode(false).build() {
            Ok(regex) => Some((Rule::new(def, regex), def.keywords)),
            Err(e) => {
                // Unreachable in practice: a unit test compiles every rule.
                tracing::error!(rule = def.id, error = %e, "built-in secret rule does not compile");
                None
            }
        })
        .collect()
}

fn group_index(regex: &Regex, name: &str) -> Option<usize> {
    regex.capture_names().position(|n| n == Some(name))
}

/// Whether the lines spanned by `span` carry the allow marker. A line also
/// ends at the JSON escape of a line break (`\n`, `\r` as two characters):
/// in JSON text, such as a tool call's arguments, a whole file is one line
/// of bytes, and one marker in it must not let every later secret through.
fn allowed(text: &[u8], span: &Range<usize>) -> bool {
    let start = line_start(text, span.start);
    let end = line_end(text, span.end);
    memchr::memmem::find(&text[start..end], ALLOW_MARKER.as_bytes()).is_some()
}

/// Where the line holding `at` starts: just after the last newline, or
/// escaped newline, that ends before `at`.
fn line_start(text: &[u8], at: usize) -> usize {
    let mut i = at;
    while let Some(p) = memchr::memrchr2(b'\n', b'\\', &text[..i]) {
        if text[p] == b'\n' {
            return p + 1;
        }
        // `p` is the last backslash of a run; it starts an escape when the
        // run's length is odd (`\\n` is a backslash, then an `n`).
        let run = text[..p].iter().rev().take_while(|&&b| b == b'\\').count();
        if run % 2 == 0 && p + 2 <= at && matches!(text.get(p + 1), Some(b'n' | b'r')) {
            return p + 2;
        }
        // The whole run is done with: each backslash is looked at once.
        i = p - run;
    }
    0
}

/// Where the line holding `at` ends: at the first newline, or escaped
/// newline, from `at` on (the text's end without one).
fn line_end(text: &[u8], at: usize) -> usize {
    let mut i = at;
    while let Some(off) = memchr::memchr2(b'\n', b'\\', &text[i..]) {
        let p = i + off;
        if text[p] == b'\n' {
            return p;
        }
        // The run of backslashes `p` is part of, which may have begun
        // before `at`; its last one starts an escape when its length is odd.
        let before = text[..p].iter().rev().take_while(|&&b| b == b'\\').count();
        let run_end = p + text[p..].iter().take_while(|&&b| b == b'\\').count();
        if (before + run_end - p) % 2 == 1 && matches!(text.get(run_end), Some(b'n' | b'r')) {
            return run_end - 1;
        }
        i = run_end;
    }
    text.len()
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}
