//! The Jigsaw toxicity BiLSTM (PyPI `toxic-comment-classifier==0.3.0`, trained on the 159,571
//! Jigsaw Toxic Comment training comments) as a native [`TextScorer`]: `--scorer jigsaw`.
//!
//! `scripts/fetch-models.sh jigsaw` converts the wheel's Keras weights and pickled tokenizer once
//! (`scripts/convert_jigsaw.py`) into `models/jigsaw-bilstm/{model.safetensors, vocab.json,
//! config.json}`; nothing is unpickled at run time. The forward pass reproduces Keras exactly:
//!
//! - **Tokenisation** as `Tokenizer.texts_to_sequences`: Python `str.lower`, every filter
//!   character replaced by the split character, split on it, empty pieces dropped, words looked up
//!   in `word_index`, ids `>= num_words` and unknown words skipped (no OOV token); then
//!   `pad_sequences(maxlen=100)`: pre-truncation (the last 100 ids kept) and pre-padding with 0.
//! - **Model**: `Embedding(20000, 50)` → `Bidirectional(LSTM(50, return_sequences=True))`
//!   (Keras gate order i, f, c, o; sigmoid gates, tanh cell; the backward layer reads the
//!   sequence reversed; outputs concatenated) → `GlobalMaxPooling1D` over all 100 steps (padding
//!   included, as Keras does without a mask) → `Dense(50, relu)` → `Dense(6, sigmoid)`. Dropout is
//!   inactive at inference.
//!
//! Two exact shortcuts: the input projection `embedding · W + b` is tabulated per vocabulary row
//! at load, and the forward direction's run over the leading padding, identical for every text,
//! is computed once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use trust_core::{ScorerError, ScorerInfo, Scores, TextScorer};

use crate::BackendError;

/// `config.json` of a converted model.
#[derive(Debug, Clone, Deserialize)]
pub struct JigsawConfig {
    /// `trust-jigsaw-bilstm/1`.
    pub format: String,
    /// Embedding rows.
    pub vocab_size: usize,
    /// Embedding width.
    pub embedding_dim: usize,
    /// LSTM units per direction.
    pub lstm_units: usize,
    /// Hidden dense width.
    pub dense_units: usize,
    /// Output labels, in order.
    pub labels: Vec<String>,
    /// Keras Tokenizer settings.
    pub tokenizer: TokenizerConfig,
    /// Sequence length after padding/truncation.
    pub maxlen: usize,
    /// `pre` (Keras default).
    pub padding: String,
    /// `pre` (Keras default).
    pub truncating: String,
}

/// The Keras `Tokenizer` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizerConfig {
    /// Ids `>= num_words` are dropped.
    pub num_words: usize,
    /// Characters replaced by `split`.
    pub filters: String,
    /// Lowercase first.
    pub lower: bool,
    /// The separator.
    pub split: String,
}

/// The loaded scorer (see the module docs).
pub struct JigsawScorer {
    dir: PathBuf,
    cfg: JigsawConfig,
    vocab: HashMap<String, u32>,
    filters: Vec<char>,
    /// Per direction: `embedding · kernel + bias`, `[vocab, 4u]`.
    proj: [Vec<f32>; 2],
    /// Per direction: recurrent kernel `[u, 4u]`.
    rec: [Vec<f32>; 2],
    dense_w: Vec<f32>,
    dense_b: Vec<f32>,
    out_w: Vec<f32>,
    out_b: Vec<f32>,
    /// Forward direction after `p` leading pads, `p = 0..=maxlen`: (h, c, running max of h).
    pad_prefix: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)>,
    primary: usize,
    info: ScorerInfo,
}

impl std::fmt::Debug for JigsawScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JigsawScorer")
            .field("dir", &self.dir)
            .field("labels", &self.cfg.labels)
            .field("words", &self.vocab.len())
            .finish()
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// One LSTM step: `z = x_proj + h · U`, gates i, f, c, o.
fn lstm_step(xp: &[f32], rec: &[f32], h: &mut [f32], c: &mut [f32], z: &mut [f32]) {
    let u = h.len();
    z.copy_from_slice(xp);
    for (k, &hk) in h.iter().enumerate() {
        if hk == 0.0 {
            continue;
        }
        let row = &rec[k * 4 * u..(k + 1) * 4 * u];
        for (zj, &w) in z.iter_mut().zip(row) {
            *zj += hk * w;
        }
    }
    for j in 0..u {
        let i = sigmoid(z[j]);
        let f = sigmoid(z[u + j]);
        let g = z[2 * u + j].tanh();
        let o = sigmoid(z[3 * u + j]);
        c[j] = f * c[j] + i * g;
        h[j] = o * c[j].tanh();
    }
}

