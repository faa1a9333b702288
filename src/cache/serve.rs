//! The cache on the request path: [`lookup`] before the upstream is
//! contacted (a hit is answered from a tier or from a concurrent identical
//! request), and [`Ticket::capture`] on the way back, which tees the
//! response into the cache while it streams to the client untouched.
//!
//! A response is stored only when it is complete: a 2xx, not compressed,
//! and for a stream only when the protocol's terminal event was its last
//! event and no error event came before. Responses that carry a redaction
//! placeholder are stored only in `user` scope (a placeholder stands for a
//! secret of whoever sent the request).

use super::entry::{now_ms, Entry, Stored};
use super::flight::{End, FollowerBody, Head, Join, Leader};
use super::key::{self, Key, KeyParts};
use super::memory::Item;
use super::{scope_id, Stats, Store};
use crate::body::{self, Body, BoxError};
use crate::config::{CacheOptions, Scope};
use crate::llm::content::{is_encoded, is_event_stream, is_json};
use crate::llm::family::{Family, StreamEnd};
use crate::llm::recognize::Provider;
use crate::llm::sse::{SseDecoder, SseEvent};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The response header saying what the cache did: `hit`, `miss`, `bypass`.
pub const X_KT_CACHE: HeaderName = HeaderName::from_static("x-kt-cache");
/// The entry's key (16 hex digits), to correlate hits with stores.
pub const X_KT_CACHE_KEY: HeaderName = HeaderName::from_static("x-kt-cache-key");
/// Why the cache was bypassed.
pub const X_KT_CACHE_REASON: HeaderName = HeaderName::from_static("x-kt-cache-reason");

/// How long a follower waits for the leader's response head before going
/// upstream itself.
pub const FLIGHT_WAIT: Duration = Duration::from_secs(30);

/// The text every redaction placeholder starts with (see
/// `policy::redact::placeholder`).
const PLACEHOLDER: &[u8] = b"[REDACTED:";

/// The request as the cache sees it.
#[derive(Debug, Clone, Copy)]
pub struct CacheRequest<'a> {
    pub provider: &'a str,
    pub tls: bool,
    /// Without its port.
    pub host: &'a str,
    pub port: u16,
    pub method: &'a http::Method,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    /// The body as it goes upstream (after input policies).
    pub body: &'a [u8],
    pub stream: bool,
    pub family: Option<Family>,
    pub user: Option<&'a str>,
    pub team: Option<&'a str>,
    /// The output-phase policies that check the answer (see
    /// [`KeyParts::output_policies`]).
    pub output_policies: &'a [&'a str],
}

