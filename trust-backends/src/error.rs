//! The error type of trust-backends.

use std::path::PathBuf;

/// Errors raised while loading or running a backend. Every variant names the file (and tensor or
/// field) at fault where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A config file is invalid or names something unsupported.
    #[error("{path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A weight tensor is missing or has the wrong shape/dtype.
    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor {
        /// The weights file (or index).
        path: PathBuf,
        /// Tensor name.
        tensor: String,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer cannot be loaded or does not fit the model.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer {
        /// tokenizer.json.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A requested device or execution provider is unavailable.
    #[error("device: {0}")]
    Device(String),
    /// A runtime failure in the engine.
    #[error("{0}")]
    Runtime(String),
    /// The ONNX Runtime shared library (`ort` feature) is missing, unloadable or too old.
    #[error(
        "ONNX Runtime library{}: {message}; run scripts/install-onnxruntime.sh or set ORT_DYLIB_PATH to an ONNX Runtime >= 1.31 shared library (libonnxruntime.so)",
        path.as_ref().map(|p| format!(" `{}`", p.display())).unwrap_or_default()
    )]
    OrtLibrary {
        /// The library path tried, if any.
        path: Option<PathBuf>,
        /// What went wrong.
        message: String,
    },
    /// An ONNX model's inputs or outputs do not match what the backend expects.
    #[error("{path}: {message}")]
    ModelSignature {
        /// The .onnx file.
        path: PathBuf,
        /// What is wrong (names the input or output).
        message: String,
    },
}

impl From<BackendError> for trust_core::ModelError {
    fn from(e: BackendError) -> Self {
        trust_core::ModelError::Backend(e.to_string())
    }
}
