//! Forwarding an LLM exchange the policy engine selected: the request body
//! read (bounded) when an input policy needs it, the response checked on the
//! way back (a stream frame by frame, a JSON body whole and bounded), and
//! the exchange's record closed when the response ends.

use super::budget::{BodyBudget, Held};
use super::cached::Step;
use super::forward::strip_hop_by_hop;
use super::{ConnCtx, ProxyError};
use crate::body::{self, Body, BoxError};
use crate::llm::content::{is_encoded, is_event_stream, is_json};
use crate::llm::tap::UsageTap;
use crate::policy::exchange::{Exchange, Input, Output, LOGGED_BODY_MAX};
use crate::policy::stream::{Flow, OutputStream};
use crate::upstream::pool::Origin;
use crate::upstream::UpstreamError;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Longest an exchange waits for room in a full audit queue before it is
/// refused: a queue full this long means the log is not being written.
const AUDIT_ROOM_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long an HTTP/2 request that asked `Expect: 100-continue` may keep
/// its body back before kt answers `417`. hyper's HTTP/2 server cannot send
/// a `100` (hyper#2743): clients that wait about a second and then send
/// (curl, Go, .NET) still pass, and one that waits for it with no limit of
/// its own (the JDK's) gets an answer naming why instead of waiting out the
/// body-read limit.
const EXPECT_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// [`EXPECT_GRACE`] when the request is HTTP/2 and asks for a `100`; over
/// HTTP/1.1 hyper sends the `100` itself when the body is first read.
pub(super) fn expect_grace(parts: &http::request::Parts) -> Option<std::time::Duration> {
    // The version first: most requests are spared the header lookup.
    let expects = parts.version == http::Version::HTTP_2
        && parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    expects.then_some(EXPECT_GRACE)
}

/// The body's first frame, awaited at most `grace` (see [`expect_grace`]):
/// a body held back longer is refused as [`ProxyError::ExpectationFailed`].
pub(super) async fn first_frame_within(
    incoming: &mut Incoming,
    grace: std::time::Duration,
) -> Result<Option<Result<Frame<Bytes>, hyper::Error>>, ProxyError> {
    tokio::time::timeout(grace, incoming.frame())
        .await
        .map_err(|_| ProxyError::ExpectationFailed {
            secs: grace.as_secs(),
        })
}

pub(super) async fn forward(
    ctx: &ConnCtx,
    origin: &Origin,
    req: Request<Incoming>,
    exchange: Box<Exchange>,
) -> Result<Response<Body>, ProxyError> {
    let limits = &ctx.gw.limits;
    let (mut parts, incoming) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    // The request is read whole (bounded) even when no policy changes it:
    // its model prices the exchange and its prompt sizes an estimate. LLM
    // requests are small and sent at once, so this costs no latency.
    let bytes = match read_body(
        incoming,
        limits.max_inspected_body,
        limits.body_read,
        ctx.gw.bodies(),
        expect_grace(&parts),
    )
    .await
    {
        Ok(bytes) => bytes,
        Err(e) => {
            record_body_failure(exchange, &e);
            return Err(e);
        }
    };
    forward_read(ctx, origin, parts, bytes, exchange).await
}

/// The `503` for an exchange the audit log cannot record, with `why`.
pub(super) fn refuse_unrecorded(mut exchange: Box<Exchange>, why: &str) -> Response<Body> {
    let resp = crate::policy::respond::gateway_error(
        exchange.info.api,
        http::StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
        &format!("{why}, so kt refuses requests it cannot record"),
    );
    exchange.complete(Some(resp.status().as_u16()));
    resp
}

/// Closes the record of an exchange whose request body never arrived whole:
/// left to the drop, it would read as a client that went away after its
/// request, with no status.
fn record_body_failure(mut exchange: Box<Exchange>, e: &ProxyError) {
    match e {
        // The connection failed mid-body: nobody gets the status.
        ProxyError::ClientBody(_) => {
            exchange.record.error = Some(format!(
                "{}: the client went away before the request body ended ({e})",
                e.kind()
            ));
            exchange.complete(None);
        }
        _ => {
            exchange.record.error = Some(format!("{}: {e}", e.kind()));
            exchange.complete(Some(e.status().as_u16()));
        }
    }
}

