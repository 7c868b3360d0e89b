//! Training: brief full-parameter pretraining, LoRA SFT, LoRA DPO and reward models on a
//! [`CausalLm`] (PPO, which needs rollouts, is [`crate::ppo`]).
//!
//! Seeded and resumable: the example order of every step is a function of (seed, step), and a
//! checkpoint holds the trainable parameters, the AdamW moments and the step, so a run resumed
//! from a checkpoint takes exactly the same steps as one that never stopped.
//!
//! Output directory layout (an HF model directory, loadable by `trust_backends::candle`):
//! `config.json`, `tokenizer.json`, `model.safetensors` (merged weights), `adapter/` (LoRA
//! adapters, PEFT layout), `train_log.jsonl` (one line per optimiser step), `checkpoint/`. A
//! reward model's `model.safetensors` also holds its head `v_head.weight` (`[1, hidden]`).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;
use trust_backends::candle::{CausalLm, ModelConfig};
use trust_core::rng::{SplitMix64, derive_seed};

use crate::hh::PreferencePair;
use crate::lora::{LoraAdapters, LoraConfig};
use crate::losses;
use crate::optim::AdamW;
use crate::reward::{RewardHead, V_HEAD_WEIGHT};

/// Errors of training.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    /// Loading a model failed.
    #[error(transparent)]
    Backend(#[from] trust_backends::BackendError),
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Invalid configuration or data.
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Which stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Full-parameter language modelling on whole dialogues (prompt + chosen).
    Pretrain,
    /// LoRA supervised fine-tuning on prompt + chosen.
    Sft,
    /// LoRA DPO against a frozen reference model.
    Dpo,
    /// Reward model: the causal LM (LoRA, or every weight with [`TrainConfig::full`]) plus a
    /// trained scalar head `v_head` on the final hidden state of the last token, Bradley–Terry
    /// loss on (chosen, rejected) (see [`crate::reward`]).
    Rm,
}

/// Training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Stage.
    pub stage: Stage,
    /// Optimiser steps.
    pub steps: usize,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Longest sequence in tokens (prompts are truncated from the left).
    pub max_len: usize,
    /// DPO β.
    pub beta: f64,
    /// SFT: score only response tokens (`false` = the paper's whole-text loss).
    pub mask_prompt: bool,
    /// LoRA settings (SFT, DPO).
    pub lora: LoraConfig,
    /// Seed of data order and LoRA init.
    pub seed: u64,
    /// Save a checkpoint every this many steps (0 = only at the end).
    pub checkpoint_every: usize,
    /// Reward model: train every weight instead of LoRA adapters (the head is always trained).
    #[serde(default)]
    pub full: bool,
}

impl TrainConfig {
    /// Defaults for `stage` on a GPT-NeoX model.
    pub fn new(stage: Stage) -> Self {
        TrainConfig {
            stage,
            steps: 100,
            batch_size: 8,
            grad_accum: 1,
            lr: match stage {
                Stage::Pretrain => 3e-3,
                Stage::Sft => 2e-3,
                Stage::Dpo => 1e-3,
                Stage::Rm => 1e-3,
            },
            weight_decay: 0.0,
            max_len: 128,
            beta: 0.1,
            mask_prompt: true,
            lora: LoraConfig {
                rank: 8,
                alpha: 16.0,
                targets: vec!["attention.query_key_value".into(), "attention.dense".into()],
                layers: None,
            },
            seed: 0,
            checkpoint_every: 0,
            full: false,
        }
    }
}

/// A tokenised sequence with the positions that are scored.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Token ids.
    pub ids: Vec<u32>,
    /// 1.0 where the token is a target, else 0.0.
    pub targets: Vec<f32>,
}

/// Tokenises `prompt` and `response` separately (no special tokens), appends `eos` to the
/// response, truncates the prompt from the left (and the response from the right if it alone is
/// longer than 3/4 of `max_len`), and marks the response tokens (and the prompt's, when
/// `score_prompt`) as targets.
pub fn encode(
    tok: &Tokenizer,
    prompt: &str,
    response: &str,
    eos: Option<u32>,
    max_len: usize,
    score_prompt: bool,
) -> Result<Encoded, TrainError> {
    let enc = |s: &str| -> Result<Vec<u32>, TrainError> {
        Ok(tok
            .encode(s, false)
            .map_err(|e| TrainError::Invalid(format!("tokenizer: {e}")))?
            .get_ids()
            .to_vec())
    };
    let mut p = enc(prompt)?;
    let mut r = enc(response)?;
    r.extend(eos);
    r.truncate((max_len * 3 / 4).max(1));
    let keep = max_len.saturating_sub(r.len());
    if p.len() > keep {
        p.drain(..p.len() - keep);
    }
    let mut targets = vec![if score_prompt { 1.0 } else { 0.0 }; p.len()];
    targets.extend(std::iter::repeat_n(1.0, r.len()));
    p.extend(r);
    if p.len() < 2 {
        return Err(TrainError::Invalid(
            "sequence shorter than two tokens".into(),
        ));
    }
    Ok(Encoded { ids: p, targets })
}

/// Right-pads a batch: (ids `[b, t]` u32, attention mask `[b, t]` f32, targets `[b, t]` f32).
pub fn collate(
    batch: &[&Encoded],
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let t = batch.iter().map(|e| e.ids.len()).max().unwrap_or(1);
    let (mut ids, mut mask, mut targets) = (Vec::new(), Vec::new(), Vec::new());
    for e in batch {
        let pad = t - e.ids.len();
        ids.extend(e.ids.iter().copied().chain(std::iter::repeat_n(0, pad)));
        mask.extend(std::iter::repeat_n(1f32, e.ids.len()).chain(std::iter::repeat_n(0.0, pad)));
        targets.extend(
            e.targets
                .iter()
                .copied()
                .chain(std::iter::repeat_n(0.0, pad)),
        );
    }
    let b = batch.len();
    Ok((
        Tensor::from_vec(ids, (b, t), device)?,
        Tensor::from_vec(mask, (b, t), device)?,
        Tensor::from_vec(targets, (b, t), device)?,
    ))
}

