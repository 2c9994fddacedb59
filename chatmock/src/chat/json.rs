//! The JSON of a whole (non-streamed) completion.

use bytes::Bytes;
use serde::Serialize;
use serde_json::{json, Value};

use super::{Answer, ChatRequest, Choice, Usage, COMPLETION_ID, FINGERPRINT};

// The JSON a completion is written from: typed (building `Value` maps for
// every reply made the mock, which shares the bench's cores, costlier than
// the gateway it measures), members in alphabetical order as a `Value`
// would write them.

#[derive(Serialize)]
pub(super) struct CompletionOut<'a> {
    pub(super) choices: Vec<ChoiceOut<'a>>,
    pub(super) created: u64,
    pub(super) id: &'static str,
    pub(super) model: &'a str,
    pub(super) object: &'static str,
    pub(super) system_fingerprint: &'static str,
    pub(super) usage: UsageOut,
}

#[derive(Serialize)]
pub(super) struct ChoiceOut<'a> {
    pub(super) finish_reason: &'a str,
    pub(super) index: usize,
    pub(super) logprobs: Option<Value>,
    pub(super) message: MessageOut<'a>,
}

#[derive(Serialize)]
pub(super) struct MessageOut<'a> {
    pub(super) content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) function_call: Option<FunctionOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) reasoning_content: Option<String>,
    pub(super) refusal: Option<String>,
    pub(super) role: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) tool_calls: Vec<CallOut<'a>>,
}

#[derive(Serialize)]
pub(super) struct CallOut<'a> {
    pub(super) function: FunctionOut<'a>,
    pub(super) id: &'a str,
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
}

#[derive(Serialize)]
pub(super) struct FunctionOut<'a> {
    pub(super) arguments: String,
    pub(super) name: &'a str,
}

#[derive(Serialize)]
pub(super) struct UsageOut {
    pub(super) completion_tokens: usize,
    pub(super) completion_tokens_details: ReasoningOut,
    pub(super) prompt_tokens: usize,
    pub(super) prompt_tokens_details: CachedOut,
    pub(super) total_tokens: usize,
}

#[derive(Serialize)]
pub(super) struct ReasoningOut {
    pub(super) reasoning_tokens: usize,
}

#[derive(Serialize)]
pub(super) struct CachedOut {
    pub(super) cached_tokens: usize,
}

/// The log probabilities of `pieces`, in OpenAI's shape.
pub(super) fn logprobs_of(pieces: &[String]) -> Value {
    json!({"content": pieces.iter().map(|p| json!({
        "token": p,
        "logprob": -0.25,
        "bytes": p.as_bytes(),
        "top_logprobs": [],
    })).collect::<Vec<_>>(), "refusal": null})
}

/// The body of a non-streaming completion.
pub(crate) fn completion_json(request: &ChatRequest, answer: &Answer) -> Bytes {
    let out = CompletionOut {
        choices: answer
            .choices
            .iter()
            .enumerate()
            .map(|(i, c)| ChoiceOut {
                finish_reason: c.finish_reason,
                index: i,
                logprobs: answer.logprobs.then(|| logprobs_of(&c.content)),
                message: c.message(),
            })
            .collect(),
        created: 0,
        id: COMPLETION_ID,
        model: &request.model,
        object: "chat.completion",
        system_fingerprint: FINGERPRINT,
        usage: answer.usage.out(),
    };
    Bytes::from(serde_json::to_vec(&out).unwrap_or_default())
}

impl Choice {
    /// The whole message, as a non-streamed completion carries it.
    pub(super) fn message(&self) -> MessageOut<'_> {
        MessageOut {
            content: self.content_text.then(|| self.content.concat()),
            refusal: (!self.refusal.is_empty()).then(|| self.refusal.concat()),
            reasoning_content: (!self.reasoning.is_empty()).then(|| self.reasoning.concat()),
            role: "assistant",
            tool_calls: self
                .tool_calls
                .iter()
                .map(|c| CallOut {
                    function: FunctionOut {
                        arguments: c.arguments.concat(),
                        name: &c.name,
                    },
                    id: &c.id,
                    kind: "function",
                })
                .collect(),
            function_call: self.function_call.as_ref().map(|c| FunctionOut {
                arguments: c.arguments.concat(),
                name: &c.name,
            }),
        }
    }
}

impl Usage {
    pub(super) fn out(self) -> UsageOut {
        UsageOut {
            completion_tokens: self.completion_tokens,
            completion_tokens_details: ReasoningOut {
                reasoning_tokens: self.reasoning_tokens,
            },
            prompt_tokens: self.prompt_tokens,
            prompt_tokens_details: CachedOut {
                cached_tokens: self.cached_tokens,
            },
            total_tokens: self.prompt_tokens + self.completion_tokens,
        }
    }
}
