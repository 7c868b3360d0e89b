//! ONNX classifiers that take raw text (a string tensor) and return per-label probabilities:
//! scikit-learn pipelines converted by skl2onnx, such as hatesonar (TF-IDF + logistic
//! regression; `scripts/fetch-models.sh hatesonar`). The directory holds `model.onnx` and a
//! `config.json` written by the converter:
//!
//! ```json
//! {"format": "trust-onnx-text-classifier/1", "input": "text", "output": "probabilities",
//!  "labels": ["hate_speech", "offensive_language", "neither"], "primary": "offensive_language"}
//! ```
//!
//! The input is a 1-D string tensor of the texts (or `[N, 1]` when the model declares rank 2);
//! the output a float32 `[N, labels]` tensor read as is.

use std::path::{Path, PathBuf};

use ::ort::session::SessionInputValue;
use ::ort::value::Tensor;
use serde::Deserialize;
use trust_core::{ScorerError, ScorerInfo, Scores, TextScorer};

use super::pool::{SessionPool, parallel_map};
use super::runtime::{self, SessionOptions};
use crate::error::BackendError;

#[derive(Debug, Deserialize)]
struct Config {
    format: String,
    input: String,
    output: String,
    labels: Vec<String>,
    #[serde(default)]
    primary: Option<String>,
}

/// A raw-text ONNX classifier (see the module docs).
pub struct OrtTextClassifier {
    pool: SessionPool,
    model: PathBuf,
    input: String,
    input_rank: usize,
    output: String,
    info: ScorerInfo,
    batch_size: usize,
}

impl std::fmt::Debug for OrtTextClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtTextClassifier")
            .field("model", &self.model)
            .field("labels", &self.info.labels)
            .finish()
    }
}

/// Whether `dir` holds a raw-text classifier (its config.json has the format tag).
pub fn is_text_classifier_dir(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("format").and_then(|f| f.as_str()).map(str::to_string))
        .is_some_and(|f| f == "trust-onnx-text-classifier/1")
}

impl OrtTextClassifier {
    /// Loads `dir/model.onnx` with `dir/config.json`. Errors name the file.
    pub fn from_dir(dir: impl AsRef<Path>, session: SessionOptions) -> Result<Self, BackendError> {
        let dir = dir.as_ref();
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| BackendError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let cfg: Config = serde_json::from_str(&text).map_err(|e| BackendError::Config {
            path: cfg_path.clone(),
            message: format!("not a text-classifier config: {e}"),
        })?;
        if cfg.format != "trust-onnx-text-classifier/1" || cfg.labels.is_empty() {
            return Err(BackendError::Config {
                path: cfg_path,
                message: format!("unknown format `{}` or no labels", cfg.format),
            });
        }
        if let Some(p) = &cfg.primary {
            if !cfg.labels.contains(p) {
                return Err(BackendError::Config {
                    path: cfg_path,
                    message: format!("primary label `{p}` is not one of {:?}", cfg.labels),
                });
            }
        }
        let model = dir.join("model.onnx");
        if !model.exists() {
            return Err(BackendError::Io {
                path: model,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "model.onnx not found"),
            });
        }
        let env = runtime::ort_environment(session.dylib_path.as_deref())?;
        let first = runtime::open_session(&env, &model, &session)?;
        let sig = |message: String| BackendError::ModelSignature {
            path: model.clone(),
            message,
        };
        let input = first
            .inputs()
            .iter()
            .find(|i| i.name() == cfg.input)
            .ok_or_else(|| sig(format!("no input `{}`", cfg.input)))?;
        let input_rank = input
            .dtype()
            .tensor_shape()
            .map(|s| s.len())
            .unwrap_or(1)
            .max(1);
        if !first.outputs().iter().any(|o| o.name() == cfg.output) {
            return Err(sig(format!("no output `{}`", cfg.output)));
        }
        let mut sessions = vec![first];
        for _ in 1..session.pool_size() {
            sessions.push(runtime::open_session(&env, &model, &session)?);
        }
        let info = ScorerInfo {
            id: dir.display().to_string(),
            labels: cfg.labels.clone(),
            primary: cfg.primary.clone(),
            weights_sha256: Some(runtime::model_sha256(&model)?),
        };
        let clf = OrtTextClassifier {
            pool: SessionPool::new(sessions),
            model: model.clone(),
            input: cfg.input,
            input_rank,
            output: cfg.output,
            info,
            batch_size: 256,
        };
        let probe = clf.run(&["probe".to_string()])?;
        if probe[0].len() != clf.info.labels.len() {
            return Err(sig(format!(
                "the model returns {} values but there are {} labels",
                probe[0].len(),
                clf.info.labels.len()
            )));
        }
        Ok(clf)
    }

    /// The labels.
    pub fn labels(&self) -> &[String] {
        &self.info.labels
    }

    fn run(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, BackendError> {
        let n = texts.len();
        let shape: Vec<i64> = if self.input_rank == 2 {
            vec![n as i64, 1]
        } else {
            vec![n as i64]
        };
        let tensor = Tensor::from_string_array((shape, texts)).map_err(|e| {
            BackendError::Runtime(format!("{}: string tensor: {e}", self.model.display()))
        })?;
        let feed: Vec<(String, SessionInputValue<'_>)> = vec![(self.input.clone(), tensor.into())];
        let mut session = self.pool.checkout();
        let outputs = session.run(feed).map_err(|e| {
            BackendError::Runtime(format!("{}: inference failed: {e}", self.model.display()))
        })?;
        let value = outputs
            .get(&self.output)
            .ok_or_else(|| BackendError::ModelSignature {
                path: self.model.clone(),
                message: format!("the run returned no `{}` output", self.output),
            })?;
        let (shape, data) =
            value
                .try_extract_tensor::<f32>()
                .map_err(|e| BackendError::ModelSignature {
                    path: self.model.clone(),
                    message: format!("output `{}` is not a float32 tensor: {e}", self.output),
                })?;
        if shape.len() != 2 || shape[0] as usize != n {
            return Err(BackendError::ModelSignature {
                path: self.model.clone(),
                message: format!(
                    "output `{}` has shape {shape:?}; expected [{n}, labels]",
                    self.output
                ),
            });
        }
        let w = (shape[1] as usize).max(1);
        Ok(data.chunks(w).take(n).map(<[f32]>::to_vec).collect())
    }

    /// Per-label probabilities of each text (blocking), batched over the session pool.
    pub fn score_blocking(&self, texts: &[String]) -> Vec<Result<Scores, ScorerError>> {
        let chunks: Vec<&[String]> = texts.chunks(self.batch_size).collect();
        let results = parallel_map(&chunks, self.pool.size(), |c| self.run(c));
        let mut out = Vec::with_capacity(texts.len());
        for (chunk, r) in chunks.iter().zip(results) {
            match r {
                Ok(rows) => out.extend(rows.into_iter().map(|v| {
                    Ok(Scores {
                        values: v.into_iter().map(f64::from).collect(),
                    })
                })),
                Err(e) => out.extend(
                    chunk
                        .iter()
                        .map(|_| Err(ScorerError::Backend(e.to_string()))),
                ),
            }
        }
        out
    }
}

#[async_trait::async_trait]
impl TextScorer for OrtTextClassifier {
    fn info(&self) -> ScorerInfo {
        self.info.clone()
    }
    async fn score(&self, texts: &[String]) -> Vec<Result<Scores, ScorerError>> {
        self.score_blocking(texts)
    }
}
