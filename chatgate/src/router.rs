//! Per-request plumbing: request id, the `match (method, path)` that picks
//! a handler, CORS, and the one access-log line per request (written when a
//! streamed response ends, not when its headers go out). Errors are logged
//! here, once, with their cause chain, and shaped for the path: OpenAI's
//! `{"error": …}` under `/v1`, `{"detail": …}` elsewhere.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response};
use slog::{error, info, warn};

use crate::auth::Need;
use crate::body::Body;
use crate::error::ApiError;
use crate::handlers::playground::File;
use crate::handlers::{self, HandlerResult};
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
    let route = route_template(uri.path()).unwrap_or("other");
    let method_label = method_label(&method);
    let mut limited = None;

    let result = if method == Method::OPTIONS {
        if route_template(req.uri().path()).is_some() {
            Ok(preflight(preflight_headers))
        } else {
            Err(ApiError::not_found())
        }
    } else {
        // A panic in a handler is a bug: answer 500 (the cause goes to the
        // log) instead of dropping the connection.
        match CatchUnwind(Box::pin(dispatch(&app, req, rid, peer))).await {
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
            limited = e.limit_scope.map(crate::error::LimitScope::as_str);
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

fn preflight(requested: Option<HeaderValue>) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = hyper::StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        requested.unwrap_or(HeaderValue::from_static(
            "authorization, content-type, x-request-id, x-session-id",
        )),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    resp
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

/// The time a response's model call took, attached by the handlers of
/// whole chat turns (for the gateway-overhead histogram).
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTime(pub std::time::Duration);

/// The route template `path` matches (the metrics' `route` label, never
/// an id), or `None` for a path that is none of our endpoints (CORS
/// preflights answer 404 there).
fn route_template(path: &str) -> Option<&'static str> {
    if path.starts_with("/v1/models/") {
        return Some("/v1/models/{model}");
    }
    let trimmed = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let mut parts = trimmed.trim_start_matches('/').split('/');
    let segs = [
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    ];
    if parts.next().is_some() {
        return None;
    }
    Some(match segs {
        ["chat", "", "", ""] => "/chat/",
        ["feedback", "", "", ""] => "/feedback/",
        ["session", "initialize_session", "", ""] => "/session/initialize_session",
        ["session", id, "", ""] if !id.is_empty() => "/session/{session_id}",
        ["session", id, "messages", ""] if !id.is_empty() => "/session/{session_id}/messages",
        ["sessions", "", "", ""] => "/sessions",
        ["admin", "feedback", "", ""] => "/admin/feedback",
        ["admin", "feedback", "export", ""] => "/admin/feedback/export",
        ["healthz", "", "", ""] => "/healthz",
        ["readyz", "", "", ""] => "/readyz",
        ["metrics", "", "", ""] => "/metrics",
        ["openapi.json", "", "", ""] => "/openapi.json",
        ["docs", "", "", ""] => "/docs",
        ["docs", _, "", ""] => "/docs/{file}",
        ["", "", "", ""] => "/",
        ["playground", _, "", ""] => "/playground/{file}",
        ["v1", "chat", "completions", ""] => "/v1/chat/completions",
        ["v1", "models", "", ""] => "/v1/models",
        _ => return None,
    })
}

/// The method as a metrics label (anything unusual is `other`).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Whether errors on `path` take OpenAI's shape.
fn is_openai_path(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Routes by method and path. Paths are served with and without a trailing
/// slash; a known path with the wrong method is 405, anything else 404.
async fn dispatch(
    app: &Arc<App>,
    req: Request<Incoming>,
    rid: &str,
    peer: IpAddr,
) -> HandlerResult {
    // Each route first asks who is calling, as it needs (`auth::Need`).
    let path = req.uri().path();
    // Model ids may hold slashes (`meta-llama/Llama-3-8B-Instruct`), sent
    // raw or percent-encoded: everything after the prefix is the id.
    if let Some(id) = path.strip_prefix("/v1/models/").filter(|id| !id.is_empty()) {
        return match *req.method() {
            Method::GET | Method::HEAD => {
                let id = percent_encoding::percent_decode_str(id)
                    .decode_utf8_lossy()
                    .into_owned();
                app.auth
                    .caller(&app.core, req.headers(), Need::Models)
                    .await?;
                handlers::openai::model(app, &id)
            }
            _ => Err(ApiError::method_not_allowed("GET")),
        };
    }
    let trimmed = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    let mut parts = trimmed.trim_start_matches('/').split('/');
    let segs: [&str; 4] = [
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    ];
    if parts.next().is_some() {
        return Err(ApiError::not_found());
    }
    let m = req.method().clone();
    let query = req.uri().query().map(str::to_owned);
    match segs {
        ["chat", "", "", ""] => match m {
            Method::POST => {
                let caller = app
                    .auth
                    .caller(&app.core, req.headers(), Need::Session)
                    .await?;
                handlers::chat::chat(app, req, rid, caller).await
            }
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["v1", "chat", "completions", ""] => match m {
            Method::POST => {
                let need = if req.headers().contains_key("x-session-id") {
                    Need::Session
                } else {
                    Need::Principal
                };
                let caller = app.auth.caller(&app.core, req.headers(), need).await?;
                handlers::openai::completions(app, req, rid, caller).await
            }
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["v1", "models", "", ""] => match m {
            Method::GET | Method::HEAD => {
                app.auth
                    .caller(&app.core, req.headers(), Need::Models)
                    .await?;
                Ok(handlers::openai::models(app))
            }
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["session", "initialize_session", "", ""] => match m {
            Method::POST => {
                let caller = app
                    .auth
                    .caller(&app.core, req.headers(), Need::Create)
                    .await?;
                handlers::session::initialize(app, req, caller, peer).await
            }
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["session", id, "", ""] if !id.is_empty() => {
            let id = id.to_owned();
            match m {
                Method::GET => {
                    let caller = app
                        .auth
                        .caller(&app.core, req.headers(), Need::Session)
                        .await?;
                    handlers::session::get(app, caller, &id).await
                }
                Method::DELETE => {
                    let caller = app
                        .auth
                        .caller(&app.core, req.headers(), Need::Session)
                        .await?;
                    handlers::session::delete(app, caller, &id).await
                }
                _ => Err(ApiError::method_not_allowed("GET, DELETE")),
            }
        }
        ["session", id, "messages", ""] if !id.is_empty() => match m {
            Method::GET => {
                let id = id.to_owned();
                let caller = app
                    .auth
                    .caller(&app.core, req.headers(), Need::Session)
                    .await?;
                handlers::session::messages(app, caller, &id, query.as_deref()).await
            }
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["sessions", "", "", ""] => match m {
            Method::GET => {
                let caller = app
                    .auth
                    .caller(&app.core, req.headers(), Need::Known)
                    .await?;
                handlers::session::list(app, caller, query.as_deref()).await
            }
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["feedback", "", "", ""] => match m {
            Method::POST => {
                let caller = app
                    .auth
                    .caller(&app.core, req.headers(), Need::Session)
                    .await?;
                handlers::feedback::submit(app, req, caller).await
            }
            _ => Err(ApiError::method_not_allowed("POST")),
        },
        ["admin", "feedback", "", ""] => match m {
            Method::GET => {
                let caller = app
                    .auth
                    .caller(&app.core, req.headers(), Need::Admin)
                    .await?;
                handlers::admin::feedback(app, caller, query.as_deref()).await
            }
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["admin", "feedback", "export", ""] => match m {
            Method::GET => {
                let caller = app
                    .auth
                    .caller(&app.core, req.headers(), Need::Admin)
                    .await?;
                handlers::admin::export(app, caller, query.as_deref())
            }
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["metrics", "", "", ""] => match m {
            Method::GET | Method::HEAD => {
                app.auth
                    .caller(&app.core, req.headers(), Need::Metrics)
                    .await?;
                Ok(handlers::meta::metrics(app))
            }
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["healthz", "", "", ""] => match m {
            Method::GET | Method::HEAD => Ok(handlers::meta::healthz()),
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["readyz", "", "", ""] => match m {
            Method::GET | Method::HEAD => handlers::meta::readyz(app).await,
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["openapi.json", "", "", ""] => match m {
            Method::GET | Method::HEAD => Ok(handlers::meta::openapi()),
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        // Swagger UI: the page at `/docs`, its files at `/docs/{file}`.
        ["docs", file, "", ""] => match (m, handlers::docs::docs(file)) {
            (Method::GET | Method::HEAD, found) => found,
            (_, Ok(_)) => Err(ApiError::method_not_allowed("GET")),
            (_, Err(not_found)) => Err(not_found),
        },
        // The playground, unless `server.playground` is off (then 404).
        ["", "", "", ""] if app.playground => match m {
            Method::GET | Method::HEAD => Ok(handlers::playground::serve(File::Page)),
            _ => Err(ApiError::method_not_allowed("GET")),
        },
        ["playground", name, "", ""] if app.playground => match File::named(name) {
            Some(file) => match m {
                Method::GET | Method::HEAD => Ok(handlers::playground::serve(file)),
                _ => Err(ApiError::method_not_allowed("GET")),
            },
            None => Err(ApiError::not_found()),
        },
        _ => Err(ApiError::not_found()),
    }
}

/// CORS policy from `server.cors_origins`.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    any: bool,
    origins: Vec<HeaderValue>,
}

impl Cors {
    /// A policy allowing `origins` (`"*"` allows any; empty allows none).
    pub fn new(origins: &[String]) -> Self {
        Cors {
            any: origins.iter().any(|o| o == "*"),
            origins: origins
                .iter()
                .filter(|o| *o != "*")
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
                .collect(),
        }
    }

    fn apply(&self, origin: Option<&HeaderValue>, h: &mut HeaderMap) {
        let Some(origin) = origin else { return };
        if self.any {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else if self.origins.iter().any(|o| o == origin) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        } else {
            return;
        }
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(
                "Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-Request-Id",
            ),
        );
    }
}
