//! # chatgate
//!
//! A standalone AI-chat gateway: chatcore served over HTTP (hyper 1), in
//! front of OpenAI or any OpenAI-compatible server.
//!
//! - [`config`]: `config.toml` + `CHATGATE_*` env + `.env` secrets, typed
//!   and validated.
//! - [`logging`]: `app.log` (plain text) and stderr, via slog-async.
//! - [`server`]: [`server::run`] serves a bound listener until a shutdown
//!   future resolves, then drains.
//! - [`router`]: request id, CORS ([`cors`]), the access-log line, errors
//!   logged once; [`routes`]: the table of routes (template, credential
//!   need, handler) and the dispatch that only calls handlers.
//! - [`handlers`]: one file per endpoint group (the seed's endpoints, the
//!   OpenAI-compatible `/v1`, Swagger UI at `/docs` and the playground at
//!   `/`); each reads its request and picks a framing.
//! - [`turn`]: the one place a chat turn is served (content lines, the
//!   model call whole or streamed, metrics, `X-RateLimit-*`);
//!   [`framing`]: how each API shows the reply (the seed's events,
//!   OpenAI's chunks).
//! - [`body`]: the one response body type, whole or streamed (SSE).
//! - [`api`]: the JSON shapes of the contract; [`error`]: the one map from
//!   chatcore error kinds to statuses.
//!
//! [`App`] ([`app`]) is what every request sees; [`build_core`] makes the
//! chatcore facade a [`config::Config`] describes.

pub mod api;
pub mod app;
pub mod auth;
pub mod backends;
pub mod body;
pub mod cli;
pub mod config;
pub mod cors;
pub mod error;
pub mod framing;
pub mod handlers;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod router;
pub mod routes;
pub mod server;
pub mod turn;

pub use app::{build, build_core, App, Parts};

pub use server::{run, shutdown_signal};
