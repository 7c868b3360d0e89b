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

    /// The head as checkpoint tensors (`v_head.weight`, and `v_head.bias` when present).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(V_HEAD_WEIGHT.to_string(), self.weight.as_tensor().detach())];
        if let Some(b) = &self.bias {
            out.push((V_HEAD_BIAS.to_string(), b.detach()));
        }
        out
    }

    /// A seeded random head, N(0, 1/hidden) entries, no bias: the start of reward-model
    /// training (and a stand-in head for tests).
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
        self.rewards_with(model, batch, 0, device)
    }

    /// [`Self::rewards`] with the first `frozen_layers` decoder blocks (and the embeddings)
    /// computed once without an autograd graph ([`CausalLm::forward_prefix`]): the same values,
    /// for a model whose trainable tensors all lie in later blocks.
    pub fn rewards_with(
        &self,
        model: &CausalLm,
        batch: &[&Encoded],
        frozen_layers: usize,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let (ids, mask, _) = collate(batch, device)?;
        let hidden = if frozen_layers > 0 {
            let h0 = model
                .forward_prefix(&ids, Some(&mask), frozen_layers)?
                .detach();
            model.forward_hidden_from(&h0, Some(&mask), frozen_layers)?
        } else {
            model.forward_hidden(&ids, Some(&mask), None, None)?
        };
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

/// The Bradley–Terry loss of a batch of pairs and each pair's reward margin `r(x, y_w) −
/// r(x, y_l)` `[b]`: chosen and rejected sequences go through one forward pass (rows `2i`,
/// `2i + 1`), its first `frozen_layers` blocks without an autograd graph (see
/// [`RewardHead::rewards_with`]). The same loss as [`rm_loss`] up to float rounding.
pub fn rm_batch_loss_with(
    model: &CausalLm,
    head: &RewardHead,
    frozen_layers: usize,
    batch: &[&PairEncoded],
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let seqs: Vec<&Encoded> = batch
        .iter()
        .flat_map(|p| [&p.chosen, &p.rejected])
        .collect();
    let r = head.rewards_with(model, &seqs, frozen_layers, device)?;
    let n = batch.len();
    let pick = |off: usize| -> candle_core::Result<Tensor> {
        let idx: Vec<u32> = (0..n).map(|i| (2 * i + off) as u32).collect();
        r.index_select(&Tensor::from_vec(idx, n, device)?, 0)
    };
    let (rw, rl) = (pick(0)?, pick(1)?);
    let loss = losses::bradley_terry_loss(&rw, &rl)?;
    Ok((loss, (rw - rl)?))
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

/// Held-out figures of a reward model: does it rank pairs it never saw?
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RewardEval {
    /// Pairs scored.
    pub n_pairs: usize,
    /// Pairs that could not be encoded (skipped).
    pub n_skipped: usize,
    /// Share of pairs with `r(chosen) > r(rejected)` (a tie counts as wrong).
    pub pair_accuracy: f64,
    /// Mean `r(chosen) − r(rejected)`.
    pub mean_margin: f64,
}

/// A reward model loaded from a directory: the causal LM and its `v_head`.
pub struct RewardModel {
    /// The transformer.
    pub model: CausalLm,
    /// The scalar head.
    pub head: RewardHead,
    /// Its tokenizer.
    pub tokenizer: tokenizers::Tokenizer,
    /// End-of-sequence id appended to responses, as in training.
    pub eos: Option<u32>,
}

impl RewardModel {
    /// Loads `dir` (a directory written by `trust align --stage rm`, or any model directory
    /// whose safetensors hold `v_head.weight`) on the CPU.
    pub fn load_cpu(dir: &Path) -> Result<Self, TrainError> {
        Self::load(dir, &Device::Cpu)
    }

    /// [`Self::load_cpu`] onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, TrainError> {
        let config = trust_backends::candle::ModelConfig::from_dir(dir)?;
        let weights = crate::train::load_weights(dir, device)?;
        let head = RewardHead::from_weights(&weights, config.hidden_size, dir)?;
        let tokenizer = trust_backends::candle::loader::load_tokenizer(dir, config.vocab_size)?;
        let eos = config.eos_token_ids.first().copied();
        let model = CausalLm::from_var_builder(
            &config,
            candle_nn::VarBuilder::from_tensors(weights, DType::F32, device),
        )?;
        Ok(RewardModel {
            model,
            head,
            tokenizer,
            eos,
        })
    }

    /// Rewards of token sequences (each the prompt followed by the response, EOS included as
    /// in training), `batch_size` sequences per forward pass.
    pub fn score_ids(
        &self,
        seqs: &[Vec<u32>],
        batch_size: usize,
        device: &Device,
    ) -> candle_core::Result<Vec<f32>> {
        let enc: Vec<Encoded> = seqs
            .iter()
            .map(|ids| Encoded {
                ids: ids.clone(),
                targets: vec![0.0; ids.len()],
            })
            .collect();
        let mut out = Vec::with_capacity(enc.len());
        for chunk in enc.chunks(batch_size.max(1)) {
            let refs: Vec<&Encoded> = chunk.iter().collect();
            out.extend(
                self.head
                    .rewards(&self.model, &refs, device)?
                    .to_vec1::<f32>()?,
            );
        }
        Ok(out)
    }

    /// Scores held-out `pairs` (prompt + reply + EOS, at most `max_len` tokens, encoded as
    /// training encodes them). `on_progress(done, total)` counts pairs.
    pub fn evaluate_pairs(
        &self,
        pairs: &[crate::hh::PreferencePair],
        max_len: usize,
        batch_size: usize,
        on_progress: &mut dyn FnMut(usize, usize),
    ) -> Result<RewardEval, TrainError> {
        let device = self.model_device();
        let mut cfg = crate::train::TrainConfig::new(crate::train::Stage::Rm);
        cfg.max_len = max_len;
        let (enc, n_skipped) = crate::train::encode_pairs(&self.tokenizer, pairs, &cfg, self.eos);
        if enc.is_empty() {
            return Err(TrainError::Invalid(format!(
                "no held-out pair could be encoded ({n_skipped} skipped)"
            )));
        }
        let (mut wins, mut margin_sum) = (0usize, 0.0f64);
        let per = (batch_size / 2).max(1);
        for (k, chunk) in enc.chunks(per).enumerate() {
            let refs: Vec<&PairEncoded> = chunk.iter().collect();
            let (_, m) = rm_batch_loss_with(&self.model, &self.head, 0, &refs, &device)?;
            for m in m.to_vec1::<f32>()? {
                wins += usize::from(m > 0.0);
                margin_sum += f64::from(m);
            }
            on_progress((k * per + chunk.len()).min(enc.len()), enc.len());
        }
        let n = enc.len();
        Ok(RewardEval {
            n_pairs: n,
            n_skipped,
            pair_accuracy: wins as f64 / n as f64,
            mean_margin: margin_sum / n as f64,
        })
    }

    fn model_device(&self) -> Device {
        self.head.weight.as_tensor().device().clone()
    }
}
