//! The context window: a session whose history is in a script the token
//! estimate handles badly must not break for good, and a turn the upstream
//! refuses as too long is retried once with less history.

use crate::support::new_session;
use std::time::Duration;

use chatcore::{ChatCore, ErrorKind, MemoryStore, OpenAiChat, OpenAiConfig};
use chatmock::{MockOpenAi, Reply};

fn core(mock: &MockOpenAi, context_tokens: usize) -> ChatCore {
    let model = OpenAiChat::new(OpenAiConfig {
        base_url: mock.base_url(),
        model: "test-model".into(),
        timeout: Duration::from_secs(10),
        max_retries: 0,
        ..OpenAiConfig::default()
    })
    .unwrap();
    ChatCore::builder()
        .store(MemoryStore::new())
        .model(model)
        .messages_per_minute(1_000_000)
        .context_tokens(context_tokens)
        .build()
        .unwrap()
}

fn messages_sent(mock: &MockOpenAi, nth_from_end: usize) -> usize {
    let recorded = mock.recorded();
    recorded[recorded.len() - 1 - nth_from_end].body["messages"]
        .as_array()
        .unwrap()
        .len()
}

/// Counted by characters over four, as the estimate once was, 2,000
/// CJK turns overflowed a 3,000-token window after a few dozen turns, and
/// every later turn failed the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_of_2000_cjk_turns_keeps_chatting() {
    let mock = MockOpenAi::start().await;
    mock.set_recording(false);
    mock.set_context_limit(Some(3000));
    let core = core(&mock, 3000);
    let id = new_session(&core).await;
    let text = "你好，今天的天气怎么样？我想去公园散步，然后喝一杯咖啡。";
    for i in 0..2000 {
        let reply = core
            .anyone()
            .chat(id, &format!("{text} {i}"))
            .await
            .unwrap_or_else(|e| panic!("turn {i}: {e}"));
        assert!(reply.content.ends_with(&format!(" {i}")));
    }
    assert_eq!(mock.request_count(), 2000, "no turn needed a retry");
}

#[tokio::test]
async fn an_overflow_is_retried_once_with_less_history() {
    let mock = MockOpenAi::start().await;
    let core = core(&mock, 3000);
    let id = new_session(&core).await;
    // Ten turns of about 80 tokens a message: all of them fit the budget,
    // a quarter of it does not.
    for i in 0..10 {
        core.anyone()
            .chat(id, &format!("turn {i} {}", "x".repeat(300)))
            .await
            .unwrap();
    }
    mock.push(Reply::ContextOverflow);
    let reply = core.anyone().chat(id, "one more").await.unwrap();
    assert_eq!(reply.content, "Echo: one more");
    assert_eq!(mock.request_count(), 12);
    let (refused, retried) = (messages_sent(&mock, 1), messages_sent(&mock, 0));
    assert_eq!(refused, 21, "ten turns of history and the new message");
    assert!(retried < refused, "the retry sends less: {retried}");
    // The turn is stored once; the next one starts from the full budget.
    let messages = core.anyone().messages(id).await.unwrap();
    assert_eq!(messages.len(), 22);
    core.anyone().chat(id, "and again").await.unwrap();
    assert_eq!(messages_sent(&mock, 0), 23);
}

#[tokio::test]
async fn a_second_overflow_fails_the_turn_and_stores_nothing() {
    let mock = MockOpenAi::start().await;
    let core = core(&mock, 3000);
    let id = new_session(&core).await;
    core.anyone().chat(id, "first").await.unwrap();
    mock.push(Reply::ContextOverflow);
    mock.push(Reply::ContextOverflow);
    let err = core.anyone().chat(id, "second").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UpstreamRejected);
    assert!(err.is_context_overflow());
    assert_eq!(mock.request_count(), 3, "one retry, no more");
    assert_eq!(core.anyone().messages(id).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_message_too_long_for_the_model_on_its_own_is_invalid_input() {
    let mock = MockOpenAi::start().await;
    mock.set_context_limit(Some(50));
    let core = core(&mock, 3000);
    let id = new_session(&core).await;
    let err = core
        .anyone()
        .chat(id, &"word ".repeat(100))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(err.field(), Some("content"));
    assert_eq!(mock.request_count(), 1, "no history to drop: no retry");
    // Streamed turns get the same treatment.
    let turn = core
        .anyone()
        .prepare(id, "word ".repeat(100), Default::default())
        .await
        .unwrap();
    let err = turn.stream().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}
