//! A local origin server (HTTPS with the test CA, or plain HTTP) with the
//! routes the tests need: echo, large bodies, gated SSE, WebSocket echo.

use super::TestCa;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    H1,
    H2,
    Both,
}

pub struct Origin {
    pub addr: SocketAddr,
    /// Requests served.
    pub hits: Arc<AtomicUsize>,
    /// TCP connections accepted.
    pub conns: Arc<AtomicUsize>,
    /// Requests whose client (the gateway) went away early: a request body
    /// that failed mid-way, or a streamed response nobody reads any more.
    pub aborted: Arc<AtomicUsize>,
    /// Bytes `/large/N` has handed to hyper so far (backpressure shows as
    /// this number stalling).
    pub large_sent: Arc<AtomicUsize>,
    /// Each permit releases one more SSE event after the first.
    pub sse_gate: Arc<Semaphore>,
    /// The body of the last LLM-shaped request (`/v1/...`), as received.
    pub last_body: Arc<std::sync::Mutex<Option<Bytes>>>,
    /// The path and headers of the last LLM-shaped request.
    pub last_request: Arc<std::sync::Mutex<Option<(String, http::HeaderMap)>>>,
    /// Bodies POSTed to `/report` (what a test page saw), in order.
    pub reports: Arc<std::sync::Mutex<Vec<String>>>,
    pub cert_der: Option<rustls_pki_types::CertificateDer<'static>>,
}

struct State {
    hits: Arc<AtomicUsize>,
    aborted: Arc<AtomicUsize>,
    large_sent: Arc<AtomicUsize>,
    sse_gate: Arc<Semaphore>,
    last_body: Arc<std::sync::Mutex<Option<Bytes>>>,
    last_request: Arc<std::sync::Mutex<Option<(String, http::HeaderMap)>>>,
    reports: Arc<std::sync::Mutex<Vec<String>>>,
}

/// A body fed from a channel, so the origin controls when each frame goes.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

type OriginBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> OriginBody {
    http_body_util::Full::new(b.into()).boxed_unsync()
}

impl Origin {
    /// HTTPS origin with a certificate for `names` from `ca`.
    pub async fn tls(ca: &TestCa, names: &[&str], alpn: Alpn) -> Origin {
        let (chain, key) = ca.server_cert(names);
        Self::tls_with(chain, key, alpn).await
    }

    /// HTTPS origin presenting `chain` (e.g. an expired or wrong-name
    /// certificate).
    pub async fn tls_with(
        chain: Vec<rustls_pki_types::CertificateDer<'static>>,
        key: rustls_pki_types::PrivateKeyDer<'static>,
        alpn: Alpn,
    ) -> Origin {
        let cert_der = chain[0].clone();
        let mut cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = match alpn {
            Alpn::H1 => vec![b"http/1.1".to_vec()],
            Alpn::H2 => vec![b"h2".to_vec()],
            Alpn::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let mut origin = Self::spawn(move |tcp, state| {
            let acceptor = acceptor.clone();
            async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                serve(TokioIo::new(tls), h2, state).await;
            }
        })
        .await;
        origin.cert_der = Some(cert_der);
        origin
    }

    /// Plain-HTTP origin (HTTP/1.1).
    pub async fn plain() -> Origin {
        Self::spawn(|tcp, state| async move { serve(TokioIo::new(tcp), false, state).await }).await
    }

    async fn spawn<F, Fut>(handle: F) -> Origin
    where
        F: Fn(tokio::net::TcpStream, Arc<State>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(AtomicUsize::new(0));
        let aborted = Arc::new(AtomicUsize::new(0));
        let large_sent = Arc::new(AtomicUsize::new(0));
        let sse_gate = Arc::new(Semaphore::new(0));
        let last_body = Arc::new(std::sync::Mutex::new(None));
        let last_request = Arc::new(std::sync::Mutex::new(None));
        let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
        let state = Arc::new(State {
            hits: hits.clone(),
            aborted: aborted.clone(),
            large_sent: large_sent.clone(),
            sse_gate: sse_gate.clone(),
            last_body: last_body.clone(),
            last_request: last_request.clone(),
            reports: reports.clone(),
        });
        let conns2 = conns.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                conns2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(handle(tcp, state.clone()));
            }
        });
        Origin {
            addr,
            hits,
            conns,
            aborted,
            large_sent,
            sse_gate,
            last_body,
            last_request,
            reports,
            cert_der: None,
        }
    }
}

