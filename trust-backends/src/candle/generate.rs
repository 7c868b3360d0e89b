//! Decoding with a KV cache, greedy or seeded sampling, and the engine that lets groups of rows
//! and beam searches share forward passes (`run`, continuous batching).
//!
//! Each row (one completion) carries its own sampler state seeded from the request, so the tokens
//! a row draws never depend on which other rows share its passes; groups never attend to each
//! other (see `CausalLm::forward_steps`), so a group's logits do not either. Within a group of
//! mixed prompt lengths (`LoadOptions::pad_generation_batches`) rows are left-padded with id 0,
//! the attention mask hides the padding and `position_ids = cumsum(mask) - 1` (padding set to 1,
//! as transformers' `generate` does), so a padded row computes the same logits as the row alone up
//! to floating-point rounding (about 1e-6 on the HF fixtures).

use candle_core::{D, DType, Result, Tensor};
use rayon::prelude::*;
use trust_core::rng::SplitMix64;
use trust_core::{Completion, FinishReason};

use super::CausalLm;
use super::beam::{BeamRun, BeamSpec};
use super::layers::KvCache;

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

/// One group's share of a forward pass: `b` rows (the rows of `key_mask`) of `t` new tokens.
#[derive(Debug)]
pub(crate) struct Step<'a> {
    /// `[b * t]` token ids, row-major.
    pub(crate) ids: &'a [u32],
    /// `[b * t]` position ids.
    pub(crate) positions: &'a [u32],
    /// Per row, 1 (attend) or 0 over all `past + t` key positions.
    pub(crate) key_mask: &'a [Vec<u32>],
    /// The group's cache (appended to).
    pub(crate) cache: &'a mut KvCache,
}

/// The input of a group's next forward pass.
#[derive(Debug, Clone, Default)]
pub(crate) struct StepInput {
    pub(crate) ids: Vec<u32>,
    pub(crate) positions: Vec<u32>,
    pub(crate) key_mask: Vec<Vec<u32>>,
}

/// Rows decoded together as one group (left-padded when their prompts differ in length).
struct RowGroup {
    rows: Vec<RowSpec>,
    state: Vec<RowState>,
    next_pos: Vec<u32>,
    max_pos: u32,
    /// Until the prompts are prefilled: for each row, its prompt's row in the prefill pass
    /// (`None` when every row has its own prompt). Rows with equal prompts (the `n` samples of
    /// one request) prefill it once; the cache is then replicated to one row each.
    prefill_of: Option<Vec<u32>>,
}

impl RowGroup {
    fn new(rows: Vec<RowSpec>, max_pos: u32) -> (Self, StepInput) {
        let state: Vec<RowState> = rows
            .iter()
            .map(|r| RowState {
                tokens: Vec::new(),
                done: (r.max_new_tokens == 0).then_some(FinishReason::Length),
                cut_text: None,
            })
            .collect();
        let b = rows.len();
        let l = rows.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
        // One prefill row per distinct prompt (equal prompts are neighbours: callers sort rows
        // by request).
        let mut prefill_of = Vec::with_capacity(b);
        let mut distinct: Vec<usize> = Vec::with_capacity(b);
        for (i, r) in rows.iter().enumerate() {
            match distinct.last() {
                Some(&j) if rows[j].prompt == r.prompt => {}
                _ => distinct.push(i),
            }
            prefill_of.push((distinct.len() - 1) as u32);
        }
        let mut input = StepInput {
            ids: Vec::with_capacity(distinct.len() * l),
            positions: Vec::with_capacity(distinct.len() * l),
            key_mask: Vec::with_capacity(distinct.len()),
        };
        let next_pos = rows.iter().map(|r| r.prompt.len() as u32).collect();
        for &i in &distinct {
            let r = &rows[i];
            let pad = l - r.prompt.len();
            input.ids.extend(std::iter::repeat_n(0u32, pad));
            input.ids.extend_from_slice(&r.prompt);
            let mut m = vec![0u32; pad];
            m.extend(std::iter::repeat_n(1u32, r.prompt.len()));
            input.key_mask.push(m);
            input.positions.extend(std::iter::repeat_n(1u32, pad));
            input.positions.extend(0..r.prompt.len() as u32);
        }
        let shared = distinct.len() < b;
        (
            RowGroup {
                rows,
                state,
                next_pos,
                max_pos,
                prefill_of: shared.then_some(prefill_of),
            },
            input,
        )
    }

