//! The `chatgate` command: parse the command line, load the config, build
//! the logger, bind, run. `main.rs` calls [`main`]; the load bench runs the
//! gateway through the same function, so it measures exactly what ships.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{redact_url, Config, Loaded, Sources};
use crate::{build_core, logging, App};
use slog::{error, info, warn};

const USAGE: &str = "\
chatgate: an AI-chat gateway in front of any OpenAI-compatible server

usage: chatgate [--config PATH] [--mock-upstream] [COMMAND]

commands:
  serve          run the gateway (default)
  purge          run one retention sweep, print what it deleted, exit
  check-config   print the effective configuration (secrets hidden), exit
  keys create --name NAME [--admin]
                 make an API key and print it (the only time it is shown)
  keys list      list API keys (ids, names, scopes; never the keys)
  keys revoke ID revoke a key (every gateway refuses it within 2 s)
  feedback export [--since T] [--until T] [--session ID] [--rating N]
                  [--format jsonl|csv]
                 write stored feedback to stdout

options:
  --config PATH      config file (default ./config.toml; a missing default
                     file means built-in defaults)
  --mock-upstream    answer chats with the bundled mock OpenAI server on
                     loopback (echoes your message): no key, no network
  -h, --help         this text
  -V, --version      the version
";

#[derive(Debug, PartialEq)]
enum Command {
    Serve,
    Purge,
    CheckConfig,
    Keys(crate::ops::KeysCmd),
    Export(crate::ops::ExportCmd),
}