/// kt's answer when the upstream's JSON answer could not be read whole for
/// the output policies (too large, too slow, broken off): nothing of it
/// has reached the client, and none of it is the client's fault.
fn unread_answer(mut exchange: Box<Exchange>, e: ProxyError) -> Response<Body> {
    let (status, kind, detail) = match &e {
        ProxyError::BodyTooLarge { limit } => (
            http::StatusCode::BAD_GATEWAY,
            "upstream_too_large",
            format!("the upstream's answer is over {limit} bytes, the most kt reads for its output policies"),
        ),
        ProxyError::BodyTimeout { secs } => (
            http::StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!("the upstream's answer did not arrive whole within {secs} s"),
        ),
        // kt's own memory for bodies is taken: nothing the upstream did.
        ProxyError::BodiesBusy { .. } => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            "bodies_busy",
            format!("kt cannot hold the upstream's answer for its output policies now ({e}); retry"),
        ),
        // `read_body` names a failing body the client's; here it is the upstream's.
        ProxyError::ClientBody(cause) => (
            http::StatusCode::BAD_GATEWAY,
            "upstream_stream",
            format!("the upstream's answer broke off ({cause})"),
        ),
        other => (
            http::StatusCode::BAD_GATEWAY,
            "upstream_stream",
            format!("the upstream's answer broke off ({other})"),
        ),
    };
    let why = format!("{kind}: {detail}");
    let mut resp =
        crate::policy::respond::gateway_error(exchange.info.api, status, "upstream_error", &why);
    resp.headers_mut()
        .insert("x-kt-error", HeaderValue::from_static(kind));
    exchange.record.error = Some(why);
    exchange.complete(Some(status.as_u16()));
    resp
}

/// The record's note for a response stream the upstream broke off.
fn stream_failure(e: &dyn std::fmt::Display) -> String {
    format!("upstream_stream: the upstream response ended with an error ({e})")
}

/// [`forward`] once the request body is in hand (the direct API reads it
/// first, to route by its model).
pub(super) async fn forward_read(
    ctx: &ConnCtx,
    origin: &Origin,
    mut parts: http::request::Parts,
    bytes: Bytes,
    mut exchange: Box<Exchange>,
) -> Result<Response<Body>, ProxyError> {
    // No audit, no traffic: a writer that falls behind slows new
    // exchanges, and one that stopped (a failing disk) turns them away.
    if !exchange.audit_room(AUDIT_ROOM_WAIT).await {
        exchange.record.error = Some("audit_unavailable: the audit log's queue stayed full".into());
        let why = format!(
            "the audit log's queue has been full for {} s (see kt_events_write_errors_total)",
            AUDIT_ROOM_WAIT.as_secs()
        );
        return Ok(refuse_unrecorded(exchange, &why));
    }
    if exchange.unrecordable() {
        return Ok(refuse_unrecorded(
            exchange,
            "the audit log is not accepting events and the audit-logger is immutable",
        ));
    }
    let inspect_response = exchange.needs_response_body();
    // The response is read (by policies, or for its usage): ask for it
    // uncompressed. LLM answers are small text; the audit trail needs them.
    parts.headers.remove(header::ACCEPT_ENCODING);
    // Boxed, and only when limits apply: a shared backend's round trip
    // would otherwise enlarge every request's future.
    if exchange.is_limited() {
        if let Some(resp) = Box::pin(exchange.admit(&bytes)).await {
            exchange.complete(Some(resp.status().as_u16()));
            return Ok(resp);
        }
    }
    let mut pending = None;
    let body = match exchange.input(bytes) {
        Input::Respond(resp) => {
            exchange.complete(Some(resp.status().as_u16()));
            return Ok(resp);
        }
        Input::Forward(bytes) => {
            // The cache keys what the upstream would see. Boxed, and only
            // when a cache policy applies: its lookup (a shared-store round
            // trip) would otherwise enlarge every request's future, which
            // hyper moves per request.
            let step = if exchange.cache_options().is_some() {
                Box::pin(super::cached::lookup(
                    ctx,
                    origin,
                    &mut exchange,
                    &parts,
                    &bytes,
                ))
                .await
            } else {
                None
            };
            match step {
                Some(Step::Answer(hit)) => return Ok(super::cached::answer(hit, exchange)),
                Some(Step::Forward(p)) => pending = Some(p),
                None => {}
            }
            set_length(&mut parts.headers, bytes.len());
            body::full(bytes)
        }
    };
    let resp = upstream_leg(ctx, origin, parts, body, exchange, inspect_response).await?;
    Ok(match pending {
        Some(p) => p.finish(resp),
        None => resp,
    })
}

