//! Several upstreams (docs/routing.md): weighted targets, failover to the
//! next target and the fallbacks on 429 (with `Retry-After`), 5xx, a
//! refused connection and a stall, passive health with ejection and one
//! trial, no switch once a stream has begun, no fallback for the request's
//! own fault, and session affinity that keeps each provider's prompt cache
//! hitting. Three mocks, each its own provider with its own faults and its
//! own prompt cache, over real loopback sockets.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chatgate::config::{Config, ModelSection, TargetSection, UpstreamAuth, UpstreamSection};
use chatmock::{MockOpenAi, Reply, StreamFault, StreamScript};
use serde_json::json;

use crate::support::*;

const COMPLETIONS: &str = "/v1/chat/completions";

/// An upstream section pointing at `url`, with no key.
fn upstream(url: String) -> UpstreamSection {
    UpstreamSection {
        base_url: url,
        auth: UpstreamAuth::None,
        ..UpstreamSection::default()
    }
}

fn target(upstream: &str, model: &str, weight: u32) -> TargetSection {
    TargetSection {
        upstream: upstream.into(),
        model: model.into(),
        weight,
    }
}

/// Three providers, `a`, `b` and `c`, and the gateway in front of them:
/// model `m` is `a` (weight 3) and `b` (weight 1), falling back to `c`;
/// model `solo` is `a` alone, falling back to `b`; model `even` is `a` and
/// `b` at equal weight. `/chat/` uses `m` unless `edit` says otherwise.
struct Providers {
    gw: Gateway,
    a: MockOpenAi,
    b: MockOpenAi,
    c: MockOpenAi,
}

impl Providers {
    async fn start(edit: impl FnOnce(&mut Config)) -> Providers {
        let (a, b, c) = (
            MockOpenAi::start().await,
            MockOpenAi::start().await,
            MockOpenAi::start().await,
        );
        let urls = [a.base_url(), b.base_url(), c.base_url()];
        let gw = Gateway::start_with(|cfg| {
            one_address_is_many_clients(cfg);
            for (name, url) in ["a", "b", "c"].iter().zip(urls) {
                cfg.upstreams.insert((*name).into(), upstream(url));
            }
            let model = |targets, fallbacks| ModelSection { targets, fallbacks };
            cfg.models = BTreeMap::from([
                (
                    "m".to_owned(),
                    model(
                        vec![target("a", "model-a", 3), target("b", "model-b", 1)],
                        vec![target("c", "model-c", 1)],
                    ),
                ),
                (
                    "solo".to_owned(),
                    model(
                        vec![target("a", "model-a", 1)],
                        vec![target("b", "model-b", 1)],
                    ),
                ),
                (
                    "even".to_owned(),
                    model(
                        vec![target("a", "model-a", 1), target("b", "model-b", 1)],
                        Vec::new(),
                    ),
                ),
            ]);
            cfg.openai.model = "m".into();
            cfg.rate_limit.messages_per_minute = std::num::NonZeroU32::new(1000).unwrap();
            edit(cfg);
        })
        .await;
        Providers { gw, a, b, c }
    }

    fn counts(&self) -> [u64; 3] {
        [
            self.a.request_count(),
            self.b.request_count(),
            self.c.request_count(),
        ]
    }
}

/// A stateless `/v1` call to `model`.
async fn ask(gw: &Gateway, model: &str, text: &str) -> Resp {
    let body = json!({"model": model, "messages": [{"role": "user", "content": text}]});
    post_with(gw.addr, COMPLETIONS, &[], &body.to_string()).await
}

/// Runs `calls` eight at a time on their own tasks; returns every answer.
async fn at_once<F>(calls: Vec<F>) -> Vec<Resp>
where
    F: std::future::Future<Output = Resp> + Send + 'static,
{
    let mut out = Vec::with_capacity(calls.len());
    let mut calls = calls.into_iter();
    loop {
        let mut set = tokio::task::JoinSet::new();
        for call in calls.by_ref().take(8) {
            set.spawn(call);
        }
        if set.is_empty() {
            return out;
        }
        while let Some(r) = set.join_next().await {
            out.push(r.expect("a call's task"));
        }
    }
}

