//! `GET /healthz`, `GET /readyz` and `GET /openapi.json` (compiled into
//! the binary; the Swagger UI at `/docs` that reads it is in [`docs`]).
//!
//! [`docs`]: crate::handlers::docs

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::body::{json, Body};
use crate::handlers::HandlerResult;
use crate::App;

const OPENAPI: &str = include_str!("../../assets/openapi.json");

/// `GET /metrics`: Prometheus text exposition.
pub fn metrics(app: &App) -> Response<Body> {
    let mut resp = Response::new(Body::full(app.metrics.render(&app.core)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

/// The process is up.
pub fn healthz() -> Response<Body> {
    json(&serde_json::json!({"status": "ok"}))
}

/// Every dependency answers: storage and the rate limiter, each named with
/// its backend and state; 503 while one does not (the `detail` names it).
pub async fn readyz(app: &Arc<App>) -> HandlerResult {
    let mut dependencies = serde_json::Map::new();
    let mut down: Vec<&str> = Vec::new();
    let mut causes = Vec::new();
    for d in app.core.readiness().await {
        let status = match &d.status {
            Ok(()) => "ok",
            Err(e) => {
                down.push(d.name);
                causes.push(format!("{}: {}", d.name, e.chain()));
                "unavailable"
            }
        };
        dependencies.insert(
            d.name.to_owned(),
            serde_json::json!({"backend": d.backend, "status": status}),
        );
    }
    // Upstreams: ready while every model has a target that is not
    // ejected.
    let unavailable = app.router.unavailable_models();
    let upstreams: serde_json::Map<String, serde_json::Value> = app
        .router
        .status()
        .iter()
        .map(|s| {
            let state = match s.health {
                chatcore::UpstreamHealth::Healthy => "healthy",
                chatcore::UpstreamHealth::Resting { .. } => "resting",
                chatcore::UpstreamHealth::Ejected { .. } => "ejected",
                chatcore::UpstreamHealth::Probation => "probation",
            };
            (s.name.clone(), serde_json::Value::from(state))
        })
        .collect();
    let status = if unavailable.is_empty() {
        "ok"
    } else {
        down.push("upstreams");
        causes.push(format!(
            "upstreams: every target ejected for {}",
            unavailable.join(", ")
        ));
        "unavailable"
    };
    dependencies.insert(
        "upstreams".to_owned(),
        serde_json::json!({"backend": "router", "status": status, "upstreams": upstreams}),
    );
    if down.is_empty() {
        return Ok(json(&serde_json::json!({
            "status": "ready",
            "dependencies": dependencies,
        })));
    }
    // The error's usual shape, plus which dependency is down; the causes
    // (which may name hosts) go only to the log.
    slog::warn!(app.log, "not ready"; "causes" => causes.join("; "));
    let mut resp = json(&serde_json::json!({
        "detail": format!("Not ready: {} unavailable", down.join(", ")),
        "status": "not_ready",
        "dependencies": dependencies,
    }));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    Ok(resp)
}

/// The OpenAPI 3 description of every endpoint.
pub fn openapi() -> Response<Body> {
    static_response(OPENAPI, "application/json")
}

fn static_response(body: &'static str, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::full(Bytes::from_static(body.as_bytes())));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
