//! Sequence classifiers exported from Hugging Face to ONNX (toxicity scorers such as Detoxify or
//! `unitary/toxic-bert`), as a [`TextScorer`].

use std::path::{Path, PathBuf};

use ::ort::session::{Session, SessionInputValue};
use ::ort::value::TensorElementType;
use tokenizers::{Tokenizer, TruncationParams};
use trust_core::{ScorerError, ScorerInfo, Scores, TextScorer};

use super::io::{self, IntType};
use super::pool::{SessionPool, parallel_map};
use super::runtime::{self, SessionOptions};
use crate::error::BackendError;

/// How logits become per-label scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Independent sigmoid per label (multi-label heads, e.g. Detoxify / toxic-bert).
    Sigmoid,
    /// Softmax over the labels (single-label heads).
    Softmax,
    /// Raw logits (regression heads).
    Identity,
}

impl Activation {
    /// The activation HF's `text-classification` pipeline would pick: from `problem_type`, else
    /// sigmoid for one label and softmax for several.
    pub fn from_config(problem_type: Option<&str>, num_labels: usize) -> Activation {
        match problem_type {
            Some("multi_label_classification") => Activation::Sigmoid,
            Some("single_label_classification") => Activation::Softmax,
            Some("regression") => Activation::Identity,
            _ if num_labels == 1 => Activation::Sigmoid,
            _ => Activation::Softmax,
        }
    }

    /// Applies the activation to one row of logits.
    pub fn apply(self, logits: &[f32]) -> Vec<f64> {
        let x: Vec<f64> = logits.iter().map(|&v| f64::from(v)).collect();
        match self {
            Activation::Identity => x,
            Activation::Sigmoid => x.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
            Activation::Softmax => {
                let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.into_iter().map(|v| v / s).collect()
            }
        }
    }
}

impl std::str::FromStr for Activation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sigmoid" => Ok(Activation::Sigmoid),
            "softmax" => Ok(Activation::Softmax),
            "identity" | "none" => Ok(Activation::Identity),
            _ => Err(format!(
                "unknown activation `{s}` (sigmoid, softmax, identity)"
            )),
        }
    }
}

/// Options of [`OrtClassifier::from_dir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrtClassifierOptions {
    /// The ONNX file inside the directory (default: `model.onnx`, else `onnx/model.onnx`).
    pub model_file: Option<String>,
    /// Overrides the activation chosen from config.json `problem_type`.
    pub activation: Option<Activation>,
    /// The label verticals read by default. Default: `toxicity`, else `toxic`, if the model has
    /// such a label; otherwise none.
    pub primary: Option<String>,
    /// Label names when config.json has no `id2label` (must match the number of logits).
    pub labels: Option<Vec<String>>,
    /// Truncation length in tokens (special tokens included). Default: config.json
    /// `max_position_embeddings` (minus 2 for RoBERTa-style models), capped at 512.
    pub max_length: Option<usize>,
    /// Texts per ONNX Runtime call; longer inputs are split (texts sorted by length first).
    pub batch_size: usize,
    /// Sessions, threads, device and library.
    pub session: SessionOptions,
}

impl Default for OrtClassifierOptions {
    fn default() -> Self {
        OrtClassifierOptions {
            model_file: None,
            activation: None,
            primary: None,
            labels: None,
            max_length: None,
            batch_size: 32,
            session: SessionOptions::default(),
        }
    }
}

/// A Hugging Face sequence classifier exported to ONNX (`optimum-cli export onnx --task
/// text-classification`): inputs `input_ids`, `attention_mask` and optionally `token_type_ids`;
/// output `logits` of shape `[batch, num_labels]`. Reads `tokenizer.json` and `config.json`
/// (`id2label`, `problem_type`, `pad_token_id`, `max_position_embeddings`) from the same directory.
///
/// Texts are tokenised with special tokens, truncated, right-padded and batched; the sessions are
/// pooled so concurrent callers run in parallel. Scores are per-label probabilities aligned with
/// [`ScorerInfo::labels`].
pub struct OrtClassifier {
    pool: SessionPool,
    tokenizer: Tokenizer,
    model: PathBuf,
    info: ScorerInfo,
    activation: Activation,
    ids_type: IntType,
    mask: Option<IntType>,
    type_ids: Option<IntType>,
    output: String,
    pad_id: u32,
    batch_size: usize,
}

