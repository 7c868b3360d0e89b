//! Causal language models exported to ONNX by Hugging Face optimum, as a [`LanguageModel`].
//!
//! Supported signatures (what `optimum-cli export onnx --task text-generation[-with-past]`
//! writes):
//!
//! - inputs `input_ids`, optional `attention_mask`, optional `position_ids`, optional
//!   `past_key_values.{i}.key` / `.value` (`[batch, kv_heads, past_len, head_dim]`, float32) and
//!   optional `use_cache_branch` (merged decoders);
//! - outputs `logits` (`[batch, seq, vocab]`, float32) and, with past inputs,
//!   `present.{i}.key` / `.value`.
//!
//! With past inputs generation feeds one token per step and reuses the returned cache; without,
//! every step reruns the whole sequence. Requests are decoded one sequence at a time (no padding),
//! so a result is a function of (prompt, config, seed) only, never of the batch; different
//! requests of a call run in parallel on the session pool.

use std::path::{Path, PathBuf};

use ::ort::session::{Session, SessionInputValue};
use ::ort::value::{DynValue, Tensor, TensorElementType};
use tokenizers::Tokenizer;
use trust_core::rng::{SplitMix64, derive_seed};
use trust_core::sampling::{argmax, sample};
use trust_core::{
    Capabilities, Capability, Completion, FinishReason, GenerateRequest, GenerateResponse,
    LanguageModel, LogLikelihood, LogLikelihoodRequest, ModelError, ModelInfo, Sampling,
    StopPolicy,
};

use super::io::{self, IntType};
use super::pool::{SessionPool, parallel_map};
use super::runtime::{self, SessionOptions};
use crate::error::BackendError;

/// Options of [`OrtCausalLm::from_dir`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrtCausalLmOptions {
    /// The ONNX file inside the directory (default: `model.onnx`, else `onnx/model.onnx`).
    pub model_file: Option<String>,
    /// Context length; default: config.json `max_position_embeddings` (unlimited if absent).
    pub max_length: Option<usize>,
    /// Sessions, threads, device and library.
    pub session: SessionOptions,
}

#[derive(Debug, Clone, Copy)]
struct KvSpec {
    layers: usize,
    heads: usize,
    head_dim: usize,
}

/// A causal LM in ONNX format with its `tokenizer.json` and `config.json` (see the module docs).
pub struct OrtCausalLm {
    pool: SessionPool,
    tokenizer: Tokenizer,
    model: PathBuf,
    info: ModelInfo,
    eos: Vec<u32>,
    ids_type: IntType,
    mask: Option<IntType>,
    positions: Option<IntType>,
    kv: Option<KvSpec>,
    use_cache_branch: bool,
    max_length: Option<usize>,
}

impl std::fmt::Debug for OrtCausalLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtCausalLm")
            .field("model", &self.model)
            .field("kv_cache", &self.kv.is_some())
            .field("sessions", &self.pool.size())
            .finish()
    }
}

/// The key/value cache of one sequence: `present.*` outputs fed back as `past_key_values.*`.
struct Past {
    values: Vec<DynValue>,
}

/// Most heads or head dimensions a key/value cache may have.
const MAX_KV_DIM: usize = 1 << 16;

/// The cache tensors are allocated from these sizes (read from config.json when the graph leaves
/// them dynamic): refuse absurd ones — a config.json saying 10^12 heads — naming the field, instead
/// of aborting the process on the allocation.
fn check_kv_dims(
    heads: Option<usize>,
    head_dim: Option<usize>,
    config_path: &Path,
) -> Result<(), BackendError> {
    for (what, v) in [
        (
            "key/value heads (num_key_value_heads / num_attention_heads)",
            heads,
        ),
        ("head_dim (or hidden_size / num_attention_heads)", head_dim),
    ] {
        if let Some(v) = v.filter(|&v| v == 0 || v > MAX_KV_DIM) {
            return Err(BackendError::Config {
                path: config_path.to_path_buf(),
                message: format!("{what} is {v}; a key/value cache needs 1..={MAX_KV_DIM}"),
            });
        }
    }
    Ok(())
}

