//! [`App`]: what every request sees, built once from the configuration;
//! [`build`]: the chatcore facade a configuration describes.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use std::sync::Arc;

use chatcore::{ChatCore, Router, SqliteStore};
use slog::{o, Logger};

use crate::api::openai::Policy;
use crate::auth::Auth;
use crate::config::{client_key, Config, TrustedProxies};
use crate::cors::Cors;
use crate::logging::ContentLog;
use crate::{backends, metrics};

/// Shared state of the gateway: the chatcore facade and the HTTP settings.
#[derive(Debug)]
pub struct App {
    /// The chat backend.
    pub core: ChatCore,
    /// The root logger.
    pub log: Logger,
    /// The content lines (`log.content`, `log.max_content_bytes`).
    pub content_log: ContentLog,
    /// The models clients may name on `/v1` (`[models]`, else
    /// `openai.models` or the configured model), sorted.
    pub models: Vec<String>,
    /// The router over the upstreams.
    pub router: Arc<Router>,
    /// `server.max_body_bytes`.
    pub max_body_bytes: usize,
    /// `server.max_v1_body_bytes`: the bound on `/v1` bodies (images ride
    /// in them as data URLs).
    pub max_v1_body_bytes: usize,
    /// What the operator changes in every `/v1` request
    /// (`openai.max_tokens`, `drop_params`, `deny_params`).
    pub v1_policy: Policy,
    /// `server.max_connections`.
    pub max_connections: usize,
    /// `server.header_timeout`.
    pub header_timeout: Duration,
    /// `server.body_timeout`.
    pub body_timeout: Duration,
    /// `server.write_timeout`.
    pub write_timeout: Duration,
    /// `server.shutdown_grace`.
    pub shutdown_grace: Duration,
    /// Credentials to callers (`[auth]`).
    pub auth: Auth,
    /// `GET /metrics`.
    pub metrics: metrics::Metrics,
    /// `openai.model`, the model `/chat/` turns use (for the metrics).
    pub model: String,
    /// `server.trusted_proxies`.
    pub trusted_proxies: TrustedProxies,
    /// `openai.max_tokens` (0 in the file: none).
    pub max_tokens: Option<u32>,
    /// `openai.temperature`, for the seed API's turns (`/v1` adds none).
    pub temperature: f32,
    /// `session.client_system_prompt`.
    pub client_system_prompt: bool,
    /// `server.playground`: whether `GET /` serves the chat playground.
    pub playground: bool,
    pub(crate) cors: Cors,
    pub(crate) requests: AtomicU64,
    pub(crate) id_prefix: u32,
}

impl App {
    /// The facade as `caller` sees it, coming from `peer` with `headers`:
    /// a caller with no principal has its quotas counted per client
    /// ([`App::client_key`]).
    pub fn scoped(
        &self,
        caller: chatcore::Caller,
        peer: std::net::IpAddr,
        headers: &hyper::HeaderMap,
    ) -> chatcore::Scoped<'_> {
        if caller.principal().is_some() {
            return self.core.as_caller(caller);
        }
        let client = self.client_key(peer, headers);
        self.core.as_caller(caller).with_client(client)
    }

    /// The key an anonymous caller's quotas are counted under: the client's
    /// address (through trusted proxies' `X-Forwarded-For`, every line of
    /// it), an IPv6 one by its /64.
    pub fn client_key(&self, peer: std::net::IpAddr, headers: &hyper::HeaderMap) -> String {
        let lines = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().unwrap_or("?"));
        client_key(self.trusted_proxies.client(peer, lines))
    }

    /// The options a seed API (`/chat/`) turn goes upstream with: the
    /// configured temperature and the reply cap of `openai.max_tokens`.
    pub fn turn_options(&self) -> chatcore::ChatOptions {
        chatcore::ChatOptions {
            temperature: Some(self.temperature),
            max_tokens: self.max_tokens,
            ..chatcore::ChatOptions::default()
        }
    }

    /// The gateway state `config` describes, around the facade and the
    /// handles [`build`] made from the same config (their counters feed
    /// `/metrics`). The one way a gateway is put together, by `serve` and
    /// by the tests alike.
    pub fn from_parts(parts: Parts, config: &Config, log: Logger) -> App {
        let Parts {
            core,
            router,
            sqlite,
            postgres,
            limiters,
        } = parts;
        let metrics = metrics::Metrics::new();
        // One Redis connection serves every quota, and one count of its
        // outages.
        if let Some(redis) = limiters.redis {
            metrics.watch_redis(redis);
        }
        metrics.watch_router(Arc::clone(&router));
        if let Some(store) = postgres {
            metrics.watch_postgres(store);
        }
        if let Some(store) = sqlite {
            metrics.watch_sqlite(store);
        }
        let content_log = if config.log.content {
            ContentLog::new(log.clone(), config.log.max_content_bytes.get())
        } else {
            ContentLog::off()
        };
        App {
            core,
            log,
            content_log,
            // What `/v1` clients may name: `[models]`, or as before routing
            // existed, `openai.models` (else `openai.model`).
            models: if config.models.is_empty() {
                config.openai.allowed_models()
            } else {
                router.models().into_iter().map(str::to_owned).collect()
            },
            router,
            max_body_bytes: config.server.max_body_bytes.get(),
            max_v1_body_bytes: config.server.max_v1_body_bytes.get(),
            v1_policy: Policy {
                max_tokens: (config.openai.max_tokens > 0).then_some(config.openai.max_tokens),
                drop_params: config.openai.drop_params.clone(),
                deny_params: config.openai.deny_params.clone(),
            },
            max_connections: config.server.max_connections.get(),
            header_timeout: config.server.header_timeout,
            body_timeout: config.server.body_timeout,
            write_timeout: config.server.write_timeout,
            shutdown_grace: config.server.shutdown_grace,
            auth: Auth::new(config),
            metrics,
            model: config.openai.model.clone(),
            // Validated when the config was loaded.
            trusted_proxies: TrustedProxies::parse(&config.server.trusted_proxies)
                .unwrap_or_default(),
            max_tokens: (config.openai.max_tokens > 0).then_some(config.openai.max_tokens),
            temperature: config.openai.temperature,
            client_system_prompt: config.session.client_system_prompt,
            playground: config.server.playground,
            cors: Cors::new(&config.server.cors_origins),
            requests: AtomicU64::new(0),
            id_prefix: process_prefix(),
        }
    }
}

