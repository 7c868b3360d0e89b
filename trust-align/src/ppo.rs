//! PPO for language models (Schulman et al. 2017; Ziegler et al. 2019), in the formulation of
//! trlX (`trlx/models/modeling_ppo.py`, `trlx/trainer/accelerate_ppo_trainer.py`: the trainer
//! the paper's PPO checkpoints come from) and TRL (`trl/trainer/ppo_trainer.py`).
//!
//! One PPO **step**:
//!
//! 1. **Rollouts.** `rollout_batch` prompts (a seeded epoch shuffle of the training prompts) are
//!    completed by the current policy with seeded sampling (trlX's HH settings: temperature 1,
//!    `top_k` 0, `top_p` 1), each response ending at EOS (kept, as trlX keeps it) or at
//!    `max_new_tokens`.
//! 2. **Scores.** The frozen reward model scores prompt + response + EOS (the `v_head` on the
//!    last token, as it was trained; trlX's HH reward function appends EOS too), clipped to
//!    ±`cliprange_reward` (trlX `cliprange_reward`).
//! 3. **Per-token rewards** `r_t = −β·(log π(a_t) − log π_ref(a_t))`, plus the score on the last
//!    token (trlX `make_experience`; TRL `compute_rewards`); π_ref is the frozen initial policy
//!    (the SFT model). Optionally whitened over the batch without shifting the mean (TRL
//!    `whiten_rewards`).
//! 4. **GAE**(γ, λ) over each response with the value head's values (trlX
//!    `get_advantages_and_returns`): `δ_t = r_t + γ V_{t+1} − V_t`, `A_t = δ_t + γλ A_{t+1}`,
//!    `V_T = 0`; returns `A + V`; advantages whitened over the batch (trlX `whiten`).
//! 5. **Optimisation.** `ppo_epochs` passes over the rollouts in seeded minibatches of
//!    `minibatch_size`, one AdamW step each, on the clipped surrogate plus `vf_coef` times the
//!    clipped value loss ([`ppo_loss`], trlX `PPOConfig.loss`).
//! 6. **KL coefficient.** Fixed, or adaptive (trlX `AdaptiveKLController`, Ziegler et al.) when
//!    `target_kl` is set: `β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)`.
//!
//! The policy is LoRA over the SFT model; the value head is trlX's `make_head(hidden, 1)` (a
//! two-layer MLP, `hidden → 2·hidden → 1`, ReLU) on the policy's final hidden states, so value
//! gradients reach the adapters as in trlX's shared-trunk model. trlX's running reward scaling
//! (`scale_reward = "running"`) is not implemented; scores are clipped, and optionally whitened.
//!
//! Seeded and resumable like [`crate::train`]: a step's prompts, samples and minibatch order are
//! functions of (seed, step), and a checkpoint holds the adapters, the value head, the AdamW
//! moments, the step and the KL coefficient (as its bits), so a resumed run takes the very steps
//! of an uninterrupted one.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use candle_core::{D, DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use trust_backends::candle::generate::generate_batch;
use trust_backends::candle::{CausalLm, ModelConfig, RowSpec, Sampler};
use trust_core::FinishReason;
use trust_core::rng::{SplitMix64, derive_seed};

use crate::lora::LoraConfig;
use crate::optim::AdamW;
use crate::reward::RewardModel;
use crate::train::{
    Encoded, ScoredBatch, TrainError, Trainee, io, load_weights, read_checkpoint_state,
    restore_log, write_checkpoint,
};

/// PPO settings (defaults: trlX's `ppo_hh` example where it applies to LoRA on a CPU budget).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoConfig {
    /// PPO steps (each: one rollout batch, then its optimisation epochs).
    pub steps: usize,
    /// Prompts completed per step.
    pub rollout_batch: usize,
    /// Rollouts per optimiser step.
    pub minibatch_size: usize,
    /// Passes over each rollout batch (trlX `ppo_epochs`, 4).
    pub ppo_epochs: usize,
    /// Longest response in tokens.
    pub max_new_tokens: usize,
    /// Longest prompt in tokens (longer prompts are truncated from the left).
    pub max_prompt_len: usize,
    /// Sampling temperature of the rollouts (1.0).
    pub temperature: f64,
    /// Rollout top-k (0 = off).
    pub top_k: usize,
    /// Rollout nucleus mass (1.0 = off).
    pub top_p: f64,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Initial KL coefficient β (trlX `init_kl_coef`, 0.05).
    pub init_kl_coef: f64,
    /// Adaptive KL target (trlX `target`, 6 nats per response); `None` = fixed β.
    pub target_kl: Option<f64>,
    /// Adaptive KL horizon (trlX `horizon`, 10000).
    pub horizon: f64,
    /// Discount γ (1.0).
    pub gamma: f64,
    /// GAE λ (0.95).
    pub lam: f64,
    /// Policy ratio clip ε (0.2).
    pub cliprange: f64,
    /// Value clip around the rollout values (0.2).
    pub cliprange_value: f64,
    /// Value-loss weight (1.0).
    pub vf_coef: f64,
    /// Scores are clipped to ±this (10).
    pub cliprange_reward: f64,
    /// Whiten the per-token rewards over the batch, mean kept (TRL `whiten_rewards`).
    pub whiten_rewards: bool,
    /// LoRA settings of the policy.
    pub lora: LoraConfig,
    /// Seed of prompts order, sampling, minibatches, LoRA and value-head init.
    pub seed: u64,
    /// Save a checkpoint every this many steps (0 = only at the end).
    pub checkpoint_every: usize,
}