fn sig_err(model: &Path, message: String) -> BackendError {
    BackendError::ModelSignature {
        path: model.to_path_buf(),
        message,
    }
}

fn parse_kv_name(name: &str, prefix: &str) -> Option<(usize, bool)> {
    let rest = name.strip_prefix(prefix)?;
    let (layer, kind) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    match kind {
        "key" => Some((layer, true)),
        "value" => Some((layer, false)),
        _ => None,
    }
}

impl OrtCausalLm {
    /// Loads `model.onnx`, `tokenizer.json` and `config.json` from `dir`.
    pub fn from_dir(
        dir: impl AsRef<Path>,
        options: OrtCausalLmOptions,
    ) -> Result<Self, BackendError> {
        let dir = dir.as_ref();
        let model = io::model_path(dir, options.model_file.as_deref())?;
        let config_path = dir.join("config.json");
        let config = io::load_config(&config_path, false)?;
        let mut tokenizer = io::load_tokenizer(&dir.join("tokenizer.json"))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| BackendError::Tokenizer {
                path: dir.join("tokenizer.json"),
                message: e.to_string(),
            })?;

        let env = runtime::ort_environment(options.session.dylib_path.as_deref())?;
        let first = runtime::open_session(&env, &model, &options.session)?;

        let inputs = io::input_names(&first);
        let outputs = io::output_names(&first);
        if !inputs.iter().any(|n| n == "input_ids") {
            return Err(sig_err(
                &model,
                format!("no `input_ids` input (inputs: {})", inputs.join(", ")),
            ));
        }
        let ids_type = io::int_input(&first, &model, "input_ids")?;
        let opt_int = |name: &str| -> Result<Option<IntType>, BackendError> {
            if inputs.iter().any(|n| n == name) {
                io::int_input(&first, &model, name).map(Some)
            } else {
                Ok(None)
            }
        };
        let mask = opt_int("attention_mask")?;
        let positions = opt_int("position_ids")?;
        let use_cache_branch = inputs.iter().any(|n| n == "use_cache_branch");
        if !outputs.iter().any(|n| n == "logits") {
            return Err(sig_err(
                &model,
                format!("no `logits` output (outputs: {})", outputs.join(", ")),
            ));
        }
        if io::tensor_type(&first, "logits", false) != Some(TensorElementType::Float32) {
            return Err(sig_err(
                &model,
                "output `logits` must be a float32 tensor".into(),
            ));
        }

        // Past key values.
        let mut past_layers = Vec::new();
        for name in &inputs {
            if let Some((layer, is_key)) = parse_kv_name(name, "past_key_values.") {
                past_layers.push((layer, is_key));
                if io::tensor_type(&first, name, true) != Some(TensorElementType::Float32) {
                    return Err(sig_err(
                        &model,
                        format!(
                            "input `{name}` is not float32 (only float32 key/value caches are supported)"
                        ),
                    ));
                }
            } else if ![
                "input_ids",
                "attention_mask",
                "position_ids",
                "use_cache_branch",
            ]
            .contains(&name.as_str())
            {
                return Err(sig_err(
                    &model,
                    format!("unsupported input `{name}` (inputs: {})", inputs.join(", ")),
                ));
            }
        }
        let kv = if past_layers.is_empty() {
            None
        } else {
            let layers = past_layers.iter().map(|(l, _)| l + 1).max().unwrap_or(0);
            for l in 0..layers {
                for kind in ["key", "value"] {
                    if !inputs
                        .iter()
                        .any(|n| *n == format!("past_key_values.{l}.{kind}"))
                    {
                        return Err(sig_err(
                            &model,
                            format!("missing input `past_key_values.{l}.{kind}`"),
                        ));
                    }
                    if !outputs.iter().any(|n| *n == format!("present.{l}.{kind}")) {
                        return Err(sig_err(
                            &model,
                            format!("missing output `present.{l}.{kind}`"),
                        ));
                    }
                }
            }
            let shape = io::tensor_shape(&first, "past_key_values.0.key", true).unwrap_or_default();
            if shape.len() != 4 {
                return Err(sig_err(
                    &model,
                    format!(
                        "`past_key_values.0.key` has rank {}; expected [batch, heads, past, head_dim]",
                        shape.len()
                    ),
                ));
            }
            let cfg_usize = |k: &str| config.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
            let cfg_heads =
                cfg_usize("num_key_value_heads").or_else(|| cfg_usize("num_attention_heads"));
            let heads = if shape[1] > 0 {
                Some(shape[1] as usize)
            } else {
                cfg_heads
            };
            let head_dim = if shape[3] > 0 {
                Some(shape[3] as usize)
            } else {
                cfg_usize("head_dim").or_else(|| {
                    let h = cfg_usize("hidden_size")?;
                    let n = cfg_usize("num_attention_heads")?;
                    (n > 0).then(|| h / n)
                })
            };
            check_kv_dims(heads, head_dim, &config_path)?;
            match (heads, head_dim) {
                (Some(heads), Some(head_dim)) => Some(KvSpec {
                    layers,
                    heads,
                    head_dim,
                }),
                _ => {
                    return Err(BackendError::Config {
                        path: config_path,
                        message: "the cache shape is dynamic and config.json lacks num_attention_heads / hidden_size"
                            .into(),
                    });
                }
            }
        };
        if use_cache_branch && kv.is_none() {
            return Err(sig_err(
                &model,
                "`use_cache_branch` input without past key values".into(),
            ));
        }

