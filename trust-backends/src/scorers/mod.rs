//! Every text scorer of trust in one tree: the toxicity classifiers that implement
//! [`trust_core::TextScorer`] and turn a continuation into a probability of being toxic.
//!
//! | scorer | module | feature | CLI (`--scorer`) |
//! |---|---|---|---|
//! | Jigsaw-trained BiLSTM (PyPI `toxic-comment-classifier`), the default | `jigsaw` | `candle` | `jigsaw[:DIR]` |
//! | ONNX Runtime classifiers: Hugging Face exports, hatesonar's sklearn pipeline | `onnx` | `ort` | `onnx:DIR` |
//! | hashed n-gram logistic regression fitted to the Perspective scores in the data | [`lexical`] | always | `lexical` |
//!
//! How far each one agrees with the Perspective API the papers used is measured by
//! `trust scorer-agreement` and recorded in `trust_core::scorer::PERSPECTIVE_AGREEMENT`
//! (docs/toxicity-scorer.md).

#[cfg(feature = "candle")]
pub mod jigsaw;
pub mod lexical;

/// ONNX Runtime text classifiers (re-exported from [`crate::ort`]): [`onnx::OrtClassifier`] for
/// Hugging Face sequence-classification exports, [`onnx::OrtTextClassifier`] for string-input
/// pipelines such as hatesonar.
#[cfg(feature = "ort")]
pub mod onnx {
    pub use crate::ort::{
        Activation, OrtClassifier, OrtClassifierOptions, OrtTextClassifier, is_text_classifier_dir,
    };
}

#[cfg(feature = "candle")]
pub use jigsaw::JigsawScorer;
pub use lexical::LexicalToxicity;
#[cfg(feature = "ort")]
pub use onnx::{OrtClassifier, OrtTextClassifier};
