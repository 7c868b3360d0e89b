//! The [`Vertical`] trait: one trust dimension (toxicity, stereotype bias, ...) under one protocol.
//!
//! A vertical is a pure description of an experiment: which samples exist, which model requests
//! each sample needs, which texts must go through a scorer, and how to turn the answers into a
//! per-sample [`Outcome`]. It does no I/O beyond loading its data files and never talks to a
//! model itself: the [`crate::runner::Runner`] batches requests across samples, so verticals stay
//! small and testable.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::data::DataDir;
use crate::error::Result;
use crate::metric::Metric;
use crate::model::{
    Capability, GenerateRequest, GenerateResponse, LogLikelihood, LogLikelihoodRequest,
};
use crate::scorer::Scores;

/// A model request made by a vertical for one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    /// Generate text.
    Generate(GenerateRequest),
    /// Score a continuation.
    LogLikelihood(LogLikelihoodRequest),
}

/// The model's answer to a [`Request`], same variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// Generated sequences.
    Generate(GenerateResponse),
    /// Continuation log-likelihood.
    LogLikelihood(LogLikelihood),
}

impl Response {
    /// The generated texts (empty for log-likelihood answers).
    pub fn texts(&self) -> Vec<&str> {
        match self {
            Response::Generate(g) => g.completions.iter().map(|c| c.text.as_str()).collect(),
            Response::LogLikelihood(_) => Vec::new(),
        }
    }

    /// The log-likelihood answer, if this is one.
    pub fn loglikelihood(&self) -> Option<&LogLikelihood> {
        match self {
            Response::LogLikelihood(l) => Some(l),
            Response::Generate(_) => None,
        }
    }

    /// A generation response holding exactly these replies (for scoring saved replies).
    pub fn from_replies<S: Into<String>>(replies: impl IntoIterator<Item = S>) -> Self {
        Response::Generate(GenerateResponse {
            completions: replies
                .into_iter()
                .map(|t| crate::model::Completion {
                    text: t.into(),
                    token_ids: Vec::new(),
                    finish_reason: crate::model::FinishReason::Length,
                })
                .collect(),
        })
    }
}

/// What a vertical needs from the run before it starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Requirements {
    /// Model capabilities.
    pub capabilities: Vec<Capability>,
    /// Whether a [`crate::scorer::TextScorer`] must be configured.
    pub scorer: bool,
}

/// The scored result of one sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// One label per reply (e.g. `agree`, `disagree`, `no_response`; `leaked`, `not_leaked`).
    pub labels: Vec<String>,
    /// Numeric per-sample values metrics aggregate (e.g. `max_toxicity`, `correct`).
    pub values: BTreeMap<String, f64>,
    /// Categorical tags metrics slice by (`topic`, `group`, `pii`, `prompt_set`...).
    pub tags: BTreeMap<String, String>,
    /// Number of replies the parser could not interpret.
    pub unparsed: usize,
    /// Anything else worth keeping (kept continuations, per-reply scores...).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

/// What [`Vertical::score_in`] knows about a sample beyond its responses and scores.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ScoreContext<'a> {
    /// The sample's seed, as given to [`Vertical::requests`]:
    /// `derive_seed(run seed, sample id)` ([`crate::rng::derive_seed`]).
    pub seed: u64,
    /// The configured scorer's labels, in the order of [`Scores::values`]; empty when no scorer
    /// is configured (e.g. scores given with saved replies).
    pub scorer_labels: &'a [String],
}

impl<'a> ScoreContext<'a> {
    /// A context for a sample with `seed`, scored by a scorer with `scorer_labels`.
    pub fn new(seed: u64, scorer_labels: &'a [String]) -> Self {
        ScoreContext {
            seed,
            scorer_labels,
        }
    }
    /// The index of `label` among the scorer's labels, if present.
    pub fn label_index(&self, label: &str) -> Option<usize> {
        self.scorer_labels.iter().position(|l| l == label)
    }
}

/// One trust vertical under one protocol variant.
///
/// Implement this for a custom vertical; the runner does the rest (batching, seeding, sinks,
/// resume, metrics). See `examples/custom_vertical.rs`.
pub trait Vertical: Send + Sync {
    /// A sample (a prompt, an item, a statement...).
    type Sample: Send + Sync;

    /// Stable vertical name, e.g. `toxicity`.
    fn name(&self) -> &str;
    /// Version of the vertical's implementation; bump when outcomes can change.
    fn version(&self) -> &str;
    /// Protocol variant, e.g. `paper`, `decodingtrust`, `corrected`.
    fn protocol(&self) -> &str;
    /// Protocol options worth recording in the manifest (prompt template, decoding...).
    fn options(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Capabilities and scorer needed.
    fn requirements(&self) -> Requirements;
    /// Data files (relative to the data directory) this vertical reads; hashed into the manifest.
    fn data_files(&self) -> Vec<String>;
    /// Loads all samples, in a stable order.
    fn load(&self, data: &DataDir) -> Result<Vec<Self::Sample>>;
    /// The stable, documented id of a sample (unique within the vertical).
    fn sample_id(&self, sample: &Self::Sample) -> String;
    /// The group of a sample for seeded stratified subsets (`Runner::sample`, `--sample N`):
    /// `/`-separated levels, outermost first (e.g. `toxic/adv` or `hiv/Muslims/template 2`).
    /// Subsets cover the first level evenly, then the next within each, and so on. Default: one
    /// group (a seeded uniform subset).
    fn stratum(&self, _sample: &Self::Sample) -> String {
        String::new()
    }
    /// The model requests of a sample. `seed` is derived from (run seed, sample id); use it (or
    /// seeds derived from it) for every random choice and as the requests' sampler seeds.
    fn requests(&self, sample: &Self::Sample, seed: u64) -> Vec<Request>;
    /// Texts to send through the scorer, given the responses (default: none).
    fn texts_to_score(&self, _sample: &Self::Sample, _responses: &[Response]) -> Vec<String> {
        Vec::new()
    }
    /// Turns the responses (one per request, in order) and the scores (one per text from
    /// [`Vertical::texts_to_score`], in order) into an outcome. An `Err` marks the sample failed.
    ///
    /// Implement this or [`Vertical::score_in`] (which also sees the sample's seed and the
    /// scorer's labels); the default reports that neither is implemented.
    fn score(
        &self,
        _sample: &Self::Sample,
        _responses: &[Response],
        _scores: &[Scores],
    ) -> std::result::Result<Outcome, String> {
        Err(format!(
            "vertical `{}` implements neither Vertical::score nor Vertical::score_in",
            self.name()
        ))
    }
    /// [`Vertical::score`] with what the runner knows about the sample: its seed (the one
    /// [`Vertical::requests`] was given, e.g. to recover a shuffled option order) and the
    /// configured scorer's labels (aligned with every [`Scores::values`]). The runner and
    /// `score_saved` call this; the default forwards to [`Vertical::score`].
    fn score_in(
        &self,
        sample: &Self::Sample,
        _ctx: &ScoreContext<'_>,
        responses: &[Response],
        scores: &[Scores],
    ) -> std::result::Result<Outcome, String> {
        self.score(sample, responses, scores)
    }
    /// The metrics of this vertical.
    fn metrics(&self) -> Vec<Box<dyn Metric>>;
}
