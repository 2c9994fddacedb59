//! The bench's command line: its options, their defaults, and which phases
//! `--phases` selects.

use std::time::Duration;

/// A phase of the bench, as `--phases` names it (a [`crate::load::Phase`]
/// is one measured load run inside a phase).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Closed-loop throughput, mock direct and chatgate (`chat.rs`).
    Chat,
    /// Open-loop and concurrency-1 latency, with the floor (`latency.rs`).
    Latency,
    /// Time to first token and streams held open (`stream.rs`).
    Stream,
    /// `/chat/` on one and three gateways over PostgreSQL (`replicas.rs`).
    Replicas,
    /// `/chat/` through one upstream and a route over two (`routing.rs`).
    Routing,
    /// Stored responses (`POST /v1/responses` joining a conversation),
    /// read against `/chat/` in the same run (`chat.rs`).
    Responses,
}

/// What `--phases` selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phases {
    /// Every stage but the replicas, which need PostgreSQL and Redis.
    All,
    Only(Stage),
}

impl Phases {
    fn parse(name: &str) -> Option<Phases> {
        Some(match name {
            "all" => Phases::All,
            "chat" => Phases::Only(Stage::Chat),
            "latency" => Phases::Only(Stage::Latency),
            "stream" => Phases::Only(Stage::Stream),
            "replicas" => Phases::Only(Stage::Replicas),
            "routing" => Phases::Only(Stage::Routing),
            "responses" => Phases::Only(Stage::Responses),
            _ => return None,
        })
    }

    /// Whether `stage` runs. The replicas and the stored responses are
    /// read against the mock direct and the `/chat/` loop measured in the
    /// same run, so selecting them also runs the chat stage's closed loops.
    pub fn runs(self, stage: Stage) -> bool {
        match self {
            Phases::All => !matches!(stage, Stage::Replicas | Stage::Routing),
            Phases::Only(only) => {
                only == stage
                    || (matches!(only, Stage::Replicas | Stage::Responses) && stage == Stage::Chat)
            }
        }
    }

