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

/// A shipped scorer's agreement with Perspective (the papers' toxicity scorer), as measured by
/// `trust scorer-agreement` on the 4,773 RealToxicityPrompts prompts and continuations that carry
/// a Perspective toxicity score (Perspective ≥ 0.5 positive for AUROC and accuracy). Keyed by the
/// sha256 of the scorer's weights, so a report can state the figures of exactly the model it
/// used. docs/toxicity-scorer.md has the full table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnownAgreement {
    /// sha256 of the weights ([`ScorerInfo::weights_sha256`]).
    pub weights_sha256: &'static str,
    /// The scorer's name.
    pub scorer: &'static str,
    /// The label compared.
    pub label: &'static str,
    /// Texts compared.
    pub n: usize,
    /// Pearson correlation.
    pub pearson: f64,
    /// Spearman correlation.
    pub spearman: f64,
    /// AUROC.
    pub auroc: f64,
    /// Accuracy at 0.5.
    pub accuracy: f64,
    /// Mean absolute error.
    pub mae: f64,
}

const JIGSAW: &str = "9d7c63ae624fa3f148c55f750d8d2f096814eb28a05732403d9a50c18966d4fe";
const HATESONAR: &str = "5839f6162591b1f48d6d56155dda4e007c5c79d01f93d26c5397443e965be01d";

/// `trust scorer-agreement` (all labels of jigsaw and hatesonar as converted by
/// scripts/fetch-models.sh).
pub const PERSPECTIVE_AGREEMENT: &[KnownAgreement] = &[
    KnownAgreement {
        weights_sha256: JIGSAW,
        scorer: "jigsaw",
        label: "toxic",
        n: 4773,
        pearson: 0.816,
        spearman: 0.825,
        auroc: 0.927,
        accuracy: 0.843,
        mae: 0.179,
    },
    KnownAgreement {
        weights_sha256: JIGSAW,
        scorer: "jigsaw",
        label: "severe_toxic",
        n: 4773,
        pearson: 0.515,
        spearman: 0.815,
        auroc: 0.922,
        accuracy: 0.561,
        mae: 0.435,
    },
    KnownAgreement {
        weights_sha256: JIGSAW,
        scorer: "jigsaw",
        label: "obscene",
        n: 4773,
        pearson: 0.735,
        spearman: 0.815,
        auroc: 0.927,
        accuracy: 0.771,
        mae: 0.256,
    },
    KnownAgreement {
        weights_sha256: JIGSAW,
        scorer: "jigsaw",
        label: "threat",
        n: 4773,
        pearson: 0.421,
        spearman: 0.773,
        auroc: 0.901,
        accuracy: 0.559,
        mae: 0.459,
    },
    KnownAgreement {
        weights_sha256: JIGSAW,
        scorer: "jigsaw",
        label: "insult",
        n: 4773,
        pearson: 0.743,
        spearman: 0.821,
        auroc: 0.925,
        accuracy: 0.725,
        mae: 0.292,
    },
    KnownAgreement {
        weights_sha256: JIGSAW,
        scorer: "jigsaw",
        label: "identity_hate",
        n: 4773,
        pearson: 0.431,
        spearman: 0.774,
        auroc: 0.897,
        accuracy: 0.564,
        mae: 0.435,
    },
    KnownAgreement {
        weights_sha256: HATESONAR,
        scorer: "hatesonar",
        label: "hate_speech",
        n: 4773,
        pearson: 0.322,
        spearman: 0.379,
        auroc: 0.691,
        accuracy: 0.569,
        mae: 0.400,
    },
    KnownAgreement {
        weights_sha256: HATESONAR,
        scorer: "hatesonar",
        label: "offensive_language",
        n: 4773,
        pearson: 0.588,
        spearman: 0.491,
        auroc: 0.758,
        accuracy: 0.746,
        mae: 0.232,
    },
    KnownAgreement {
        weights_sha256: HATESONAR,
        scorer: "hatesonar",
        label: "neither",
        n: 4773,
        pearson: -0.636,
        spearman: -0.568,
        auroc: 0.203,
        accuracy: 0.239,
        mae: 0.491,
    },
];

/// The recorded agreement of the scorer with weights `sha256` on `label`, if it is a shipped one.
pub fn perspective_agreement(sha256: &str, label: &str) -> Option<&'static KnownAgreement> {
    PERSPECTIVE_AGREEMENT
        .iter()
        .find(|k| k.weights_sha256 == sha256 && k.label == label)
}

/// A sentence for reports: which scorer scored toxicity and how it agrees with Perspective.
pub fn scorer_note(info: &ScorerInfo, label: &str) -> String {
    let known = info
        .weights_sha256
        .as_deref()
        .and_then(|s| perspective_agreement(s, label));
    match known {
        Some(k) => format!(
            "Toxicity is scored by {} (label `{label}`), not by Perspective as in the papers; on {} RealToxicityPrompts texts it agrees with Perspective at Pearson {:.2}, Spearman {:.2}, AUROC {:.2}, accuracy at 0.5 {:.2} (`trust scorer-agreement`).",
            info.id, k.n, k.pearson, k.spearman, k.auroc, k.accuracy
        ),
        None => format!(
            "Toxicity is scored by {} (label `{label}`), not by Perspective as in the papers; its agreement with Perspective was not measured for these weights (run `trust scorer-agreement --scorer ...`).",
            info.id
        ),
    }
}

#[cfg(test)]
mod agreement_tests {
    use super::*;

    #[test]
    fn notes_quote_the_recorded_figures_of_exactly_these_weights() {
        let mut info = ScorerInfo {
            id: "jigsaw:models/jigsaw-bilstm".into(),
            labels: vec!["toxic".into()],
            primary: Some("toxic".into()),
            weights_sha256: Some(JIGSAW.into()),
        };
        let n = scorer_note(&info, "toxic");
        assert!(
            n.contains("Pearson 0.82") && n.contains("AUROC 0.93") && n.contains("4773"),
            "{n}"
        );
        info.weights_sha256 = Some("0".repeat(64));
        assert!(scorer_note(&info, "toxic").contains("not measured"));
        assert!(perspective_agreement(HATESONAR, "offensive_language").is_some());
        assert!(perspective_agreement(HATESONAR, "toxic").is_none());
    }
}
