//! docs/access-control.md, `session_token` mode: `initialize_session` stays open and hands
//! out a token that opens that one session (and nothing else); a principal
//! still works on its own sessions; no token reaches `app.log`.

use chatgate::config::AuthMode;
use hyper::Method;
use serde_json::{json, Value};

use crate::credentials::*;
use crate::support::{Gateway, Resp};

/// A `session_token`-mode gateway with two anonymous sessions, A and B,
/// and the token each was handed.
struct TwoSessions {
    gw: Gateway,
    a: Value,
    id_a: String,
    tok_a: String,
    id_b: String,
    tok_b: String,
}

impl TwoSessions {
    async fn start() -> TwoSessions {
        let gw = gateway(AuthMode::SessionToken, |_| {}).await;
        let a = init_as(gw.addr, None).await;
        let b = init_as(gw.addr, None).await;
        let field = |v: &Value, k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("no {k} in {v}"))
                .to_owned()
        };
        TwoSessions {
            id_a: field(&a, "session_id"),
            tok_a: field(&a, "session_token"),
            id_b: field(&b, "session_id"),
            tok_b: field(&b, "session_token"),
            a,
            gw,
        }
    }

    /// `method /session/<id><rest>` with `bearer`.
    async fn on_session(&self, method: Method, id: &str, rest: &str, bearer: Option<&str>) -> Resp {
        let path = format!("/session/{id}{rest}");
        call(self.gw.addr, method, &path, bearer, None).await
    }

    /// How many messages session A holds, read with its own token.
    async fn messages_of_a(&self) -> usize {
        let r = self
            .on_session(Method::GET, &self.id_a, "/messages", Some(&self.tok_a))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["messages"].as_array().unwrap().len()
    }

    /// Stops the gateway and asserts `app.log` holds neither the
    /// `SECRET_KEY`, nor either token, nor any of `more`; `refused` says
    /// whether the test made a 401 (and so must find one in the log).
    async fn stop_holding_no_secret(self, refused: bool, more: &[&str]) {
        let log = self.gw.stop().await;
        let mut all = vec![SECRET, self.tok_a.as_str(), self.tok_b.as_str()];
        all.extend_from_slice(more);
        if refused {
            assert_log_holds_no_secret(&log, &all);
        } else {
            assert_log_leaks_none(&log, &all);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_session_hands_out_one_jwt_per_session() {
    let t = TwoSessions::start().await;
    assert_eq!(t.a["is_active"], 1);
    assert_ne!(t.tok_a, t.tok_b);
    assert_eq!(t.tok_a.split('.').count(), 3, "a JWT: {}", t.tok_a);
    t.stop_holding_no_secret(false, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_initialize_session_and_the_model_list_are_open() {
    let t = TwoSessions::start().await;
    let (addr, id_a) = (t.gw.addr, t.id_a.as_str());
    let r = call(addr, Method::GET, "/v1/models", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_401(&chat_as(addr, None, id_a, "no token").await, "");
    assert_401(&t.on_session(Method::GET, id_a, "", None).await, "");
    assert_401(
        &t.on_session(Method::GET, id_a, "/messages", None).await,
        "",
    );
    assert_401(&feedback_as(addr, None, id_a, "x", None).await, "");
    assert_401(&t.on_session(Method::DELETE, id_a, "", None).await, "");
    assert_openai_401(&v1_turn_as(addr, None, id_a, "no token").await, "");
    assert_401(
        &chat_as(addr, Some("garbage"), id_a, "bad token").await,
        "garbage",
    );
    t.stop_holding_no_secret(true, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_token_opens_its_own_session() {
    let t = TwoSessions::start().await;
    let (addr, id_a, tok_a) = (t.gw.addr, t.id_a.as_str(), t.tok_a.as_str());
    let r = chat_as(addr, Some(tok_a), id_a, "hello A").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["content"], "Echo: hello A");
    let r = t.on_session(Method::GET, id_a, "", Some(tok_a)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["session_id"], id_a);
    assert_eq!(t.messages_of_a().await, 2);
    let r = v1_turn_as(addr, Some(tok_a), id_a, "via v1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(t.messages_of_a().await, 4);
    let r = feedback_as(addr, Some(tok_a), id_a, "nice", Some(4)).await;
    r.assert_error(200, "Feedback received");
    let r = call(addr, Method::GET, "/sessions", Some(tok_a), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let listed: Vec<Value> = r.json()["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].clone())
        .collect();
    assert_eq!(
        listed,
        [json!(id_a)],
        "a session token lists its own session only"
    );
    t.stop_holding_no_secret(false, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sessions_token_is_404_as_an_unknown_id_is() {
    let t = TwoSessions::start().await;
    let (addr, id_a, tok_a, tok_b) = (
        t.gw.addr,
        t.id_a.as_str(),
        t.tok_a.as_str(),
        t.tok_b.as_str(),
    );
    let r = chat_as(addr, Some(tok_a), id_a, "hello A").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // B's token on A.
    assert_not_found(&chat_as(addr, Some(tok_b), id_a, "wrong token").await);
    assert_not_found(&t.on_session(Method::GET, id_a, "", Some(tok_b)).await);
    assert_not_found(
        &t.on_session(Method::GET, id_a, "/messages", Some(tok_b))
            .await,
    );
    assert_not_found(&feedback_as(addr, Some(tok_b), id_a, "x", None).await);
    assert_not_found(&t.on_session(Method::DELETE, id_a, "", Some(tok_b)).await);
    assert_eq!(
        v1_turn_as(addr, Some(tok_b), id_a, "wrong token")
            .await
            .status,
        404
    );
    // A's messages are untouched by B's attempts.
    assert_eq!(t.messages_of_a().await, 2);
    t.stop_holding_no_secret(false, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_token_opens_no_call_on_no_session_nor_review() {
    let t = TwoSessions::start().await;
    let (addr, tok_a) = (t.gw.addr, t.tok_a.as_str());
    let stateless = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let r = call(
        addr,
        Method::POST,
        "/v1/chat/completions",
        Some(tok_a),
        Some(&stateless),
    )
    .await;
    assert_openai_401(&r, tok_a);
    let r = call(addr, Method::GET, "/admin/feedback", Some(tok_a), None).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(t.gw.mock.request_count(), 0);
    t.stop_holding_no_secret(true, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_expired_session_tokens_are_refused() {
    let t = TwoSessions::start().await;
    let (addr, id_a) = (t.gw.addr, t.id_a.as_str());
    let now = now();
    let forged = token(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"typ": "session", "sid": id_a, "iat": now, "exp": now + 600}),
        Sig::Hs256(b"not-the-gateway-secret-not-the-gateway"),
    );
    assert_401(&chat_as(addr, Some(&forged), id_a, "forged").await, &forged);
    let expired =
        session_signed(json!({"typ": "session", "sid": id_a, "iat": now - 900, "exp": now - 120}));
    assert_401(
        &chat_as(addr, Some(&expired), id_a, "expired").await,
        &expired,
    );
    // The same claims, in date, signed as the gateway signs: accepted (so
    // the refusals above are for the forgery and the date).
    let good = session_signed(json!({"typ": "session", "sid": id_a, "iat": now, "exp": now + 600}));
    let r = chat_as(addr, Some(&good), id_a, "in date").await;
    assert_eq!(r.status, 200, "{}", r.text());
    t.stop_holding_no_secret(true, &[&forged, &expired, &good])
        .await;
}

/// Session tokens and user JWTs are signed with different keys (the
/// session key derived from SECRET_KEY): a JWT signed with SECRET_KEY that
/// calls itself a session token is refused, and so is a token signed with
/// the session key that is not a session token, or one that claims the
/// session key's `kid` without its signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_kind_of_token_passes_as_the_other() {
    let t = TwoSessions::start().await;
    let (addr, id_a, tok_a) = (t.gw.addr, t.id_a.as_str(), t.tok_a.as_str());
    let now = now();
    let session_claims = json!({"typ": "session", "sid": id_a, "iat": now, "exp": now + 600});
    let as_jwt = jwt(session_claims.clone());
    let kid_only = token(
        &json!({"alg": "HS256", "typ": "JWT", "kid": "session"}),
        &session_claims,
        Sig::Hs256(SECRET.as_bytes()),
    );
    let principal_by_session_key =
        session_signed(json!({"sub": "alice", "scope": "admin", "iat": now, "exp": now + 600}));
    for (what, tok) in [
        ("a JWT posing as a session token", &as_jwt),
        ("the session kid without the session key", &kid_only),
    ] {
        assert_401(&chat_as(addr, Some(tok), id_a, what).await, tok);
    }
    let r = call(
        addr,
        Method::GET,
        "/sessions",
        Some(&principal_by_session_key),
        None,
    )
    .await;
    assert_401(&r, &principal_by_session_key);
    let r = call(
        addr,
        Method::GET,
        "/admin/feedback",
        Some(&principal_by_session_key),
        None,
    )
    .await;
    assert_401(&r, &principal_by_session_key);
    // The session's real token still works, and is no user JWT: it opens
    // its own session only.
    let r = chat_as(addr, Some(tok_a), id_a, "mine").await;
    assert_eq!(r.status, 200, "{}", r.text());
    t.stop_holding_no_secret(true, &[&as_jwt, &kid_only, &principal_by_session_key])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_works_on_its_own_sessions_not_on_anonymous_ones() {
    let t = TwoSessions::start().await;
    let (addr, id_b, tok_b) = (t.gw.addr, t.id_b.as_str(), t.tok_b.as_str());
    let (key, _) = create_key(&t.gw, "app", false).await;
    let mine = init_as(addr, Some(&key)).await;
    let id_k = mine["session_id"].as_str().unwrap();
    let r = chat_as(addr, Some(&key), id_k, "keyed").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_not_found(&chat_as(addr, Some(&key), id_b, "not mine").await);
    assert_not_found(&chat_as(addr, Some(tok_b), id_k, "not mine").await);
    let r = call(addr, Method::GET, "/sessions", Some(&key), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["sessions"][0]["session_id"], id_k);
    assert_eq!(r.json()["sessions"].as_array().unwrap().len(), 1);
    let tok_k = mine["session_token"].as_str().unwrap_or_default();
    let mut more = vec![key.as_str()];
    if !tok_k.is_empty() {
        more.push(tok_k);
    }
    t.stop_holding_no_secret(false, &more).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_the_sessions_own_token_removes_that_session_only() {
    let t = TwoSessions::start().await;
    let (id_a, tok_a) = (t.id_a.as_str(), t.tok_a.as_str());
    let r = t.on_session(Method::DELETE, id_a, "", Some(tok_a)).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    assert_not_found(&t.on_session(Method::GET, id_a, "", Some(tok_a)).await);
    // The token died with its session: it opens nothing, chat included.
    assert_not_found(&chat_as(t.gw.addr, Some(tok_a), id_a, "anyone?").await);
    // B is still there.
    let r = t.on_session(Method::GET, &t.id_b, "", Some(&t.tok_b)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    t.stop_holding_no_secret(false, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_token_mode_models_list_accepts_a_session_token() {
    let gw = gateway(AuthMode::SessionToken, |_| {}).await;
    let s = init_as(gw.addr, None).await;
    let tok = s["session_token"].as_str().expect("session_token");
    let r = call(gw.addr, Method::GET, "/v1/models", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A valid credential must not open less than none at all.
    let r = call(gw.addr, Method::GET, "/v1/models", Some(tok), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(
        gw.addr,
        Method::GET,
        &format!("/v1/models/{MODEL}"),
        Some(tok),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A session token says what it is and for which session, and expires
/// `session.retention` after it was made (SPEC §9: `exp` required).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_token_names_its_session_and_expires() {
    let t = TwoSessions::start().await;
    let payload = t.tok_a.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(&b64url_decode(payload)).expect("JSON claims");
    assert_eq!(claims["typ"], "session", "{claims}");
    assert_eq!(claims["sid"], t.id_a.as_str(), "{claims}");
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(
        exp - iat,
        183 * 24 * 3600,
        "the default retention: {claims}"
    );
    let header = t.tok_a.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(&b64url_decode(header)).unwrap();
    assert_eq!(header["kid"], "session", "{header}");
    t.stop_holding_no_secret(false, &[]).await;
}

/// Base64url without padding, decoded (the inverse of [`b64url`]).
fn b64url_decode(text: &str) -> Vec<u8> {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let v = ABC.iter().position(|&a| a == c).expect("base64url") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
