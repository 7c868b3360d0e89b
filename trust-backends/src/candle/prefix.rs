//! Prefix-shared log-likelihood scoring (a prefix tree over the requests of one call).
//!
//! lm-evaluation-harness-style requests repeat long token prefixes: a six-shot primer before every
//! question, each question before each of its options. Scored one by one, every request runs its
//! whole sequence through the model. Here the requests of a call are sorted by their token ids;
//! runs of neighbours sharing enough tokens beyond their parent's prefix get a node whose shared
//! tokens run once, on top of the parent's KV cache (one row); the requests left at a node are
//! scored in batches from that node's cache (replicated per row), running only their own tokens.
//!
//! **Bit-identical to unshared scoring.** A request's shared prefix never covers its last context
//! token, so every position whose logits are read lies in its own suffix. Each pass is laid out so
//! that a token's arithmetic is the one of the unshared pass: the position-wise layers see packed
//! real tokens only (their per-row results never depend on the other rows, see
//! `CausalLm::min_rows`); attention sees the real keys at the same indices, then masked keys
//! (exact zeros after the softmax) up to a multiple of 32 keys, as the unshared pass pads its rows
//! (candle's CPU reductions step 32 floats at a time); and the query rows of a pass are enough
//! for gemm's general kernel, whose per-element sums do not depend on the number of rows. The
//! prefix passes keep only the real tokens' keys and values. `prefix_scoring_is_bit_identical`
//! checks it on every fixture family.

use trust_core::{LogLikelihood, ModelError};

use super::CandleModel;
use super::layers::KvCache;

/// A scoring row: request index, context + continuation ids, context length (≥ 1).
type Row = (usize, Vec<u32>, usize);

/// A node gets its own prefix pass when its requests share at least this many tokens beyond
/// their parent's prefix...
const MIN_EXTENSION: usize = 8;
/// ... and sharing saves at least this many token computations.
const MIN_SAVED: usize = 64;

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Requests waiting to be scored from their node's cache; flushed as one pass (one part per
/// node) once they hold a batch of rows.
#[derive(Default)]
struct Pending {
    /// (node cache, node depth, rows).
    jobs: Vec<(KvCache, usize, Vec<Row>)>,
    rows: usize,
}

type Out<'a> = &'a mut [Option<Result<LogLikelihood, ModelError>>];

fn fail(out: Out<'_>, rows: &[Row], e: &candle_core::Error) {
    for r in rows {
        out[r.0] = Some(Err(ModelError::Backend(e.to_string())));
    }
}

/// Writes a scored batch's results (or its error, to every row) to `out[request index]`.
pub(crate) fn deliver(out: Out<'_>, rows: &[Row], scored: candle_core::Result<Vec<LogLikelihood>>) {
    match scored {
        Ok(results) => {
            for ((i, _, _), r) in rows.iter().zip(results) {
                out[*i] = Some(Ok(r));
            }
        }
        Err(e) => fail(out, rows, &e),
    }
}

impl CandleModel {
    /// Scores `rows` with shared prefixes, writing each result to `out[request index]`;
    /// returns the number of tokens the passes ran (unshared: every row's length).
    pub(crate) fn score_prefix_shared(&self, mut rows: Vec<Row>, out: Out<'_>) -> usize {
        rows.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        let mut pending = Pending::default();
        let ran = self.score_node(&rows, 0, None, &mut pending, out);
        self.flush(&mut pending, out);
        ran
    }

    /// The fewest new tokens of a pass over `depth` cached positions, and its padded key count
    /// (a multiple of 32 holding `depth + need` keys) such that every matrix product of its
    /// attention runs on gemm's general kernel (at least 2 rows and more than 256 outputs).
    fn pass_shape(&self, depth: usize, need: usize) -> (usize, usize) {
        let hd = self.lm.config().head_dim.max(1);
        let mut total = (depth + need).div_ceil(32).max(1) * 32;
        loop {
            let t = total - depth;
            if t >= 2 && t * total > 256 && t * hd > 256 {
                return (t, total);
            }
            total += 32;
        }
    }

