//! # trust
//!
//! Measure what preference alignment (SFT, DPO, PPO) does to a language model's trustworthiness —
//! toxicity, stereotypical bias, machine ethics, truthfulness, privacy — and which training pairs
//! caused it. This crate is the one dependency a user needs (from a checkout, `cargo add --path
//! PATH/TO/trust/trust`; the crates.io name `trust` belongs to another crate): it re-exports the
//! SDK's crates under features, with a [`prelude`].
//!
//! | module | crate | feature |
//! |---|---|---|
//! | [`core`] | `trust-core`: traits (`LanguageModel`, `TextScorer`, `Vertical`, `ChatFormat`), the `Runner`, manifests, metrics | always |
//! | [`verticals`] | `trust-verticals`: the five verticals and their protocols, the sophistry audit, the guard | always |
//! | [`attribution`] | `trust-attribution`: DataInf, exact influence, the gradient store, LoRA by SVD; per-example LoRA gradients and `run_attribution` with `attribution` | always / `attribution` |
//! | [`report`] | `trust-report`: report.json / Markdown / self-contained HTML | always |
//! | [`backends`] | `trust-backends`: `candle` (safetensors and GGUF, the jigsaw scorer), `ort`, `http` | `candle`, `ort`, `http` |
//! | [`scorers`] | every text scorer and the agreement-with-Perspective tools, re-exported | by scorer |
//! | `align` | `trust-align`: training — LoRA SFT / DPO / reward model | `align` |
//! | `pipeline` | the end-to-end run (align → evaluate → attribute → report) behind `trust demo` | `attribution` |
//!
//! ```no_run
//! use trust::prelude::*;
//!
//! # async fn run() -> anyhow::Result<()> {
//! let model = CandleModel::load("models/smollm2-135m-instruct", &LoadOptions::default())?;
//! let data = DataDir::resolve(None)?; // $TRUST_DATA_DIR, else the checkout's data/
//! let ethics = registry::build("machine_ethics", "paper", &BuildOptions::default())?;
//! let runner = Runner::builder().batch_size(16).seed(0).out_dir("runs/smollm2").build();
//! let report = ethics.run(&runner, &model, None, &data).await?;
//! for m in &report.metrics {
//!     println!("{} = {:?} [{:?}, {:?}]", m.name, m.value, m.ci_low, m.ci_high);
//! }
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub use trust_attribution as attribution;
pub use trust_core as core;
pub use trust_report as report;
pub use trust_verticals as verticals;

/// Model and scorer backends (`trust-backends`): [`backends::candle`], [`backends::jigsaw`]
/// (feature `candle`), `backends::ort` (feature `ort`), `backends::http` (feature `http`).
pub use trust_backends as backends;

/// Training (`trust-align`, feature `align`): HH-RLHF data, LoRA, SFT / DPO / reward-model
/// losses and the resumable training loop.
#[cfg(feature = "align")]
pub use trust_align as align;

#[cfg(feature = "attribution")]
pub mod pipeline;

/// Every text scorer in one place (toxicity classifiers implementing
/// [`TextScorer`](trust_core::TextScorer), from `trust_backends::scorers`):
/// [`scorers::JigsawScorer`] (the default toxicity scorer, feature `candle`),
/// `scorers::OrtClassifier` / `scorers::OrtTextClassifier` (ONNX Runtime, feature `ort`: Hugging
/// Face exports, hatesonar), [`scorers::LexicalToxicity`] (the demo's n-gram regression) and
/// [`scorers::MockScorer`] (tests); and the agreement-with-Perspective tools.
pub mod scorers {
    pub use trust_backends::scorers::*;
    pub use trust_core::scorer::{
        KnownAgreement, PERSPECTIVE_AGREEMENT, perspective_agreement, scorer_note,
    };
    pub use trust_core::testing::MockScorer;
    pub use trust_verticals::scorer_agreement::{Agreement, agreement, perspective_texts};
}

/// The names most programs use.
pub mod prelude {
    pub use trust_core::{
        ChatFormat, DataDir, DecodingConfig, GenerateRequest, LanguageModel, LogLikelihoodRequest,
        Metric, Runner, Sampling, StopPolicy, TextScorer, Vertical,
    };
    pub use trust_verticals::registry::{self, BuildOptions};

    #[cfg(feature = "candle")]
    pub use trust_backends::candle::{CandleModel, ChatTemplate, LoadOptions};
    #[cfg(feature = "http")]
    pub use trust_backends::http::HttpModel;
    #[cfg(feature = "candle")]
    pub use trust_backends::scorers::JigsawScorer;
    #[cfg(feature = "ort")]
    pub use trust_backends::scorers::{OrtClassifier, OrtTextClassifier};
}