/// `n` stateless calls to `model`, eight at a time; every one must succeed.
async fn ask_many(gw: &Gateway, model: &str, n: usize) {
    let addr = gw.addr;
    let calls = (0..n)
        .map(|i| {
            let body = json!({"model": model, "messages": [{"role": "user", "content": format!("call {i}")}]});
            async move { post_with(addr, COMPLETIONS, &[], &body.to_string()).await }
        })
        .collect();
    for r in at_once(calls).await {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["model"], model, "the client's name comes back");
    }
}

/// Waits until the log file holds `n` lines that name `upstream` (log
/// lines are written off the request path).
async fn logged(gw: &Gateway, upstream: &str, n: usize) {
    let path = gw.log_file.clone();
    let count = move || {
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("request") && has_field(l, "upstream", upstream))
            .count()
    };
    wait_until(Duration::from_secs(10), "the request lines", || {
        let c = count();
        async move { c >= n }
    })
    .await;
    assert_eq!(count(), n, "request lines naming {upstream}");
}

/// A sample of `/metrics`.
async fn metric(gw: &Gateway, series: &str) -> Option<f64> {
    let text = get(gw.addr, "/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_stateless_calls_three_to_one() {
    let p = Providers::start(|_| {}).await;
    ask_many(&p.gw, "m", 400).await;
    let [a, b, c] = p.counts();
    assert_eq!(a + b, 400, "one call each, none retried");
    assert!((270..=330).contains(&a), "a got {a} of 400 (weight 3 of 4)");
    assert!((70..=130).contains(&b), "b got {b} of 400 (weight 1 of 4)");
    assert_eq!(c, 0, "the fallback waits for failures");
    // Each upstream was sent the model name it knows.
    assert_eq!(p.a.recorded()[0].body["model"], "model-a");
    assert_eq!(p.b.recorded()[0].body["model"], "model-b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_primary_rests_for_its_retry_after() {
    let p = Providers::start(|_| {}).await;
    p.a.fail_all(Some(Reply::Status {
        status: 429,
        retry_after: Some(5),
    }));
    // The first call meets the 429 and moves on to b; a is then left
    // alone until its Retry-After has passed (the calls take far less
    // than 5 s).
    let r = ask(&p.gw, "solo", "first").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(p.counts(), [1, 1, 0]);
    ask_many(&p.gw, "solo", 40).await;
    ask_many(&p.gw, "m", 40).await;
    assert_eq!(p.a.request_count(), 1, "a rests after its 429");
    assert_eq!(p.b.request_count() + p.c.request_count(), 81);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_a_refused_connection_and_a_stall_fail_over() {
    // A 500 on the primary: the next target answers.
    let p = Providers::start(|_| {}).await;
    p.a.fail_all(Some(Reply::status(500)));
    ask_many(&p.gw, "solo", 10).await;
    assert_eq!(p.b.request_count(), 10, "solo falls back to b");

    // A refused connection: an upstream nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = Providers::start(|cfg| {
        cfg.upstreams
            .insert("a".into(), upstream(format!("http://{closed}/v1")));
    })
    .await;
    ask_many(&p.gw, "solo", 10).await;
    assert_eq!(p.b.request_count(), 10);
    assert_eq!(p.a.request_count(), 0);

    // A stall past the primary's timeout, before its first byte.
    let p = Providers::start(|cfg| {
        cfg.upstreams.get_mut("a").unwrap().timeout = Duration::from_millis(300);
    })
    .await;
    p.a.fail_all(Some(Reply::slow(Duration::from_secs(30))));
    ask_many(&p.gw, "solo", 4).await;
    assert_eq!(p.b.request_count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failures_eject_an_upstream_then_one_trial_decides() {
    let p = Providers::start(|cfg| {
        // Long enough that the calls below all fall inside one cool-down
        // (and the doubled one) on a slow machine.
        cfg.routing.cooldown = Duration::from_secs(4);
        cfg.routing.max_cooldown = Duration::from_secs(60);
    })
    .await;
    p.a.fail_all(Some(Reply::status(500)));
    // One call at a time, so the count of failures is exact.
    for i in 0..8 {
        let r = ask(&p.gw, "solo", &format!("call {i}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(p.a.request_count(), 5, "ejected after five failures");
    assert_eq!(
        metric(&p.gw, r#"chatgate_upstream_up{upstream="a"}"#).await,
        Some(0.0)
    );
    assert_eq!(
        metric(&p.gw, r#"chatgate_upstream_ejections_total{upstream="a"}"#).await,
        Some(1.0)
    );
    // Once its cool-down is over, exactly one call tries it (and fails:
    // ejected again, for twice as long).
    wait_until(Duration::from_secs(30), "a's cool-down to end", || async {
        metric(&p.gw, r#"chatgate_upstream_up{upstream="a"}"#).await == Some(1.0)
    })
    .await;
    ask_many(&p.gw, "solo", 10).await;
    assert_eq!(p.a.request_count(), 6, "one trial, not a stampede");
    // It recovers: after the next cool-down its trial answers, and it
    // takes traffic again.
    p.a.fail_all(None);
    wait_until(
        Duration::from_secs(30),
        "a's second cool-down to end",
        || async { metric(&p.gw, r#"chatgate_upstream_up{upstream="a"}"#).await == Some(1.0) },
    )
    .await;
    let r = ask(&p.gw, "solo", "trial").await;
    assert_eq!(r.status, 200, "{}", r.text());
    ask_many(&p.gw, "solo", 5).await;
    assert_eq!(p.a.request_count(), 6 + 1 + 5, "healthy again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_fails_over_before_its_first_byte_but_never_after() {
    let p = Providers::start(|cfg| cfg.openai.model = "solo".into()).await;
    let id = new_session(p.gw.addr).await;
    // Fails before its first byte (a 500): the fallback streams it.
    p.a.push(Reply::status(500));
    let mut s = open_stream(
        p.gw.addr,
        "/chat/",
        &[],
        &json!({"session_id": id, "role": "user", "content": "first", "stream": true}).to_string(),
    )
    .await;
    assert_eq!(s.status, 200);
    let (events, broke) = s.rest().await;
    assert!(broke.is_none(), "{broke:?}");
    assert_eq!(
        events.last().unwrap().name.as_deref(),
        Some("done"),
        "{events:?}"
    );
    assert_eq!(p.b.request_count(), 1);

    // Fails after it began: the error event, and no other upstream asked.
    let before = p.counts();
    let p2 = Providers::start(|cfg| cfg.openai.model = "solo".into()).await;
    let id = new_session(p2.gw.addr).await;
    p2.a.push(
        StreamScript::pieces(["One ", "two ", "three"])
            .with_fault(StreamFault::DropAfter(1))
            .into(),
    );
    let mut s = open_stream(
        p2.gw.addr,
        "/chat/",
        &[],
        &json!({"session_id": id, "role": "user", "content": "count", "stream": true}).to_string(),
    )
    .await;
    assert_eq!(s.status, 200);
    let (events, _) = s.rest().await;
    let last = events.last().expect("events");
    assert_eq!(last.name.as_deref(), Some("error"), "{events:?}");
    assert_eq!(p2.b.request_count(), 0, "no switch once the stream began");
    assert!(messages(p2.gw.addr, &id).await.is_empty(), "nothing stored");
    assert_eq!(p.counts(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requests_own_fault_reaches_the_client_once() {
    let p = Providers::start(|_| {}).await;
    p.a.push(Reply::status(400));
    let r = ask(&p.gw, "solo", "hi").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["message"], "scripted failure");
    assert_eq!(p.counts(), [1, 0, 0], "no fallback, no retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_headers_go_as_each_upstream_takes_them() {
    let p = Providers::start(|cfg| {
        let azure = cfg.upstreams.get_mut("c").unwrap();
        azure.auth = UpstreamAuth::ApiKey;
        azure.api_key_env = "AZURE_KEY".into();
        azure.headers.insert("x-team".into(), "research".into());
        let openai = cfg.upstreams.get_mut("b").unwrap();
        openai.auth = UpstreamAuth::Bearer;
        openai.api_key_env = "B_KEY".into();
        cfg.secrets
            .upstream_keys
            .insert("c".into(), chatgate::config::Secret::new("azure-s3cret"));
        cfg.secrets
            .upstream_keys
            .insert("b".into(), chatgate::config::Secret::new("sk-b-s3cret"));
        cfg.models.insert(
            "both".into(),
            ModelSection {
                targets: vec![target("b", "gpt", 1)],
                fallbacks: vec![target("c", "my-deployment", 1)],
            },
        );
    })
    .await;
    p.b.fail_all(Some(Reply::status(503)));
    let r = ask(&p.gw, "both", "hi").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let to_b = &p.b.recorded()[0];
    assert_eq!(to_b.authorization.as_deref(), Some("Bearer sk-b-s3cret"));
    let to_c = &p.c.recorded()[0];
    let header = |name: &str| {
        to_c.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("api-key").as_deref(), Some("azure-s3cret"));
    assert_eq!(header("x-team").as_deref(), Some("research"));
    assert_eq!(to_c.authorization, None, "Azure takes the key as api-key");
    assert_eq!(to_c.body["model"], "my-deployment");
    // The client sees its own model name, and no key is logged.
    assert_eq!(r.json()["model"], "both");
    logged(&p.gw, "c:my-deployment", 1).await;
    let log = std::fs::read_to_string(&p.gw.log_file).unwrap();
    assert!(!log.contains("s3cret"), "{log}");
}

/// The upstream that answered each session, from what each mock was sent:
/// every request of a session carries the same `prompt_cache_key`.
fn upstream_of_keys(mocks: &[(&str, &MockOpenAi)]) -> HashMap<String, HashSet<String>> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for (name, mock) in mocks {
        for r in mock.recorded() {
            if let Some(key) = r.body["prompt_cache_key"].as_str() {
                out.entry(key.to_owned())
                    .or_default()
                    .insert((*name).to_owned());
            }
        }
    }
    out
}

/// 50 sessions × 10 turns on `/chat/`, the sessions' turns interleaved.
async fn conversations(gw: &Gateway, sessions: usize, turns: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..sessions {
        ids.push(new_session(gw.addr).await);
    }
    let addr = gw.addr;
    for turn in 0..turns {
        let calls = ids
            .iter()
            .map(|id| {
                let (id, text) = (
                    id.clone(),
                    format!("turn {turn} of a long conversation about {id}"),
                );
                async move { chat(addr, &id, &text).await }
            })
            .collect();
        for r in at_once(calls).await {
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stays_on_its_upstream_and_moves_when_it_dies() {
    let p = Providers::start(|cfg| cfg.openai.model = "even".into()).await;
    let ids = conversations(&p.gw, 50, 10).await;
    let seen = upstream_of_keys(&[("a", &p.a), ("b", &p.b)]);
    assert_eq!(seen.len(), 50, "every session sent its prompt_cache_key");
    for (key, upstreams) in &seen {
        assert_eq!(upstreams.len(), 1, "session {key} moved: {upstreams:?}");
    }
    let on_b = seen.values().filter(|u| u.contains("b")).count();
    assert!((10..=40).contains(&on_b), "{on_b} of 50 sessions on b");

    // b dies: its sessions move to a, history and all.
    let Providers { gw, a, b, c } = p;
    b.fail_all(Some(Reply::Drop));
    let before = a.request_count();
    for id in &ids {
        let r = chat(gw.addr, id, "still there?").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(messages(gw.addr, id).await.len(), 22);
    }
    assert!(a.request_count() - before >= 50);
    let last = a.recorded().last().unwrap().body["messages"].clone();
    assert_eq!(
        last.as_array().unwrap().len(),
        21,
        "the whole history went along"
    );
    drop((b, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_keeps_prompt_caches_hitting() {
    async fn cached(models: &str, affinity: bool) -> u64 {
        let p = Providers::start(|cfg| {
            cfg.openai.model = models.into();
            cfg.routing.affinity = affinity;
        })
        .await;
        for m in [&p.a, &p.b, &p.c] {
            m.set_prompt_cache(true);
        }
        conversations(&p.gw, 50, 10).await;
        p.a.cached_tokens() + p.b.cached_tokens() + p.c.cached_tokens()
    }
    let single = cached("solo", true).await;
    let with = cached("even", true).await;
    let without = cached("even", false).await;
    eprintln!(
        "cached prompt tokens, 50 sessions x 10 turns: one upstream {single}, \
         two with affinity {with} ({:.0}%), two without {without} ({:.0}%)",
        100.0 * with as f64 / single as f64,
        100.0 * without as f64 / single as f64
    );
    assert!(single > 0);
    assert!(
        with as f64 >= 0.9 * single as f64,
        "with affinity {with} of {single}"
    );
    assert!(without < with, "without affinity {without}, with {with}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_are_listed_for_admins_and_counted() {
    let p = Providers::start(|_| {}).await;
    p.a.fail_all(Some(Reply::status(500)));
    ask_many(&p.gw, "solo", 3).await;
    // /v1/models lists the names clients may use.
    let models = get(p.gw.addr, "/v1/models").await.json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["even", "m", "solo"]);
    // /readyz names each upstream's state and stays ready: every model
    // has a target that is not ejected.
    let ready = get(p.gw.addr, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    let up = &ready.json()["dependencies"]["upstreams"];
    assert_eq!(up["status"], "ok");
    assert_eq!(up["upstreams"]["b"], "healthy");
    // /metrics counts per upstream.
    assert_eq!(
        metric(
            &p.gw,
            r#"chatgate_upstream_calls_total{upstream="a",outcome="failed"}"#
        )
        .await,
        Some(3.0)
    );
    assert_eq!(
        metric(&p.gw, r#"chatgate_upstream_fallbacks_total{upstream="b"}"#).await,
        Some(3.0)
    );
    // The log names the upstream of every model call.
    logged(&p.gw, "b:model-b", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_shows_each_upstreams_state() {
    use crate::credentials::{admin_jwt, call, user_jwt, SECRET};
    let p = Providers::start(|cfg| {
        cfg.auth.mode = chatgate::config::AuthMode::Required;
        cfg.secrets.secret_key = Some(chatgate::config::Secret::new(SECRET));
        cfg.routing.cooldown = Duration::from_secs(60);
    })
    .await;
    let admin = admin_jwt("ops");
    p.a.fail_all(Some(Reply::status(502)));
    for i in 0..5 {
        let body =
            json!({"model": "solo", "messages": [{"role": "user", "content": format!("{i}")}]});
        let r = call(
            p.gw.addr,
            hyper::Method::POST,
            COMPLETIONS,
            Some(&admin),
            Some(&body),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = call(
        p.gw.addr,
        hyper::Method::GET,
        "/admin/upstreams",
        Some(&user_jwt("ann")),
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = call(
        p.gw.addr,
        hyper::Method::GET,
        "/admin/upstreams",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let a = &v["upstreams"][0];
    assert_eq!(a["name"], "a");
    assert_eq!(a["state"], "ejected");
    assert!(a["retry_in_ms"].as_u64().unwrap() > 0, "{a}");
    assert_eq!(a["ejections"], 1);
    assert_eq!(a["calls"]["failed"], 5);
    let b = &v["upstreams"][1];
    assert_eq!(
        (b["name"].clone(), b["state"].clone()),
        (json!("b"), json!("healthy"))
    );
    assert_eq!(b["answered"], 5);
    assert_eq!(b["fallbacks"], 5);
    // Every model still has a target that takes calls.
    assert_eq!(v["unavailable_models"], json!([]));
}

/// Drops a test's PostgreSQL schema when the test ends (best effort: the
/// name is unique, so a leftover harms nothing).
struct DropSchema {
    url: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_holds_across_replicas_sharing_postgresql() {
    let url = std::env::var("CHATGATE_TEST_POSTGRES_URL").unwrap_or_default();
    if url.is_empty() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: CHATGATE_TEST_POSTGRES_URL not set (routing across replicas)"
        );
        return;
    }
    let schema = format!(
        "routing_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let _cleanup = DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let shared = |cfg: &mut Config| {
        cfg.storage.backend = chatgate::config::Backend::Postgres;
        cfg.storage.url = url.clone();
        cfg.storage.schema = schema.clone();
        cfg.openai.model = "even".into();
    };
    // Two gateways on one database, routing to the same two providers.
    let p = Providers::start(shared).await;
    let (a_url, b_url) = (p.a.base_url(), p.b.base_url());
    let second = Gateway::start_with(|cfg| {
        cfg.upstreams.insert("a".into(), upstream(a_url));
        cfg.upstreams.insert("b".into(), upstream(b_url));
        cfg.models.insert(
            "even".into(),
            ModelSection {
                targets: vec![target("a", "model-a", 1), target("b", "model-b", 1)],
                fallbacks: Vec::new(),
            },
        );
        cfg.rate_limit.messages_per_minute = std::num::NonZeroU32::new(1000).unwrap();
        shared(cfg);
    })
    .await;
    // Each session's turns alternate between the replicas.
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(new_session(p.gw.addr).await);
    }
    for turn in 0..6 {
        let replica = if turn % 2 == 0 {
            p.gw.addr
        } else {
            second.addr
        };
        for id in &ids {
            let r = chat(replica, id, &format!("turn {turn}")).await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    let seen = upstream_of_keys(&[("a", &p.a), ("b", &p.b)]);
    assert_eq!(seen.len(), 20);
    for (key, upstreams) in &seen {
        assert_eq!(upstreams.len(), 1, "session {key} moved: {upstreams:?}");
    }
    assert_eq!(p.a.request_count() + p.b.request_count(), 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_prompt_tokens_are_stored_summed_and_counted() {
    let p = Providers::start(|cfg| cfg.openai.model = "solo".into()).await;
    p.a.set_prompt_cache(true);
    let id = new_session(p.gw.addr).await;
    for text in [
        "a first question, long enough to be worth caching",
        "more",
        "and more",
    ] {
        let r = chat(p.gw.addr, &id, text).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Streamed too: its usage arrives at its end.
    let mut s = open_stream(
        p.gw.addr,
        "/chat/",
        &[],
        &json!({"session_id": id, "role": "user", "content": "streamed", "stream": true})
            .to_string(),
    )
    .await;
    let (events, broke) = s.rest().await;
    assert!(broke.is_none() && events.last().unwrap().name.as_deref() == Some("done"));
    let served = p.a.cached_tokens();
    assert!(
        served > 0,
        "the mock served some of the prompts from its cache"
    );
    let usage = get(p.gw.addr, &format!("/session/{id}")).await.json()["usage"].clone();
    assert_eq!(usage["cached_tokens"], served, "{usage}");
    assert_eq!(
        metric(
            &p.gw,
            r#"chatgate_tokens_total{model="solo",kind="cached"}"#
        )
        .await,
        Some(served as f64)
    );
    assert_eq!(
        metric(
            &p.gw,
            r#"chatgate_upstream_cached_tokens_total{upstream="a"}"#
        )
        .await,
        Some(served as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_whose_client_leaves_hands_the_trial_on() {
    let p = Providers::start(|cfg| {
        cfg.routing.cooldown = Duration::from_secs(1);
    })
    .await;
    p.a.fail_all(Some(Reply::status(500)));
    for i in 0..5 {
        let r = ask(&p.gw, "solo", &format!("call {i}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    wait_until(Duration::from_secs(30), "a's cool-down to end", || async {
        metric(&p.gw, r#"chatgate_upstream_up{upstream="a"}"#).await == Some(1.0)
    })
    .await;
    // The trial call stalls, and its client gives up on it.
    p.a.fail_all(Some(Reply::slow(Duration::from_secs(30))));
    // It gives up once the trial has reached a, however long that takes.
    {
        let trial = ask(&p.gw, "solo", "trial");
        tokio::pin!(trial);
        let reached = wait_until(Duration::from_secs(30), "the trial to reach a", || async {
            p.a.request_count() == 6
        });
        tokio::select! {
            r = &mut trial => panic!("the trial was meant to stall: {}", r.status),
            () = reached => {}
        }
    }
    assert_eq!(p.a.request_count(), 6);
    // a is well again: the next call takes the trial, and a answers it.
    p.a.fail_all(None);
    wait_until(
        Duration::from_secs(10),
        "a new trial to reach a",
        || async {
            let r = ask(&p.gw, "solo", "again").await;
            assert_eq!(r.status, 200, "{}", r.text());
            p.a.request_count() > 6
        },
    )
    .await;
}