/// What to do with a request.
pub enum Lookup {
    /// Answer from the cache; the upstream is not contacted.
    Hit(Hit),
    /// Go upstream and hand the response to [`Ticket::capture`].
    Miss(Ticket),
    /// Go upstream; the cache was not read, for this reason. With a ticket
    /// the response is still stored (`no-cache` refreshes the entry).
    Bypass(&'static str, Option<Ticket>),
}

/// A request the client asked not to be answered from the cache: why, and
/// whether its response may be stored.
fn client_bypass(headers: &HeaderMap) -> Option<(&'static str, bool)> {
    let has_token = |name: &HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    // The reasons that forbid storing come first: a request that also
    // asks to skip the lookup (`no-cache`, `x-kt-cache: bypass`) must not
    // turn a refusal to store into a refresh that stores.
    if has_token(&header::CACHE_CONTROL, "no-store") {
        return Some(("no-store", false));
    }
    // Copilot's speculative requests are prefetches whose answers are
    // mostly thrown away; they must not fill (or read) the cache.
    let speculative = headers.get("x-copilot-speculative").is_some_and(|v| {
        let v = v.as_bytes().trim_ascii();
        !(v.eq_ignore_ascii_case(b"false") || v == b"0")
    });
    if speculative {
        return Some(("speculative", false));
    }
    if has_token(&X_KT_CACHE, "bypass") {
        return Some(("client", true));
    }
    if has_token(&header::CACHE_CONTROL, "no-cache") || has_token(&header::PRAGMA, "no-cache") {
        return Some(("no-cache", true));
    }
    None
}

/// Credential headers besides `Authorization`, as constants: the check
/// runs on every request the cache sees.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const API_KEY: HeaderName = HeaderName::from_static("api-key");
const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// Whether the request carries a credential its provider reads: a header
/// with a value, or Gemini's `key` query parameter. A credential the
/// provider ignores (an `x-goog-api-key` sent to OpenAI) does not count:
/// the provider would refuse the request, so a cached answer must not
/// accept it. The direct API's provider key is in the headers by the time
/// the cache looks.
fn carries_credential(provider: &str, headers: &HeaderMap, path_and_query: &str) -> bool {
    let has = |name: &HeaderName| {
        headers
            .get_all(name)
            .iter()
            .any(|v| !v.as_bytes().trim_ascii().is_empty())
    };
    let query_key = || {
        path_and_query.split_once('?').is_some_and(|(_, query)| {
            query
                .split('&')
                .any(|p| p.strip_prefix("key=").is_some_and(|v| !v.is_empty()))
        })
    };
    // Every provider kt knows reads `Authorization`: OpenAI, Copilot,
    // Sourcegraph and Mistral only that; Anthropic for OAuth tokens, Azure
    // for Entra ID tokens, Gemini for Vertex and its OpenAI-compatible
    // surface.
    let bearer = has(&header::AUTHORIZATION);
    match Provider::parse(provider).unwrap_or(Provider::Unknown) {
        Provider::OpenAi | Provider::GithubCopilot | Provider::Sourcegraph | Provider::Mistral => {
            bearer
        }
        Provider::Anthropic => bearer || has(&X_API_KEY),
        Provider::AzureOpenAi => bearer || has(&API_KEY),
        Provider::Gemini => bearer || has(&X_GOOG_API_KEY) || query_key(),
        // A host kt does not know may read any of them.
        Provider::Unknown => {
            bearer || has(&X_API_KEY) || has(&API_KEY) || has(&X_GOOG_API_KEY) || query_key()
        }
    }
}

/// Looks `req` up: a tier, then a concurrent identical request, else a
/// miss that leads the flight for its key.
pub async fn lookup(store: &Arc<Store>, o: &CacheOptions, req: &CacheRequest<'_>) -> Lookup {
    let stats = &store.stats;
    let bypass = |reason, ticket| {
        Stats::bump(&stats.bypasses);
        Lookup::Bypass(reason, ticket)
    };
    let client = client_bypass(req.headers);
    if let Some((reason, false)) = client {
        return bypass(reason, None);
    }
    // The provider checks every request's credential; an answer from the
    // cache must not be the way round that check.
    if !carries_credential(req.provider, req.headers, req.path_and_query) {
        return bypass("no_credential", None);
    }
    if let Err(u) = key::uncacheable(req.body, req.family, o.allow_nondeterministic) {
        return bypass(u.as_str(), None);
    }
    let scope = scope_id(o.scope, req.user, req.team);
    let key = match key::key(&KeyParts {
        provider: req.provider,
        family: req.family,
        tls: req.tls,
        host: req.host,
        port: req.port,
        method: req.method.as_str(),
        path_and_query: req.path_and_query,
        headers: req.headers,
        stream: req.stream,
        scope: &scope,
        output_policies: req.output_policies,
        body: req.body,
    }) {
        Ok(k) => k,
        Err(_) => return bypass("unreadable_body", None),
    };
    let max_entry = o
        .max_entry_bytes
        .unwrap_or(super::DEFAULT_MAX_ENTRY_BYTES)
        .try_into()
        .unwrap_or(usize::MAX);
    let ticket = |leader: Leader, scope: String| Ticket {
        store: store.clone(),
        leader,
        scope,
        ttl: Duration::from_secs(o.ttl_seconds),
        family: req.family,
        allow_placeholder: o.scope == Scope::User,
        provider: req.provider.to_string(),
        verdict: "miss",
    };
    if let Some((reason, true)) = client {
        let mut t = ticket(Leader::solo(key, max_entry), scope);
        t.verdict = "bypass";
        return bypass(reason, Some(t));
    }

    if let Some(item) = store.memory.get(&key) {
        if item.entry.scope == scope {
            Stats::bump(&stats.hits);
            Stats::bump(&stats.memory_hits);
            return Lookup::Hit(Hit::Stored { item, key });
        }
    }
    if let Some(redis) = &store.redis {
        if let Some(entry) = redis.get(&scope, &key).await {
            let left = entry.remaining(now_ms());
            if !left.is_zero() {
                let item = store.memory.insert(key, entry, store.memory_ttl(left));
                Stats::bump(&stats.hits);
                Stats::bump(&stats.redis_hits);
                return Lookup::Hit(Hit::Stored { item, key });
            }
        }
    }
    match store.flights.join(key, max_entry) {
        Join::Leader(leader) => {
            Stats::bump(&stats.misses);
            Lookup::Miss(ticket(leader, scope))
        }
        Join::Follower(flight) => match flight.head(FLIGHT_WAIT).await {
            Some(head) => {
                Stats::bump(&stats.hits);
                Stats::bump(&stats.followed);
                Lookup::Hit(Hit::Followed {
                    body: FollowerBody::new(flight),
                    head,
                    key,
                })
            }
            // The leader's answer will not be shared (or is slow): fetch
            // our own, and still store it.
            None => {
                Stats::bump(&stats.misses);
                Lookup::Miss(ticket(Leader::solo(key, max_entry), scope))
            }
        },
    }
}

/// A response from the cache.
pub enum Hit {
    /// A stored entry.
    Stored { item: Arc<Item>, key: Key },
    /// A concurrent identical request's response, streamed as it arrives.
    Followed {
        head: Head,
        body: FollowerBody,
        key: Key,
    },
}

/// Called once when a replayed response has ended: with its status, or
/// `None` when it broke off.
pub type OnEnd = Box<dyn FnOnce(Option<u16>) + Send>;

impl Hit {
    /// The usage the stored answer reported (what the provider would bill
    /// again without the cache), when this hit is a stored entry.
    pub fn stored_usage(
        &self,
        family: crate::llm::family::Family,
    ) -> Option<crate::llm::tap::TapResult> {
        let Hit::Stored { item, .. } = self else {
            return None;
        };
        let tap = match &item.entry.body {
            Stored::Whole(b) => {
                let mut tap = crate::llm::tap::UsageTap::json(family);
                tap.feed(b);
                tap
            }
            Stored::Frames(frames) => {
                let mut tap = crate::llm::tap::UsageTap::stream(family);
                for f in frames {
                    tap.feed(f);
                }
                tap
            }
        };
        Some(tap.finish())
    }