/// Sends the request upstream and runs the response through the output
/// policies; the exchange closes when the response ends.
async fn upstream_leg(
    ctx: &ConnCtx,
    origin: &Origin,
    parts: http::request::Parts,
    body: Body,
    mut exchange: Box<Exchange>,
    inspect_response: bool,
) -> Result<Response<Body>, ProxyError> {
    let limits = &ctx.gw.limits;
    let sent = std::time::Instant::now();
    let send = ctx
        .gw
        .upstream
        .send(origin, Request::from_parts(parts, body));
    let resp = match record_input_once_sent(send, &mut exchange).await {
        Ok(resp) if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS => {
            exchange.record.upstream_us = Some(sent.elapsed().as_micros() as u64);
            resp
        }
        sent => {
            let e = match sent {
                Err(e) => ProxyError::from(e),
                Ok(_) => UpstreamError::unasked_upgrade(origin).into(),
            };
            exchange.record.error = Some(format!("{}: {e}", e.kind()));
            exchange.complete(Some(e.status().as_u16()));
            return Err(e);
        }
    };
    let (mut parts, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let status = parts.status.as_u16();
    let watch = Watch::new(&exchange, &parts.headers, status);

    // The answer's shape (event stream, JSON), looked at only when the
    // output policies read it.
    let shape =
        inspect_response.then(|| (is_event_stream(&parts.headers), is_json(&parts.headers)));
    let unread = match shape {
        None => None,
        Some(_) if incoming.is_end_stream() => None,
        Some(_) if is_encoded(&parts.headers) => Some((
            "encoded",
            "it is compressed although kt asked for it uncompressed",
        )),
        Some((false, false)) => Some(("content_type", "it is neither JSON nor an event stream")),
        Some(_) => None,
    };
    if let Some((why, what)) = unread {
        if let Some(resp) = exchange.output_unreadable(why, what, parts.status) {
            exchange.complete(Some(resp.status().as_u16()));
            return Ok(resp);
        }
    } else if let Some((true, _)) = shape {
        if let Some(stream) = exchange.output_stream() {
            parts.headers.remove(header::CONTENT_LENGTH);
            exchange.record.head_us = Some(exchange.elapsed_us());
            let body = PolicedStream {
                inner: incoming,
                stream,
                exchange,
                watch,
                status,
                queue: VecDeque::new(),
                done: false,
            };
            return Ok(Response::from_parts(parts, body::boxed(body)));
        }
    } else if let Some((_, true)) = shape {
        let read = read_body(
            incoming,
            limits.max_inspected_body,
            limits.body_read,
            ctx.gw.bodies(),
            None,
        )
        .await;
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(e) => return Ok(unread_answer(exchange, e)),
        };
        let mut watch = watch;
        watch.upstream(&bytes);
        let out = exchange.output(bytes);
        exchange.record.head_us = Some(exchange.elapsed_us());
        return Ok(match out {
            Output::Respond(resp) => {
                watch.close(&mut exchange);
                exchange.complete(Some(resp.status().as_u16()));
                resp
            }
            Output::Forward(bytes) => {
                set_length(&mut parts.headers, bytes.len());
                watch.client(&mut exchange, &bytes);
                watch.close(&mut exchange);
                exchange.complete(Some(status));
                Response::from_parts(parts, body::full(bytes))
            }
        });
    }
    exchange.record.head_us = Some(exchange.elapsed_us());
    let body = Completing {
        inner: incoming,
        open: Some((exchange, watch)),
        status,
        later: ctx.shutdown.deferrer(),
    };
    Ok(Response::from_parts(parts, body::boxed(body)))
}

