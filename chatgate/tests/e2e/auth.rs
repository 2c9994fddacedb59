//! SPEC §9 `required` mode over real sockets: every kind of credential
//! (API keys, HS256 JWTs with their time claims, forged and
//! foreign-algorithm tokens, revoked keys), which routes stay open, the
//! 401 shapes, sessions belonging to the principal that made them (admins
//! see all), and no credential in `app.log`.

use std::time::Duration;

use chatgate::config::AuthMode;
use hyper::Method;
use serde_json::{json, Value};

use crate::credentials::*;
use crate::support::*;

/// Every route that needs a credential in `required` mode, with a body
/// that would be valid.
fn protected_routes(id: &str) -> Vec<(Method, String, Option<Value>)> {
    let chat = json!({"session_id": id, "role": "user", "content": "hi"});
    let feedback = json!({"session_id": id, "feedback": "ok"});
    let v1 = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    vec![
        (Method::POST, "/session/initialize_session".into(), None),
        (Method::POST, "/chat/".into(), Some(chat.clone())),
        (Method::POST, "/chat".into(), Some(chat)),
        (Method::POST, "/feedback/".into(), Some(feedback)),
        (Method::GET, format!("/session/{id}"), None),
        (Method::GET, format!("/session/{id}/messages"), None),
        (Method::DELETE, format!("/session/{id}"), None),
        (Method::GET, "/sessions".into(), None),
        (Method::GET, "/admin/feedback".into(), None),
        (
            Method::GET,
            "/admin/feedback/export?format=csv".into(),
            None,
        ),
        (Method::POST, "/v1/chat/completions".into(), Some(v1)),
        (Method::GET, "/v1/models".into(), None),
        (Method::GET, format!("/v1/models/{MODEL}"), None),
    ]
}