    /// The runs of `rows` (sorted by ids, sharing their first `depth` tokens) that get a node of
    /// their own, as (range, shared length); the other rows are left to this node.
    fn runs(rows: &[Row], depth: usize) -> (Vec<(std::ops::Range<usize>, usize)>, Vec<Row>) {
        let mut runs = Vec::new();
        let mut leaves = Vec::new();
        // A row can share MIN_EXTENSION more tokens and keep its last context token in its own
        // suffix.
        let fits = |r: &Row| r.2 > depth + MIN_EXTENSION;
        let mut i = 0;
        while i < rows.len() {
            let mut j = i + 1;
            let mut share = rows[i].2 - 1;
            if fits(&rows[i]) {
                while j < rows.len() && fits(&rows[j]) {
                    let l = common_prefix(&rows[j - 1].1, &rows[j].1);
                    if l < depth + MIN_EXTENSION {
                        break;
                    }
                    share = share.min(l).min(rows[j].2 - 1);
                    j += 1;
                }
            }
            let n = j - i;
            if n >= 2 && share >= depth + MIN_EXTENSION && (n - 1) * (share - depth) >= MIN_SAVED {
                runs.push((i..j, share));
            } else {
                leaves.extend_from_slice(&rows[i..j]);
            }
            i = j;
        }
        (runs, leaves)
    }

    /// `rows` (sorted by ids) all share their first `depth` tokens, whose keys and values are
    /// in `cache` (one row; `None` when `depth` = 0). Returns the tokens run.
    fn score_node(
        &self,
        rows: &[Row],
        depth: usize,
        cache: Option<&KvCache>,
        pending: &mut Pending,
        out: Out<'_>,
    ) -> usize {
        let mut ran = 0;
        let (runs, mut leaves) = Self::runs(rows, depth);
        // Children's prefixes: a batch of siblings per pass, each child scored before the next
        // batch is extended (so at most a batch of child caches is alive).
        for batch in runs.chunks(self.batch_size.max(1)) {
            let tokens: Vec<&[u32]> = batch
                .iter()
                .map(|(r, share)| &rows[r.start].1[depth..*share])
                .collect();
            match self.extend_prefixes(cache, depth, &tokens) {
                Ok(children) => {
                    for ((r, share), child) in batch.iter().zip(children) {
                        ran += share - depth;
                        ran +=
                            self.score_node(&rows[r.clone()], *share, Some(&child), pending, out);
                    }
                }
                Err(e) => {
                    for (r, _) in batch {
                        fail(out, &rows[r.clone()], &e);
                    }
                }
            }
        }
        leaves.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
        for chunk in leaves.chunks(self.batch_size.max(1)) {
            ran += chunk.iter().map(|r| r.1.len() - depth).sum::<usize>();
            match cache {
                // Rows sharing nothing: the unshared path.
                None => deliver(out, chunk, self.score_batch(chunk)),
                Some(c) => {
                    pending.rows += chunk.len();
                    pending.jobs.push((c.clone(), depth, chunk.to_vec()));
                    if pending.rows >= self.batch_size {
                        self.flush(pending, out);
                    }
                }
            }
        }
        ran
    }

    /// Runs each `(depth, suffixes)` as one part over its cache (replicated to one row per
    /// suffix) in a single pass, padded as [`Self::pass_shape`] says; returns each part's final
    /// hidden states `[rows, t, hidden]`.
    fn run_parts(
        &self,
        inputs: &[(usize, Vec<&[u32]>)],
        caches: &mut [KvCache],
    ) -> candle_core::Result<Vec<candle_core::Tensor>> {
        let mut shaped = Vec::with_capacity(inputs.len());
        for ((depth, suffixes), c) in inputs.iter().zip(caches.iter_mut()) {
            let longest = suffixes.iter().map(|s| s.len()).max().unwrap_or(0);
            let (t, total) = self.pass_shape(*depth, longest);
            if suffixes.len() > 1 {
                c.reorder(&vec![0u32; suffixes.len()])?;
            }
            shaped.push((super::padded_rows(*depth, suffixes, t, total), t));
        }
        let mut parts: Vec<super::PackedPart<'_>> = shaped
            .iter_mut()
            .zip(caches.iter_mut())
            .zip(inputs)
            .map(
                |((((ids, positions, mask), t), c), (_, suffixes))| super::PackedPart {
                    ids: std::mem::take(ids),
                    positions: std::mem::take(positions),
                    key_mask: mask,
                    b: suffixes.len(),
                    t: *t,
                    cache: Some(c),
                },
            )
            .collect();
        self.lm.forward_packed_parts(&mut parts)
    }

