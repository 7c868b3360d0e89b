//! Reward models for attribution (PROTOCOLS A.8 §3, PPO row): a causal LM whose final hidden state
//! at the last (non-pad) token goes through a linear scalar head `v_head`, trained with the
//! Bradley–Terry loss on (prompt + chosen, prompt + rejected).
//!
//! The head is stored in the model directory's safetensors as `v_head.weight` (`[1, hidden]`) and
//! optionally `v_head.bias` (`[1]`), the trlX / GPT-J reward-model names the paper's
//! `convert_lora.py` copies over. The transformer gets LoRA adapters like the policy; the head is
//! **frozen** by default (the paper's attributed tensors are LoRA tensors only) and can be made
//! trainable ([`RewardHead::trainable`]) to attribute through it as an extra DataInf layer.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use trust_backends::candle::CausalLm;
use trust_core::rng::{SplitMix64, derive_seed};

use crate::losses;
use crate::train::{Encoded, PairEncoded, TrainError, collate};

/// Name of the head's weight tensor in a checkpoint.
pub const V_HEAD_WEIGHT: &str = "v_head.weight";
/// Name of the head's optional bias tensor in a checkpoint.
pub const V_HEAD_BIAS: &str = "v_head.bias";

/// The scalar reward head r = w·h + b.
#[derive(Debug)]
pub struct RewardHead {
    /// `[1, hidden]`.
    pub weight: Var,
    /// `[1]`, if the checkpoint has one.
    pub bias: Option<Tensor>,
    /// Whether the head's weight is differentiated (an extra attributed layer).
    pub trainable: bool,
}

impl RewardHead {
    /// Reads `v_head.weight` (and `v_head.bias` if present) from `weights` (the tensors of the
    /// model directory `source`, named in errors). A missing head is an error that says how to get
    /// one.
    pub fn from_weights(
        weights: &HashMap<String, Tensor>,
        hidden: usize,
        source: &Path,
    ) -> Result<Self, TrainError> {
        let Some(w) = weights.get(V_HEAD_WEIGHT) else {
            return Err(TrainError::Invalid(format!(
                "{}: no `{V_HEAD_WEIGHT}` tensor, so this is not a reward model (stage rm needs a \
                 scalar head [1, {hidden}] next to the transformer weights; pass --init-v-head to \
                 attach a seeded random head for testing)",
                source.display()
            )));
        };
        let w = w.to_dtype(DType::F32)?;
        let w = match w.dims() {
            [1, h] if *h == hidden => w,
            [h] if *h == hidden => w.reshape((1, hidden))?,
            d => {
                return Err(TrainError::Invalid(format!(
                    "{}: `{V_HEAD_WEIGHT}` has shape {d:?}, expected [1, {hidden}]",
                    source.display()
                )));
            }
        };
        let bias = match weights.get(V_HEAD_BIAS) {
            None => None,
            Some(b) if b.elem_count() == 1 => Some(b.to_dtype(DType::F32)?.reshape(1)?),
            Some(b) => {
                return Err(TrainError::Invalid(format!(
                    "{}: `{V_HEAD_BIAS}` has shape {:?}, expected [1]",
                    source.display(),
                    b.dims()
                )));
            }
        };
        Ok(RewardHead {
            weight: Var::from_tensor(&w)?,
            bias,
            trainable: false,
        })
    }

    /// A seeded random head, N(0, 1/hidden) entries, no bias (tests and demos only).
    pub fn init(hidden: usize, seed: u64, device: &Device) -> Result<Self, TrainError> {
        let mut rng = SplitMix64::new(derive_seed(seed, V_HEAD_WEIGHT));
        let sd = 1.0 / (hidden as f64).sqrt();
        let w: Vec<f32> = (0..hidden)
            .map(|_| (trust_backends::candle::tiny::normal(&mut rng) * sd) as f32)
            .collect();
        Ok(RewardHead {
            weight: Var::from_vec(w, (1, hidden), device)?,
            bias: None,
            trainable: false,
        })
    }

    /// Rewards `[b]` of a batch of sequences: the final hidden state at each sequence's last
    /// token (right padding is skipped) through the head.
    pub fn rewards(
        &self,
        model: &CausalLm,
        batch: &[&Encoded],
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let (ids, mask, _) = collate(batch, device)?;
        let hidden = model.forward_hidden(&ids, Some(&mask), None, None)?;
        let (b, t, h) = hidden.dims3()?;
        let last: Vec<u32> = batch
            .iter()
            .enumerate()
            .map(|(i, e)| (i * t + e.ids.len().max(1) - 1) as u32)
            .collect();
        let idx = Tensor::from_vec(last, b, device)?;
        let at = hidden
            .to_dtype(DType::F32)?
            .reshape((b * t, h))?
            .index_select(&idx, 0)?;
        let r = at.matmul(&self.weight.as_tensor().t()?)?.squeeze(1)?;
        match &self.bias {
            Some(bias) => r.broadcast_add(bias),
            None => Ok(r),
        }
    }
}

/// Mean Bradley–Terry loss `−log σ(r(x, y_w) − r(x, y_l))` of a batch of pairs, using each pair's
/// `chosen` / `rejected` sequences (prompt + response, encoded without padding).
pub fn rm_loss(
    model: &CausalLm,
    head: &RewardHead,
    batch: &[&PairEncoded],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let chosen: Vec<&Encoded> = batch.iter().map(|p| &p.chosen).collect();
    let rejected: Vec<&Encoded> = batch.iter().map(|p| &p.rejected).collect();
    let rw = head.rewards(model, &chosen, device)?;
    let rl = head.rewards(model, &rejected, device)?;
    losses::bradley_terry_loss(&rw, &rl)
}

/// Per-example gradients of the Bradley–Terry loss w.r.t. `vars` (batch 1), each flattened
/// row-major; a variable the loss does not reach gets zeros. Include `head.weight` in `vars` to
/// attribute through a trainable head.
pub fn rm_example_gradients(
    model: &CausalLm,
    head: &RewardHead,
    vars: &[Var],
    example: &PairEncoded,
    device: &Device,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let loss = rm_loss(model, head, &[example], device)?;
    let grads = loss.backward()?;
    vars.iter()
        .map(|v| match grads.get(v.as_tensor()) {
            Some(g) => g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>(),
            None => Ok(vec![0.0; v.as_tensor().elem_count()]),
        })
        .collect()
}
