//! Tests of the whole loader: both shapes, defaults, every policy type's
//! options, and problems reported together with their positions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn ok(text: &str) -> Config {
    match Config::parse(text, Path::new("p.yaml")) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn problems(text: &str) -> Vec<Problem> {
    match Config::parse(text, Path::new("p.yaml")) {
        Ok(_) => panic!("expected problems"),
        Err(e) => e.problems().to_vec(),
    }
}

/// (line, column, path) of each problem, for exact assertions.
fn where_(ps: &[Problem]) -> Vec<(usize, usize, &str)> {
    ps.iter()
        .map(|p| (p.mark.line, p.mark.column, p.path.as_str()))
        .collect()
}

fn names(c: &Config) -> Vec<&str> {
    c.chain().map(|p| p.name.as_str()).collect()
}

const CONTRACT: &str = "\
pack:
  name: vscode-cody-providers-1
  version: 1.0.0
  enabled: true
providers:
  targets:
    - id: openai
      provider:
        type: openai
        base_url: https://api.openai.com/v1
        api_key_env: OPENAI_API_KEY
        models: [gpt-4o, gpt-4o-mini]
    - id: anthropic
intercept:
  hosts: [sourcegraph.example.com]
upstream:
  connect_to: []
  ca_files: []
auth:
  required: true
storage:
  url: postgres://kt@db:5432/kt
policies:
  chain: [audit-logger, secret-redaction, content-filter, ide-cache]
policy:
  audit-logger:
    immutable: true
    retention_days: 365
    log_all_access: true
  secret-redaction:
    type: redact
    phases: [input, output]
  content-filter:
    phases: [input]
    patterns: ['(?i)internal-project-\\w+']
    action: block
  ide-cache:
    type: cache
    ttl_seconds: 3600
    scope: team
    backend: redis://redis:6379/0
    when:
      endpoints: [completions]
";

