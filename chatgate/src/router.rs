//! Per-request plumbing: request id, CORS, the route table's dispatch
//! ([`crate::routes`]), and the one access-log line per request (written
//! when a streamed response ends, not when its headers go out). Errors are
//! logged here, once, with their cause chain, and shaped for the path:
//! OpenAI's `{"error": …}` under `/v1`, `{"detail": …}` elsewhere.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response};
use slog::{error, info, warn};

use crate::body::{Body, UpstreamTarget, UpstreamTime};
use crate::cors::preflight;
use crate::error::ApiError;
use crate::routes::{dispatch, find, is_openai_path, method_label, Matched};
use crate::App;

/// Serves one request: the service function given to hyper.
pub async fn serve(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: IpAddr,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let request_id = request_id(&app, req.headers());
    let method = req.method().clone();
    let uri = req.uri().clone();
    let origin = req.headers().get(header::ORIGIN).cloned();
    let preflight_headers = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned();
    let rid: &str = request_id.to_str().unwrap_or("-");
    let openai_shape = is_openai_path(uri.path());
    let matched = find(uri.path());
    let route = matched.as_ref().map_or("other", Matched::template);
    let method_label = method_label(&method);
    let mut limited = None;

    let result = if method == Method::OPTIONS {
        if matched.is_some() {
            Ok(preflight(preflight_headers))
        } else {
            Err(ApiError::not_found())
        }
    } else {
        // A panic in a handler is a bug: answer 500 (the cause goes to the
        // log) instead of dropping the connection.
        match CatchUnwind(Box::pin(dispatch(&app, req, matched, rid, peer))).await {
            Ok(result) => result,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                Err(ApiError::internal(format!("handler panicked: {what}")))
            }
        }
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => {
            let e = if openai_shape { e } else { e.in_seed_shape() };
            limited = e.limit_scope.map(chatcore::Quota::as_str);
            if let Some(cause) = &e.cause {
                if e.is_server_side() {
                    error!(app.log, "request failed";
                        "request_id" => rid, "status" => e.status.as_u16(), "error" => cause);
                } else {
                    warn!(app.log, "request rejected";
                        "request_id" => rid, "status" => e.status.as_u16(), "error" => cause);
                }
            }
            if openai_shape {
                e.into_openai_response()
            } else {
                e.into_response()
            }
        }
    };
    app.cors.apply(origin.as_ref(), resp.headers_mut());
    let status = resp.status().as_u16();
    resp.headers_mut()
        .insert("x-request-id", request_id.clone());
    let target = resp
        .extensions()
        .get::<UpstreamTarget>()
        .map(|t| std::sync::Arc::clone(&t.0));
    if resp.body().is_stream() {
        let log = app.log.clone();
        let path = uri.path().to_owned();
        let rid = request_id.clone();
        let app = Arc::clone(&app);
        resp.body_mut().on_end(move |how| {
            app.metrics
                .request(route, method_label, status, start.elapsed(), None, None);
            info!(log, "request";
                "method" => method.as_str(),
                "path" => path,
                "status" => status,
                "latency_us" => start.elapsed().as_micros() as u64,
                "stream" => how.as_str(),
                "upstream" => target.as_deref().unwrap_or("-"),
                "request_id" => rid.to_str().unwrap_or("-"));
        });
    } else {
        let upstream = resp.extensions().get::<UpstreamTime>().map(|t| t.0);
        app.metrics.request(
            route,
            method_label,
            status,
            start.elapsed(),
            upstream,
            limited,
        );
        info!(app.log, "request";
            "method" => method.as_str(),
            "path" => uri.path(),
            "status" => status,
            "latency_us" => start.elapsed().as_micros() as u64,
            "upstream" => target.as_deref().unwrap_or("-"),
            "request_id" => rid);
    }
    Ok(resp)
}

/// The request's id: the client's `X-Request-Id` if it is short and
/// printable, else a fresh one (process prefix + counter; no syscall).
fn request_id(app: &App, headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get("x-request-id") {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 64 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    let n = app.requests.fetch_add(1, Ordering::Relaxed);
    let mut buf = itoa_hex(app.id_prefix, n);
    HeaderValue::from_bytes(buf.as_mut_slice()).unwrap_or(HeaderValue::from_static("-"))
}

fn itoa_hex(prefix: u32, n: u64) -> [u8; 25] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'-'; 25];
    for i in 0..8 {
        out[i] = HEX[((prefix >> (28 - 4 * i)) & 0xf) as usize];
    }
    for i in 0..16 {
        out[9 + i] = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    out
}

/// Resolves to `Err` with the panic payload if polling the inner future
/// panics.
struct CatchUnwind<F>(F);

impl<F: std::future::Future + Unpin> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::pin::Pin::new(inner).poll(cx)
        })) {
            Ok(std::task::Poll::Ready(out)) => std::task::Poll::Ready(Ok(out)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}
