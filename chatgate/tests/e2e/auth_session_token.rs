//! SPEC §9 `session_token` mode: `initialize_session` stays open and hands
//! out a token that opens that one session (and nothing else); a principal
//! still works on its own sessions; no token reaches `app.log`.

use chatgate::config::AuthMode;
use hyper::Method;
use serde_json::{json, Value};

use crate::credentials::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_token_mode_opens_exactly_one_session_per_token() {
    let gw = gateway(AuthMode::SessionToken, |_| {}).await;
    let addr = gw.addr;
    let a = init_as(addr, None).await;
    let b = init_as(addr, None).await;
    let (id_a, tok_a) = (
        a["session_id"].as_str().unwrap(),
        a["session_token"].as_str().unwrap(),
    );
    let (id_b, tok_b) = (
        b["session_id"].as_str().unwrap(),
        b["session_token"].as_str().unwrap(),
    );
    assert_eq!(a["is_active"], 1);
    assert_ne!(tok_a, tok_b);
    assert_eq!(tok_a.split('.').count(), 3, "a JWT: {tok_a}");

    // Nothing but initialize_session (and the model list) is open.
    let r = call(addr, Method::GET, "/v1/models", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_401(&chat_as(addr, None, id_a, "no token").await, "");
    assert_401(
        &call(addr, Method::GET, &format!("/session/{id_a}"), None, None).await,
        "",
    );
    assert_401(
        &call(
            addr,
            Method::GET,
            &format!("/session/{id_a}/messages"),
            None,
            None,
        )
        .await,
        "",
    );
    assert_401(&feedback_as(addr, None, id_a, "x", None).await, "");
    assert_401(
        &call(
            addr,
            Method::DELETE,
            &format!("/session/{id_a}"),
            None,
            None,
        )
        .await,
        "",
    );
    assert_openai_401(&v1_turn_as(addr, None, id_a, "no token").await, "");
    assert_401(
        &chat_as(addr, Some("garbage"), id_a, "bad token").await,
        "garbage",
    );

    // Its own token opens session A ...
    let r = chat_as(addr, Some(tok_a), id_a, "hello A").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["content"], "Echo: hello A");
    let r = call(
        addr,
        Method::GET,
        &format!("/session/{id_a}"),
        Some(tok_a),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["session_id"], id_a);
    let r = call(
        addr,
        Method::GET,
        &format!("/session/{id_a}/messages"),
        Some(tok_a),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["messages"].as_array().unwrap().len(), 2);
    let r = v1_turn_as(addr, Some(tok_a), id_a, "via v1").await;
    assert_eq!(r.status, 200, "{}", r.text());
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

    // ... and nothing else: B's token on A is 404, as an unknown id is.
    assert_not_found(&chat_as(addr, Some(tok_b), id_a, "wrong token").await);
    assert_not_found(
        &call(
            addr,
            Method::GET,
            &format!("/session/{id_a}"),
            Some(tok_b),
            None,
        )
        .await,
    );
    assert_not_found(
        &call(
            addr,
            Method::GET,
            &format!("/session/{id_a}/messages"),
            Some(tok_b),
            None,
        )
        .await,
    );
    assert_not_found(&feedback_as(addr, Some(tok_b), id_a, "x", None).await);
    assert_not_found(
        &call(
            addr,
            Method::DELETE,
            &format!("/session/{id_a}"),
            Some(tok_b),
            None,
        )
        .await,
    );
    assert_eq!(
        v1_turn_as(addr, Some(tok_b), id_a, "wrong token")
            .await
            .status,
        404
    );
    // Nor calls on no session, nor review.
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
    // A's messages are untouched by B's attempts.
    let r = call(
        addr,
        Method::GET,
        &format!("/session/{id_a}/messages"),
        Some(tok_a),
        None,
    )
    .await;
    assert_eq!(r.json()["messages"].as_array().unwrap().len(), 4);

    // Forged and expired session tokens.
    let t = now();
    let forged = token(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"typ": "session", "sid": id_a, "iat": t, "exp": t + 600}),
        Sig::Hs256(b"not-the-gateway-secret-not-the-gateway"),
    );
    assert_401(&chat_as(addr, Some(&forged), id_a, "forged").await, &forged);
    let expired = jwt(json!({"typ": "session", "sid": id_a, "iat": t - 900, "exp": t - 120}));
    assert_401(
        &chat_as(addr, Some(&expired), id_a, "expired").await,
        &expired,
    );

    // A principal (API key) works on its own sessions, not on anonymous ones.
    let (key, _) = create_key(&gw, "app", false).await;
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

    // DELETE with the right token: 204, and then the session is gone.
    let r = call(
        addr,
        Method::DELETE,
        &format!("/session/{id_a}"),
        Some(tok_a),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    assert_not_found(
        &call(
            addr,
            Method::GET,
            &format!("/session/{id_a}"),
            Some(tok_a),
            None,
        )
        .await,
    );
    // B is still there.
    let r = call(
        addr,
        Method::GET,
        &format!("/session/{id_b}"),
        Some(tok_b),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let log = gw.stop().await;
    let secrets = [SECRET, tok_a, tok_b, &forged, &expired, &key];
    let tok_k = mine["session_token"].as_str().unwrap_or_default();
    let mut all: Vec<&str> = secrets.to_vec();
    if !tok_k.is_empty() {
        all.push(tok_k);
    }
    assert_log_holds_no_secret(&log, &all);
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