    fn all_done(&self) -> bool {
        self.state.iter().all(|s| s.done.is_some())
    }

    /// Picks each row's next token from `logits` (`[b, vocab]`, or one row per distinct prompt
    /// after a shared prefill, whose cache rows are then replicated); returns whether the group
    /// is done (else `input` holds the next step).
    fn advance(
        &mut self,
        tok: &tokenizers::Tokenizer,
        logits: &Tensor,
        input: &mut StepInput,
        cache: &mut KvCache,
    ) -> Result<bool> {
        let logits = logits.to_vec2::<f32>()?;
        let prefill_of = self.prefill_of.take();
        if let Some(map) = &prefill_of {
            cache.reorder(map)?;
            input.key_mask = map
                .iter()
                .map(|&j| input.key_mask[j as usize].clone())
                .collect();
        }
        for (i, (r, s)) in self.rows.iter_mut().zip(self.state.iter_mut()).enumerate() {
            if s.done.is_some() {
                continue;
            }
            let row = prefill_of.as_ref().map_or(i, |m| m[i] as usize);
            let tokid = r.sampler.pick(&logits[row]);
            if r.stop_ids.contains(&tokid) {
                s.done = Some(FinishReason::StopToken);
                continue;
            }
            s.tokens.push(tokid);
            if !r.stop_strings.is_empty() {
                let text = decode(tok, &s.tokens)?;
                if let Some(at) = trust_core::sampling::first_stop(&text, &r.stop_strings) {
                    s.cut_text = Some(text[..at].to_string());
                    s.done = Some(FinishReason::StopString);
                    continue;
                }
            }
            if s.tokens.len() >= r.max_new_tokens {
                s.done = Some(FinishReason::Length);
            }
        }
        if self.all_done() {
            return Ok(true);
        }
        input.ids.clear();
        input.positions.clear();
        for (i, s) in self.state.iter().enumerate() {
            input.ids.push(if s.done.is_none() {
                *s.tokens.last().unwrap_or(&0)
            } else {
                0
            });
            input
                .positions
                .push(self.next_pos[i].min(self.max_pos.saturating_sub(1)));
            self.next_pos[i] += 1;
            input.key_mask[i].push(1);
        }
        Ok(false)
    }

