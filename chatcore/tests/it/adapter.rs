//! The OpenAI adapter against `chatmock::MockOpenAi` on loopback: the wire
//! format it sends, how it classifies and retries failures, its deadline,
//! streaming, and that the API key never leaks.

use std::time::{Duration, Instant};

use chatcore::{
    ChatModel, ChatRequest, Completion, Error, ErrorKind, History, Message, OpenAiChat,
    OpenAiConfig, Role, Usage,
};
use chatmock::{MockOpenAi, Reply};
use serde_json::json;

use crate::support::t0;

const KEY: &str = "sk-test-SECRET-4f9a1c";

/// Fast settings: tiny backoff, short deadlines, two retries.
fn config(base_url: String) -> OpenAiConfig {
    OpenAiConfig {
        base_url,
        model: "test-model".into(),
        temperature: Some(0.25),
        api_key: None,
        timeout: Duration::from_secs(5),
        stream_idle_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(1),
        max_retries: 2,
        backoff: Duration::from_millis(5),
        ..OpenAiConfig::default()
    }
}

fn adapter(mock: &MockOpenAi) -> OpenAiChat {
    OpenAiChat::new(config(mock.base_url())).unwrap()
}

fn keyed_adapter(mock: &MockOpenAi) -> OpenAiChat {
    OpenAiChat::new(OpenAiConfig {
        api_key: Some(KEY.into()),
        ..config(mock.base_url())
    })
    .unwrap()
}

fn ask(user: &str) -> ChatRequest<'_> {
    ChatRequest::new(None, History::empty(), user)
}

async fn complete(model: &OpenAiChat, user: &str) -> chatcore::Result<Completion> {
    model.complete(ask(user)).await
}

/// Asserts `e` does not carry the key anywhere a log or client could see.
fn assert_no_key(e: &Error) {
    assert!(!e.chain().contains(KEY), "key in chain: {}", e.chain());
    assert!(!format!("{e:?}").contains(KEY), "key in Debug: {e:?}");
    assert!(!e.to_string().contains(KEY));
}

#[tokio::test]
async fn default_reply_echoes_with_usage() {
    let mock = MockOpenAi::start().await;
    let reply = complete(&adapter(&mock), "hello world").await.unwrap();
    assert_eq!(reply.content, "Echo: hello world");
    // The mock counts a token per four characters: "hello world" (11) and
    // "Echo: hello world" (17).
    assert_eq!(
        reply.usage,
        Some(Usage {
            prompt_tokens: 2,
            completion_tokens: 4,
            cached_tokens: 0,
        })
    );
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test]
async fn request_has_model_temperature_messages_in_order_and_bearer_key() {
    let mock = MockOpenAi::start().await;
    let history = [
        Message::text(Role::User, "first question", t0()),
        Message::text(Role::Assistant, "first answer", t0()),
    ];
    let request = ChatRequest::new(Some("You are terse."), (&history).into(), "second question");
    keyed_adapter(&mock).complete(request).await.unwrap();

    let recorded = mock.recorded();
    assert_eq!(recorded.len(), 1);
    let r = &recorded[0];
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(r.authorization.as_deref(), Some(&*format!("Bearer {KEY}")));
    assert_eq!(r.body["model"], "test-model");
    assert_eq!(r.body["temperature"], json!(0.25));
    assert_ne!(r.body["stream"], json!(true));
    assert_eq!(
        r.body["messages"],
        json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "second question"},
        ])
    );
}

#[tokio::test]
async fn no_key_means_no_authorization_and_no_system_means_no_system_message() {
    let mock = MockOpenAi::start().await;
    complete(&adapter(&mock), "just me").await.unwrap();
    let r = &mock.recorded()[0];
    assert_eq!(r.authorization, None);
    assert_eq!(
        r.body["messages"],
        json!([{"role": "user", "content": "just me"}])
    );
}