    /// The caches of `depth + tokens[i].len()` positions: each `tokens[i]` run on top of
    /// `cache` (one row), all in one pass.
    fn extend_prefixes(
        &self,
        cache: Option<&KvCache>,
        depth: usize,
        tokens: &[&[u32]],
    ) -> candle_core::Result<Vec<KvCache>> {
        let mut caches: Vec<KvCache> = tokens
            .iter()
            .map(|_| match cache {
                Some(c) => c.clone(),
                None => KvCache::new(self.lm.config().num_hidden_layers),
            })
            .collect();
        let inputs: Vec<(usize, Vec<&[u32]>)> = tokens.iter().map(|&t| (depth, vec![t])).collect();
        self.run_parts(&inputs, &mut caches)?;
        for (c, tok) in caches.iter_mut().zip(tokens) {
            c.truncate(depth + tok.len())?;
        }
        Ok(caches)
    }

    /// Scores the pending requests in one pass, each node's rows a part over its replicated
    /// cache (their tokens were counted when queued).
    fn flush(&self, pending: &mut Pending, out: Out<'_>) {
        let jobs = std::mem::take(&mut pending.jobs);
        pending.rows = 0;
        if jobs.is_empty() {
            return;
        }
        let inputs: Vec<(usize, Vec<&[u32]>)> = jobs
            .iter()
            .map(|(_, depth, rows)| (*depth, rows.iter().map(|r| &r.1[*depth..]).collect()))
            .collect();
        let mut caches: Vec<KvCache> = jobs.iter().map(|(c, _, _)| c.clone()).collect();
        let hidden = self.run_parts(&inputs, &mut caches);
        drop(caches);
        match hidden {
            Ok(hidden) => {
                for ((_, depth, rows), h) in jobs.iter().zip(hidden) {
                    deliver(out, rows, self.continuation_logprobs(&h, rows, *depth));
                }
            }
            Err(e) => {
                for (_, _, rows) in &jobs {
                    fail(out, rows, &e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candle::LoadOptions;
    use crate::candle::generate::tests::fixture;

    /// Rows shaped like lm-eval's multiple-choice requests: a primer shared by all, questions
    /// shared by their options, plus rows sharing nothing and a row whose context is the bare
    /// primer.
    fn rows(vocab: u32) -> Vec<Row> {
        let mut rng = trust_core::rng::SplitMix64::new(7);
        let mut draw = |n: usize| -> Vec<u32> {
            (0..n)
                .map(|_| 1 + (rng.next_u64() % (vocab as u64 - 1)) as u32)
                .collect()
        };
        let primer = draw(45);
        let mut rows = Vec::new();
        for q in 0..5 {
            let question = draw(3 + 4 * q);
            for _ in 0..(2 + q) {
                let mut ids = primer.clone();
                ids.extend(&question);
                let plen = ids.len();
                let opt = draw(1 + rows.len() % 5);
                ids.extend(opt);
                rows.push((rows.len(), ids, plen));
            }
        }
        for n in [3usize, 20, 70] {
            let ids = draw(n);
            rows.push((rows.len(), ids, n - 1));
        }
        let mut bare = primer.clone();
        bare.extend(draw(2));
        rows.push((rows.len(), bare, primer.len()));
        rows
    }

    /// Shared scoring runs fewer tokens and gives the unshared log-probabilities to the bit, for
    /// every fixture family and for batch sizes that split the nodes' rows differently.
    #[test]
    fn prefix_scoring_is_bit_identical() {
        for name in ["tiny-gpt-neox", "tiny-llama", "tiny-qwen2", "tiny-llama3"] {
            let Some(dir) = trust_core::testing::repo_path(fixture(name)) else {
                return;
            };
            for batch in [1usize, 3, 8] {
                let opts = LoadOptions {
                    batch_size: batch,
                    ..LoadOptions::default()
                };
                let m = CandleModel::load(&dir, &opts).unwrap();
                let rows = rows(m.model().config().vocab_size as u32);
                let total: usize = rows.iter().map(|r| r.1.len()).sum();
                let mut shared = vec![None; rows.len()];
                let ran = m.score_prefix_shared(rows.clone(), &mut shared);
                assert!(ran * 2 < total, "{name}: {ran} of {total} tokens run");
                for r in &rows {
                    let alone = m.score_batch(std::slice::from_ref(r)).unwrap().remove(0);
                    let got = shared[r.0].clone().unwrap().unwrap();
                    assert_eq!(got, alone, "{name}, batch {batch}, row {}", r.0);
                }
            }
        }
    }
}