impl Default for PpoConfig {
    fn default() -> Self {
        PpoConfig {
            steps: 20,
            rollout_batch: 8,
            minibatch_size: 4,
            ppo_epochs: 4,
            max_new_tokens: 32,
            max_prompt_len: 96,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            lr: 1e-4,
            weight_decay: 0.0,
            init_kl_coef: 0.05,
            target_kl: Some(6.0),
            horizon: 10000.0,
            gamma: 1.0,
            lam: 0.95,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 1.0,
            cliprange_reward: 10.0,
            whiten_rewards: false,
            lora: LoraConfig {
                rank: 8,
                alpha: 16.0,
                targets: vec!["attention.query_key_value".into(), "attention.dense".into()],
                layers: None,
            },
            seed: 0,
            checkpoint_every: 1,
        }
    }
}

impl PpoConfig {
    fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Invalid(m.to_string()));
        if self.steps == 0 || self.rollout_batch == 0 || self.minibatch_size == 0 {
            return bad("steps, rollout batch and minibatch size must be positive");
        }
        if self.ppo_epochs == 0 || self.max_new_tokens == 0 || self.max_prompt_len == 0 {
            return bad("PPO epochs, max new tokens and max prompt length must be positive");
        }
        let finite_pos = |x: f64| x.is_finite() && x > 0.0;
        let non_neg = |x: f64| x.is_finite() && x >= 0.0;
        let sampling_ok = finite_pos(self.temperature) && self.top_p > 0.0 && self.top_p <= 1.0;
        if !sampling_ok {
            return bad("temperature must be > 0 and top-p in (0, 1]");
        }
        if !(finite_pos(self.lr) && non_neg(self.init_kl_coef)) {
            return bad("learning rate must be > 0 and the KL coefficient ≥ 0");
        }
        if self.target_kl.is_some_and(|t| !finite_pos(t)) || !finite_pos(self.horizon) {
            return bad("KL target and horizon must be > 0");
        }
        if !(0.0..=1.0).contains(&self.gamma) || !(0.0..=1.0).contains(&self.lam) {
            return bad("γ and λ must lie in [0, 1]");
        }
        let clips_ok = finite_pos(self.cliprange)
            && finite_pos(self.cliprange_value)
            && finite_pos(self.cliprange_reward)
            && non_neg(self.vf_coef);
        if !clips_ok {
            return bad("clip ranges must be > 0 and the value coefficient ≥ 0");
        }
        Ok(())
    }

    /// Optimiser steps per PPO step.
    pub fn updates_per_step(&self) -> usize {
        self.ppo_epochs * self.rollout_batch.div_ceil(self.minibatch_size)
    }
}

// ---------------------------------------------------------------------------------------------
// The formulas, on plain numbers.

/// Per-token rewards of one response (trlX `make_experience`, TRL `compute_rewards`):
/// `−kl_coef · (logprob − ref_logprob)` at every token, plus `score` clipped to ±`clip` at the
/// last one.
pub fn token_rewards(
    logprobs: &[f32],
    ref_logprobs: &[f32],
    score: f64,
    kl_coef: f64,
    clip: f64,
) -> Vec<f64> {
    let mut r: Vec<f64> = logprobs
        .iter()
        .zip(ref_logprobs)
        .map(|(&lp, &rf)| -kl_coef * (f64::from(lp) - f64::from(rf)))
        .collect();
    if let Some(last) = r.last_mut() {
        *last += score.clamp(-clip, clip);
    }
    r
}

/// Generalised advantage estimation over one response (trlX `get_advantages_and_returns`):
/// `δ_t = r_t + γ·V_{t+1} − V_t` (`V` after the last token = 0), `A_t = δ_t + γλ·A_{t+1}`;
/// returns `(A, A + V)`.
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lam: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len().min(values.len());
    let mut adv = vec![0.0; n];
    let mut last = 0.0;
    for t in (0..n).rev() {
        let next = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next - values[t];
        last = delta + gamma * lam * last;
        adv[t] = last;
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// Whitening (trlX `whiten`, TRL `masked_whiten` over the unmasked entries): `(x − mean) /
/// sqrt(var + 1e-8)` with the unbiased variance; `shift_mean = false` adds the mean back.
/// Fewer than two values are returned unchanged (their variance is undefined).
pub fn whiten(xs: &[f64], shift_mean: bool) -> Vec<f64> {
    let n = xs.len();
    if n < 2 {
        return xs.to_vec();
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let inv = 1.0 / (var + 1e-8).sqrt();
    xs.iter()
        .map(|x| (x - mean) * inv + if shift_mean { 0.0 } else { mean })
        .collect()
}

/// The adaptive KL controller of Ziegler et al. (trlX `AdaptiveKLController`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KlController {
    /// The current coefficient β.
    pub value: f64,
    /// Target KL (`None`: fixed β, trlX `FixedKLController`).
    pub target: Option<f64>,
    /// Horizon.
    pub horizon: f64,
}

impl KlController {
    /// `β ← β·(1 + clip(current/target − 1, −0.2, 0.2)·n_steps/horizon)`; fixed without a target.
    pub fn update(&mut self, current: f64, n_steps: usize) {
        if let Some(target) = self.target {
            let err = (current / target - 1.0).clamp(-0.2, 0.2);
            self.value *= 1.0 + err * n_steps as f64 / self.horizon;
        }
    }
}

/// Diagnostics of one [`ppo_loss`] evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossStats {
    /// Clipped surrogate loss.
    pub pg_loss: f64,
    /// Clipped value loss (before `vf_coef`).
    pub vf_loss: f64,
    /// Share of tokens where the ratio clip is active.
    pub pg_clipfrac: f64,
    /// Share of tokens where the value clip is active.
    pub vf_clipfrac: f64,
    /// `mean((ratio − 1) − log ratio)` (trlX `approx_kl`).
    pub approx_kl: f64,
}