    /// The response to send. `on_end` runs when it has been sent (at once
    /// for a stored entry, which cannot fail).
    pub fn respond(self, on_end: OnEnd) -> Response<Body> {
        match self {
            Hit::Stored { item, key } => {
                let entry = &item.entry;
                let status = entry.status;
                let mut headers = entry.headers.clone();
                let body = match &entry.body {
                    Stored::Whole(b) => {
                        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(b.len()));
                        body::full(b.clone())
                    }
                    Stored::Frames(_) => body::boxed(Replay {
                        item: item.clone(),
                        next: 0,
                    }),
                };
                let age = now_ms().saturating_sub(entry.created_ms) / 1000;
                headers.insert(header::AGE, HeaderValue::from(age));
                let resp = build(status, headers, body, "hit", Some(&key));
                on_end(Some(status));
                resp
            }
            Hit::Followed { head, body, key } => {
                let status = head.status;
                let body = body::boxed(Ending {
                    inner: body,
                    on_end: Some(on_end),
                    status,
                });
                build(status, head.headers, body, "hit", Some(&key))
            }
        }
    }
}

fn build(
    status: u16,
    mut headers: HeaderMap,
    body: Body,
    verdict: &'static str,
    key: Option<&Key>,
) -> Response<Body> {
    headers.insert(X_KT_CACHE, HeaderValue::from_static(verdict));
    if let Some(k) = key {
        if let Ok(v) = HeaderValue::from_str(&k.short()) {
            headers.insert(X_KT_CACHE_KEY, v);
        }
    }
    let mut resp = Response::new(body);
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    *resp.headers_mut() = headers;
    resp
}

/// Marks a response kt sent without consulting the cache.
pub fn mark_bypass(resp: &mut Response<Body>, reason: &'static str) {
    let h = resp.headers_mut();
    h.insert(X_KT_CACHE, HeaderValue::from_static("bypass"));
    h.insert(X_KT_CACHE_REASON, HeaderValue::from_static(reason));
}

/// A stored stream, one HTTP frame per stored frame.
struct Replay {
    item: Arc<Item>,
    next: usize,
}

impl Replay {
    fn frames(&self) -> &[Bytes] {
        match &self.item.entry.body {
            Stored::Frames(f) => f,
            Stored::Whole(_) => &[],
        }
    }
}