async fn serve<IO>(io: IO, h2: bool, state: Arc<State>)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(req, state).await) }
    });
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .with_upgrades()
            .await;
    }
}

async fn route(mut req: Request<Incoming>, state: Arc<State>) -> Response<OriginBody> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/echo" => {
            let version = format!("{:?}", req.version());
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
                    )
                })
                .collect();
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    state.aborted.fetch_add(1, Ordering::SeqCst);
                    return Response::new(full(Bytes::new()));
                }
            };
            let sum: u64 = body.iter().map(|b| *b as u64).sum();
            let json = serde_json::json!({
                "method": method, "uri": uri, "version": version, "headers": headers,
                "len": body.len(), "sum": sum,
            });
            let mut r = Response::new(full(json.to_string()));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
        p if p.starts_with("/large/") => {
            let n: usize = p["/large/".len()..].parse().unwrap_or(0);
            let (tx, rx) = mpsc::channel(4);
            let (sent, aborted) = (state.large_sent.clone(), state.aborted.clone());
            tokio::spawn(async move {
                let mut left = n;
                let mut i = 0u8;
                while left > 0 {
                    let take = left.min(64 * 1024);
                    let chunk: Vec<u8> = (0..take).map(|j| i.wrapping_add(j as u8)).collect();
                    i = i.wrapping_add(1);
                    if tx.send(Bytes::from(chunk)).await.is_err() {
                        aborted.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    sent.fetch_add(take, Ordering::SeqCst);
                    left -= take;
                }
            });
            let mut r = Response::new(ChannelBody(rx).boxed_unsync());
            r.headers_mut()
                .insert("content-length", n.to_string().parse().unwrap());
            r
        }
        "/sse" => {
            let (tx, rx) = mpsc::channel(1);
            let gate = state.sse_gate.clone();
            tokio::spawn(async move {
                for i in 0..5 {
                    if i > 0 {
                        let Ok(p) = gate.acquire().await else { return };
                        p.forget();
                    }
                    let ev = format!("data: {{\"n\":{i}}}\n\n");
                    if tx.send(Bytes::from(ev)).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
            });
            let mut r = Response::new(ChannelBody(rx).boxed_unsync());
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
        // WebSocket echo; also on the LLM paths clients open WebSockets to
        // (Copilot's Responses, OpenAI's Realtime).
        p if p == "/ws"
            || (req.headers().contains_key("upgrade")
                && (p == "/responses" || p == "/v1/realtime")) =>
        {
            // `?frames`: a WebSocket peer a browser accepts (the accept
            // hash, unmasked text frames answering `echo: ` + each text
            // frame); otherwise the raw bytes come back as they are.
            let framed = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "frames"));
            let accept = req
                .headers()
                .get("sec-websocket-key")
                .map(|key| websocket_accept(key.as_bytes()));
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(up) = on.await else { return };
                let mut io = TokioIo::new(up);
                if framed {
                    let _ = echo_frames(io).await;
                    return;
                }
                let mut buf = [0u8; 4096];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            if let Some(accept) = accept {
                r.headers_mut()
                    .insert("sec-websocket-accept", accept.parse().unwrap());
            }
            r
        }
        // LLM-shaped routes. The reply text comes from the `x-test-reply`
        // header (never inspected by policies); with `"stream":true` it is
        // sent as SSE chunks of `x-test-chunk` characters. `x-test-status`
        // sets the status, `x-test-no-end` leaves out the stream's terminal
        // event, and `x-test-gated` holds each event after the first until
        // `sse_gate` gives a permit. `x-test-tool-call` makes the reply the
        // arguments of a tool call (a JSON string; an object in Anthropic's
        // whole answer), streamed as argument deltas.
        // A provider's own model list (OpenAI and Anthropic shape alike).
        p if p.ends_with("/models") => {
            *state.last_request.lock().unwrap() = Some((p.to_string(), req.headers().clone()));
            let json = serde_json::json!({"object": "list", "data": [
                {"id": "gpt-4.1", "object": "model"},
                {"id": "claude-sonnet-4-5", "type": "model"},
                {"id": "qwen3-coder", "object": "model"}]});
            let mut r = Response::new(full(json.to_string()));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
        // Other OpenAI-shaped operations (under any base path): a small
        // answer naming the path, with usage.
        p if ["/completions", "/embeddings", "/responses"]
            .iter()
            .any(|s| p.ends_with(s))
            && !p.ends_with("/chat/completions") =>
        {
            *state.last_request.lock().unwrap() = Some((p.to_string(), req.headers().clone()));
            let reply = req
                .headers()
                .get("x-test-reply")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let streamed = serde_json::from_slice::<serde_json::Value>(&body)
                .is_ok_and(|v| v["stream"] == true);
            *state.last_body.lock().unwrap() = Some(body);
            // A streamed Responses answer: `x-test-reply` in deltas of 5
            // characters, then the events that repeat it whole.
            if let (true, true, Some(reply)) = (streamed, p.ends_with("/responses"), reply) {
                let mut r = Response::new(full(responses_stream(&reply)));
                r.headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                return r;
            }
            let json = serde_json::json!({"object": "test", "path": p,
                "choices": [{"index": 0, "text": "ok"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}});
            let mut r = Response::new(full(json.to_string()));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            r
        }
        // Gemini's streamed generation: a text part and a function call
        // whose `args` is the JSON object in `x-test-reply`, then the end.
        // As Gemini does, SSE with `alt=sse`, else one JSON array of the
        // same chunks.
        p if p.ends_with(":streamGenerateContent") => {
            let sse = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse"));
            *state.last_request.lock().unwrap() = Some((p.to_string(), req.headers().clone()));
            let args: serde_json::Value = req
                .headers()
                .get("x-test-reply")
                .and_then(|v| serde_json::from_slice(v.as_bytes()).ok())
                .unwrap_or_default();
            let call = serde_json::json!({"candidates": [{"content": {"role": "model", "parts": [
                {"text": "Calling the tool."},
                {"functionCall": {"name": "deploy", "args": args}}]}}]});
            let end = serde_json::json!({"candidates": [{"content": {"role": "model",
                "parts": [{"text": "Done."}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 7}});
            if !sse {
                let mut r = Response::new(full(format!("[{call},\r\n{end}]")));
                r.headers_mut()
                    .insert("content-type", "application/json".parse().unwrap());
                return r;
            }
            let mut r = Response::new(full(format!("data: {call}\r\n\r\ndata: {end}\r\n\r\n")));
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
        p if p.ends_with("/chat/completions") || p == "/v1/messages" => {
            let anthropic = path == "/v1/messages";
            *state.last_request.lock().unwrap() = Some((p.to_string(), req.headers().clone()));
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let reply = header("x-test-reply").unwrap_or_else(|| "hello".into());
            // `x-test-usage: IN,OUT` makes the answer report usage.
            let usage: Option<(u64, u64)> = header("x-test-usage").and_then(|u| {
                let (i, o) = u.split_once(',')?;
                Some((i.trim().parse().ok()?, o.trim().parse().ok()?))
            });
            let chunk: usize = header("x-test-chunk")
                .and_then(|c| c.parse().ok())
                .unwrap_or(4);
            let status = header("x-test-status")
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::OK);
            let no_end = header("x-test-no-end").is_some();
            let tool_call = header("x-test-tool-call").is_some();
            let gate = header("x-test-gated").map(|_| state.sse_gate.clone());
            let raw = header("x-test-raw");
            // `x-test-content-type` / `x-test-encoding`: the answer's labels
            // (the body is the same JSON), for answers policies cannot read.
            let content_type =
                header("x-test-content-type").unwrap_or_else(|| "application/json".into());
            let encoding = header("x-test-encoding");
            // `x-test-hang`: never answer (a provider that thinks forever).
            if header("x-test-hang").is_some() {
                std::future::pending::<()>().await;
            }
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    state.aborted.fetch_add(1, Ordering::SeqCst);
                    return Response::new(full(Bytes::new()));
                }
            };
            if let Some(kind) = raw {
                return raw_stream(&kind);
            }
            *state.last_body.lock().unwrap() = Some(body.clone());
            let stream = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("stream").and_then(|s| s.as_bool()))
                .unwrap_or(false);
            if !stream {
                let mut json = if tool_call && anthropic {
                    let input: serde_json::Value = serde_json::from_str(&reply).unwrap_or_default();
                    serde_json::json!({"type": "message", "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t1", "name": "write", "input": input}]})
                } else if tool_call {
                    serde_json::json!({"object": "chat.completion",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                            "tool_calls": [{"id": "call_1", "type": "function",
                                "function": {"name": "write", "arguments": reply}}]}}]})
                } else if anthropic {
                    serde_json::json!({"type": "message", "role": "assistant",
                        "content": [{"type": "text", "text": reply}]})
                } else {
                    serde_json::json!({"object": "chat.completion",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]})
                };
                if let Some((i, o)) = usage {
                    json["usage"] = if anthropic {
                        serde_json::json!({"input_tokens": i, "output_tokens": o})
                    } else {
                        serde_json::json!({"prompt_tokens": i, "completion_tokens": o})
                    };
                }
                let mut r = Response::new(full(json.to_string()));
                *r.status_mut() = status;
                r.headers_mut()
                    .insert("content-type", content_type.parse().unwrap());
                if let Some(e) = encoding {
                    r.headers_mut()
                        .insert("content-encoding", e.parse().unwrap());
                }
                return r;
            }
            let chars: Vec<char> = reply.chars().collect();
            let pieces: Vec<String> = chars
                .chunks(chunk.max(1))
                .map(|c| c.iter().collect())
                .collect();
            let (tx, rx) = mpsc::channel(64);
            let aborted = state.aborted.clone();
            tokio::spawn(async move {
                if let (Some((i, _)), true) = (usage, anthropic) {
                    let start = format!(
                        "event: message_start\ndata: {}\n\n",
                        serde_json::json!({"type": "message_start",
                            "message": {"usage": {"input_tokens": i, "output_tokens": 1}}})
                    );
                    if tx.send(Bytes::from(start)).await.is_err() {
                        return;
                    }
                }
                for (i, p) in pieces.into_iter().enumerate() {
                    if let (Some(gate), true) = (&gate, i > 0) {
                        // A reader that goes away while the stream waits
                        // is noticed at once, not at the next send.
                        tokio::select! {
                            p = gate.acquire() => match p {
                                Ok(p) => p.forget(),
                                Err(_) => return,
                            },
                            _ = tx.closed() => {
                                aborted.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                    let ev = if anthropic && tool_call {
                        format!(
                            "event: content_block_delta\ndata: {}\n\n",
                            serde_json::json!({"type": "content_block_delta", "index": 0,
                                "delta": {"type": "input_json_delta", "partial_json": p}})
                        )
                    } else if tool_call {
                        format!(
                            "data: {}\n\n",
                            serde_json::json!({"object": "chat.completion.chunk",
                                "choices": [{"index": 0, "delta": {"tool_calls": [
                                    {"index": 0, "function": {"arguments": p}}]}}]})
                        )
                    } else if anthropic {
                        format!(
                            "event: content_block_delta\ndata: {}\n\n",
                            serde_json::json!({"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": p}})
                        )
                    } else {
                        format!(
                            "data: {}\n\n",
                            serde_json::json!({"object": "chat.completion.chunk",
                                "choices": [{"index": 0, "delta": {"content": p}}]})
                        )
                    };
                    if tx.send(Bytes::from(ev)).await.is_err() {
                        return;
                    }
                }
                if let Some((i, o)) = usage {
                    let ev = if anthropic {
                        format!(
                            "event: message_delta\ndata: {}\n\n",
                            serde_json::json!({"type": "message_delta", "usage": {"output_tokens": o}})
                        )
                    } else {
                        format!(
                            "data: {}\n\n",
                            serde_json::json!({"object": "chat.completion.chunk", "choices": [],
                                "usage": {"prompt_tokens": i, "completion_tokens": o}})
                        )
                    };
                    if tx.send(Bytes::from(ev)).await.is_err() {
                        return;
                    }
                }
                let end: &'static [u8] = if anthropic {
                    b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
                } else {
                    b"data: [DONE]\n\n"
                };
                if !no_end {
                    let _ = tx.send(Bytes::from_static(end)).await;
                }
            });
            let mut r = Response::new(ChannelBody(rx).boxed_unsync());
            *r.status_mut() = status;
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
        // A page of this origin that makes two streamed chat requests from
        // the browser (`fetch`, same origin), the first with the `prompt`
        // and `reply` of its query string, the second with `blocked`, and
        // reports what came back, as JSON, to `/report`.
        "/chat.html" => {
            let mut r = Response::new(full(CHAT_PAGE));
            r.headers_mut()
                .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
            r
        }
        "/report" => {
            if let Ok(body) = req.into_body().collect().await {
                let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
                state.reports.lock().unwrap().push(text);
            }
            Response::new(full(Bytes::new()))
        }
        // A page that opens a WebSocket to `?to=PATH` on this origin
        // (framed), sends one text message and reports the answer, or the
        // close code, to `/report`.
        "/ws.html" => {
            let mut r = Response::new(full(WS_PAGE));
            r.headers_mut()
                .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
            r
        }
        "/hang" => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        _ => {
            let mut r = Response::new(full("not found"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    }
}

/// `x-test-raw: anthropic-overloaded`: an Anthropic stream that starts
/// (usage, some text) and then fails with an `error` event, after the 200.
pub const ANTHROPIC_OVERLOADED: &[u8] = b"event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":20,\"output_tokens\":1}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n\
event: error\n\
data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";

/// `x-test-raw: openai-error`: an OpenAI chat stream that fails with an
/// `{"error":{...}}` chunk after some text.
pub const OPENAI_STREAM_ERROR: &[u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n\
data: {\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n";

/// A Responses stream of `text`: its deltas, then the `….done` events and
/// `response.completed`, which carry the text whole.
fn responses_stream(text: &str) -> String {
    let part = serde_json::json!({"type": "output_text", "text": text, "annotations": []});
    let item = serde_json::json!({"type": "message", "id": "msg_1", "role": "assistant",
        "status": "completed", "content": [part]});
    let chars: Vec<char> = text.chars().collect();
    let mut events: Vec<serde_json::Value> = chars
        .chunks(5)
        .map(|c| {
            serde_json::json!({"type": "response.output_text.delta", "item_id": "msg_1",
                "output_index": 0, "content_index": 0, "delta": c.iter().collect::<String>()})
        })
        .collect();
    events.extend([
        serde_json::json!({"type": "response.output_text.done", "item_id": "msg_1",
            "output_index": 0, "content_index": 0, "text": text}),
        serde_json::json!({"type": "response.content_part.done", "item_id": "msg_1",
            "output_index": 0, "content_index": 0, "part": part}),
        serde_json::json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        serde_json::json!({"type": "response.completed", "response": {"id": "resp_1",
            "status": "completed", "output": [item],
            "usage": {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}}}),
    ]);
    events
        .iter()
        .map(|e| {
            format!(
                "event: {}\ndata: {e}\n\n",
                e["type"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// `x-test-raw: json-error`: a 200 JSON answer that is an error, no choices.
pub const JSON_ERROR: &[u8] = b"{\"error\":{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}";

/// The hostile event streams of `x-test-raw` (see the chat route): what a
/// broken or malicious provider might send, as `text/event-stream`; and
/// streams (and a JSON answer) failing after the 200.
fn raw_stream(kind: &str) -> Response<OriginBody> {
    let body: Vec<u8> = match kind {
        "anthropic-overloaded" => ANTHROPIC_OVERLOADED.to_vec(),
        "openai-error" => OPENAI_STREAM_ERROR.to_vec(),
        "json-error" => {
            let mut r = Response::new(full(JSON_ERROR));
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            return r;
        }
        // Events, then EOF inside an unterminated event.
        "no-terminator" => b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"ind".to_vec(),
        // One 10 MB event.
        "huge-event" => {
            let mut v = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"".to_vec();
            v.extend(std::iter::repeat_n(b'x', 10 << 20));
            v.extend_from_slice(b"\"}}]}\n\ndata: [DONE]\n\n");
            v
        }
        // Bytes that are neither UTF-8 nor SSE.
        "binary" => (0..=255u8).cycle().take(64 * 1024).collect(),
        // `data:` lines with no blank line between events.
        "no-separators" => (0..1000)
            .flat_map(|i| format!("data: {{\"n\":{i}}}\n").into_bytes())
            .collect(),
        _ => b"unknown raw kind".to_vec(),
    };
    let mut r = Response::new(full(body));
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r
}

/// `/chat.html`: streamed chat requests made by a browser's `fetch`, read
/// chunk by chunk as an IDE's webview or Electron fetch reads them.
const CHAT_PAGE: &str = r#"<!doctype html><html><body><script>
async function chat(content, headers) {
  const r = await fetch('/v1/chat/completions', {method: 'POST',
    headers: Object.assign({'content-type': 'application/json'}, headers),
    body: JSON.stringify({model: 'gpt-4o', stream: true,
      messages: [{role: 'user', content}]})});
  if (!r.ok) return {status: r.status, body: await r.text()};
  const reader = r.body.getReader(), dec = new TextDecoder();
  let buf = '', text = '';
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    buf += dec.decode(value, {stream: true});
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, i);
      buf = buf.slice(i + 2);
      for (const line of event.split('\n')) {
        if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
        for (const c of JSON.parse(line.slice(6)).choices || [])
          text += (c.delta && c.delta.content) || '';
      }
    }
  }
  return {status: r.status, text, rest: buf};
}
(async () => {
  const q = new URLSearchParams(location.search);
  const first = await chat(q.get('prompt'),
    {'x-test-reply': q.get('reply'), 'x-test-usage': '12,7'});
  const second = await chat(q.get('blocked'), {});
  return JSON.stringify({first, second});
})().catch(e => 'error: ' + e).then(text => fetch('/report', {method: 'POST', body: text}));
</script></body></html>
"#;

/// `/ws.html`: a browser's WebSocket, one message each way.
const WS_PAGE: &str = r#"<!doctype html><html><body><script>
let reported = false;
function report(text) {
  if (reported) return;
  reported = true;
  fetch('/report', {method: 'POST', body: text});
}
const to = new URLSearchParams(location.search).get('to');
const ws = new WebSocket('wss://' + location.host + to);
ws.onopen = () => ws.send('hello over kt');
ws.onmessage = (m) => { report('message: ' + m.data); ws.close(1000); };
ws.onclose = (c) => report('closed: ' + c.code);
</script></body></html>
"#;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455).
fn websocket_accept(key: &[u8]) -> String {
    use base64::Engine as _;
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes())
}

/// Answers each masked text frame from a browser with an unmasked
/// `echo: ` + its text, and a close with a close; small frames only.
async fn echo_frames<IO>(mut io: IO) -> std::io::Result<()>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let mut head = [0u8; 2];
        io.read_exact(&mut head).await?;
        let (opcode, masked, len) = (head[0] & 0x0f, head[1] & 0x80 != 0, head[1] & 0x7f);
        let len = match len {
            126 => {
                let mut ext = [0u8; 2];
                io.read_exact(&mut ext).await?;
                u16::from_be_bytes(ext) as usize
            }
            127 => return Ok(()),
            n => n as usize,
        };
        let mut mask = [0u8; 4];
        if masked {
            io.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len];
        io.read_exact(&mut payload).await?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        let reply = match opcode {
            0x1 => [b"echo: ".as_slice(), &payload].concat(),
            0x8 => {
                io.write_all(&[0x88, payload.len() as u8]).await?;
                io.write_all(&payload).await?;
                return io.flush().await;
            }
            _ => continue,
        };
        let mut frame = vec![0x81];
        match reply.len() {
            n @ 0..=125 => frame.push(n as u8),
            n => {
                frame.push(126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        frame.extend_from_slice(&reply);
        io.write_all(&frame).await?;
        io.flush().await?;
    }
}