/// Reads all tensors of a model into memory (f32, Hugging Face names): a directory's safetensors
/// files, or a GGUF file dequantised (q/k rows in Hugging Face order).
pub fn load_weights(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>, TrainError> {
    if let trust_backends::candle::ModelFormat::Gguf(file) =
        trust_backends::candle::ModelFormat::resolve(dir)?
    {
        let g = std::sync::Arc::new(trust_backends::candle::gguf::GgufFile::open(&file)?);
        let cfg = g.model_config()?;
        return Ok(trust_backends::candle::gguf::GgufWeights::new(g, cfg).all_f32(device)?);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: no *.safetensors file",
            dir.display()
        )));
    }
    let mut out = HashMap::new();
    for f in files {
        for (name, t) in candle_core::safetensors::load(&f, device)? {
            out.insert(name, t.to_dtype(DType::F32)?);
        }
    }
    Ok(out)
}

/// A model loaded for inference only (a DPO reference, a held-out scorer): config and f32
/// weights from `dir` (safetensors directory or GGUF), nothing trainable.
pub fn load_frozen(dir: &Path, device: &Device) -> Result<CausalLm, TrainError> {
    let config = ModelConfig::from_dir(dir)?;
    Ok(CausalLm::from_var_builder(
        &config,
        VarBuilder::from_tensors(load_weights(dir, device)?, DType::F32, device),
    )?)
}

/// The trainable parameters.
enum Params {
    /// Every weight is a variable.
    Full(Vec<(String, Var)>),
    /// LoRA adapters over frozen base weights.
    Lora(LoraAdapters),
}

/// A model whose parameters are being trained.
pub struct Trainee {
    config: ModelConfig,
    base: HashMap<String, Tensor>,
    params: Params,
    device: Device,
}

impl Trainee {
    fn full(
        config: ModelConfig,
        base: HashMap<String, Tensor>,
        device: Device,
    ) -> candle_core::Result<Self> {
        let mut names: Vec<String> = base.keys().cloned().collect();
        names.sort();
        let vars = names
            .into_iter()
            .map(|n| Var::from_tensor(&base[&n]).map(|v| (n, v)))
            .collect::<candle_core::Result<_>>()?;
        Ok(Trainee {
            config,
            base,
            params: Params::Full(vars),
            device,
        })
    }

    /// LoRA adapters (fresh, seeded) over `base`.
    pub fn lora(
        config: ModelConfig,
        base: HashMap<String, Tensor>,
        lora: LoraConfig,
        seed: u64,
        device: Device,
    ) -> candle_core::Result<Self> {
        let adapters = LoraAdapters::init(lora, &base, seed)?;
        Ok(Trainee {
            config,
            base,
            params: Params::Lora(adapters),
            device,
        })
    }

    /// LoRA adapters given explicitly.
    pub fn with_adapters(
        config: ModelConfig,
        base: HashMap<String, Tensor>,
        adapters: LoraAdapters,
        device: Device,
    ) -> Self {
        Trainee {
            config,
            base,
            params: Params::Lora(adapters),
            device,
        }
    }

    /// Trainable variables, in a fixed order.
    pub fn vars(&self) -> Vec<Var> {
        match &self.params {
            Params::Full(v) => v.iter().map(|(_, v)| v.clone()).collect(),
            Params::Lora(a) => a.vars(),
        }
    }

    /// Leading decoder blocks no trainable variable reaches (0 for full-parameter training):
    /// blocks before the first adapted one.
    pub fn frozen_layers(&self) -> usize {
        match &self.params {
            Params::Full(_) => 0,
            Params::Lora(a) => {
                let n = self.config.num_hidden_layers;
                a.modules
                    .iter()
                    // A module outside the blocks (none of the default targets): nothing
                    // is frozen.
                    .map(|m| crate::lora::layer_index(&m.module).unwrap_or(0))
                    .min()
                    .unwrap_or(n)
                    .min(n)
            }
        }
    }

