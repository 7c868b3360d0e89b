//! JSON bodies of the OpenAI-compatible API, as far as trust uses them (client and server).
//!
//! Unknown fields are ignored when reading, and optional fields are left out when writing, so
//! the same types talk to vLLM, TGI, llama.cpp, mistral.rs and `trust serve`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// A prompt: one string or a list (`/v1/completions` accepts both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// One prompt.
    One(String),
    /// Several prompts; choices are numbered prompt-major (`index = prompt * n + sample`).
    Many(Vec<String>),
}

impl Prompt {
    /// The prompts as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Prompt::One(s) => vec![s],
            Prompt::Many(v) => v,
        }
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

impl Stop {
    /// The stop strings as a list.
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// Sampling fields shared by `/v1/completions` and `/v1/chat/completions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// New tokens at most (OpenAI default 16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// 0 = greedy (OpenAI default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus mass (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Top-k (vLLM / llama.cpp extension; -1 or 0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    /// Sequences per prompt (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// Seed of the request's sampler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Stop strings (excluded from the returned text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    /// Extra stop token ids (vLLM extension; added to EOS unless `ignore_eos`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_token_ids: Option<Vec<u32>>,
    /// Do not stop on the model's EOS (vLLM extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
}

/// Body of `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    /// Served model name.
    #[serde(default)]
    pub model: String,
    /// The prompt(s).
    pub prompt: Prompt,
    /// Sampling fields.
    #[serde(flatten)]
    pub params: SamplingParams,
    /// Return the prompt in front of the completion (with its log-probs when `logprobs` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
    /// Return log-probs, with this many alternatives per position in `top_logprobs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<usize>,
}

/// `logprobs` of a completion choice (legacy OpenAI layout).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Logprobs {
    /// Token strings.
    #[serde(default)]
    pub tokens: Vec<String>,
    /// log p(token | before); `null` for the first token of an echoed prompt.
    #[serde(default)]
    pub token_logprobs: Vec<Option<f64>>,
    /// The most likely alternatives per position (token string → log-prob).
    #[serde(default)]
    pub top_logprobs: Vec<Option<HashMap<String, f64>>>,
    /// Character offset of each token in the returned text (prompt included when echoed).
    #[serde(default)]
    pub text_offset: Vec<usize>,
}

/// One choice of a completion response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionChoice {
    /// `prompt * n + sample`.
    #[serde(default)]
    pub index: usize,
    /// The text (prompt first when echoed).
    #[serde(default)]
    pub text: String,
    /// Log-probs, when requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Logprobs>,
    /// `length` or `stop`.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// What stopped it (vLLM): the stop string, a stop token id, or `null` for EOS / length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<serde_json::Value>,
    /// The generated token ids (extension of `trust serve`; vLLM returns them with
    /// `return_token_ids`). Absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

/// Response of `POST /v1/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    /// Response id.
    #[serde(default)]
    pub id: String,
    /// `text_completion`.
    #[serde(default)]
    pub object: String,
    /// Served model name.
    #[serde(default)]
    pub model: String,
    /// The choices.
    pub choices: Vec<CompletionChoice>,
}

/// A chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text (`null` is read as empty).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: String,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// Body of `POST /v1/chat/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Served model name.
    #[serde(default)]
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Sampling fields.
    #[serde(flatten)]
    pub params: SamplingParams,
}

/// One choice of a chat response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    /// Sample index.
    #[serde(default)]
    pub index: usize,
    /// The assistant's message.
    pub message: ChatMessage,
    /// `length` or `stop`.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// What stopped it (vLLM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<serde_json::Value>,
    /// Generated token ids (extension of `trust serve`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

/// Response of `POST /v1/chat/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// Response id.
    #[serde(default)]
    pub id: String,
    /// `chat.completion`.
    #[serde(default)]
    pub object: String,
    /// Served model name.
    #[serde(default)]
    pub model: String,
    /// The choices.
    pub choices: Vec<ChatChoice>,
}

/// An OpenAI-style error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// `invalid_request_error`, `server_error`, ...
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The offending parameter, if any.
    #[serde(default)]
    pub param: Option<String>,
    /// A machine-readable code, if any.
    #[serde(default)]
    pub code: Option<serde_json::Value>,
}