impl std::fmt::Debug for OrtClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtClassifier")
            .field("model", &self.model)
            .field("labels", &self.info.labels)
            .field("activation", &self.activation)
            .field("sessions", &self.pool.size())
            .finish()
    }
}

const EMPTY_TEXT: &str = "text tokenises to no tokens";

/// A tokenised text and its position in the caller's slice.
struct Tokenized {
    index: usize,
    ids: Vec<u32>,
    types: Vec<u32>,
}

/// Why one text has no logits.
enum RowError {
    Empty,
    Failed(BackendError),
}

fn sig_err(model: &Path, message: String) -> BackendError {
    BackendError::ModelSignature {
        path: model.to_path_buf(),
        message,
    }
}

impl OrtClassifier {
    /// Loads a classifier from a directory holding `model.onnx`, `tokenizer.json` and
    /// `config.json`.
    pub fn from_dir(
        dir: impl AsRef<Path>,
        options: OrtClassifierOptions,
    ) -> Result<Self, BackendError> {
        let dir = dir.as_ref();
        let model = io::model_path(dir, options.model_file.as_deref())?;
        let config_path = dir.join("config.json");
        let config = io::load_config(&config_path, false)?;
        let mut tokenizer = io::load_tokenizer(&dir.join("tokenizer.json"))?;

        let env = runtime::ort_environment(options.session.dylib_path.as_deref())?;
        let first = runtime::open_session(&env, &model, &options.session)?;

        // Signature.
        let inputs = io::input_names(&first);
        if !inputs.iter().any(|n| n == "input_ids") {
            return Err(sig_err(
                &model,
                format!(
                    "no `input_ids` input (inputs: {}); expected a Hugging Face sequence-classification export",
                    inputs.join(", ")
                ),
            ));
        }
        let ids_type = io::int_input(&first, &model, "input_ids")?;
        let mask = match inputs.iter().any(|n| n == "attention_mask") {
            true => Some(io::int_input(&first, &model, "attention_mask")?),
            false => None,
        };
        let type_ids = match inputs.iter().any(|n| n == "token_type_ids") {
            true => Some(io::int_input(&first, &model, "token_type_ids")?),
            false => None,
        };
        if let Some(other) = inputs
            .iter()
            .find(|n| !["input_ids", "attention_mask", "token_type_ids"].contains(&n.as_str()))
        {
            return Err(sig_err(
                &model,
                format!(
                    "unsupported input `{other}` (inputs: {})",
                    inputs.join(", ")
                ),
            ));
        }
        let outputs = io::output_names(&first);
        let output = if outputs.iter().any(|n| n == "logits") {
            "logits".to_string()
        } else if outputs.len() == 1 {
            outputs[0].clone()
        } else {
            return Err(sig_err(
                &model,
                format!("no `logits` output (outputs: {})", outputs.join(", ")),
            ));
        };
        match io::tensor_type(&first, &output, false) {
            Some(TensorElementType::Float32) => {}
            other => {
                return Err(sig_err(
                    &model,
                    format!("output `{output}` must be float32, found {other:?}"),
                ));
            }
        }
        let out_shape = io::tensor_shape(&first, &output, false).unwrap_or_default();
        if out_shape.len() != 2 {
            return Err(sig_err(
                &model,
                format!(
                    "output `{output}` has rank {}; expected [batch, num_labels]",
                    out_shape.len()
                ),
            ));
        }
        let static_labels = (out_shape[1] > 0).then_some(out_shape[1] as usize);

        // Labels.
        let labels =
            labels_from_config(&config, &config_path, options.labels.clone(), static_labels)?;
        let activation = options.activation.unwrap_or_else(|| {
            Activation::from_config(
                config.get("problem_type").and_then(|v| v.as_str()),
                labels.len(),
            )
        });
        let primary = match options.primary {
            Some(p) => {
                if !labels.contains(&p) {
                    return Err(BackendError::Config {
                        path: config_path,
                        message: format!(
                            "primary label `{p}` is not a label of the model ({})",
                            labels.join(", ")
                        ),
                    });
                }
                Some(p)
            }
            None => ["toxicity", "toxic"]
                .iter()
                .find(|l| labels.iter().any(|x| x == *l))
                .map(|s| s.to_string()),
        };

        // Tokenizer: truncation and padding id.
        let max_length = options.max_length.unwrap_or_else(|| {
            let pos = config
                .get("max_position_embeddings")
                .and_then(|v| v.as_u64())
                .unwrap_or(512) as usize;
            let is_roberta = matches!(
                config.get("model_type").and_then(|v| v.as_str()),
                Some("roberta" | "xlm-roberta" | "camembert")
            );
            // RoBERTa's position ids start at padding_idx + 1 = 2.
            (if is_roberta {
                pos.saturating_sub(2)
            } else {
                pos
            })
            .min(512)
        });
        if max_length == 0 {
            return Err(BackendError::Config {
                path: config_path,
                message: "max_length must be positive".into(),
            });
        }
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| BackendError::Tokenizer {
                path: dir.join("tokenizer.json"),
                message: e.to_string(),
            })?;
        tokenizer.with_padding(None);
        let pad_id = config
            .get("pad_token_id")
            .and_then(|v| v.as_u64())
            .map(|v| v as u32)
            .or_else(|| tokenizer.get_padding().map(|p| p.pad_id))
            .unwrap_or(0);