    /// The weights the trainee started from (for LoRA: the frozen base under the adapters).
    pub fn base_weights(&self) -> &HashMap<String, Tensor> {
        &self.base
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The model with the current weights as constants (no autograd graph to the variables):
    /// for generation and scoring.
    pub fn frozen_model(&self) -> candle_core::Result<CausalLm> {
        let w: HashMap<String, Tensor> = self
            .weights()?
            .into_iter()
            .map(|(k, v)| (k, v.detach()))
            .collect();
        CausalLm::from_var_builder(
            &self.config,
            VarBuilder::from_tensors(w, DType::F32, &self.device),
        )
    }

    /// The LoRA adapters, if this is a LoRA trainee.
    pub fn adapters(&self) -> Option<&LoraAdapters> {
        match &self.params {
            Params::Lora(a) => Some(a),
            Params::Full(_) => None,
        }
    }

    /// Current weights (graph-connected to the variables).
    pub fn weights(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        match &self.params {
            Params::Full(v) => Ok(v
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
                .collect()),
            Params::Lora(a) => a.merged(&self.base),
        }
    }

    /// The model with the current weights, graph-connected to the variables (LoRA: the
    /// factored adapters of [`LoraAdapters::factored`], so a backward pass costs rank-r products
    /// instead of full weight gradients).
    pub fn model(&self) -> candle_core::Result<CausalLm> {
        let weights = match &self.params {
            Params::Full(_) => self.weights()?,
            Params::Lora(a) => a.factored(&self.base)?,
        };
        CausalLm::from_var_builder(
            &self.config,
            VarBuilder::from_tensors(weights, DType::F32, &self.device),
        )
    }

    /// The model with one copy of each adapter's factors per example (for
    /// [`example_gradients_batched`]): `n` fresh variables `[n, r, in]` / `[n, out, r]` per
    /// module, equal to the current `A` / `B`, of which batch row `j` uses copy `owners[j]`.
    /// Returns the model and the copies `(A, B)` in module order.
    pub fn per_example_model(
        &self,
        owners: &[u32],
        n: usize,
    ) -> candle_core::Result<(CausalLm, Vec<(Var, Var)>)> {
        let Params::Lora(ad) = &self.params else {
            candle_core::bail!("per-example adapter copies need a LoRA trainee");
        };
        if owners.iter().any(|&o| o as usize >= n) {
            candle_core::bail!("a batch row belongs to no example");
        }
        let idx = Tensor::from_vec(owners.to_vec(), owners.len(), &self.device)?;
        let mut copies = Vec::with_capacity(ad.modules.len());
        let map = ad.factored_with(&self.base, |m| {
            let copy = |v: &Var| Var::from_tensor(&v.as_tensor().unsqueeze(0)?.repeat((n, 1, 1))?);
            let (a, b) = (copy(&m.a)?, copy(&m.b)?);
            let rows = (
                a.as_tensor().index_select(&idx, 0)?,
                b.as_tensor().index_select(&idx, 0)?,
            );
            copies.push((a, b));
            Ok(rows)
        })?;
        let model = CausalLm::from_var_builder(
            &self.config,
            VarBuilder::from_tensors(map, DType::F32, &self.device),
        )?;
        Ok((model, copies))
    }

    pub(crate) fn save_params(&self, path: &Path) -> candle_core::Result<()> {
        let map: HashMap<String, Tensor> = match &self.params {
            Params::Full(v) => v
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
                .collect(),
            Params::Lora(a) => a
                .modules
                .iter()
                .flat_map(|m| {
                    [
                        (format!("{}.lora_A", m.module), m.a.as_tensor().clone()),
                        (format!("{}.lora_B", m.module), m.b.as_tensor().clone()),
                    ]
                })
                .collect(),
        };
        candle_core::safetensors::save(&map, path)
    }

    pub(crate) fn load_params(&self, path: &Path) -> candle_core::Result<()> {
        let map = candle_core::safetensors::load(path, &self.device)?;
        let get = |k: &str| {
            map.get(k).cloned().ok_or_else(|| {
                candle_core::Error::Msg(format!("{}: missing `{k}`", path.display()))
            })
        };
        match &self.params {
            Params::Full(v) => {
                for (n, var) in v {
                    var.set(&get(n)?)?;
                }
            }
            Params::Lora(a) => {
                for m in &a.modules {
                    m.a.set(&get(&format!("{}.lora_A", m.module))?)?;
                    m.b.set(&get(&format!("{}.lora_B", m.module))?)?;
                }
            }
        }
        Ok(())
    }
}

/// A right-padded batch (see [`collate`]) with the positions that score a target: the
/// logits at position `j − 1` of a row score its token `j`, so only those hidden states need
/// the (vocabulary-wide) output layer.
#[derive(Debug, Clone)]
pub struct ScoredBatch {
    /// Token ids `[b, t]` (u32).
    pub ids: Tensor,
    /// Attention mask `[b, t]` (f32, 1 = real token).
    pub mask: Tensor,
    /// Flat index `row * t + j − 1` of every scored position, row-major: `[n]` (u32).
    select: Tensor,
    /// The token each selected position predicts: `[n, 1]` (u32).
    next: Tensor,
    /// Row membership weighted by the target weight: `[b, n]` (f32).
    rows: Tensor,
    /// Sum of the target weights (scored tokens).
    pub n_targets: f64,
}

impl ScoredBatch {
    /// Collates `batch` (right padding) and lists its scored positions.
    pub fn new(batch: &[&Encoded], device: &Device) -> candle_core::Result<Self> {
        let (ids, mask, _) = collate(batch, device)?;
        let t = ids.dim(1)?;
        let (mut select, mut next, mut owner, mut weight) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (r, e) in batch.iter().enumerate() {
            for j in 1..e.ids.len() {
                let w = e.targets.get(j).copied().unwrap_or(0.0);
                if w != 0.0 {
                    select.push((r * t + j - 1) as u32);
                    next.push(e.ids[j]);
                    owner.push(r);
                    weight.push(w);
                }
            }
        }
        let n = select.len();
        let b = batch.len();
        let mut rows = vec![0f32; b * n];
        for (k, (&r, &w)) in owner.iter().zip(&weight).enumerate() {
            rows[r * n + k] = w;
        }
        Ok(ScoredBatch {
            ids,
            mask,
            select: Tensor::from_vec(select, n, device)?,
            next: Tensor::from_vec(next, (n, 1), device)?,
            rows: Tensor::from_vec(rows, (b, n), device)?,
            n_targets: weight.iter().map(|&w| f64::from(w)).sum(),
        })
    }

    /// The final hidden states at the scored positions, `[n, hidden]` in row-major order of
    /// (row, position): entry `k` predicts [`Self::next_ids`]`[k]`.
    pub fn picked(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let (hb, t, h) = hidden.dims3()?;
        hidden.reshape((hb * t, h))?.index_select(&self.select, 0)
    }

    /// The token each scored position predicts, `[n, 1]` (u32).
    pub fn next_ids(&self) -> &Tensor {
        &self.next
    }

    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.rows.dims()[0]
    }

    /// Weighted sum of the target log-probs of each row, `[b]`, from the final hidden states
    /// `[b, t, hidden]` of `model` ([`CausalLm::forward_hidden`]): only the scored positions go
    /// through the output layer and the log-softmax (the same value as the full-logits
    /// [`losses::sequence_logprob`] up to float rounding). Differentiable.
    pub fn logprob(&self, model: &CausalLm, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let b = self.rows();
        let n = self.select.dim(0)?;
        if n == 0 {
            return Tensor::zeros(b, DType::F32, hidden.device());
        }
        let (hb, t, h) = hidden.dims3()?;
        let picked = hidden.reshape((hb * t, h))?.index_select(&self.select, 0)?;
        let lp = candle_nn::ops::log_softmax(
            &model.lm_head(&picked)?.to_dtype(DType::F32)?,
            candle_core::D::Minus1,
        )?
        .gather(&self.next, 1)?;
        self.rows.matmul(&lp)?.squeeze(1)
    }
}

