//! Batched, left-padded decoding with a KV cache, greedy or seeded sampling.
//!
//! Each row (one completion) carries its own sampler state seeded from the request, so the tokens
//! a row draws never depend on which other rows share its batch. Rows are left-padded with id 0,
//! the attention mask hides the padding and `position_ids = cumsum(mask) - 1` (padding set to 1,
//! as transformers' `generate` does), so a padded row computes the same logits as the row alone up
//! to floating-point rounding (about 1e-6 on the HF fixtures).

use candle_core::{D, DType, Result, Tensor};
use trust_core::rng::SplitMix64;
use trust_core::{Completion, FinishReason};

use super::CausalLm;

/// How a row picks its next token.
#[derive(Debug, Clone)]
pub enum Sampler {
    /// Argmax (lowest id on ties).
    Greedy,
    /// Temperature, then top-k, then top-p (nucleus), then a draw from the row's own generator.
    Sample {
        /// Generator of this row.
        rng: SplitMix64,
        /// Softmax temperature (> 0).
        temperature: f64,
        /// Nucleus mass in (0, 1].
        top_p: f64,
        /// Keep the k most likely tokens (0 = all).
        top_k: usize,
    },
}

pub use trust_core::sampling::{argmax, sample};

impl Sampler {
    /// Chooses the next token from a logits row.
    pub fn pick(&mut self, logits: &[f32]) -> u32 {
        match self {
            Sampler::Greedy => argmax(logits),
            Sampler::Sample {
                rng,
                temperature,
                top_p,
                top_k,
            } => sample(logits, rng, *temperature, *top_p, *top_k),
        }
    }
}

/// One sequence to decode.
#[derive(Debug, Clone)]
pub struct RowSpec {
    /// Prompt ids (non-empty).
    pub prompt: Vec<u32>,
    /// Maximum number of new tokens.
    pub max_new_tokens: usize,
    /// Token chooser.
    pub sampler: Sampler,
    /// Ids that end the row (not included in the output).
    pub stop_ids: Vec<u32>,
    /// Strings that end the row (text cut before the first one).
    pub stop_strings: Vec<String>,
}

struct RowState {
    tokens: Vec<u32>,
    done: Option<FinishReason>,
    cut_text: Option<String>,
}

fn decode(tok: &tokenizers::Tokenizer, ids: &[u32]) -> Result<String> {
    tok.decode(ids, true)
        .map_err(|e| candle_core::Error::Msg(format!("decode: {e}")))
}

/// Decodes all rows together (one batch). Rows must fit the model's context (checked by callers).
pub fn generate_batch(
    lm: &CausalLm,
    tok: &tokenizers::Tokenizer,
    rows: &mut [RowSpec],
) -> Result<Vec<Completion>> {
    let b = rows.len();
    let mut state: Vec<RowState> = rows
        .iter()
        .map(|r| RowState {
            tokens: Vec::new(),
            done: (r.max_new_tokens == 0).then_some(FinishReason::Length),
            cut_text: None,
        })
        .collect();
    if b > 0 && state.iter().any(|s| s.done.is_none()) {
        let dev = lm.device().clone();
        let l = rows.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b * l);
        let mut key_mask: Vec<Vec<u32>> = Vec::with_capacity(b);
        let mut pos = Vec::with_capacity(b * l);
        let mut next_pos = Vec::with_capacity(b);
        for r in rows.iter() {
            let pad = l - r.prompt.len();
            ids.extend(std::iter::repeat_n(0u32, pad));
            ids.extend_from_slice(&r.prompt);
            let mut m = vec![0u32; pad];
            m.extend(std::iter::repeat_n(1u32, r.prompt.len()));
            key_mask.push(m);
            pos.extend(std::iter::repeat_n(1u32, pad));
            pos.extend(0..r.prompt.len() as u32);
            next_pos.push(r.prompt.len() as u32);
        }
        let max_pos = lm.max_positions() as u32;
        let mut cache = lm.new_cache();
        let mut input = Tensor::from_vec(ids, (b, l), &dev)?;
        let mut positions = Tensor::from_vec(pos, (b, l), &dev)?;
        loop {
            let t = input.dim(1)?;
            let hidden = lm.forward_hidden_with(&input, &key_mask, &positions, Some(&mut cache))?;
            let last = hidden.narrow(1, t - 1, 1)?;
            let logits = lm
                .lm_head(&last)?
                .squeeze(1)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()?;
            for (i, (r, s)) in rows.iter_mut().zip(state.iter_mut()).enumerate() {
                if s.done.is_some() {
                    continue;
                }
                let tokid = r.sampler.pick(&logits[i]);
                if r.stop_ids.contains(&tokid) {
                    s.done = Some(FinishReason::StopToken);
                    continue;
                }
                s.tokens.push(tokid);
                if !r.stop_strings.is_empty() {
                    let text = decode(tok, &s.tokens)?;
                    let hit = r
                        .stop_strings
                        .iter()
                        .filter(|x| !x.is_empty())
                        .filter_map(|x| text.find(x.as_str()))
                        .min();
                    if let Some(at) = hit {
                        s.cut_text = Some(text[..at].to_string());
                        s.done = Some(FinishReason::StopString);
                        continue;
                    }
                }
                if s.tokens.len() >= r.max_new_tokens {
                    s.done = Some(FinishReason::Length);
                }
            }
            if state.iter().all(|s| s.done.is_some()) {
                break;
            }
            let mut step_ids = Vec::with_capacity(b);
            let mut step_pos = Vec::with_capacity(b);
            for (i, s) in state.iter().enumerate() {
                step_ids.push(if s.done.is_none() {
                    *s.tokens.last().unwrap_or(&0)
                } else {
                    0
                });
                step_pos.push(next_pos[i].min(max_pos.saturating_sub(1)));
                next_pos[i] += 1;
                key_mask[i].push(1);
            }
            input = Tensor::from_vec(step_ids, (b, 1), &dev)?;
            positions = Tensor::from_vec(step_pos, (b, 1), &dev)?;
        }
    }
    state
        .into_iter()
        .map(|s| {
            let text = match s.cut_text {
                Some(t) => t,
                None => decode(tok, &s.tokens)?,
            };
            Ok(Completion {
                text,
                token_ids: s.tokens,
                finish_reason: s.done.unwrap_or(FinishReason::Length),
            })
        })
        .collect()
}

/// Log-softmax over the last dim in f32.
pub(crate) fn log_softmax_f32(logits: &Tensor) -> Result<Tensor> {
    candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)
}
