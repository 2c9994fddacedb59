//! docs/configuration.md through the built binary: `chatgate check-config` in a temp
//! directory with a clean environment (no `OPENAI_API_KEY`), and `serve`
//! where the startup log line is what is checked.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::process::{run, Server};

/// A base URL that is not OpenAI's, so no key is needed.
const LOCAL_URL: (&str, &str) = ("CHATGATE_OPENAI__BASE_URL", "http://127.0.0.1:9/v1");

fn check(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = args.to_vec();
    all.push("check-config");
    run(dir, &all, env)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit code 2 and a message on stderr naming every one of `words`.
#[track_caller]
fn assert_refused(o: &Output, words: &[&str]) {
    assert_eq!(
        o.status.code(),
        Some(2),
        "exit {}; stderr: {}",
        o.status,
        stderr(o)
    );
    let err = stderr(o);
    for w in words {
        assert!(err.contains(w), "stderr does not name {w:?}: {err}");
    }
}

#[test]
fn built_in_defaults_without_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let o = check(dir.path(), &[], &[LOCAL_URL]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for line in [
        "bind = \"0.0.0.0:8000\"",
        "max_body_bytes = 65536",
        "idle_timeout = \"30m\"",
        "messages_per_minute = 5",
        "model = \"gpt-3.5-turbo\"",
        "file = \"app.log\"",
        // As written in config.toml, not humantime's "6months 8h 38m 24s"
        // or the widened f32 0.699999988079071.
        "retention = \"183d\"",
        "shutdown_grace = \"10s\"",
        "temperature = 0.7\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(out.contains("# OPENAI_API_KEY: (not set)"), "{out}");
    assert!(out.contains("# SECRET_KEY: (not set)"), "{out}");
    // What check-config prints is a config file that loads back as itself.
    std::fs::write(dir.path().join("printed.toml"), &out).unwrap();
    let again = check(dir.path(), &["--config", "printed.toml"], &[LOCAL_URL]);
    assert_eq!(stdout(&again), out, "{}", stderr(&again));
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nbind = \"127.0.0.1:7000\"\n[rate_limit]\nmessages_per_minute = 9\n",
    )
    .unwrap();
    let o = check(
        dir.path(),
        &[],
        &[LOCAL_URL, ("CHATGATE_SERVER__BIND", "127.0.0.1:9000")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("bind = \"127.0.0.1:9000\""), "{out}");
    assert!(!out.contains("7000"), "{out}");
    assert!(
        out.contains("messages_per_minute = 9"),
        "the file's other keys still apply: {out}"
    );
    assert!(
        out.contains("base_url = \"http://127.0.0.1:9/v1\""),
        "{out}"
    );
}

#[test]
fn unknown_key_in_the_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nbnd = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    assert_refused(&check(dir.path(), &[], &[LOCAL_URL]), &["bnd"]);
    std::fs::write(
        dir.path().join("config.toml"),
        "[sesion]\nidle_timeout = \"1m\"\n",
    )
    .unwrap();
    assert_refused(&check(dir.path(), &[], &[LOCAL_URL]), &["sesion"]);
}

#[test]
fn bad_values_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let cases = [
        (
            "[rate_limit]\nmessages_per_minute = 0\n",
            "rate_limit.messages_per_minute",
        ),
        (
            "[session]\nidle_timeout = \"soon\"\n",
            "session.idle_timeout",
        ),
        ("[openai]\ntemperature = 3.5\n", "openai.temperature"),
        ("[server]\nbind = \"not an address\"\n", "server.bind"),
        ("[storage]\nbackend = \"mysql\"\n", "storage.backend"),
        ("[storage]\nbackend = \"postgres\"\n", "storage.url"),
        (
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://u:hunter2@db:notaport/chat\"\n",
            "storage.url",
        ),
        (
            "[storage]\nbackend = \"postgres\"\nurl = \"postgres://db/chat\"\nschema = \"Chat\"\n",
            "storage.schema",
        ),
        ("[rate_limit]\nbackend = \"redis\"\n", "rate_limit.url"),
        (
            "[rate_limit]\nbackend = \"memcached\"\n",
            "rate_limit.backend",
        ),
        (
            "[rate_limit]\non_unavailable = \"maybe\"\n",
            "rate_limit.on_unavailable",
        ),
    ];
    for (toml, key) in cases {
        std::fs::write(&file, toml).unwrap();
        assert_refused(&check(dir.path(), &[], &[LOCAL_URL]), &[key]);
    }
    std::fs::remove_file(&file).unwrap();
    let env = [LOCAL_URL, ("CHATGATE_SESSION__IDLE_TIMEOUT", "soon")];
    assert_refused(&check(dir.path(), &[], &env), &["session.idle_timeout"]);
}

