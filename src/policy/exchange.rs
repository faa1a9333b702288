//! One LLM exchange going through the chain: the input phase on the
//! request body, the output phase on the response (whole JSON or a stream),
//! and a record of what the policies did, closed exactly once.

use super::chain::{Action, Chain, Selection};
use super::redact::placeholder;
use super::respond;
use super::stream::{OutputStream, StreamNote};
use crate::body::Body;
use crate::config::{FilterAction, OnError, PolicyKind};
use crate::events::{Action as EventAction, Event, EventSink, Mode, Phase};
use crate::llm::family::Family;
use crate::llm::json_text::{rewrite_strings, Selector};
use crate::llm::recognize::{Api, Endpoint, Provider};
use bytes::Bytes;
use http::{Response, StatusCode};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::task::TaskTracker;

/// What the request is, as the recognizer saw it (owned: it outlives the
/// request head).
#[derive(Debug, Clone)]
pub struct ExchangeInfo {
    pub provider: Provider,
    pub endpoint: Endpoint,
    pub api: Option<Api>,
    pub family: Option<Family>,
    pub autocomplete: bool,
    pub host: String,
    pub path: String,
    pub method: http::Method,
    pub model: Option<String>,
    pub stream: Option<bool>,
    /// The caller, from the access key (absent for anonymous traffic).
    pub user: Option<Arc<str>>,
    pub team: Option<Arc<str>>,
}

/// The outcome of a phase on the request.
pub enum Input {
    /// Send this body upstream (the original bytes when nothing changed).
    Forward(Bytes),
    /// Answer the client with this; the upstream is never contacted.
    Respond(Response<Body>),
}

/// The outcome of the output phase on a whole (non-streamed) response.
pub enum Output {
    Forward(Bytes),
    Respond(Response<Body>),
}

/// What the policies did, for the audit trail.
#[derive(Debug, Default, Clone)]
pub struct Record {
    /// Secrets (or filtered phrases) replaced, per kind, per phase.
    pub redacted_in: BTreeMap<String, usize>,
    pub redacted_out: BTreeMap<String, usize>,
    /// The policy that blocked, and the rule that matched.
    pub blocked: Option<(String, String)>,
    /// True when the block happened on the request (the upstream never
    /// saw it).
    pub blocked_on_input: bool,
    /// From sending the request upstream to its response head.
    pub upstream_ms: Option<u64>,
    /// Why the exchange failed, when kt answered with an error of its own
    /// (the error kind and message, e.g. an unreachable upstream).
    pub error: Option<String>,
    /// `action: log` matches: policy and rule.
    pub logged: Vec<(String, String)>,
    /// Bodies that could not be inspected, and why.
    pub uninspected: Vec<&'static str>,
    pub status: Option<u16>,
    pub policy_us: u64,
    /// True when the cache answered (the upstream was not contacted), false
    /// when a cache policy applied but did not; `None` without one.
    pub cache_hit: Option<bool>,
}

/// One exchange. Holds the chain it started with, so a reload never changes
/// the rules halfway through.
pub struct Exchange {
    chain: Arc<Chain>,
    pub info: ExchangeInfo,
    pub record: Record,
    started: Instant,
    completed: bool,
    /// Where the audit events go, when an `audit-logger` policy applies.
    audit: Option<(EventSink, TaskTracker)>,
    counters: Arc<Counters>,
    /// The selected redact and content-filter policies of each phase,
    /// worked out once per exchange.
    input_body: Selection,
    output_body: Selection,
    /// The first selected `cache` policy, if any.
    cache: Option<usize>,
}

/// Exchange outcomes since start, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub pass: std::sync::atomic::AtomicU64,
    pub block: std::sync::atomic::AtomicU64,
    pub redact: std::sync::atomic::AtomicU64,
    pub error: std::sync::atomic::AtomicU64,
    pub cache_hit: std::sync::atomic::AtomicU64,
    /// Microseconds spent in policies, summed.
    pub policy_us: std::sync::atomic::AtomicU64,
}