#[derive(Debug)]
struct Cli {
    config: Option<PathBuf>,
    mock_upstream: bool,
    command: Command,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Cli>, String> {
    let mut cli = Cli {
        config: None,
        mock_upstream: false,
        command: Command::Serve,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("chatgate {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--config" => {
                let path = args.next().ok_or("--config needs a path")?;
                cli.config = Some(PathBuf::from(path));
            }
            s if s.starts_with("--config=") => cli.config = Some(PathBuf::from(&s[9..])),
            "--mock-upstream" => cli.mock_upstream = true,
            "serve" => cli.command = Command::Serve,
            "purge" => cli.command = Command::Purge,
            "check-config" => cli.command = Command::CheckConfig,
            "keys" => cli.command = Command::Keys(crate::ops::parse_keys(&mut args)?),
            "feedback" => cli.command = Command::Export(crate::ops::parse_export(&mut args)?),
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(Some(cli))
}

/// Runs the `chatgate` command with `args` (without the program name) and
/// returns its exit code: 0 on success, 2 for bad arguments or
/// configuration, 1 for any other failure to start.
pub fn main(args: impl Iterator<Item = String>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chatgate: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run_cli(args))
}

async fn run_cli(args: impl Iterator<Item = String>) -> ExitCode {
    let cli = match parse_args(args) {
        Ok(Some(cli)) => cli,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chatgate: {e}");
            return ExitCode::from(2);
        }
    };
    let mut sources = Sources::from_process(cli.config);
    let mock = if cli.mock_upstream {
        let mock = chatmock::MockOpenAi::start().await;
        sources
            .env
            .insert("CHATGATE_OPENAI__BASE_URL".into(), mock.base_url());
        Some(mock)
    } else {
        None
    };
    let Loaded { config, warnings } = match Config::load(&sources) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("chatgate: config error: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.command == Command::CheckConfig {
        // On stderr, so stdout stays the TOML alone.
        for w in &warnings {
            eprintln!("chatgate: warning: {w}");
        }
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    let logs = match logging::build(&config) {
        Ok(l) => l,
        Err(e) => {
            // logging::build names the file when opening it fails, but not
            // when creating its directory does ("File exists (os error 17)"
            // says nothing about which path); name it once either way.
            let path = config.log.file.display().to_string();
            let reason = e.to_string();
            if reason.contains(&path) {
                eprintln!("chatgate: {reason}");
            } else {
                eprintln!("chatgate: cannot open log file {path}: {reason}");
            }
            return ExitCode::from(1);
        }
    };
    for w in &warnings {
        warn!(logs.logger, "{}", w);
    }
    let code = match cli.command {
        Command::Purge => purge(&config, &logs.logger).await,
        Command::Keys(cmd) => match build_core(&config, &logs.logger).await {
            Ok(core) => crate::ops::keys(&core, cmd).await,
            Err(e) => {
                eprintln!("chatgate: {}", e.chain());
                ExitCode::from(1)
            }
        },
        Command::Export(cmd) => match build_core(&config, &logs.logger).await {
            Ok(core) => crate::ops::export(&core, cmd).await,
            Err(e) => {
                eprintln!("chatgate: {}", e.chain());
                ExitCode::from(1)
            }
        },
        _ => serve(&config, &logs, mock.is_some()).await,
    };
    drop(mock);
    logs.flush();
    code
}

async fn purge(config: &Config, log: &slog::Logger) -> ExitCode {
    let core = match build_core(config, log).await {
        Ok(c) => c,
        Err(e) => {
            error!(log, "cannot start"; "error" => e.chain());
            eprintln!("chatgate: {}", e.chain());
            return ExitCode::from(1);
        }
    };
    match core.sweep().await {
        Ok(report) => {
            info!(log, "purge"; "sessions" => report.sessions,
                "messages" => report.messages, "feedback" => report.feedback);
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(log, "purge failed"; "error" => e.chain());
            eprintln!("chatgate: purge failed: {}", e.chain());
            ExitCode::from(1)
        }
    }
}

async fn serve(config: &Config, logs: &logging::Logs, mock: bool) -> ExitCode {
    let log = &logs.logger;
    let parts = match crate::build(config, log).await {
        Ok(p) => p,
        Err(e) => {
            error!(log, "cannot start"; "error" => e.chain());
            eprintln!("chatgate: cannot start: {}", e.chain());
            return ExitCode::from(1);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.server.bind).await {
        Ok(l) => l,
        Err(e) => {
            error!(log, "cannot bind"; "addr" => %config.server.bind, "error" => %e);
            eprintln!("chatgate: cannot bind {}: {e}", config.server.bind);
            return ExitCode::from(1);
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    // Tagged so stderr shows it at any level but "off": an operator
    // sees where the gateway listens without turning on request lines.
    info!(log, #logging::ANNOUNCE, "listening";
        "addr" => &addr,
        "upstream" => if config.upstreams.is_empty() {
            redact_url(&config.openai.base_url)
        } else {
            config.upstreams.keys().cloned().collect::<Vec<_>>().join(", ")
        },
        "mock_upstream" => mock,
        "model" => &config.openai.model,
        "storage" => ?config.storage.backend,
        "rate_limit" => ?config.rate_limit.backend,
        "version" => env!("CARGO_PKG_VERSION"));
    if config.auth.mode == crate::config::AuthMode::None && !config.server.bind.ip().is_loopback() {
        warn!(log, "auth.mode is none and the gateway listens beyond loopback: anyone who reaches the port may chat on your upstream key";
            "addr" => &addr);
    }
    if config.storage.backend == crate::config::Backend::Postgres
        && config.rate_limit.backend == crate::config::LimiterBackend::Memory
    {
        warn!(log, "storage is PostgreSQL but the rate limits are kept in this process: with several replicas each counts alone, so a quota is multiplied by their number; set rate_limit.backend = \"redis\"");
    }
    let app = App::from_parts(parts, config, log.clone());
    app.metrics.watch_log_drops(logs.dropped_counter());
    let sweep_log = log.clone();
    let sweeper = app
        .core
        .spawn_sweeper(config.session.sweep_interval, move |r| match r {
            Ok(report) if report.skipped => {
                info!(
                    sweep_log,
                    "retention sweep skipped: another replica is sweeping"
                )
            }
            Ok(report) => info!(sweep_log, "retention sweep";
            "sessions" => report.sessions, "messages" => report.messages,
            "feedback" => report.feedback),
            Err(e) => error!(sweep_log, "retention sweep failed"; "error" => e.chain()),
        });
    let app = Arc::new(app);
    crate::run(listener, app, crate::shutdown_signal()).await;
    sweeper.abort();
    // Let go of the core (the sweeper's copy too): the last handle on the
    // SQLite store waits for its thread, whose last log lines then reach
    // the logger before it is flushed.
    let _ = sweeper.await;
    info!(log, #logging::ANNOUNCE, "stopped");
    ExitCode::SUCCESS
}