impl HttpBody for Replay {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = self.frames().get(self.next).cloned();
        self.next += 1;
        Poll::Ready(frame.map(|f| Ok(Frame::data(f))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.frames().len()
    }

    fn size_hint(&self) -> SizeHint {
        let left: usize = self.frames().iter().skip(self.next).map(Bytes::len).sum();
        SizeHint::with_exact(left as u64)
    }
}

/// A body that reports its end (or breakage) once.
struct Ending<B> {
    inner: B,
    on_end: Option<OnEnd>,
    status: u16,
}

impl<B> Ending<B> {
    fn end(&mut self, ok: bool) {
        if let Some(f) = self.on_end.take() {
            f(ok.then_some(self.status));
        }
    }
}

impl<B> HttpBody for Ending<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.end(true),
            Poll::Ready(Some(Err(_))) => self.end(false),
            _ => {}
        }
        polled.map(|o| o.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

impl<B> Drop for Ending<B> {
    fn drop(&mut self) {
        // A client that went away before the end.
        self.end(false);
    }
}

/// A miss (or refresh) on its way upstream: what is needed to store the
/// response.
pub struct Ticket {
    store: Arc<Store>,
    leader: Leader,
    scope: String,
    ttl: Duration,
    family: Option<Family>,
    allow_placeholder: bool,
    provider: String,
    /// The `x-kt-cache` value of the response.
    verdict: &'static str,
}

impl Ticket {
    /// Tees `resp` into the cache as it is sent, and marks it. A response
    /// that cannot be stored is passed through untouched (marked), and
    /// anyone waiting on this flight goes upstream.
    pub fn capture(self, resp: Response<Body>) -> Response<Body> {
        let (mut parts, body) = resp.into_parts();
        let key = self.leader.key();
        let stream = is_event_stream(&parts.headers);
        // Only the shapes the output policies read (JSON, SSE) are stored:
        // another answer went by unread, and sharing it could share what a
        // redaction would have caught.
        let storable = parts.status.is_success()
            && !is_encoded(&parts.headers)
            && (stream || is_json(&parts.headers))
            && (!stream || self.family.is_some_and(has_terminal_event));
        parts
            .headers
            .insert(X_KT_CACHE, HeaderValue::from_static(self.verdict));
        if let Ok(v) = HeaderValue::from_str(&key.short()) {
            parts.headers.insert(X_KT_CACHE_KEY, v);
        }
        if !storable {
            self.leader.flight.abandon();
            Stats::bump(&self.store.stats.not_stored);
            return Response::from_parts(parts, body);
        }
        let mut headers = parts.headers.clone();
        for h in [
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::DATE,
            header::AGE,
            header::SET_COOKIE,
            X_KT_CACHE,
            X_KT_CACHE_KEY,
            X_KT_CACHE_REASON,
        ] {
            headers.remove(h);
        }
        self.leader.flight.set_head(Head {
            status: parts.status.as_u16(),
            headers,
        });
        let watch = match (stream, self.family) {
            (true, Some(family)) => Some(StreamWatch {
                decoder: SseDecoder::new(),
                family,
                last_is_end: false,
                spoiled: false,
            }),
            _ => None,
        };
        let capture = Capture {
            inner: body,
            ticket: Some(self),
            watch,
        };
        Response::from_parts(parts, body::boxed(capture))
    }
}

fn has_terminal_event(family: Family) -> bool {
    matches!(
        family.stream_end(),
        StreamEnd::DoneSentinel | StreamEnd::Event(_)
    )
}

/// Follows a stream's events on a side copy, to tell a complete stream
/// from a truncated or failed one.
struct StreamWatch {
    decoder: SseDecoder,
    family: Family,
    /// The last event with data was the family's normal end.
    last_is_end: bool,
    /// An error event, an undecodable frame or a placeholder seen.
    spoiled: bool,
}

impl StreamWatch {
    fn feed(&mut self, data: &[u8], allow_placeholder: bool) {
        if self.spoiled {
            return;
        }
        self.decoder.feed(data);
        self.drain(allow_placeholder);
    }

    fn drain(&mut self, allow_placeholder: bool) {
        while let Some(next) = self.decoder.next_event() {
            match next {
                Ok(ev) => self.event(&ev, allow_placeholder),
                Err(_) => {
                    self.spoiled = true;
                    return;
                }
            }
        }
    }

    fn event(&mut self, ev: &SseEvent, allow_placeholder: bool) {
        if !ev.has_data() {
            return;
        }
        self.last_is_end = is_complete_end(self.family, ev);
        if crate::llm::stream::stream_fault(self.family, ev).is_some()
            || (!allow_placeholder && contains(ev.raw(), PLACEHOLDER))
        {
            self.spoiled = true;
        }
    }

    fn complete(&mut self, allow_placeholder: bool) -> bool {
        self.decoder.finish();
        self.drain(allow_placeholder);
        !self.spoiled && self.last_is_end
    }
}

/// The family's end event, and for the Responses API only the successful
/// one (`response.incomplete` / `response.failed` also end a stream).
fn is_complete_end(family: Family, ev: &SseEvent) -> bool {
    if !crate::llm::stream::is_stream_end(family, ev) {
        return false;
    }
    family != Family::OpenAiResponses
        || ev.event() == Some("response.completed")
        || ev
            .data()
            .is_some_and(|d| d.contains("\"response.completed\""))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// The response body on its way to the client, teed into the flight.
struct Capture {
    inner: Body,
    /// Taken when the response ends (or breaks).
    ticket: Option<Ticket>,
    watch: Option<StreamWatch>,
}

impl Capture {
    fn observe(&mut self, data: &Bytes) {
        let Some(t) = &self.ticket else { return };
        t.leader.flight.push(data);
        if let Some(w) = &mut self.watch {
            w.feed(data, t.allow_placeholder);
        }
    }

    fn end(&mut self, complete: bool) {
        let Some(mut t) = self.ticket.take() else {
            return;
        };
        let stats = t.store.stats.clone();
        if !complete {
            t.leader.flight.finish(End::Failed);
            Stats::bump(&stats.not_stored);
            return;
        }
        let stream_ok = self
            .watch
            .as_mut()
            .is_none_or(|w| w.complete(t.allow_placeholder));
        let Some((head, frames)) = t.leader.flight.finish(End::Complete) else {
            Stats::bump(&stats.not_stored);
            return;
        };
        if !stream_ok {
            Stats::bump(&stats.not_stored);
            return;
        }
        let body = if self.watch.is_some() {
            Stored::Frames(frames)
        } else {
            let whole = concat(frames);
            // A body cut short can still end cleanly (a connection closed
            // early on a response without a length), and a `200` whose
            // body is the provider's error is no answer to give again.
            let failed = serde_json::from_slice::<serde::de::IgnoredAny>(&whole).is_err()
                || crate::llm::stream::response_fault(&whole).is_some();
            if failed || (!t.allow_placeholder && contains(&whole, PLACEHOLDER)) {
                Stats::bump(&stats.not_stored);
                return;
            }
            Stored::Whole(whole)
        };
        let entry = Entry {
            status: head.status,
            headers: head.headers,
            body,
            scope: std::mem::take(&mut t.scope),
            provider: std::mem::take(&mut t.provider),
            created_ms: now_ms(),
            ttl: t.ttl,
        };
        let key = t.leader.key();
        let shared = t.store.redis.as_ref().map(|_| entry.encode());
        let scope = entry.scope.clone();
        t.store.memory.insert(key, entry, t.store.memory_ttl(t.ttl));
        Stats::bump(&stats.stores);
        // In the store now: later requests hit it instead of the flight.
        t.leader.release();
        if let Some(encoded) = shared {
            let store = t.store.clone();
            let ttl = t.ttl;
            tokio::spawn(async move {
                if let Some(redis) = &store.redis {
                    redis.set(&scope, &key, encoded, ttl).await;
                }
            });
        }
    }
}

fn concat(frames: Vec<Bytes>) -> Bytes {
    if frames.len() == 1 {
        return frames.into_iter().next().unwrap_or_default();
    }
    let mut out = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
    for f in frames {
        out.extend_from_slice(&f);
    }
    out.freeze()
}

impl HttpBody for Capture {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.observe(data);
                }
                // hyper stops polling a body that says it has ended.
                if self.inner.is_end_stream() {
                    self.end(true);
                }
            }
            Poll::Ready(None) => self.end(true),
            Poll::Ready(Some(Err(_))) => self.end(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let ended = self.inner.is_end_stream();
        self.end(ended);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "serve_tests.rs"]
mod tests;