        // EOS: generation_config.json, else config.json, else the tokenizer's <|endoftext|> / </s>.
        let gen_config = io::load_config(&dir.join("generation_config.json"), false)?;
        let mut eos = io::u32_list(gen_config.get("eos_token_id"));
        if eos.is_empty() {
            eos = io::u32_list(config.get("eos_token_id"));
        }
        if eos.is_empty() {
            eos = ["<|endoftext|>", "</s>", "<|im_end|>"]
                .iter()
                .filter_map(|t| tokenizer.token_to_id(t))
                .collect();
        }
        let max_length = options.max_length.or_else(|| {
            config
                .get("max_position_embeddings")
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
        });

        let mut sessions = vec![first];
        for _ in 1..options.session.pool_size() {
            sessions.push(runtime::open_session(&env, &model, &options.session)?);
        }
        let info = ModelInfo {
            id: dir.display().to_string(),
            backend: "ort".into(),
            weights_sha256: Some(runtime::model_sha256(&model)?),
            details: format!(
                "onnx={} kv_cache={} device={:?}",
                model
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                kv.is_some(),
                options.session.device
            ),
        };
        Ok(OrtCausalLm {
            pool: SessionPool::new(sessions),
            tokenizer,
            model,
            info,
            eos,
            ids_type,
            mask,
            positions,
            kv,
            use_cache_branch,
            max_length,
        })
    }

    /// Whether the export has a key/value cache (`past_key_values.*` inputs).
    pub fn has_kv_cache(&self) -> bool {
        self.kv.is_some()
    }

    /// The token ids generation stops on under [`StopPolicy::ModelEos`].
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos
    }

    /// Number of pooled sessions.
    pub fn sessions(&self) -> usize {
        self.pool.size()
    }

    /// Tokenises without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, BackendError> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| BackendError::Runtime(format!("tokenizing: {e}")))
    }

    /// Logits (`[ids.len(), vocab]`, row-major) of a whole sequence, from one uncached pass.
    pub fn sequence_logits(&self, ids: &[u32]) -> Result<(usize, Vec<f32>), BackendError> {
        if ids.is_empty() {
            return Err(BackendError::Runtime("empty token sequence".into()));
        }
        let mut session = self.pool.checkout();
        let (vocab, logits, _) = self.forward(&mut session, ids, 0, None, true)?;
        Ok((vocab, logits))
    }

    /// One forward pass of a single sequence: `tokens` at positions `start..`, after a cache of
    /// `start` tokens (`past`). Returns (vocab, logits of every position or only the last, the new
    /// cache when the export has one).
    fn forward(
        &self,
        session: &mut Session,
        tokens: &[u32],
        start: usize,
        past: Option<Past>,
        all_positions: bool,
    ) -> Result<(usize, Vec<f32>, Option<Past>), BackendError> {
        let s = tokens.len();
        let total = start + s;
        let mut feed: Vec<(String, SessionInputValue<'_>)> =
            Vec::with_capacity(4 + 2 * self.kv.map_or(0, |k| k.layers));
        feed.push((
            "input_ids".into(),
            io::int_tensor(
                self.ids_type,
                1,
                s,
                tokens.iter().map(|&t| i64::from(t)).collect(),
            )?
            .into(),
        ));
        if let Some(t) = self.mask {
            feed.push((
                "attention_mask".into(),
                io::int_tensor(t, 1, total, vec![1; total])?.into(),
            ));
        }
        if let Some(t) = self.positions {
            feed.push((
                "position_ids".into(),
                io::int_tensor(t, 1, s, (start as i64..total as i64).collect())?.into(),
            ));
        }
        if let Some(kv) = self.kv {
            if self.use_cache_branch {
                let flag = Tensor::from_array((vec![1i64], vec![past.is_some()])).map_err(|e| {
                    BackendError::Runtime(format!("creating use_cache_branch: {e}"))
                })?;
                feed.push(("use_cache_branch".into(), flag.into_dyn().into()));
            }
            match past {
                Some(p) => {
                    for (i, v) in p.values.into_iter().enumerate() {
                        let kind = if i % 2 == 0 { "key" } else { "value" };
                        feed.push((format!("past_key_values.{}.{kind}", i / 2), v.into()));
                    }
                }
                None => {
                    for l in 0..kv.layers {
                        for kind in ["key", "value"] {
                            let shape = vec![1i64, kv.heads as i64, 0, kv.head_dim as i64];
                            let empty = Tensor::<f32>::from_array((shape, Vec::<f32>::new()))
                                .map_err(|e| {
                                    BackendError::Runtime(format!("creating an empty cache: {e}"))
                                })?;
                            feed.push((
                                format!("past_key_values.{l}.{kind}"),
                                empty.into_dyn().into(),
                            ));
                        }
                    }
                }
            }
        }
        let mut outputs = session.run(feed).map_err(|e| {
            BackendError::Runtime(format!("{}: inference failed: {e}", self.model.display()))
        })?;
        let (vocab, logits) = {
            let value = outputs
                .get("logits")
                .ok_or_else(|| sig_err(&self.model, "the run returned no `logits`".into()))?;
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| {
                sig_err(
                    &self.model,
                    format!("`logits` is not a float32 tensor: {e}"),
                )
            })?;
            if shape.len() != 3 || shape[0] != 1 || shape[1] as usize != s {
                return Err(sig_err(
                    &self.model,
                    format!("`logits` has shape {shape:?}; expected [1, {s}, vocab]"),
                ));
            }
            let vocab = shape[2] as usize;
            let logits = if all_positions {
                data.to_vec()
            } else {
                data[(s - 1) * vocab..s * vocab].to_vec()
            };
            (vocab, logits)
        };
        let new_past = match self.kv {
            Some(kv) => {
                let mut values = Vec::with_capacity(2 * kv.layers);
                for l in 0..kv.layers {
                    for kind in ["key", "value"] {
                        let name = format!("present.{l}.{kind}");
                        values.push(outputs.remove(&name).ok_or_else(|| {
                            sig_err(&self.model, format!("the run returned no `{name}`"))
                        })?);
                    }
                }
                Some(Past { values })
            }
            None => None,
        };
        Ok((vocab, logits, new_past))
    }

    fn check_length(&self, n: usize, what: &str) -> Result<(), ModelError> {
        match self.max_length {
            Some(max) if n > max => Err(ModelError::InvalidRequest(format!(
                "{what} is {n} tokens, longer than the model's context of {max} (max_position_embeddings)"
            ))),
            _ => Ok(()),
        }
    }

    /// Generates one completion.
    fn generate_one(
        &self,
        req: &GenerateRequest,
        index: usize,
        prompt: &[u32],
    ) -> Result<Completion, ModelError> {
        let cfg = &req.config;
        let mut rng = SplitMix64::new(derive_seed(req.seed, &format!("completion/{index}")));
        let stop_ids: &[u32] = match &cfg.stop {
            StopPolicy::ModelEos => &self.eos,
            StopPolicy::Tokens(ids) => ids,
            StopPolicy::Never => &[],
        };
        let mut tokens: Vec<u32> = Vec::new();
        if cfg.max_new_tokens == 0 {
            return Ok(Completion {
                text: String::new(),
                token_ids: tokens,
                finish_reason: FinishReason::Length,
            });
        }
        let mut session = self.pool.checkout();
        let (_, mut logits, mut past) = self.forward(&mut session, prompt, 0, None, false)?;
        let mut seq: Vec<u32> = prompt.to_vec();
        let finish = loop {
            let next = match &cfg.sampling {
                Sampling::Greedy => argmax(&logits),
                Sampling::Sample {
                    temperature,
                    top_p,
                    top_k,
                } => sample(&logits, &mut rng, *temperature, *top_p, *top_k),
            };
            if stop_ids.contains(&next) {
                break FinishReason::StopToken;
            }
            tokens.push(next);
            seq.push(next);
            if !cfg.stop_strings.is_empty() {
                let text = self.decode(&tokens)?;
                if let Some(at) = trust_core::sampling::first_stop(&text, &cfg.stop_strings) {
                    return Ok(Completion {
                        text: text[..at].to_string(),
                        token_ids: tokens,
                        finish_reason: FinishReason::StopString,
                    });
                }
            }
            if tokens.len() >= cfg.max_new_tokens {
                break FinishReason::Length;
            }
            let (_, l, p) = if self.kv.is_some() {
                self.forward(&mut session, &[next], seq.len() - 1, past.take(), false)?
            } else {
                self.forward(&mut session, &seq, 0, None, false)?
            };
            logits = l;
            past = p;
        };
        Ok(Completion {
            text: self.decode(&tokens)?,
            token_ids: tokens,
            finish_reason: finish,
        })
    }

    fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| ModelError::Backend(format!("decoding: {e}")))
    }

    fn generate_request(&self, req: &GenerateRequest) -> Result<GenerateResponse, ModelError> {
        req.config.validate()?;
        if req.config.num_beams > 1 {
            return Err(ModelError::Unsupported {
                model: self.info.id.clone(),
                capability: Capability::BeamSearch,
            });
        }
        let prompt = self.encode(&req.prompt).map_err(ModelError::from)?;
        if prompt.is_empty() {
            return Err(ModelError::InvalidRequest(
                "the prompt tokenises to no tokens".into(),
            ));
        }
        self.check_length(
            prompt.len().saturating_add(req.config.max_new_tokens),
            "prompt + max_new_tokens",
        )?;
        let completions = (0..req.config.n)
            .map(|i| self.generate_one(req, i, &prompt))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(GenerateResponse { completions })
    }

    fn loglikelihood_request(
        &self,
        req: &LogLikelihoodRequest,
    ) -> Result<LogLikelihood, ModelError> {
        let ctx = self.encode(&req.context).map_err(ModelError::from)?;
        let cont = self.encode(&req.continuation).map_err(ModelError::from)?;
        if cont.is_empty() {
            return Err(ModelError::InvalidRequest(
                "the continuation tokenises to no tokens".into(),
            ));
        }
        if ctx.is_empty() {
            return Err(ModelError::InvalidRequest(
                "the context tokenises to no tokens (nothing predicts the first continuation token)".into(),
            ));
        }
        let mut ids = ctx.clone();
        ids.extend_from_slice(&cont);
        self.check_length(ids.len(), "context + continuation")?;
        let (vocab, logits) = self.sequence_logits(&ids).map_err(ModelError::from)?;
        let mut token_logprobs = Vec::with_capacity(cont.len());
        let mut is_greedy = true;
        for t in ctx.len()..ids.len() {
            let row = &logits[(t - 1) * vocab..t * vocab];
            let target = ids[t] as usize;
            if target >= vocab {
                return Err(ModelError::Backend(format!(
                    "token id {target} is outside the vocabulary ({vocab})"
                )));
            }
            token_logprobs.push(log_softmax_at(row, target));
            if argmax(row) as usize != target {
                is_greedy = false;
            }
        }
        let sum = token_logprobs.iter().sum();
        Ok(LogLikelihood {
            token_logprobs,
            sum,
            is_greedy,
        })
    }

    /// [`LanguageModel::generate`], blocking.
    pub fn generate_blocking(
        &self,
        requests: &[GenerateRequest],
    ) -> Vec<Result<GenerateResponse, ModelError>> {
        parallel_map(requests, self.pool.size(), |r| self.generate_request(r))
    }

    /// [`LanguageModel::loglikelihood`], blocking.
    pub fn loglikelihood_blocking(
        &self,
        requests: &[LogLikelihoodRequest],
    ) -> Vec<Result<LogLikelihood, ModelError>> {
        parallel_map(requests, self.pool.size(), |r| {
            self.loglikelihood_request(r)
        })
    }
}

