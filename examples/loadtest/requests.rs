//! What the bench sends: sessions made through a gateway, the request
//! generators each phase runs, and the direct bodies built to match what
//! chatgate sends upstream.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::load::{connect, post, Make};

/// Creates `n` sessions through the gateway; returns their ids.
pub async fn new_sessions(gw_addr: SocketAddr, n: usize) -> Vec<String> {
    let mut sessions = Vec::with_capacity(n);
    let mut c = connect(gw_addr).await.expect("connect");
    for _ in 0..n {
        let (s, body) = post(&mut c, "/session/initialize_session", Bytes::new())
            .await
            .expect("session");
        assert!(s.is_success(), "initialize_session answered {s}");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        sessions.push(v["session_id"].as_str().expect("session_id").to_owned());
    }
    sessions
}

/// `/chat/` requests over `sessions`, round-robin.
pub fn chat_maker(sessions: Arc<Vec<String>>) -> Make {
    Arc::new(move |n| {
        let id = &sessions[(n as usize) % sessions.len()];
        let body = format!(
            r#"{{"session_id":"{id}","role":"user","content":"Hello, how are you? #{n}"}}"#
        );
        ("/chat/", Bytes::from(body))
    })
}

/// Stored responses (`POST /v1/responses`), each joining one of
/// `sessions` as a conversation (`conv_` and the session's id), round-robin:
/// the same turn as `/chat/`'s, through the Responses API.
pub fn responses_maker(sessions: Arc<Vec<String>>) -> Make {
    let conversations: Vec<String> = sessions
        .iter()
        .map(|s| format!("conv_{}", s.replace('-', "")))
        .collect();
    Arc::new(move |n| {
        let conv = &conversations[(n as usize) % conversations.len()];
        let body = format!(
            r#"{{"model":"gpt-3.5-turbo","input":"Hello, how are you? #{n}","conversation":"{conv}"}}"#
        );
        ("/v1/responses", Bytes::from(body))
    })
}

/// Streamed `/chat/` requests over `sessions`, round-robin.
pub fn chat_stream_maker(sessions: Arc<Vec<String>>) -> Make {
    Arc::new(move |n| {
        let id = &sessions[(n as usize) % sessions.len()];
        let body = format!(
            r#"{{"session_id":"{id}","role":"user","content":"Hello, how are you? #{n}","stream":true}}"#
        );
        ("/chat/", Bytes::from(body))
    })
}

/// New sessions, one per request.
pub fn init_maker() -> Make {
    Arc::new(|_| ("/session/initialize_session", Bytes::new()))
}

/// `/feedback/` requests over `sessions`, round-robin.
pub fn feedback_maker(sessions: Arc<Vec<String>>) -> Make {
    Arc::new(move |n| {
        let id = &sessions[(n as usize) % sessions.len()];
        let body = format!(
            r#"{{"session_id":"{id}","feedback":"The chat was very helpful.","rating":5}}"#
        );
        ("/feedback/", Bytes::from(body))
    })
}

/// The same chat-completions `body` to the mock, every request.
pub fn direct_maker(body: Bytes) -> Make {
    Arc::new(move |_| ("/v1/chat/completions", body.clone()))
}

/// How many history messages chatgate forwards with a `context_tokens`
/// budget, for a turn of the bench with 5-digit request numbers (what most
/// of a run's turns have), by chatcore's own trimming rule.
pub fn forwarded_history(context_tokens: usize) -> usize {
    let at = chrono::Utc::now();
    let history: Vec<chatcore::Message> = (0..400)
        .flat_map(|i| {
            let q = format!("Hello, how are you? #{}", 10_000 + i);
            [
                chatcore::Message::text(chatcore::Role::User, q.clone(), at),
                chatcore::Message::text(chatcore::Role::Assistant, format!("Echo: {q}"), at),
            ]
        })
        .collect();
    chatcore::trim_history(&history, None, "Hello, how are you? #12345", context_tokens).len()
}

pub fn direct_body() -> Bytes {
    direct_body_with(10)
}

/// [`direct_body`], streamed with usage, as chatgate asks for a stream.
pub fn direct_stream_body() -> Bytes {
    let mut v: serde_json::Value = serde_json::from_slice(&direct_body()).expect("json");
    v["stream"] = true.into();
    v["stream_options"] = serde_json::json!({"include_usage": true});
    Bytes::from(v.to_string())
}

/// A chat-completions request like chatgate's for a turn with `history`
/// earlier messages.
pub fn direct_body_with(history: usize) -> Bytes {
    let mut messages = Vec::new();
    for i in 0..history / 2 {
        messages.push(
            serde_json::json!({"role": "user", "content": format!("Hello, how are you? #{i}")}),
        );
        messages.push(serde_json::json!({"role": "assistant", "content": format!("Echo: Hello, how are you? #{i}")}));
    }
    messages.push(serde_json::json!({"role": "user", "content": "Hello, how are you? #0"}));
    Bytes::from(
        serde_json::json!({"model": "gpt-3.5-turbo", "messages": messages, "temperature": 0.7})
            .to_string(),
    )
}
