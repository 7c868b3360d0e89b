//! Held-out preference figures: does training generalise to pairs it never saw?
//!
//! For each held-out pair the summed log-probability of the chosen and of the rejected reply
//! (response tokens only, prompt as context, EOS appended, as the DPO loss scores them) under the
//! model and, when given, under a reference model. Then:
//!
//! - **pair accuracy**: the share of pairs whose *implicit reward margin*
//!   `[log π(c) − log π_ref(c)] − [log π(r) − log π_ref(r)]` is positive (the DPO reward
//!   accuracy of Rafailov et al., TRL's `rewards/accuracies`, on held-out pairs); without a
//!   reference, the share with `log π(c) > log π(r)` (the model alone prefers the chosen reply);
//! - **NLL** of the chosen (and rejected) replies, per response token, under the model alone.
//!
//! A margin of exactly 0 (a model equal to its reference) counts as not preferred, so an
//! untrained model scores 0, not 0.5.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use trust_backends::candle::{CausalLm, ModelConfig};

use crate::hh::PreferencePair;
use crate::train::{
    Encoded, ScoredBatch, Stage, TrainConfig, TrainError, encode_pairs, load_weights,
    shared_prefix_layers,
};

/// Held-out figures of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldoutEval {
    /// Pairs scored.
    pub n_pairs: usize,
    /// Pairs that could not be encoded (skipped).
    pub n_skipped: usize,
    /// Share of pairs with a positive implicit reward margin (see the module docs).
    pub pair_accuracy: f64,
    /// Mean implicit reward margin in nats (β = 1).
    pub mean_margin: f64,
    /// Mean negative log-likelihood per response token of the chosen replies (model alone).
    pub chosen_nll: f64,
    /// Same for the rejected replies.
    pub rejected_nll: f64,
    /// The reference model the margins are taken against, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// Summed response log-probabilities of held-out pairs under one model, and the response
/// token counts: computed once per checkpoint, then reused as the policy of that checkpoint and
/// as the reference of the next one ([`HeldoutEval::from_logprobs`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairLogprobs {
    /// Indices (in their data file) of the pairs scored, in order.
    pub index: Vec<usize>,
    /// log π(chosen | prompt), summed over the response tokens (EOS included).
    pub chosen: Vec<f64>,
    /// log π(rejected | prompt).
    pub rejected: Vec<f64>,
    /// Response tokens of each chosen reply.
    pub chosen_tokens: Vec<usize>,
    /// Response tokens of each rejected reply.
    pub rejected_tokens: Vec<usize>,
    /// Pairs that could not be encoded (skipped).
    pub n_skipped: usize,
}

