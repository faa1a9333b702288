//! From the marked YAML tree to a [`Config`]: each section and each policy
//! is read on its own, so that one mistake does not hide the next.

use super::de::{from_node, read_partial, Sink, Spanned};
use super::error::{child_index, child_key, did_you_mean, unknown_word, Mark, Problem};
use super::options::{
    RawAudit, RawBudget, RawCache, RawContentFilter, RawPassthrough, RawRateLimit, RawRedact,
};
use super::policy::{assemble, PolicyKind, PolicyOptions, PolicySpec, RawCommon, COMMON_KEYS};
use super::provider::{ProviderType, RawTarget};
use super::yaml::{Node, Value};
use super::{Auth, Config, Intercept, Pack, Storage, Upstream};
use serde::Deserialize;
use std::path::PathBuf;

const TOP_KEYS: &[&str] = &[
    "pack",
    "providers",
    "intercept",
    "upstream",
    "auth",
    "storage",
    "pricing",
    "policies",
    "policy",
];

/// Keys of a `policy.NAME` section beside the type's options.
const SECTION_KEYS: &[&str] = &["type", "enabled", "phases", "when", "on_error"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPack {
    name: Spanned<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntercept {
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    #[serde(default)]
    connect_to: Vec<Spanned<String>>,
    #[serde(default)]
    ca_files: Vec<Spanned<String>>,
    #[serde(default)]
    proxy: Option<Spanned<String>>,
    #[serde(default)]
    allowed_connect_ports: Vec<Spanned<i64>>,
    #[serde(default)]
    response_timeout_seconds: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    required: Option<bool>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    url: Spanned<String>,
}

/// One `pricing.MODEL` entry, USD per million tokens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    input: Spanned<f64>,
    output: Spanned<f64>,
    #[serde(default)]
    cached_input: Option<Spanned<f64>>,
    #[serde(default)]
    cache_write: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChain {
    chain: Vec<Spanned<String>>,
}

/// Collects problems from both the deserializer's sink and the checks.
struct Ctx {
    sink: Sink,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Ctx {
    fn read<T: serde::de::DeserializeOwned>(
        &mut self,
        node: &Node,
        path: &str,
        extra: &'static [&'static str],
    ) -> Option<T> {
        from_node(node, path, &self.sink, extra)
    }

    /// As `read`, but also returns what could be read when some entries
    /// could not (with `false`), so that the values that were read can
    /// still be checked.
    fn read_partial<T: serde::de::DeserializeOwned>(
        &mut self,
        node: &Node,
        path: &str,
        extra: &'static [&'static str],
    ) -> Option<(T, bool)> {
        read_partial(node, path, &self.sink, extra)
    }

    fn problem(&mut self, mark: Mark, path: &str, message: impl Into<String>) {
        self.problems.push(Problem::new(mark, path, message));
    }
}

/// Builds the config; on failure, every problem found, in file order.
pub(crate) fn build(root: Option<&Node>) -> Result<Config, Vec<Problem>> {
    let mut cx = Ctx {
        sink: Sink::default(),
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let mut config = Config::empty();
    let sections = match root {
        None => Vec::new(),
        Some(root) => entries(&mut cx, root, "", TOP_KEYS, "section"),
    };
    let get = |k: &str| sections.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);

    if let Some(node) = get("pack").filter(|n| !n.is_null()) {
        // These sections' checks each look at one value, so they also run
        // on what could be read of a section with a bad entry.
        if let Some((p, _)) = cx.read_partial::<RawPack>(node, "pack", &[]) {
            if p.name.value.trim().is_empty() {
                cx.problems.push(p.name.problem("the pack needs a name"));
            }
            if !p.enabled {
                cx.warnings.push(Problem::new(
                    node.mark,
                    "pack.enabled",
                    "the pack is disabled: no policy runs (not even the audit logger)",
                ));
            }
            config.pack = Some(Pack {
                name: p.name.value,
                version: p.version,
                enabled: p.enabled,
            });
        }
    }
    if let Some(node) = get("providers") {
        read_providers(&mut cx, node, &mut config);
    }
    if let Some(node) = get("intercept") {
        if let Some((raw, _)) = cx.read_partial::<RawIntercept>(node, "intercept", &[]) {
            for h in raw.hosts {
                match super::when::host_pattern_error(&h.value) {
                    Some(msg) => cx.problems.push(h.problem(msg)),
                    None => config.intercept.hosts.push(h.value),
                }
            }
        }
    }
    if let Some(node) = get("upstream") {
        if let Some((raw, _)) = cx.read_partial::<RawUpstream>(node, "upstream", &[]) {
            config.upstream = upstream(&mut cx, raw);
        }
    }
    if let Some(node) = get("auth") {
        if let Some(raw) = cx.read::<RawAuth>(node, "auth", &[]) {
            let mut trusted_proxies = Vec::new();
            for entry in raw.trusted_proxies {
                match parse_net(&entry.value) {
                    Some(net) => trusted_proxies.push(net),
                    None => cx.problems.push(entry.problem(format!(
                        "`{}` is not an IP address or CIDR block (e.g. 10.0.0.0/8, 192.168.1.10, fd00::/8)",
                        entry.value
                    ))),
                }
            }
            config.auth = Auth {
                required: raw.required,
                trusted_proxies,
            };
        }
    }
    if let Some(node) = get("storage").filter(|n| !n.is_null()) {
        if let Some(raw) = cx.read::<RawStorage>(node, "storage", &[]) {
            match Storage::parse(&raw.url.value) {
                Ok(s) => config.storage = Some(s),
                Err(msg) => cx.problems.push(raw.url.problem(msg)),
            }
        }
    }
    if let Some(node) = get("pricing").filter(|n| !n.is_null()) {
        read_pricing(&mut cx, node, &mut config);
    }
    config.policies = read_policies(&mut cx, get("policies"), get("policy"), &config);
    let audited = config
        .policies
        .iter()
        .any(|p| p.enabled && p.kind == PolicyKind::AuditLogger);
    if !audited && config.policies.iter().any(|p| p.enabled) {
        let mark = get("policies").map_or(Mark::UNKNOWN, |n| n.mark);
        cx.warnings.push(Problem::new(
            mark,
            "policies",
            "no audit-logger in the chain: exchanges are not recorded",
        ));
    }
    // `passthrough` silences the rest of the chain for what it matches; a
    // reader who meant "forward to the original host" would lose redaction
    // without a word.
    let silenced: Vec<&str> = config
        .policies
        .iter()
        .filter(|p| {
            p.enabled && !matches!(p.kind, PolicyKind::AuditLogger | PolicyKind::Passthrough)
        })
        .map(|p| p.name.as_str())
        .collect();
    if !silenced.is_empty() {
        let mark = get("policies").map_or(Mark::UNKNOWN, |n| n.mark);
        let passes = config
            .policies
            .iter()
            .filter(|p| p.enabled && p.kind == PolicyKind::Passthrough);
        for pass in passes {
            cx.warnings.push(Problem::new(
                mark,
                "policies",
                format!(
                    "passthrough `{}` turns off {} for the requests it matches: only the audit runs for them",
                    pass.name,
                    silenced.join(", ")
                ),
            ));
        }
    }

    let mut problems = cx.problems;
    problems.extend(cx.sink.into_inner());
    if problems.is_empty() {
        cx.warnings.sort_by_key(|p| p.mark);
        config.warnings = cx.warnings;
        Ok(config)
    } else {
        problems.sort_by_key(|p| p.mark);
        Err(problems)
    }
}

/// The entries of a mapping whose keys must be among `allowed`; others are
/// reported. A null node has no entries; anything else is a problem.
fn entries<'a>(
    cx: &mut Ctx,
    node: &'a Node,
    path: &str,
    allowed: &[&str],
    what: &str,
) -> Vec<(&'a str, &'a Node)> {
    let mut out = Vec::new();
    match &node.value {
        Value::Map(map) => {
            for (k, v) in map {
                let Some(name) = k.scalar_text() else {
                    cx.problem(
                        k.mark,
                        path,
                        format!("keys must be plain names, found {}", k.kind_name()),
                    );
                    continue;
                };
                if allowed.contains(&name) {
                    out.push((name, v));
                } else {
                    cx.problem(
                        k.mark,
                        &child_key(path, name),
                        unknown_word(what, name, allowed),
                    );
                }
            }
        }
        _ if node.is_null() => {}
        _ => cx.problem(
            node.mark,
            path,
            format!("expected a mapping, found {}", node.kind_name()),
        ),
    }
    out
}