impl Counters {
    fn count(&self, action: &str, policy_us: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let counter = match action {
            "block" => &self.block,
            "redact" => &self.redact,
            "error" => &self.error,
            "cache_hit" => &self.cache_hit,
            _ => &self.pass,
        };
        counter.fetch_add(1, Relaxed);
        self.policy_us.fetch_add(policy_us, Relaxed);
    }
}

impl Exchange {
    pub(crate) fn new(
        chain: Arc<Chain>,
        selection: Selection,
        info: ExchangeInfo,
        sink: Option<(&EventSink, &TaskTracker)>,
        counters: Arc<Counters>,
    ) -> Self {
        // `passthrough` means forward untouched: only the audit runs.
        let mut selection = selection;
        if chain
            .selected(selection)
            .any(|(_, p)| p.kind == PolicyKind::Passthrough)
        {
            for (i, p) in chain.policies().iter().enumerate() {
                if !matches!(p.kind, PolicyKind::AuditLogger | PolicyKind::Passthrough) {
                    selection.remove(i);
                }
            }
        }
        let body_phase = |input: bool| {
            let mut phase = selection;
            for (i, p) in chain.selected(selection) {
                let in_phase = if input {
                    p.phases.input
                } else {
                    p.phases.output
                };
                if !in_phase || !matches!(p.action, Action::Redact(_) | Action::Filter(_)) {
                    phase.remove(i);
                }
            }
            phase
        };
        let (input_body, output_body) = (body_phase(true), body_phase(false));
        let cache = chain
            .selected(selection)
            .find(|(_, p)| matches!(p.action, Action::Cache(_)))
            .map(|(i, _)| i);
        let audit = sink
            .filter(|_| {
                chain
                    .selected(selection)
                    .any(|(_, p)| p.kind == PolicyKind::AuditLogger)
            })
            .map(|(s, t)| (s.clone(), t.clone()));
        Exchange {
            chain,
            info,
            record: Record::default(),
            started: Instant::now(),
            completed: false,
            audit,
            counters,
            input_body,
            output_body,
            cache,
        }
    }

    /// The options of the cache policy that applies, if one does.
    pub fn cache_options(&self) -> Option<&crate::config::CacheOptions> {
        match &self.chain.get(self.cache?)?.action {
            Action::Cache(o) => Some(o),
            _ => None,
        }
    }

    /// Selected policies of the input (or output) phase that read or
    /// change bodies.
    fn body_policies(&self, input: bool) -> Selection {
        if input {
            self.input_body
        } else {
            self.output_body
        }
    }

    /// True when the request body must be read before it goes upstream.
    pub fn needs_request_body(&self) -> bool {
        !self.body_policies(true).is_empty()
    }

    /// True when the response is checked on its way back. Autocomplete
    /// responses are streamed through untouched: their latency is the
    /// product, and their prompts were already checked.
    pub fn needs_response_body(&self) -> bool {
        !self.info.autocomplete && !self.body_policies(false).is_empty()
    }

    fn fails_closed(&self, policies: Selection) -> bool {
        self.chain
            .selected(policies)
            .any(|(_, p)| p.on_error == OnError::FailClosed)
    }

    /// The input phase on the whole request body.
    pub fn input(&mut self, body: Bytes) -> Input {
        let t = Instant::now();
        let out = self.input_inner(body);
        self.record.policy_us += t.elapsed().as_micros() as u64;
        out
    }