/// log softmax(row)[target], in f64.
fn log_softmax_at(row: &[f32], target: usize) -> f64 {
    let m = row
        .iter()
        .map(|&v| f64::from(v))
        .fold(f64::NEG_INFINITY, f64::max);
    let lse = row
        .iter()
        .map(|&v| (f64::from(v) - m).exp())
        .sum::<f64>()
        .ln()
        + m;
    f64::from(row[target]) - lse
}

#[async_trait::async_trait]
impl LanguageModel for OrtCausalLm {
    fn info(&self) -> ModelInfo {
        self.info.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[
            Capability::Generate,
            Capability::Sampling,
            Capability::LogLikelihood,
        ])
    }

    async fn generate(
        &self,
        requests: &[GenerateRequest],
    ) -> Vec<Result<GenerateResponse, ModelError>> {
        self.generate_blocking(requests)
    }

    async fn loglikelihood(
        &self,
        requests: &[LogLikelihoodRequest],
    ) -> Vec<Result<LogLikelihood, ModelError>> {
        self.loglikelihood_blocking(requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_cache_sizes_are_refused_by_name() {
        let p = Path::new("m/config.json");
        assert!(check_kv_dims(Some(16), Some(64), p).is_ok());
        assert!(check_kv_dims(None, None, p).is_ok());
        let e = check_kv_dims(Some(1_000_000_000_000), Some(64), p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("num_key_value_heads") && e.contains("1000000000000"),
            "{e}"
        );
        assert!(e.contains("m/config.json"), "{e}");
        let e = check_kv_dims(Some(4), Some(0), p).unwrap_err().to_string();
        assert!(e.contains("head_dim") && e.contains("is 0"), "{e}");
    }

    #[test]
    fn kv_names() {
        assert_eq!(
            parse_kv_name("past_key_values.3.key", "past_key_values."),
            Some((3, true))
        );
        assert_eq!(
            parse_kv_name("present.0.value", "present."),
            Some((0, false))
        );
        assert_eq!(
            parse_kv_name("past_key_values.x.key", "past_key_values."),
            None
        );
        assert_eq!(parse_kv_name("input_ids", "past_key_values."), None);
    }

    #[test]
    fn log_softmax_and_argmax() {
        let row = [0.0f32, (2.0f32).ln(), 0.0];
        assert!((log_softmax_at(&row, 1) - 0.5f64.ln()).abs() < 1e-7);
        assert_eq!(argmax(&row), 1);
        assert_eq!(argmax(&[1.0, 1.0]), 0, "first index on ties");
    }

    #[test]
    fn sampling_respects_top_k_and_seed() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32) * 0.1).collect();
        let mut a = SplitMix64::new(5);
        let mut b = SplitMix64::new(5);
        for _ in 0..100 {
            let x = sample(&logits, &mut a, 1.0, 1.0, 3);
            assert!(x >= 47, "top-3 of increasing logits are 47..49, got {x}");
            assert_eq!(x, sample(&logits, &mut b, 1.0, 1.0, 3));
        }
        // A tiny nucleus keeps only the argmax.
        let mut r = SplitMix64::new(1);
        assert!((0..20).all(|_| sample(&logits, &mut r, 1.0, 1e-9, 0) == 49));
    }
}