#[test]
fn default_base_url_needs_openai_api_key() {
    let dir = tempfile::tempdir().unwrap();
    assert_refused(&check(dir.path(), &[], &[]), &["OPENAI_API_KEY"]);
    let o = check(dir.path(), &[], &[("OPENAI_API_KEY", "sk-from-env-1234")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("OPENAI_API_KEY: (set)"));
    assert!(
        !stdout(&o).contains("sk-from-env-1234"),
        "the key was printed"
    );
}

#[test]
fn dotenv_file_supplies_openai_api_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "OPENAI_API_KEY=sk-from-dotenv-5678\nSECRET_KEY=s3cr3t-value\n",
    )
    .unwrap();
    let o = check(dir.path(), &[], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("OPENAI_API_KEY: (set)"), "{out}");
    assert!(out.contains("SECRET_KEY: (set)"), "{out}");
    assert!(
        !out.contains("sk-from-dotenv-5678") && !out.contains("s3cr3t-value"),
        "{out}"
    );
}

#[test]
fn explicit_config_file_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let o = check(dir.path(), &["--config", "missing.toml"], &[LOCAL_URL]);
    assert_refused(&o, &["missing.toml"]);
    // An explicit file that exists is used.
    std::fs::write(
        dir.path().join("other.toml"),
        "[rate_limit]\nmessages_per_minute = 11\n",
    )
    .unwrap();
    let o = check(dir.path(), &["--config", "other.toml"], &[LOCAL_URL]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("messages_per_minute = 11"));
}

/// `check-config` output parsed back, to compare values rather than layout.
fn printed(o: &Output) -> toml::Table {
    assert!(
        o.status.success(),
        "exit {}; stderr: {}",
        o.status,
        stderr(o)
    );
    stdout(o).parse().expect("check-config prints TOML")
}

#[test]
fn values_as_written_in_the_file_print_as_written() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[server]\nheader_timeout = \"250ms\"\n[session]\nidle_timeout = \"90min\"\n\
         [openai]\ntemperature = 0.3\n",
    )
    .unwrap();
    let out = stdout(&check(dir.path(), &[], &[LOCAL_URL]));
    for line in [
        "header_timeout = \"250ms\"",
        "idle_timeout = \"90m\"",
        "temperature = 0.3\n",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

#[test]
fn environment_values_take_the_type_of_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, &str, &str, toml::Value); 6] = [
        // Strings that look like a date or a number stay strings.
        (
            "CHATGATE_OPENAI__MODEL",
            "2024-05-13",
            "openai",
            "model",
            "2024-05-13".into(),
        ),
        (
            "CHATGATE_OPENAI__MODEL",
            "123",
            "openai",
            "model",
            "123".into(),
        ),
        (
            "CHATGATE_SERVER__CORS_ORIGINS",
            "*",
            "server",
            "cors_origins",
            vec!["*"].into(),
        ),
        (
            "CHATGATE_SERVER__CORS_ORIGINS",
            "https://a.example,https://b.example",
            "server",
            "cors_origins",
            vec!["https://a.example", "https://b.example"].into(),
        ),
        (
            "CHATGATE_OPENAI__MODELS",
            r#"["gpt-4o", "2024-05-13"]"#,
            "openai",
            "models",
            vec!["gpt-4o", "2024-05-13"].into(),
        ),
        (
            "CHATGATE_OPENAI__TEMPERATURE",
            "1",
            "openai",
            "temperature",
            1.0.into(),
        ),
    ];
    for (var, raw, section, key, want) in cases {
        let o = check(dir.path(), &[], &[LOCAL_URL, (var, raw)]);
        assert_eq!(printed(&o)[section][key], want, "{var}={raw}");
    }
}

#[test]
fn a_bad_environment_value_names_the_key_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "CHATGATE_SERVER__MAX_BODY_BYTES",
            "abc",
            ["server.max_body_bytes", "integer"],
        ),
        (
            "CHATGATE_LOG__CONTENT",
            "yes",
            ["log.content", "true or false"],
        ),
        (
            "CHATGATE_SERVER__MAX_BODY_BYTES",
            "0",
            ["server.max_body_bytes", "nonzero"],
        ),
        (
            "CHATGATE_SERVER__BND",
            "127.0.0.1:1",
            ["server.bnd", "unknown key"],
        ),
    ];
    for (var, raw, words) in cases {
        let o = check(dir.path(), &[], &[LOCAL_URL, (var, raw)]);
        assert_refused(&o, &[words[0], words[1], var]);
    }
}

/// What Kubernetes injects into every pod when a Service is named chatgate.
const KUBERNETES: [(&str, &str); 5] = [
    ("CHATGATE_PORT", "tcp://10.96.0.12:8000"),
    ("CHATGATE_PORT_8000_TCP", "tcp://10.96.0.12:8000"),
    ("CHATGATE_PORT_8000_TCP_ADDR", "10.96.0.12"),
    ("CHATGATE_SERVICE_HOST", "10.96.0.12"),
    ("CHATGATE_SERVICE_PORT", "8000"),
];