/// The items of a list (none for null).
fn items<'a>(cx: &mut Ctx, node: &'a Node, path: &str) -> &'a [Node] {
    match &node.value {
        Value::Seq(items) => items,
        _ if node.is_null() => &[],
        _ => {
            cx.problem(
                node.mark,
                path,
                format!("expected a list, found {}", node.kind_name()),
            );
            &[]
        }
    }
}

fn read_providers(cx: &mut Ctx, node: &Node, config: &mut Config) {
    let sections = entries(cx, node, "providers", &["targets"], "key");
    let Some((_, targets)) = sections.first() else {
        return;
    };
    let mut seen: Vec<Spanned<String>> = Vec::new();
    for (i, item) in items(cx, targets, "providers.targets").iter().enumerate() {
        let path = child_index("providers.targets", i);
        let Some((raw, complete)) = cx.read_partial::<RawTarget>(item, &path, &[]) else {
            continue;
        };
        if let Some(first) = seen.iter().find(|t| t.value == raw.id().value) {
            let msg = format!(
                "target id `{}` is used twice (line {})",
                first.value, first.mark.line
            );
            cx.problems.push(raw.id().problem(msg));
            continue;
        }
        seen.push(raw.id().clone());
        if let Some(t) = raw.resolve(complete, &mut cx.problems) {
            config.providers.push(t);
        }
    }
    // Routing picks the first target listing a model; a second listing is
    // dead configuration, likely a copy-paste slip.
    for (i, t) in config.providers.iter().enumerate() {
        for m in &t.models {
            if let Some(first) = config.providers[..i].iter().find(|o| o.models.contains(m)) {
                cx.warnings.push(Problem::new(
                    targets.mark,
                    format!("providers.targets[{i}].provider.models"),
                    format!(
                        "model `{m}` is also listed by target `{}`, which wins",
                        first.id
                    ),
                ));
            }
        }
    }
}

