//! Operator commands that act on the storage backend directly, for
//! operators without HTTP access: `chatgate keys create|list|revoke` and
//! `chatgate feedback export`. Keys live in the storage backend, so a key
//! made or revoked here is seen by every gateway sharing it.

use std::io::Write;
use std::process::ExitCode;

use chatcore::{format_time, Caller, ChatCore, FeedbackFilter, Principal, SessionId};
use chrono::{DateTime, Utc};

use crate::handlers::admin::{write_rows, Format, CSV_HEADER};

/// `chatgate keys …`
#[derive(Debug, PartialEq, Eq)]
pub enum KeysCmd {
    /// Make a key; print it once.
    Create {
        /// Its name.
        name: String,
        /// Whether it grants admin.
        admin: bool,
    },
    /// Every key, without secrets.
    List,
    /// Revoke one.
    Revoke(String),
}

/// `chatgate feedback export …`
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExportCmd {
    /// Which rows.
    pub filter: FeedbackFilter,
    /// jsonl (default) or csv.
    pub csv: bool,
}

fn time(flag: &str, v: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("{flag} needs an RFC 3339 time such as 2023-10-10T12:00:00Z"))
}

/// Parses the words after `keys`.
///
/// # Errors
/// A sentence for the operator.
pub fn parse_keys(args: &mut dyn Iterator<Item = String>) -> Result<KeysCmd, String> {
    match args.next().as_deref() {
        Some("create") => {
            let (mut name, mut admin) = (None, false);
            while let Some(a) = args.next() {
                match a.as_str() {
                    "--name" => name = Some(args.next().ok_or("--name needs a value")?),
                    "--admin" => admin = true,
                    other => return Err(format!("keys create: unknown argument {other:?}")),
                }
            }
            let name = name.ok_or("keys create needs --name NAME")?;
            Ok(KeysCmd::Create { name, admin })
        }
        Some("list") => Ok(KeysCmd::List),
        Some("revoke") => Ok(KeysCmd::Revoke(
            args.next().ok_or("keys revoke needs a key id")?,
        )),
        _ => Err("keys needs create --name NAME [--admin], list, or revoke ID".into()),
    }
}

/// Parses the words after `feedback`.
///
/// # Errors
/// A sentence for the operator.
pub fn parse_export(args: &mut dyn Iterator<Item = String>) -> Result<ExportCmd, String> {
    if args.next().as_deref() != Some("export") {
        return Err("feedback needs export [--since T] [--until T] [--session ID] [--rating N] [--format jsonl|csv]".into());
    }
    let mut cmd = ExportCmd::default();
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--since" => cmd.filter.since = Some(time("--since", &value()?)?),
            "--until" => cmd.filter.until = Some(time("--until", &value()?)?),
            "--session" => {
                cmd.filter.session_id =
                    Some(SessionId::parse(&value()?).map_err(|_| "--session needs a session id")?);
            }
            "--rating" => {
                cmd.filter.rating = Some(
                    value()?
                        .parse::<u8>()
                        .ok()
                        .filter(|r| (1..=5).contains(r))
                        .ok_or("--rating needs 1 to 5")?,
                );
            }
            "--format" => {
                cmd.csv = match Format::parse(&value()?) {
                    Some(Format::Csv) => true,
                    Some(Format::Jsonl) => false,
                    None => return Err("--format needs jsonl or csv".into()),
                }
            }
            other => return Err(format!("feedback export: unknown argument {other:?}")),
        }
    }
    Ok(cmd)
}

/// Runs a `keys` command, printing to stdout.
pub async fn keys(core: &ChatCore, cmd: KeysCmd) -> ExitCode {
    let keys = core.keys();
    let outcome = match cmd {
        KeysCmd::Create { name, admin } => keys.create(&name, admin).await.map(|made| {
            println!("{}", made.secret);
            eprintln!(
                "key {} ({}{}) created: the line above is the only time it is shown",
                made.key.id,
                made.key.name,
                if admin { ", admin" } else { "" }
            );
            true
        }),
        KeysCmd::List => keys.list().await.map(|all| {
            println!("id\tname\tadmin\tcreated_at\trevoked_at");
            for k in all {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.name,
                    k.admin,
                    format_time(&k.created_at),
                    k.revoked_at
                        .map(|t| format_time(&t))
                        .unwrap_or_else(|| "-".into())
                );
            }
            true
        }),
        KeysCmd::Revoke(id) => keys.revoke(&id).await.inspect(|found| {
            if *found {
                println!("revoked {id}");
            } else {
                eprintln!("chatgate: no live key {id}");
            }
        }),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chatgate: {}", e.chain());
            ExitCode::from(1)
        }
    }
}

/// Writes the selected feedback to stdout, a page at a time.
pub async fn export(core: &ChatCore, cmd: ExportCmd) -> ExitCode {
    // The operator at the console is the admin.
    let scoped = core.as_caller(Caller::Principal(Principal {
        id: "operator".into(),
        admin: true,
    }));
    let format = if cmd.csv { Format::Csv } else { Format::Jsonl };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut buf = Vec::new();
    if cmd.csv {
        buf.extend_from_slice(CSV_HEADER.as_bytes());
    }
    let mut after = None;
    loop {
        let rows = match scoped.review_feedback(&cmd.filter, after, 500).await {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!("chatgate: export failed: {}", e.chain());
                return ExitCode::from(1);
            }
        };
        write_rows(&rows, format, &mut buf);
        if out.write_all(&buf).is_err() {
            return ExitCode::from(1);
        }
        buf.clear();
        match rows.last() {
            Some((seq, _)) => after = Some(*seq),
            None => break,
        }
    }
    if out.flush().is_err() {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn commands_parse() {
        assert_eq!(
            parse_keys(&mut words("create --name ci --admin").into_iter()).unwrap(),
            KeysCmd::Create {
                name: "ci".into(),
                admin: true
            }
        );
        assert!(parse_keys(&mut words("create").into_iter()).is_err());
        assert_eq!(
            parse_keys(&mut words("revoke abc").into_iter()).unwrap(),
            KeysCmd::Revoke("abc".into())
        );
        let e = parse_export(
            &mut words("export --format csv --rating 5 --since 2023-10-10T12:00:00Z").into_iter(),
        )
        .unwrap();
        assert!(e.csv);
        assert_eq!(e.filter.rating, Some(5));
        assert!(e.filter.since.is_some());
        assert!(parse_export(&mut words("export --rating 9").into_iter()).is_err());
    }
}
