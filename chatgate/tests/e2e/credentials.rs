//! Credentials for the access-control tests (docs/access-control.md): gateways in each
//! `auth.mode` with a known `SECRET_KEY`, JWTs built by hand (HS256 with
//! ring, so forged and foreign-algorithm tokens are as easy to make as
//! good ones), API keys made through a second chatcore handle on the
//! gateway's own SQLite file, and requests that carry a bearer.

use std::net::SocketAddr;

use bytes::Bytes;
use chatcore::ChatCore;
use chatgate::config::{AuthMode, Config, Secret};
use hyper::Method;
use serde_json::{json, Value};

use crate::support::*;

/// The `SECRET_KEY` every test gateway signs and verifies with (≥ 32 bytes).
pub const SECRET: &str = "e2e-signing-secret-Vq3Lm8Xr2Kp7Tz9Wd4Hs6";

/// The model the base configuration allows.
pub const MODEL: &str = "gpt-3.5-turbo";

/// Base64url without padding (JOSE's encoding).
pub fn b64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// How a hand-built token is signed.
#[derive(Debug, Clone, Copy)]
pub enum Sig<'a> {
    /// HMAC-SHA256 with this key.
    Hs256(&'a [u8]),
    /// HMAC-SHA384 with this key.
    Hs384(&'a [u8]),
    /// HMAC-SHA512 with this key.
    Hs512(&'a [u8]),
    /// No signature at all (`header.payload.`).
    Empty,
}

/// `header.payload.signature`, whatever the header claims.
pub fn token(header: &Value, claims: &Value, sig: Sig<'_>) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mac = |alg, key: &[u8]| {
        let key = ring::hmac::Key::new(alg, key);
        b64url(ring::hmac::sign(&key, input.as_bytes()).as_ref())
    };
    let signature = match sig {
        Sig::Hs256(k) => mac(ring::hmac::HMAC_SHA256, k),
        Sig::Hs384(k) => mac(ring::hmac::HMAC_SHA384, k),
        Sig::Hs512(k) => mac(ring::hmac::HMAC_SHA512, k),
        Sig::Empty => String::new(),
    };
    format!("{input}.{signature}")
}

/// An HS256 JWT with these claims, signed with [`SECRET`].
pub fn jwt(claims: Value) -> String {
    token(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &claims,
        Sig::Hs256(SECRET.as_bytes()),
    )
}

/// The key session tokens are signed with: HKDF-SHA256 of [`SECRET`]
/// under the gateway's label (docs/access-control.md), computed here
/// independently of the gateway's code.
pub fn session_key() -> [u8; 32] {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(SECRET.as_bytes());
    let mut out = [0u8; 32];
    prk.expand(&[b"chatgate session token v1"], ring::hkdf::HKDF_SHA256)
        .unwrap()
        .fill(&mut out)
        .unwrap();
    out
}

/// A token signed as the gateway signs session tokens (`kid: "session"`,
/// the derived key), with these claims.
pub fn session_signed(claims: Value) -> String {
    token(
        &json!({"alg": "HS256", "typ": "JWT", "kid": "session"}),
        &claims,
        Sig::Hs256(&session_key()),
    )
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A good JWT for principal `sub`, valid for ten minutes.
pub fn user_jwt(sub: &str) -> String {
    jwt(json!({"sub": sub, "iat": now(), "exp": now() + 600}))
}

/// A good JWT for principal `sub` with the admin scope.
pub fn admin_jwt(sub: &str) -> String {
    jwt(json!({"sub": sub, "scope": "read admin", "iat": now(), "exp": now() + 600}))
}

/// A gateway in `mode` with [`SECRET`] as its `SECRET_KEY`, then `edit`.
pub async fn gateway(mode: AuthMode, edit: impl FnOnce(&mut Config)) -> Gateway {
    Gateway::start_with(|c| {
        c.auth.mode = mode;
        c.secrets.secret_key = Some(Secret::new(SECRET));
        edit(c);
    })
    .await
}

/// A second chatcore handle on the gateway's SQLite file, as an operator's
/// `chatgate keys …` would open it.
pub async fn side_core(gw: &Gateway) -> ChatCore {
    let config = base_config(&gw.mock, gw.dir_path());
    let quiet = slog::Logger::root(slog::Discard, slog::o!());
    chatgate::build_core(&config, &quiet)
        .await
        .expect("open the gateway's database")
}

/// Makes an API key in the gateway's storage and returns it with its id.
pub async fn create_key(gw: &Gateway, name: &str, admin: bool) -> (String, String) {
    let made = side_core(gw)
        .await
        .keys()
        .create(name, admin)
        .await
        .expect("create an API key");
    (made.secret, made.key.id)
}

/// Revokes key `id` in the gateway's storage.
pub async fn revoke_key(gw: &Gateway, id: &str) {
    assert!(
        side_core(gw).await.keys().revoke(id).await.expect("revoke"),
        "no live key {id}"
    );
}

/// Sends `method path` with `Authorization: Bearer <bearer>` (if any),
/// extra `headers` and a JSON `body`.
pub async fn call_with(
    addr: SocketAddr,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> Resp {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if let Some(a) = &auth {
        all.push(("authorization", a));
    }
    try_send(
        addr,
        method.clone(),
        path,
        &all,
        body.map(|b| Bytes::from(b.to_string())),
    )
    .await
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`call_with`] without extra headers.
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> Resp {
    call_with(addr, method, path, bearer, &[], body).await
}

/// Creates a session as `bearer` and returns the whole answer's JSON.
pub async fn init_as(addr: SocketAddr, bearer: Option<&str>) -> Value {
    let r = call(
        addr,
        Method::POST,
        "/session/initialize_session",
        bearer,
        None,
    )
    .await;
    assert_eq!(r.status, 200, "initialize_session: {}", r.text());
    r.json()
}

/// Creates a session as `bearer` and returns its id.
pub async fn session_as(addr: SocketAddr, bearer: Option<&str>) -> String {
    init_as(addr, bearer).await["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned()
}

/// One `/chat/` turn as `bearer`.
pub async fn chat_as(addr: SocketAddr, bearer: Option<&str>, id: &str, text: &str) -> Resp {
    let body = json!({"session_id": id, "role": "user", "content": text});
    call(addr, Method::POST, "/chat/", bearer, Some(&body)).await
}

/// Feedback on session `id` as `bearer`.
pub async fn feedback_as(
    addr: SocketAddr,
    bearer: Option<&str>,
    id: &str,
    text: &str,
    rating: Option<u8>,
) -> Resp {
    let mut body = json!({"session_id": id, "feedback": text});
    if let Some(r) = rating {
        body["rating"] = json!(r);
    }
    call(addr, Method::POST, "/feedback/", bearer, Some(&body)).await
}

/// A session-bound `/v1` turn (`X-Session-Id: id`) as `bearer`.
pub async fn v1_turn_as(addr: SocketAddr, bearer: Option<&str>, id: &str, text: &str) -> Resp {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": text}]});
    call_with(
        addr,
        Method::POST,
        "/v1/chat/completions",
        bearer,
        &[("x-session-id", id)],
        Some(&body),
    )
    .await
}

/// Asserts a classic-route 401: `WWW-Authenticate: Bearer` and a
/// `{"detail": "<text>"}` body that echoes nothing of `sent`.
#[track_caller]
pub fn assert_401(r: &Resp, sent: &str) {
    assert_eq!(r.status, 401, "body: {}", r.text());
    assert_challenge(r);
    assert_json_content_type(r);
    let v = r.json();
    let obj = v.as_object().expect("an object");
    assert_eq!(obj.len(), 1, "only `detail`: {v}");
    let detail = v["detail"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(!detail.is_empty(), "{v}");
    assert_no_echo(r, sent);
}

/// Asserts a `/v1` 401 in OpenAI's shape with `WWW-Authenticate: Bearer`.
#[track_caller]
pub fn assert_openai_401(r: &Resp, sent: &str) {
    assert_eq!(r.status, 401, "body: {}", r.text());
    assert_challenge(r);
    assert_json_content_type(r);
    let v = r.json();
    let e = &v["error"];
    assert_eq!(e["type"], "authentication_error", "{v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    assert!(v.get("detail").is_none(), "{v}");
    assert_no_echo(r, sent);
}

#[track_caller]
fn assert_challenge(r: &Resp) {
    let challenge = r.header("www-authenticate").unwrap_or("");
    assert!(
        challenge.split_whitespace().next() == Some("Bearer"),
        "WWW-Authenticate {challenge:?}"
    );
}

/// The answer does not repeat (a long enough piece of) the credential.
#[track_caller]
fn assert_no_echo(r: &Resp, sent: &str) {
    if sent.len() >= 8 {
        assert!(
            !r.text().contains(sent),
            "the error echoes the credential: {}",
            r.text()
        );
    }
}

/// Asserts `{"detail": "Session not found"}` with 404.
#[track_caller]
pub fn assert_not_found(r: &Resp) {
    r.assert_error(404, "Session not found");
}

/// Asserts that `log` holds none of `secrets`, nor the distinctive part of
/// each (a JWT's signature, an API key's secret half), and that it is a
/// real log with request lines, a 401 among them (so a pass is not an
/// empty file's).
#[track_caller]
pub fn assert_log_holds_no_secret(log: &str, secrets: &[&str]) {
    assert!(
        log.lines().any(|l| has_field(l, "status", "401")),
        "app.log has no 401 request line:\n{log}"
    );
    assert_log_leaks_none(log, secrets);
}

/// Like [`assert_log_holds_no_secret`], for a log whose requests may all
/// have succeeded: it must have request lines, not a 401.
#[track_caller]
pub fn assert_log_leaks_none(log: &str, secrets: &[&str]) {
    assert!(
        log.lines().any(|l| l.contains(" INFO request,")),
        "app.log has no request line:\n{log}"
    );
    for s in secrets {
        let mut needles = vec![(*s).to_owned()];
        if let Some((_, sig)) = s.rsplit_once('.') {
            if sig.len() >= 16 {
                needles.push(sig.to_owned());
            }
        }
        if let Some((_, tail)) = s.strip_prefix("cgk_").and_then(|r| r.split_once('_')) {
            needles.push(tail.to_owned());
        }
        for n in needles {
            if let Some(line) = log.lines().find(|l| l.contains(&n)) {
                panic!("app.log holds a credential ({n}) in: {line}");
            }
        }
    }
}