fn upstream(cx: &mut Ctx, raw: RawUpstream) -> Upstream {
    let mut out = Upstream::default();
    if let Some(secs) = raw.response_timeout_seconds {
        match u64::try_from(secs.value) {
            Ok(s @ 1..=86_400) => out.response_timeout = Some(std::time::Duration::from_secs(s)),
            _ => cx.problems.push(secs.problem(format!(
                "{} is not a number of seconds from 1 to 86400",
                secs.value
            ))),
        }
    }
    for port in raw.allowed_connect_ports {
        match u16::try_from(port.value) {
            Ok(p) if p > 0 => out.allowed_connect_ports.push(p),
            _ => cx
                .problems
                .push(port.problem(format!("{} is not a TCP port (1-65535)", port.value))),
        }
    }
    for rule in raw.connect_to {
        match crate::upstream::connect_to::ConnectTo::parse(&rule.value) {
            Ok(_) => out.connect_to.push(rule.value),
            Err(e) => cx.problems.push(rule.problem(e.to_string())),
        }
    }
    for f in raw.ca_files {
        if f.value.trim().is_empty() {
            cx.problems.push(f.problem("empty file name"));
        } else {
            out.ca_files.push(PathBuf::from(f.value));
        }
    }
    if let Some(p) = raw.proxy {
        match crate::upstream::chain::ProxyUrl::parse(&p.value) {
            Ok(_) => out.proxy = Some(p.value),
            Err(e) => cx.problems.push(p.problem(e.to_string())),
        }
    }
    out
}

