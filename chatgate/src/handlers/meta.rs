//! `GET /healthz`, `GET /readyz` and `GET /openapi.json` (compiled into
//! the binary; the Swagger UI at `/docs` that reads it is in [`docs`]).
//!
//! [`docs`]: crate::handlers::docs

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::body::{json, Body};
use crate::error::ApiError;
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

/// Storage is reachable.
pub async fn readyz(app: &Arc<App>) -> HandlerResult {
    match app.core.ready().await {
        Ok(()) => Ok(json(&serde_json::json!({"status": "ready"}))),
        Err(e) => {
            let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Storage unavailable");
            err.cause = Some(e.chain());
            Err(err)
        }
    }
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