    fn finish(self, tok: &tokenizers::Tokenizer) -> Result<Vec<Completion>> {
        self.state
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
}

/// A unit of generation work for [`run`].
#[derive(Debug, Clone)]
pub(crate) enum Work {
    /// Rows decoded as one group (one completion each, in row order).
    Rows(Vec<RowSpec>),
    /// One beam search (`n` completions, best first).
    Beam(BeamSpec),
}

impl Work {
    fn rows(&self) -> usize {
        match self {
            Work::Rows(r) => r.len(),
            Work::Beam(b) => b.num_beams,
        }
    }
}

enum Job {
    Rows(RowGroup),
    Beam(Box<BeamRun>),
}

struct Active {
    work: usize,
    job: Job,
    cache: KvCache,
    input: StepInput,
}

/// Decodes all `works`, keeping up to `max_rows` rows in flight: every forward pass steps all
/// active groups together (their prompts, on admission, included), and a finished group's
/// place goes to the next work in order. Because groups never share attention and the
/// position-wise layers treat rows independently (see [`CausalLm::forward_steps`]), each work's
/// completions are the same whichever works share its passes. A work larger than `max_rows`
/// runs alone. `on_done(i, result)` is called as work `i` finishes, in completion order.
/// When `cancel` becomes true, every unfinished work ends with [`CANCELLED`] before the next
/// forward pass.
pub(crate) fn run(
    lm: &CausalLm,
    tok: &tokenizers::Tokenizer,
    works: Vec<Work>,
    max_rows: usize,
    cancel: Option<&std::sync::atomic::AtomicBool>,
    mut on_done: impl FnMut(usize, Result<Vec<Completion>>),
) {
    let max_pos = lm.max_positions() as u32;
    let mut queue = works.into_iter().enumerate().peekable();
    let mut active: Vec<Active> = Vec::new();
    loop {
        if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
            for a in active.drain(..) {
                on_done(a.work, Err(candle_core::Error::Msg(CANCELLED.into())));
            }
            for (i, _) in queue.by_ref() {
                on_done(i, Err(candle_core::Error::Msg(CANCELLED.into())));
            }
            return;
        }
        let mut in_flight: usize = active.iter().map(|a| a.input.key_mask.len().max(1)).sum();
        while let Some((_, w)) = queue.peek() {
            let need = w.rows();
            if !active.is_empty() && in_flight + need > max_rows {
                break;
            }
            let (i, w) = queue.next().expect("peeked");
            in_flight += need;
            match w {
                Work::Rows(rows) => {
                    let (g, input) = RowGroup::new(rows, max_pos);
                    if g.all_done() {
                        on_done(i, g.finish(tok));
                        continue;
                    }
                    active.push(Active {
                        work: i,
                        job: Job::Rows(g),
                        cache: lm.new_cache(),
                        input,
                    });
                }
                Work::Beam(spec) => match BeamRun::new(spec) {
                    Ok((b, input)) => active.push(Active {
                        work: i,
                        job: Job::Beam(Box::new(b)),
                        cache: lm.new_cache(),
                        input,
                    }),
                    Err(done) => on_done(i, Ok(done)),
                },
            }
        }
        if active.is_empty() {
            break;
        }
        let logits = (|| {
            let mut steps: Vec<Step> = active
                .iter_mut()
                .map(|a| Step {
                    ids: &a.input.ids,
                    positions: &a.input.positions,
                    key_mask: &a.input.key_mask,
                    cache: &mut a.cache,
                })
                .collect();
            let hidden = lm.forward_steps(&mut steps)?;
            lm.lm_head_rows(&hidden)
        })();
        let logits = match logits {
            Ok(l) => l,
            Err(e) => {
                let msg = e.to_string();
                for a in active.drain(..) {
                    on_done(a.work, Err(candle_core::Error::Msg(msg.clone())));
                }
                continue;
            }
        };
        // Each group picks its tokens (or steps its search) on its own rows of the logits; the
        // groups are independent, so they advance in parallel.
        let mut offsets = Vec::with_capacity(active.len());
        let mut off = 0;
        for a in &active {
            offsets.push(off);
            off += a.input.key_mask.len();
        }
        let results: Vec<Result<bool>> = active
            .par_iter_mut()
            .zip(offsets)
            .map(|(a, off)| {
                let b = a.input.key_mask.len();
                let lg = logits.narrow(0, off, b)?;
                match &mut a.job {
                    Job::Rows(g) => g.advance(tok, &lg, &mut a.input, &mut a.cache),
                    Job::Beam(bm) => bm.advance(&lg, &mut a.cache, &mut a.input),
                }
            })
            .collect();
        let mut still = Vec::with_capacity(active.len());
        for (a, res) in active.drain(..).zip(results) {
            match res {
                Ok(false) => still.push(a),
                Ok(true) => {
                    let out = match a.job {
                        Job::Rows(g) => g.finish(tok),
                        Job::Beam(bm) => bm.finish(tok),
                    };
                    on_done(a.work, out);
                }
                Err(e) => on_done(a.work, Err(e)),
            }
        }
        active = still;
    }
}

/// The error message of works ended by cancellation.
pub(crate) const CANCELLED: &str = "generation cancelled";

/// Runs a single work item alone.
pub(crate) fn run_one(
    lm: &CausalLm,
    tok: &tokenizers::Tokenizer,
    work: Work,
) -> Result<Vec<Completion>> {
    let mut out = None;
    run(lm, tok, vec![work], usize::MAX, None, |_, r| out = Some(r));
    out.unwrap_or_else(|| Ok(Vec::new()))
}

/// Decodes all rows together as one group. Rows must fit the model's context (checked by
/// callers).
pub fn generate_batch(
    lm: &CausalLm,
    tok: &tokenizers::Tokenizer,
    rows: &mut [RowSpec],
) -> Result<Vec<Completion>> {
    run_one(lm, tok, Work::Rows(rows.to_vec()))
}

