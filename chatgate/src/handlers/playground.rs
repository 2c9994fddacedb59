//! `GET /`: the chat playground, a page with one script and one stylesheet
//! (`/playground/playground.js`, `/playground/playground.css`), compiled
//! into the binary from `assets/playground/`. No framework, no build step,
//! nothing from another host: a strict Content-Security-Policy lets the
//! page load only its own files and call only this gateway.
//!
//! The page uses the public API like any client (sessions, streamed chat,
//! history, feedback), in whichever access-control mode the gateway runs.
//! `server.playground = false` turns all three paths into 404s.

use hyper::Response;

use crate::body::Body;
use crate::handlers::static_file;

const INDEX: &str = include_str!("../../assets/playground/index.html");
const SCRIPT: &str = include_str!("../../assets/playground/playground.js");
const STYLE: &str = include_str!("../../assets/playground/playground.css");

/// Only the page's own files, no inline script or style, calls to this
/// gateway only; no framing, no plugins, no form posts elsewhere.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// One of the playground's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum File {
    /// `/`
    Page,
    /// `/playground/playground.js`
    Script,
    /// `/playground/playground.css`
    Style,
}

impl File {
    /// The file at `/playground/{name}`, if there is one.
    pub fn named(name: &str) -> Option<File> {
        match name {
            "playground.js" => Some(File::Script),
            "playground.css" => Some(File::Style),
            _ => None,
        }
    }
}

/// Serves `file` (the router answers 404 instead when `server.playground`
/// is off).
pub fn serve(file: File) -> Response<Body> {
    let (text, content_type) = match file {
        File::Page => (INDEX, "text/html; charset=utf-8"),
        File::Script => (SCRIPT, "text/javascript; charset=utf-8"),
        File::Style => (STYLE, "text/css; charset=utf-8"),
    };
    static_file(text.as_bytes(), content_type, CSP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_or_style_and_loads_its_own_files() {
        let lower = INDEX.to_ascii_lowercase();
        for (i, _) in lower.match_indices("<script") {
            let tag = &lower[i..i + lower[i..].find('>').unwrap()];
            assert!(tag.contains("src=\"/playground/playground.js\""), "{tag}");
        }
        assert!(!lower.contains("<style"), "inline <style>");
        assert!(!lower.contains(" style=\""), "inline style attribute");
        let inline_handler = lower.match_indices(" on").any(|(i, _)| {
            let rest = &lower[i + 3..];
            let name = rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            name > 0 && rest[name..].starts_with('=')
        });
        assert!(!inline_handler, "inline event handler");
        assert!(lower.contains("href=\"/playground/playground.css\""));
        for text in [INDEX, SCRIPT, STYLE] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
    }
}