/// The PPO loss of trlX's `PPOConfig.loss` over `n` response tokens (all tensors `[n]`, f32):
///
/// ```text
/// V_clip   = clamp(V, V_old − ε_v, V_old + ε_v)
/// vf_loss  = ½ · mean(max((V − R)², (V_clip − R)²))
/// ratio    = exp(log π − log π_old)
/// pg_loss  = mean(max(−A·ratio, −A·clamp(ratio, 1 − ε, 1 + ε)))
/// loss     = pg_loss + vf_coef · vf_loss
/// ```
///
/// Differentiable in `logprobs` and `values`; the other inputs are constants of the rollout.
#[allow(clippy::too_many_arguments)]
pub fn ppo_loss(
    logprobs: &Tensor,
    values: &Tensor,
    old_logprobs: &Tensor,
    old_values: &Tensor,
    advantages: &Tensor,
    returns: &Tensor,
    cliprange: f64,
    cliprange_value: f64,
    vf_coef: f64,
) -> candle_core::Result<(Tensor, LossStats)> {
    let n = logprobs.dim(0)?;
    if n == 0 {
        candle_core::bail!("PPO loss over no token");
    }
    let lo = old_values.affine(1.0, -cliprange_value)?;
    let hi = old_values.affine(1.0, cliprange_value)?;
    let v_clip = values.maximum(&lo)?.minimum(&hi)?;
    let vf1 = (values - returns)?.sqr()?;
    let vf2 = (&v_clip - returns)?.sqr()?;
    let vf_loss = (vf1.maximum(&vf2)?.mean_all()? * 0.5)?;
    let log_ratio = (logprobs - old_logprobs)?;
    let ratio = log_ratio.exp()?;
    let pg1 = (advantages.neg()? * &ratio)?;
    let pg2 = (advantages.neg()? * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)?)?;
    let pg_loss = pg1.maximum(&pg2)?.mean_all()?;
    let loss = (&pg_loss + (&vf_loss * vf_coef)?)?;
    let frac = |a: &Tensor, b: &Tensor| -> candle_core::Result<f64> {
        Ok(f64::from(
            a.gt(b)?
                .to_dtype(DType::F32)?
                .mean_all()?
                .to_scalar::<f32>()?,
        ))
    };
    let approx_kl = ((ratio.detach() - 1.0)? - log_ratio.detach())?
        .mean_all()?
        .to_scalar::<f32>()?;
    let stats = LossStats {
        pg_loss: f64::from(pg_loss.to_scalar::<f32>()?),
        vf_loss: f64::from(vf_loss.to_scalar::<f32>()?),
        pg_clipfrac: frac(&pg2, &pg1)?,
        vf_clipfrac: frac(&vf2, &vf1)?,
        approx_kl: f64::from(approx_kl),
    };
    Ok((loss, stats))
}

// ---------------------------------------------------------------------------------------------
// The value head.

/// trlX's `make_head(hidden, 1)`: `Linear(hidden, 2·hidden) → ReLU → Linear(2·hidden, 1)`,
/// initialised as torch initialises `nn.Linear` (uniform in ±1/√fan_in), seeded.
#[derive(Debug)]
pub struct ValueHead {
    vars: Vec<Var>,
}

const VALUE_HEAD_NAMES: [&str; 4] = [
    "v_head.0.weight",
    "v_head.0.bias",
    "v_head.2.weight",
    "v_head.2.bias",
];

impl ValueHead {
    /// A fresh head for a model with `hidden` features.
    pub fn init(hidden: usize, seed: u64, device: &Device) -> candle_core::Result<Self> {
        let mut rng = SplitMix64::new(derive_seed(seed, "ppo/value-head"));
        let mut uniform = |n: usize, fan_in: usize| -> Vec<f32> {
            let b = 1.0 / (fan_in as f64).sqrt();
            (0..n)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * b) as f32)
                .collect()
        };
        let h2 = 2 * hidden;
        let w1 = uniform(h2 * hidden, hidden);
        let b1 = uniform(h2, hidden);
        let w2 = uniform(h2, h2);
        let b2 = uniform(1, h2);
        Ok(ValueHead {
            vars: vec![
                Var::from_vec(w1, (h2, hidden), device)?,
                Var::from_vec(b1, h2, device)?,
                Var::from_vec(w2, (1, h2), device)?,
                Var::from_vec(b2, 1, device)?,
            ],
        })
    }

    /// Values `[n]` of hidden states `[n, hidden]`.
    pub fn forward(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let h = hidden.to_dtype(DType::F32)?;
        let a = h
            .matmul(&self.vars[0].as_tensor().t()?)?
            .broadcast_add(self.vars[1].as_tensor())?
            .relu()?;
        a.matmul(&self.vars[2].as_tensor().t()?)?
            .broadcast_add(self.vars[3].as_tensor())?
            .squeeze(1)
    }

    /// Its variables, in a fixed order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// Its tensors by name (trlX's `v_head.{0,2}.{weight,bias}`).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        VALUE_HEAD_NAMES
            .iter()
            .zip(&self.vars)
            .map(|(n, v)| (n.to_string(), v.as_tensor().detach()))
            .collect()
    }

    /// Restores tensors written by [`Self::tensors`] (a checkpoint).
    pub fn load(&self, path: &Path, device: &Device) -> Result<(), TrainError> {
        let map = candle_core::safetensors::load(path, device)?;
        for (n, v) in VALUE_HEAD_NAMES.iter().zip(&self.vars) {
            let t = map
                .get(*n)
                .ok_or_else(|| TrainError::Invalid(format!("{}: missing `{n}`", path.display())))?;
            v.set(t)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Rollouts.

/// One completed prompt with everything the optimisation needs (all per response token).
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Index of the prompt's pair in its data file.
    pub index: usize,
    /// Prompt ids (truncated from the left to `max_prompt_len`).
    pub prompt: Vec<u32>,
    /// Response ids (EOS included when generated).
    pub response: Vec<u32>,
    /// log π_old of each response token.
    pub logprobs: Vec<f32>,
    /// log π_ref of each response token.
    pub ref_logprobs: Vec<f32>,
    /// Value-head values before each response token.
    pub values: Vec<f32>,
    /// Reward-model score of prompt + response + EOS (unclipped).
    pub score: f32,
    /// Advantages (whitened over the batch).
    pub advantages: Vec<f32>,
    /// Returns `A + V` (before whitening).
    pub returns: Vec<f32>,
}

impl Rollout {
    fn encoded(&self) -> Encoded {
        let mut ids = self.prompt.clone();
        ids.extend(&self.response);
        let mut targets = vec![0.0; self.prompt.len()];
        targets.extend(std::iter::repeat_n(1.0, self.response.len()));
        Encoded { ids, targets }
    }
}

/// Per-token log-probs, values and (optionally) entropies of the response tokens of `sb`'s
/// rows, `[n]` each in row-major order, from the final hidden states of `model`.
fn token_outputs(
    model: &CausalLm,
    head: &ValueHead,
    sb: &ScoredBatch,
    hidden: &Tensor,
    entropy: bool,
) -> candle_core::Result<(Tensor, Tensor, Option<Tensor>)> {
    let picked = sb.picked(hidden)?;
    let lsm =
        candle_nn::ops::log_softmax(&model.lm_head(&picked)?.to_dtype(DType::F32)?, D::Minus1)?;
    let lp = lsm.gather(sb.next_ids(), 1)?.squeeze(1)?;
    let ent = if entropy {
        Some((lsm.exp()? * &lsm)?.sum(1)?.neg()?)
    } else {
        None
    };
    let v = head.forward(&picked)?;
    Ok((lp, v, ent))
}

fn hidden_of(
    model: &CausalLm,
    sb: &ScoredBatch,
    h0: Option<&Tensor>,
    k: usize,
) -> candle_core::Result<Tensor> {
    match h0 {
        Some(h0) => model.forward_hidden_from(h0, Some(&sb.mask), k),
        None => model.forward_hidden(&sb.ids, Some(&sb.mask), None, None),
    }
}

fn split_rows(flat: &[f32], lens: &[usize]) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(lens.len());
    let mut off = 0;
    for &l in lens {
        out.push(flat[off..off + l].to_vec());
        off += l;
    }
    out
}

