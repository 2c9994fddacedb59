//! docs/api.md and the playground: the pages a browser opens. `/docs` is Swagger UI served from
//! the binary and driven by `/openapi.json`; `/` is the chat playground,
//! which `server.playground = false` turns off. Both load nothing from
//! another host and carry a Content-Security-Policy. (tests/browser runs
//! both in a real browser.)

use hyper::Method;

use crate::support::*;

/// Panics if `text` names a host other than this machine.
#[track_caller]
fn assert_no_external_host(what: &str, text: &str) {
    for scheme in ["http://", "https://"] {
        for (i, _) in text.match_indices(scheme) {
            let host: String = text[i + scheme.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || ".-[]:".contains(*c))
                .collect();
            let host = host.split(':').next().unwrap_or("");
            assert!(
                ["localhost", "127.0.0.1", "[", ""].contains(&host),
                "{what} references an external host: {scheme}{host}"
            );
        }
    }
    assert!(
        !text.contains("src=\"//"),
        "{what}: protocol-relative source"
    );
}

#[track_caller]
fn assert_type(r: &Resp, prefix: &str) {
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with(prefix),
        "content-type {ct:?}, wanted {prefix}"
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_is_swagger_ui_from_the_binary_reading_openapi_json() {
    let gw = Gateway::start().await;
    for path in ["/docs", "/docs/", "/docs/index.html"] {
        let r = get(gw.addr, path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_type(&r, "text/html");
        let html = r.text();
        // Relative links resolve under /docs/ whether or not the address
        // ends with a slash.
        assert!(html.contains("<base href=\"/docs/\">"), "{html}");
        assert!(html.contains("swagger-ui-bundle.js"), "{html}");
        assert_no_external_host(path, &html);
        let csp = r.header("content-security-policy").unwrap_or("");
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        assert!(!csp.contains("script-src 'self' 'unsafe-inline'"), "{csp}");
    }
    let init = get(gw.addr, "/docs/swagger-initializer.js").await;
    assert_eq!(init.status, 200);
    assert_type(&init, "text/javascript");
    let text = init.text();
    assert!(text.contains("\"url\": \"/openapi.json\""), "{text}");
    // No trip to the online validator.
    assert!(text.contains("\"validatorUrl\": \"none\""), "{text}");
    for (path, ty) in [
        ("/docs/swagger-ui-bundle.js", "text/javascript"),
        ("/docs/swagger-ui-standalone-preset.js", "text/javascript"),
        ("/docs/swagger-ui.css", "text/css"),
        ("/docs/index.css", "text/css"),
        ("/docs/favicon-32x32.png", "image/png"),
    ] {
        let r = get(gw.addr, path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_type(&r, ty);
        assert!(r.body.len() > 100, "{path} is nearly empty");
    }
    get(gw.addr, "/docs/nope.js")
        .await
        .assert_error(404, "Not Found");
    get(gw.addr, "/docs/a/b")
        .await
        .assert_error(404, "Not Found");
    send(gw.addr, Method::POST, "/docs/swagger-ui.css", None)
        .await
        .assert_error(405, "Method Not Allowed");
    send(gw.addr, Method::POST, "/docs/nope.js", None)
        .await
        .assert_error(404, "Not Found");
    let head = send(gw.addr, Method::HEAD, "/docs", None).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD answered with a body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_is_three_embedded_files_under_a_strict_policy() {
    let gw = Gateway::start().await;
    let page = get(gw.addr, "/").await;
    assert_eq!(page.status, 200);
    assert_type(&page, "text/html");
    let html = page.text();
    assert!(
        html.contains("<script src=\"/playground/playground.js\""),
        "{html}"
    );
    assert!(
        html.contains("href=\"/playground/playground.css\""),
        "{html}"
    );
    assert!(html.contains("aria-live"), "the reply is not announced");
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(!csp.contains("unsafe-eval"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_no_external_host("/", &html);

    for (path, ty, needle) in [
        (
            "/playground/playground.js",
            "text/javascript",
            "text/event-stream",
        ),
        ("/playground/playground.css", "text/css", ".transcript"),
    ] {
        let r = get(gw.addr, path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_type(&r, ty);
        assert!(r.text().contains(needle), "{path} lacks {needle:?}");
        assert_no_external_host(path, &r.text());
    }
    // The script never keeps a credential in storage.
    let script = get(gw.addr, "/playground/playground.js").await.text();
    for storage in ["localStorage", "sessionStorage", "document.cookie"] {
        assert!(!script.contains(storage), "the script uses {storage}");
    }

    let head = send(gw.addr, Method::HEAD, "/", None).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD answered with a body");
    send(gw.addr, Method::POST, "/", Some("{}"))
        .await
        .assert_error(405, "Method Not Allowed");
    for path in ["/playground", "/playground/nope.js", "/playground/a/b"] {
        get(gw.addr, path).await.assert_error(404, "Not Found");
    }
    // The metrics name the pages by their templates.
    get(gw.addr, "/docs/swagger-ui.css").await;
    let scrape = get(gw.addr, "/metrics").await.text();
    for route in ["/", "/playground/{file}", "/docs/{file}"] {
        let series =
            format!(r#"chatgate_requests_total{{route="{route}",method="GET",status="200"}}"#);
        assert!(scrape.contains(&series), "{series} not in {scrape}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_playground_false_turns_every_playground_path_into_404() {
    let gw = Gateway::start_with(|c| c.server.playground = false).await;
    for path in [
        "/",
        "/playground/playground.js",
        "/playground/playground.css",
    ] {
        get(gw.addr, path).await.assert_error(404, "Not Found");
        post(gw.addr, path, "{}")
            .await
            .assert_error(404, "Not Found");
    }
    // The API and its docs are unaffected.
    assert_eq!(get(gw.addr, "/docs").await.status, 200);
    assert_eq!(get(gw.addr, "/healthz").await.status, 200);
}