#[tokio::test]
async fn a_500_is_retried_then_succeeds() {
    let mock = MockOpenAi::start().await;
    mock.push(Reply::status(500));
    let reply = complete(&adapter(&mock), "again").await.unwrap();
    assert_eq!(reply.content, "Echo: again");
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn persistent_5xx_fails_naming_the_status() {
    let mock = MockOpenAi::start().await;
    for _ in 0..3 {
        mock.push(Reply::status(503));
    }
    let err = complete(&keyed_adapter(&mock), "x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamFailed);
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(mock.request_count(), 3, "first attempt plus max_retries");
    assert_no_key(&err);
}

#[tokio::test]
async fn a_429_is_retried_then_succeeds() {
    let mock = MockOpenAi::start().await;
    mock.push(Reply::Status {
        status: 429,
        retry_after: Some(0),
    });
    let reply = complete(&adapter(&mock), "busy?").await.unwrap();
    assert_eq!(reply.content, "Echo: busy?");
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn persistent_429_is_busy_with_the_upstreams_retry_after() {
    let mock = MockOpenAi::start().await;
    mock.push(Reply::Status {
        status: 429,
        retry_after: Some(0),
    });
    mock.push(Reply::Status {
        status: 429,
        retry_after: Some(7),
    });
    let model = OpenAiChat::new(OpenAiConfig {
        max_retries: 1,
        ..config(mock.base_url())
    })
    .unwrap();
    let err = complete(&model, "x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamBusy);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn retry_after_beyond_the_deadline_gives_up_at_once() {
    let mock = MockOpenAi::start().await;
    mock.push(Reply::Status {
        status: 429,
        retry_after: Some(30),
    });
    let model = adapter(&mock);
    let started = Instant::now();
    // Waiting out the hint would overrun the 5 s deadline.
    let err = tokio::time::timeout(Duration::from_secs(6), complete(&model, "x"))
        .await
        .expect("gave up only after the deadline")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamBusy);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(mock.request_count(), 1);
    assert!(started.elapsed() < model.config().timeout);
}

#[tokio::test]
async fn a_401_fails_at_once_without_the_key() {
    let mock = MockOpenAi::start().await;
    mock.push(Reply::status(401)); // a retry would get the default echo
    let err = complete(&keyed_adapter(&mock), "x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamFailed);
    assert!(err.to_string().contains("401"), "{err}");
    assert_eq!(mock.request_count(), 1);
    assert_no_key(&err);
}

#[tokio::test]
async fn a_400_is_not_retried() {
    let mock = MockOpenAi::start().await;
    mock.push(Reply::status(400));
    let err = complete(&adapter(&mock), "x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamRejected);
    assert!(err.to_string().contains("400"), "{err}");
    assert!(err.to_string().contains("scripted failure"), "{err}");
    let (status, body) = err.upstream_reply().expect("the upstream's answer is kept");
    assert_eq!(status, 400);
    let body: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(body["error"]["message"], "scripted failure");
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test]
async fn a_reply_slower_than_the_deadline_times_out() {
    let mock = MockOpenAi::start().await;
    mock.push(Reply::Delay(
        Duration::from_secs(10),
        Box::new(Reply::Text("too late".into())),
    ));
    let model = OpenAiChat::new(OpenAiConfig {
        timeout: Duration::from_millis(300),
        ..config(mock.base_url())
    })
    .unwrap();
    let err = complete(&model, "x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamTimeout);
    assert_eq!(err.to_string(), "Upstream timed out");
}

#[tokio::test]
async fn malformed_json_fails_without_retry() {
    let mock = MockOpenAi::start().await;
    mock.push(Reply::MalformedJson);
    let err = complete(&keyed_adapter(&mock), "x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamFailed);
    assert_eq!(mock.request_count(), 1);
    assert_no_key(&err);
}

#[tokio::test]
async fn a_dropped_connection_is_retried_then_succeeds() {
    let mock = MockOpenAi::start().await;
    mock.push(Reply::Drop);
    let reply = complete(&adapter(&mock), "still there?").await.unwrap();
    assert_eq!(reply.content, "Echo: still there?");
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn a_refused_connection_fails_upstream() {
    // Bind, note the port, close it: nothing listens there now.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let model = OpenAiChat::new(OpenAiConfig {
        api_key: Some(KEY.into()),
        ..config(format!("http://{addr}/v1"))
    })
    .unwrap();
    let err = complete(&model, "anyone?").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamFailed);
    assert_no_key(&err);
}

#[tokio::test]
async fn an_https_base_url_speaks_tls() {
    // The mock speaks plain HTTP: a TLS client must fail its handshake
    // rather than fall back to cleartext (which would get an echo).
    let mock = MockOpenAi::start().await;
    let model = OpenAiChat::new(OpenAiConfig {
        api_key: Some(KEY.into()),
        max_retries: 0,
        ..config(format!("https://{}/v1", mock.addr()))
    })
    .unwrap();
    let err = complete(&model, "secret question").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamFailed);
    assert_eq!(err.to_string(), "Upstream connection error");
    assert_no_key(&err);
    assert_eq!(mock.request_count(), 0, "no cleartext request reached it");
}

#[tokio::test]
async fn a_reply_over_the_size_cap_is_refused_not_buffered() {
    let mock = MockOpenAi::start().await;
    mock.push(Reply::Text("a".repeat(chatcore::MAX_REPLY_BYTES)));
    let model = adapter(&mock);
    let err = complete(&model, "flood me").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamFailed);
    assert!(err.to_string().contains("larger than"), "{err}");
    assert_eq!(mock.request_count(), 1, "a too-large reply is not retried");
    // The adapter is still usable afterwards.
    let reply = complete(&model, "small").await.unwrap();
    assert_eq!(reply.content, "Echo: small");
}

#[tokio::test]
async fn streaming_collects_to_the_echo() {
    let mock = MockOpenAi::start().await;
    let model = adapter(&mock);
    let stream = model.stream(ask("tell me a story")).await.unwrap();
    assert_eq!(
        stream.collect().await.unwrap().content,
        "Echo: tell me a story"
    );
    assert_eq!(mock.recorded()[0].body["stream"], json!(true));
}

#[tokio::test]
async fn streaming_reports_upstream_failure_before_the_first_piece() {
    let mock = MockOpenAi::start().await;
    mock.push(Reply::status(401));
    let err = keyed_adapter(&mock).stream(ask("x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamFailed);
    assert_no_key(&err);
}

#[tokio::test]
async fn the_key_never_appears_in_debug_output() {
    let mock = MockOpenAi::start().await;
    let model = keyed_adapter(&mock);
    assert!(!format!("{model:?}").contains(KEY));
    assert!(!format!("{:?}", model.config()).contains(KEY));
    assert!(!format!("{:#?}", model.config()).contains(KEY));
    // It is still sent, of course.
    complete(&model, "x").await.unwrap();
    assert_eq!(
        mock.recorded()[0].authorization,
        Some(format!("Bearer {KEY}"))
    );
}

#[tokio::test]
async fn a_non_http_base_url_is_refused() {
    let err = OpenAiChat::new(config("ftp://127.0.0.1/v1".into())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}