/// Awaits `send`, queuing the request's audit event once the request is on
/// its way: after `send` first waits (a pooled connection has the request
/// then) and the runtime has run once more, so the connection's task
/// writes the request before the event is built.
async fn record_input_once_sent<F: std::future::Future>(
    send: F,
    exchange: &mut Exchange,
) -> F::Output {
    let mut send = std::pin::pin!(send);
    let first = std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
        std::task::Poll::Ready(out) => std::task::Poll::Ready(Some(out)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await;
    if let Some(out) = first {
        return out;
    }
    tokio::task::yield_now().await;
    exchange.record_input();
    send.await
}

/// Reads a whole body, at most `limit` bytes, within `timeout`; a body that
/// does not come whole at once holds its bytes of `budget` while it
/// arrives. With `expect_grace` (see [`expect_grace`]) a body that has not
/// started within it is refused as [`ProxyError::ExpectationFailed`].
pub(super) async fn read_body(
    mut incoming: Incoming,
    limit: usize,
    timeout: std::time::Duration,
    budget: &BodyBudget,
    expect_grace: Option<std::time::Duration>,
) -> Result<Bytes, ProxyError> {
    // Most LLM requests (and JSON answers) arrive whole, in the reads that
    // brought their head: such a body is taken as its one frame, without
    // arming a timer or gathering frames. The rest of a body still on its
    // way is read below, bounded and timed.
    if incoming.is_end_stream() {
        return Ok(Bytes::new());
    }
    // A declared length over the limit is refused before any of it comes.
    if incoming.size_hint().lower() > limit as u64 {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let ready = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut incoming).poll_frame(cx)));
    let first = match (ready.await, expect_grace) {
        (Poll::Ready(first), _) => Some(first),
        (Poll::Pending, None) => None,
        (Poll::Pending, Some(grace)) => Some(first_frame_within(&mut incoming, grace).await?),
    };
    let head = match first {
        None => Bytes::new(),
        Some(None) => return Ok(Bytes::new()),
        Some(Some(Err(e))) => return Err(ProxyError::ClientBody(e.to_string())),
        Some(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) if data.len() > limit => return Err(ProxyError::BodyTooLarge { limit }),
            Ok(data) if incoming.is_end_stream() => return Ok(data),
            Ok(data) => data,
            // Trailers end a body: there was no data.
            Err(_) => return Ok(Bytes::new()),
        },
    };
    let collect = async {
        let mut held = Held::default();
        budget.take(&mut held, head.len())?;
        let mut whole = bytes::BytesMut::from(head);
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| ProxyError::ClientBody(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if whole.len() + data.len() > limit {
                return Err(ProxyError::BodyTooLarge { limit });
            }
            budget.take(&mut held, data.len())?;
            whole.extend_from_slice(&data);
        }
        Ok(whole.freeze())
    };
    tokio::time::timeout(timeout, collect)
        .await
        .unwrap_or(Err(ProxyError::BodyTimeout {
            secs: timeout.as_secs(),
        }))
}

