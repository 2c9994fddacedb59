//! End-to-end tests of chatgate: the real gateway on a loopback port in
//! front of the mock OpenAI server (in-process), and the built binary for
//! configuration, signals and crash durability. One test binary made of
//! modules; nothing here touches the internet.

mod credentials;
mod process;
mod support;

mod auth;
mod auth_admin;
mod auth_cli;
mod auth_quotas;
mod auth_session_token;
mod config;
mod conversations;
mod endpoints;
mod errors;
mod hostile;
mod lifecycle;
mod log_files;
mod log_stderr;
mod logs;
mod metrics;
mod openai_api;
mod openai_fidelity;
mod pages;
mod rate_limit;
mod replicas;
mod responses;
mod routing;
mod streaming;
mod upstream;
