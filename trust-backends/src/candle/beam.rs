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

use candle_core::{DType, Result, Tensor};
use trust_core::rng::SplitMix64;
use trust_core::{Completion, FinishReason};

use super::CausalLm;

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

fn order_desc(scores: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| {
        scores[b]
            .partial_cmp(&scores[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    idx
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
        let mut sorted: Vec<f32> = row.to_vec();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
        let kth = sorted[k - 1];
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
fn sample_without_replacement(scores: &[f32], k: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut w: Vec<f64> = scores.iter().map(|&x| ((x - max) as f64).exp()).collect();
    let mut chosen = Vec::with_capacity(k);
    for _ in 0..k {
        let total: f64 = w.iter().sum();
        if total.is_nan() || total <= 0.0 {
            break;
        }
        let mut u = rng.next_f64() * total;
        let mut pick = None;
        for (i, &wi) in w.iter().enumerate() {
            if wi > 0.0 {
                pick = Some(i);
                if u < wi {
                    break;
                }
                u -= wi;
            }
        }
        let Some(i) = pick else { break };
        chosen.push(i);
        w[i] = 0.0;
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

/// Runs beam search for one prompt; returns `spec.n` completions, best first.
pub fn beam_search(
    lm: &CausalLm,
    tok: &tokenizers::Tokenizer,
    spec: &mut BeamSpec,
) -> Result<Vec<Completion>> {
    let nb = spec.num_beams;
    if spec.max_new_tokens == 0 {
        let c = Completion {
            text: String::new(),
            token_ids: Vec::new(),
            finish_reason: FinishReason::Length,
        };
        return Ok(vec![c; spec.n]);
    }
    let dev = lm.device().clone();
    let plen = spec.prompt.len();
    let max_len = plen + spec.max_new_tokens;
    let n_eos = spec.stop_ids.len();
    let keep = 2usize.max(1 + n_eos) * nb;
    let min_keep = 2usize.max(n_eos + 1);
    let length_penalty = 1.0f32;

    let mut cache = lm.new_cache();
    let input = Tensor::new(spec.prompt.as_slice(), &dev)?.unsqueeze(0)?;
    let positions =
        Tensor::new((0..plen as u32).collect::<Vec<u32>>().as_slice(), &dev)?.unsqueeze(0)?;
    let hidden = lm.forward_hidden_with(&input, &[vec![1; plen]], &positions, Some(&mut cache))?;
    let last = lm
        .lm_head(&hidden.narrow(1, plen - 1, 1)?)?
        .squeeze(1)?
        .to_dtype(DType::F32)?;
    let mut logits = last.repeat((nb, 1))?;
    cache.reorder(&vec![0u32; nb])?;

    let mut running: Vec<Vec<u32>> = vec![Vec::new(); nb];
    let mut running_scores: Vec<f32> = (0..nb).map(|i| if i == 0 { 0.0 } else { NEG }).collect();
    let mut finished: Vec<(Vec<u32>, f32, bool)> = vec![(Vec::new(), NEG, false); nb];
    let mut unsatisfied = true;
    let mut cur_len = plen;
    loop {
        let mut lp = log_softmax_rows(&logits)?;
        let vocab = lp[0].len();
        if let Some(s) = &spec.sampling {
            for row in lp.iter_mut() {
                warp(row, s, min_keep);
            }
        }
        let mut acc = Vec::with_capacity(nb * vocab);
        for (b, row) in lp.iter().enumerate() {
            acc.extend(row.iter().map(|&x| x + running_scores[b]));
        }
        let picked: Vec<usize> = match spec.sampling.as_mut() {
            None => order_desc(&acc).into_iter().take(keep).collect(),
            Some(s) => sample_without_replacement(&acc, keep, &mut s.rng),
        };
        // (parent beam, token, accumulated score, hits a stop)
        let cands: Vec<(usize, u32, f32, bool)> = picked
            .iter()
            .map(|&i| {
                let tokid = (i % vocab) as u32;
                let hits = spec.stop_ids.contains(&tokid) || cur_len + 1 >= max_len;
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
        let mut merged: Vec<(Vec<u32>, f32, bool)> = std::mem::take(&mut finished);
        for (k, c) in cands.iter().enumerate() {
            let mut s = c.2 / denom;
            if !unsatisfied {
                s += NEG;
            }
            let just = c.3 && k < nb;
            if !just {
                s += NEG;
            }
            let mut seq = running[c.0].clone();
            seq.push(c.1);
            merged.push((seq, s, just));
        }
        let merged_scores: Vec<f32> = merged.iter().map(|m| m.1).collect();
        finished = order_desc(&merged_scores)
            .into_iter()
            .take(nb)
            .map(|i| merged[i].clone())
            .collect();
        let parents: Vec<u32> = next.iter().map(|&j| cands[j].0 as u32).collect();
        running = next
            .iter()
            .map(|&j| {
                let mut seq = running[cands[j].0].clone();
                seq.push(cands[j].1);
                seq
            })
            .collect();
        running_scores = next.iter().map(|&j| run_scores[j]).collect();
        cur_len += 1;
        // early_stopping = False heuristic.
        let best = running_scores[0] / ((cur_len - plen) as f32).powf(length_penalty);
        let worst = finished.iter().map(|f| f.1).fold(f32::INFINITY, f32::min);
        unsatisfied = unsatisfied
            && finished
                .iter()
                .any(|f| best > if f.2 { worst } else { NEG });
        let all_hit = cands.iter().all(|c| c.3);
        if !unsatisfied || all_hit {
            break;
        }
        cache.reorder(&parents)?;
        let step: Vec<u32> = running.iter().map(|r| *r.last().unwrap_or(&0)).collect();
        let input = Tensor::new(step.as_slice(), &dev)?.unsqueeze(1)?;
        let pos = Tensor::new(vec![(cur_len - 1) as u32; nb].as_slice(), &dev)?.unsqueeze(1)?;
        let key_mask = vec![vec![1u32; cur_len]; nb];
        let hidden = lm.forward_hidden_with(&input, &key_mask, &pos, Some(&mut cache))?;
        logits = lm.lm_head(&hidden)?.squeeze(1)?.to_dtype(DType::F32)?;
    }
    finished
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
            if let Some(at) = spec
                .stop_strings
                .iter()
                .filter(|x| !x.is_empty())
                .filter_map(|x| text.find(x.as_str()))
                .min()
            {
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