/// Prompt indices of step `step`: an epoch-shuffled walk over `n` prompts, seeded.
pub fn step_prompts(n: usize, seed: u64, step: usize, batch: usize) -> Vec<usize> {
    let start = step * batch;
    let mut cached: Option<(usize, Vec<usize>)> = None;
    (start..start + batch)
        .map(|c| {
            let epoch = c / n;
            if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
                let mut perm: Vec<usize> = (0..n).collect();
                SplitMix64::new(derive_seed(seed, &format!("ppo/epoch/{epoch}")))
                    .shuffle(&mut perm);
                cached = Some((epoch, perm));
            }
            cached.as_ref().expect("just set").1[c % n]
        })
        .collect()
}

/// One PPO step's log line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PpoStepLog {
    /// 1-based step.
    pub step: usize,
    /// Mean reward-model score of the step's rollouts (unclipped).
    pub mean_score: f64,
    /// Mean over rollouts of the summed `log π_old − log π_ref` of their responses (nats).
    pub mean_kl: f64,
    /// KL coefficient β used for the step's rewards.
    pub kl_coef: f64,
    /// Mean per-token entropy of the rollout policy (nats).
    pub entropy: f64,
    /// Mean response length in tokens.
    pub response_len: f64,
    /// Mean clipped surrogate loss over the step's updates.
    pub pg_loss: f64,
    /// Mean value loss.
    pub vf_loss: f64,
    /// Mean share of tokens with the ratio clip active.
    pub pg_clipfrac: f64,
    /// Mean share of tokens with the value clip active.
    pub vf_clipfrac: f64,
    /// Mean approximate KL between the rollout and updated policy.
    pub approx_kl: f64,
    /// Seconds spent generating the rollouts.
    pub rollout_secs: f64,
    /// Response tokens generated.
    pub rollout_tokens: usize,
    /// Seconds spent in the optimisation epochs.
    pub optim_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct PpoState {
    step: usize,
    kl_coef_bits: u64,
    config: PpoConfig,
    data_sha256: String,
    policy_dir: String,
    reward_dir: String,
}

/// The inputs of [`train_ppo`].
pub struct PpoRun<'a> {
    /// Settings.
    pub config: &'a PpoConfig,
    /// The initial policy and reference (the SFT model).
    pub policy_dir: &'a Path,
    /// The reward model (a `trust align --stage rm` output).
    pub reward_dir: &'a Path,
    /// Prompts: HH-RLHF pairs, of which the prompt (the dialogue up to its last
    /// "Assistant:") is used, with the pair index.
    pub prompts: &'a [(usize, String)],
    /// Output directory (model.safetensors, adapter/, value_head.safetensors,
    /// train_log.jsonl, checkpoint/).
    pub out_dir: &'a Path,
}

