//! The error types of trust-core.
//!
//! Every error that comes from bad input names where the input is: file, line and field for data
//! rows, the manifest field for resume mismatches, the capability for model/vertical mismatches.

use std::path::PathBuf;

/// An error from a model backend for one request (or a whole batch).
///
/// Backends map their own failures onto these variants; `Backend` carries anything else.
#[derive(Debug, Clone, thiserror::Error, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ModelError {
    /// The model cannot do what was asked (e.g. log-likelihood over a chat API).
    #[error("model `{model}` does not support {capability}")]
    Unsupported {
        /// Model id.
        model: String,
        /// The missing capability.
        capability: crate::model::Capability,
    },
    /// The request is invalid for this model (too long for its context, empty continuation, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A transient failure (HTTP 429/5xx, timeout). Retrying may help.
    #[error("transient model error: {0}")]
    Transient(String),
    /// Any other backend failure.
    #[error("backend error: {0}")]
    Backend(String),
}

/// An error from a text scorer (classifier).
#[derive(Debug, Clone, thiserror::Error, PartialEq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ScorerError {
    /// The input text cannot be scored (e.g. empty).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The scorer has no label of this name.
    #[error("scorer `{scorer}` has no label `{label}` (labels: {available})")]
    UnknownLabel {
        /// Scorer id.
        scorer: String,
        /// Requested label.
        label: String,
        /// Comma-separated labels the scorer has.
        available: String,
    },
    /// Any other scorer failure.
    #[error("scorer error: {0}")]
    Backend(String),
}

/// The error type of trust-core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A data row is malformed.
    #[error("{path}:{line}: field `{field}`: {message}")]
    Data {
        /// The data file.
        path: PathBuf,
        /// 1-based line (or record) number; 0 when the whole file is at fault.
        line: usize,
        /// The offending field (or `<row>` for the whole row).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The data directory is missing or lacks a file.
    #[error("data directory: {0}")]
    DataDir(String),
    /// A vertical needs a capability the model lacks. Raised before any request is sent.
    #[error(
        "vertical `{vertical}` (protocol `{protocol}`) needs {capability}, which model `{model}` does not have"
    )]
    MissingCapability {
        /// Vertical name.
        vertical: String,
        /// Protocol variant.
        protocol: String,
        /// The capability.
        capability: crate::model::Capability,
        /// Model id.
        model: String,
    },
    /// A vertical needs a text scorer and none was given.
    #[error(
        "vertical `{vertical}` needs a text scorer (e.g. a toxicity classifier); none was configured"
    )]
    MissingScorer {
        /// Vertical name.
        vertical: String,
    },
    /// Resuming found a run whose manifest differs from this run's.
    #[error(
        "cannot resume {path}: manifest field `{field}` differs (on disk: {on_disk}, this run: {this_run}); use a new output directory, or start over instead of resuming"
    )]
    ManifestMismatch {
        /// The manifest file.
        path: PathBuf,
        /// Dotted field path.
        field: String,
        /// Value on disk.
        on_disk: String,
        /// Value of this run.
        this_run: String,
    },
    /// Output already exists and `resume` was not requested.
    #[error(
        "{0} already holds results; resume that run (`Runner::resume`) or choose another output directory"
    )]
    OutputExists(PathBuf),
    /// The run was stopped on purpose (see [`crate::runner::RunnerBuilder::stop_after`]).
    #[error("run interrupted after {written} samples")]
    Interrupted {
        /// Samples written before the stop.
        written: usize,
    },
    /// A model failure that aborts the whole run (rare: per-request failures are recorded per sample).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A scorer failure that aborts the whole run.
    #[error(transparent)]
    Scorer(#[from] ScorerError),
    /// A JSON (de)serialisation failure.
    #[error("{context}: {source}")]
    Json {
        /// What was being (de)serialised.
        context: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A malformed data row.
    pub fn data(
        path: impl Into<PathBuf>,
        line: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Data {
            path: path.into(),
            line,
            field: field.into(),
            message: message.into(),
        }
    }

    /// A JSON error with context.
    pub fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            context: context.into(),
            source,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