/// Scores `pairs` under the model in `model_dir`: sequences of at most `max_len` tokens,
/// `batch_size` sequences per forward pass. `on_progress(done, total)` counts sequences.
pub fn pair_logprobs(
    model_dir: &Path,
    pairs: &[PreferencePair],
    max_len: usize,
    batch_size: usize,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<PairLogprobs, TrainError> {
    let mut all = pair_logprobs_many(&[model_dir], pairs, max_len, batch_size, on_progress)?;
    Ok(all.remove(0))
}

/// [`pair_logprobs`] for several models at once (same tokenizer and shape: checkpoints of one
/// base model). The leading blocks whose weights are bit-identical in every model (with the
/// embeddings) run once per batch and the models continue from the same hidden states
/// ([`CausalLm::forward_prefix`]): for a base model and LoRA fine-tunes of its last third,
/// three checkpoints cost 1 + 2/3 forward passes instead of 3, with the same results (tested).
/// `on_progress(done, total)` counts sequences over all models.
pub fn pair_logprobs_many(
    model_dirs: &[&Path],
    pairs: &[PreferencePair],
    max_len: usize,
    batch_size: usize,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<PairLogprobs>, TrainError> {
    let Some(first) = model_dirs.first() else {
        return Ok(Vec::new());
    };
    let device = Device::Cpu;
    let config = ModelConfig::from_dir(first)?;
    let tok = trust_backends::candle::loader::load_tokenizer(first, config.vocab_size)?;
    let eos = config.eos_token_ids.first().copied();
    let mut cfg = TrainConfig::new(Stage::Dpo);
    cfg.max_len = max_len;
    let (enc, n_skipped) = encode_pairs(&tok, pairs, &cfg, eos);
    if enc.is_empty() {
        return Err(TrainError::Invalid(format!(
            "no held-out pair could be encoded ({n_skipped} skipped)"
        )));
    }
    // Load every model, and find the blocks they all share.
    let n_layers = config.num_hidden_layers;
    let mut prefix = n_layers;
    let mut models = Vec::with_capacity(model_dirs.len());
    let mut first_weights = None;
    for dir in model_dirs {
        let c = ModelConfig::from_dir(dir)?;
        if c.num_hidden_layers != n_layers
            || c.hidden_size != config.hidden_size
            || c.vocab_size != config.vocab_size
        {
            return Err(TrainError::Invalid(format!(
                "{}: not a checkpoint of {} (other shape)",
                dir.display(),
                first.display()
            )));
        }
        let w = load_weights(dir, &device)?;
        match &first_weights {
            None => first_weights = Some(w.clone()),
            Some(f) => prefix = prefix.min(shared_prefix_layers(f, &w, n_layers)?),
        }
        models.push(CausalLm::from_var_builder(
            &c,
            VarBuilder::from_tensors(w, DType::F32, &device),
        )?);
    }
    drop(first_weights);
    if models.len() == 1 {
        prefix = 0;
    }
    let seqs: Vec<&Encoded> = enc.iter().flat_map(|p| [&p.chosen, &p.rejected]).collect();
    let total = seqs.len() * models.len();
    let mut done = 0usize;
    let mut lps: Vec<Vec<f64>> = vec![Vec::with_capacity(seqs.len()); models.len()];
    for chunk in seqs.chunks(batch_size.max(1)) {
        let sb = ScoredBatch::new(chunk, &device)?;
        let h0 = (prefix > 0)
            .then(|| models[0].forward_prefix(&sb.ids, Some(&sb.mask), prefix))
            .transpose()?;
        for (m, out) in models.iter().zip(lps.iter_mut()) {
            let hidden = match &h0 {
                Some(h0) => m.forward_hidden_from(h0, Some(&sb.mask), prefix)?,
                None => m.forward_hidden(&sb.ids, Some(&sb.mask), None, None)?,
            };
            let lp = sb.logprob(m, &hidden)?.to_vec1::<f32>()?;
            out.extend(lp.into_iter().map(f64::from));
            done += chunk.len();
            on_progress(done, total);
        }
    }
    let tokens = |e: &Encoded| e.targets.iter().filter(|&&t| t > 0.0).count();
    Ok(lps
        .into_iter()
        .map(|lp| PairLogprobs {
            index: enc.iter().map(|p| p.index).collect(),
            chosen: lp.iter().step_by(2).copied().collect(),
            rejected: lp.iter().skip(1).step_by(2).copied().collect(),
            chosen_tokens: enc.iter().map(|p| tokens(&p.chosen)).collect(),
            rejected_tokens: enc.iter().map(|p| tokens(&p.rejected)).collect(),
            n_skipped,
        })
        .collect())
}

impl HeldoutEval {
    /// The held-out figures of `policy` against `reference` (see the module docs); both must
    /// score the same pairs (same tokenizer, same `max_len`).
    pub fn from_logprobs(
        policy: &PairLogprobs,
        reference: Option<(&PairLogprobs, String)>,
    ) -> Result<HeldoutEval, TrainError> {
        if let Some((r, name)) = &reference {
            if r.index != policy.index || r.chosen_tokens != policy.chosen_tokens {
                return Err(TrainError::Invalid(format!(
                    "held-out reference {name} scored other pairs or tokens than the policy"
                )));
            }
        }
        let n = policy.chosen.len();
        let (mut wins, mut margin_sum) = (0usize, 0.0f64);
        for i in 0..n {
            let margin = match &reference {
                Some((r, _)) => {
                    (policy.chosen[i] - r.chosen[i]) - (policy.rejected[i] - r.rejected[i])
                }
                None => policy.chosen[i] - policy.rejected[i],
            };
            wins += usize::from(margin > 0.0);
            margin_sum += margin;
        }
        let nll = |lp: &[f64], tok: &[usize]| {
            -lp.iter().sum::<f64>() / (tok.iter().sum::<usize>().max(1) as f64)
        };
        Ok(HeldoutEval {
            n_pairs: n,
            n_skipped: policy.n_skipped,
            pair_accuracy: wins as f64 / n.max(1) as f64,
            mean_margin: margin_sum / n.max(1) as f64,
            chosen_nll: nll(&policy.chosen, &policy.chosen_tokens),
            rejected_nll: nll(&policy.rejected, &policy.rejected_tokens),
            reference: reference.map(|(_, name)| name),
        })
    }
}

/// Scores `pairs` under the model in `model_dir` (and `reference_dir`) and returns its held-out
/// figures ([`pair_logprobs`] once per model, then [`HeldoutEval::from_logprobs`]).
pub fn evaluate_pairs(
    model_dir: &Path,
    reference_dir: Option<&Path>,
    pairs: &[PreferencePair],
    max_len: usize,
    batch_size: usize,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<HeldoutEval, TrainError> {
    let mut dirs = vec![model_dir];
    dirs.extend(reference_dir);
    let mut lps = pair_logprobs_many(&dirs, pairs, max_len, batch_size, on_progress)?;
    let policy = lps.remove(0);
    let reference = reference_dir.map(|dir| (lps.remove(0), dir.display().to_string()));
    HeldoutEval::from_logprobs(&policy, reference.as_ref().map(|(r, n)| (r, n.clone())))
}

/// A seeded split of `pairs` into (train, held-out) with `n_heldout` held-out pairs; the order
/// within each part is the data order. Training on the first part never sees the second.
pub fn split_heldout(
    pairs: &[PreferencePair],
    n_heldout: usize,
    seed: u64,
) -> (Vec<PreferencePair>, Vec<PreferencePair>) {
    let mut idx: Vec<usize> = (0..pairs.len()).collect();
    trust_core::rng::SplitMix64::new(trust_core::rng::derive_seed(seed, "heldout-split"))
        .shuffle(&mut idx);
    let mut held = vec![false; pairs.len()];
    for &i in idx.iter().take(n_heldout.min(pairs.len())) {
        held[i] = true;
    }
    let (mut train, mut heldout) = (Vec::new(), Vec::new());
    for (p, h) in pairs.iter().zip(held) {
        if h {
            heldout.push(p.clone());
        } else {
            train.push(p.clone());
        }
    }
    (train, heldout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(i: usize) -> PreferencePair {
        PreferencePair {
            index: i,
            prompt: format!("\n\nHuman: q{i}\n\nAssistant:"),
            chosen: " yes".into(),
            rejected: " no".into(),
        }
    }

    #[test]
    fn split_is_seeded_disjoint_and_complete() {
        let pairs: Vec<PreferencePair> = (0..100).map(pair).collect();
        let (train, held) = split_heldout(&pairs, 20, 0);
        assert_eq!((train.len(), held.len()), (80, 20));
        let mut all: Vec<usize> = train.iter().chain(&held).map(|p| p.index).collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert!(
            train.windows(2).all(|w| w[0].index < w[1].index),
            "data order"
        );
        assert_eq!(split_heldout(&pairs, 20, 0).1, held);
        assert_ne!(split_heldout(&pairs, 20, 1).1, held);
        assert_ne!(
            held.iter().map(|p| p.index).collect::<Vec<_>>(),
            (0..20).collect::<Vec<_>>(),
            "not the first rows"
        );
    }
}
