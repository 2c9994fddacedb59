//! chatcore's integration tests, one binary made of modules (so the crate
//! and its dependencies link once):
//!
//! - `conformance`: one storage suite, run against every backend;
//!   `responses`: the response store's, likewise.
//! - `adapter`: the OpenAI adapter against the in-process mock server.
//! - `chat`: the facade end to end, per backend, with a scripted model or
//!   the mock server.
//! - `durability`: what a SQLite file keeps across reopening.
//! - `shared`: stores shared by several gateways (PostgreSQL): turn claims,
//!   the sweep lease, migrations, two facades on one database.
//!
//! Nothing here touches the internet: the only upstream is `chatmock` on
//! 127.0.0.1.

#[macro_use]
mod support;

mod adapter;
mod chat;
mod conformance;
mod context;
mod durability;
mod limiter;
mod responses;
#[cfg(feature = "postgres")]
mod shared;
mod storage_bounds;
mod stream;
mod tls;