impl JigsawScorer {
    /// Loads a converted model directory (`models/jigsaw-bilstm`). Errors name the file.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, BackendError> {
        let dir = dir.as_ref().to_path_buf();
        let read = |name: &str| -> Result<String, BackendError> {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(|source| BackendError::Io { path: p, source })
        };
        let cfg_path = dir.join("config.json");
        let cfg: JigsawConfig =
            serde_json::from_str(&read("config.json")?).map_err(|e| BackendError::Config {
                path: cfg_path.clone(),
                message: format!("not a converted jigsaw config: {e}"),
            })?;
        let bad = |message: String| BackendError::Config {
            path: cfg_path.clone(),
            message,
        };
        if cfg.format != "trust-jigsaw-bilstm/1" {
            return Err(bad(format!("unknown format `{}`", cfg.format)));
        }
        if cfg.padding != "pre" || cfg.truncating != "pre" {
            return Err(bad(
                "only pre-padding and pre-truncation are supported".into()
            ));
        }
        if cfg.tokenizer.split.chars().count() != 1 {
            return Err(bad("`tokenizer.split` must be one character".into()));
        }
        if cfg.labels.is_empty() || cfg.maxlen == 0 || cfg.lstm_units == 0 {
            return Err(bad("labels, maxlen and lstm_units must be non-empty".into()));
        }
        let vocab_path = dir.join("vocab.json");
        let vocab: HashMap<String, u32> =
            serde_json::from_str(&read("vocab.json")?).map_err(|e| BackendError::Config {
                path: vocab_path.clone(),
                message: format!("invalid vocabulary: {e}"),
            })?;
        if let Some((w, &i)) = vocab.iter().find(|(_, i)| **i as usize >= cfg.vocab_size) {
            return Err(BackendError::Config {
                path: vocab_path,
                message: format!(
                    "word {w:?} has id {i}, beyond the {} embedding rows",
                    cfg.vocab_size
                ),
            });
        }
        let st_path = dir.join("model.safetensors");
        let bytes = std::fs::read(&st_path).map_err(|source| BackendError::Io {
            path: st_path.clone(),
            source,
        })?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| BackendError::Tensor {
                path: st_path.clone(),
                tensor: "<header>".into(),
                message: format!("invalid or truncated safetensors file: {e}"),
            })?;
        let (v, e, u, d, l) = (
            cfg.vocab_size,
            cfg.embedding_dim,
            cfg.lstm_units,
            cfg.dense_units,
            cfg.labels.len(),
        );
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, BackendError> {
            let t = st.tensor(name).map_err(|_| BackendError::Tensor {
                path: st_path.clone(),
                tensor: name.into(),
                message: "missing".into(),
            })?;
            if t.dtype() != safetensors::Dtype::F32 || t.shape() != shape {
                return Err(BackendError::Tensor {
                    path: st_path.clone(),
                    tensor: name.into(),
                    message: format!(
                        "expected F32 {shape:?}, found {:?} {:?}",
                        t.dtype(),
                        t.shape()
                    ),
                });
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let emb = get("embedding", &[v, e])?;
        let mut proj = [Vec::new(), Vec::new()];
        let mut rec = [Vec::new(), Vec::new()];
        for (di, name) in ["forward", "backward"].iter().enumerate() {
            let w = get(&format!("{name}.kernel"), &[e, 4 * u])?;
            let b = get(&format!("{name}.bias"), &[4 * u])?;
            rec[di] = get(&format!("{name}.recurrent_kernel"), &[u, 4 * u])?;
            let mut p = vec![0f32; v * 4 * u];
            for row in 0..v {
                let out = &mut p[row * 4 * u..(row + 1) * 4 * u];
                out.copy_from_slice(&b);
                for k in 0..e {
                    let x = emb[row * e + k];
                    for (o, &wk) in out.iter_mut().zip(&w[k * 4 * u..(k + 1) * 4 * u]) {
                        *o += x * wk;
                    }
                }
            }
            proj[di] = p;
        }
        let dense_w = get("dense.kernel", &[2 * u, d])?;
        let dense_b = get("dense.bias", &[d])?;
        let out_w = get("output.kernel", &[d, l])?;
        let out_b = get("output.bias", &[l])?;
        // The forward direction over p leading pads (token 0), for p = 0..=maxlen.
        let mut pad_prefix = Vec::with_capacity(cfg.maxlen + 1);
        let (mut h, mut c, mut z) = (vec![0f32; u], vec![0f32; u], vec![0f32; 4 * u]);
        let mut mx = vec![f32::NEG_INFINITY; u];
        pad_prefix.push((h.clone(), c.clone(), mx.clone()));
        for _ in 0..cfg.maxlen {
            lstm_step(&proj[0][..4 * u], &rec[0], &mut h, &mut c, &mut z);
            for (m, &x) in mx.iter_mut().zip(&h) {
                *m = m.max(x);
            }
            pad_prefix.push((h.clone(), c.clone(), mx.clone()));
        }
        let filters = cfg.tokenizer.filters.chars().collect();
        let primary = cfg.labels.iter().position(|x| x == "toxic").unwrap_or(0);
        let info = ScorerInfo {
            id: format!("jigsaw:{}", dir.display()),
            labels: cfg.labels.clone(),
            primary: Some(cfg.labels[primary].clone()),
            weights_sha256: Some(crate::sha256_hex(&bytes)),
        };
        Ok(JigsawScorer {
            dir,
            cfg,
            vocab,
            filters,
            proj,
            rec,
            dense_w,
            dense_b,
            out_w,
            out_b,
            pad_prefix,
            primary,
            info,
        })
    }

    /// The labels (`toxic, severe_toxic, obscene, threat, insult, identity_hate`).
    pub fn labels(&self) -> &[String] {
        &self.cfg.labels
    }

    /// `Tokenizer.texts_to_sequences([text])[0]`.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let t = &self.cfg.tokenizer;
        let lowered;
        let text = if t.lower {
            lowered = text.to_lowercase();
            &lowered
        } else {
            text
        };
        let split = t.split.chars().next().unwrap_or(' ');
        let mapped: String = text
            .chars()
            .map(|ch| {
                if self.filters.contains(&ch) {
                    split
                } else {
                    ch
                }
            })
            .collect();
        mapped
            .split(split)
            .filter(|w| !w.is_empty())
            .filter_map(|w| self.vocab.get(w).copied())
            .filter(|&i| (i as usize) < t.num_words)
            .collect()
    }

    /// Probabilities of every label for one id sequence (before padding).
    pub fn predict_ids(&self, ids: &[u32]) -> Vec<f32> {
        let u = self.cfg.lstm_units;
        let maxlen = self.cfg.maxlen;
        // pad_sequences: keep the last `maxlen` ids, pad in front.
        let real = &ids[ids.len().saturating_sub(maxlen)..];
        let pads = maxlen - real.len();
        let mut z = vec![0f32; 4 * u];
        // Forward: the shared pad prefix, then the real tokens.
        let (h0, c0, m0) = &self.pad_prefix[pads];
        let (mut h, mut c, mut fmax) = (h0.clone(), c0.clone(), m0.clone());
        for &id in real {
            let xp = &self.proj[0][id as usize * 4 * u..(id as usize + 1) * 4 * u];
            lstm_step(xp, &self.rec[0], &mut h, &mut c, &mut z);
            for (m, &x) in fmax.iter_mut().zip(&h) {
                *m = m.max(x);
            }
        }
        // Backward: the real tokens last to first, then the pads.
        let (mut h, mut c) = (vec![0f32; u], vec![0f32; u]);
        let mut bmax = vec![f32::NEG_INFINITY; u];
        let pad_proj = &self.proj[1][..4 * u];
        for step in real
            .iter()
            .rev()
            .map(Some)
            .chain(std::iter::repeat_n(None, pads))
        {
            let xp = match step {
                Some(&id) => &self.proj[1][id as usize * 4 * u..(id as usize + 1) * 4 * u],
                None => pad_proj,
            };
            lstm_step(xp, &self.rec[1], &mut h, &mut c, &mut z);
            for (m, &x) in bmax.iter_mut().zip(&h) {
                *m = m.max(x);
            }
        }
        let pooled: Vec<f32> = fmax.into_iter().chain(bmax).collect();
        let d = self.cfg.dense_units;
        let mut hidden = self.dense_b.clone();
        for (k, &x) in pooled.iter().enumerate() {
            for (o, &w) in hidden.iter_mut().zip(&self.dense_w[k * d..(k + 1) * d]) {
                *o += x * w;
            }
        }
        let l = self.cfg.labels.len();
        let mut out = self.out_b.clone();
        for (k, &x) in hidden.iter().enumerate() {
            let x = x.max(0.0);
            for (o, &w) in out.iter_mut().zip(&self.out_w[k * l..(k + 1) * l]) {
                *o += x * w;
            }
        }
        out.into_iter().map(sigmoid).collect()
    }

    /// Probabilities of every label for each text (parallel over texts).
    pub fn predict(&self, texts: &[String]) -> Vec<Vec<f32>> {
        use rayon::prelude::*;
        texts
            .par_iter()
            .map(|t| self.predict_ids(&self.tokenize(t)))
            .collect()
    }

    /// [`TextScorer::score`] without the async wrapper.
    pub fn score_blocking(&self, texts: &[String]) -> Vec<Result<Scores, ScorerError>> {
        self.predict(texts)
            .into_iter()
            .map(|p| {
                Ok(Scores {
                    values: p.iter().map(|&x| f64::from(x)).collect(),
                })
            })
            .collect()
    }

    /// Index of the primary label (`toxic`).
    pub fn primary_index(&self) -> usize {
        self.primary
    }
}

#[async_trait::async_trait]
impl TextScorer for JigsawScorer {
    fn info(&self) -> ScorerInfo {
        self.info.clone()
    }
    async fn score(&self, texts: &[String]) -> Vec<Result<Scores, ScorerError>> {
        self.score_blocking(texts)
    }
}