/// Sum of target log-probs per sequence under `model`: `[b]`.
pub fn batch_logprob(
    model: &CausalLm,
    batch: &[&Encoded],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let sb = ScoredBatch::new(batch, device)?;
    let hidden = model.forward_hidden(&sb.ids, Some(&sb.mask), None, None)?;
    sb.logprob(model, &hidden)
}

/// The part of a forward pass that no trainable variable reaches, computed once per batch and
/// shared (see [`CausalLm::forward_prefix`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrozenPrefix {
    /// Leading decoder blocks (with the embeddings) whose weights are constants of the
    /// trainee: their output has no gradient, so it is computed once without building a graph
    /// through them. 0 = none.
    pub layers: usize,
    /// The reference model's embeddings and first `layers` blocks are the trainee's (the DPO
    /// reference is the model the trainee starts from), so the reference continues from the
    /// same hidden states instead of recomputing them.
    pub reference_shares: bool,
}

/// The leading decoder blocks of two weight maps (Hugging Face names) that are bit-identical,
/// embeddings included (0 when the embeddings differ or a tensor is missing on one side).
pub fn shared_prefix_layers(
    a: &HashMap<String, Tensor>,
    b: &HashMap<String, Tensor>,
    num_layers: usize,
) -> candle_core::Result<usize> {
    let block_of = crate::lora::layer_index;
    let same = |x: &Tensor, y: &Tensor| -> candle_core::Result<bool> {
        if x.dims() != y.dims() || x.dtype() != y.dtype() {
            return Ok(false);
        }
        Ok(x.eq(y)?
            .to_dtype(DType::F32)?
            .min_all()?
            .to_scalar::<f32>()?
            == 1.0)
    };
    // Outside the blocks, the prefix reads only the input embeddings.
    let mut first_diff = num_layers;
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for name in names {
        let block = block_of(name);
        let embedding =
            block.is_none() && (name.contains("embed_in") || name.contains("embed_tokens"));
        if (block.is_none() && !embedding) || block.is_some_and(|i| i >= first_diff) {
            continue;
        }
        let equal = match (a.get(name), b.get(name)) {
            (Some(x), Some(y)) => same(x, y)?,
            _ => false,
        };
        match (equal, block) {
            (true, _) => {}
            (false, Some(i)) => first_diff = i,
            (false, None) => return Ok(0),
        }
    }
    Ok(first_diff)
}

/// Loads the frozen reference model in `dir` and tells whether it shares `layers` leading
/// blocks (with the embeddings) with `trainee`'s base weights, bit for bit — then it can continue
/// from the trainee's frozen-prefix hidden states ([`FrozenPrefix::reference_shares`]).
pub fn load_reference(
    dir: &Path,
    trainee: &Trainee,
    layers: usize,
    device: &Device,
) -> Result<(CausalLm, bool), TrainError> {
    let config = ModelConfig::from_dir(dir)?;
    let weights = load_weights(dir, device)?;
    let n = trainee.config.num_hidden_layers;
    let shares = layers > 0
        && config.num_hidden_layers == n
        && config.hidden_size == trainee.config.hidden_size
        && shared_prefix_layers(&trainee.base, &weights, n)? >= layers;
    let model = CausalLm::from_var_builder(
        &config,
        VarBuilder::from_tensors(weights, DType::F32, device),
    )?;
    Ok((model, shares))
}

/// Loss of one micro-batch, plus (for DPO) the implicit reward margins.
pub fn batch_loss(
    stage: Stage,
    model: &CausalLm,
    reference: Option<&CausalLm>,
    batch: &[&PairEncoded],
    beta: f64,
    device: &Device,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    batch_loss_with(
        stage,
        model,
        reference,
        FrozenPrefix::default(),
        batch,
        beta,
        device,
    )
}

/// [`batch_loss`] with the frozen prefix computed once (`prefix`): the same loss and gradients
/// up to float rounding, at the cost of the trainable blocks only (and, when the reference
/// shares the prefix, of its remaining blocks only).
pub fn batch_loss_with(
    stage: Stage,
    model: &CausalLm,
    reference: Option<&CausalLm>,
    prefix: FrozenPrefix,
    batch: &[&PairEncoded],
    beta: f64,
    device: &Device,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    match stage {
        Stage::Pretrain | Stage::Sft => {
            let (lp, sb) = sft_logprobs(model, prefix.layers, batch, device)?;
            if sb.n_targets == 0.0 {
                candle_core::bail!("no scored token in the batch");
            }
            let loss = (lp.sum_all()?.neg()? / sb.n_targets)?;
            Ok((loss, None))
        }
        Stage::Rm => candle_core::bail!(
            "the reward-model loss needs its head: use reward::rm_batch_loss_with"
        ),
        Stage::Dpo => {
            let [pc, pr, rc, rr] = dpo_logprobs(model, reference, prefix, batch, device)?;
            let (loss, margins) = losses::dpo_loss(&pc, &pr, &rc, &rr, beta)?;
            Ok((loss, Some(margins)))
        }
    }
}

/// The final hidden states of `sb` under `model`, its first `k` blocks computed once without a
/// graph (see [`FrozenPrefix`]), and those blocks' output (`None` when `k` is 0).
fn hidden_after_prefix(
    model: &CausalLm,
    sb: &ScoredBatch,
    k: usize,
) -> candle_core::Result<(Tensor, Option<Tensor>)> {
    if k == 0 {
        let hidden = model.forward_hidden(&sb.ids, Some(&sb.mask), None, None)?;
        return Ok((hidden, None));
    }
    let h0 = model.forward_prefix(&sb.ids, Some(&sb.mask), k)?.detach();
    Ok((model.forward_hidden_from(&h0, Some(&sb.mask), k)?, Some(h0)))
}

