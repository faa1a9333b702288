//! The built-in list of LLM API hosts the forward proxy decrypts by default,
//! and a small matcher for host patterns (`*` matches any run of characters).

/// Hosts of the providers kt recognises (interface contract §3).
pub const BUILTIN_LLM_HOSTS: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com",
    "*.githubcopilot.com",
    "copilot-proxy.githubusercontent.com",
    "copilot-api.*.ghe.com",
    "sourcegraph.com",
    "cody-gateway.sourcegraph.com",
    "generativelanguage.googleapis.com",
    "*.openai.azure.com",
    "api.mistral.ai",
    "codestral.mistral.ai",
];

/// A set of host patterns, matched case-insensitively.
#[derive(Debug, Clone, Default)]
pub struct HostSet {
    exact: std::collections::HashSet<String>,
    globs: Vec<String>,
}

impl HostSet {
    pub fn new<I, S>(patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = HostSet::default();
        for p in patterns {
            set.insert(p.as_ref());
        }
        set
    }

    /// The built-in LLM hosts.
    pub fn builtin_llm() -> Self {
        Self::new(BUILTIN_LLM_HOSTS)
    }

    pub fn insert(&mut self, pattern: &str) {
        let p = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
        if p.is_empty() {
            return;
        }
        if p.contains('*') {
            self.globs.push(p);
        } else {
            self.exact.insert(p);
        }
    }

    /// True when `host` (no port, brackets allowed for IPv6) matches a pattern.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        self.exact.contains(host) || self.globs.iter().any(|g| glob_match(g, host))
    }
}

/// Matches `text` against `pattern` where `*` stands for one or more characters.
fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, rest) = match parts.split_first() {
        Some(x) => x,
        None => return false,
    };
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return remaining.is_empty();
    };
    for part in middle {
        // Each `*` must consume at least one character.
        let search_from = remaining
            .char_indices()
            .nth(1)
            .map_or(remaining.len(), |(i, _)| i);
        match remaining[search_from..].find(part) {
            Some(i) => remaining = &remaining[search_from + i + part.len()..],
            None => return false,
        }
    }
    remaining.len() > last.len() && remaining.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_hosts_match() {
        let set = HostSet::builtin_llm();
        for h in [
            "api.openai.com",
            "API.OpenAI.com",
            "api.githubcopilot.com",
            "api.individual.githubcopilot.com",
            "copilot-api.acme.ghe.com",
            "myres.openai.azure.com",
            "codestral.mistral.ai",
            "sourcegraph.com",
            "api.openai.com.",
        ] {
            assert!(set.matches(h), "{h} should match");
        }
        for h in [
            "openai.com",
            "githubcopilot.com",
            "evilapi.openai.com",
            "api.openai.com.evil.com",
            "copilot-api..ghe.com",
            "github.com",
            "example.com",
        ] {
            assert!(!set.matches(h), "{h} should not match");
        }
    }

    #[test]
    fn glob_edge_cases() {
        assert!(glob_match("*.a.com", "x.a.com"));
        assert!(!glob_match("*.a.com", ".a.com"));
        assert!(glob_match("a*b*c", "axbyc"));
        assert!(!glob_match("a*b*c", "abc"));
        assert!(glob_match("*", "anything"));
    }
}
