//! Beam search and beam-sample decoding, a port of Hugging Face transformers' vectorised
//! `GenerationMixin._beam_search` (transformers 5.x, `src/transformers/generation/utils.py`) with
//! its defaults `length_penalty = 1.0` and `early_stopping = False`.
//!
//! Per step: f32 log-softmax of each running beam's logits; with sampling, the warpers
//! (temperature, top-k, top-p, each keeping at least `max(2, #eos + 1)` tokens) are applied to
//! those log-probs; the beam score is added; `K = max(2, 1 + #eos) * num_beams` candidates are
//! taken (top-K, or K draws without replacement from the softmax over all `num_beams * vocab`
//! candidates, then sorted); candidates that hit EOS or the length limit are scored with the
//! length penalty and merged into the finished set (only among the first `num_beams`), the best
//! `num_beams` others keep running; the search ends when no running beam can beat the finished
//! ones (the `early_stopping = False` heuristic) or every candidate hit a stop.
//!
//! Differences from transformers: draws come from the request's [`SplitMix64`] (seeded with
//! `derive_seed(seed, "beams")`), not torch's generator, so sampled beams are reproducible here
//! but not bit-identical to PyTorch; ties are broken by the lower index; stop strings cut the
//! returned text afterwards instead of acting as a stopping criterion during the search.

use candle_core::{Result, Tensor};
use trust_core::rng::SplitMix64;
use trust_core::{Completion, FinishReason};

use super::CausalLm;
use super::generate::StepInput;
use super::layers::KvCache;

/// Beam-sample warpers.
#[derive(Debug, Clone)]
pub struct BeamSampling {
    /// Generator of the request.
    pub rng: SplitMix64,
    /// Softmax temperature (> 0).
    pub temperature: f64,
    /// Nucleus mass in (0, 1].
    pub top_p: f64,
    /// Top-k (0 = off).
    pub top_k: usize,
}

/// One beam-search request.
#[derive(Debug, Clone)]
pub struct BeamSpec {
    /// Prompt ids (non-empty).
    pub prompt: Vec<u32>,
    /// Maximum number of new tokens.
    pub max_new_tokens: usize,
    /// Beams (> 1).
    pub num_beams: usize,
    /// Returned sequences (`<= num_beams`).
    pub n: usize,
    /// EOS ids (the stopping criterion).
    pub stop_ids: Vec<u32>,
    /// Strings that cut the returned text.
    pub stop_strings: Vec<String>,
    /// `None` = deterministic beam search.
    pub sampling: Option<BeamSampling>,
}

const NEG: f32 = -1.0e9;

/// Descending by score, ties by lower index (a total order on non-NaN scores).
fn desc(scores: &[f32], a: usize, b: usize) -> std::cmp::Ordering {
    scores[b]
        .partial_cmp(&scores[a])
        .unwrap_or(std::cmp::Ordering::Equal)
        .then(a.cmp(&b))
}

fn order_desc(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| desc(scores, a, b));
    idx
}

/// The first `k` of [`order_desc`] without sorting everything: a linear-time selection, then a
/// sort of the `k` selected (the same indices in the same order).
fn top_desc(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    if k < idx.len() {
        idx.select_nth_unstable_by(k, |&a, &b| desc(scores, a, b));
        idx.truncate(k);
    }
    idx.sort_by(|&a, &b| desc(scores, a, b));
    idx
}

/// The `k`-th largest value of `row` (`1 <= k <= row.len()`), counting repeats, as
/// `sorted_descending(row)[k - 1]` would give for rows without NaN: one pass keeping the `k`
/// largest so far in a min-heap.
fn kth_largest(row: &[f32], k: usize) -> f32 {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    struct F(f32);
    impl PartialEq for F {
        fn eq(&self, o: &Self) -> bool {
            self.cmp(o).is_eq()
        }
    }
    impl Eq for F {}
    impl PartialOrd for F {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for F {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            self.0.total_cmp(&o.0)
        }
    }
    if row.iter().any(|x| x.is_nan()) {
        // Keep the old comparison semantics for the degenerate case.
        let mut vals = row.to_vec();
        let (_, kth, _) = vals.select_nth_unstable_by(k - 1, |a, b| {
            b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal)
        });
        return *kth;
    }
    let mut heap: BinaryHeap<Reverse<F>> = BinaryHeap::with_capacity(k + 1);
    for &x in row {
        if heap.len() < k {
            heap.push(Reverse(F(x)));
        } else if let Some(Reverse(F(min))) = heap.peek()
            && x > *min
        {
            heap.pop();
            heap.push(Reverse(F(x)));
        }
    }
    heap.peek()
        .map(|Reverse(F(x))| *x)
        .unwrap_or(f32::NEG_INFINITY)
}