/// Per-row summed target log-probs of the pairs' SFT sequences `[b]`, and their batch.
fn sft_logprobs(
    model: &CausalLm,
    k: usize,
    batch: &[&PairEncoded],
    device: &Device,
) -> candle_core::Result<(Tensor, ScoredBatch)> {
    let seqs: Vec<&Encoded> = batch.iter().map(|p| &p.sft).collect();
    let sb = ScoredBatch::new(&seqs, device)?;
    let (hidden, _) = hidden_after_prefix(model, &sb, k)?;
    Ok((sb.logprob(model, &hidden)?, sb))
}

/// DPO's summed response log-probs `[b]` each: policy chosen, policy rejected, reference chosen,
/// reference rejected (the reference's detached), chosen and rejected in one batch, the
/// reference continuing from the policy's frozen prefix when `prefix.reference_shares`.
fn dpo_logprobs(
    model: &CausalLm,
    reference: Option<&CausalLm>,
    prefix: FrozenPrefix,
    batch: &[&PairEncoded],
    device: &Device,
) -> candle_core::Result<[Tensor; 4]> {
    let reference =
        reference.ok_or_else(|| candle_core::Error::Msg("DPO needs a reference model".into()))?;
    let k = prefix.layers;
    let seqs: Vec<&Encoded> = batch
        .iter()
        .flat_map(|p| [&p.chosen, &p.rejected])
        .collect();
    let sb = ScoredBatch::new(&seqs, device)?;
    let (hidden, h0) = hidden_after_prefix(model, &sb, k)?;
    let pol = sb.logprob(model, &hidden)?;
    let ref_hidden = match h0.as_ref().filter(|_| prefix.reference_shares) {
        Some(h0) => reference.forward_hidden_from(h0, Some(&sb.mask), k)?,
        None => reference.forward_hidden(&sb.ids, Some(&sb.mask), None, None)?,
    };
    let rf = sb.logprob(reference, &ref_hidden.detach())?.detach();
    let n = batch.len();
    let pick = |t: &Tensor, off: usize| -> candle_core::Result<Tensor> {
        let idx: Vec<u32> = (0..n).map(|i| (2 * i + off) as u32).collect();
        t.index_select(&Tensor::from_vec(idx, n, device)?, 0)
    };
    Ok([pick(&pol, 0)?, pick(&pol, 1)?, pick(&rf, 0)?, pick(&rf, 1)?])
}

/// A preference pair tokenised for every stage.
#[derive(Debug, Clone)]
pub struct PairEncoded {
    /// Index of the pair in its data file.
    pub index: usize,
    /// prompt + chosen with the SFT targets.
    pub sft: Encoded,
    /// prompt + chosen, response tokens scored (DPO).
    pub chosen: Encoded,
    /// prompt + rejected, response tokens scored (DPO).
    pub rejected: Encoded,
}

/// Tokenises pairs for `cfg.stage`; pairs that cannot be encoded are skipped and counted.
pub fn encode_pairs(
    tok: &Tokenizer,
    pairs: &[PreferencePair],
    cfg: &TrainConfig,
    eos: Option<u32>,
) -> (Vec<PairEncoded>, usize) {
    let score_prompt = match cfg.stage {
        Stage::Pretrain => true,
        Stage::Sft => !cfg.mask_prompt,
        Stage::Dpo | Stage::Rm => false,
    };
    let mut out = Vec::new();
    let mut skipped = 0;
    for p in pairs {
        let e = (|| -> Result<PairEncoded, TrainError> {
            Ok(PairEncoded {
                index: p.index,
                sft: encode(tok, &p.prompt, &p.chosen, eos, cfg.max_len, score_prompt)?,
                chosen: encode(tok, &p.prompt, &p.chosen, eos, cfg.max_len, false)?,
                rejected: encode(tok, &p.prompt, &p.rejected, eos, cfg.max_len, false)?,
            })
        })();
        match e {
            Ok(e) => out.push(e),
            Err(_) => skipped += 1,
        }
    }
    (out, skipped)
}

/// One optimiser step's log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// 1-based step.
    pub step: usize,
    /// Mean loss over the step's micro-batches.
    pub loss: f64,
    /// DPO: mean implicit reward margin.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub margin: Option<f64>,
    /// DPO: share of pairs with a positive margin.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reward_accuracy: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct CheckpointState {
    step: usize,
    config: TrainConfig,
    data_sha256: String,
    model_dir: String,
}

/// Example indices of micro-batch `k` of step `step` (0-based), epoch-shuffled with the seed.
pub fn batch_indices(n: usize, seed: u64, step: usize, k: usize, cfg: &TrainConfig) -> Vec<usize> {
    let start = (step * cfg.grad_accum + k) * cfg.batch_size;
    (start..start + cfg.batch_size)
        .map(|c| {
            let epoch = c / n;
            let mut perm: Vec<usize> = (0..n).collect();
            SplitMix64::new(derive_seed(seed, &format!("epoch/{epoch}"))).shuffle(&mut perm);
            perm[c % n]
        })
        .collect()
}

