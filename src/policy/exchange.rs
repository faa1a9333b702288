//! One LLM exchange going through the chain: the input phase on the
//! request body, the output phase on the response (whole JSON or a stream),
//! and a record of what the policies did, closed exactly once.

use super::chain::{Action, Chain, Policy, Selection};
use super::limits::{Key, Now, Refusal};
use super::respond;
use super::stream::{OutputStream, StreamNote};
use super::whole::{self, Whole};
use crate::body::Body;
use crate::config::{OnError, PolicyKind};
use crate::events::{Action as EventAction, Event, EventSink, Mode, Phase, Text};
use crate::llm::family::Family;
use crate::llm::inspect::Usage;
use crate::llm::json_text::Selector;
use crate::llm::recognize::{Api, Endpoint, Provider};
use crate::llm::tap::{estimate_tokens, prompt_chars, TapResult};
use crate::metrics::{ExchangeSample, Metrics};
use bytes::Bytes;
use futures_util::future::join_all;
use http::{Response, StatusCode};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use time::OffsetDateTime;
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
    /// A WebSocket upgrade (see [`Exchange::websocket`]).
    pub websocket: bool,
    // Shared with the exchange's events rather than copied into each.
    pub host: Arc<str>,
    pub path: Arc<str>,
    pub method: http::Method,
    pub model: Option<Arc<str>>,
    pub stream: Option<bool>,
    /// The caller, from the access key (absent for anonymous traffic).
    pub user: Option<Arc<str>>,
    pub team: Option<Arc<str>>,
    /// The client's address.
    pub client: Option<crate::identity::ClientAddr>,
    /// How the client came: the forward proxy or the direct API.
    pub mode: Mode,
    /// The configured provider target a direct-API request was routed to;
    /// events name it as `provider`.
    pub target: Option<Arc<str>>,
}

impl ExchangeInfo {
    /// The `provider` of events: the target id, else the provider's name.
    pub fn provider_name(&self) -> &str {
        self.target.as_deref().unwrap_or(self.provider.as_str())
    }

    /// [`provider_name`](Self::provider_name) as event text, borrowed
    /// unless it is a configured target.
    pub fn provider_text(&self) -> Text {
        match &self.target {
            Some(target) => Text::Owned(target.to_string()),
            None => Text::Borrowed(self.provider.as_str()),
        }
    }
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
    /// From sending the request upstream to its response head, µs.
    pub upstream_us: Option<u64>,
    /// From the start of the exchange to the response head going to the
    /// client, µs.
    pub head_us: Option<u64>,
    /// From the start of the exchange to the first body byte going to the
    /// client, µs (streams: time to first token).
    pub first_byte_us: Option<u64>,
    /// What following the response body taught (usage, text), once it ended.
    pub tap: Option<TapResult>,
    /// The request body as sent upstream, when it was read: for estimating
    /// usage the provider does not report, and for `log_bodies`. A cheap
    /// clone of the bytes that went out.
    pub request_body: Option<Bytes>,
    /// The prompt's length in characters, counted from a request body too
    /// large to keep (`request_body` is then `None`), for the estimate.
    pub prompt_chars: Option<u64>,
    /// With `log_bodies`: the start of the response body the client got.
    pub response_body: Option<Bytes>,
    /// Why the exchange failed: kt answered with an error of its own (the
    /// error kind and message, e.g. an unreachable upstream), or the
    /// provider reported one in the body of a 2xx answer (an error event
    /// mid-stream; see [`TapResult::error`]).
    pub error: Option<String>,
    /// Policies that replaced something, with how many replacements.
    pub redacted_by: BTreeMap<String, usize>,
    /// The first policy that replaced something in the request, and in the
    /// response: the events' `policy`.
    pub redactor: [Option<String>; 2],
    /// `action: log` matches: policy and rule.
    pub logged: Vec<(String, String)>,
    /// Why a `rate-limit` or `budget` policy refused the request (the
    /// input event's `reason`; `blocked` names the policy).
    pub limit_reason: Option<String>,
    /// A `budget` with `action: log` found its budget spent: the policy and
    /// why. The request went ahead; the input event says so.
    pub over_budget: Option<(String, String)>,
    /// Why the request's, and the response's, body could not be inspected
    /// (the first reason in each phase): the events say so, and a block in
    /// that phase was the fail-closed policy's.
    pub uninspected: [Option<&'static str>; 2],
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
    /// The request's event has been queued (see [`Exchange::record_input`]);
    /// the close queues only the answer's.
    input_recorded: bool,
    /// Ties the exchange's events together; drawn when the first is made.
    request_id: Option<Arc<str>>,
    /// The request's model and stream flag are still to be read from the
    /// kept request body (see [`Exchange::input`]).
    meta_pending: bool,
    /// Where the audit events go, when an `audit-logger` policy applies.
    audit: Option<(EventSink, TaskTracker)>,
    metrics: Arc<Metrics>,
    /// The selected redact and content-filter policies of each phase,
    /// worked out once per exchange.
    input_body: Selection,
    output_body: Selection,
    /// The first selected `cache` policy, if any.
    cache: Option<usize>,
    /// The selected `rate-limit` and `budget` policies: checked on input,
    /// charged on completion.
    limits: Selection,
    /// With limits: the drain's tracker, for their writes to shared
    /// counters made beside the request (shutdown waits for them).
    limit_writes: Option<TaskTracker>,
    /// The rate limits admitted the request, each taking one from its
    /// bucket: given back if a body policy then refuses it.
    admitted: bool,
    /// An `audit-logger` with `log_bodies: true` applies.
    log_bodies: bool,
    /// A fail-closed (`immutable`) audit logger applies: no record, no
    /// request.
    audit_required: bool,
}

/// Bodies logged with `log_bodies` are cut here.
pub const LOGGED_BODY_MAX: usize = 64 << 10;

/// Where an exchange's token counts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    /// The provider's usage fields.
    Provider,
    /// Counted from the text: the provider reported none, or (a stream cut
    /// short) only the prompt's, the output's then estimated.
    Estimated,
    /// A cache hit: nothing was billed. The counts are the replayed
    /// answer's usage, or the estimate when it reported none.
    Cached,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Provider => "provider",
            UsageSource::Estimated => "estimated",
            UsageSource::Cached => "cached",
        }
    }
}

