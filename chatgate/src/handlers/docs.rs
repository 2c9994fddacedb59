//! `GET /docs`: Swagger UI for `/openapi.json`. Its files are compiled into
//! the binary (the `utoipa-swagger-ui` crate's vendored copy), so the page
//! needs no network: `/docs` (and `/docs/`) is its `index.html`, with a
//! `<base>` so that its relative links resolve under `/docs/` either way,
//! and `/docs/<file>` is the rest.
//!
//! Swagger UI's "Try it out" calls this gateway itself: header parameters
//! the document declares (such as `X-Session-Id`) and its security schemes
//! (a bearer credential, given through "Authorize") are sent as the user
//! fills them in. The credential stays in the page's memory: authorization
//! is not persisted to `localStorage`.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use hyper::Response;
use utoipa_swagger_ui::Config;

use crate::body::Body;
use crate::error::ApiError;
use crate::handlers::{static_file, HandlerResult};

/// The page may load its own files and data-URI images and call this
/// gateway; Swagger UI sets inline `style` attributes, so styles may be
/// inline too. Scripts come only from `/docs/`.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; object-src 'none'; \
                   base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

/// Swagger UI's settings, written into its `swagger-initializer.js`.
fn config() -> Arc<Config<'static>> {
    static CONFIG: OnceLock<Arc<Config<'static>>> = OnceLock::new();
    Arc::clone(CONFIG.get_or_init(|| {
        Arc::new(
            Config::from("/openapi.json")
                // The default sends the document to an online validator.
                .validator_url("none")
                // Keep "Authorize" credentials out of localStorage.
                .persist_authorization(false)
                .display_request_duration(true),
        )
    }))
}

/// Whether the docs have `file` (empty: the page itself).
pub fn exists(file: &str) -> bool {
    file.is_empty()
        || file == "index.html"
        || matches!(utoipa_swagger_ui::serve(file, config()), Ok(Some(_)))
}

/// The docs page, or one of its files (`file` is the path after `/docs/`,
/// empty for the page itself).
///
/// # Errors
/// 404 for a file Swagger UI does not have.
pub fn docs(file: &str) -> HandlerResult {
    if file.is_empty() || file == "index.html" {
        return Ok(static_file(index(), "text/html; charset=utf-8", CSP));
    }
    match utoipa_swagger_ui::serve(file, config()) {
        Ok(Some(found)) => Ok(asset(found.bytes, &found.content_type)),
        Ok(None) => Err(ApiError::not_found()),
        Err(e) => Err(ApiError::internal(format!("Swagger UI file {file}: {e}"))),
    }
}

/// Swagger UI's `index.html` with a `<base href="/docs/">` (its links are
/// relative: `./swagger-ui.css` would otherwise resolve to `/swagger-ui.css`
/// from `/docs`) and our title.
fn index() -> Bytes {
    static INDEX: OnceLock<Bytes> = OnceLock::new();
    INDEX
        .get_or_init(|| {
            let original = match utoipa_swagger_ui::serve("index.html", config()) {
                Ok(Some(found)) => String::from_utf8_lossy(&found.bytes).into_owned(),
                _ => String::new(),
            };
            Bytes::from(rewrite_index(&original))
        })
        .clone()
}

fn rewrite_index(html: &str) -> String {
    html.replacen("<head>", "<head>\n    <base href=\"/docs/\">", 1)
        .replacen(
            "<title>Swagger UI</title>",
            "<title>chatgate API docs</title>",
            1,
        )
}

fn asset(bytes: Cow<'static, [u8]>, content_type: &str) -> Response<Body> {
    let bytes = match bytes {
        Cow::Borrowed(b) => Bytes::from_static(b),
        Cow::Owned(v) => Bytes::from(v),
    };
    // mime_guess names text types without their charset; Swagger UI's
    // files are UTF-8.
    let textual = content_type.starts_with("text/") || content_type.ends_with("javascript");
    let content_type = if textual && !content_type.contains("charset") {
        format!("{content_type}; charset=utf-8")
    } else {
        content_type.to_owned()
    };
    static_file(bytes, &content_type, CSP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_resolves_its_files_under_docs_and_loads_the_document() {
        let html = String::from_utf8(index().to_vec()).unwrap();
        assert!(html.contains("<base href=\"/docs/\">"), "{html}");
        assert!(html.contains("<title>chatgate API docs</title>"), "{html}");
        assert!(html.contains("swagger-ui-bundle.js"), "{html}");
        let init = utoipa_swagger_ui::serve("swagger-initializer.js", config())
            .unwrap()
            .unwrap();
        let init = String::from_utf8_lossy(&init.bytes);
        assert!(init.contains("\"/openapi.json\""), "{init}");
        assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");
        assert!(!init.contains("petstore"), "{init}");
    }

    #[test]
    fn unknown_files_are_not_found() {
        assert_eq!(docs("nope.js").unwrap_err().status, 404);
        assert_eq!(
            docs("swagger-ui.css").unwrap().headers()["content-type"],
            "text/css; charset=utf-8"
        );
    }
}