/// Log-softmax over the last dim in f32.
pub(crate) fn log_softmax_f32(logits: &Tensor) -> Result<Tensor> {
    candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::candle::{CandleModel, LoadOptions};

    /// A tiny HF fixture: the crate's own copy, else `../shared/fixtures/hf`.
    pub(crate) fn fixture(name: &str) -> std::path::PathBuf {
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let local = here.join("tests/fixtures").join(name);
        if local.exists() {
            local
        } else {
            here.join("../../shared/fixtures/hf").join(name)
        }
    }

    fn prefill(prompt: &[u32]) -> StepInput {
        StepInput {
            ids: prompt.to_vec(),
            positions: (0..prompt.len() as u32).collect(),
            key_mask: vec![vec![1; prompt.len()]],
        }
    }

    /// Logits of every row after `steps` passes (prompt, then a fixed token per step), the
    /// groups stepped together in one pass each.
    fn run_groups(lm: &CausalLm, prompts: &[Vec<u32>], steps: usize) -> Vec<Vec<Vec<f32>>> {
        let mut caches: Vec<KvCache> = prompts.iter().map(|_| lm.new_cache()).collect();
        let mut inputs: Vec<StepInput> = prompts.iter().map(|p| prefill(p)).collect();
        let mut out = vec![Vec::new(); prompts.len()];
        for s in 0..steps {
            let mut batch: Vec<Step> = inputs
                .iter()
                .zip(caches.iter_mut())
                .map(|(i, c)| Step {
                    ids: &i.ids,
                    positions: &i.positions,
                    key_mask: &i.key_mask,
                    cache: c,
                })
                .collect();
            let h = lm.forward_steps(&mut batch).unwrap();
            let logits = lm.lm_head_rows(&h).unwrap().to_vec2::<f32>().unwrap();
            for (g, (row, inp)) in logits.into_iter().zip(inputs.iter_mut()).enumerate() {
                out[g].push(row);
                let len = inp.key_mask[0].len();
                inp.ids = vec![(3 + s as u32 * 7 + prompts[g][0]) % 50];
                inp.positions = vec![len as u32];
                inp.key_mask[0].push(1);
            }
        }
        out
    }

    /// The `n` sampled rows of one prompt prefill it once and decode exactly what each row
    /// decodes alone.
    #[test]
    fn equal_prompts_prefill_once_with_the_same_completions() {
        for name in ["tiny-gpt-neox", "tiny-llama", "tiny-qwen2"] {
            let Some(dir) = trust_core::testing::repo_path(fixture(name)) else {
                return;
            };
            let m = CandleModel::load(&dir, &LoadOptions::default()).unwrap();
            let row = |prompt: Vec<u32>, seed: u64| RowSpec {
                prompt,
                max_new_tokens: 9,
                sampler: Sampler::Sample {
                    rng: SplitMix64::new(seed),
                    temperature: 1.0,
                    top_p: 0.95,
                    top_k: 0,
                },
                stop_ids: Vec::new(),
                stop_strings: Vec::new(),
            };
            let a = vec![5u32, 9, 2, 7, 3];
            let b = vec![8u32, 1, 6, 4, 4];
            let rows = vec![
                row(a.clone(), 1),
                row(a.clone(), 2),
                row(a.clone(), 3),
                row(b.clone(), 4),
                row(b.clone(), 5),
            ];
            let (_, prefill) = RowGroup::new(rows.clone(), 2048);
            assert_eq!(
                prefill.key_mask.len(),
                2,
                "{name}: one prefill row per prompt"
            );
            let together = generate_batch(m.model(), m.tokenizer(), &mut rows.clone()).unwrap();
            for (i, r) in rows.iter().enumerate() {
                let alone = generate_batch(m.model(), m.tokenizer(), &mut [r.clone()]).unwrap();
                assert_eq!(alone[0], together[i], "{name}: row {i}");
            }
            assert_ne!(
                together[0].token_ids, together[1].token_ids,
                "{name}: seeds differ"
            );
        }
    }

    /// Bit-identical logits for a group alone and sharing passes with others (prefill mixed
    /// with decode steps), on every fixture family; catches gemm's small-product kernels (see
    /// `CausalLm::min_rows`).
    #[test]
    fn shared_passes_give_bit_identical_logits() {
        for name in ["tiny-gpt-neox", "tiny-llama", "tiny-qwen2", "tiny-llama3"] {
            let Some(dir) = trust_core::testing::repo_path(fixture(name)) else {
                return;
            };
            let m = CandleModel::load(&dir, &LoadOptions::default()).unwrap();
            let lm = m.model();
            let prompts = vec![
                vec![5u32, 9, 2, 7],
                vec![11u32],
                vec![4u32, 4, 8, 1, 3, 3, 9],
            ];
            let together = run_groups(lm, &prompts, 4);
            for (g, p) in prompts.iter().enumerate() {
                let alone = run_groups(lm, std::slice::from_ref(p), 4);
                assert_eq!(alone[0], together[g], "{name}: group {g}");
            }
        }
    }
}
