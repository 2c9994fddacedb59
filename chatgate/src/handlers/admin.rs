//! Feedback review, for admins: `GET /admin/feedback` (filtered, a page at
//! a time) and `GET /admin/feedback/export?format=jsonl|csv` (the whole
//! selection, streamed a page at a time, so the table is never in memory
//! at once). `chatgate feedback export` writes the same formats.

use std::sync::Arc;

use bytes::Bytes;
use chatcore::{format_time, Caller, ChatCore, Feedback, FeedbackFilter, SessionId};
use chrono::{DateTime, Utc};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_TYPE};
use hyper::Response;
use serde::Serialize;

use crate::api::{bad_query, parse_listing};
use crate::body::{json, Body};
use crate::error::ApiError;
use crate::handlers::HandlerResult;
use crate::App;

/// Most rows one page of `GET /admin/feedback` holds.
const MAX_PAGE: usize = 1000;
/// Rows an export reads per step.
const EXPORT_PAGE: usize = 500;

/// An export's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// RFC 4180 CSV with a header row.
    Csv,
}

impl Format {
    /// Reads `jsonl` or `csv`.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "jsonl" => Some(Format::Jsonl),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
}

/// One piece of feedback as review shows it.
#[derive(Debug, Serialize)]
pub struct FeedbackRow<'a> {
    /// Its position: pass as `after` to continue after it.
    pub id: i64,
    /// The session it is about.
    pub session_id: String,
    /// What the user said.
    pub feedback: &'a str,
    /// 1 to 5, when given.
    pub rating: Option<u8>,
    /// When it was received.
    pub created_at: String,
}

impl<'a> FeedbackRow<'a> {
    fn new(seq: i64, f: &'a Feedback) -> Self {
        FeedbackRow {
            id: seq,
            session_id: f.session_id.to_string(),
            feedback: &f.text,
            rating: f.rating.map(|r| r.get()),
            created_at: format_time(&f.created_at),
        }
    }
}

#[derive(Serialize)]
struct PageOut<'a> {
    feedback: Vec<FeedbackRow<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// The CSV header row.
pub const CSV_HEADER: &str = "id,session_id,created_at,rating,feedback\r\n";

