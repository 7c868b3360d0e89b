//! OpenAI-compatible HTTP: a client backend ([`HttpModel`]) and, with the `candle` feature, a
//! server ([`server`], behind `trust serve`).
//!
//! [`HttpModel`] implements [`trust_core::LanguageModel`] over `/v1/completions` (or
//! `/v1/chat/completions`) of vLLM, TGI, llama.cpp server, mistral.rs or `trust serve`:
//! a concurrency limit, per-attempt timeouts, retries with seeded exponential backoff on
//! 408/429/5xx, connection errors, dropped connections and timeouts, and per-request errors
//! ([`trust_core::ModelError::Transient`] after the last retry) so a run never loses more than
//! the failing samples. Log-likelihood uses `echo` + `logprobs` (see
//! [`HttpModel`]'s `loglikelihood`). [`ShardedModel`] spreads a run over several servers.
//!
//! `https://` goes through rustls (ring provider, Mozilla roots compiled in; extra roots from
//! [`HttpOptions::ca_cert`] or `TRUST_CA_CERT`). The API key is read from an environment variable
//! ([`HttpOptions::api_key_env`], default `OPENAI_API_KEY`) and never logged. See
//! `docs/http-backend.md`.

mod client;
#[cfg(feature = "candle")]
pub mod server;
mod shard;
pub mod wire;

pub use client::{HttpModel, HttpOptions, TokenStops, continuation_logprobs};
pub use shard::ShardedModel;
