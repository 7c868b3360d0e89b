//! The text-scorer (classifier) trait: toxicity, refusal, NLI, judges with a scalar head.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::ScorerError;

/// Identity and label set of a scorer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ScorerInfo {
    /// Human-readable id (a path or a name).
    pub id: String,
    /// Label names, in the order of [`Scores::values`].
    pub labels: Vec<String>,
    /// The label verticals read by default (e.g. `toxicity`).
    pub primary: Option<String>,
    /// sha256 of the weights, when known.
    pub weights_sha256: Option<String>,
}

impl ScorerInfo {
    /// Index of `label`, or an error listing the labels.
    pub fn label_index(&self, label: &str) -> Result<usize, ScorerError> {
        self.labels
            .iter()
            .position(|l| l == label)
            .ok_or_else(|| ScorerError::UnknownLabel {
                scorer: self.id.clone(),
                label: label.to_string(),
                available: self.labels.join(", "),
            })
    }
}

/// Per-label probabilities (or scores) of one text, aligned with [`ScorerInfo::labels`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// One value per label.
    pub values: Vec<f64>,
}

/// A batched text classifier. `&self`, `Send + Sync`: pool internal state if the engine needs
/// `&mut` (ONNX Runtime sessions do).
#[async_trait::async_trait]
pub trait TextScorer: Send + Sync {
    /// Identity and labels.
    fn info(&self) -> ScorerInfo;

    /// Scores each text; exactly one result per text, in order.
    async fn score(&self, texts: &[String]) -> Vec<Result<Scores, ScorerError>>;
}

#[async_trait::async_trait]
impl<S: TextScorer + ?Sized> TextScorer for Arc<S> {
    fn info(&self) -> ScorerInfo {
        (**self).info()
    }
    async fn score(&self, texts: &[String]) -> Vec<Result<Scores, ScorerError>> {
        (**self).score(texts).await
    }
}

#[async_trait::async_trait]
impl<S: TextScorer + ?Sized> TextScorer for Box<S> {
    fn info(&self) -> ScorerInfo {
        (**self).info()
    }
    async fn score(&self, texts: &[String]) -> Vec<Result<Scores, ScorerError>> {
        (**self).score(texts).await
    }
}