/// transformers' TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper on one row.
fn warp(row: &mut [f32], s: &BeamSampling, min_keep: usize) {
    if s.temperature != 1.0 {
        let t = s.temperature as f32;
        for x in row.iter_mut() {
            *x /= t;
        }
    }
    if s.top_k != 0 {
        let k = s.top_k.max(min_keep).min(row.len());
        let kth = kth_largest(row, k);
        for x in row.iter_mut() {
            if *x < kth {
                *x = f32::NEG_INFINITY;
            }
        }
    }
    if s.top_p < 1.0 {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| {
            row[a]
                .partial_cmp(&row[b])
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(&b))
        });
        let max = row[idx[idx.len() - 1]];
        let exps: Vec<f32> = idx.iter().map(|&i| (row[i] - max).exp()).collect();
        let total: f32 = exps.iter().sum();
        let mut cum = 0f32;
        let n = idx.len();
        let mut remove = Vec::new();
        for (j, &i) in idx.iter().enumerate() {
            cum += exps[j] / total;
            if cum <= (1.0 - s.top_p as f32) && j < n.saturating_sub(min_keep) {
                remove.push(i);
            }
        }
        for i in remove {
            row[i] = f32::NEG_INFINITY;
        }
    }
}

/// Draws `k` distinct indices with probability proportional to `softmax(scores)` (sequentially,
/// without replacement), then sorts them by score, best first.
///
/// Only candidates with a nonzero weight can be drawn, so the draws walk over those alone (in
/// index order, as a walk over all candidates would); after top-k warping that is a few hundred
/// of `num_beams * vocab`.
fn sample_without_replacement(scores: &[f32], k: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // exp(-inf) = 0: masked candidates are skipped without computing it.
    let mut live: Vec<(usize, f64)> = scores
        .iter()
        .enumerate()
        .filter(|&(_, &x)| x != f32::NEG_INFINITY)
        .map(|(i, &x)| (i, ((x - max) as f64).exp()))
        .filter(|&(_, w)| w > 0.0 || w.is_nan())
        .collect();
    let mut chosen = Vec::with_capacity(k);
    for _ in 0..k {
        // Summed in index order over all candidates; zeros add nothing.
        let total: f64 = live.iter().map(|&(_, w)| w).sum();
        if total.is_nan() || total <= 0.0 {
            break;
        }
        let mut u = rng.next_f64() * total;
        let mut pick = None;
        for (j, &(_, wi)) in live.iter().enumerate() {
            if wi > 0.0 {
                pick = Some(j);
                if u < wi {
                    break;
                }
                u -= wi;
            }
        }
        let Some(j) = pick else { break };
        chosen.push(live[j].0);
        live[j].1 = 0.0;
    }
    if chosen.len() < k {
        // Not enough candidates with probability > 0 (torch would raise): fill with the best rest.
        for i in order_desc(scores) {
            if chosen.len() == k {
                break;
            }
            if !chosen.contains(&i) {
                chosen.push(i);
            }
        }
    }
    chosen.sort_by(|&a, &b| {
        scores[b]
            .partial_cmp(&scores[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    chosen
}

fn log_softmax_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    super::generate::log_softmax_f32(logits)?.to_vec2::<f32>()
}

/// A beam search in progress, stepped by [`super::generate::run`] (so that several searches
/// share forward passes).
pub(crate) struct BeamRun {
    spec: BeamSpec,
    plen: usize,
    max_len: usize,
    keep: usize,
    min_keep: usize,
    prefilled: bool,
    running: Vec<Vec<u32>>,
    running_scores: Vec<f32>,
    finished: Vec<(Vec<u32>, f32, bool)>,
    unsatisfied: bool,
    cur_len: usize,
}

impl BeamRun {
    /// The search and its first step (the prompt, one row); `Err` holds the result of a search
    /// that needs no step (`max_new_tokens == 0`).
    pub(crate) fn new(spec: BeamSpec) -> std::result::Result<(Self, StepInput), Vec<Completion>> {
        let nb = spec.num_beams;
        if spec.max_new_tokens == 0 {
            let c = Completion {
                text: String::new(),
                token_ids: Vec::new(),
                finish_reason: FinishReason::Length,
            };
            return Err(vec![c; spec.n]);
        }
        let plen = spec.prompt.len();
        let n_eos = spec.stop_ids.len();
        let input = StepInput {
            ids: spec.prompt.clone(),
            positions: (0..plen as u32).collect(),
            key_mask: vec![vec![1; plen]],
        };
        Ok((
            BeamRun {
                plen,
                max_len: plen.saturating_add(spec.max_new_tokens),
                keep: 2usize.max(1 + n_eos) * nb,
                min_keep: 2usize.max(n_eos + 1),
                prefilled: false,
                running: vec![Vec::new(); nb],
                running_scores: (0..nb).map(|i| if i == 0 { 0.0 } else { NEG }).collect(),
                finished: vec![(Vec::new(), NEG, false); nb],
                unsatisfied: true,
                cur_len: plen,
                spec,
            },
            input,
        ))
    }

    /// One search step on the logits of the last pass (`[1, vocab]` after the prompt, then
    /// `[num_beams, vocab]`). Returns whether the search is done; else `cache` is reordered to
    /// the surviving beams and `input` holds their next tokens.
    pub(crate) fn advance(
        &mut self,
        logits: &Tensor,
        cache: &mut KvCache,
        input: &mut StepInput,
    ) -> Result<bool> {
        let nb = self.spec.num_beams;
        let logits = if self.prefilled {
            logits.clone()
        } else {
            self.prefilled = true;
            cache.reorder(&vec![0u32; nb])?;
            logits.repeat((nb, 1))?
        };
        let plen = self.plen;
        let length_penalty = 1.0f32;
        let mut lp = log_softmax_rows(&logits)?;
        let vocab = lp[0].len();
        if let Some(s) = &self.spec.sampling {
            for row in lp.iter_mut() {
                warp(row, s, self.min_keep);
            }
        }
        let mut acc = Vec::with_capacity(nb * vocab);
        for (b, row) in lp.iter().enumerate() {
            acc.extend(row.iter().map(|&x| x + self.running_scores[b]));
        }
        let keep = self.keep;
        let picked: Vec<usize> = match self.spec.sampling.as_mut() {
            None => top_desc(&acc, keep),
            Some(s) => sample_without_replacement(&acc, keep, &mut s.rng),
        };
        let cur_len = self.cur_len;
        let max_len = self.max_len;
        // (parent beam, token, accumulated score, hits a stop)
        let cands: Vec<(usize, u32, f32, bool)> = picked
            .iter()
            .map(|&i| {
                let tokid = (i % vocab) as u32;
                let hits = self.spec.stop_ids.contains(&tokid) || cur_len + 1 >= max_len;
                (i / vocab, tokid, acc[i], hits)
            })
            .collect();
        // Next running beams: the best non-stopped candidates.
        let run_scores: Vec<f32> = cands
            .iter()
            .map(|c| c.2 + if c.3 { NEG } else { 0.0 })
            .collect();
        let next: Vec<usize> = order_desc(&run_scores).into_iter().take(nb).collect();
        // Finished set: merge the newly finished among the first `nb` candidates.
        let denom = ((cur_len + 1 - plen) as f32).powf(length_penalty);
        let mut merged: Vec<(Vec<u32>, f32, bool)> = std::mem::take(&mut self.finished);
        for (k, c) in cands.iter().enumerate() {
            let mut s = c.2 / denom;
            if !self.unsatisfied {
                s += NEG;
            }
            let just = c.3 && k < nb;
            if !just {
                s += NEG;
            }
            let mut seq = self.running[c.0].clone();
            seq.push(c.1);
            merged.push((seq, s, just));
        }
        let merged_scores: Vec<f32> = merged.iter().map(|m| m.1).collect();
        self.finished = order_desc(&merged_scores)
            .into_iter()
            .take(nb)
            .map(|i| merged[i].clone())
            .collect();
        let parents: Vec<u32> = next.iter().map(|&j| cands[j].0 as u32).collect();
        self.running = next
            .iter()
            .map(|&j| {
                let mut seq = self.running[cands[j].0].clone();
                seq.push(cands[j].1);
                seq
            })
            .collect();
        self.running_scores = next.iter().map(|&j| run_scores[j]).collect();
        self.cur_len += 1;
        let cur_len = self.cur_len;
        // early_stopping = False heuristic.
        let best = self.running_scores[0] / ((cur_len - plen) as f32).powf(length_penalty);
        let worst = self
            .finished
            .iter()
            .map(|f| f.1)
            .fold(f32::INFINITY, f32::min);
        self.unsatisfied = self.unsatisfied
            && self
                .finished
                .iter()
                .any(|f| best > if f.2 { worst } else { NEG });
        let all_hit = cands.iter().all(|c| c.3);
        if !self.unsatisfied || all_hit {
            return Ok(true);
        }
        cache.reorder(&parents)?;
        input.ids = self
            .running
            .iter()
            .map(|r| *r.last().unwrap_or(&0))
            .collect();
        input.positions = vec![(cur_len - 1) as u32; nb];
        input.key_mask = vec![vec![1u32; cur_len]; nb];
        Ok(false)
    }

    /// The `n` best finished sequences, best first.
    pub(crate) fn finish(self, tok: &tokenizers::Tokenizer) -> Result<Vec<Completion>> {
        let spec = self.spec;
        self.finished
            .into_iter()
            .take(spec.n)
            .map(|(mut ids, _, _)| {
                let mut reason = FinishReason::Length;
                if ids.last().is_some_and(|t| spec.stop_ids.contains(t)) {
                    ids.pop();
                    reason = FinishReason::StopToken;
                }
                let mut text = tok
                    .decode(&ids, true)
                    .map_err(|e| candle_core::Error::Msg(format!("decode: {e}")))?;
                if let Some(at) = trust_core::sampling::first_stop(&text, &spec.stop_strings) {
                    text.truncate(at);
                    reason = FinishReason::StopString;
                }
                Ok(Completion {
                    text,
                    token_ids: ids,
                    finish_reason: reason,
                })
            })
            .collect()
    }
}

/// Runs beam search for one prompt; returns `spec.n` completions, best first.
pub fn beam_search(
    lm: &CausalLm,
    tok: &tokenizers::Tokenizer,
    spec: &mut BeamSpec,
) -> Result<Vec<Completion>> {
    super::generate::run_one(lm, tok, super::generate::Work::Beam(spec.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kth_largest_matches_a_full_sort() {
        let mut rng = SplitMix64::new(7);
        for n in [1usize, 2, 5, 50, 51, 300] {
            for _ in 0..20 {
                // Few distinct values, so ties are common; some -inf.
                let row: Vec<f32> = (0..n)
                    .map(|_| match rng.next_u64() % 12 {
                        0 => f32::NEG_INFINITY,
                        v => (v % 7) as f32 * 0.5 - 1.0,
                    })
                    .collect();
                let mut sorted = row.clone();
                sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
                for k in 1..=n {
                    assert_eq!(kth_largest(&row, k), sorted[k - 1], "n={n} k={k}");
                }
            }
        }
    }

    #[test]
    fn top_desc_is_the_head_of_order_desc() {
        let mut rng = SplitMix64::new(3);
        let scores: Vec<f32> = (0..500).map(|_| (rng.next_u64() % 40) as f32).collect();
        for k in [1, 2, 10, 499, 500, 600] {
            let full: Vec<usize> = order_desc(&scores).into_iter().take(k).collect();
            assert_eq!(top_desc(&scores, k), full, "k={k}");
        }
    }
}