impl Exchange {
    pub(crate) fn new(
        chain: Arc<Chain>,
        selection: Selection,
        info: ExchangeInfo,
        sink: Option<&EventSink>,
        tracker: &TaskTracker,
        metrics: Arc<Metrics>,
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
        let mut limits = selection;
        for (i, p) in chain.selected(selection) {
            if !matches!(p.action, Action::RateLimit(_) | Action::Budget(_)) {
                limits.remove(i);
            }
        }
        let audit = sink
            .filter(|_| {
                chain
                    .selected(selection)
                    .any(|(_, p)| p.kind == PolicyKind::AuditLogger)
            })
            .map(|s| (s.clone(), tracker.clone()));
        let limit_writes = (!limits.is_empty()).then(|| tracker.clone());
        let audit_required = chain
            .selected(selection)
            .any(|(_, p)| p.kind == PolicyKind::AuditLogger && p.on_error == OnError::FailClosed);
        let log_bodies = audit.is_some()
            && chain
                .selected(selection)
                .any(|(_, p)| matches!(&p.action, Action::Audit(o) if o.log_bodies));
        Exchange {
            chain,
            info,
            record: Record::default(),
            started: Instant::now(),
            completed: false,
            input_recorded: false,
            request_id: None,
            meta_pending: false,
            audit,
            metrics,
            input_body,
            output_body,
            cache,
            limits,
            limit_writes,
            admitted: false,
            log_bodies,
            audit_required,
        }
    }

    /// True when a fail-closed (`immutable`) audit logger applies but its
    /// log cannot take events (closed, or none configured): the request must
    /// be refused rather than pass unrecorded.
    pub fn unrecordable(&self) -> bool {
        self.audit_required && self.audit.as_ref().is_none_or(|(sink, _)| sink.is_closed())
    }

    /// Waits, at most `max_wait`, while the audit log's queue is full;
    /// false if it stayed full. An exchange's events are queued when it
    /// ends, and those that find no room wait in memory, so starting
    /// exchanges faster than the log is written would grow that without
    /// bound. True at once when the exchange is not audited.
    pub async fn audit_room(&self, max_wait: std::time::Duration) -> bool {
        match &self.audit {
            Some((sink, _)) => sink.room(max_wait).await,
            None => true,
        }
    }

    /// True when a `rate-limit` or `budget` policy applies: the caller
    /// awaits [`Self::admit`] before the input phase.
    pub fn is_limited(&self) -> bool {
        !self.limits.is_empty()
    }

    /// The options of the cache policy that applies, if one does.
    pub fn cache_options(&self) -> Option<&crate::config::CacheOptions> {
        match &self.chain.get(self.cache?)?.action {
            Action::Cache(o) => Some(o),
            _ => None,
        }
    }

    /// The names of the output-phase policies that check this exchange's
    /// answer, in chain order. A cache hit skips them (the stored answer is
    /// what they made of it for the exchange that stored it), so they are
    /// part of the cache key.
    pub fn output_policy_names(&self) -> impl Iterator<Item = &str> {
        let checked = if self.needs_response_body() {
            self.output_body
        } else {
            Selection::default()
        };
        self.chain.selected(checked).map(|(_, p)| &*p.name)
    }

    /// True when bodies go into the audit log (`log_bodies`).
    pub fn logs_bodies(&self) -> bool {
        self.log_bodies
    }

    /// Microseconds since the exchange started.
    pub fn elapsed_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
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

    /// True when the response is checked on its way back. Autocomplete
    /// responses are streamed through untouched: their latency is the
    /// product, and their prompts were already checked.
    pub fn needs_response_body(&self) -> bool {
        !self.info.autocomplete && !self.body_policies(false).is_empty()
    }

    /// The first of `policies` that fails closed, if any does.
    fn failing_closed(&self, policies: Selection) -> Option<String> {
        self.chain
            .selected(policies)
            .find(|(_, p)| p.on_error == OnError::FailClosed)
            .map(|(_, p)| p.name.to_string())
    }

    /// Notes that a phase's body could not be inspected (`why`), and blocks
    /// the exchange there when one of `policies` fails closed: true then.
    fn unreadable(&mut self, policies: Selection, input: bool, why: &'static str) -> bool {
        self.record.uninspected[usize::from(!input)].get_or_insert(why);
        let Some(policy) = self.failing_closed(policies) else {
            return false;
        };
        self.record.blocked = Some((policy, format!("not inspected: {why}")));
        self.record.blocked_on_input = input;
        if input {
            self.refused_on_input();
        }
        true
    }

    /// A body policy refused the request: it goes nowhere, so it counts
    /// against no rate limit, as a request a limit refuses does not.
    fn refused_on_input(&mut self) {
        self.record.blocked_on_input = true;
        if !std::mem::take(&mut self.admitted) {
            return;
        }
        let now = Now::current();
        let tasks = self.limit_writes.as_ref();
        for (_, policy) in self.chain.selected(self.limits) {
            if let Action::RateLimit(l) = &policy.action {
                l.refund(&self.limit_key(l.options().per), now.mono, tasks);
            }
        }
    }

    /// The response's body is one the output policies cannot read (`why`:
    /// compressed, or neither JSON nor SSE). For a `2xx` answer and a
    /// fail-closed policy the answer is kt's `502` instead; else it goes
    /// through unread, and the output event says so. An error status always
    /// goes through: kt's 502 would hide a 429's or a 503's meaning.
    pub fn output_unreadable(
        &mut self,
        why: &'static str,
        what: &str,
        status: StatusCode,
    ) -> Option<Response<Body>> {
        if !status.is_success() {
            self.record.uninspected[1].get_or_insert(why);
            return None;
        }
        if !self.unreadable(self.output_body, false, why) {
            return None;
        }
        Some(respond::gateway_error(
            self.info.api,
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            &format!(
                "kt cannot inspect the upstream response ({what}), so its policies cannot check it"
            ),
        ))
    }

