//! # trust-core
//!
//! The traits, data types and runner of **trust**, an SDK that measures what preference alignment
//! (SFT, DPO, PPO) does to a language model's trustworthiness.
//!
//! This crate does no model I/O and has no backend: backends implement [`LanguageModel`] and
//! [`TextScorer`] (crate `trust-backends`), verticals implement [`Vertical`] (crate
//! `trust-verticals`), and the [`Runner`] connects them.
//!
//! ```
//! use trust_core::testing::MockModel;
//! use trust_core::{DecodingConfig, GenerateRequest, LanguageModel};
//!
//! # tokio_test_block_on(async {
//! let model = MockModel::new().rule("capital of France", "Paris");
//! let req = GenerateRequest {
//!     prompt: "The capital of France is".into(),
//!     config: DecodingConfig::greedy(5),
//!     seed: 0,
//! };
//! let out = model.generate(&[req]).await;
//! assert_eq!(out[0].as_ref().unwrap().completions[0].text, "Paris");
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod cache;
pub mod chat;
pub mod data;
pub mod error;
pub mod fsutil;
pub mod fuzz;
pub mod manifest;
pub mod metric;
pub mod model;
pub mod rng;
pub mod runner;
pub mod sampling;
pub mod scorer;
pub mod subset;
pub mod testing;
pub mod vertical;

pub use cache::{Cached, DirCache, GenerationCache, MemoryCache};
pub use chat::{ChatFormat, ChatWrapped, HhLayout, SharedChatFormat};
pub use data::DataDir;
pub use error::{Error, ModelError, Result, ScorerError};
pub use manifest::RunManifest;
pub use metric::{Bootstrap, Metric, MetricValue};
pub use model::{
    Capabilities, Capability, Completion, DecodingConfig, FinishReason, GenerateRequest,
    GenerateResponse, LanguageModel, LogLikelihood, LogLikelihoodRequest, ModelInfo, Sampling,
    StopPolicy,
};
pub use runner::{RunObserver, Runner, RunnerBuilder, SampleRecord, VerticalReport};
pub use scorer::{ScorerInfo, Scores, TextScorer};
pub use vertical::{Outcome, Request, Requirements, Response, ScoreContext, Vertical};
