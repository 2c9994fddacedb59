//! The OpenAI chat-completions wire format: private serde types. Requests
//! serialize straight from borrowed history; responses keep only the fields
//! we read, ignoring the rest (servers add fields freely).

use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use crate::llm::ChatRequest;

#[derive(Serialize)]
pub(super) struct RequestBody<'a> {
    pub model: &'a str,
    pub messages: Messages<'a>,
    pub temperature: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Asked for on every stream, so usage is known for streamed turns too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
pub(super) struct StreamOptions {
    pub include_usage: bool,
}

/// The request's messages: system prompt, history, new user message.
pub(super) struct Messages<'a>(pub ChatRequest<'a>);

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'a str,
    content: &'a str,
}

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = &self.0;
        let len = r.history.len() + 1 + usize::from(r.system.is_some());
        let mut seq = s.serialize_seq(Some(len))?;
        if let Some(system) = r.system {
            seq.serialize_element(&WireMessage {
                role: "system",
                content: system,
            })?;
        }
        for m in r.history.iter() {
            seq.serialize_element(&WireMessage {
                role: m.role.as_str(),
                content: m.content,
            })?;
        }
        seq.serialize_element(&WireMessage {
            role: "user",
            content: r.user,
        })?;
        seq.end()
    }
}

#[derive(Deserialize)]
pub(super) struct ResponseBody {
    pub choices: Vec<Choice>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
}

#[derive(Deserialize)]
pub(super) struct Choice {
    pub message: ChoiceMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct ChoiceMessage {
    #[serde(default)]
    pub content: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct WireUsage {
    #[serde(default)]
    pub prompt_tokens: u32,
    #[serde(default)]
    pub completion_tokens: u32,
}

#[derive(Deserialize)]
pub(super) struct StreamChunk {
    #[serde(default)]
    pub choices: Vec<StreamChoice>,
    #[serde(default)]
    pub usage: Option<WireUsage>,
    /// Some servers report a failure as an event inside a 200 stream.
    #[serde(default)]
    pub error: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
pub(super) struct StreamChoice {
    #[serde(default)]
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct Delta {
    #[serde(default)]
    pub content: Option<String>,
}
