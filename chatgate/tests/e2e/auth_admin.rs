//! docs/access-control.md, review: `GET /admin/feedback` (filters, cursor paging) and
//! `GET /admin/feedback/export` (JSONL and CSV, exact bytes, streamed) for
//! admins only; and, through the built binary, an export of 10,000 rows
//! whose memory does not grow with the table.

use std::path::Path;

use chatcore::{Feedback, Rating, Session, SessionId};
use chatcore::{FeedbackStore, SessionStore};
use chatgate::config::AuthMode;
use chrono::{DateTime, Utc};
use hyper::Method;
use serde_json::{json, Value};

use crate::credentials::*;
use crate::process::Server;
use crate::support::*;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("a time")
        .with_timezone(&Utc)
}

fn feedback(session: &str, text: &str, rating: Option<i64>, when: &str) -> Feedback {
    Feedback {
        session_id: SessionId::parse(session).expect("a session id"),
        text: text.to_owned(),
        rating: rating.map(|r| Rating::new(r).expect("1 to 5")),
        created_at: at(when),
    }
}

/// `(id, session_id, feedback, rating, created_at)` of one review page,
/// and its cursor.
async fn review(gw: &Gateway, bearer: &str, query: &str) -> (Vec<Value>, Option<String>) {
    let r = call(
        gw.addr,
        Method::GET,
        &format!("/admin/feedback{query}"),
        Some(bearer),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{query}: {}", r.text());
    let v = r.json();
    let rows = v["feedback"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .clone();
    (rows, v["next_cursor"].as_str().map(str::to_owned))
}

fn texts(rows: &[Value]) -> Vec<&str> {
    rows.iter()
        .map(|r| r["feedback"].as_str().unwrap())
        .collect()
}

/// A `required`-mode gateway holding four feedback rows at chosen times
/// on two sessions (a key's and a JWT's), written as the gateway would
/// store them; with a user and an admin, each as a key and a JWT.
struct Review {
    gw: Gateway,
    user: String,
    user_jwt: String,
    admin: String,
    admin_jwt: String,
    s1: String,
    s2: String,
}

impl Review {
    async fn start() -> Review {
        let gw = gateway(AuthMode::Required, |_| {}).await;
        let (user, _) = create_key(&gw, "user", false).await;
        let (admin, _) = create_key(&gw, "admin", true).await;
        let user_jwt = user_jwt("carol");
        let admin_jwt = admin_jwt("ops");
        let s1 = session_as(gw.addr, Some(&user)).await;
        let s2 = session_as(gw.addr, Some(&user_jwt)).await;
        let side = side_core(&gw).await;
        let rows = [
            feedback(&s1, "plain", Some(5), "2023-10-10T12:00:00Z"),
            feedback(&s1, "a, \"b\"\nc", None, "2023-10-10T12:00:01Z"),
            feedback(&s2, "=HYPERLINK(\"x\")", Some(1), "2023-10-10T13:00:00Z"),
            feedback(&s2, "-1+2, @home\r\nbye", Some(5), "2023-10-11T00:00:00Z"),
        ];
        for f in &rows {
            side.store().insert_feedback(f).await.expect("insert");
        }
        Review {
            gw,
            user,
            user_jwt,
            admin,
            admin_jwt,
            s1,
            s2,
        }
    }

    /// Every row as the admin reviews it (checked by
    /// `review_lists_every_row_oldest_first_with_the_documented_fields`).
    async fn all(&self) -> Vec<Value> {
        review(&self.gw, &self.admin, "").await.0
    }

    /// The ids of [`Review::all`], in order.
    async fn ids(&self) -> Vec<i64> {
        self.all()
            .await
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect()
    }

    /// `GET path` as the admin key, asserting 200.
    async fn export(&self, path: &str) -> Resp {
        let r = call(self.gw.addr, Method::GET, path, Some(&self.admin), None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_and_export_are_403_for_non_admins_and_leak_nothing() {
    let t = Review::start().await;
    for bearer in [&t.user, &t.user_jwt] {
        for path in [
            "/admin/feedback",
            "/admin/feedback?session_id=x",
            "/admin/feedback/export",
            "/admin/feedback/export?format=csv",
        ] {
            let r = call(t.gw.addr, Method::GET, path, Some(bearer), None).await;
            assert_eq!(r.status, 403, "{path}: {}", r.text());
            assert!(r.json()["detail"].is_string());
            assert!(!r.text().contains("plain"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_lists_every_row_oldest_first_with_the_documented_fields() {
    let t = Review::start().await;
    let (all, cursor) = review(&t.gw, &t.admin, "").await;
    assert_eq!(cursor, None);
    assert_eq!(
        texts(&all),
        [
            "plain",
            "a, \"b\"\nc",
            "=HYPERLINK(\"x\")",
            "-1+2, @home\r\nbye"
        ]
    );
    let ids: Vec<i64> = all.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(
        all[0],
        json!({"id": ids[0], "session_id": t.s1, "feedback": "plain", "rating": 5,
               "created_at": "2023-10-10T12:00:00Z"})
    );
    assert_eq!(all[1]["rating"], Value::Null);
    // An admin JWT sees the same.
    assert_eq!(review(&t.gw, &t.admin_jwt, "").await.0, all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_filters_by_since_until_session_and_rating() {
    let t = Review::start().await;
    let all = t.all().await;
    // since is inclusive, until exclusive.
    let cases: Vec<(String, Vec<usize>)> = vec![
        ("?since=2023-10-10T12:00:01Z".into(), vec![1, 2, 3]),
        ("?since=2023-10-10T14:00:01%2B02:00".into(), vec![1, 2, 3]),
        ("?until=2023-10-10T13:00:00Z".into(), vec![0, 1]),
        (
            "?since=2023-10-10T12:00:01Z&until=2023-10-10T13:00:01Z".into(),
            vec![1, 2],
        ),
        (format!("?session_id={}", t.s2), vec![2, 3]),
        ("?rating=5".into(), vec![0, 3]),
        ("?rating=1".into(), vec![2]),
        (format!("?rating=5&session_id={}", t.s1), vec![0]),
        ("?since=2024-01-01T00:00:00Z".into(), vec![]),
    ];
    for (query, want) in cases {
        let (got, _) = review(&t.gw, &t.admin, &query).await;
        let want: Vec<Value> = want.iter().map(|i| all[*i].clone()).collect();
        assert_eq!(got, want, "{query}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_pages_with_limit_and_next_cursor() {
    let t = Review::start().await;
    let all = t.all().await;
    let (page, cursor) = review(&t.gw, &t.admin, "?limit=3").await;
    assert_eq!(page, all[..3]);
    let cursor = cursor.expect("a cursor after a full page");
    let (rest, end) = review(&t.gw, &t.admin, &format!("?limit=3&after={cursor}")).await;
    assert_eq!(rest, all[3..]);
    assert_eq!(end, None);
    // Paging a filtered selection.
    let (page, cursor) = review(&t.gw, &t.admin, "?rating=5&limit=1").await;
    assert_eq!(page, all[..1]);
    let (page, _) = review(
        &t.gw,
        &t.admin,
        &format!("?rating=5&limit=1&after={}", cursor.unwrap()),
    )
    .await;
    assert_eq!(page, all[3..4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_and_export_refuse_bad_parameters_with_422() {
    let t = Review::start().await;
    // Each names the parameter.
    for (query, param) in [
        ("?limit=0", "limit"),
        ("?limit=1001", "limit"),
        ("?rating=6", "rating"),
        ("?since=yesterday", "since"),
        ("?session_id=nope", "session_id"),
        ("?after=-3", "after"),
    ] {
        let r = call(
            t.gw.addr,
            Method::GET,
            &format!("/admin/feedback{query}"),
            Some(&t.admin),
            None,
        )
        .await;
        assert_eq!(r.status, 422, "{query}: {}", r.text());
        assert!(r.text().contains(param), "{query}: {}", r.text());
    }
    let r = call(
        t.gw.addr,
        Method::GET,
        "/admin/feedback/export?format=xml",
        Some(&t.admin),
        None,
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_export_is_every_row_as_reviewed_one_per_line_and_the_default() {
    let t = Review::start().await;
    let all = t.all().await;
    let r = t.export("/admin/feedback/export?format=jsonl").await;
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/x-ndjson"));
    let text = r.text();
    assert!(text.ends_with('\n'), "{text:?}");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines, all);
    // The default format is JSONL.
    let r = call(
        t.gw.addr,
        Method::GET,
        "/admin/feedback/export",
        Some(&t.admin_jwt),
        None,
    )
    .await;
    assert_eq!(r.text(), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_export_is_exact_quoted_and_defuses_formulas() {
    let t = Review::start().await;
    let (s1, s2) = (&t.s1, &t.s2);
    let ids = t.ids().await;
    let r = t.export("/admin/feedback/export?format=csv").await;
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/csv"));
    assert!(r
        .header("content-disposition")
        .unwrap_or("")
        .contains("attachment"));
    // Commas, quotes and line breaks quoted; a leading = + - @ defused
    // with a quote.
    let want = format!(
        "id,session_id,created_at,rating,feedback\r\n\
         {},{s1},2023-10-10T12:00:00Z,5,plain\r\n\
         {},{s1},2023-10-10T12:00:01Z,,\"a, \"\"b\"\"\nc\"\r\n\
         {},{s2},2023-10-10T13:00:00Z,1,\"'=HYPERLINK(\"\"x\"\")\"\r\n\
         {},{s2},2023-10-11T00:00:00Z,5,\"'-1+2, @home\r\nbye\"\r\n",
        ids[0], ids[1], ids[2], ids[3]
    );
    assert_eq!(r.text(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_export_holds_the_matching_rows_only() {
    let t = Review::start().await;
    let s1 = &t.s1;
    let ids = t.ids().await;
    let r = t
        .export(&format!(
            "/admin/feedback/export?format=csv&session_id={s1}&rating=5"
        ))
        .await;
    assert_eq!(
        r.text(),
        format!(
            "id,session_id,created_at,rating,feedback\r\n{},{s1},2023-10-10T12:00:00Z,5,plain\r\n",
            ids[0]
        )
    );
    // An empty selection is the header alone (CSV) or nothing (JSONL).
    let r = t.export("/admin/feedback/export?format=csv&rating=2").await;
    assert_eq!(r.text(), "id,session_id,created_at,rating,feedback\r\n");
    let r = t.export("/admin/feedback/export?rating=2").await;
    assert_eq!(r.text(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_sent_over_http_shows_up_in_review_with_its_session() {
    let t = Review::start().await;
    feedback_as(t.gw.addr, Some(&t.user), &t.s1, "from http", Some(3))
        .await
        .assert_error(200, "Feedback received");
    let (got, _) = review(&t.gw, &t.admin, "?rating=3").await;
    assert_eq!(texts(&got), ["from http"]);
    assert_eq!(got[0]["session_id"], t.s1.as_str());
    assert_timestamp(&got[0]["created_at"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_access_control_review_and_listing_do_not_exist() {
    let gw = Gateway::start().await;
    let id = new_session(gw.addr).await;
    assert_eq!(
        post(
            gw.addr,
            "/feedback/",
            &json!({"session_id": id, "feedback": "x"}).to_string()
        )
        .await
        .status,
        200
    );
    for path in [
        "/sessions",
        "/sessions/",
        "/admin/feedback",
        "/admin/feedback/",
        "/admin/feedback/export",
        "/admin/feedback/export?format=csv",
    ] {
        get(gw.addr, path).await.assert_error(404, "Not Found");
        // A credential changes nothing: no caller is known in `none` mode.
        let r = call(gw.addr, Method::GET, path, Some(&admin_jwt("ops")), None).await;
        r.assert_error(404, "Not Found");
    }
    // Sessions stay open to anyone in this mode.
    let r = get(gw.addr, &format!("/session/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json().get("session_token").is_none());
}

/// `VmHWM` (peak resident memory) of process `pid`, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM in kB");
    kb * 1024
}

/// Fills a fresh SQLite file: a session with `big` rows of ~3 KB feedback
/// and one with `small` rows; returns their ids.
async fn fill(db: &Path, big: usize, small: usize) -> (SessionId, SessionId) {
    let store = std::sync::Arc::new(chatcore::SqliteStore::open(db).expect("open"));
    let now = Utc::now();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = SessionId::new_v4();
        store
            .insert_session(&Session {
                id,
                created_at: now,
                last_active: now,
                system_prompt: None,
                metadata: None,
                owner: Some("loader".into()),
                target: None,
            })
            .await
            .expect("insert session");
        ids.push(id);
    }
    let pad = "x".repeat(3000);
    let mut tasks = tokio::task::JoinSet::new();
    for (session, n) in [(ids[0], big), (ids[1], small)] {
        for chunk in 0..n.div_ceil(500) {
            let store = std::sync::Arc::clone(&store);
            let pad = pad.clone();
            tasks.spawn(async move {
                for i in chunk * 500..((chunk + 1) * 500).min(n) {
                    let f = Feedback {
                        session_id: session,
                        text: format!("row {i} {pad}"),
                        rating: Some(Rating::new((i % 5 + 1) as i64).expect("rating")),
                        created_at: now,
                    };
                    store.insert_feedback(&f).await.expect("insert feedback");
                }
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("insert task");
    }
    (ids[0], ids[1])
}

/// GETs an export as `bearer` from the subprocess and checks it is
/// `rows` JSON lines about `session`, ids ascending, each row once.
async fn export_lines(server: &Server, bearer: &str, session: SessionId, rows: usize) {
    let r = call(
        server.addr,
        Method::GET,
        &format!("/admin/feedback/export?format=jsonl&session_id={session}"),
        Some(bearer),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let mut last = 0;
    let mut count = 0;
    let mut seen = vec![false; rows];
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {count}: {e}"));
        assert_eq!(v["session_id"], session.to_string());
        let id = v["id"].as_i64().expect("id");
        assert!(id > last, "ids ascend");
        last = id;
        // Rows were inserted in parallel: each number once, in any order.
        let n: usize = v["feedback"]
            .as_str()
            .and_then(|t| t.strip_prefix("row "))
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("line {count} is not a loaded row"));
        assert!(!seen[n], "row {n} exported twice");
        seen[n] = true;
        count += 1;
    }
    assert_eq!(count, rows);
    assert!(seen.iter().all(|s| *s), "a row is missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_10000_rows_streams_in_bounded_memory() {
    const BIG: usize = 10_000;
    const SMALL: usize = 1_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("chatgate.db");
    let (big, small) = fill(&db, BIG, SMALL).await;
    let env = [
        ("SECRET_KEY", SECRET),
        ("CHATGATE_AUTH__MODE", "required"),
        // No SQL lines: 11,000 of them would only slow the run.
        ("CHATGATE_LOG__SQL", "false"),
    ];
    let server = Server::start_with_env(dir.path(), &env).await;
    let admin = admin_jwt("ops");
    let pid = server.child.id();

    // Warm up (connections, statement caches, first pages), then measure
    // how far each export lifts the peak.
    export_lines(&server, &admin, small, SMALL).await;
    let before = peak_rss(pid);
    export_lines(&server, &admin, small, SMALL).await;
    let after_small = peak_rss(pid);
    export_lines(&server, &admin, big, BIG).await;
    let after_big = peak_rss(pid);
    let grew_small = after_small - before;
    let grew_big = after_big - after_small;
    // The 10,000-row export is about 30 MB of JSON: held in memory at
    // once, it would lift the peak by at least that much.
    let slack = 8 << 20;
    assert!(
        grew_big <= 2 * grew_small + slack,
        "the 10k export lifted peak RSS by {} KiB (the 1k one by {} KiB): \
         the export is not streamed",
        grew_big >> 10,
        grew_small >> 10
    );

    // And the rows are all there, CSV included (a header + one line each:
    // no row here holds a line break).
    let r = call(
        server.addr,
        Method::GET,
        &format!("/admin/feedback/export?format=csv&session_id={big}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text().matches("\r\n").count(), BIG + 1);
}
