//! CORS: which origins may call (`server.cors_origins`), and the headers
//! that say so on every answer, preflights included.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::Response;

use crate::body::Body;

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

    pub(crate) fn apply(&self, origin: Option<&HeaderValue>, h: &mut HeaderMap) {
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

/// The answer to a CORS preflight (`OPTIONS` on a known route): the
/// methods and the headers asked for.
pub(crate) fn preflight(requested: Option<HeaderValue>) -> Response<Body> {
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