        let mut sessions = vec![first];
        for _ in 1..options.session.pool_size() {
            sessions.push(runtime::open_session(&env, &model, &options.session)?);
        }
        let info = ScorerInfo {
            id: dir.display().to_string(),
            labels,
            primary,
            weights_sha256: Some(runtime::model_sha256(&model)?),
        };
        let clf = OrtClassifier {
            pool: SessionPool::new(sessions),
            tokenizer,
            model,
            info,
            activation,
            ids_type,
            mask,
            type_ids,
            output,
            pad_id,
            batch_size: options.batch_size.max(1),
        };
        // A dry run checks the logits width against the labels now rather than on first use.
        let probe = clf.run_batch(&[&[clf.pad_id]], &[&[0]])?;
        if probe[0].len() != clf.info.labels.len() {
            return Err(sig_err(
                &clf.model,
                format!(
                    "the model returns {} logits but there are {} labels",
                    probe[0].len(),
                    clf.info.labels.len()
                ),
            ));
        }
        Ok(clf)
    }

    /// Label names, in score order.
    pub fn labels(&self) -> &[String] {
        &self.info.labels
    }

    /// The activation applied to the logits.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Number of pooled sessions.
    pub fn sessions(&self) -> usize {
        self.pool.size()
    }

    /// Raw logits of each text (blocking). One result per text: a text that tokenises to nothing
    /// is an error of its own.
    pub fn logits(&self, texts: &[String]) -> Vec<Result<Vec<f32>, BackendError>> {
        self.logits_inner(texts)
            .into_iter()
            .map(|r| {
                r.map_err(|e| match e {
                    RowError::Empty => BackendError::Runtime(EMPTY_TEXT.into()),
                    RowError::Failed(e) => e,
                })
            })
            .collect()
    }

    fn logits_inner(&self, texts: &[String]) -> Vec<Result<Vec<f32>, RowError>> {
        let mut out: Vec<Option<Result<Vec<f32>, RowError>>> =
            (0..texts.len()).map(|_| None).collect();
        let mut ok: Vec<Tokenized> = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            match self.tokenizer.encode(t.as_str(), true) {
                Ok(enc) if enc.get_ids().is_empty() => out[i] = Some(Err(RowError::Empty)),
                Ok(enc) => ok.push(Tokenized {
                    index: i,
                    ids: enc.get_ids().to_vec(),
                    types: enc.get_type_ids().to_vec(),
                }),
                Err(e) => {
                    out[i] = Some(Err(RowError::Failed(BackendError::Runtime(format!(
                        "tokenizing: {e}"
                    )))))
                }
            }
        }
        // Sort by length so batches carry little padding; results do not depend on the grouping.
        ok.sort_by_key(|t| t.ids.len());
        let chunks: Vec<&[Tokenized]> = ok.chunks(self.batch_size).collect();
        // Chunks run in parallel on up to `sessions` threads.
        let results = parallel_map(&chunks, self.pool.size(), |c| self.run_chunk(c));
        for (chunk, res) in chunks.iter().zip(results) {
            match res {
                Ok(rows) => {
                    for (t, row) in chunk.iter().zip(rows) {
                        out[t.index] = Some(Ok(row));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for t in chunk.iter() {
                        out[t.index] =
                            Some(Err(RowError::Failed(BackendError::Runtime(msg.clone()))));
                    }
                }
            }
        }
        out.into_iter()
            .map(|o| o.expect("every text has a result"))
            .collect()
    }

    /// Per-label scores of each text (blocking); see [`TextScorer::score`].
    pub fn score_blocking(&self, texts: &[String]) -> Vec<Result<Scores, ScorerError>> {
        self.logits_inner(texts)
            .into_iter()
            .map(|r| match r {
                Ok(l) => Ok(Scores {
                    values: self.activation.apply(&l),
                }),
                Err(RowError::Empty) => Err(ScorerError::InvalidInput(EMPTY_TEXT.into())),
                Err(RowError::Failed(e)) => Err(ScorerError::Backend(e.to_string())),
            })
            .collect()
    }

    fn run_chunk(&self, chunk: &[Tokenized]) -> Result<Vec<Vec<f32>>, BackendError> {
        let ids: Vec<&[u32]> = chunk.iter().map(|t| t.ids.as_slice()).collect();
        let types: Vec<&[u32]> = chunk.iter().map(|t| t.types.as_slice()).collect();
        self.run_batch(&ids, &types)
    }

    /// Runs one right-padded batch.
    fn run_batch(&self, ids: &[&[u32]], types: &[&[u32]]) -> Result<Vec<Vec<f32>>, BackendError> {
        let rows = ids.len();
        let cols = ids.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut id_data = vec![i64::from(self.pad_id); rows * cols];
        let mut mask_data = vec![0i64; rows * cols];
        let mut type_data = vec![0i64; rows * cols];
        for (r, row) in ids.iter().enumerate() {
            for (c, &t) in row.iter().enumerate() {
                id_data[r * cols + c] = i64::from(t);
                mask_data[r * cols + c] = 1;
                type_data[r * cols + c] = types[r].get(c).copied().map(i64::from).unwrap_or(0);
            }
        }
        let mut feed: Vec<(String, SessionInputValue<'_>)> = vec![(
            "input_ids".into(),
            io::int_tensor(self.ids_type, rows, cols, id_data)?.into(),
        )];
        if let Some(t) = self.mask {
            feed.push((
                "attention_mask".into(),
                io::int_tensor(t, rows, cols, mask_data)?.into(),
            ));
        }
        if let Some(t) = self.type_ids {
            feed.push((
                "token_type_ids".into(),
                io::int_tensor(t, rows, cols, type_data)?.into(),
            ));
        }
        let mut session = self.pool.checkout();
        run_logits(&mut session, &self.model, &self.output, feed, rows)
    }
}