/// Trains `model_dir` on `pairs` and writes the result to `out_dir` (see the module docs).
/// `reference_dir` is the frozen DPO reference (usually the SFT model). Resumes from
/// `out_dir/checkpoint` when it exists and matches. `on_step` sees every step's log.
pub fn train(
    cfg: &TrainConfig,
    model_dir: &Path,
    reference_dir: Option<&Path>,
    pairs: &[PreferencePair],
    out_dir: &Path,
    on_step: &mut dyn FnMut(&StepLog),
) -> Result<Vec<StepLog>, TrainError> {
    if cfg.steps == 0 || cfg.batch_size == 0 || cfg.grad_accum == 0 {
        return Err(TrainError::Invalid(
            "steps, batch size and grad accumulation must be positive".into(),
        ));
    }
    let device = Device::Cpu;
    let config = ModelConfig::from_dir(model_dir)?;
    let tok = trust_backends::candle::loader::load_tokenizer(model_dir, config.vocab_size)?;
    let eos = config.eos_token_ids.first().copied();
    let (data, skipped) = encode_pairs(&tok, pairs, cfg, eos);
    if data.is_empty() {
        return Err(TrainError::Invalid(format!(
            "no usable training pairs ({skipped} skipped)"
        )));
    }
    let data_sha = trust_core::data::sha256_bytes(
        serde_json::to_string(pairs)
            .map_err(|e| TrainError::Invalid(e.to_string()))?
            .as_bytes(),
    );
    let base = load_weights(model_dir, &device)?;
    let trainee = match cfg.stage {
        Stage::Pretrain => Trainee::full(config.clone(), base, device.clone())?,
        Stage::Rm if cfg.full => Trainee::full(config.clone(), base, device.clone())?,
        Stage::Sft | Stage::Dpo | Stage::Rm => Trainee::lora(
            config.clone(),
            base,
            cfg.lora.clone(),
            cfg.seed,
            device.clone(),
        )?,
    };
    // The blocks before the first adapted one are constants: computed once per batch, and
    // shared with the reference when its first blocks are the same weights.
    let mut prefix = FrozenPrefix {
        layers: trainee.frozen_layers(),
        reference_shares: false,
    };
    let reference = match (cfg.stage, reference_dir) {
        (Stage::Dpo, Some(dir)) => {
            let (reference, shares) = load_reference(dir, &trainee, prefix.layers, &device)?;
            prefix.reference_shares = shares;
            Some(reference)
        }
        (Stage::Dpo, None) => {
            return Err(TrainError::Invalid(
                "DPO needs a reference model (--ref)".into(),
            ));
        }
        _ => None,
    };
    // The reward model's scalar head, trained with the transformer.
    let head = match cfg.stage {
        Stage::Rm => {
            let mut h = RewardHead::init(config.hidden_size, cfg.seed, &device)?;
            h.trainable = true;
            Some(h)
        }
        _ => None,
    };
    let mut vars = trainee.vars();
    if let Some(h) = &head {
        vars.push(h.weight.clone());
    }
    let mut opt = AdamW::new(&vars, cfg.lr, cfg.weight_decay)?;

    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let ckpt = out_dir.join("checkpoint");
    let state = CheckpointState {
        step: 0,
        config: cfg.clone(),
        data_sha256: data_sha,
        model_dir: model_dir.display().to_string(),
    };
    let log_path = out_dir.join("train_log.jsonl");
    let mut start = 0;
    let state_path = ckpt.join("state.json");
    if let Some(old) = read_checkpoint_state::<CheckpointState>(&state_path)? {
        if old.config != state.config || old.data_sha256 != state.data_sha256 {
            return Err(TrainError::Invalid(format!(
                "{}: checkpoint was made with other settings or data; use a new output directory",
                state_path.display()
            )));
        }
        trainee.load_params(&ckpt.join("params.safetensors"))?;
        if let Some(h) = &head {
            let p = ckpt.join("head.safetensors");
            let map = candle_core::safetensors::load(&p, &device)?;
            let w = map.get(V_HEAD_WEIGHT).ok_or_else(|| {
                TrainError::Invalid(format!("{}: missing `{V_HEAD_WEIGHT}`", p.display()))
            })?;
            h.weight.set(w)?;
        }
        opt.load(&ckpt.join("optim.safetensors"), old.step, &device)?;
        start = old.step;
    }
    let (mut logs, mut log_file) = restore_log::<StepLog>(&log_path, start)?;

    for step in start..cfg.steps {
        let model = trainee.model()?;
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let (mut loss_sum, mut margins) = (0.0, Vec::new());
        for k in 0..cfg.grad_accum {
            let idx = batch_indices(data.len(), cfg.seed, step, k, cfg);
            let batch: Vec<&PairEncoded> = idx.iter().map(|&i| &data[i]).collect();
            let (loss, m) = match &head {
                Some(h) => {
                    let (loss, m) = crate::reward::rm_batch_loss_with(
                        &model,
                        h,
                        prefix.layers,
                        &batch,
                        &device,
                    )?;
                    (loss, Some(m))
                }
                None => batch_loss_with(
                    cfg.stage,
                    &model,
                    reference.as_ref(),
                    prefix,
                    &batch,
                    cfg.beta,
                    &device,
                )?,
            };
            loss_sum += loss.to_scalar::<f32>()? as f64;
            if let Some(m) = m {
                margins.extend(m.to_vec1::<f32>()?);
            }
            let g = (loss / cfg.grad_accum as f64)?.backward()?;
            for (slot, var) in grads.iter_mut().zip(&vars) {
                if let Some(gv) = g.get(var.as_tensor()) {
                    *slot = Some(match slot.take() {
                        Some(acc) => (acc + gv)?,
                        None => gv.clone(),
                    });
                }
            }
        }
        opt.step(&vars, &grads)?;
        let log = StepLog {
            step: step + 1,
            loss: loss_sum / cfg.grad_accum as f64,
            margin: (!margins.is_empty())
                .then(|| margins.iter().map(|&m| m as f64).sum::<f64>() / margins.len() as f64),
            reward_accuracy: (!margins.is_empty()).then(|| {
                margins.iter().filter(|&&m| m > 0.0).count() as f64 / margins.len() as f64
            }),
        };
        writeln!(log_file, "{}", serde_json::to_string(&log).expect("json"))
            .map_err(io(&log_path))?;
        on_step(&log);
        logs.push(log);
        let last = step + 1 == cfg.steps;
        if last || (cfg.checkpoint_every > 0 && (step + 1) % cfg.checkpoint_every == 0) {
            save_checkpoint(
                &trainee,
                head.as_ref(),
                &opt,
                &CheckpointState {
                    step: step + 1,
                    ..state.clone()
                },
                &ckpt,
            )?;
        }
    }

    // Final model directory.
    let mut weights = trainee
        .weights()?
        .into_iter()
        .map(|(k, v)| (k, v.detach()))
        .collect::<HashMap<_, _>>();
    if let Some(h) = &head {
        weights.extend(h.tensors());
    }
    save_tensors(&weights, &out_dir.join("model.safetensors"))?;
    trust_backends::candle::loader::write_hf_companions(model_dir, out_dir)?;
    if let Some(a) = trainee.adapters() {
        a.save(&out_dir.join("adapter"))?;
    }
    Ok(logs)
}