/// The provider names `when.providers` may use.
fn provider_names(config: &Config) -> Vec<&str> {
    let mut names: Vec<&str> = ProviderType::NAMES.to_vec();
    for t in &config.providers {
        if !names.contains(&t.id.as_str()) {
            names.push(&t.id);
        }
    }
    names.push("unknown");
    names
}

fn read_policies(
    cx: &mut Ctx,
    policies: Option<&Node>,
    sections: Option<&Node>,
    config: &Config,
) -> Vec<PolicySpec> {
    let providers = provider_names(config);
    let sections: Vec<(&Node, &Node)> = match sections {
        None => Vec::new(),
        Some(node) => match &node.value {
            Value::Map(map) => map.iter().map(|(k, v)| (k, v)).collect(),
            _ if node.is_null() => Vec::new(),
            _ => {
                cx.problem(
                    node.mark,
                    "policy",
                    format!(
                        "expected a mapping of policy name to settings, found {}",
                        node.kind_name()
                    ),
                );
                Vec::new()
            }
        },
    };
    let policies = policies.filter(|n| !n.is_null());
    match policies {
        Some(Node {
            value: Value::Seq(list),
            ..
        }) => {
            if let Some((k, _)) = sections.first() {
                cx.problem(
                    k.mark,
                    "policy",
                    "`policy:` sections go with `policies: {chain: [...]}`; with a `policies:` list, put each policy's settings under its `config:`",
                );
            }
            read_list(cx, list, &providers)
        }
        Some(
            node @ Node {
                value: Value::Map(_),
                ..
            },
        ) => {
            let Some(chain) = cx.read::<RawChain>(node, "policies", &[]) else {
                // Still check every section, as if the chain listed them.
                let all: Vec<Spanned<String>> = sections
                    .iter()
                    .filter_map(|(k, _)| {
                        let name = k.scalar_text()?;
                        Some(Spanned {
                            value: name.to_string(),
                            mark: k.mark,
                            path: child_key("policy", name),
                        })
                    })
                    .collect();
                return read_chain(cx, &all, &sections, &providers);
            };
            if chain.chain.is_empty() {
                cx.warnings.push(Problem::new(
                    node.mark,
                    "policies.chain",
                    "the chain is empty: no policy runs, not even the audit logger",
                ));
            }
            read_chain(cx, &chain.chain, &sections, &providers)
        }
        Some(node) => {
            cx.problem(
                node.mark,
                "policies",
                format!(
                    "expected `chain: [names]` or a list of policies, found {}",
                    node.kind_name()
                ),
            );
            Vec::new()
        }
        None => {
            // No chain written: the default chain, audit-logger only; a
            // `policy.audit-logger` section configures it.
            let implicit = Spanned {
                value: "audit-logger".to_string(),
                mark: Mark::UNKNOWN,
                path: "policies.chain".to_string(),
            };
            read_chain(cx, std::slice::from_ref(&implicit), &sections, &providers)
        }
    }
}