    fn input_inner(&mut self, body: Bytes) -> Input {
        // Model and stream flag from the body, for the record (the path's
        // model, when it names one, wins).
        if let Ok(meta) = crate::llm::inspect::request_meta(&body) {
            if self.info.model.is_none() {
                self.info.model = meta.model.map(|m| m.into_owned());
            }
            if meta.stream.is_some() {
                self.info.stream = meta.stream;
            }
        }
        let policies = self.body_policies(true);
        if policies.is_empty() {
            return Input::Forward(body);
        }
        match self.apply(&body, policies, true) {
            Ok(Applied::Same) => Input::Forward(body),
            Ok(Applied::Changed(new)) => Input::Forward(Bytes::from(new)),
            Ok(Applied::Blocked { policy, message }) => {
                self.record.blocked_on_input = true;
                Input::Respond(respond::blocked(self.info.api, &policy, &message))
            }
            Err(reason) => {
                self.record.uninspected.push(reason);
                if self.fails_closed(policies) {
                    Input::Respond(respond::gateway_error(
                        self.info.api,
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        "kt could not read the request body as JSON, so its policies cannot check it",
                    ))
                } else {
                    Input::Forward(body)
                }
            }
        }
    }

    /// The output phase on a whole JSON response.
    pub fn output(&mut self, body: Bytes) -> Output {
        let t = Instant::now();
        let out = self.output_inner(body);
        self.record.policy_us += t.elapsed().as_micros() as u64;
        out
    }

    fn output_inner(&mut self, body: Bytes) -> Output {
        let policies = self.body_policies(false);
        if policies.is_empty() {
            return Output::Forward(body);
        }
        match self.apply(&body, policies, false) {
            Ok(Applied::Same) => Output::Forward(body),
            Ok(Applied::Changed(new)) => Output::Forward(Bytes::from(new)),
            Ok(Applied::Blocked { policy, message }) => {
                Output::Respond(respond::blocked(self.info.api, &policy, &message))
            }
            Err(reason) => {
                self.record.uninspected.push(reason);
                if self.fails_closed(policies) {
                    Output::Respond(respond::gateway_error(
                        self.info.api,
                        StatusCode::BAD_GATEWAY,
                        "upstream_error",
                        "kt could not read the upstream response as JSON, so its policies cannot check it",
                    ))
                } else {
                    Output::Forward(body)
                }
            }
        }
    }

    /// The output phase for a streamed response, when any policy reads it.
    pub fn output_stream(&self) -> Option<OutputStream> {
        if !self.needs_response_body() {
            return None;
        }
        let family = self.info.family?;
        Some(OutputStream::new(
            self.chain.clone(),
            self.chain
                .selected(self.output_body)
                .map(|(i, _)| i)
                .collect(),
            family,
            self.info.api,
        ))
    }

    /// Takes in what a stream's policies did.
    pub fn absorb_stream_notes(&mut self, notes: Vec<StreamNote>) {
        for note in notes {
            match note {
                StreamNote::Redacted { kind, .. } => {
                    *self
                        .record
                        .redacted_out
                        .entry(kind.to_string())
                        .or_default() += 1;
                }
                StreamNote::Blocked { policy, rule } => {
                    self.record.blocked = Some((policy.to_string(), rule));
                }
                StreamNote::Logged { policy, rule } => {
                    self.record.logged.push((policy.to_string(), rule));
                }
                StreamNote::Uninspected { reason } => self.record.uninspected.push(reason),
            }
        }
    }

