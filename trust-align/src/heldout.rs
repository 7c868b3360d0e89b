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

use candle_core::Device;
use serde::{Deserialize, Serialize};
use trust_backends::candle::{CausalLm, ModelConfig};

use crate::hh::PreferencePair;
use crate::train::{
    Encoded, Stage, TrainConfig, TrainError, batch_logprob, encode_pairs, load_frozen,
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

fn logprobs(
    model: &CausalLm,
    seqs: &[&Encoded],
    batch_size: usize,
    device: &Device,
    on_batch: &mut dyn FnMut(usize),
) -> Result<Vec<f64>, TrainError> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(batch_size.max(1)) {
        let lp = batch_logprob(model, chunk, device)?.to_vec1::<f32>()?;
        out.extend(lp.into_iter().map(f64::from));
        on_batch(chunk.len());
    }
    Ok(out)
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
    let device = Device::Cpu;
    let config = ModelConfig::from_dir(model_dir)?;
    let tok = trust_backends::candle::loader::load_tokenizer(model_dir, config.vocab_size)?;
    let eos = config.eos_token_ids.first().copied();
    let mut cfg = TrainConfig::new(Stage::Dpo);
    cfg.max_len = max_len;
    let (enc, n_skipped) = encode_pairs(&tok, pairs, &cfg, eos);
    if enc.is_empty() {
        return Err(TrainError::Invalid(format!(
            "no held-out pair could be encoded ({n_skipped} skipped)"
        )));
    }
    let seqs: Vec<&Encoded> = enc.iter().flat_map(|p| [&p.chosen, &p.rejected]).collect();
    let total = seqs.len();
    let mut done = 0usize;
    let model = load_frozen(model_dir, &device)?;
    let lp = logprobs(&model, &seqs, batch_size, &device, &mut |n| {
        done += n;
        on_progress(done, total);
    })?;
    let tokens = |e: &Encoded| e.targets.iter().filter(|&&t| t > 0.0).count();
    Ok(PairLogprobs {
        index: enc.iter().map(|p| p.index).collect(),
        chosen: lp.iter().step_by(2).copied().collect(),
        rejected: lp.iter().skip(1).step_by(2).copied().collect(),
        chosen_tokens: enc.iter().map(|p| tokens(&p.chosen)).collect(),
        rejected_tokens: enc.iter().map(|p| tokens(&p.rejected)).collect(),
        n_skipped,
    })
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
    let policy = pair_logprobs(model_dir, pairs, max_len, batch_size, on_progress)?;
    let reference = match reference_dir {
        Some(dir) => Some((
            pair_logprobs(dir, pairs, max_len, batch_size, on_progress)?,
            dir.display().to_string(),
        )),
        None => None,
    };
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
