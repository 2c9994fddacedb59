//! Credentials to callers: `Authorization: Bearer …` becomes a chatcore
//! [`Caller`], per the configured mode (docs/access-control.md). chatcore then decides
//! what that caller may see; this module only says who it is.
//!
//! - API keys (`cgk_…`) are checked against their stored hash. Answers are
//!   cached for [`KEY_TTL`], so a key revoked by another process (the CLI,
//!   another replica) is refused everywhere within that time.
//! - JWTs are HS256 only, signed with `SECRET_KEY`; `exp` is required and
//!   `nbf`/`iat` are checked with at most [`SKEW`] of clock skew (each must
//!   be an integer); `aud`, `iss` and the lifetime when configured. `sub`
//!   is the principal; a `scope` holding `admin` grants admin.
//! - Session tokens are JWTs this gateway mints (`typ: "session"`, `sid`,
//!   header `kid: "session"`) that open one session until its retention
//!   ends, and only while it exists. They are signed with a key derived from `SECRET_KEY` (HKDF-SHA256
//!   with a label of their own), not with `SECRET_KEY` itself: whoever
//!   mints user JWTs cannot mint a session token, and a session token
//!   cannot pass as a user JWT.
//!
//! No credential is ever logged or echoed: errors say what was wrong, in
//! words, never what was sent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chatcore::KEY_PREFIX;
use chatcore::{Caller, ChatCore, Principal, SessionId};
use hyper::header::{HeaderMap, AUTHORIZATION};
use hyper::StatusCode;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthMode, Config};
use crate::error::ApiError;

/// How long a key lookup's answer is trusted.
pub const KEY_TTL: Duration = Duration::from_secs(2);

/// The clock skew allowed on `exp`, `nbf` and `iat`.
pub const SKEW: u64 = 60;

/// Cached key answers at most; the cache is emptied when full.
const KEY_CACHE_MAX: usize = 10_000;

/// The HKDF label of the session-token key. Changing it ends every session
/// token in circulation.
const SESSION_KEY_LABEL: &[u8] = b"chatgate session token v1";

/// The `kid` of a session token's header: which key verifies it.
const SESSION_KID: &str = "session";

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health, docs, the playground.
    Open,
    /// Creating a session: open in `session_token` mode.
    Create,
    /// Using one session: its token will do in `session_token` mode.
    Session,
    /// Calls on no session (stateless `/v1`): a principal beyond `none`.
    Principal,
    /// [`Need::Session`] when the request names a session
    /// (`X-Session-Id`), else [`Need::Principal`].
    SessionIfNamed,
    /// The model list: open unless every call needs a credential.
    Models,
    /// A caller's own sessions: any known caller; none is known in `none`
    /// mode, so the route does not exist there.
    Known,
    /// Admin endpoints: an admin; none is known in `none` mode.
    Admin,
    /// The operator's metrics: open in `none` mode, else an admin's.
    Metrics,
}

/// Turns credentials into callers.
pub struct Auth {
    mode: AuthMode,
    /// User JWTs: verified with `SECRET_KEY` itself.
    user: Option<Verifier>,
    /// Session tokens: minted and verified with the derived key.
    session: Option<Verifier>,
    session_encoding: Option<EncodingKey>,
    session_lifetime: Duration,
    max_lifetime: Option<i64>,
    keys: Mutex<KeyCache>,
}

/// A key and what a token verified with it must satisfy.
struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// A verifier of tokens signed with `secret`, each with an `exp`.
    fn new(secret: &[u8], audience: &str, issuer: &str) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = SKEW;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        if !issuer.is_empty() {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Verifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }
}

/// The session-token key: HKDF-SHA256 of `SECRET_KEY` under its own label.
fn session_key(secret: &[u8]) -> [u8; 32] {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(secret);
    let mut out = [0u8; 32];
    prk.expand(&[SESSION_KEY_LABEL], ring::hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is HKDF-SHA256's own length");
    out
}

/// Recent key lookups by the SHA-256 of the presented key (the cache holds
/// no key itself): when, and who it was.
type KeyCache = HashMap<[u8; 32], (Instant, Option<Principal>)>;

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<Scope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
    // Integers, as RFC 7519 has them: a token whose `iat`, `nbf` or `exp`
    // is anything else is refused as malformed, never read as absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<i64>,
    // Optional here so that a token without it is refused for that reason
    // (the validation requires it), not as unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
}

