//! Forwarding an LLM exchange the policy engine selected: the request body
//! read (bounded) when an input policy needs it, the response checked on the
//! way back (a stream frame by frame, a JSON body whole and bounded), and
//! the exchange's record closed when the response ends.

use super::cached::Step;
use super::forward::strip_hop_by_hop;
use super::{ConnCtx, ProxyError};
use crate::body::{self, Body, BoxError};
use crate::policy::exchange::{Exchange, Input, Output};
use crate::policy::stream::{Flow, OutputStream};
use crate::upstream::pool::Origin;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

pub(super) async fn forward(
    ctx: &ConnCtx,
    origin: &Origin,
    req: Request<Incoming>,
    mut exchange: Exchange,
) -> Result<Response<Body>, ProxyError> {
    let limits = &ctx.gw.limits;
    let (mut parts, incoming) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let inspect_response = exchange.needs_response_body();
    let caching = exchange.cache_options().is_some();
    if inspect_response || caching {
        // The response is read by policies (or stored for clients that may
        // not accept the same encodings): ask for it uncompressed.
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    let mut pending = None;
    let body = if exchange.needs_request_body() || caching {
        let bytes = read_body(incoming, limits.max_inspected_body, limits.body_read).await?;
        match exchange.input(bytes) {
            Input::Respond(resp) => {
                exchange.complete(Some(resp.status().as_u16()));
                return Ok(resp);
            }
            Input::Forward(bytes) => {
                // The cache keys what the upstream would see.
                match super::cached::lookup(ctx, &mut exchange, &parts, &bytes).await {
                    Some(Step::Answer(hit)) => return Ok(super::cached::answer(hit, exchange)),
                    Some(Step::Forward(p)) => pending = Some(p),
                    None => {}
                }
                set_length(&mut parts.headers, bytes.len());
                body::full(bytes)
            }
        }
    } else {
        body::boxed(incoming)
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
    mut exchange: Exchange,
    inspect_response: bool,
) -> Result<Response<Body>, ProxyError> {
    let limits = &ctx.gw.limits;
    let sent = std::time::Instant::now();
    let resp = match ctx
        .gw
        .upstream
        .send(origin, Request::from_parts(parts, body))
        .await
    {
        Ok(resp) => {
            exchange.record.upstream_ms = Some(sent.elapsed().as_millis() as u64);
            resp
        }
        Err(e) => {
            let e = ProxyError::from(e);
            exchange.record.error = Some(format!("{}: {e}", e.kind()));
            exchange.complete(Some(e.status().as_u16()));
            return Err(e);
        }
    };
    let (mut parts, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let status = parts.status.as_u16();

    if inspect_response && is_event_stream(&parts.headers) {
        if let Some(stream) = exchange.output_stream() {
            parts.headers.remove(header::CONTENT_LENGTH);
            let body = PolicedStream {
                inner: incoming,
                stream,
                exchange,
                status,
                queue: VecDeque::new(),
                done: false,
            };
            return Ok(Response::from_parts(parts, body::boxed(body)));
        }
    } else if inspect_response && is_json(&parts.headers) && !is_encoded(&parts.headers) {
        let bytes = read_body(incoming, limits.max_inspected_body, limits.body_read)
            .await
            .map_err(|e| match e {
                // Oversized answers are not the client's fault.
                ProxyError::BodyTooLarge { .. } => ProxyError::BadRequest(
                    "upstream response too large for kt's output policies".into(),
                ),
                other => other,
            })?;
        return Ok(match exchange.output(bytes) {
            Output::Respond(resp) => {
                exchange.complete(Some(resp.status().as_u16()));
                resp
            }
            Output::Forward(bytes) => {
                set_length(&mut parts.headers, bytes.len());
                exchange.complete(Some(status));
                Response::from_parts(parts, body::full(bytes))
            }
        });
    }
    let body = Completing {
        inner: incoming,
        exchange: Some(exchange),
        status,
    };
    Ok(Response::from_parts(parts, body::boxed(body)))
}

/// Reads a whole body, at most `limit` bytes, within `timeout`.
async fn read_body(
    incoming: Incoming,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ProxyError> {
    let collect = Limited::new(incoming, limit).collect();
    match tokio::time::timeout(timeout, collect).await {
        Err(_) => Err(ProxyError::BodyTimeout {
            secs: timeout.as_secs(),
        }),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Ok(Err(e)) => Err(ProxyError::ClientBody(e.to_string())),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

fn set_length(headers: &mut HeaderMap, len: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

fn content_type_is(headers: &HeaderMap, prefix: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.get(..prefix.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        })
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    content_type_is(headers, "text/event-stream")
}

fn is_json(headers: &HeaderMap) -> bool {
    content_type_is(headers, "application/json")
}

fn is_encoded(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// A response body passed through untouched that closes the exchange's
/// record when it ends (or is dropped).
struct Completing {
    inner: Incoming,
    exchange: Option<Exchange>,
    status: u16,
}

impl HttpBody for Completing {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = &polled {
            let status = self.status;
            if let Some(mut ex) = self.exchange.take() {
                ex.complete(Some(status));
            }
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
        if let Some(mut ex) = self.exchange.take() {
            let status = self.inner.is_end_stream().then_some(self.status);
            ex.complete(status);
        }
    }
}

/// A streamed response going through the output-phase policies.
struct PolicedStream {
    inner: Incoming,
    stream: OutputStream,
    exchange: Exchange,
    status: u16,
    queue: VecDeque<Bytes>,
    done: bool,
}

impl PolicedStream {
    fn close(&mut self) {
        self.done = true;
        let notes = std::mem::take(&mut self.stream.notes);
        self.exchange.absorb_stream_notes(notes);
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
                    this.close();
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            this.queue.extend(out);
        }
    }
}