    fn apply(
        &mut self,
        body: &[u8],
        policies: Selection,
        input: bool,
    ) -> Result<Applied, &'static str> {
        let family = self.info.family;
        let chain = self.chain.clone();
        let mut current: Cow<'_, [u8]> = Cow::Borrowed(body);
        for (_, policy) in chain.selected(policies) {
            match &policy.action {
                Action::Filter(filter) => {
                    // Filters read what the user wrote (or the model
                    // answered), not request metadata.
                    let selector = match (family, input) {
                        (Some(f), true) => Selector::Pointers(f.prompt_pointers()),
                        (Some(f), false) => Selector::Pointers(f.output_pointers()),
                        (None, _) => Selector::AllStrings,
                    };
                    let mut hit = None;
                    let mut count = 0;
                    let label = placeholder(&policy.name);
                    let rewritten = rewrite_strings(&current, selector, |s| {
                        if hit.is_some() {
                            return None;
                        }
                        match filter.action {
                            FilterAction::Redact => {
                                let (new, n) = filter.redact(s, &label);
                                count += n;
                                match new {
                                    Cow::Owned(o) => Some(o),
                                    Cow::Borrowed(_) => None,
                                }
                            }
                            FilterAction::Block | FilterAction::Log => {
                                hit = filter.find(s).map(|h| h.rule);
                                None
                            }
                        }
                    })
                    .map_err(|e| e.kind())?;
                    if let Some(rule) = hit {
                        if filter.action == FilterAction::Block {
                            let message = filter
                                .message
                                .clone()
                                .unwrap_or_else(|| "blocked pattern detected".into());
                            self.record.blocked = Some((policy.name.to_string(), rule));
                            return Ok(Applied::Blocked {
                                policy: policy.name.to_string(),
                                message,
                            });
                        }
                        self.record.logged.push((policy.name.to_string(), rule));
                    }
                    if count > 0 {
                        let counts = if input {
                            &mut self.record.redacted_in
                        } else {
                            &mut self.record.redacted_out
                        };
                        *counts.entry(policy.name.to_string()).or_default() += count;
                    }
                    if let Cow::Owned(new) = rewritten {
                        current = Cow::Owned(new);
                    }
                }
                Action::Redact(redactor) => {
                    // Secrets are redacted wherever they are in the body.
                    let mut found = Vec::new();
                    let rewritten = rewrite_strings(&current, Selector::AllStrings, |s| {
                        match redactor.redact(s, &mut found) {
                            Cow::Owned(o) => Some(o),
                            Cow::Borrowed(_) => None,
                        }
                    })
                    .map_err(|e| e.kind())?;
                    let counts = if input {
                        &mut self.record.redacted_in
                    } else {
                        &mut self.record.redacted_out
                    };
                    for f in &found {
                        *counts.entry(f.kind.to_string()).or_default() += 1;
                    }
                    if let Cow::Owned(new) = rewritten {
                        current = Cow::Owned(new);
                    }
                }
                _ => {}
            }
        }
        Ok(match current {
            Cow::Borrowed(_) => Applied::Same,
            Cow::Owned(new) => Applied::Changed(new),
        })
    }

    /// The completion hook: runs once per exchange, whatever happened.
    pub fn complete(&mut self, status: Option<u16>) {
        if self.completed {
            return;
        }
        self.completed = true;
        self.record.status = status;
        if let Some((sink, sends)) = self.audit.take() {
            submit(&sink, &sends, self.events());
        }
        let r = &self.record;
        let action = if r.blocked.is_some() {
            "block"
        } else if status.is_none_or(|s| s >= 500) {
            "error"
        } else if r.cache_hit == Some(true) {
            "cache_hit"
        } else if !r.redacted_in.is_empty() || !r.redacted_out.is_empty() {
            "redact"
        } else {
            "pass"
        };
        self.counters.count(action, r.policy_us);
        // The audit trail proper (hash-chained events) records this; the log
        // line is for debugging.
        tracing::debug!(
            target: "kt::exchange",
            provider = self.info.provider.as_str(),
            endpoint = self.info.endpoint.as_str(),
            host = %self.info.host,
            path = %self.info.path,
            model = self.info.model.as_deref().unwrap_or(""),
            status = status.unwrap_or(0),
            action,
            blocked_by = r.blocked.as_ref().map(|b| b.0.as_str()).unwrap_or(""),
            redacted_in = r.redacted_in.values().sum::<usize>(),
            redacted_out = r.redacted_out.values().sum::<usize>(),
            policy_us = r.policy_us,
            latency_ms = self.started.elapsed().as_millis() as u64,
            "exchange"
        );
    }
}