fn run_logits(
    session: &mut Session,
    model: &Path,
    output: &str,
    feed: Vec<(String, SessionInputValue<'_>)>,
    rows: usize,
) -> Result<Vec<Vec<f32>>, BackendError> {
    let outputs = session.run(feed).map_err(|e| {
        BackendError::Runtime(format!("{}: inference failed: {e}", model.display()))
    })?;
    let value = outputs
        .get(output)
        .ok_or_else(|| sig_err(model, format!("the run returned no `{output}` output")))?;
    let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| {
        sig_err(
            model,
            format!("output `{output}` is not a float32 tensor: {e}"),
        )
    })?;
    if shape.len() != 2 || shape[0] as usize != rows {
        return Err(sig_err(
            model,
            format!("output `{output}` has shape {shape:?}; expected [{rows}, num_labels]"),
        ));
    }
    let width = shape[1] as usize;
    Ok(data
        .chunks(width.max(1))
        .take(rows)
        .map(<[f32]>::to_vec)
        .collect())
}

fn labels_from_config(
    config: &serde_json::Value,
    config_path: &Path,
    explicit: Option<Vec<String>>,
    width: Option<usize>,
) -> Result<Vec<String>, BackendError> {
    let labels = if let Some(l) = explicit {
        l
    } else if let Some(map) = config.get("id2label").and_then(|v| v.as_object()) {
        let mut pairs = Vec::with_capacity(map.len());
        for (k, v) in map {
            let id: usize = k.parse().map_err(|_| BackendError::Config {
                path: config_path.to_path_buf(),
                message: format!("id2label key `{k}` is not an integer"),
            })?;
            let name = v.as_str().ok_or_else(|| BackendError::Config {
                path: config_path.to_path_buf(),
                message: format!("id2label[{k}] is not a string"),
            })?;
            pairs.push((id, name.to_string()));
        }
        pairs.sort();
        if pairs.iter().enumerate().any(|(i, (id, _))| *id != i) {
            return Err(BackendError::Config {
                path: config_path.to_path_buf(),
                message: "id2label keys must be 0..n-1".into(),
            });
        }
        pairs.into_iter().map(|(_, n)| n).collect()
    } else if let Some(n) = width {
        (0..n).map(|i| format!("LABEL_{i}")).collect()
    } else {
        return Err(BackendError::Config {
            path: config_path.to_path_buf(),
            message:
                "no id2label and the model's output width is dynamic; pass the labels explicitly"
                    .into(),
        });
    };
    if labels.is_empty() {
        return Err(BackendError::Config {
            path: config_path.to_path_buf(),
            message: "the model has no labels".into(),
        });
    }
    if let Some(n) = width
        && n != labels.len()
    {
        return Err(BackendError::Config {
            path: config_path.to_path_buf(),
            message: format!(
                "{} labels ({}) but the model outputs {n} logits",
                labels.len(),
                labels.join(", ")
            ),
        });
    }
    Ok(labels)
}