fn set_length(headers: &mut HeaderMap, len: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    // An unchanged body keeps its one header: a new value is an allocation
    // per request for nothing.
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(len).as_bytes();
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if lengths.next().is_some_and(|v| v.as_bytes() == digits) && lengths.next().is_none() {
        return;
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

/// What the response wrappers note as the body goes by: its usage (from the
/// upstream's bytes), the first byte sent to the client, and the copy kept
/// for `log_bodies`. Never delays or changes a byte.
struct Watch {
    tap: Option<UsageTap>,
    log: Option<Vec<Bytes>>,
    logged: usize,
    first_byte: bool,
}

impl Watch {
    fn new(exchange: &Exchange, headers: &HeaderMap, status: u16) -> Watch {
        let family = exchange
            .info
            .family
            .filter(|_| (200..300).contains(&status));
        let tap = family.and_then(|f| {
            if is_encoded(headers) {
                None
            } else if is_event_stream(headers) {
                Some(UsageTap::stream(f))
            } else if is_json(headers) {
                Some(UsageTap::json(f))
            } else {
                None
            }
        });
        Watch {
            tap,
            log: exchange.logs_bodies().then(Vec::new),
            logged: 0,
            first_byte: false,
        }
    }

    /// Bytes as the upstream sent them.
    fn upstream(&mut self, data: &Bytes) {
        if let Some(tap) = &mut self.tap {
            tap.feed(data);
        }
    }

    /// Bytes on their way to the client.
    fn client(&mut self, exchange: &mut Exchange, data: &Bytes) {
        if !self.first_byte && !data.is_empty() {
            self.first_byte = true;
            exchange.record.first_byte_us = Some(exchange.elapsed_us());
        }
        if let Some(log) = &mut self.log {
            // One byte past the cap tells the record the body was cut.
            let room = (LOGGED_BODY_MAX + 1).saturating_sub(self.logged);
            if room > 0 {
                let piece = data.slice(..data.len().min(room));
                self.logged += piece.len();
                log.push(piece);
            }
        }
    }

    /// Hands what was learnt to the exchange's record. An error the
    /// provider reported in its answer's body (after a `200`) makes the
    /// exchange an error, unless kt already noted one of its own.
    fn close(&mut self, exchange: &mut Exchange) {
        if let Some(tap) = self.tap.take() {
            let learnt = tap.finish();
            if exchange.record.error.is_none() {
                exchange.record.error.clone_from(&learnt.error);
            }
            exchange.record.tap = Some(learnt);
        }
        if let Some(log) = self.log.take() {
            exchange.record.response_body = Some(Bytes::from(log.concat()));
        }
    }
}

/// A response body passed through untouched that closes the exchange's
/// record when it ends (or is dropped). The closing (usage, events, metrics)
/// is deferred: hyper sees the end before it writes the last bytes.
struct Completing {
    inner: Incoming,
    /// The exchange and what is noted for it, until it is closed.
    open: Option<(Box<Exchange>, Watch)>,
    status: u16,
    later: crate::shutdown::Deferrer,
}

impl Completing {
    fn close(&mut self, status: Option<u16>, error: Option<String>) {
        if let Some((mut ex, mut watch)) = self.open.take() {
            self.later.run(move || {
                if error.is_some() {
                    ex.record.error = error;
                }
                watch.close(&mut ex);
                ex.complete(status);
            });
        }
    }
}

impl HttpBody for Completing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some((ex, watch))) = (frame.data_ref(), this.open.as_mut()) {
                    watch.upstream(data);
                    watch.client(ex, data);
                }
            }
            Poll::Ready(None) => this.close(Some(this.status), None),
            Poll::Ready(Some(Err(e))) => this.close(Some(this.status), Some(stream_failure(e))),
            Poll::Pending => {}
        }
        polled.map(|o| o.map(|r| r.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Completing {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended, and then drops
        // it: that is a complete response, not a client that went away.
        let status = self.inner.is_end_stream().then_some(self.status);
        self.close(status, None);
    }
}

/// A streamed response going through the output-phase policies.
struct PolicedStream {
    inner: Incoming,
    stream: OutputStream,
    exchange: Box<Exchange>,
    watch: Watch,
    status: u16,
    queue: VecDeque<Bytes>,
    done: bool,
}

impl PolicedStream {
    fn close(&mut self) {
        self.done = true;
        let notes = self.stream.take_notes();
        self.exchange.absorb_stream_notes(notes);
        self.watch.close(&mut self.exchange);
        self.exchange.complete(Some(self.status));
    }
}

impl HttpBody for PolicedStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(frame) = this.queue.pop_front() {
                this.watch.client(&mut this.exchange, &frame);
                return Poll::Ready(Some(Ok(Frame::data(frame))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            let mut out = Vec::new();
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.watch.upstream(&data);
                        if this.stream.push(&data, &mut out) == Flow::Stop {
                            this.close();
                        }
                    }
                    // Trailers pass through as they are.
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Poll::Ready(None) => {
                    this.stream.finish(&mut out);
                    this.close();
                }
                Poll::Ready(Some(Err(e))) => {
                    this.exchange.record.error = Some(stream_failure(&e));
                    this.close();
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            this.queue.extend(out);
        }
    }
}

impl Drop for PolicedStream {
    fn drop(&mut self) {
        // A client that went away mid-stream: keep what was learnt (the
        // provider may still bill the tokens it sent), and what the
        // policies did to the part it was sent.
        if !self.done {
            let notes = self.stream.take_notes();
            self.exchange.absorb_stream_notes(notes);
            self.watch.close(&mut self.exchange);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{expect_grace, set_length, EXPECT_GRACE};
    use http::{header, HeaderMap, HeaderValue};

    #[test]
    fn only_http2_requests_asking_for_a_100_get_the_grace() {
        let parts = |version, expect: Option<&str>| {
            let mut b = http::Request::post("https://api.openai.com/v1/x").version(version);
            if let Some(e) = expect {
                b = b.header(header::EXPECT, e);
            }
            b.body(()).unwrap().into_parts().0
        };
        let h2 = http::Version::HTTP_2;
        assert_eq!(
            expect_grace(&parts(h2, Some("100-Continue"))),
            Some(EXPECT_GRACE)
        );
        assert_eq!(expect_grace(&parts(h2, None)), None);
        assert_eq!(expect_grace(&parts(h2, Some("something-else"))), None);
        // hyper answers the 100 itself on HTTP/1.1.
        let h1 = http::Version::HTTP_11;
        assert_eq!(expect_grace(&parts(h1, Some("100-continue"))), None);
    }

    fn lengths(h: &HeaderMap) -> Vec<&str> {
        h.get_all(header::CONTENT_LENGTH)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    #[test]
    fn set_length_keeps_a_matching_header_and_replaces_any_other() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        set_length(&mut h, 12);
        assert_eq!(lengths(&h), ["12"]);
        set_length(&mut h, 7);
        assert_eq!(lengths(&h), ["7"]);

        h.append(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
        set_length(&mut h, 7);
        assert_eq!(lengths(&h), ["7"], "duplicates collapse to one");

        let mut h = HeaderMap::new();
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        set_length(&mut h, 0);
        assert_eq!(lengths(&h), ["0"]);
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
    }
}