/// Writes `tensors` to `path` as safetensors, crash-safe (temporary file, fsync, rename): a kill
/// mid-save leaves the previous file (or none), never a torn one that loads as garbage.
pub(crate) fn save_tensors(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> candle_core::Result<()> {
    trust_core::fsutil::replace_via(path, |tmp| candle_core::safetensors::save(tensors, tmp))
}

fn save_checkpoint(
    trainee: &Trainee,
    head: Option<&RewardHead>,
    opt: &AdamW,
    state: &CheckpointState,
    dir: &Path,
) -> Result<(), TrainError> {
    let head = head.map(|h| ("head.safetensors", h.tensors().into_iter().collect()));
    write_checkpoint(dir, trainee, head, opt, state)
}

/// Reads a checkpoint's `state.json`; `None` when there is none (a fresh run).
pub(crate) fn read_checkpoint_state<S: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Option<S>, TrainError> {
    if let Some(dir) = path.parent() {
        recover_checkpoint(dir)?;
    }
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))
}

/// The first `start` step logs of `log_path` (the steps a resumed run keeps), and the log file
/// rewritten with just those, open for the next steps.
pub(crate) fn restore_log<T: Serialize + serde::de::DeserializeOwned>(
    log_path: &Path,
    start: usize,
) -> Result<(Vec<T>, std::fs::File), TrainError> {
    let logs: Vec<T> = match (start, std::fs::read_to_string(log_path)) {
        (1.., Ok(text)) => text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .take(start)
            .collect(),
        _ => Vec::new(),
    };
    let mut file = std::fs::File::create(log_path).map_err(io(log_path))?;
    for l in &logs {
        writeln!(file, "{}", serde_json::to_string(l).expect("json")).map_err(io(log_path))?;
    }
    Ok((logs, file))
}