fn read_chain(
    cx: &mut Ctx,
    chain: &[Spanned<String>],
    sections: &[(&Node, &Node)],
    providers: &[&str],
) -> Vec<PolicySpec> {
    let section_names: Vec<&str> = sections
        .iter()
        .filter_map(|(k, _)| k.scalar_text())
        .collect();
    let mut out = Vec::new();
    for (i, entry) in chain.iter().enumerate() {
        if let Some(first) = chain[..i].iter().find(|e| e.value == entry.value) {
            cx.problems.push(entry.problem(format!(
                "`{}` is already in the chain (line {}); give a second policy of the same type its own name",
                entry.value, first.mark.line
            )));
            continue;
        }
        if !name_ok(cx, entry) {
            continue;
        }
        let section = sections
            .iter()
            .find(|(k, _)| k.scalar_text() == Some(entry.value.as_str()));
        match section {
            Some((key, body)) => {
                let path = child_key("policy", &entry.value);
                let body_map = map_or_problem(cx, body, &path);
                let (common_node, options_node) = split(&body_map, SECTION_KEYS);
                let (common, complete) = cx
                    .read_partial::<RawCommon>(&common_node, &path, &[])
                    .unwrap_or_default();
                let name = Spanned {
                    value: entry.value.clone(),
                    mark: key.mark,
                    path: path.clone(),
                };
                if let Some(p) = policy(
                    cx,
                    name,
                    (common, complete),
                    &options_node,
                    &path,
                    SECTION_KEYS,
                    providers,
                ) {
                    out.push(p);
                }
            }
            None if entry.value.parse::<PolicyKind>().is_ok() => {
                let empty = empty_map(entry.mark);
                if let Some(p) = policy(
                    cx,
                    entry.clone(),
                    (RawCommon::default(), true),
                    &empty,
                    &entry.path,
                    &[],
                    providers,
                ) {
                    out.push(p);
                }
            }
            None => {
                let mut msg = format!(
                    "`{}` has no `policy.{}` section and is not a policy type ({})",
                    entry.value,
                    entry.value,
                    PolicyKind::NAMES.join(", ")
                );
                let mut candidates = section_names.clone();
                candidates.extend(PolicyKind::NAMES);
                if let Some(s) = did_you_mean(&entry.value, &candidates) {
                    msg.push_str(&format!("; did you mean `{s}`?"));
                }
                cx.problems.push(entry.problem(msg));
            }
        }
    }
    for (k, _) in sections {
        let name = k.scalar_text().unwrap_or("?");
        if !chain.iter().any(|e| e.value == name) {
            let msg = if chain.len() == 1 && chain[0].mark == Mark::UNKNOWN {
                format!("policy `{name}` is not in the chain: without `policies: {{chain: [...]}}` only audit-logger runs; list `{name}` there")
            } else {
                format!("policy `{name}` is not in `policies.chain`; add it there (use `enabled: false` to keep it switched off)")
            };
            cx.problem(k.mark, &child_key("policy", name), msg);
        }
    }
    out
}

fn read_list(cx: &mut Ctx, list: &[Node], providers: &[&str]) -> Vec<PolicySpec> {
    let mut out: Vec<PolicySpec> = Vec::new();
    let mut names: Vec<Spanned<String>> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let path = child_index("policies", i);
        let map = map_or_problem(cx, item, &path);
        let Value::Map(pairs) = &map.value else {
            continue;
        };
        let name_node = pairs.iter().find(|(k, _)| k.scalar_text() == Some("name"));
        let config_node = pairs
            .iter()
            .find(|(k, _)| k.scalar_text() == Some("config"));
        let head = Node {
            value: Value::Map(
                pairs
                    .iter()
                    .filter(|(k, _)| !matches!(k.scalar_text(), Some("name" | "config")))
                    .cloned()
                    .collect(),
            ),
            mark: item.mark,
        };
        let (head_common, head_complete) = cx
            .read_partial::<RawCommon>(&head, &path, &["name", "config"])
            .unwrap_or_default();
        let Some((_, name_node)) = name_node else {
            cx.problem(item.mark, &path, "missing key `name`");
            continue;
        };
        let Some(name) = cx.read::<Spanned<String>>(name_node, &child_key(&path, "name"), &[])
        else {
            continue;
        };
        if let Some(first) = names.iter().find(|n| n.value == name.value) {
            let msg = format!(
                "policy name `{}` is used twice (line {})",
                name.value, first.mark.line
            );
            cx.problems.push(name.problem(msg));
            continue;
        }
        names.push(name.clone());
        if !name_ok(cx, &name) {
            continue;
        }
        let config_path = child_key(&path, "config");
        let (config_common, options) = match config_node {
            Some((_, c)) => {
                let c = map_or_problem(cx, c, &config_path);
                split(&c, COMMON_KEYS)
            }
            None => (empty_map(item.mark), empty_map(item.mark)),
        };
        let (config_common, config_complete) = cx
            .read_partial::<RawCommon>(&config_common, &config_path, &[])
            .unwrap_or_default();
        let common = head_common.merge(config_common, &mut cx.problems);
        if let Some(p) = policy(
            cx,
            name,
            (common, head_complete && config_complete),
            &options,
            &config_path,
            COMMON_KEYS,
            providers,
        ) {
            out.push(p);
        }
    }
    out
}