    /// A WebSocket upgrade: kt bridges its frames unread. Both phases are
    /// noted as not inspected; when a body policy of either phase fails
    /// closed the upgrade is refused, a `409` block by that policy, since
    /// what it must check would pass unchecked.
    pub fn websocket(&mut self) -> Option<Response<Body>> {
        const WHY: &str = "websocket";
        let refused = self.unreadable(self.input_body, true, WHY)
            || self.unreadable(self.output_body, true, WHY);
        self.record.uninspected[1].get_or_insert(WHY);
        if !refused {
            return None;
        }
        let policy = self.record.blocked.as_ref().map_or("", |(p, _)| p.as_str());
        Some(respond::blocked(
            self.info.api,
            policy,
            "kt cannot inspect WebSocket messages, and this policy fails closed: use the HTTP API",
        ))
    }

    /// The input phase on the whole request body.
    pub fn input(&mut self, body: Bytes) -> Input {
        // Nothing can refuse, change or answer this request (the built-in
        // chain, an audit-only one): it goes upstream at once, and its
        // model and stream flag, which only the record needs, are read from
        // the kept body when the exchange closes. A proxy's turnaround is
        // the latency it adds; bookkeeping stays off it.
        // The body sent is kept (a cheap clone) at least until the request
        // is on its way; one too large to keep till the close is then
        // counted and let go (see `shed_large_body`).
        if self.limits.is_empty() && self.input_body.is_empty() && self.cache.is_none() {
            self.meta_pending = true;
            self.record.request_body = Some(body.clone());
            return Input::Forward(body);
        }
        let t = Instant::now();
        let out = self.input_inner(body);
        self.record.policy_us += t.elapsed().as_micros() as u64;
        if let Input::Forward(sent) = &out {
            self.record.request_body = Some(sent.clone());
        }
        out
    }

    /// Lets go of a request body too large to keep until the exchange
    /// closes, once what the record needs of it is taken: the model and
    /// stream flag, and its prompt's length for a token estimate should
    /// the provider report no usage.
    fn shed_large_body(&mut self) {
        let Some(body) = self.record.request_body.clone() else {
            return;
        };
        if self.keeps_request(&body) {
            return;
        }
        self.read_pending_meta();
        self.record.prompt_chars = self.prompt_length(&body);
        self.record.request_body = None;
    }

    /// Reads the model and stream flag from the kept request body, if
    /// [`Exchange::input`] left them for later.
    fn read_pending_meta(&mut self) {
        if std::mem::take(&mut self.meta_pending) {
            if let Some(body) = self.record.request_body.clone() {
                self.read_meta(&body);
            }
        }
    }

    /// The prompt's length in characters: its text for a known family,
    /// else the whole body.
    fn prompt_length(&self, body: &[u8]) -> Option<u64> {
        match self.info.family {
            Some(f) => prompt_chars(f, body),
            None => Some(body.len() as u64),
        }
    }

    /// Queues the request's audit event now that the request has gone
    /// upstream, rather than with the answer's when the exchange closes: a
    /// request that reached the provider is in the trail even if the
    /// gateway dies before the answer ends, and a long stream shows in
    /// `kt events tail` from its start. Called once the request is on its
    /// way, so building the event overlaps the provider's work instead of
    /// delaying the request.
    pub fn record_input(&mut self) {
        if self.input_recorded || self.completed {
            return;
        }
        self.shed_large_body();
        if self.audit.is_none() {
            return;
        }
        self.read_pending_meta();
        self.ensure_request_id();
        let event = self.input_event(OffsetDateTime::now_utc());
        if let Some((sink, sends)) = &self.audit {
            submit(sink, sends, [event]);
        }
        self.input_recorded = true;
    }

    fn ensure_request_id(&mut self) {
        if self.request_id.is_none() {
            self.request_id = Some(random_id());
        }
    }

    /// Whether the record keeps the request body sent: only while small (an
    /// estimate needs the prompt, and a logged body is cut anyway).
    fn keeps_request(&self, sent: &[u8]) -> bool {
        sent.len() <= REQUEST_KEEP_MAX || self.log_bodies
    }

    /// Model and stream flag from the request body, for the record (the
    /// path's model, when it names one, wins).
    fn read_meta(&mut self, body: &[u8]) {
        if let Ok(meta) = crate::llm::inspect::request_meta(body) {
            if self.info.model.is_none() {
                self.info.model = meta.model.map(|m| Arc::from(m.as_ref()));
            }
            if meta.stream.is_some() {
                self.info.stream = meta.stream;
            }
        }
    }

