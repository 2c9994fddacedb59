//! Embeds chatcore in a program of your own: SQLite storage and the bundled
//! mock OpenAI server on loopback, so it needs no key and no network.
//!
//! Run: `cargo run --example embed`

use chatcore::{ChatCore, NewSession, OpenAiChat, OpenAiConfig, SqliteStore};
use chatmock::MockOpenAi;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A stand-in for OpenAI; with a real key use `OpenAiChat::from_env()?`.
    let upstream = MockOpenAi::start().await;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("chat.db");

    let core = ChatCore::builder()
        .store(SqliteStore::open(&db)?)
        .model(OpenAiChat::new(OpenAiConfig {
            base_url: upstream.base_url(),
            ..OpenAiConfig::default()
        })?)
        .messages_per_minute(5)
        .system_prompt("You are a helpful assistant.")
        .build()?;

    let session = core.anyone().initialize(NewSession::default()).await?;
    let id = session.session.id;
    println!("session {id} (active: {})", session.is_active);

    for text in ["Hello, how are you?", "What can you do?", "Thanks!"] {
        let reply = core.anyone().chat(id, text).await?;
        println!("user:      {text}");
        println!(
            "assistant: {}   [{} of {} left this minute]",
            reply.content, reply.remaining, reply.limit
        );
    }

    core.anyone()
        .submit_feedback(id, "The chat was very helpful.", Some(5))
        .await?;

    println!("\nstored history ({}):", db.display());
    for m in core.anyone().messages(id).await? {
        println!(
            "  {:>9}  {}  {}",
            m.role,
            chatcore::format_time(&m.created_at),
            m.content
        );
    }
    for f in core.anyone().feedback(id).await? {
        println!(
            "feedback: {:?} rating {:?}",
            f.text,
            f.rating.map(|r| r.get())
        );
    }
    let model_saw = upstream
        .recorded()
        .last()
        .map(|r| r.body["messages"].as_array().map_or(0, Vec::len));
    println!(
        "the model saw {} messages on the last turn (system + history + new)",
        model_saw.unwrap_or(0)
    );
    Ok(())
}