/// Writes a checkpoint directory: the trainee's parameters (`params.safetensors`), an optional
/// extra tensor file (a head), the optimiser moments (`optim.safetensors`) and `state.json`
/// go into `DIR.tmp`, which then replaces `dir`.
pub(crate) fn write_checkpoint<S: Serialize>(
    dir: &Path,
    trainee: &Trainee,
    extra: Option<(&str, HashMap<String, Tensor>)>,
    opt: &AdamW,
    state: &S,
) -> Result<(), TrainError> {
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    trainee.save_params(&tmp.join("params.safetensors"))?;
    if let Some((name, tensors)) = extra {
        candle_core::safetensors::save(&tensors, tmp.join(name))?;
    }
    opt.save(&tmp.join("optim.safetensors"))?;
    let p = tmp.join("state.json");
    std::fs::write(&p, serde_json::to_string_pretty(state).expect("json")).map_err(io(&p))?;
    sync_dir_files(&tmp)?;
    // Swap: the old checkpoint moves aside before the new one takes its name, so at every
    // instant one complete checkpoint exists under `dir` or `DIR.old` (recover_checkpoint).
    let old = dir.with_extension("old");
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(io(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))?;
    if let Some(parent) = dir.parent() {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Flushes every file of `dir` to disk (so a rename after it publishes complete files).
fn sync_dir_files(dir: &Path) -> Result<(), TrainError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let p = entry.map_err(io(dir))?.path();
        if p.is_file() {
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(io(&p))?;
        }
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// After a kill during [`write_checkpoint`]'s swap, `dir` may be missing while `DIR.old` (the
/// previous complete checkpoint) exists: put it back. A leftover `DIR.tmp` is incomplete or
/// unpublished and is removed.
pub(crate) fn recover_checkpoint(dir: &Path) -> Result<(), TrainError> {
    let old = dir.with_extension("old");
    if !dir.exists() && old.is_dir() {
        std::fs::rename(&old, dir).map_err(io(dir))?;
    }
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

/// Gradients of the stage loss of one example with respect to `vars` (e.g. the LoRA `A`/`B`
/// tensors of a [`Trainee`]), each flattened in row-major order; a variable the loss does not
/// reach gets zeros. `model` must have been built from the trainee's current weights
/// ([`Trainee::model`]); batch size 1, as in the paper's attribution code.
pub fn example_gradients(
    stage: Stage,
    model: &CausalLm,
    reference: Option<&CausalLm>,
    vars: &[Var],
    example: &PairEncoded,
    beta: f64,
    device: &Device,
) -> candle_core::Result<Vec<Vec<f32>>> {
    example_gradients_with(
        stage,
        model,
        reference,
        FrozenPrefix::default(),
        vars,
        example,
        beta,
        device,
    )
}

/// [`example_gradients`] through [`batch_loss_with`] (the frozen prefix computed once and, when
/// `prefix.reference_shares`, shared with the reference): the same gradients up to float
/// rounding.
#[allow(clippy::too_many_arguments)]
pub fn example_gradients_with(
    stage: Stage,
    model: &CausalLm,
    reference: Option<&CausalLm>,
    prefix: FrozenPrefix,
    vars: &[Var],
    example: &PairEncoded,
    beta: f64,
    device: &Device,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let (loss, _) = batch_loss_with(stage, model, reference, prefix, &[example], beta, device)?;
    let grads = loss.backward()?;
    vars.iter()
        .map(|v| match grads.get(v.as_tensor()) {
            Some(g) => g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>(),
            None => Ok(vec![0.0; v.as_tensor().elem_count()]),
        })
        .collect()
}

/// Per-example adapter gradients of a whole batch from one forward and one backward pass: every
/// adapted layer gets one copy of its LoRA factors per example ([`Trainee::per_example_model`]),
/// the batch's rows (right-padded; DPO and RM: chosen and rejected of each example) use their
/// example's copy, and the summed per-example losses are differentiated once, so copy `i`'s
/// gradient is example `i`'s own (padding never reaches a real token: the attention is causal
/// and masked). Equal to [`example_gradients_with`] on each example alone up to float rounding,
/// at the cost of one batched pass. Losses: SFT/pretrain token-mean NLL of each example, DPO
/// against `reference` (its log-probs detached), RM Bradley–Terry through `head` (its weight
/// cannot be among `vars`: a trainable head needs the per-example path). Returns, per example, one flattened gradient
/// per entry of `vars` (each an adapter factor of `trainee`; zeros where the loss does not
/// reach it).
#[allow(clippy::too_many_arguments)]
pub fn example_gradients_batched(
    stage: Stage,
    trainee: &Trainee,
    reference: Option<&CausalLm>,
    head: Option<&RewardHead>,
    prefix: FrozenPrefix,
    vars: &[Var],
    batch: &[&PairEncoded],
    beta: f64,
    device: &Device,
) -> candle_core::Result<Vec<Vec<Vec<f32>>>> {
    let n = batch.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let per_pair = match stage {
        Stage::Pretrain | Stage::Sft => 1,
        Stage::Dpo | Stage::Rm => 2,
    };
    let owners: Vec<u32> = (0..n as u32)
        .flat_map(|i| std::iter::repeat_n(i, per_pair))
        .collect();
    let (model, copies) = trainee.per_example_model(&owners, n)?;
    let adapters = trainee
        .adapters()
        .ok_or_else(|| candle_core::Error::Msg("per-example gradients need LoRA".into()))?;
    // Each attributed variable's per-example copy.
    let mut sources = Vec::with_capacity(vars.len());
    for v in vars {
        let id = v.as_tensor().id();
        let found = adapters
            .modules
            .iter()
            .zip(&copies)
            .find_map(|(m, (a, b))| {
                if m.a.as_tensor().id() == id {
                    Some(a.clone())
                } else if m.b.as_tensor().id() == id {
                    Some(b.clone())
                } else {
                    None
                }
            });
        match found {
            Some(c) => sources.push(c),
            None => candle_core::bail!(
                "per-example gradients: a variable of shape {:?} is not an adapter factor of the trainee",
                v.as_tensor().dims()
            ),
        }
    }
    // The summed per-example losses (each a batch of one's loss), differentiated once.
    let loss = match stage {
        Stage::Pretrain | Stage::Sft => {
            let (lp, _) = sft_logprobs(&model, prefix.layers, batch, device)?;
            let mut inv = Vec::with_capacity(n);
            for p in batch {
                let t: f32 = p.sft.targets.iter().skip(1).sum();
                if t == 0.0 {
                    candle_core::bail!("example {} has no scored token", p.index);
                }
                inv.push(-1.0 / t);
            }
            (lp * Tensor::from_vec(inv, n, device)?)?.sum_all()?
        }
        Stage::Dpo => {
            let [pc, pr, rc, rr] = dpo_logprobs(&model, reference, prefix, batch, device)?;
            let (_, margins) = losses::dpo_loss(&pc, &pr, &rc, &rr, beta)?;
            losses::log_sigmoid(&margins)?.neg()?.sum_all()?
        }
        Stage::Rm => {
            let head =
                head.ok_or_else(|| candle_core::Error::Msg("RM needs a reward head".into()))?;
            let (_, margins) =
                crate::reward::rm_batch_loss_with(&model, head, prefix.layers, batch, device)?;
            losses::log_sigmoid(&margins)?.neg()?.sum_all()?
        }
    };
    let grads = loss.backward()?;
    let mut out = vec![Vec::with_capacity(vars.len()); n];
    for (v, c) in vars.iter().zip(&sources) {
        let size = v.as_tensor().elem_count();
        match grads.get(c.as_tensor()) {
            Some(g) => {
                let flat = g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                for (i, o) in out.iter_mut().enumerate() {
                    o.push(flat[i * size..(i + 1) * size].to_vec());
                }
            }
            None => {
                for o in out.iter_mut() {
                    o.push(vec![0.0; size]);
                }
            }
        }
    }
    Ok(out)
}

/// Loads a LoRA trainee from a directory written by [`train`] (`adapter/` over the base model the
/// adapters were trained on).
pub fn load_lora_trainee(
    out_dir: &Path,
    base_dir: &Path,
    device: &Device,
) -> Result<Trainee, TrainError> {
    let config = ModelConfig::from_dir(base_dir)?;
    let base = load_weights(base_dir, device)?;
    let adapters = LoraAdapters::load(&out_dir.join("adapter"), device)?;
    Ok(Trainee::with_adapters(
        config,
        base,
        adapters,
        device.clone(),
    ))
}

#[cfg(test)]
mod checkpoint_swap_tests {
    use super::*;

    #[test]
    fn a_kill_between_the_renames_leaves_the_previous_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("checkpoint");
        // State after a kill between `rename(dir, old)` and `rename(tmp, dir)`.
        std::fs::create_dir_all(dir.with_extension("old")).unwrap();
        std::fs::write(
            dir.with_extension("old").join("state.json"),
            "{\"step\": 4}",
        )
        .unwrap();
        std::fs::create_dir_all(dir.with_extension("tmp")).unwrap();
        std::fs::write(dir.with_extension("tmp").join("state.json"), "{\"st").unwrap();
        #[derive(serde::Deserialize)]
        struct S {
            step: usize,
        }
        let s: S = read_checkpoint_state(&dir.join("state.json"))
            .unwrap()
            .expect("the previous checkpoint is back");
        assert_eq!(s.step, 4);
        assert!(!dir.with_extension("tmp").exists() && !dir.with_extension("old").exists());
        // Nothing at all: no checkpoint, no error.
        let none = root.path().join("fresh/checkpoint");
        assert!(
            read_checkpoint_state::<S>(&none.join("state.json"))
                .unwrap()
                .is_none()
        );
    }
}