#[async_trait::async_trait]
impl TextScorer for OrtClassifier {
    fn info(&self) -> ScorerInfo {
        self.info.clone()
    }

    async fn score(&self, texts: &[String]) -> Vec<Result<Scores, ScorerError>> {
        self.score_blocking(texts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_choice_follows_hf_pipeline() {
        assert_eq!(
            Activation::from_config(Some("multi_label_classification"), 6),
            Activation::Sigmoid
        );
        assert_eq!(
            Activation::from_config(Some("single_label_classification"), 1),
            Activation::Softmax
        );
        assert_eq!(
            Activation::from_config(Some("regression"), 1),
            Activation::Identity
        );
        assert_eq!(Activation::from_config(None, 1), Activation::Sigmoid);
        assert_eq!(Activation::from_config(None, 2), Activation::Softmax);
    }

    #[test]
    fn activations() {
        let s = Activation::Softmax.apply(&[0.0, 0.0, f32::ln(2.0)]);
        assert!((s[2] - 0.5).abs() < 1e-7 && (s[0] - 0.25).abs() < 1e-7);
        let g = Activation::Sigmoid.apply(&[0.0, 2.0]);
        assert!((g[0] - 0.5).abs() < 1e-12 && (g[1] - 1.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-7);
        assert_eq!(Activation::Identity.apply(&[1.5]), vec![1.5]);
        assert_eq!(
            "sigmoid".parse::<Activation>().unwrap(),
            Activation::Sigmoid
        );
        assert!("relu".parse::<Activation>().is_err());
    }

    #[test]
    fn labels_from_id2label_are_ordered_by_id() {
        let cfg = serde_json::json!({"id2label": {"1": "toxic", "0": "neutral"}});
        let l = labels_from_config(&cfg, Path::new("c.json"), None, Some(2)).unwrap();
        assert_eq!(l, ["neutral", "toxic"]);
        let err = labels_from_config(&cfg, Path::new("c.json"), None, Some(3)).unwrap_err();
        assert!(err.to_string().contains("outputs 3 logits"), "{err}");
        let l =
            labels_from_config(&serde_json::json!({}), Path::new("c.json"), None, Some(2)).unwrap();
        assert_eq!(l, ["LABEL_0", "LABEL_1"]);
        let bad = serde_json::json!({"id2label": {"0": "a", "2": "b"}});
        assert!(labels_from_config(&bad, Path::new("c.json"), None, None).is_err());
    }
}
