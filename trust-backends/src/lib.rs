//! # trust-backends
//!
//! Implementations of [`trust_core::LanguageModel`] and [`trust_core::TextScorer`]:
//!
//! - `candle` (default feature): GPT-NeoX/Pythia, Llama and Qwen2 from Hugging Face safetensors,
//!   full-sequence logits, KV cache, batching; `cuda` forwards to candle's CUDA support.
//! - [`scorers`]: every text scorer — the Jigsaw-trained toxicity BiLSTM (with `candle`), the ONNX
//!   classifiers (with `ort`), the lexical demo scorer.
//! - `ort`: ONNX Runtime sequence classifiers (toxicity scorers) and causal LMs, loaded from the
//!   library named by `ORT_DYLIB_PATH`; `ort-cuda` adds the CUDA execution provider.
//! - `http`: [`http::HttpModel`], a client of OpenAI-compatible servers (vLLM, TGI, llama.cpp,
//!   mistral.rs, `trust serve`); with `candle` also [`http::server`], the server behind `trust serve`.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

#[cfg(feature = "candle")]
pub mod candle;
pub mod error;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "ort")]
pub mod ort;
pub mod scorers;
#[cfg(any(feature = "candle", feature = "ort"))]
pub(crate) mod tokenizer_file;

/// The Jigsaw scorer under its earlier path (now [`scorers::jigsaw`]).
#[cfg(feature = "candle")]
pub use scorers::jigsaw;

pub use error::BackendError;

/// Hex sha256 of `bytes`.
#[cfg(feature = "candle")]
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Streamed hex sha256 over `files` concatenated in order (weights hashes in `ModelInfo` and
/// `ScorerInfo`); errors name the file.
pub fn sha256_files(files: &[std::path::PathBuf]) -> Result<String, BackendError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    for path in files {
        let io = |source| BackendError::Io {
            path: path.clone(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(hex::encode(h.finalize()))
}