/// The status of `GET /sessions` sent raw, with these `Authorization`
/// bytes (which need not be text).
async fn raw_status(addr: std::net::SocketAddr, authorization: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req =
        b"GET /sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: ".to_vec();
    req.extend_from_slice(authorization);
    req.extend_from_slice(b"\r\n\r\n");
    s.write_all(&req).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(HANG_GUARD, s.read_to_end(&mut out))
        .await
        .expect("an answer")
        .expect("read");
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// Whether `bearer` is accepted as a principal (`GET /sessions` answers 200).
async fn accepted(gw: &Gateway, bearer: &str) -> Resp {
    call(gw.addr, Method::GET, "/sessions", Some(bearer), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_mode_refuses_every_bad_credential_and_accepts_good_ones() {
    let gw = gateway(AuthMode::Required, |_| {}).await;
    let (key, key_id) = create_key(&gw, "alice", false).await;
    let mut used: Vec<String> = vec![SECRET.to_owned(), key.clone()];

    // The probes and docs stay open, with or without a credential.
    for path in ["/healthz", "/readyz", "/docs", "/openapi.json"] {
        for bearer in [None, Some("garbage")] {
            let r = call(gw.addr, Method::GET, path, bearer, None).await;
            assert_eq!(r.status, 200, "{path} with {bearer:?}: {}", r.text());
        }
    }

    // Without a credential every other route is 401, shaped for its path.
    let id = session_as(gw.addr, Some(&key)).await;
    for (method, path, body) in protected_routes(&id) {
        let r = call(gw.addr, method.clone(), &path, None, body.as_ref()).await;
        if path.starts_with("/v1") {
            assert_openai_401(&r, "");
        } else {
            assert_401(&r, "");
        }
    }

    // Malformed Authorization headers.
    for header in [
        "Basic x",
        "Basic YWxpY2U6cGFzcw==",
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "Token abc.def.ghi",
        "Bearerabc",
        "Bearer garbage",
        "Bearer a.b.c",
        "Bearer a.b.c.d",
        "Bearer cgk_",
        "Bearer cgk_0123456789ab_00",
    ] {
        for path in ["/sessions", "/v1/models"] {
            let r = try_send(
                gw.addr,
                Method::GET,
                path,
                &[("authorization", header)],
                None,
            )
            .await
            .expect("send");
            if path == "/sessions" {
                assert_401(&r, header);
            } else {
                assert_openai_401(&r, header);
            }
        }
    }
    // A header value that is not text.
    assert_eq!(raw_status(gw.addr, b"Bearer \xff\xfe").await, 401);

    // A good API key, with the scheme in any case; one character off is not.
    assert_eq!(accepted(&gw, &key).await.status, 200);
    let lower = format!("bearer {key}");
    let r = try_send(
        gw.addr,
        Method::GET,
        "/sessions",
        &[("authorization", &lower)],
        None,
    )
    .await
    .expect("send");
    assert_eq!(r.status, 200, "{}", r.text());
    let mut off = key.clone().into_bytes();
    let last = off.last_mut().expect("non-empty");
    *last = if *last == b'0' { b'1' } else { b'0' };
    let off = String::from_utf8(off).expect("ascii");
    assert_401(&accepted(&gw, &off).await, &off);
    used.push(off);

    // JWTs: signature, algorithm and time claims.
    let t = now();
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    let good = json!({"sub": "bob", "iat": t, "exp": t + 600});
    let secret = SECRET.as_bytes();
    let cases: Vec<(&str, String, u16)> = vec![
        ("valid", jwt(good.clone()), 200),
        (
            "valid, no typ in header",
            token(&json!({"alg": "HS256"}), &good, Sig::Hs256(secret)),
            200,
        ),
        (
            "scope as a list",
            jwt(json!({"sub": "bob", "scope": ["read"], "exp": t + 600})),
            200,
        ),
        (
            "wrong secret",
            token(
                &hs,
                &good,
                Sig::Hs256(b"another-secret-another-secret-another!"),
            ),
            401,
        ),
        (
            "alg none, no signature",
            token(&json!({"alg": "none", "typ": "JWT"}), &good, Sig::Empty),
            401,
        ),
        (
            "alg none, HS256 signature",
            token(
                &json!({"alg": "none", "typ": "JWT"}),
                &good,
                Sig::Hs256(secret),
            ),
            401,
        ),
        (
            "HS256 with no signature",
            token(&hs, &good, Sig::Empty),
            401,
        ),
        (
            "RS256 header, HMAC signature",
            token(
                &json!({"alg": "RS256", "typ": "JWT"}),
                &good,
                Sig::Hs256(secret),
            ),
            401,
        ),
        (
            "HS384",
            token(
                &json!({"alg": "HS384", "typ": "JWT"}),
                &good,
                Sig::Hs384(secret),
            ),
            401,
        ),
        (
            "HS512",
            token(
                &json!({"alg": "HS512", "typ": "JWT"}),
                &good,
                Sig::Hs512(secret),
            ),
            401,
        ),
        (
            "expired 2 min ago",
            jwt(json!({"sub": "bob", "iat": t - 900, "exp": t - 120})),
            401,
        ),
        (
            "expired 30 s ago (leeway)",
            jwt(json!({"sub": "bob", "iat": t - 900, "exp": t - 30})),
            200,
        ),
        (
            "nbf in 2 min",
            jwt(json!({"sub": "bob", "nbf": t + 120, "exp": t + 600})),
            401,
        ),
        (
            "nbf in 30 s (skew)",
            jwt(json!({"sub": "bob", "nbf": t + 30, "exp": t + 600})),
            200,
        ),
        (
            "iat in 5 min",
            jwt(json!({"sub": "bob", "iat": t + 300, "exp": t + 600})),
            401,
        ),
        (
            "iat in 30 s (skew)",
            jwt(json!({"sub": "bob", "iat": t + 30, "exp": t + 600})),
            200,
        ),
        ("no exp", jwt(json!({"sub": "bob", "iat": t})), 401),
        (
            "exp not a number",
            jwt(json!({"sub": "bob", "exp": (t + 600).to_string()})),
            401,
        ),
        (
            "no sub",
            jwt(json!({"scope": "admin", "exp": t + 600})),
            401,
        ),
        ("empty sub", jwt(json!({"sub": "", "exp": t + 600})), 401),
        (
            "sub posing as an API key",
            jwt(json!({"sub": format!("key:{key_id}"), "exp": t + 600})),
            401,
        ),
        (
            "a session token",
            jwt(json!({"typ": "session", "sid": id, "iat": t, "exp": t + 600})),
            401,
        ),
    ];
    for (what, tok, want) in &cases {
        let r = accepted(&gw, tok).await;
        assert_eq!(r.status, *want, "{what}: {}", r.text());
        if *want == 401 {
            assert_401(&r, tok);
            let r = call(gw.addr, Method::GET, "/v1/models", Some(tok), None).await;
            assert_openai_401(&r, tok);
        }
        used.push(tok.clone());
    }
    // A good JWT with its payload swapped for an admin's keeps its old
    // signature: refused.
    let signed = jwt(good.clone());
    let mut parts: Vec<String> = signed.split('.').map(str::to_owned).collect();
    parts[1] = b64url(
        json!({"sub": "bob", "scope": "admin", "exp": t + 600})
            .to_string()
            .as_bytes(),
    );
    let tampered = parts.join(".");
    assert_401(&accepted(&gw, &tampered).await, &tampered);
    used.push(tampered);

    // A good credential opens the other routes too.
    let bob = jwt(good);
    assert_eq!(chat_as(gw.addr, Some(&key), &id, "hello").await.status, 200);
    let bobs = session_as(gw.addr, Some(&bob)).await;
    assert_eq!(chat_as(gw.addr, Some(&bob), &bobs, "hi").await.status, 200);
    let r = call(gw.addr, Method::GET, "/v1/models", Some(&bob), None).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A revoked key: refused once the 2 s cache has passed (within 5 s).
    revoke_key(&gw, &key_id).await;
    wait_until(
        Duration::from_secs(5),
        "the revoked key to be refused",
        || async { accepted(&gw, &key).await.status == 401 },
    )
    .await;
    assert_401(&accepted(&gw, &key).await, &key);
    assert_401(
        &chat_as(gw.addr, Some(&key), &id, "after revocation").await,
        &key,
    );
    // A key revoked before it was ever used is refused at once.
    let (fresh, fresh_id) = create_key(&gw, "never-used", false).await;
    revoke_key(&gw, &fresh_id).await;
    assert_401(&accepted(&gw, &fresh).await, &fresh);
    used.push(fresh);

    let log = gw.stop().await;
    let used: Vec<&str> = used.iter().map(String::as_str).collect();
    assert_log_holds_no_secret(&log, &used);
}

/// The ids of `GET /sessions` (as `bearer`, with `query`), and the cursor.
async fn list(gw: &Gateway, bearer: &str, query: &str) -> (Vec<String>, Option<String>) {
    let r = call(
        gw.addr,
        Method::GET,
        &format!("/sessions{query}"),
        Some(bearer),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let ids = v["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|s| {
            assert_timestamp(&s["last_active"]);
            s["session_id"].as_str().unwrap().to_owned()
        })
        .collect();
    (ids, v["next_cursor"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_belong_to_their_principal_and_admins_see_all() {
    let gw = gateway(AuthMode::Required, |_| {}).await;
    let addr = gw.addr;
    let (alice, _) = create_key(&gw, "alice", false).await;
    let (bob, _) = create_key(&gw, "bob", false).await;
    let (root, _) = create_key(&gw, "root", true).await;
    let root_jwt = admin_jwt("ops");
    let list_admin = jwt(json!({"sub": "ops2", "scope": ["read", "admin"], "exp": now() + 600}));
    let not_admin = jwt(json!({"sub": "eve", "scope": "superadmin admins", "exp": now() + 600}));

    let s1 = session_as(addr, Some(&alice)).await;
    assert_eq!(chat_as(addr, Some(&alice), &s1, "first").await.status, 200);
    feedback_as(addr, Some(&alice), &s1, "mine", Some(5))
        .await
        .assert_error(200, "Feedback received");

    // Another principal: 404 everywhere, as for an unknown id.
    for other in [bob.as_str(), not_admin.as_str()] {
        let who = Some(other);
        assert_not_found(&call(addr, Method::GET, &format!("/session/{s1}"), who, None).await);
        assert_not_found(
            &call(
                addr,
                Method::GET,
                &format!("/session/{s1}/messages"),
                who,
                None,
            )
            .await,
        );
        assert_not_found(&chat_as(addr, who, &s1, "intruder").await);
        assert_not_found(&feedback_as(addr, who, &s1, "intruder", Some(1)).await);
        assert_not_found(&call(addr, Method::DELETE, &format!("/session/{s1}"), who, None).await);
        let r = v1_turn_as(addr, who, &s1, "intruder").await;
        assert_eq!(r.status, 404, "{}", r.text());
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    }
    // Nothing of theirs reached the session or the upstream.
    assert_eq!(gw.mock.request_count(), 1);
    let r = call(
        addr,
        Method::GET,
        &format!("/session/{s1}/messages"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let texts: Vec<Value> = r.json()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].clone())
        .collect();
    assert_eq!(texts, [json!("first"), json!("Echo: first")]);

    // Admins (an admin key, a JWT with `admin` in a string or list scope)
    // see it; the same `sub` in another JWT is the same principal.
    for admin in [root.as_str(), root_jwt.as_str(), list_admin.as_str()] {
        let r = call(
            addr,
            Method::GET,
            &format!("/session/{s1}"),
            Some(admin),
            None,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let r = call(
            addr,
            Method::GET,
            &format!("/session/{s1}/messages"),
            Some(admin),
            None,
        )
        .await;
        assert_eq!(r.json()["messages"].as_array().unwrap().len(), 2);
    }
    let dave1 = user_jwt("dave");
    let d = session_as(addr, Some(&dave1)).await;
    let dave2 = jwt(json!({"sub": "dave", "exp": now() + 300}));
    assert_eq!(chat_as(addr, Some(&dave2), &d, "same me").await.status, 200);

    // GET /sessions: own sessions, most recently active first, paged.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let s2 = session_as(addr, Some(&alice)).await;
    let s3 = session_as(addr, Some(&alice)).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(chat_as(addr, Some(&alice), &s3, "later").await.status, 200);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(chat_as(addr, Some(&alice), &s1, "latest").await.status, 200);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let t1 = session_as(addr, Some(&bob)).await;

    let (all, cursor) = list(&gw, &alice, "").await;
    assert_eq!(all, [s1.clone(), s3.clone(), s2.clone()]);
    assert_eq!(cursor, None);
    let (page, cursor) = list(&gw, &alice, "?limit=2").await;
    assert_eq!(page, [s1.clone(), s3.clone()]);
    let cursor = cursor.expect("a next_cursor after a full page");
    let (rest, end) = list(&gw, &alice, &format!("?limit=2&after={cursor}")).await;
    assert_eq!(rest, std::slice::from_ref(&s2));
    assert_eq!(end, None);
    assert_eq!(list(&gw, &bob, "").await.0, std::slice::from_ref(&t1));
    assert_eq!(list(&gw, &dave2, "").await.0, std::slice::from_ref(&d));
    assert_eq!(list(&gw, &not_admin, "").await.0, Vec::<String>::new());

    let expected_all = [t1.clone(), s1.clone(), s3.clone(), s2.clone(), d.clone()];
    for admin in [root.as_str(), root_jwt.as_str()] {
        assert_eq!(list(&gw, admin, "").await.0, expected_all);
    }
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let (page, next) = list(&gw, &root, &format!("?limit=2{after}")).await;
        assert!(page.len() <= 2);
        paged.extend(page);
        match next {
            Some(c) => after = format!("&after={c}"),
            None => break,
        }
    }
    assert_eq!(paged, expected_all);

    for bad in ["?after=garbage", "?limit=0", "?limit=101"] {
        let r = call(
            addr,
            Method::GET,
            &format!("/sessions{bad}"),
            Some(&alice),
            None,
        )
        .await;
        assert_eq!(r.status, 422, "{bad}: {}", r.text());
    }

    // Only the owner or an admin deletes, feedback included.
    feedback_as(addr, Some(&bob), &t1, "bye", None)
        .await
        .assert_error(200, "Feedback received");
    let r = call(
        addr,
        Method::DELETE,
        &format!("/session/{s2}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = call(
        addr,
        Method::DELETE,
        &format!("/session/{t1}"),
        Some(&root),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_not_found(
        &call(
            addr,
            Method::GET,
            &format!("/session/{t1}"),
            Some(&bob),
            None,
        )
        .await,
    );
    assert_eq!(list(&gw, &alice, "").await.0, [s1, s3]);
    let r = call(
        addr,
        Method::GET,
        &format!("/admin/feedback?session_id={t1}"),
        Some(&root),
        None,
    )
    .await;
    assert_eq!(r.json()["feedback"], json!([]), "deleted with its session");

    // A session nobody has chatted on yet (not loaded for a turn): the same
    // 404, and an intruder's attempts take none of the owner's quota.
    let cold = session_as(addr, Some(&alice)).await;
    for _ in 0..6 {
        assert_not_found(&chat_as(addr, Some(&bob), &cold, "intruder").await);
    }
    for i in 0..5 {
        let r = chat_as(addr, Some(&alice), &cold, &format!("m{i}")).await;
        assert_eq!(r.status, 200, "message {i}: {}", r.text());
    }

    let log = gw.stop().await;
    assert!(
        log.lines().any(|l| has_field(l, "status", "404")),
        "no 404 in app.log"
    );
    for s in [
        &alice,
        &bob,
        &root,
        &root_jwt,
        &list_admin,
        &not_admin,
        &dave1,
        &dave2,
    ] {
        assert!(!log.contains(s.as_str()), "a credential reached app.log");
    }
}