impl Exchange {
    /// The audit events of this exchange: the request's, and the response's
    /// unless the request never went upstream.
    fn events(&self) -> Vec<Event> {
        let r = &self.record;
        let request_id = Some(random_id());
        let base = |phase: Phase, action: EventAction| {
            let mut e = Event::new(phase, action);
            e.mode = Some(Mode::Proxy);
            e.provider = Some(self.info.provider.as_str().to_string());
            e.host = Some(self.info.host.clone());
            e.method = Some(self.info.method.to_string());
            e.path = Some(self.info.path.clone());
            e.endpoint = Some(self.info.endpoint.as_str().to_string());
            e.api = self.info.api.map(|a| a.as_str().to_string());
            e.model = self.info.model.clone();
            e.request_id = request_id.clone();
            e.user = self.info.user.as_deref().map(str::to_owned);
            e.team = self.info.team.as_deref().map(str::to_owned);
            e
        };
        let counts = |m: &BTreeMap<String, usize>| {
            (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), *v as u64)).collect())
        };
        let blocked = |input: bool| r.blocked.as_ref().filter(|_| r.blocked_on_input == input);
        let mut input = match blocked(true) {
            Some(_) => base(Phase::Input, EventAction::Block),
            None if !r.redacted_in.is_empty() => base(Phase::Input, EventAction::Redact),
            None => base(Phase::Input, EventAction::Pass),
        };
        input.redactions = counts(&r.redacted_in);
        input.policy_us = Some(r.policy_us);
        if let Some((policy, _)) = blocked(true) {
            input.policy = Some(policy.clone());
            input.reason = Some("blocked pattern detected".into());
            input.status = r.status;
            input.latency_ms = Some(self.started.elapsed().as_millis() as u64);
            return vec![input];
        }
        let status = r.status;
        let failed = status.is_none_or(|s| s >= 500);
        let mut output = match blocked(false) {
            Some(_) => base(Phase::Output, EventAction::Block),
            None if failed => base(Phase::Output, EventAction::Error),
            None if r.cache_hit == Some(true) => base(Phase::Output, EventAction::CacheHit),
            None if !r.redacted_out.is_empty() => base(Phase::Output, EventAction::Redact),
            None => base(Phase::Output, EventAction::Pass),
        };
        if let Some((policy, _)) = blocked(false) {
            output.policy = Some(policy.clone());
            output.reason = Some("blocked pattern detected".into());
        } else if status.is_none() {
            output.reason = Some("the client went away before the response ended".into());
        } else if let Some(error) = &r.error {
            output.reason = Some(error.clone());
        } else if failed {
            output.reason = Some(format!("upstream answered {}", status.unwrap_or(0)));
        }
        output.redactions = counts(&r.redacted_out);
        output.status = status;
        output.latency_ms = Some(self.started.elapsed().as_millis() as u64);
        output.upstream_ms = r.upstream_ms;
        output.cache_hit = r.cache_hit;
        vec![input, output]
    }
}

/// Hands `events` to the audit log in order: queued without waiting when
/// there is room (the common case), else by a tracked task that waits for
/// room, so no event is dropped and shutdown waits for it. Callers may be
/// destructors, which cannot wait themselves.
pub(crate) fn submit(sink: &EventSink, sends: &TaskTracker, events: Vec<Event>) {
    let mut waiting = Vec::new();
    for event in events {
        // Once one had to wait, the rest wait behind it.
        if !waiting.is_empty() {
            waiting.push(event);
        } else if let Err(event) = sink.try_send(event) {
            waiting.push(*event);
        }
    }
    if !waiting.is_empty() && tokio::runtime::Handle::try_current().is_ok() {
        let sink = sink.clone();
        sends.spawn(async move {
            for event in waiting {
                if let Err(e) = sink.send(event).await {
                    tracing::error!(
                        kind = e.kind(),
                        "audit event not written: the event log is closed"
                    );
                }
            }
        });
    }
}

/// 16 random hex digits tying an exchange's events together.
fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // A client that went away mid-stream still closes the record.
        if !self.completed {
            self.complete(None);
        }
    }
}

enum Applied {
    Same,
    Changed(Vec<u8>),
    Blocked { policy: String, message: String },
}