/// A random per-process prefix, so request ids differ across restarts.
fn process_prefix() -> u32 {
    let u = uuid::Uuid::new_v4();
    let b = u.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Builds the chatcore facade described by `config`: storage backend,
/// OpenAI adapter, limits. SQL statements are logged to `log` when
/// `log.sql` is on.
///
/// # Errors
/// When the database cannot be opened or a setting is refused.
pub async fn build_core(config: &Config, log: &Logger) -> chatcore::Result<ChatCore> {
    build(config, log).await.map(|parts| parts.core)
}

/// The facade and the handles the metrics read (see [`build`]).
#[derive(Debug)]
pub struct Parts {
    /// The chat backend.
    pub core: ChatCore,
    /// The router over the upstreams (its states and counts feed
    /// `/metrics`, `/readyz` and `/admin/upstreams`).
    pub router: Arc<Router>,
    /// The SQLite store, when that is the backend.
    pub sqlite: Option<SqliteStore>,
    /// The PostgreSQL store, when that is the backend.
    pub postgres: Option<chatcore::PostgresStore>,
    /// The rate limiters.
    pub limiters: backends::Limiters,
}

/// As [`build_core`], also handing back what `/metrics` reads.
///
/// # Errors
/// As [`build_core`].
pub async fn build(config: &Config, log: &Logger) -> chatcore::Result<Parts> {
    let o = &config.openai;
    let router = Arc::new(
        Router::new(config.router_config())?.with_logger(log.new(o!("component" => "openai"))),
    );
    let limiters = backends::limiters(config, log)?;
    let backends::Storage {
        store,
        sqlite,
        postgres,
    } = backends::store(config, log).await?;
    let mut builder = ChatCore::builder()
        .shared_model(Arc::clone(&router) as Arc<dyn chatcore::ChatModel>)
        .shared_store(store)
        .rate_limiter(Arc::clone(&limiters.messages))
        .idle_timeout(config.session.idle_timeout)
        .retention(config.session.retention)
        .system_prompt(o.system_prompt.clone())
        .context_tokens(o.context_tokens.get())
        .hot_sessions(config.session.hot_sessions)
        .hot_cache_bytes(config.session.hot_cache_bytes)
        .session_rate_limiter(Arc::clone(&limiters.sessions))
        .address_rate_limiter(Arc::clone(&limiters.address))
        .feedback_rate_limiter(Arc::clone(&limiters.feedback));
    if let Some(p) = &limiters.principal {
        builder = builder.principal_rate_limiter(Arc::clone(p));
    }
    Ok(Parts {
        core: builder.build()?,
        router,
        sqlite,
        postgres,
        limiters,
    })
}