/// `scope`: space-separated (RFC 8693) or a list.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Scope {
    Words(String),
    List(Vec<String>),
}

impl Scope {
    fn has(&self, word: &str) -> bool {
        match self {
            Scope::Words(s) => s.split_whitespace().any(|w| w == word),
            Scope::List(v) => v.iter().any(|w| w == word),
        }
    }
}

/// A 401 that asks for a bearer credential.
pub fn unauthorized(detail: &'static str) -> ApiError {
    let mut e = ApiError::new(StatusCode::UNAUTHORIZED, detail);
    e.challenge = true;
    e
}

fn forbidden() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "This needs the admin scope")
}

impl Auth {
    /// The authenticator `config` describes (its SECRET_KEY was checked
    /// when the config was loaded).
    pub fn new(config: &Config) -> Auth {
        let secret = config
            .secrets
            .secret_key
            .as_ref()
            .map(|k| k.expose().as_bytes());
        let a = &config.auth;
        let session = secret.map(session_key);
        Auth {
            mode: a.mode,
            user: secret.map(|s| Verifier::new(s, &a.jwt_audience, &a.jwt_issuer)),
            session: session.map(|k| Verifier::new(&k, "", "")),
            session_encoding: session.map(|k| EncodingKey::from_secret(&k)),
            session_lifetime: config.session.retention,
            max_lifetime: (!a.jwt_max_lifetime.is_zero())
                .then(|| i64::try_from(a.jwt_max_lifetime.as_secs()).unwrap_or(i64::MAX)),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// The mode.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Who is calling a route that needs `need`.
    ///
    /// # Errors
    /// 401 (with `WWW-Authenticate: Bearer`) for a missing, malformed,
    /// forged, expired or revoked credential; 403 for a non-admin on an
    /// admin route; 404 for a route that has no meaning in `none` mode.
    pub async fn caller(
        &self,
        core: &ChatCore,
        headers: &HeaderMap,
        need: Need,
    ) -> Result<Caller, ApiError> {
        let need = match need {
            Need::SessionIfNamed if headers.contains_key("x-session-id") => Need::Session,
            Need::SessionIfNamed => Need::Principal,
            other => other,
        };
        if need == Need::Open {
            return Ok(Caller::Anyone);
        }
        if need == Need::Metrics {
            if self.mode == AuthMode::None {
                return Ok(Caller::Anyone);
            }
            return match bearer(headers)? {
                Some(token) => match self.verify(core, token).await? {
                    c if c.is_admin() => Ok(c),
                    _ => Err(forbidden()),
                },
                None => Err(unauthorized(
                    "Missing credentials: send Authorization: Bearer <token>",
                )),
            };
        }
        if self.mode == AuthMode::None {
            return match need {
                Need::Known | Need::Admin => Err(ApiError::not_found()),
                _ => Ok(Caller::Anyone),
            };
        }
        let credential = match bearer(headers)? {
            Some(token) => Some(self.verify(core, token).await?),
            None => None,
        };
        match (need, credential) {
            (Need::Create, None | Some(Caller::Session(_)))
                if self.mode == AuthMode::SessionToken =>
            {
                Ok(Caller::Anyone)
            }
            (Need::Models, None | Some(Caller::Session(_)))
                if self.mode == AuthMode::SessionToken =>
            {
                Ok(Caller::Anyone)
            }
            (_, None) => Err(unauthorized(
                "Missing credentials: send Authorization: Bearer <token>",
            )),
            (Need::Admin, Some(c)) if !c.is_admin() => Err(forbidden()),
            (Need::Session | Need::Known, Some(c @ Caller::Session(_)))
                if self.mode == AuthMode::SessionToken =>
            {
                Ok(c)
            }
            (_, Some(Caller::Session(_))) => Err(unauthorized(
                "A session token opens its own session only: this needs an API key or a JWT",
            )),
            (_, Some(c)) => Ok(c),
        }
    }

    /// Who a bearer token says the caller is.
    async fn verify(&self, core: &ChatCore, token: &str) -> Result<Caller, ApiError> {
        if token.starts_with(KEY_PREFIX) {
            return match self.key(core, token).await? {
                Some(p) => Ok(Caller::Principal(p)),
                None => Err(unauthorized("Invalid or revoked API key")),
            };
        }
        // The header says which key to try; the signature decides.
        let minted_here = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthorized("Malformed token"))?
            .kid
            .is_some_and(|k| k == SESSION_KID);
        let verifier = if minted_here {
            self.session.as_ref()
        } else {
            self.user.as_ref()
        }
        .ok_or_else(|| unauthorized("Invalid credentials"))?;
        let data = jsonwebtoken::decode::<Claims>(token, &verifier.key, &verifier.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => unauthorized("Expired token"),
                    K::ImmatureSignature => unauthorized("Token not yet valid"),
                    K::InvalidSignature => unauthorized("Invalid token signature"),
                    K::InvalidAlgorithm => {
                        unauthorized("Token algorithm not accepted (HS256 only)")
                    }
                    K::MissingRequiredClaim(_) => {
                        unauthorized("Token lacks a required claim (exp, aud or iss)")
                    }
                    K::InvalidAudience => unauthorized("Token is for another audience"),
                    K::InvalidIssuer => unauthorized("Token is from another issuer"),
                    _ => unauthorized("Malformed token"),
                }
            })?;
        let claims = data.claims;
        let now = chrono::Utc::now().timestamp();
        if claims.iat.is_some_and(|iat| iat > now + SKEW as i64) {
            return Err(unauthorized("Token issued in the future"));
        }
        let is_session = claims.typ.as_deref() == Some("session");
        if minted_here != is_session {
            // A user JWT calling itself a session token, or a token signed
            // with the session key that is not one: neither was minted here.
            return Err(unauthorized("Invalid token"));
        }
        if is_session {
            let id = claims
                .sid
                .as_deref()
                .and_then(|s| SessionId::parse(s).ok())
                .ok_or_else(|| unauthorized("Malformed token"))?;
            return Ok(Caller::Session(id));
        }
        if let (Some(max), Some(exp)) = (self.max_lifetime, claims.exp) {
            if exp.saturating_sub(claims.iat.unwrap_or(now)) > max {
                return Err(unauthorized(
                    "Token lives longer than this gateway accepts (auth.jwt_max_lifetime)",
                ));
            }
        }
        let sub = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or_else(|| unauthorized("Token lacks a subject (sub)"))?;
        if sub.starts_with("key:") {
            // That namespace is API keys': a JWT must not pose as one.
            return Err(unauthorized("Invalid token subject"));
        }
        Ok(Caller::Principal(Principal {
            admin: claims.scope.is_some_and(|s| s.has("admin")),
            id: sub,
        }))
    }

    /// An API key's principal, through the short-lived cache.
    async fn key(&self, core: &ChatCore, token: &str) -> Result<Option<Principal>, ApiError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        {
            let cache = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, answer)) = cache.get(&hash) {
                if at.elapsed() < KEY_TTL {
                    return Ok(answer.clone());
                }
            }
        }
        let answer = core.keys().verify(token).await?.map(|k| Principal {
            id: format!("key:{}", k.id),
            admin: k.admin,
        });
        let mut cache = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= KEY_CACHE_MAX {
            cache.clear();
        }
        cache.insert(hash, (Instant::now(), answer.clone()));
        Ok(answer)
    }

    /// A token for session `id`, valid until `session.retention` after it
    /// was made, and only while the session exists: once the session is
    /// deleted or purged the token opens nothing (ids are never reused).
    /// `None` outside `session_token` mode.
    pub fn session_token(&self, id: SessionId) -> Option<String> {
        if self.mode != AuthMode::SessionToken {
            return None;
        }
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: None,
            scope: None,
            typ: Some("session".into()),
            sid: Some(id.to_string()),
            iat: Some(now),
            nbf: None,
            exp: Some(now.saturating_add(
                i64::try_from(self.session_lifetime.as_secs()).unwrap_or(i64::MAX),
            )),
        };
        let key = self.session_encoding.as_ref()?;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(SESSION_KID.into());
        jsonwebtoken::encode(&header, &claims, key).ok()
    }
}

/// The bearer token, if the request has an `Authorization` header.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| unauthorized("Malformed Authorization header"))?;
    let (scheme, token) = text
        .split_once(' ')
        .ok_or_else(|| unauthorized("Malformed Authorization header: expected Bearer <token>"))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(unauthorized(
            "Malformed Authorization header: expected Bearer <token>",
        ));
    }
    Ok(Some(token))
}