/// Validates one policy: its type, common keys and options. `common` comes
/// with whether all of it could be read; a spec is returned only when
/// everything was.
fn policy(
    cx: &mut Ctx,
    name: Spanned<String>,
    (common, common_complete): (RawCommon, bool),
    options: &Node,
    options_path: &str,
    extra_keys: &'static [&'static str],
    providers: &[&str],
) -> Option<PolicySpec> {
    let mut common = common;
    let when = common
        .when
        .take()
        .map(|w| w.value.compile(providers, &mut cx.problems))
        .unwrap_or_default();
    let kind = match &common.kind {
        Some(t) => match t.value.parse::<PolicyKind>() {
            Ok(k) => k,
            Err(()) => {
                cx.problems.push(t.problem(unknown_word(
                    "policy type",
                    &t.value,
                    &PolicyKind::NAMES,
                )));
                return None;
            }
        },
        None => match name.value.parse::<PolicyKind>() {
            Ok(k) => k,
            // The `type` itself may be what could not be read.
            Err(()) if !common_complete => return None,
            Err(()) => {
                let mut msg = format!(
                    "policy `{}` needs a `type` (its name is not one of {})",
                    name.value,
                    PolicyKind::NAMES.join(", ")
                );
                if let Some(s) = did_you_mean(&name.value, &PolicyKind::NAMES) {
                    msg.push_str(&format!("; did you mean `{s}`?"));
                }
                cx.problems.push(name.problem(msg));
                return None;
            }
        },
    };
    let p = options_path;
    let (opts, complete) = match kind {
        PolicyKind::AuditLogger => {
            read_options(cx, options, p, extra_keys, |r: RawAudit, _, cx| {
                PolicyOptions::AuditLogger(r.validate(&mut cx.problems))
            })
        }
        PolicyKind::Redact => read_options(cx, options, p, extra_keys, |r: RawRedact, c, cx| {
            PolicyOptions::Redact(r.validate(c, &mut cx.problems))
        }),
        PolicyKind::ContentFilter => {
            read_options(cx, options, p, extra_keys, |r: RawContentFilter, c, cx| {
                let o = r.validate(&name, c, &mut cx.problems, &mut cx.warnings);
                PolicyOptions::ContentFilter(o)
            })
        }
        PolicyKind::Cache => read_options(cx, options, p, extra_keys, |r: RawCache, _, cx| {
            PolicyOptions::Cache(r.validate(&mut cx.problems))
        }),
        PolicyKind::Passthrough => {
            read_options(cx, options, p, extra_keys, |_: RawPassthrough, _, _| {
                PolicyOptions::Passthrough
            })
        }
        PolicyKind::RateLimit => {
            read_options(cx, options, p, extra_keys, |r: RawRateLimit, c, cx| {
                PolicyOptions::RateLimit(r.validate(&name, c, &mut cx.problems))
            })
        }
        PolicyKind::Budget => read_options(cx, options, p, extra_keys, |r: RawBudget, c, cx| {
            PolicyOptions::Budget(r.validate(&name, c, &mut cx.problems))
        }),
    }?;
    if !(complete && common_complete) {
        return None;
    }
    Some(assemble(
        name.value,
        kind,
        common,
        when,
        opts,
        &mut cx.problems,
    ))
}