/// Trains the policy in `run.policy_dir` with PPO against the reward model (see the module
/// docs); resumes from `out_dir/checkpoint` when it exists and matches. `on_step` sees every
/// step's log.
pub fn train_ppo(
    run: &PpoRun<'_>,
    on_step: &mut dyn FnMut(&PpoStepLog),
) -> Result<Vec<PpoStepLog>, TrainError> {
    let cfg = run.config;
    cfg.validate()?;
    let device = Device::Cpu;
    let config = ModelConfig::from_dir(run.policy_dir)?;
    let tok = trust_backends::candle::loader::load_tokenizer(run.policy_dir, config.vocab_size)?;
    let eos = config.eos_token_ids.first().copied();
    let rm = RewardModel::load(run.reward_dir, &device)?;
    let rm_vocab = rm.model.config().vocab_size;
    if rm_vocab != config.vocab_size || rm.eos != eos {
        return Err(TrainError::Invalid(format!(
            "{}: the reward model's vocabulary ({rm_vocab} tokens, EOS {:?}) is not the policy's \
             ({} tokens, EOS {eos:?}): it must share the policy's tokenizer",
            run.reward_dir.display(),
            rm.eos,
            config.vocab_size
        )));
    }
    // Encode the prompts once.
    let mut prompts: Vec<(usize, Vec<u32>)> = Vec::with_capacity(run.prompts.len());
    for (index, text) in run.prompts {
        let mut ids = tok
            .encode(text.as_str(), false)
            .map_err(|e| TrainError::Invalid(format!("tokenizer: {e}")))?
            .get_ids()
            .to_vec();
        if ids.len() > cfg.max_prompt_len {
            ids.drain(..ids.len() - cfg.max_prompt_len);
        }
        if !ids.is_empty() {
            prompts.push((*index, ids));
        }
    }
    if prompts.is_empty() {
        return Err(TrainError::Invalid("no usable prompt".into()));
    }
    if cfg.max_prompt_len + cfg.max_new_tokens > config.max_position_embeddings {
        return Err(TrainError::Invalid(format!(
            "max prompt length {} + max new tokens {} exceeds the model's context ({})",
            cfg.max_prompt_len, cfg.max_new_tokens, config.max_position_embeddings
        )));
    }
    let data_sha = trust_core::data::sha256_bytes(
        serde_json::to_string(run.prompts)
            .map_err(|e| TrainError::Invalid(e.to_string()))?
            .as_bytes(),
    );

    let base = load_weights(run.policy_dir, &device)?;
    let trainee = Trainee::lora(
        config.clone(),
        base,
        cfg.lora.clone(),
        cfg.seed,
        device.clone(),
    )?;
    // The reference is the initial policy: the trainee's base weights, whose blocks before the
    // first adapted one the policy shares.
    let reference = CausalLm::from_var_builder(
        &config,
        candle_nn::VarBuilder::from_tensors(trainee.base_weights().clone(), DType::F32, &device),
    )?;
    let k = trainee.frozen_layers();
    let head = ValueHead::init(config.hidden_size, cfg.seed, &device)?;
    let mut vars = trainee.vars();
    vars.extend(head.vars().iter().cloned());
    let mut opt = AdamW::new(&vars, cfg.lr, cfg.weight_decay)?;
    let mut kl = KlController {
        value: cfg.init_kl_coef,
        target: cfg.target_kl,
        horizon: cfg.horizon,
    };

    let out_dir = run.out_dir;
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let ckpt = out_dir.join("checkpoint");
    let state = PpoState {
        step: 0,
        kl_coef_bits: kl.value.to_bits(),
        config: cfg.clone(),
        data_sha256: data_sha,
        policy_dir: run.policy_dir.display().to_string(),
        reward_dir: run.reward_dir.display().to_string(),
    };
    let log_path = out_dir.join("train_log.jsonl");
    let mut start = 0;
    let state_path = ckpt.join("state.json");
    if let Some(old) = read_checkpoint_state::<PpoState>(&state_path)? {
        if old.config != state.config || old.data_sha256 != state.data_sha256 {
            return Err(TrainError::Invalid(format!(
                "{}: checkpoint was made with other settings or prompts; use a new output directory",
                state_path.display()
            )));
        }
        trainee.load_params(&ckpt.join("params.safetensors"))?;
        head.load(&ckpt.join("value_head.safetensors"), &device)?;
        opt.load(
            &ckpt.join("optim.safetensors"),
            old.step * cfg.updates_per_step(),
            &device,
        )?;
        kl.value = f64::from_bits(old.kl_coef_bits);
        start = old.step;
    }
    let (mut logs, mut log_file) = restore_log::<PpoStepLog>(&log_path, start)?;

    for step in start..cfg.steps {
        // 1. Rollouts with the current policy.
        let t0 = std::time::Instant::now();
        let policy = trainee.frozen_model()?;
        let picked = step_prompts(prompts.len(), cfg.seed, step, cfg.rollout_batch);
        let mut rows: Vec<RowSpec> = picked
            .iter()
            .enumerate()
            .map(|(i, &p)| RowSpec {
                prompt: prompts[p].1.clone(),
                max_new_tokens: cfg.max_new_tokens,
                sampler: Sampler::Sample {
                    rng: SplitMix64::new(derive_seed(cfg.seed, &format!("ppo/rollout/{step}/{i}"))),
                    temperature: cfg.temperature,
                    top_p: cfg.top_p,
                    top_k: cfg.top_k,
                },
                stop_ids: eos.into_iter().collect(),
                stop_strings: Vec::new(),
            })
            .collect();
        let completions = generate_batch(&policy, &tok, &mut rows)?;
        let mut rollouts: Vec<Rollout> = picked
            .iter()
            .zip(completions)
            .map(|(&p, c)| {
                let mut response = c.token_ids;
                if c.finish_reason == FinishReason::StopToken {
                    response.extend(eos);
                }
                if response.is_empty() {
                    // max_new_tokens ≥ 1, so only a stop without an EOS id: score EOS-less 0.
                    response.extend(eos);
                }
                Rollout {
                    index: prompts[p].0,
                    prompt: prompts[p].1.clone(),
                    response,
                    logprobs: Vec::new(),
                    ref_logprobs: Vec::new(),
                    values: Vec::new(),
                    score: 0.0,
                    advantages: Vec::new(),
                    returns: Vec::new(),
                }
            })
            .filter(|r| !r.response.is_empty())
            .collect();
        if rollouts.is_empty() {
            return Err(TrainError::Invalid(
                "every rollout came back empty (the model has no EOS id)".into(),
            ));
        }
        let rollout_secs = t0.elapsed().as_secs_f64();
        let rollout_tokens: usize = rollouts.iter().map(|r| r.response.len()).sum();

        // 2.–4. Scores, log-probs, values, rewards, advantages (no graph).
        let encs: Vec<Encoded> = rollouts.iter().map(Rollout::encoded).collect();
        let refs: Vec<&Encoded> = encs.iter().collect();
        let sb = ScoredBatch::new(&refs, &device)?;
        let h0 = (k > 0)
            .then(|| policy.forward_prefix(&sb.ids, Some(&sb.mask), k))
            .transpose()?;
        let (lp, v, ent) = token_outputs(
            &policy,
            &head,
            &sb,
            &hidden_of(&policy, &sb, h0.as_ref(), k)?,
            true,
        )?;
        let ref_hidden = hidden_of(&reference, &sb, h0.as_ref(), k)?;
        let ref_lp = {
            let picked = sb.picked(&ref_hidden)?;
            candle_nn::ops::log_softmax(
                &reference.lm_head(&picked)?.to_dtype(DType::F32)?,
                D::Minus1,
            )?
            .gather(sb.next_ids(), 1)?
            .squeeze(1)?
        };
        let lens: Vec<usize> = rollouts.iter().map(|r| r.response.len()).collect();
        let lp = split_rows(&lp.to_vec1::<f32>()?, &lens);
        let v = split_rows(&v.detach().to_vec1::<f32>()?, &lens);
        let ref_lp = split_rows(&ref_lp.to_vec1::<f32>()?, &lens);
        let ent_all = ent.expect("asked for").to_vec1::<f32>()?;
        let entropy = ent_all.iter().map(|&x| f64::from(x)).sum::<f64>() / ent_all.len() as f64;
        // The reward model scores prompt + response + EOS, as it was trained (and as trlX's HH
        // reward function appends EOS to every sample), also when the response ran to length.
        let seqs: Vec<Vec<u32>> = encs
            .iter()
            .map(|e| {
                let mut ids = e.ids.clone();
                if let Some(eos) = eos
                    && ids.last() != Some(&eos)
                {
                    ids.push(eos);
                }
                ids
            })
            .collect();
        let scores = rm.score_ids(&seqs, cfg.rollout_batch, &device)?;
        let kl_coef = kl.value;
        let mut all_rewards: Vec<Vec<f64>> = Vec::with_capacity(rollouts.len());
        let mut kls = Vec::with_capacity(rollouts.len());
        for (i, r) in rollouts.iter_mut().enumerate() {
            r.logprobs = lp[i].clone();
            r.ref_logprobs = ref_lp[i].clone();
            r.values = v[i].clone();
            r.score = scores[i];
            kls.push(
                r.logprobs
                    .iter()
                    .zip(&r.ref_logprobs)
                    .map(|(&a, &b)| f64::from(a) - f64::from(b))
                    .sum::<f64>(),
            );
            all_rewards.push(token_rewards(
                &r.logprobs,
                &r.ref_logprobs,
                f64::from(r.score),
                kl_coef,
                cfg.cliprange_reward,
            ));
        }
        if cfg.whiten_rewards {
            let flat: Vec<f64> = all_rewards.iter().flatten().copied().collect();
            let w = whiten(&flat, false);
            let mut off = 0;
            for r in all_rewards.iter_mut() {
                let n = r.len();
                r.copy_from_slice(&w[off..off + n]);
                off += n;
            }
        }
        let mut adv_flat = Vec::new();
        for (r, rewards) in rollouts.iter_mut().zip(&all_rewards) {
            let values: Vec<f64> = r.values.iter().map(|&x| f64::from(x)).collect();
            let (a, ret) = gae(rewards, &values, cfg.gamma, cfg.lam);
            r.returns = ret.iter().map(|&x| x as f32).collect();
            adv_flat.extend(a);
        }
        let adv_w = whiten(&adv_flat, true);
        let mut off = 0;
        for r in rollouts.iter_mut() {
            let n = r.response.len();
            r.advantages = adv_w[off..off + n].iter().map(|&x| x as f32).collect();
            off += n;
        }
        drop((policy, h0, ref_hidden));

        // 5. Optimisation epochs.
        let t1 = std::time::Instant::now();
        let mut sums = [0.0f64; 5];
        let mut updates = 0usize;
        for epoch in 0..cfg.ppo_epochs {
            let mut order: Vec<usize> = (0..rollouts.len()).collect();
            SplitMix64::new(derive_seed(
                cfg.seed,
                &format!("ppo/minibatch/{step}/{epoch}"),
            ))
            .shuffle(&mut order);
            for mb in order.chunks(cfg.minibatch_size) {
                let model = trainee.model()?;
                let batch: Vec<&Rollout> = mb.iter().map(|&i| &rollouts[i]).collect();
                let encs: Vec<Encoded> = batch.iter().map(|r| r.encoded()).collect();
                let refs: Vec<&Encoded> = encs.iter().collect();
                let sb = ScoredBatch::new(&refs, &device)?;
                let h0 = (k > 0)
                    .then(|| model.forward_prefix(&sb.ids, Some(&sb.mask), k))
                    .transpose()?
                    .map(|h| h.detach());
                let hidden = hidden_of(&model, &sb, h0.as_ref(), k)?;
                let (lp, v, _) = token_outputs(&model, &head, &sb, &hidden, false)?;
                let cat = |f: fn(&Rollout) -> &Vec<f32>| -> candle_core::Result<Tensor> {
                    let flat: Vec<f32> = batch.iter().flat_map(|r| f(r).iter().copied()).collect();
                    let n = flat.len();
                    Tensor::from_vec(flat, n, &device)
                };
                let (loss, st) = ppo_loss(
                    &lp,
                    &v,
                    &cat(|r| &r.logprobs)?,
                    &cat(|r| &r.values)?,
                    &cat(|r| &r.advantages)?,
                    &cat(|r| &r.returns)?,
                    cfg.cliprange,
                    cfg.cliprange_value,
                    cfg.vf_coef,
                )?;
                let g = loss.backward()?;
                let grads: Vec<Option<Tensor>> =
                    vars.iter().map(|v| g.get(v.as_tensor()).cloned()).collect();
                opt.step(&vars, &grads)?;
                for (s, x) in sums.iter_mut().zip([
                    st.pg_loss,
                    st.vf_loss,
                    st.pg_clipfrac,
                    st.vf_clipfrac,
                    st.approx_kl,
                ]) {
                    *s += x;
                }
                updates += 1;
            }
        }
        let mean_kl = kls.iter().sum::<f64>() / kls.len() as f64;
        // 6. The KL coefficient for the next step (trlX: n_steps = the rollout batch).
        kl.update(mean_kl, cfg.rollout_batch);
        let u = updates.max(1) as f64;
        let log = PpoStepLog {
            step: step + 1,
            mean_score: scores.iter().map(|&s| f64::from(s)).sum::<f64>() / scores.len() as f64,
            mean_kl,
            kl_coef,
            entropy,
            response_len: rollout_tokens as f64 / rollouts.len() as f64,
            pg_loss: sums[0] / u,
            vf_loss: sums[1] / u,
            pg_clipfrac: sums[2] / u,
            vf_clipfrac: sums[3] / u,
            approx_kl: sums[4] / u,
            rollout_secs,
            rollout_tokens,
            optim_secs: t1.elapsed().as_secs_f64(),
        };
        writeln!(log_file, "{}", serde_json::to_string(&log).expect("json"))
            .map_err(io(&log_path))?;
        on_step(&log);
        logs.push(log);
        let last = step + 1 == cfg.steps;
        if last || (cfg.checkpoint_every > 0 && (step + 1) % cfg.checkpoint_every == 0) {
            let st = PpoState {
                step: step + 1,
                kl_coef_bits: kl.value.to_bits(),
                ..state.clone()
            };
            let head = Some(("value_head.safetensors", head.tensors()));
            write_checkpoint(&ckpt, &trainee, head, &opt, &st)?;
        }
    }

    // The final policy directory.
    let weights: HashMap<String, Tensor> = trainee
        .weights()?
        .into_iter()
        .map(|(k, v)| (k, v.detach()))
        .collect();
    crate::train::save_tensors(&weights, &out_dir.join("model.safetensors"))?;
    crate::train::save_tensors(&head.tensors(), &out_dir.join("value_head.safetensors"))?;
    trust_backends::candle::loader::write_hf_companions(run.policy_dir, out_dir)?;
    if let Some(a) = trainee.adapters() {
        a.save(&out_dir.join("adapter"))?;
    }
    Ok(logs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn token_rewards_penalise_kl_and_add_the_clipped_score_last() {
        let r = token_rewards(&[-1.0, -2.0], &[-1.5, -1.0], 3.0, 0.1, 10.0);
        assert!(
            close(r[0], -0.05, 1e-12) && close(r[1], 3.1, 1e-12),
            "{r:?}"
        );
        // The score is clipped to ±cliprange_reward (trlX `cliprange_reward`).
        let r = token_rewards(&[0.0], &[0.0], -25.0, 0.1, 10.0);
        assert_eq!(r, vec![-10.0]);
    }

    /// By hand: γ = 0.9, λ = 0.8, r = [1, 0, 2], V = [0.5, 0.2, 0.1].
    /// δ2 = 2 − 0.1 = 1.9, A2 = 1.9; δ1 = 0.9·0.1 − 0.2 = −0.11, A1 = −0.11 + 0.72·1.9 = 1.258;
    /// δ0 = 1 + 0.9·0.2 − 0.5 = 0.68, A0 = 0.68 + 0.72·1.258 = 1.58576; R = A + V.
    #[test]
    fn gae_and_returns_match_hand_computed_values() {
        let (a, r) = gae(&[1.0, 0.0, 2.0], &[0.5, 0.2, 0.1], 0.9, 0.8);
        for (g, w) in a.iter().zip([1.58576, 1.258, 1.9]) {
            assert!(close(*g, w, 1e-12), "{a:?}");
        }
        for (g, w) in r.iter().zip([2.08576, 1.458, 2.0]) {
            assert!(close(*g, w, 1e-12), "{r:?}");
        }
        // γ = λ = 1: the advantage is the reward-to-go minus the value.
        let (a, _) = gae(&[1.0, 1.0, 1.0], &[0.0, 0.0, 0.0], 1.0, 1.0);
        assert_eq!(a, vec![3.0, 2.0, 1.0]);
    }

    /// [1, 2, 3, 4]: mean 2.5, unbiased variance 5/3.
    #[test]
    fn whitening_matches_torch_var_unbiased() {
        let w = whiten(&[1.0, 2.0, 3.0, 4.0], true);
        let s = (5.0f64 / 3.0 + 1e-8).sqrt();
        for (g, x) in w.iter().zip([1.0, 2.0, 3.0, 4.0]) {
            assert!(close(*g, (x - 2.5) / s, 1e-12), "{w:?}");
        }
        let w = whiten(&[1.0, 2.0, 3.0, 4.0], false);
        assert!(close(w.iter().sum::<f64>() / 4.0, 2.5, 1e-12));
        assert_eq!(whiten(&[7.0], true), vec![7.0]);
    }

    #[test]
    fn adaptive_kl_moves_by_the_clipped_proportional_error() {
        let mut c = KlController {
            value: 0.05,
            target: Some(6.0),
            horizon: 10000.0,
        };
        c.update(12.0, 8); // error 1.0 clipped to 0.2: × (1 + 0.2·8/10000)
        assert!(close(c.value, 0.05 * 1.00016, 1e-15), "{}", c.value);
        c.update(5.4, 100); // error −0.1: × (1 − 0.1·100/10000)
        assert!(close(c.value, 0.05 * 1.00016 * 0.999, 1e-15));
        let mut fixed = KlController { target: None, ..c };
        fixed.update(100.0, 100);
        assert_eq!(fixed.value, c.value);
    }

    fn t(x: &[f32]) -> Tensor {
        Tensor::new(x, &Device::Cpu).unwrap()
    }

    /// Ratios [1.5, 0.5] with advantages [1, −1], ε = 0.2: pg1 = [−1.5, 0.5], pg2 = [−1.2, 0.8],
    /// max = [−1.2, 0.8], mean −0.2, both clipped. Values [1, 0] around old [0.5, 0.5] with
    /// ε_v = 0.2 clip to [0.7, 0.3]; returns [2, 0]: vf1 = [1, 0], vf2 = [1.69, 0.09],
    /// vf_loss = ½·mean(max) = 0.445, both clipped.
    #[test]
    fn clipped_losses_match_hand_computed_values() {
        let lp = Var::new(&[1.5f32.ln(), 0.5f32.ln()], &Device::Cpu).unwrap();
        let v = Var::new(&[1.0f32, 0.0], &Device::Cpu).unwrap();
        let (loss, st) = ppo_loss(
            lp.as_tensor(),
            v.as_tensor(),
            &t(&[0.0, 0.0]),
            &t(&[0.5, 0.5]),
            &t(&[1.0, -1.0]),
            &t(&[2.0, 0.0]),
            0.2,
            0.2,
            0.5,
        )
        .unwrap();
        assert!(close(st.pg_loss, -0.2, 1e-6), "{st:?}");
        assert!(close(st.vf_loss, 0.445, 1e-6), "{st:?}");
        assert_eq!((st.pg_clipfrac, st.vf_clipfrac), (1.0, 1.0));
        let want_kl = ((0.5 - 1.5f64.ln()) + (-0.5 - 0.5f64.ln())) / 2.0;
        assert!(close(st.approx_kl, want_kl, 1e-6), "{st:?}");
        let l: f32 = loss.to_scalar().unwrap();
        assert!(close(f64::from(l), -0.2 + 0.5 * 0.445, 1e-6));
        // Both ratios are clipped and both values too: no gradient reaches the inputs.
        let g = loss.backward().unwrap();
        let glp: Vec<f32> = g.get(lp.as_tensor()).unwrap().to_vec1().unwrap();
        assert_eq!(glp, vec![0.0, 0.0]);

        // Inside the clip range the surrogate is −A·ratio: d/d logπ = −A·ratio / n.
        let lp = Var::new(&[1.1f32.ln(), 0.9f32.ln()], &Device::Cpu).unwrap();
        let (loss, st) = ppo_loss(
            lp.as_tensor(),
            &t(&[0.5, 0.5]),
            &t(&[0.0, 0.0]),
            &t(&[0.5, 0.5]),
            &t(&[1.0, -1.0]),
            &t(&[0.5, 0.5]),
            0.2,
            0.2,
            1.0,
        )
        .unwrap();
        assert!(close(st.pg_loss, (-1.1 + 0.9) / 2.0, 1e-6), "{st:?}");
        assert_eq!((st.pg_clipfrac, st.vf_loss), (0.0, 0.0));
        let g = loss.backward().unwrap();
        let glp: Vec<f32> = g.get(lp.as_tensor()).unwrap().to_vec1().unwrap();
        assert!(close(f64::from(glp[0]), -1.1 / 2.0, 1e-6), "{glp:?}");
        assert!(close(f64::from(glp[1]), 0.9 / 2.0, 1e-6), "{glp:?}");
    }

    #[test]
    fn step_prompts_walk_seeded_epochs() {
        let a: Vec<usize> = (0..3).flat_map(|s| step_prompts(6, 1, s, 4)).collect();
        // 12 draws over 6 prompts = two full epochs, each a permutation.
        for e in a.chunks(6) {
            let mut e = e.to_vec();
            e.sort_unstable();
            assert_eq!(e, (0..6).collect::<Vec<_>>());
        }
        assert_eq!(step_prompts(6, 1, 1, 4), a[4..8]);
        assert_ne!(step_prompts(6, 2, 0, 6), step_prompts(6, 1, 0, 6));
    }

    #[test]
    fn value_head_is_seeded_and_round_trips() {
        let dev = Device::Cpu;
        let a = ValueHead::init(4, 3, &dev).unwrap();
        let b = ValueHead::init(4, 3, &dev).unwrap();
        let h = Tensor::new(&[[0.1f32, -0.2, 0.3, 0.4], [1.0, 0.0, -1.0, 0.5]], &dev).unwrap();
        let va: Vec<f32> = a.forward(&h).unwrap().to_vec1().unwrap();
        assert_eq!(va, b.forward(&h).unwrap().to_vec1::<f32>().unwrap());
        assert_eq!(va.len(), 2);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.safetensors");
        candle_core::safetensors::save(&a.tensors(), &p).unwrap();
        let c = ValueHead::init(4, 4, &dev).unwrap();
        assert_ne!(c.forward(&h).unwrap().to_vec1::<f32>().unwrap(), va);
        c.load(&p, &dev).unwrap();
        assert_eq!(c.forward(&h).unwrap().to_vec1::<f32>().unwrap(), va);
    }
}