    fn input_inner(&mut self, body: Bytes) -> Input {
        self.read_meta(&body);
        let policies = self.body_policies(true);
        if policies.is_empty() {
            return Input::Forward(body);
        }
        match self.apply(&body, policies, true) {
            Ok(Applied::Same) => Input::Forward(body),
            Ok(Applied::Changed(new)) => Input::Forward(Bytes::from(new)),
            Ok(Applied::Blocked { policy, message }) => {
                self.refused_on_input();
                Input::Respond(respond::blocked(self.info.api, &policy, &message))
            }
            Err(reason) => {
                if self.unreadable(policies, true, reason) {
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

    /// The key of this exchange's caller for a policy keyed `per` `scope`.
    fn limit_key(&self, scope: crate::config::Scope) -> Key {
        Key::of(scope, self.info.user.as_ref(), self.info.team.as_ref())
    }

    /// The `rate-limit` and `budget` checks: the `429` of the first in
    /// chain order that refuses. The requests other rate limits took are
    /// given back, so a refused request counts nowhere.
    ///
    /// Runs before the input phase's body policies: the caller awaits it
    /// (a shared backend is a Redis round trip), then calls [`Self::input`].
    pub async fn admit(&mut self, body: &[u8]) -> Option<Response<Body>> {
        if self.limits.is_empty() {
            return None;
        }
        let t = Instant::now();
        let now = Now::current();
        let chain = self.chain.clone();
        let refused = self.admit_in(&chain, now).await;
        if refused.is_some() {
            // The input phase will not run: the record still names the model.
            self.read_meta(body);
        } else {
            self.admitted = true;
        }
        self.record.policy_us += t.elapsed().as_micros() as u64;
        refused
    }

    async fn admit_in(&mut self, chain: &Chain, now: Now) -> Option<Response<Body>> {
        let tasks = self.limit_writes.clone();
        let checks: Vec<(&Policy, Key)> = chain
            .selected(self.limits)
            .filter_map(|(_, p)| match &p.action {
                Action::RateLimit(l) => Some((p, self.limit_key(l.options().per))),
                Action::Budget(b) => Some((p, self.limit_key(b.options().per))),
                _ => None,
            })
            .collect();
        // All at once: with shared counters that is one Redis round trip
        // for the request, not one per policy. The verdicts are then read
        // in chain order, so the first refusal is the one the client gets.
        let verdicts = join_all(checks.iter().map(|(p, key)| verdict(p, key, now))).await;
        for (n, ((policy, _), verdict)) in checks.iter().zip(&verdicts).enumerate() {
            let refusal = match (&policy.action, verdict) {
                (_, Ok(())) => continue,
                (Action::Budget(b), Err(r)) if !b.blocks() => {
                    self.record
                        .logged
                        .push((policy.name.to_string(), r.limit.as_str().to_string()));
                    self.record.over_budget = Some((policy.name.to_string(), r.message.clone()));
                    continue;
                }
                (_, Err(r)) => r,
            };
            // The rate limits that admitted it took a request: give it back,
            // so a refused request counts nowhere.
            for (m, ((other, key), v)) in checks.iter().zip(&verdicts).enumerate() {
                if let (Action::RateLimit(l), true) = (&other.action, m != n && v.is_ok()) {
                    l.refund(key, now.mono, tasks.as_ref());
                }
            }
            self.record.blocked =
                Some((policy.name.to_string(), refusal.limit.as_str().to_string()));
            self.record.blocked_on_input = true;
            let resp = respond::limited(self.info.api, &policy.name, refusal);
            self.record.limit_reason = Some(refusal.message.clone());
            return Some(resp);
        }
        None
    }

    /// Charges what the exchange used to the `rate-limit` and `budget`
    /// policies that admitted it: tokens the provider processed (a cache
    /// hit's were not) and dollars (a cache hit's are 0).
    fn charge(&self, usage: Option<(Usage, UsageSource)>, cost: Option<f64>) {
        if self.limits.is_empty() || self.record.blocked_on_input {
            return;
        }
        let tokens = match usage {
            Some((u, UsageSource::Provider | UsageSource::Estimated)) => {
                // Clamped counts cannot overflow; saturating all the same,
                // since this runs in `Drop`, where a panic aborts.
                u.tokens_in
                    .unwrap_or(0)
                    .saturating_add(u.tokens_out.unwrap_or(0))
            }
            _ => 0,
        };
        let usd = cost.unwrap_or(0.0);
        if tokens == 0 && usd <= 0.0 {
            return;
        }
        let now = Now::current();
        let tasks = self.limit_writes.as_ref();
        for (_, policy) in self.chain.selected(self.limits) {
            match &policy.action {
                Action::RateLimit(l) if l.counts_tokens() => {
                    l.charge_tokens(&self.limit_key(l.options().per), tokens, now.mono, tasks);
                }
                Action::Budget(b) => b.spend(&self.limit_key(b.options().per), usd, now.utc, tasks),
                _ => {}
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
                if self.unreadable(policies, false, reason) {
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
        self.absorb_notes(notes, false);
    }

    /// Takes in what the policies of one phase did.
    fn absorb_notes(&mut self, notes: Vec<StreamNote>, input: bool) {
        let phase = usize::from(!input);
        for note in notes {
            match note {
                StreamNote::Redacted { kind, policy } => {
                    self.record.redactor[phase].get_or_insert_with(|| policy.to_string());
                    let counts = match input {
                        true => &mut self.record.redacted_in,
                        false => &mut self.record.redacted_out,
                    };
                    *counts.entry(kind.to_string()).or_default() += 1;
                    *self
                        .record
                        .redacted_by
                        .entry(policy.to_string())
                        .or_default() += 1;
                }
                StreamNote::Blocked { policy, rule } => {
                    self.record.blocked = Some((policy.to_string(), rule));
                }
                StreamNote::Logged { policy, rule } => {
                    self.record.logged.push((policy.to_string(), rule));
                }
                StreamNote::Uninspected { reason } => {
                    self.record.uninspected[phase].get_or_insert(reason);
                }
            }
        }
    }

    fn apply(
        &mut self,
        body: &[u8],
        policies: Selection,
        input: bool,
    ) -> Result<Applied, &'static str> {
        // Filters read what the user wrote (or the model answered), not
        // request metadata.
        let pointers = self.info.family.map(|f| match input {
            true => f.prompt_pointers(),
            false => f.output_pointers(),
        });
        let text = pointers.map_or(Selector::AllStrings, Selector::Pointers);
        let chain = self.chain.clone();
        let mut notes = Vec::new();
        let applied = whole::apply(
            chain.selected(policies).map(|(_, p)| p),
            body,
            text,
            &mut notes,
        );
        self.absorb_notes(notes, input);
        Ok(match applied.map_err(|e| e.kind())? {
            Whole::Same => Applied::Same,
            Whole::Changed(new) => Applied::Changed(new),
            Whole::Blocked {
                policy,
                rule,
                message,
            } => {
                self.record.blocked = Some((policy.to_string(), rule));
                Applied::Blocked {
                    policy: policy.to_string(),
                    message,
                }
            }
        })
    }

    /// The exchange's token counts: the provider's when its response
    /// reported them (with the output's estimated when a stream cut short
    /// reported only the prompt's), else an estimate from the text when it
    /// answered 2xx (of what went by, when the answer was cut short), else
    /// unknown (never zero for want of a report); each count at most
    /// [`MAX_TOKENS`](crate::llm::inspect::MAX_TOKENS). A cache hit's counts
    /// are [`UsageSource::Cached`] either way: nothing was billed, and the
    /// counts are what its first fetch was recorded with.
    pub fn usage(&self) -> Option<(Usage, UsageSource)> {
        let r = &self.record;
        let tap = r.tap.as_ref()?;
        let hit = r.cache_hit == Some(true);
        // The tap follows 2xx answers only: the provider took the request
        // and bills what it generated, also when the client went away (a
        // user pressing Stop) or a policy stopped the stream before the
        // usage came. An answer that was an error in its body, or that the
        // upstream broke off, bills what nobody here can tell.
        let estimable = tap.error.is_none() && r.error.is_none();
        if !tap.usage.is_empty() {
            let mut usage = tap.usage;
            let mut source = UsageSource::Provider;
            // Anthropic and Gemini report the prompt's count first and the
            // output's last: a stream cut before the last report still
            // billed the text that went by.
            if usage.tokens_out.is_none() && !tap.ended && estimable {
                let seen = (tap.output_chars > 0).then(|| estimate_tokens(tap.output_chars));
                usage.tokens_out = seen.max(tap.placeholder_out);
                if usage.tokens_out.is_some() {
                    source = UsageSource::Estimated;
                }
            }
            if hit {
                source = UsageSource::Cached;
            }
            return Some((usage.clamped(), source));
        }
        if !estimable {
            return None;
        }
        let tokens_out =
            (tap.ended || tap.output_chars > 0).then(|| estimate_tokens(tap.output_chars));
        let tokens_in = match &r.request_body {
            Some(body) => self.prompt_length(body),
            None => r.prompt_chars,
        }
        .map(estimate_tokens);
        if tokens_in.is_none() && tokens_out.is_none() {
            return None;
        }
        let source = match hit {
            true => UsageSource::Cached,
            false => UsageSource::Estimated,
        };
        // A prompt or answer kt saw cannot be that large, but an estimate
        // is charged like a count: the same bound holds.
        Some((
            Usage {
                tokens_in,
                tokens_out,
                ..Usage::default()
            }
            .clamped(),
            source,
        ))
    }

    /// The completion hook: runs once per exchange, whatever happened.
    pub fn complete(&mut self, status: Option<u16>) {
        if self.completed {
            return;
        }
        self.completed = true;
        self.shed_large_body();
        self.read_pending_meta();
        self.record.status = status;
        let usage = self.usage();
        let priced =
            usage.and_then(|(u, _)| self.chain.pricing().cost(self.info.model.as_deref(), &u));
        // A cache hit costs nothing and saves what the answer cost first.
        let (cost, saved) = match usage {
            Some((_, UsageSource::Cached)) => (priced.map(|_| 0.0), priced),
            _ => (priced, None),
        };
        self.charge(usage, cost);
        self.ensure_request_id();
        if let Some((sink, sends)) = self.audit.take() {
            submit(&sink, &sends, self.events(usage, cost, saved));
        }
        let r = &self.record;
        let action = if r.blocked.is_some() {
            "block"
        } else if status.is_none_or(|s| s >= 400) || r.error.is_some() {
            "error"
        } else if r.cache_hit == Some(true) {
            "cache_hit"
        } else if !r.redacted_in.is_empty() || !r.redacted_out.is_empty() {
            "redact"
        } else {
            "pass"
        };
        let latency_us = self.elapsed_us();
        self.metrics.exchange(
            &ExchangeSample {
                provider: self.info.provider.as_str(),
                endpoint: self.info.endpoint.as_str(),
                action,
                status,
                model: self.info.model.as_deref(),
                latency_us,
                upstream_us: r.upstream_us,
                overhead_us: self.overhead_us(),
                first_byte_us: r.first_byte_us.filter(|_| self.info.stream == Some(true)),
                tokens_in: usage.and_then(|(u, _)| u.tokens_in),
                tokens_out: usage.and_then(|(u, _)| u.tokens_out),
                cost_usd: cost,
                cost_saved_usd: saved,
                usage_source: usage.map(|(_, source)| source.as_str()),
            },
            r.policy_us,
        );
        for policy in r.redacted_by.keys() {
            self.metrics.policy_action(policy, "redact");
        }
        if let Some((policy, _)) = &r.blocked {
            self.metrics.policy_action(policy, "block");
        }
        for (policy, _) in &r.logged {
            self.metrics.policy_action(policy, "log");
        }
        // The audit trail proper (hash-chained events) records this; the log
        // line is for debugging.
        tracing::debug!(
            target: "kt::exchange",
            provider = self.info.provider_name(),
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
            latency_ms = latency_us / 1000,
            "exchange"
        );
    }
}

impl Exchange {
    /// kt's own share of the time to the response head: everything but
    /// waiting on the provider.
    fn overhead_us(&self) -> Option<u64> {
        let r = &self.record;
        Some(r.head_us?.saturating_sub(r.upstream_us?))
    }

    /// An event of this exchange, stamped `at`.
    fn base_event(&self, phase: Phase, action: EventAction, at: OffsetDateTime) -> Box<Event> {
        // Built in its box: the writer takes it as it is.
        let mut e = Box::new(Event::at(phase, action, at));
        e.mode = Some(self.info.mode);
        e.provider = Some(self.info.provider_text());
        e.host = Some(self.info.host.clone());
        e.method = Some(method_text(&self.info.method));
        e.path = Some(self.info.path.clone());
        e.endpoint = Some(Text::Borrowed(self.info.endpoint.as_str()));
        e.api = self.info.api.map(|a| Text::Borrowed(a.as_str()));
        e.model = self.info.model.clone();
        e.request_id = self.request_id.clone();
        e.user = self.info.user.clone();
        e.team = self.info.team.clone();
        e.client_ip = self.info.client.as_ref().map(|c| c.text.clone());
        e
    }

    /// The request's event, stamped with when the request arrived (`now`
    /// less the exchange's age), as far as the record knows it.
    fn input_event(&self, now: OffsetDateTime) -> Box<Event> {
        let r = &self.record;
        let arrived = time::Duration::try_from(self.started.elapsed())
            .ok()
            .and_then(|age| now.checked_sub(age))
            .unwrap_or(now);
        let blocked = r.blocked.as_ref().filter(|_| r.blocked_on_input);
        let action = match blocked {
            Some(_) => EventAction::Block,
            None if !r.redacted_in.is_empty() => EventAction::Redact,
            None => EventAction::Pass,
        };
        let mut input = self.base_event(Phase::Input, action, arrived);
        input.redactions = redaction_counts(&r.redacted_in);
        if input.action == EventAction::Redact {
            input.policy = r.redactor[0].clone();
        }
        input.policy_us = Some(r.policy_us);
        if self.log_bodies {
            input.request_body = r.request_body.as_deref().map(logged_body);
        }
        if let Some(why) = r.uninspected[0] {
            input.reason = Some(format!("not inspected: {why}"));
        }
        if let Some((policy, reason)) = &r.over_budget {
            input.policy = Some(policy.clone());
            input.reason = Some(format!("over budget, let through (action: log): {reason}"));
        }
        if let Some((policy, _)) = blocked {
            input.policy = Some(policy.clone());
            input.reason = Some(
                r.limit_reason
                    .clone()
                    .unwrap_or_else(|| block_reason(r.uninspected[0])),
            );
            input.status = r.status;
            input.latency_ms = Some(self.started.elapsed().as_millis() as u64);
        }
        input
    }

    /// The audit events still to queue when the exchange closes: the
    /// request's unless [`Exchange::record_input`] queued it already, and
    /// the response's unless the request never went upstream.
    // Boxed: the writer takes each event as its box (see `EventSink::send`).
    #[allow(clippy::vec_box)]
    fn events(
        &self,
        usage: Option<(Usage, UsageSource)>,
        cost: Option<f64>,
        saved: Option<f64>,
    ) -> Vec<Box<Event>> {
        let r = &self.record;
        let now = OffsetDateTime::now_utc();
        let mut out = Vec::with_capacity(2);
        if !self.input_recorded {
            out.push(self.input_event(now));
        }
        let blocked = |input: bool| r.blocked.as_ref().filter(|_| r.blocked_on_input == input);
        if blocked(true).is_some() {
            return out;
        }
        let base = |phase: Phase, action: EventAction| self.base_event(phase, action, now);
        let counts = redaction_counts;
        let status = r.status;
        // An exchange kt cut short (a body timeout, a stream the upstream
        // broke after a 200 head) failed whatever its status says; one the
        // upstream refused (a 429 rate limit, a 401, a 5xx) failed too.
        let failed = status.is_none_or(|s| s >= 400) || r.error.is_some();
        let mut output = match blocked(false) {
            Some(_) => base(Phase::Output, EventAction::Block),
            None if failed => base(Phase::Output, EventAction::Error),
            None if r.cache_hit == Some(true) => base(Phase::Output, EventAction::CacheHit),
            None if !r.redacted_out.is_empty() => base(Phase::Output, EventAction::Redact),
            None => base(Phase::Output, EventAction::Pass),
        };
        match output.action {
            EventAction::Redact => output.policy = r.redactor[1].clone(),
            EventAction::CacheHit => {
                output.policy = self
                    .cache
                    .and_then(|i| self.chain.get(i))
                    .map(|p| p.name.to_string());
            }
            _ => {}
        }
        if let Some((policy, _)) = blocked(false) {
            output.policy = Some(policy.clone());
            output.reason = Some(block_reason(r.uninspected[1]));
        } else if let Some(error) = &r.error {
            output.reason = Some(error.clone());
        } else if status.is_none() {
            output.reason = Some("the client went away before the response ended".into());
        } else if failed {
            let status = status.unwrap_or(0);
            output.reason = Some(match r.uninspected[1] {
                Some(why) => format!("upstream answered {status}; not inspected: {why}"),
                None => format!("upstream answered {status}"),
            });
        } else if let Some(why) = r.uninspected[1] {
            output.reason = Some(format!("not inspected: {why}"));
        }
        output.redactions = counts(&r.redacted_out);
        output.status = status;
        output.latency_ms = Some(self.started.elapsed().as_millis() as u64);
        output.upstream_ms = r.upstream_us.map(|us| us / 1000);
        output.overhead_us = self.overhead_us();
        output.cache_hit = r.cache_hit;
        if let Some((usage, source)) = usage {
            output.tokens_in = usage.tokens_in;
            output.tokens_out = usage.tokens_out;
            output.usage_source = Some(Text::Borrowed(source.as_str()));
            output.cost_usd = cost;
            output.cost_saved_usd = saved;
        }
        if self.log_bodies {
            output.response_body = r.response_body.as_deref().map(logged_body);
        }
        out.push(output);
        out
    }
}

/// A phase's redaction counts by kind, as an event carries them.
fn redaction_counts(m: &BTreeMap<String, usize>) -> Option<BTreeMap<String, u64>> {
    (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), *v as u64)).collect())
}

/// One `rate-limit` or `budget` policy's verdict on a request of `key`:
/// against its Redis counters when it has them, else this process's.
async fn verdict(policy: &Policy, key: &Key, now: Now) -> Result<(), Refusal> {
    match &policy.action {
        Action::RateLimit(l) => l.admit_shared(key, now.mono).await,
        Action::Budget(b) => b.check_shared(key, now.utc).await,
        _ => Ok(()),
    }
}

/// Hands `events` to the audit log in order: queued without waiting when
/// there is room (the common case), else by a tracked task that waits for
/// room, so no event is dropped and shutdown waits for it. Callers may be
/// destructors, which cannot wait themselves.
pub(crate) fn submit(
    sink: &EventSink,
    sends: &TaskTracker,
    events: impl IntoIterator<Item = Box<Event>>,
) {
    let mut waiting = Vec::new();
    for event in events {
        // Once one had to wait, the rest wait behind it.
        if !waiting.is_empty() {
            waiting.push(event);
        } else if let Err(event) = sink.try_send(event) {
            waiting.push(event);
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

/// The reason of a block: a pattern, unless the phase's body could not be
/// inspected, which blocks only under a fail-closed policy.
fn block_reason(uninspected: Option<&'static str>) -> String {
    match uninspected {
        Some(why) => format!("not inspected: {why}; the policy fails closed"),
        None => "blocked pattern detected".into(),
    }
}

/// Request bodies up to this size are kept for the record.
const REQUEST_KEEP_MAX: usize = 256 << 10;

/// A body as logged: UTF-8 (lossy), cut at [`LOGGED_BODY_MAX`] bytes.
fn logged_body(body: &[u8]) -> String {
    let cut = body.get(..LOGGED_BODY_MAX).unwrap_or(body);
    let mut text = String::from_utf8_lossy(cut).into_owned();
    if body.len() > LOGGED_BODY_MAX {
        // A multi-byte char cut in half decodes as U+FFFD; say why it ends.
        text.push_str(&format!("…[{} more bytes]", body.len() - LOGGED_BODY_MAX));
    }
    text
}

/// The method as event text, borrowed for the methods LLM calls use.
fn method_text(m: &http::Method) -> Text {
    match *m {
        http::Method::POST => Text::Borrowed("POST"),
        http::Method::GET => Text::Borrowed("GET"),
        _ => Text::Owned(m.as_str().to_owned()),
    }
}

/// 16 random hex digits tying an exchange's events together.
fn random_id() -> Arc<str> {
    // On the stack, then one allocation: `hex::encode` and `format!` grow a
    // `String` char by char, paid per exchange.
    let mut out = [0u8; 16];
    match hex::encode_to_slice(rand::random::<[u8; 8]>(), &mut out) {
        Ok(()) => Arc::from(std::str::from_utf8(&out).unwrap_or_default()),
        Err(_) => Arc::from(""),
    }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::Exchange;
    use crate::config::Config;
    use crate::identity::Identity;
    use crate::policy::Engine;

    fn exchange() -> Box<Exchange> {
        exchange_at("api.openai.com", "/v1/chat/completions")
    }

    fn exchange_at(host: &str, path: &str) -> Box<Exchange> {
        let yaml = "policies:\n  chain: [audit-logger]\npolicy:\n  audit-logger: {}\n";
        exchange_with(yaml, host, path)
    }

    fn exchange_with(yaml: &str, host: &str, path: &str) -> Box<Exchange> {
        let config = Config::parse(yaml, std::path::Path::new("t.yaml")).unwrap();
        let engine = Engine::new(Some(&config)).unwrap();
        engine
            .begin(
                &std::sync::Arc::from(host),
                &http::Method::POST,
                &path.parse().unwrap(),
                &http::HeaderMap::new(),
                &Identity::anonymous(),
            )
            .unwrap()
    }

    /// The usage of a 2xx stream whose body was `body`, through the tap
    /// the proxy uses.
    fn stream_usage(
        host: &str,
        path: &str,
        family: crate::llm::family::Family,
        body: &[u8],
        error: Option<&str>,
    ) -> Option<(crate::llm::inspect::Usage, super::UsageSource)> {
        let mut tap = crate::llm::tap::UsageTap::stream(family);
        for piece in body.chunks(7) {
            tap.feed(&bytes::Bytes::copy_from_slice(piece));
        }
        let mut ex = exchange_at(host, path);
        ex.record.status = Some(200);
        ex.record.error = error.map(str::to_owned);
        ex.record.tap = Some(tap.finish());
        ex.usage()
    }

    /// Anthropic reports the output count last (`message_delta`): a stream
    /// cut before it (Stop, an output policy) keeps the provider's input
    /// count and estimates the output from the text that went by.
    #[test]
    fn an_anthropic_stream_cut_before_its_output_count_estimates_it() {
        use super::UsageSource;
        use crate::llm::family::Family;
        let text = "x".repeat(400);
        let start = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n";
        let delta = format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{text}\"}}}}\n\n");
        let cut = format!("{start}{delta}");
        let anthropic = |body: &str, error| {
            stream_usage(
                "api.anthropic.com",
                "/v1/messages",
                Family::AnthropicMessages,
                body.as_bytes(),
                error,
            )
        };
        let (u, source) = anthropic(&cut, None).unwrap();
        assert_eq!((u.tokens_in, u.tokens_out), (Some(20), Some(100)));
        assert_eq!(source, UsageSource::Estimated);

        // Cut before any text: the placeholder is all that is known.
        let (u, source) = anthropic(start, None).unwrap();
        assert_eq!(
            (u.tokens_in, u.tokens_out, source),
            (Some(20), Some(1), UsageSource::Estimated)
        );

        // The upstream broke off: what it bills is nobody's guess here.
        let (u, source) = anthropic(&cut, Some("upstream_stream: reset")).unwrap();
        assert_eq!(
            (u.tokens_in, u.tokens_out, source),
            (Some(20), None, UsageSource::Provider)
        );

        // A whole stream keeps the provider's counts.
        let whole = format!("{cut}event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":93}}}}\n\nevent: message_stop\ndata: {{\"type\":\"message_stop\"}}\n\n");
        let (u, source) = anthropic(&whole, None).unwrap();
        assert_eq!(
            (u.tokens_in, u.tokens_out, source),
            (Some(20), Some(93), UsageSource::Provider)
        );
    }

    /// A hostile upstream's counts are clamped before they are priced and
    /// charged: no overflow (a panic in `Drop` in a debug build, a wrap
    /// to a small charge in release).
    #[test]
    fn huge_counts_are_clamped_and_charged_without_overflow() {
        use crate::llm::inspect::{Usage, MAX_TOKENS};
        let yaml = "policies:\n  chain: [audit-logger, per-dev]\npolicy:\n  audit-logger: {}\n  per-dev:\n    type: rate-limit\n    requests_per_minute: 100\n    tokens_per_minute: 5\n";
        let mut ex = exchange_with(yaml, "api.openai.com", "/v1/chat/completions");
        ex.info.model = Some("gpt-4o".into());
        ex.record.status = Some(200);
        ex.record.tap = Some(crate::llm::tap::TapResult {
            usage: Usage {
                tokens_in: Some(u64::MAX),
                tokens_out: Some(u64::MAX),
                ..Usage::default()
            },
            ended: true,
            ..Default::default()
        });
        let (u, _) = ex.usage().unwrap();
        assert_eq!(
            (u.tokens_in, u.tokens_out),
            (Some(MAX_TOKENS), Some(MAX_TOKENS))
        );
        ex.complete(Some(200));
    }

    /// Gemini's early chunks may carry only the prompt's count: a stream
    /// cut before the last chunk estimates the output it saw.
    #[test]
    fn a_gemini_stream_cut_before_its_last_chunk_estimates_the_output() {
        use super::UsageSource;
        use crate::llm::family::Family;
        let chunk = |text: &str, usage: &str| {
            format!("data: {{\"candidates\":[{{\"content\":{{\"role\":\"model\",\"parts\":[{{\"text\":\"{text}\"}}]}}}}],\"usageMetadata\":{{{usage}}}}}\r\n\r\n")
        };
        let (host, path) = (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        );
        let first = chunk(&"y".repeat(200), "\"promptTokenCount\":8");
        let second = chunk(&"y".repeat(200), "\"promptTokenCount\":8");
        let cut = format!("{first}{second}");
        let (u, source) = stream_usage(host, path, Family::Gemini, cut.as_bytes(), None).unwrap();
        assert_eq!((u.tokens_in, u.tokens_out), (Some(8), Some(100)));
        assert_eq!(source, UsageSource::Estimated);

        let last = chunk("", "\"promptTokenCount\":8,\"candidatesTokenCount\":97");
        let whole = format!("{cut}{last}");
        let (u, source) = stream_usage(host, path, Family::Gemini, whole.as_bytes(), None).unwrap();
        assert_eq!(
            (u.tokens_in, u.tokens_out, source),
            (Some(8), Some(97), UsageSource::Provider)
        );
    }

    fn output(status: Option<u16>, error: Option<&str>) -> (String, Option<String>) {
        let mut ex = exchange();
        ex.record.status = status;
        ex.record.error = error.map(str::to_owned);
        let events = ex.events(None, None, None);
        let out = events.last().unwrap();
        assert_eq!(out.phase.as_str(), "output");
        (out.action.as_str().to_owned(), out.reason.clone())
    }

    #[test]
    fn the_request_event_is_stamped_with_its_arrival_and_the_answer_with_its_end() {
        let mut ex = exchange();
        ex.started -= std::time::Duration::from_secs(2);
        ex.record.status = Some(200);
        ex.ensure_request_id();
        let events = ex.events(None, None, None);
        let [input, output] = &events[..] else {
            panic!("two events expected, got {}", events.len());
        };
        assert_eq!(
            (input.phase.as_str(), output.phase.as_str()),
            ("input", "output")
        );
        let parse = |ts: &str| {
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).unwrap()
        };
        let apart = parse(&output.ts) - parse(&input.ts);
        assert!(
            (1900..=2100).contains(&apart.whole_milliseconds()),
            "{} .. {}",
            input.ts,
            output.ts
        );
        assert_eq!(output.latency_ms.map(|ms| ms / 100), Some(20));
        assert!(input.latency_ms.is_none());
        assert_eq!(input.request_id, output.request_id);
        assert_ne!(input.id, output.id);
    }

    #[test]
    fn an_answer_the_upstream_refused_is_an_error() {
        for status in [429, 401, 404, 503] {
            let (action, reason) = output(Some(status), None);
            assert_eq!(action, "error", "{status}");
            assert_eq!(reason, Some(format!("upstream answered {status}")));
        }
        assert_eq!(output(Some(304), None), ("pass".into(), None));
    }

    #[test]
    fn a_stream_broken_after_a_200_head_is_an_error() {
        let (action, reason) = output(Some(200), Some("upstream_stream: reset"));
        assert_eq!(action, "error");
        assert_eq!(reason.as_deref(), Some("upstream_stream: reset"));
        assert_eq!(output(Some(200), None), ("pass".into(), None));
    }

    #[test]
    fn a_client_that_went_away_is_an_error_saying_so() {
        let (action, reason) = output(None, None);
        assert_eq!(action, "error");
        assert!(reason.unwrap().contains("client went away"));
        // A more precise note wins.
        let (action, reason) = output(None, Some("client_body: the client went away mid-body"));
        assert_eq!(action, "error");
        assert_eq!(
            reason.as_deref(),
            Some("client_body: the client went away mid-body")
        );
    }

    #[test]
    fn a_refused_body_is_an_error_with_its_status() {
        let (action, reason) = output(Some(408), Some("body_timeout: too slow"));
        assert_eq!(action, "error");
        assert_eq!(reason.as_deref(), Some("body_timeout: too slow"));
    }

    #[test]
    fn both_events_of_an_exchange_share_a_fresh_request_id() {
        let mut ex = exchange();
        ex.record.status = Some(200);
        ex.ensure_request_id();
        let events = ex.events(None, None, None);
        let ids: Vec<&str> = events
            .iter()
            .map(|e| e.request_id.as_deref().unwrap())
            .collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0], ids[1]);
        assert_eq!(ids[0].len(), 16);
        assert!(ids[0]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        let ids: std::collections::HashSet<std::sync::Arc<str>> =
            (0..64).map(|_| super::random_id()).collect();
        assert_eq!(ids.len(), 64, "random ids repeat");
    }

    #[test]
    fn an_audit_only_exchange_reads_the_model_at_close_and_forwards_the_body_as_is() {
        let body = bytes::Bytes::from_static(
            br#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        let mut ex = exchange();
        let super::Input::Forward(sent) = ex.input(body.clone()) else {
            panic!("an audit-only chain answered the request");
        };
        assert_eq!(sent.as_ptr(), body.as_ptr(), "the body was copied");
        assert_eq!(ex.record.request_body.as_ref(), Some(&body));
        ex.complete(Some(200));
        assert_eq!(ex.info.model.as_deref(), Some("gpt-4o"));
        assert_eq!(ex.info.stream, Some(true));

        // A body too large to keep is read on the way, as it is not kept.
        let pad = "x".repeat(super::REQUEST_KEEP_MAX);
        let big = format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{pad}"}}]}}"#
        );
        let mut ex = exchange();
        assert!(matches!(ex.input(big.into()), super::Input::Forward(_)));
        // Counted and let go once the request is on its way.
        ex.record_input();
        assert!(ex.record.request_body.is_none());
        assert_eq!(ex.info.model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(ex.record.prompt_chars, Some(super::REQUEST_KEEP_MAX as u64));
    }
}