/// Reads a type's raw options and validates them with `validate`, which
/// is told whether every entry could be read.
fn read_options<R: serde::de::DeserializeOwned>(
    cx: &mut Ctx,
    node: &Node,
    path: &str,
    extra_keys: &'static [&'static str],
    validate: impl FnOnce(R, bool, &mut Ctx) -> PolicyOptions,
) -> Option<(PolicyOptions, bool)> {
    let (raw, complete) = cx.read_partial::<R>(node, path, extra_keys)?;
    Some((validate(raw, complete, cx), complete))
}

/// Splits a mapping into (the entries whose key is in `keys`, the rest).
fn split(map: &Node, keys: &[&str]) -> (Node, Node) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    if let Value::Map(pairs) = &map.value {
        for pair in pairs {
            if pair.0.scalar_text().is_some_and(|k| keys.contains(&k)) {
                a.push(pair.clone());
            } else {
                b.push(pair.clone());
            }
        }
    }
    (
        Node {
            value: Value::Map(a),
            mark: map.mark,
        },
        Node {
            value: Value::Map(b),
            mark: map.mark,
        },
    )
}

fn empty_map(mark: Mark) -> Node {
    Node {
        value: Value::Map(Vec::new()),
        mark,
    }
}

/// The node if it is a mapping; null as an empty mapping; else a problem
/// and an empty mapping (so the policy's other problems are still found).
fn map_or_problem(cx: &mut Ctx, node: &Node, path: &str) -> Node {
    match &node.value {
        Value::Map(_) => node.clone(),
        _ => {
            if !node.is_null() {
                cx.problem(
                    node.mark,
                    path,
                    format!("expected a mapping of settings, found {}", node.kind_name()),
                );
            }
            empty_map(node.mark)
        }
    }
}

/// Policy names appear in events, block responses and `--filter`, so they
/// are kept to one plain word.
fn name_ok(cx: &mut Ctx, name: &Spanned<String>) -> bool {
    let ok = !name.value.is_empty()
        && name
            .value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !ok {
        cx.problems.push(name.problem(format!(
            "`{}` is not a valid policy name (letters, digits, `.`, `-`, `_`)",
            name.value
        )));
    }
    ok
}

/// `pricing:`: model name → prices that extend or override the built-in
/// table.
fn read_pricing(cx: &mut Ctx, node: &Node, config: &mut Config) {
    let Some((raw, _)) =
        cx.read_partial::<std::collections::BTreeMap<String, RawPrice>>(node, "pricing", &[])
    else {
        return;
    };
    for (model, p) in raw {
        let mut ok = true;
        let fields = [
            Some(&p.input),
            Some(&p.output),
            p.cached_input.as_ref(),
            p.cache_write.as_ref(),
        ];
        for v in fields.into_iter().flatten() {
            if !(v.value.is_finite() && v.value >= 0.0) {
                cx.problems
                    .push(v.problem("a price is a number of USD per million tokens, 0 or more"));
                ok = false;
            }
        }
        if model.trim().is_empty() {
            cx.problem(node.mark, "pricing", "a model name cannot be empty");
            ok = false;
        }
        if ok {
            config.pricing.push((
                model,
                crate::llm::pricing::Price {
                    input: p.input.value,
                    output: p.output.value,
                    cached_input: p.cached_input.map(|v| v.value),
                    cache_write: p.cache_write.map(|v| v.value),
                },
            ));
        }
    }
}

impl Config {
    /// A config with nothing set and no policies (the parts `build` fills).
    pub(super) fn empty() -> Config {
        Config {
            pack: None,
            providers: Vec::new(),
            intercept: Intercept::default(),
            upstream: Upstream::default(),
            auth: Auth::default(),
            storage: None,
            pricing: Vec::new(),
            policies: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// A CIDR block, or a single address (a /32 or /128).
fn parse_net(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}