    /// Whether this is a full run, which adds the other endpoints' closed
    /// loops to the chat stage.
    pub fn is_all(self) -> bool {
        self == Phases::All
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub latency_duration: Duration,
    pub connections: usize,
    pub sessions: usize,
    pub rate: u32,
    pub backend: String,
    pub phases: Phases,
    pub context_tokens: u64,
    /// Extra `KEY=VALUE` environment for the gateway (`--gateway-env`).
    pub gateway_env: Vec<(String, String)>,
    /// PostgreSQL for `--backend postgres` and `--phases replicas`.
    pub postgres_url: String,
    /// Redis for the replicas' shared limits (`--phases replicas`).
    pub redis_url: String,
    /// Another build of this bench to run the mock upstream from
    /// (`--mock-exe`): two gateway builds are compared fairly only against
    /// the same mock, which shares the machine's cores with them.
    pub mock_exe: Option<std::path::PathBuf>,
    /// The gateway binary (`--gateway-exe`): by default the shipped
    /// `chatgate` next to this bench's build (`target/release/chatgate`),
    /// on its own defaults; `self` runs this binary's copy of the same
    /// code (`__gateway`), built with the bench.
    pub gateway_exe: Option<std::path::PathBuf>,
}

/// Gateway settings the bench itself sets, and relies on (the durability
/// check reads the SQLite file it chose; the rate limit is raised so that
/// the bench measures the gateway, not the quota).
const MANAGED_ENV: &[&str] = &[
    "CHATGATE_SERVER__BIND",
    "CHATGATE_OPENAI__BASE_URL",
    "CHATGATE_OPENAI__CONTEXT_TOKENS",
    "CHATGATE_STORAGE__PATH",
    "CHATGATE_STORAGE__BACKEND",
    "CHATGATE_LOG__FILE",
    "CHATGATE_RATE_LIMIT__MESSAGES_PER_MINUTE",
    "CHATGATE_RATE_LIMIT__ADDRESS_MESSAGES_PER_MINUTE",
    "CHATGATE_RATE_LIMIT__SESSIONS_PER_HOUR",
    "CHATGATE_RATE_LIMIT__FEEDBACK_PER_HOUR",
    "CHATGATE_STORAGE__URL",
    "CHATGATE_STORAGE__SCHEMA",
    "CHATGATE_RATE_LIMIT__BACKEND",
    "CHATGATE_RATE_LIMIT__URL",
    "CHATGATE_RATE_LIMIT__KEY_PREFIX",
];

/// The `openai.context_tokens` budget under which chatgate forwards the
/// same upstream request as the direct baseline: with the bench's short
/// messages (about 11 and 12 estimated tokens for a question and its echo)
/// the new message plus the last 10 history messages fit, and an 11th does
/// not. Real chat messages are far longer, so the default budget (3000
/// tokens) holds about as many real messages; with these short ones it
/// would forward up to ~250 messages (see `--context-tokens 0`).
const SAME_WORK_CONTEXT_TOKENS: u64 = 136;

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            duration: Duration::from_secs(10),
            latency_duration: Duration::from_secs(10),
            connections: 64,
            sessions: 2000,
            rate: 50,
            backend: "sqlite".into(),
            phases: Phases::All,
            context_tokens: SAME_WORK_CONTEXT_TOKENS,
            gateway_env: Vec::new(),
            postgres_url: std::env::var("CHATGATE_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
            redis_url: std::env::var("CHATGATE_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
            mock_exe: None,
            gateway_exe: None,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || -> Result<u64, String> {
                it.next()
                    .and_then(|v| v.parse().ok())
                    .ok_or(format!("{flag} needs a whole number"))
            };
            match flag.as_str() {
                "--duration" => o.duration = Duration::from_secs(value()?.clamp(1, 120)),
                "--latency-duration" => {
                    o.latency_duration = Duration::from_secs(value()?.clamp(1, 120))
                }
                "--connections" => o.connections = value()?.clamp(1, 1024) as usize,
                "--sessions" => o.sessions = value()?.clamp(1, 100_000) as usize,
                "--rate" => o.rate = value()?.clamp(1, 10_000) as u32,
                "--backend" => {
                    o.backend = it
                        .next()
                        .cloned()
                        .filter(|b| ["sqlite", "memory", "postgres"].contains(&b.as_str()))
                        .ok_or("--backend needs sqlite, memory or postgres")?
                }
                "--phases" => {
                    o.phases = it
                        .next()
                        .and_then(|p| Phases::parse(p))
                        .ok_or("--phases needs all, chat, latency, stream, replicas or routing")?
                }
                "--context-tokens" => o.context_tokens = value()?,
                "--postgres-url" => {
                    o.postgres_url = it.next().cloned().ok_or("--postgres-url needs a URL")?
                }
                "--redis-url" => {
                    o.redis_url = it.next().cloned().ok_or("--redis-url needs a URL")?
                }
                "--gateway-exe" => {
                    o.gateway_exe = Some(
                        it.next()
                            .ok_or("--gateway-exe needs a path or self")?
                            .into(),
                    );
                }
                "--mock-exe" => {
                    o.mock_exe = Some(it.next().ok_or("--mock-exe needs a path")?.into());
                }
                "--gateway-env" => {
                    let (k, v) = it
                        .next()
                        .and_then(|kv| kv.split_once('='))
                        .filter(|(k, _)| !k.is_empty())
                        .ok_or("--gateway-env needs KEY=VALUE")?;
                    if MANAGED_ENV.contains(&k) {
                        return Err(format!(
                            "--gateway-env cannot set {k}: the bench sets it (see --backend and --context-tokens)"
                        ));
                    }
                    o.gateway_env.push((k.to_owned(), v.to_owned()));
                }
                "--bench" => {} // passed by `cargo bench`; ignored
                other => return Err(format!("unknown option {other}")),
            }
        }
        Ok(o)
    }
}
