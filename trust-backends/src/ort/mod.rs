//! ONNX Runtime backend (feature `ort`): sequence classifiers ([`OrtClassifier`], e.g. a local
//! toxicity scorer replacing the Perspective API), raw-text classifiers ([`OrtTextClassifier`],
//! e.g. hatesonar) and causal language models ([`OrtCausalLm`]).
//!
//! The ONNX Runtime shared library is loaded at run time (`ort`'s `load-dynamic`; nothing is
//! downloaded at build time) from [`SessionOptions::dylib_path`], else the `ORT_DYLIB_PATH`
//! environment variable, else `.ort/lib/libonnxruntime.so` found in the working directory or
//! above the executable. `scripts/install-onnxruntime.sh` installs a pinned ONNX Runtime 1.31.1
//! into `.ort/lib/`, and `.cargo/config.toml` points `ORT_DYLIB_PATH` there for cargo commands.
//! A missing or unusable library is a [`BackendError::OrtLibrary`](crate::BackendError::OrtLibrary)
//! error, never a panic.
//!
//! ```no_run
//! use trust_backends::ort::{OrtClassifier, OrtClassifierOptions};
//! # fn main() -> Result<(), trust_backends::BackendError> {
//! let scorer = OrtClassifier::from_dir("models/toxic-bert-onnx", OrtClassifierOptions::default())?;
//! println!("labels: {:?}", scorer.labels());
//! # Ok(())
//! # }
//! ```

mod causal_lm;
mod classifier;
mod io;
mod pool;
mod runtime;
mod text_classifier;

pub use causal_lm::{OrtCausalLm, OrtCausalLmOptions};
pub use classifier::{Activation, OrtClassifier, OrtClassifierOptions};
pub use runtime::{OrtDevice, SessionOptions, ort_environment};
pub use text_classifier::{OrtTextClassifier, is_text_classifier_dir};