#[test]
fn the_contract_example_resolves() {
    let c = ok(CONTRACT);
    let pack = c.pack.as_ref().unwrap();
    assert_eq!(
        (pack.name.as_str(), pack.version.as_deref()),
        ("vscode-cody-providers-1", Some("1.0.0"))
    );
    assert_eq!(c.providers.len(), 2);
    let a = c.provider("anthropic").unwrap();
    assert_eq!(a.kind, ProviderType::Anthropic);
    assert_eq!(a.base_url.as_deref(), Some("https://api.anthropic.com"));
    assert_eq!(a.api_key_env.as_deref(), Some("ANTHROPIC_API_KEY"));
    assert_eq!(
        c.provider("openai").unwrap().models,
        ["gpt-4o", "gpt-4o-mini"]
    );
    assert_eq!(c.intercept.hosts, ["sourcegraph.example.com"]);
    assert_eq!(c.auth.required, Some(true));
    assert!(matches!(c.storage, Some(Storage::Postgres { .. })));
    assert_eq!(
        names(&c),
        [
            "audit-logger",
            "secret-redaction",
            "content-filter",
            "ide-cache"
        ]
    );

    let audit = &c.policies[0];
    let PolicyOptions::AuditLogger(o) = &audit.options else {
        panic!()
    };
    assert!(o.immutable && o.log_all_access && !o.log_bodies);
    assert_eq!(o.retention_days, Some(365));
    assert_eq!(
        audit.on_error,
        OnError::FailClosed,
        "immutable audit fails closed"
    );

    let redact = &c.policies[1];
    assert_eq!(redact.kind, PolicyKind::Redact);
    assert_eq!(redact.phases, Phases::BOTH);

    let cf = &c.policies[2];
    assert_eq!(cf.kind, PolicyKind::ContentFilter);
    let PolicyOptions::ContentFilter(o) = &cf.options else {
        panic!()
    };
    assert!(o.patterns[0].is_match("see Internal-Project-Falcon"));
    assert_eq!(o.action, FilterAction::Block);

    let cache = &c.policies[3];
    let PolicyOptions::Cache(o) = &cache.options else {
        panic!()
    };
    assert_eq!(
        o.backend,
        CacheBackend::Redis("redis://redis:6379/0".into())
    );
    assert_eq!(o.scope, Scope::Team);
    let per_endpoint: Vec<Vec<&str>> = Endpoint::ALL
        .iter()
        .map(|e| c.chain_for(*e).map(|p| p.name.as_str()).collect())
        .collect();
    assert_eq!(per_endpoint[1].last(), Some(&"ide-cache"));
    assert!(!per_endpoint[0].contains(&"ide-cache"));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn the_list_shape_resolves() {
    let c = ok("policies:\n  - name: ide-cache\n    type: cache\n    config:\n      enabled: true\n      ttl_seconds: 3600\n  - name: audit-logger\n  - name: slow\n    type: rate-limit\n    when: {users: [dev1]}\n    config: {requests_per_minute: 60}\n");
    assert_eq!(names(&c), ["ide-cache", "audit-logger", "slow"]);
    let PolicyOptions::Cache(o) = &c.policies[0].options else {
        panic!()
    };
    assert_eq!(o.ttl_seconds, 3600);
    assert_eq!(
        c.policies[1].kind,
        PolicyKind::AuditLogger,
        "type defaults to the name"
    );
    let PolicyOptions::RateLimit(o) = &c.policies[2].options else {
        panic!()
    };
    assert_eq!(
        (o.requests_per_minute, o.burst, o.per),
        (Some(60), Some(60), Scope::User)
    );
    assert_eq!(c.policies[2].when.describe_conditions(), "users=dev1");
}

#[test]
fn defaults_without_policies() {
    for text in [
        "",
        "# nothing\n",
        "auth: {required: false}\n",
        "policies:\n",
    ] {
        let c = ok(text);
        assert_eq!(names(&c), ["audit-logger"], "{text:?}");
        let a = &c.policies[0];
        assert_eq!((a.phases, a.on_error), (Phases::BOTH, OnError::FailOpen));
        let PolicyOptions::AuditLogger(o) = &a.options else {
            panic!()
        };
        assert_eq!(
            (o.immutable, o.log_bodies, o.fsync),
            (false, false, Fsync::Batch)
        );
    }
    let d = Config::default();
    assert_eq!(names(&d), ["audit-logger"]);
    assert!(d.providers.is_empty() && d.storage.is_none() && d.auth.required.is_none());
    // A `policy.audit-logger` section configures the default chain.
    let c = ok("policy:\n  audit-logger:\n    log_bodies: true\n");
    let PolicyOptions::AuditLogger(o) = &c.policies[0].options else {
        panic!()
    };
    assert!(o.log_bodies);
}

#[test]
fn defaults_per_type() {
    let c = ok("policies:\n  chain: [audit-logger, redact, content-filter, cache, passthrough]\n");
    let got: Vec<(PolicyKind, Phases, OnError)> = c
        .policies
        .iter()
        .map(|p| (p.kind, p.phases, p.on_error))
        .collect();
    let input = Phases {
        input: true,
        output: false,
    };
    assert_eq!(
        got,
        [
            (PolicyKind::AuditLogger, Phases::BOTH, OnError::FailOpen),
            (PolicyKind::Redact, Phases::BOTH, OnError::FailClosed),
            (PolicyKind::ContentFilter, input, OnError::FailClosed),
            (PolicyKind::Cache, Phases::BOTH, OnError::FailOpen),
            (PolicyKind::Passthrough, Phases::BOTH, OnError::FailOpen),
        ]
    );
    let PolicyOptions::Cache(o) = &c.policies[3].options else {
        panic!()
    };
    assert_eq!(
        *o,
        CacheOptions {
            ttl_seconds: 3600,
            scope: Scope::Team,
            backend: CacheBackend::Memory,
            max_bytes: None,
            max_entry_bytes: None,
            allow_nondeterministic: false,
            key_prefix: None,
        }
    );
    // A content filter with nothing to match is valid but worth a warning,
    // and so is a passthrough that silences the rest of the chain.
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    let says = |needle: &str| c.warnings.iter().any(|w| w.message.contains(needle));
    assert!(says("matches nothing"), "{:?}", c.warnings);
    assert!(
        says("passthrough `passthrough` turns off redact, content-filter, cache for the requests it matches"),
        "{:?}",
        c.warnings
    );
}

#[test]
fn every_type_takes_its_options() {
    let c = ok("\
policies:
  chain: [log, sec, filter, cache, pass, rl, money]
policy:
  log:
    type: audit-logger
    retention_days: 30
    log_bodies: true
    fsync: always
    on_error: fail_open
  sec:
    type: redact
    patterns:
      - {name: ticket, regex: 'TCK-[0-9]{6}'}
    disable: [jwt]
    stream_holdback_bytes: 512
    phases: [input]
  filter:
    type: content-filter
    patterns: ['secret-\\d+']
    keywords: [Project Falcon]
    action: log
    message: not here
  cache:
    type: cache
    ttl_seconds: 60
    scope: user
    max_bytes: 64MiB
    max_entry_bytes: 1048576
    allow_nondeterministic: true
    key_prefix: 'team-a:kt:'
  pass:
    type: passthrough
    enabled: false
  rl:
    type: rate-limit
    tokens_per_minute: 100000
    per: team
  money:
    type: budget
    usd_per_day: 25
    usd_per_month: 400.5
    per: global
    action: log
");
    let o = |i: usize| &c.policies[i].options;
    let PolicyOptions::AuditLogger(a) = o(0) else {
        panic!()
    };
    assert_eq!(
        (a.retention_days, a.log_bodies, a.fsync),
        (Some(30), true, Fsync::Always)
    );
    assert_eq!(c.policies[0].on_error, OnError::FailOpen);
    let PolicyOptions::Redact(r) = o(1) else {
        panic!()
    };
    assert_eq!(r.patterns[0].name, "ticket");
    assert!(r.patterns[0].regex.is_match("TCK-123456"));
    assert_eq!(
        (
            r.disable.as_slice(),
            r.kinds.is_none(),
            r.stream_holdback_bytes
        ),
        (&["jwt".to_string()][..], true, Some(512))
    );
    assert_eq!(
        c.policies[1].phases,
        Phases {
            input: true,
            output: false
        }
    );
    let PolicyOptions::ContentFilter(f) = o(2) else {
        panic!()
    };
    assert_eq!(
        (f.keywords.len(), f.action, f.message.as_deref()),
        (1, FilterAction::Log, Some("not here"))
    );
    let PolicyOptions::Cache(k) = o(3) else {
        panic!()
    };
    assert_eq!(
        (
            k.ttl_seconds,
            k.scope,
            k.max_bytes,
            k.max_entry_bytes,
            k.allow_nondeterministic,
            k.key_prefix.as_deref()
        ),
        (
            60,
            Scope::User,
            Some(64 << 20),
            Some(1 << 20),
            true,
            Some("team-a:kt:")
        )
    );
    assert!(matches!(o(4), PolicyOptions::Passthrough));
    let PolicyOptions::RateLimit(l) = o(5) else {
        panic!()
    };
    assert_eq!(
        *l,
        RateLimitOptions {
            requests_per_minute: None,
            tokens_per_minute: Some(100_000),
            per: Scope::Team,
            burst: None,
            backend: CounterBackend::Memory,
        }
    );
    let PolicyOptions::Budget(b) = o(6) else {
        panic!()
    };
    assert_eq!(
        *b,
        BudgetOptions {
            usd_per_day: Some(25.0),
            usd_per_month: Some(400.5),
            per: Scope::Global,
            action: BudgetAction::Log,
            backend: CounterBackend::Memory,
        }
    );
    assert_eq!(c.policies[6].on_error, OnError::FailClosed);
    // The disabled passthrough stays in `policies` but not in the chain.
    assert_eq!(c.policies.len(), 7);
    assert_eq!(names(&c), ["log", "sec", "filter", "cache", "rl", "money"]);
}

#[test]
fn disabled_policies_and_packs_leave_the_chain() {
    let c =
        ok("policies:\n  chain: [audit-logger, cache]\npolicy:\n  cache:\n    enabled: false\n");
    assert_eq!(names(&c), ["audit-logger"]);
    for e in Endpoint::ALL {
        assert_eq!(c.chain_for(e).count(), 1);
    }
    let c = ok("pack: {name: p, enabled: false}\npolicies:\n  chain: [audit-logger]\n");
    assert_eq!(c.chain().count(), 0);
    assert!(c.warnings[0].message.contains("disabled"));
}

#[test]
fn unknown_keys_at_every_depth_with_exact_positions() {
    let ps = problems(
        "\
intercept:
  hostz: [a]
polices:
  chain: [audit-logger]
policy:
  audit-logger:
    imutable: true
    when:
      endpoint: [completions]
providers:
  targets:
    - id: openai
      provider: {type: openai, base: x}
",
    );
    assert_eq!(
        where_(&ps),
        [
            (2, 3, "intercept.hostz"),
            (3, 1, "polices"),
            (7, 5, "policy.audit-logger.imutable"),
            (9, 7, "policy.audit-logger.when.endpoint"),
            (13, 32, "providers.targets[0].provider.base"),
        ]
    );
    assert!(
        ps[1].message.contains("did you mean `policies`"),
        "{}",
        ps[1].message
    );
    assert!(
        ps[2].message.contains("did you mean `immutable`"),
        "{}",
        ps[2].message
    );
    // The options' message also lists the keys every policy takes.
    assert!(ps[2].message.contains("on_error"), "{}", ps[2].message);
}

#[test]
fn unknown_types_are_located() {
    let ps = problems("policies:\n  chain: [a, b, cahce]\npolicy:\n  a:\n    type: cahce\n  b:\n    ttl_seconds: 1\n");
    assert_eq!(
        where_(&ps),
        [
            (2, 17, "policies.chain[2]"),
            (5, 11, "policy.a.type"),
            (6, 3, "policy.b")
        ]
    );
    assert_eq!(
        ps[1].message,
        "unknown policy type `cahce` (did you mean `cache`?), expected one of audit-logger, redact, content-filter, cache, passthrough, rate-limit, budget"
    );
    assert!(
        ps[0].message.contains("did you mean `cache`"),
        "{}",
        ps[0].message
    );
    assert!(
        ps[2].message.contains("needs a `type`"),
        "{}",
        ps[2].message
    );
    let ps = problems("policies:\n  - name: x\n    type: nope\n");
    assert_eq!(where_(&ps), [(3, 11, "policies[0].type")]);
}

#[test]
fn wrong_value_types() {
    let ps = problems("auth:\n  required: maybe\n");
    assert_eq!(where_(&ps), [(2, 13, "auth.required")]);
    assert_eq!(ps[0].message, "expected a boolean, found string \"maybe\"");
    let ps = problems("policy:\n  audit-logger:\n    retention_days: [1]\n");
    assert_eq!(where_(&ps), [(3, 21, "policy.audit-logger.retention_days")]);
    assert_eq!(ps[0].message, "expected u32, found a list");
    let ps = problems("intercept: [a.com]\n");
    assert_eq!(where_(&ps), [(1, 12, "intercept")]);
    let ps = problems(
        "policy:\n  cf:\n    type: content-filter\n    action: blok\npolicies: {chain: [cf]}\n",
    );
    assert_eq!(where_(&ps), [(4, 13, "policy.cf.action")]);
    assert_eq!(
        ps[0].message,
        "unknown value `blok` (did you mean `block`?), expected one of block, redact, log"
    );
}

#[test]
fn bad_regexes_name_the_pattern() {
    let ps = problems(
        "\
policies: {chain: [redact, content-filter]}
policy:
  redact:
    patterns:
      - name: ticket
        regex: 'TCK-[0-9'
  content-filter:
    patterns: ['ok', '(unclosed']
",
    );
    assert_eq!(
        where_(&ps),
        [
            (6, 16, "policy.redact.patterns[0].regex"),
            (8, 22, "policy.content-filter.patterns[1]")
        ]
    );
    assert!(
        ps[0]
            .message
            .starts_with("regex of pattern `ticket` does not compile: "),
        "{}",
        ps[0].message
    );
    assert!(
        ps[1].message.starts_with("pattern 2 does not compile: "),
        "{}",
        ps[1].message
    );
}

#[test]
fn bad_endpoint_names() {
    let ps = problems("policy:\n  audit-logger:\n    when:\n      endpoints: [chat-completions]\n");
    assert_eq!(
        where_(&ps),
        [(4, 19, "policy.audit-logger.when.endpoints[0]")]
    );
    assert!(ps[0]
        .message
        .contains("expected one of chat/completions, completions, embeddings, models, other"));
}

#[test]
fn chain_names_must_resolve() {
    let ps = problems("policies:\n  chain: [audit-logger, secret-redaction]\n");
    assert_eq!(where_(&ps), [(2, 25, "policies.chain[1]")]);
    assert!(
        ps[0]
            .message
            .contains("has no `policy.secret-redaction` section"),
        "{}",
        ps[0].message
    );
    // And the other way round: a section the chain never names.
    let ps =
        problems("policies:\n  chain: [audit-logger]\npolicy:\n  ide-cache:\n    type: cache\n");
    assert_eq!(where_(&ps), [(4, 3, "policy.ide-cache")]);
    // A type listed twice needs two names.
    let ps = problems("policies:\n  chain: [redact, redact]\n");
    assert_eq!(where_(&ps), [(2, 19, "policies.chain[1]")]);
}

#[test]
fn independent_mistakes_are_reported_together() {
    let text = "\
pack:
  name: team
providers:
  targets:
    - id: opneai
    - id: anthropic
      provider: {base_url: ftp://x}
policies:
  chain: [audit-logger, ide-cache, filter]
policy:
  ide-cache:
    type: cache
    ttl_seconds: -5
    scope: everyone
  filter:
    type: content-filter
    action: blok
    keywords: [a]
storage:
  url: mysql://db/kt
";
    let err = Config::parse(text, Path::new("p.yaml")).unwrap_err();
    let ps = err.problems();
    assert_eq!(
        where_(ps),
        [
            (5, 11, "providers.targets[0].id"),
            (7, 28, "providers.targets[1].provider.base_url"),
            (13, 18, "policy.ide-cache.ttl_seconds"),
            (14, 12, "policy.ide-cache.scope"),
            (17, 13, "policy.filter.action"),
            (20, 8, "storage.url"),
        ]
    );
    assert!(
        ps[0].message.contains("did you mean the id `openai`"),
        "{}",
        ps[0].message
    );
    // Display: one problem per line, file:line:col: path: message.
    let shown = err.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 6, "{shown}");
    assert!(
        lines[4].starts_with("p.yaml:17:13: policy.filter.action: unknown value `blok`"),
        "{shown}"
    );
}

#[test]
fn seed_style_targets_with_empty_provider() {
    // Guides write `provider:` with nothing under it for well-known ids.
    let c = ok("providers:\n  targets:\n  - id: sourcegraph\n    provider:\n  - id: openai\n    provider:\n  - id: anthropic\n    provider:\n");
    let ids: Vec<(&str, ProviderType, Option<&str>)> = c
        .providers
        .iter()
        .map(|t| (t.id.as_str(), t.kind, t.base_url.as_deref()))
        .collect();
    assert_eq!(
        ids,
        [
            (
                "sourcegraph",
                ProviderType::Sourcegraph,
                Some("https://sourcegraph.com")
            ),
            (
                "openai",
                ProviderType::Openai,
                Some("https://api.openai.com/v1")
            ),
            (
                "anthropic",
                ProviderType::Anthropic,
                Some("https://api.anthropic.com")
            ),
        ]
    );
}

#[test]
fn custom_provider_targets() {
    let c = ok("providers:\n  targets:\n    - id: local\n      provider: {type: openai, base_url: 'http://127.0.0.1:11434/v1/'}\npolicy:\n  audit-logger:\n    when: {providers: [local, openai]}\n");
    let t = c.provider("local").unwrap();
    assert_eq!(
        (t.kind, t.base_url.as_deref(), t.api_key_env.as_deref()),
        (
            ProviderType::Openai,
            Some("http://127.0.0.1:11434/v1"),
            None
        )
    );
    let ps = problems("providers:\n  targets:\n    - id: local\n    - id: x\n      provider: {type: openia, base_url: 'http://h'}\n    - id: y\n      provider: {type: openai}\n    - id: local\n");
    assert_eq!(
        where_(&ps),
        [
            (3, 11, "providers.targets[0].id"),
            (5, 24, "providers.targets[1].provider.type"),
            (6, 11, "providers.targets[2].id"),
            (8, 11, "providers.targets[3].id"),
        ]
    );
    assert!(
        ps[1].message.contains("did you mean `openai`"),
        "{}",
        ps[1].message
    );
    assert!(
        ps[2].message.contains("needs `provider.base_url`"),
        "{}",
        ps[2].message
    );
    assert!(ps[3].message.contains("used twice"), "{}", ps[3].message);
}

#[test]
fn storage_urls() {
    assert!(matches!(
        Storage::parse("postgresql://kt@db/kt"),
        Ok(Storage::Postgres { .. })
    ));
    assert_eq!(
        Storage::parse("/var/lib/kt"),
        Ok(Storage::Files {
            dir: "/var/lib/kt".into()
        })
    );
    assert_eq!(
        Storage::parse("file://data"),
        Ok(Storage::Files { dir: "data".into() })
    );
    assert!(Storage::parse("postgres://").is_err());
    assert!(Storage::parse("sqlite://x.db")
        .unwrap_err()
        .contains("`sqlite` is not supported"));
    let s = Storage::parse("postgres://kt:hunter2@db:5432/kt").unwrap();
    assert_eq!(s.to_string(), "postgres://kt:***@db:5432/kt");
}

#[test]
fn option_checks() {
    let ps = problems("\
policies:
  chain: [rl, b, c, r]
policy:
  rl: {type: rate-limit, burst: 5}
  b: {type: budget, usd_per_day: 0}
  c: {type: cache, backend: memcached://x, ttl_seconds: 0, max_bytes: 10, max_entry_bytes: 1KiB, key_prefix: 'a b'}
  r: {type: redact, kinds: [aws_access_key_id, 'bad kind'], disable: [jwt], patterns: [{name: a, regex: x}, {name: a, regex: y}]}
");
    let msgs: Vec<String> = ps
        .iter()
        .map(|p| format!("{}:{} {}", p.mark.line, p.path, p.message))
        .collect();
    let want = [
        "4:policy.rl needs", // neither limit set (at the section)
        "4:policy.rl.burst", // burst without requests_per_minute
        "5:policy.b.usd_per_day",
        "6:policy.c.ttl_seconds",
        "6:policy.c.backend",
        "6:policy.c.max_entry_bytes",
        "6:policy.c.key_prefix",
        "7:policy.r.patterns[1].name",
        "7:policy.r.disable[0]",
        "7:policy.r.kinds[1]",
    ];
    for w in want {
        let (pos, rest) = w.split_once(' ').unwrap_or((w, ""));
        assert!(
            msgs.iter()
                .any(|m| m.starts_with(pos) && m.contains(rest.trim_end_matches(" needs"))),
            "missing {w:?} in {msgs:#?}"
        );
    }
    assert_eq!(ps.len(), want.len(), "{msgs:#?}");
}

/// A TTL no clock can add is refused at load, not a panic on the first
/// store; a year is the most.
#[test]
fn a_cache_ttl_past_a_year_is_refused() {
    let yaml = |ttl: u64| {
        format!("policies:\n  chain: [c]\npolicy:\n  c: {{type: cache, ttl_seconds: {ttl}}}\n")
    };
    let ps = problems(&yaml(u64::MAX));
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert_eq!(ps[0].path, "policy.c.ttl_seconds");
    assert!(
        ps[0].message.contains("at most 31536000"),
        "{}",
        ps[0].message
    );
    assert!(Config::parse(&yaml(31_536_000), Path::new("p.yaml")).is_ok());
}

#[test]
fn redact_kinds_must_name_a_kind_the_scanner_knows() {
    // `github_token` is no kind (GitHub's classic tokens are `github_pat`):
    // accepted, it would redact nothing and every token would go upstream.
    let ps = problems(
        "\
policies:
  chain: [r, d]
policy:
  r: {type: redact, kinds: [github_token, github_pat, openai-api-key, ticket], patterns: [{name: ticket, regex: 'TCK-[0-9]+'}]}
  d: {type: redact, disable: [jtw]}
",
    );
    assert_eq!(
        where_(&ps),
        [(4, 29, "policy.r.kinds[0]"), (5, 31, "policy.d.disable[0]")],
        "{ps:#?}"
    );
    let m = &ps[0].message;
    assert!(m.starts_with("unknown secret kind `github_token`"), "{m}");
    // Every kind is listed, and the policy's own pattern names.
    assert!(m.contains("github_pat, ") && m.contains("password"), "{m}");
    assert!(m.contains("patterns` (ticket)"), "{m}");
    assert!(
        ps[1].message.contains("(did you mean `jwt`?)"),
        "{}",
        ps[1].message
    );
    // Built-in kinds, rule ids and pattern names are all accepted.
    ok("policies:\n  chain: [r]\npolicy:\n  r: {type: redact, kinds: [github_pat, openai-api-key, ticket], patterns: [{name: ticket, regex: x}]}\n");
}

#[test]
fn the_readme_lists_every_secret_kind() {
    // Users pick `kinds:` names from the README's list.
    let readme = include_str!("../../README.md");
    for kind in crate::policy::secrets::builtin_kinds() {
        assert!(readme.contains(&format!("`{kind}`")), "{kind}");
    }
}

#[test]
fn a_redis_url_the_gateway_could_not_open_is_a_problem_here() {
    let ps = problems(
        "\
policies:
  chain: [rl]
policy:
  rl: {type: rate-limit, requests_per_minute: 5, backend: 'redis://kt:pw@127.0.0.1:notaport/7'}
",
    );
    assert_eq!(ps.len(), 1, "{ps:?}");
    assert_eq!(ps[0].path, "policy.rl.backend");
    assert!(
        ps[0].message.contains("not a usable Redis URL"),
        "{}",
        ps[0].message
    );
    assert!(
        !ps[0].message.contains(":pw@"),
        "credentials shown: {}",
        ps[0].message
    );
}

#[test]
fn limit_backends_are_memory_or_redis_with_a_prefix() {
    let c = ok("\
policies:
  chain: [rl, b]
policy:
  rl: {type: rate-limit, requests_per_minute: 5, backend: 'redis://kt:pw@r:6379/2', key_prefix: 'team-a:'}
  b: {type: budget, usd_per_day: 1, backend: 'redis://r:6379/2'}
");
    let PolicyOptions::RateLimit(l) = &c.policies[0].options else {
        panic!()
    };
    assert_eq!(
        l.backend,
        CounterBackend::Redis {
            url: "redis://kt:pw@r:6379/2".into(),
            key_prefix: "team-a:".into()
        }
    );
    let PolicyOptions::Budget(b) = &c.policies[1].options else {
        panic!()
    };
    assert!(
        matches!(&b.backend, CounterBackend::Redis { key_prefix, .. } if key_prefix == DEFAULT_LIMITS_PREFIX)
    );
    let ps = problems(
        "\
policies:
  chain: [rl, b]
policy:
  rl: {type: rate-limit, requests_per_minute: 5, backend: 'http://r:6379'}
  b: {type: budget, usd_per_day: 1, key_prefix: 'x:'}
",
    );
    let msgs: Vec<String> = ps
        .iter()
        .map(|p| format!("{}:{} {}", p.mark.line, p.path, p.message))
        .collect();
    assert_eq!(ps.len(), 2, "{msgs:#?}");
    assert!(
        msgs[0].starts_with("4:policy.rl.backend rate-limit backend"),
        "{msgs:#?}"
    );
    assert!(
        msgs[1].starts_with("5:policy.b.key_prefix key_prefix applies to a Redis backend"),
        "{msgs:#?}"
    );
}

#[test]
fn list_shape_checks() {
    let ps = problems(
        "\
policies:
  - name: a
    type: cache
    enabled: true
    colour: red
    config: {enabled: false, ttl_seconds: 5}
  - type: redact
  - name: a
    type: redact
policy:
  x: {}
",
    );
    assert_eq!(
        where_(&ps),
        [
            (5, 5, "policies[0].colour"),
            (6, 23, "policies[0].config.enabled"),
            (7, 5, "policies[1]"),
            (8, 11, "policies[2].name"),
            (11, 3, "policy"),
        ]
    );
    assert!(ps[0].message.contains("name, config"), "{}", ps[0].message);
    assert!(
        ps[1].message.contains("also set at line 4"),
        "{}",
        ps[1].message
    );
}

#[test]
fn upstream_and_intercept_values_are_checked() {
    let c = ok("upstream:\n  connect_to: ['api.openai.com:443:127.0.0.1:8443']\n  ca_files: [/tmp/x.pem]\n  proxy: http://proxy.corp:3128\nintercept:\n  hosts: ['*.example.com']\n");
    assert_eq!(c.upstream.connect_to.len(), 1);
    assert_eq!(c.upstream.ca_files, [PathBuf::from("/tmp/x.pem")]);
    assert_eq!(c.upstream.proxy.as_deref(), Some("http://proxy.corp:3128"));
    // curl's empty target parts: the request's own host, or its own port.
    let c = ok("upstream:\n  connect_to: ['api.openai.com:443::8443', ':443:127.0.0.1:']\n");
    assert_eq!(c.upstream.connect_to.len(), 2);
    let ps = problems("upstream:\n  connect_to: ['nonsense']\n  proxy: 'ftp://x'\n  ca_files: /a.pem\nintercept:\n  hosts: ['https://a.com/']\n");
    assert_eq!(
        where_(&ps),
        [
            (2, 16, "upstream.connect_to[0]"),
            (3, 10, "upstream.proxy"),
            (4, 13, "upstream.ca_files"),
            (6, 11, "intercept.hosts[0]")
        ]
    );
}

#[test]
fn yaml_syntax_errors_are_one_located_problem() {
    let err = Config::parse("policies:\n  chain: [a\nx: 1\n", Path::new("bad.yaml")).unwrap_err();
    let ps = err.problems();
    assert_eq!(ps.len(), 1);
    assert!(ps[0].mark.line >= 2, "{err}");
    assert!(err.to_string().starts_with("bad.yaml:"), "{err}");
    let err = Config::parse("a: 1\na: 2\n", Path::new("d.yaml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("d.yaml:2:1: a: duplicate key `a`"),
        "{err}"
    );
}

#[test]
fn missing_files_are_read_errors() {
    let err = Config::load(Path::new("/nonexistent/kt.yaml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("cannot read /nonexistent/kt.yaml: "),
        "{err}"
    );
}

#[test]
fn several_bad_values_in_one_policy_are_all_reported() {
    let ps = problems(
        "\
policies: {chain: [filter, rl]}
policy:
  filter:
    type: content-filter
    patterns: ['(unclosed', ok]
    action: blok
    message: [not, text]
    when: {endpoints: [chat], hosts: ['a.com:1']}
  rl:
    type: rate-limit
    requests_per_minute: lots
    burst: 5
",
    );
    assert_eq!(
        where_(&ps),
        [
            (5, 16, "policy.filter.patterns[0]"),
            (6, 13, "policy.filter.action"),
            (7, 14, "policy.filter.message"),
            (8, 24, "policy.filter.when.endpoints[0]"),
            (8, 39, "policy.filter.when.hosts[0]"),
            (11, 26, "policy.rl.requests_per_minute"),
        ]
    );
    // No echo of the bad value as "needs requests_per_minute", nor a
    // `burst` complaint about the rate that could not be read.
}

#[test]
fn a_bad_required_value_is_not_also_missing() {
    let ps = problems("pack:\n  name: [a, b]\n  enabled: perhaps\n");
    assert_eq!(where_(&ps), [(2, 9, "pack.name"), (3, 12, "pack.enabled")]);
    let ps = problems("providers:\n  targets:\n    - id: custom\n      provider: {type: [x], base_url: 'gopher://x', models: [a]}\n");
    assert_eq!(
        where_(&ps),
        [
            (4, 24, "providers.targets[0].provider.type"),
            (4, 39, "providers.targets[0].provider.base_url")
        ]
    );
}

#[test]
fn messages_speak_yaml_not_rust() {
    let ps = problems(
        "pack: 5\nupstream:\n  ca_files: /a.pem\npolicy:\n  audit-logger:\n    fsync: [x]\n",
    );
    let msgs: Vec<&str> = ps.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(
        msgs,
        [
            "expected a mapping, found integer `5`",
            "expected a list, found string \"/a.pem\"",
            "expected one of always, batch, never, found a list",
        ]
    );
}

#[test]
fn sections_are_checked_even_when_the_chain_is_unreadable() {
    let ps = problems(
        "policies:\n  chain: audit-logger\npolicy:\n  audit-logger:\n    fsync: sometimes\n",
    );
    assert_eq!(
        where_(&ps),
        [
            (2, 10, "policies.chain"),
            (5, 12, "policy.audit-logger.fsync")
        ]
    );
}

#[test]
fn pricing_entries_extend_the_table_and_bad_prices_are_named() {
    let c = ok("pricing:\n  house-model:\n    input: 1.5\n    output: 3\n  gpt-4o: {input: 2, output: 8, cached_input: 1}\n");
    assert_eq!(c.pricing.len(), 2);
    let (model, price) = &c.pricing[1];
    assert_eq!(model, "house-model");
    assert_eq!(
        (price.input, price.output, price.cached_input),
        (1.5, 3.0, None)
    );
    assert_eq!(c.pricing[0].1.cached_input, Some(1.0));

    let ps = problems(
        "pricing:\n  m:\n    input: -1\n    output: 2\n  n:\n    input: 1\n    outptu: 2\n",
    );
    let w = where_(&ps);
    assert!(
        w.iter().any(|(l, _, p)| *l == 3 && *p == "pricing.m.input"),
        "{w:?}"
    );
    assert!(
        w.iter()
            .any(|(l, _, p)| *l == 7 && p.starts_with("pricing.n")),
        "{w:?}"
    );
}

#[test]
fn trusted_proxies_take_cidrs_and_addresses() {
    let c = Config::parse(
        "auth:\n  trusted_proxies: [10.0.0.0/8, 192.168.1.10, 'fd00::/8']\n",
        Path::new("t.yaml"),
    )
    .unwrap();
    let nets: Vec<String> = c
        .auth
        .trusted_proxies
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.168.1.10/32", "fd00::/8"]);
    let err = Config::parse(
        "auth:\n  trusted_proxies: [10.0.0.0/8, lb.internal]\n",
        Path::new("t.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("2:") && err.contains("lb.internal"), "{err}");
}

#[test]
fn allowed_connect_ports_take_ports_and_refuse_the_rest() {
    let c = Config::parse(
        "upstream:\n  allowed_connect_ports: [8443, 7080]\n",
        Path::new("t.yaml"),
    )
    .unwrap();
    assert_eq!(c.upstream.allowed_connect_ports, [8443, 7080]);
    let err = Config::parse(
        "upstream:\n  allowed_connect_ports: [0, 70000]\n",
        Path::new("t.yaml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("0 is not a TCP port") && err.contains("70000 is not a TCP port"),
        "{err}"
    );
}

#[test]
fn the_upstream_response_timeout_takes_seconds_and_refuses_the_rest() {
    let c = Config::parse(
        "upstream:\n  response_timeout_seconds: 1200\n",
        Path::new("t.yaml"),
    )
    .unwrap();
    assert_eq!(
        c.upstream.response_timeout,
        Some(std::time::Duration::from_secs(1200))
    );
    for bad in ["0", "-5", "86401"] {
        let err = Config::parse(
            &format!("upstream:\n  response_timeout_seconds: {bad}\n"),
            Path::new("t.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("t.yaml:2:") && err.contains("not a number of seconds"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn a_provider_setting_written_on_the_target_says_where_it_belongs() {
    let ps = problems(
        "providers:\n  targets:\n    - id: openai\n      api_key_env: OPENAI_API_KEY\n      modles: [x]\n",
    );
    assert_eq!(
        where_(&ps),
        [
            (4, 7, "providers.targets[0].api_key_env"),
            (5, 7, "providers.targets[0].modles"),
        ]
    );
    assert!(
        ps[0]
            .message
            .ends_with("; it belongs under the target's `provider:`"),
        "{}",
        ps[0].message
    );
    // Only the provider's own keys get the hint.
    assert!(!ps[1].message.contains("provider:`"), "{}", ps[1].message);
}