/// A CSV field: quoted when it holds a comma, quote or line break, and
/// defused when a spreadsheet would read it as a formula (OWASP's advice:
/// a leading `'` before `=`, `+`, `-`, `@`, tab or carriage return).
fn csv_field(out: &mut Vec<u8>, text: &str) {
    let formula = text
        .chars()
        .next()
        .is_some_and(|c| matches!(c, '=' | '+' | '-' | '@' | '\t' | '\r'));
    let quote = formula || text.contains([',', '"', '\n', '\r']);
    if quote {
        out.push(b'"');
    }
    if formula {
        out.push(b'\'');
    }
    for b in text.bytes() {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    if quote {
        out.push(b'"');
    }
}

/// Appends `rows` to `out` in `format`.
pub fn write_rows(rows: &[(i64, Feedback)], format: Format, out: &mut Vec<u8>) {
    for (seq, f) in rows {
        let row = FeedbackRow::new(*seq, f);
        match format {
            Format::Jsonl => {
                let _ = serde_json::to_writer(&mut *out, &row);
                out.push(b'\n');
            }
            Format::Csv => {
                out.extend_from_slice(
                    format!(
                        "{},{},{},{},",
                        row.id,
                        row.session_id,
                        row.created_at,
                        row.rating.map(|r| r.to_string()).unwrap_or_default()
                    )
                    .as_bytes(),
                );
                csv_field(out, row.feedback);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

fn time(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    let decoded = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
    DateTime::parse_from_rfc3339(&decoded)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            bad_query(
                name,
                "Input should be an RFC 3339 time such as 2023-10-10T12:00:00Z",
            )
        })
}

/// The filter, page size, cursor and format of a review query.
fn parse(
    query: Option<&str>,
    max: usize,
) -> Result<(FeedbackFilter, usize, Option<i64>, Format), ApiError> {
    let mut filter = FeedbackFilter::default();
    let mut format = Format::Jsonl;
    let (limit, after) = parse_listing(query, max, |key, value| {
        match key {
            "since" => filter.since = Some(time("since", value)?),
            "until" => filter.until = Some(time("until", value)?),
            "session_id" => {
                filter.session_id = Some(SessionId::parse(value).map_err(|_| {
                    bad_query("session_id", "Input should be a session id (a UUID)")
                })?);
            }
            "rating" => {
                filter.rating = Some(
                    value
                        .parse::<u8>()
                        .ok()
                        .filter(|r| (1..=5).contains(r))
                        .ok_or_else(|| {
                            bad_query("rating", "Input should be an integer from 1 to 5")
                        })?,
                );
            }
            "format" => {
                format = Format::parse(value)
                    .ok_or_else(|| bad_query("format", "Input should be 'jsonl' or 'csv'"))?;
            }
            _ => {}
        }
        Ok(())
    })?;
    let after =
        match after {
            Some(v) => Some(v.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                bad_query("after", "Input should be a cursor from an earlier page")
            })?),
            None => None,
        };
    Ok((filter, limit, after, format))
}

/// `GET /admin/feedback`.
pub async fn feedback(app: &Arc<App>, caller: Caller, query: Option<&str>) -> HandlerResult {
    let (filter, limit, after, _) = parse(query, MAX_PAGE)?;
    let mut rows = app
        .core
        .as_caller(caller)
        .review_feedback(&filter, after, limit + 1)
        .await?;
    let next_cursor = crate::api::next_page(&mut rows, limit, |(seq, _)| seq.to_string());
    let mut resp = json(&PageOut {
        feedback: rows
            .iter()
            .map(|(seq, f)| FeedbackRow::new(*seq, f))
            .collect(),
        next_cursor,
    });
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    Ok(resp)
}

/// An export in progress, read a page per body frame.
struct Export {
    core: ChatCore,
    caller: Caller,
    filter: FeedbackFilter,
    after: Option<i64>,
    format: Format,
    started: bool,
}

/// `GET /admin/feedback/export`: the same filters, every matching row.
/// The caller's admin scope was checked by the router; each page is read
/// through chatcore, which checks it again.
pub fn export(app: &Arc<App>, caller: Caller, query: Option<&str>) -> HandlerResult {
    let (filter, _, after, format) = parse(query, usize::MAX)?;
    let state = Export {
        core: app.core.clone(),
        caller,
        filter,
        after,
        format,
        started: false,
    };
    let body = Body::unfold(state, |mut ex| async move {
        let scoped = ex.core.as_caller(ex.caller.clone());
        // A failure mid-export cannot change the status any more: the
        // body ends early, which a reader sees as a truncated file.
        let rows = scoped
            .review_feedback(&ex.filter, ex.after, EXPORT_PAGE)
            .await
            .ok()?;
        let mut out = Vec::with_capacity(rows.len() * 160 + CSV_HEADER.len());
        if !ex.started && ex.format == Format::Csv {
            out.extend_from_slice(CSV_HEADER.as_bytes());
        }
        if rows.is_empty() && ex.started {
            return None;
        }
        ex.started = true;
        ex.after = rows.last().map(|(seq, _)| *seq).or(ex.after);
        write_rows(&rows, ex.format, &mut out);
        if out.is_empty() {
            return None;
        }
        Some((Bytes::from(out), ex))
    });
    let mut resp = Response::new(body);
    let (kind, name) = match format {
        Format::Jsonl => (
            "application/x-ndjson",
            "attachment; filename=\"feedback.jsonl\"",
        ),
        Format::Csv => (
            "text/csv; charset=utf-8",
            "attachment; filename=\"feedback.csv\"",
        ),
    };
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(CONTENT_DISPOSITION, HeaderValue::from_static(name));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses() {
        let mut out = Vec::new();
        csv_field(&mut out, "plain");
        out.push(b'|');
        csv_field(&mut out, "a, \"b\"\nc");
        out.push(b'|');
        csv_field(&mut out, "=HYPERLINK(\"x\")");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "plain|\"a, \"\"b\"\"\nc\"|\"'=HYPERLINK(\"\"x\"\")\""
        );
    }
}
