//! The SQL lines of the gateway's `log.sql`: a statement's text, never its
//! parameters; what saves data at info, what only reads at debug.

/// Logs one SQL statement about to run (the gateway's `log.sql`): its text
/// only, never parameter values. A statement that saves data, or a
/// transaction's bracket, at info: the original backend logged "SQL
/// statements when saving data". A read at debug, so a refused or
/// read-only request costs app.log no SQL at the default level.
pub(crate) fn log_sql(log: &slog::Logger, sql: &str) {
    if reads_only(sql) {
        slog::debug!(log, "sql"; "statement" => sql);
    } else {
        slog::info!(log, "sql"; "statement" => sql);
    }
}

/// Logs the statements of one transaction, in order (see [`log_sql`]):
/// its brackets (`BEGIN`, `COMMIT`, savepoints) go with what it did, at
/// info when it saved data and at debug when it only read.
pub(crate) fn log_transaction<'a>(
    log: &slog::Logger,
    statements: impl IntoIterator<Item = &'a str> + Clone,
) {
    let wrote = statements
        .clone()
        .into_iter()
        .any(|sql| !reads_only(sql) && !brackets(sql));
    for sql in statements {
        if wrote && !reads_only(sql) {
            slog::info!(log, "sql"; "statement" => sql);
        } else {
            slog::debug!(log, "sql"; "statement" => sql);
        }
    }
}

/// Whether `sql` starts with `keyword`, ignoring case.
fn starts_with_word(sql: &str, keyword: &str) -> bool {
    sql.trim_start()
        .get(..keyword.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(keyword))
}

/// Whether `sql` only reads: a `SELECT` (a `WITH` may hide a write, so it
/// counts as one).
fn reads_only(sql: &str) -> bool {
    starts_with_word(sql, "SELECT")
}

/// Whether `sql` opens, closes or marks a transaction.
fn brackets(sql: &str) -> bool {
    ["BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"]
        .iter()
        .any(|k| starts_with_word(sql, k))
}

#[cfg(test)]
mod tests {
    use super::{brackets, reads_only};

    #[test]
    fn statements_are_told_apart_by_what_they_do() {
        for read in ["SELECT 1", "  select id FROM sessions"] {
            assert!(reads_only(read) && !brackets(read), "{read}");
        }
        for write in [
            "INSERT INTO turns VALUES (?1)",
            "WITH t AS (UPDATE sessions SET x = 1 RETURNING id) SELECT * FROM t",
            "PRAGMA journal_mode = WAL",
        ] {
            assert!(!reads_only(write) && !brackets(write), "{write}");
        }
        for bracket in [
            "BEGIN IMMEDIATE",
            "COMMIT",
            "SAVEPOINT job",
            "RELEASE job",
            "ROLLBACK",
        ] {
            assert!(brackets(bracket) && !reads_only(bracket), "{bracket}");
        }
    }
}
