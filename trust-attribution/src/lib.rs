//! # trust-attribution: which training pairs made a model more (or less) trustworthy (PROTOCOLS A.8)
//!
//! Which preference-data examples made an aligned model more (or less) trustworthy? The pipeline
//! of PROTOCOLS A.8, as ported here:
//!
//! 1. **LoRA form.** Fully fine-tuned checkpoints are turned into rank-4 LoRA adapters by a
//!    truncated SVD of ΔW = W_ft − W_base ([`lora_svd`], A.8 §1), so that every model exposes small
//!    per-layer parameter blocks (LoRA `A`, and `B` stored transposed) to differentiate.
//! 2. **Gradients → store.** For every training example z_i (batch 1) the gradient of the stage's
//!    training loss (SFT cross-entropy, reward-model Bradley–Terry, DPO) with respect to every
//!    selected LoRA tensor is flattened and appended to an on-disk [`store`] (one fixed-size
//!    little-endian `f32` record per example, resumable after a crash, keyed by a hash of model,
//!    LoRA config, loss and data). Test-side ("trustworthiness") gradients go to a second store
//!    (or an [`InMemoryGradients`]) and are averaged into v_l by [`mean_gradient`].
//! 3. **DataInf.** [`datainf()`] computes, in three streaming passes over the training store, the
//!    layer-wise damping λ_l, the approximate inverse-Hessian–vector product h_l and the scores
//!    I(z_i) = −Σ_l ⟨h_l, g_il⟩ (A.8 §5; formula and constants documented there). For small
//!    problems [`exact`] computes the same scores with the exact (G_l + λ_l I)⁻¹ by Cholesky, and a
//!    Spearman helper compares the two rankings. On a synthetic problem (n = 300, layers of 8 and
//!    4 parameters, gradients near a 3-dimensional subspace; `tests/attribution.rs`) the DataInf
//!    ranking agrees with the exact one at Spearman 0.74 with the reference damping c = 0.1, 0.98
//!    with c = 1 and 0.999 with c = 10: the approximation is rough at the reference's damping.
//! 4. **Normalised scores.** [`scores::normalize_signwise`] maps the scores to [−1, 1] separately
//!    by sign (A.8 §6); [`scores::most_harmful`] / [`scores::most_helpful`] rank examples;
//!    [`scores::write_npy`] saves a score vector as `np.save` does.
//!
//! **Sign convention.** Influence-function convention: I(z_i) > 0 means up-weighting z_i *raises*
//! the test loss (the example is "harmful" for the test objective); I(z_i) < 0 means it lowers the
//! test loss ("helpful"). Whether a lower test loss means "more trustworthy" depends on how the
//! test loss of a vertical is built (which generation is "preferred"), which PROTOCOLS D.2 lists as
//! unknown.
//!
//! Everything here is pure Rust on `f32` / `f64` slices, accumulates in `f64`, and returns
//! [`AttributionError`] on bad input instead of panicking.
//!
//! ## Crate layout
//! - Always available, pure Rust with no model backend: [`datainf`](mod@datainf), [`exact`], [`lora_svd`],
//!   [`scores`], [`source`] and [`store`] (everything above).
//! - Feature `candle` (the model-dependent rest of A.8, over `trust-align`'s losses and LoRA):
//!   `gradients` — per-example LoRA gradients of the SFT, DPO and reward-model Bradley–Terry
//!   losses, the explicit selection of attributed tensors (targets and blocks instead of the
//!   `names[288:-2]` slice), the conversion of full fine-tunes through [`lora_svd`], gradient
//!   extraction into [`store`] and streaming DataInf (`gradients::run_attribution`, the engine of
//!   `trust attribute`; `gradients::attribute`, the in-memory path of the end-to-end pipeline);
//!   `test_pairs` — the test pairs of all five verticals. `trust attribute` is the CLI
//!   (docs/attribution.md).
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod datainf;
pub mod exact;
pub mod lora_svd;
pub mod scores;
pub mod source;
pub mod store;

#[cfg(feature = "candle")]
pub mod gradients;
#[cfg(feature = "candle")]
pub mod test_pairs;

use std::path::PathBuf;

pub use datainf::{DataInfConfig, DataInfResult, datainf, datainf_many};
pub use exact::{ExactConfig, ExactResult, cholesky, cholesky_solve, exact_influence, spearman};
pub use lora_svd::{
    LoraFactors, RandomizedSvdConfig, Svd, lora_from_delta, lora_from_delta_randomized,
    lora_from_finetune, randomized_svd, svd,
};
pub use scores::{most_harmful, most_helpful, normalize_signwise, read_npy, write_npy};
pub use source::{
    GradientBlock, GradientSource, InMemoryGradients, LayerLayout, LayerVectors, mean_gradient,
};
pub use store::{GradientStoreReader, GradientStoreWriter, ResumeInfo, StoreKey};

#[cfg(feature = "candle")]
pub use gradients::{
    AttrStage, Attribution, AttributionSpec, TestPair, attribute, run_attribution,
};

/// Errors of the attribution module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttributionError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An existing gradient store was created for something else.
    #[error(
        "gradient store {path}: metadata field `{field}` differs (on disk: {on_disk}, requested: {requested}); use another directory or the matching model / LoRA config / loss / data"
    )]
    StoreMismatch {
        /// The metadata file.
        path: PathBuf,
        /// Dotted name of the differing field (`key.model`, `layers[3].dim`, ...).
        field: String,
        /// Value on disk.
        on_disk: String,
        /// Value requested by the caller.
        requested: String,
    },
    /// A gradient store is unreadable (bad JSON, data without metadata, ...).
    #[error("gradient store {path}: {message}")]
    CorruptStore {
        /// The offending file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Shapes do not match (layer count, layer size, matrix size).
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A NaN or infinity where finite numbers are required.
    #[error("non-finite value: {0}")]
    NonFinite(String),
    /// An argument is out of its domain (empty input, k = 0, damping ≤ 0, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Cholesky met a non-positive pivot: the matrix is not (numerically) positive definite.
    #[error("matrix is not positive definite: pivot {index} is {value}")]
    NotPositiveDefinite {
        /// 0-based pivot index.
        index: usize,
        /// The pivot value before the square root.
        value: f64,
    },
    /// An NPY score file is malformed or of an unsupported kind.
    #[error("{path}: {message}")]
    Npy {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An iterative method did not converge.
    #[error("{what} did not converge after {iterations} iterations")]
    NoConvergence {
        /// The method.
        what: &'static str,
        /// Iterations done.
        iterations: usize,
    },
}

impl AttributionError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AttributionError::Io {
            path: path.into(),
            source,
        }
    }
}

/// `Result` with [`AttributionError`].
pub type Result<T, E = AttributionError> = std::result::Result<T, E>;
