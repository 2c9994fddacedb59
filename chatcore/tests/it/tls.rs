//! PostgreSQL over TLS: a cluster of the test's own (initdb and pg_ctl from
//! the machine's PostgreSQL, run as its `postgres` user), serving TLS only
//! with a certificate a CA made by `openssl` signed. Runs when
//! `CHATGATE_TEST_POSTGRES_URL` is set (the PostgreSQL tests are on) and
//! the machine has PostgreSQL's server programs.

#![cfg(feature = "postgres")]

use std::path::{Path, PathBuf};
use std::process::Command;

use chatcore::{ErrorKind, PostgresOptions, PostgresStore, SessionStore};

use crate::support::{certificates, note_skip, pg::URL_VAR, session, t0};

/// The directory of PostgreSQL's server programs, when the machine has them.
fn pg_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

/// Runs `program` as the `postgres` user (initdb and the server refuse
/// root).
fn as_postgres(program: &Path, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chown_to_postgres(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success());
}

/// A TLS-only cluster on a free port, stopped on drop.
struct TlsCluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TlsCluster {
    fn start(bin: PathBuf) -> (TlsCluster, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let [ca, cert, key] = certificates(dir.path(), "pg");
        let data = dir.path().join("data");
        chown_to_postgres(dir.path());
        let data_s = data.to_str().unwrap();
        as_postgres(
            &bin.join("initdb"),
            &["-D", data_s, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        // TLS only: a plain connection is refused by the server itself.
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        chown_to_postgres(dir.path());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let opts = format!(
            "-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={cert} -c ssl_key_file={key} -c fsync=off",
            sock = dir.path().display(),
            cert = cert.display(),
            key = key.display(),
        );
        let log = dir.path().join("pg.log");
        as_postgres(
            &bin.join("pg_ctl"),
            &[
                "-D",
                data_s,
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
        (
            TlsCluster {
                bin,
                data,
                port,
                _dir: dir,
            },
            ca,
        )
    }

    fn url(&self, sslmode: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode={sslmode}",
            self.port
        )
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    }
}

fn options(url: String, ca_file: Option<PathBuf>) -> PostgresOptions {
    PostgresOptions {
        url,
        ca_file,
        pool_size: 2,
        connect_timeout: std::time::Duration::from_secs(10),
        ..PostgresOptions::default()
    }
}

/// `sslmode=verify-full` with the CA that signed the server's certificate
/// works (the server takes TLS connections only); another CA is refused,
/// naming the certificate; `require` encrypts without checking; a plain
/// connection is refused by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verifies_the_server() {
    if std::env::var(URL_VAR).is_err() {
        note_skip(&format!("skipped: {URL_VAR} not set (PostgreSQL TLS test)"));
        return;
    }
    let Some(bin) = pg_bin() else {
        note_skip("skipped: no PostgreSQL server programs (PostgreSQL TLS test)");
        return;
    };
    let (cluster, ca) = TlsCluster::start(bin);

    let store = PostgresStore::connect(options(cluster.url("verify-full"), Some(ca.clone())))
        .await
        .unwrap_or_else(|e| panic!("verify-full with the right CA: {}", e.chain()));
    let s = session(t0());
    store.insert_session(&s).await.unwrap();
    assert_eq!(store.get_session(s.id).await.unwrap(), Some(s));

    // Encrypted, unchecked: works too.
    PostgresStore::connect(options(cluster.url("require"), None))
        .await
        .unwrap_or_else(|e| panic!("require: {}", e.chain()));

    // Another CA does not vouch for this server.
    let other = tempfile::tempdir().unwrap();
    let [wrong_ca, ..] = certificates(other.path(), "other");
    let e = PostgresStore::connect(options(cluster.url("verify-full"), Some(wrong_ca)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StorageUnavailable, "{}", e.chain());
    assert!(e.chain().contains("certificate"), "{}", e.chain());

    // Without TLS the server refuses.
    let e = PostgresStore::connect(options(cluster.url("disable"), None))
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::StorageUnavailable | ErrorKind::Storage),
        "{}",
        e.chain()
    );
}