#[test]
fn kubernetes_service_variables_are_ignored_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut env = KUBERNETES.to_vec();
    env.push(LOCAL_URL);
    let o = check(dir.path(), &[], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    for (var, _) in KUBERNETES {
        assert!(err.contains(var), "{var} not named in: {err}");
    }
    assert!(err.contains("warning"), "{err}");
    // The warning goes to stderr; stdout is the TOML only.
    assert!(!stdout(&o).contains("CHATGATE_PORT"), "{}", stdout(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_logs_the_kubernetes_warning_and_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_with_env(dir.path(), &KUBERNETES).await;
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    let log = std::fs::read_to_string(dir.path().join("app.log")).expect("app.log");
    let warning = log
        .lines()
        .find(|l| l.contains("CHATGATE_SERVICE_HOST"))
        .unwrap_or_else(|| panic!("no warning naming the variables:\n{log}"));
    assert!(warning.contains("WARN"), "{warning}");
}

#[test]
fn other_dotenv_variables_are_ignored_with_a_warning_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "OPENAI_API_KEY=sk-from-dotenv-5678\nDATABASE_URL=postgres://app:hunter2-Xq9@db/app\n\
         CHATGATE_SERVER__BIND=127.0.0.1:1\n",
    )
    .unwrap();
    let o = check(dir.path(), &[], &[]);
    let err = stderr(&o);
    assert!(
        err.contains("DATABASE_URL") && err.contains("CHATGATE_SERVER__BIND"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "a value was printed: {err}");
    // `.env` supplies secrets only: the bind stays the default.
    assert_eq!(printed(&o)["server"]["bind"].as_str(), Some("0.0.0.0:8000"));
}

#[test]
fn a_malformed_dotenv_line_is_named_by_number_not_by_content() {
    let dir = tempfile::tempdir().unwrap();
    let fake = "sk-fake-Jw3Lq8Vz2Rt6Pn4";
    std::fs::write(
        dir.path().join(".env"),
        format!("# secrets\nSECRET_KEY=ok\nOPENAI_API_KEY {fake}\n"),
    )
    .unwrap();
    let o = check(dir.path(), &[], &[LOCAL_URL]);
    assert_refused(&o, &[".env", "line 3"]);
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(!all.contains(fake), "the line's content was printed: {all}");
}

/// A base URL with a password in its userinfo and a key in its query.
const URL_WITH_CREDENTIALS: &str =
    "http://alice:pa55-Vb8Wm2@127.0.0.1:9/v1?api-key=k3y-Tn5Hs1&api-version=2024-02-01";
const REDACTED_URL: &str = "http://***@127.0.0.1:9/v1?api-key=***&api-version=2024-02-01";

#[track_caller]
fn assert_no_credentials(text: &str) {
    for secret in ["alice", "pa55-Vb8Wm2", "k3y-Tn5Hs1"] {
        assert!(!text.contains(secret), "{secret} is shown: {text}");
    }
}

#[test]
fn base_url_credentials_are_hidden_in_check_config_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let o = check(
        dir.path(),
        &[],
        &[("CHATGATE_OPENAI__BASE_URL", URL_WITH_CREDENTIALS)],
    );
    assert_eq!(
        printed(&o)["openai"]["base_url"].as_str(),
        Some(REDACTED_URL)
    );
    assert_no_credentials(&format!("{}{}", stdout(&o), stderr(&o)));
    let refused = check(
        dir.path(),
        &[],
        &[(
            "CHATGATE_OPENAI__BASE_URL",
            "ftp://alice:pa55-Vb8Wm2@127.0.0.1/v1",
        )],
    );
    assert_refused(&refused, &["openai.base_url", "ftp://***@127.0.0.1/v1"]);
    assert_no_credentials(&stderr(&refused));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_url_credentials_are_hidden_in_the_startup_line() {
    let dir = tempfile::tempdir().unwrap();
    // No mock: the URL itself is the upstream (nothing is sent to it).
    let mut server = Server::start_with_args(
        dir.path(),
        &["serve"],
        &[("CHATGATE_OPENAI__BASE_URL", URL_WITH_CREDENTIALS)],
    )
    .await;
    server.terminate();
    server.wait_exit(Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(dir.path().join("app.log")).expect("app.log");
    let line = log
        .lines()
        .find(|l| l.contains("listening"))
        .unwrap_or_else(|| panic!("no startup line:\n{log}"));
    assert!(line.contains(REDACTED_URL), "{line}");
    assert_no_credentials(&log);
}

#[test]
fn a_log_file_that_cannot_be_opened_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
    let env = [
        LOCAL_URL,
        ("CHATGATE_STORAGE__BACKEND", "memory"),
        ("CHATGATE_SERVER__BIND", "127.0.0.1:0"),
    ];
    // Its directory cannot be created (a file is in the way), or the file
    // itself cannot be opened (it is a directory).
    for file in ["not-a-dir/app.log", "."] {
        let mut env = env.to_vec();
        env.push(("CHATGATE_LOG__FILE", file));
        let o = run(dir.path(), &["serve"], &env);
        assert_eq!(o.status.code(), Some(1), "{file}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("log file {file}:")),
            "{file}: {}",
            stderr(&o)
        );
    }
}
