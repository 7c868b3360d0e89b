//! Candle backend: GPT-NeoX (Pythia), Llama and Qwen2 causal LMs loaded from a local Hugging Face
//! directory (`config.json`, `tokenizer.json`, `model.safetensors` or a sharded
//! `model.safetensors.index.json`).
//!
//! Two layers:
//!
//! - [`CausalLm`]: the synchronous model. [`CausalLm::forward`] returns full-sequence logits
//!   `[b, t, vocab]` for any attention mask / position ids, with an optional [`KvCache`]. Models
//!   are built from a [`candle_nn::VarBuilder`], so they can be backed by trainable `Var`s
//!   ([`CausalLm::from_var_builder`]) as well as by memory-mapped weights, and the forward pass
//!   only uses differentiable candle ops.
//! - [`CandleModel`]: tokenizer + model implementing [`trust_core::LanguageModel`] (generation
//!   with greedy or seeded sampling, log-likelihood scoring), with the sha256 of the weights in
//!   [`trust_core::ModelInfo`].
//!
//! The async trait methods run the computation synchronously on the calling thread (they block
//! it; candle itself parallelises matmuls over its own thread pool). Callers that must not block
//! an async executor should wrap calls in `tokio::task::spawn_blocking` with an `Arc` of the
//! model.
//!
//! Numerics follow Hugging Face transformers' eager implementation: norms and softmax in f32,
//! log-probabilities from an f32 log-softmax. On the shared HF fixtures the f32 port agrees to
//! about 1e-5 with transformers.

pub mod beam;
pub mod chat;
pub mod config;
pub mod generate;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod gpt_neox;
mod layers;
pub mod llama;
pub mod loader;
mod prefix;
pub mod qwen2;
pub mod tiny;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use trust_core::rng::{SplitMix64, derive_seed};
use trust_core::{
    Capabilities, Capability, Completion, GenerateRequest, GenerateResponse, LogLikelihood,
    LogLikelihoodRequest, ModelError, ModelInfo, Sampling, StopPolicy,
};

pub use chat::{ChatMessage, ChatTemplate};
pub use config::{Activation, Architecture, ModelConfig, RopeConfig, RopeScaling};
pub use generate::{RowSpec, Sampler};
pub use layers::KvCache;

/// One part of [`CausalLm::forward_packed_parts`]: `b` rows of `t` new tokens (row-major ids and
/// positions), key mask rows over the cached positions and the new ones, and the part's cache.
pub(crate) struct PackedPart<'a> {
    pub(crate) ids: Vec<u32>,
    pub(crate) positions: Vec<u32>,
    pub(crate) key_mask: &'a [Vec<u32>],
    pub(crate) b: usize,
    pub(crate) t: usize,
    pub(crate) cache: Option<&'a mut KvCache>,
}

/// The row-major ids and positions (`[b * t]`) and key masks (`[b][total]`) of `suffixes` run
/// on `depth` cached positions: each suffix right-padded with id 0 / position 0 to `t` tokens,
/// its mask 1 over the cached and real positions and 0 up to `total` keys.
pub(crate) fn padded_rows(
    depth: usize,
    suffixes: &[&[u32]],
    t: usize,
    total: usize,
) -> (Vec<u32>, Vec<u32>, Vec<Vec<u32>>) {
    let b = suffixes.len();
    let mut ids = Vec::with_capacity(b * t);
    let mut pos = Vec::with_capacity(b * t);
    let mut mask = Vec::with_capacity(b);
    for s in suffixes {
        ids.extend_from_slice(s);
        ids.extend(std::iter::repeat_n(0u32, t - s.len()));
        pos.extend(depth as u32..(depth + s.len()) as u32);
        pos.extend(std::iter::repeat_n(0u32, t - s.len()));
        let mut m = vec![1u32; depth + s.len()];
        m.resize(total, 0);
        mask.push(m);
    }
    (ids, pos, mask)
}
pub use loader::{ModelFormat, SafetensorsStore, SourceBackend, StoreBackend, WeightSource};

use crate::BackendError;

#[derive(Debug, Clone)]
enum Arch {
    GptNeoX(gpt_neox::GptNeoX),
    Llama(llama::Llama),
}

/// A causal language model (any supported family), synchronous API.
#[derive(Debug, Clone)]
pub struct CausalLm {
    arch: Arch,
    config: ModelConfig,
    device: Device,
    dtype: DType,
}

impl CausalLm {
    /// Builds the model described by `config` from `vb` (mmap'd weights, a `VarMap`, ...). The
    /// compute dtype and device are those of `vb`.
    pub fn from_var_builder(config: &ModelConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::build(config, vb, None)
    }

    fn build(
        config: &ModelConfig,
        vb: VarBuilder,
        quant: Option<&dyn layers::QuantSource>,
    ) -> candle_core::Result<Self> {
        let device = vb.device().clone();
        let dtype = vb.dtype();
        let arch = match config.arch {
            Architecture::GptNeoX => {
                if quant.is_some() {
                    candle_core::bail!("quantized weights are supported for llama and qwen2 only");
                }
                Arch::GptNeoX(gpt_neox::GptNeoX::load(config, vb)?)
            }
            Architecture::Llama => Arch::Llama(llama::Llama::load_q(config, vb, quant)?),
            Architecture::Qwen2 => Arch::Llama(qwen2::load_q(config, vb, quant)?),
        };
        Ok(CausalLm {
            arch,
            config: config.clone(),
            device,
            dtype,
        })
    }

    /// The parsed configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Compute device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Longest sequence (positions `0..max_positions()`).
    pub fn max_positions(&self) -> usize {
        match &self.arch {
            Arch::GptNeoX(m) => m.rope.max_positions(),
            Arch::Llama(m) => m.rope.max_positions(),
        }
    }

    /// An empty KV cache for this model (the flat layout for f32 on the CPU, see
    /// [`KvCache`]).
    pub fn new_cache(&self) -> KvCache {
        if self.device.is_cpu() && self.dtype == DType::F32 {
            KvCache::new_flat(self.config.num_hidden_layers)
        } else {
            KvCache::new(self.config.num_hidden_layers)
        }
    }

    /// Logits `[b, t, vocab]` (compute dtype) for every position of `input_ids` `[b, t]` (u32).
    ///
    /// - `attention_mask`: `[b, past + t]` (any numeric dtype, nonzero = attend), covering the
    ///   cached positions too, as in transformers. `None` = attend to everything (causally).
    /// - `position_ids`: `[b, t]` (u32). `None` = `cumsum(mask) - 1` over the mask (padding set
    ///   to 1) when a mask is given, else `past..past + t`.
    /// - `cache`: appended to when given (incremental decoding).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor> {
        let h = self.forward_hidden(input_ids, attention_mask, position_ids, cache)?;
        self.lm_head(&h)
    }

    /// Like [`Self::forward`] but returns the final hidden states `[b, t, hidden]` (after the final
    /// norm), so callers can project only the positions they need with [`Self::lm_head`].
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let (key_mask, positions) =
            self.mask_and_positions(b, t, past, attention_mask, position_ids)?;
        self.forward_hidden_with(input_ids, &key_mask, &positions, cache)
    }

    /// The hidden states `[b, t, hidden]` entering block `layers` of `input_ids` `[b, t]`: the
    /// first `layers` decoder blocks applied to the embeddings (`layers = 0`: the embeddings
    /// themselves), no final norm, no cache. `attention_mask` as in [`Self::forward`].
    ///
    /// With [`Self::forward_hidden_from`] this splits [`Self::forward_hidden`] in two, with
    /// bit-identical results: models that share their first blocks (a base model and LoRA
    /// fine-tunes of its later blocks, a DPO policy and its reference) compute that *frozen
    /// prefix* once for all of them.
    pub fn forward_prefix(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        layers: usize,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let n_layers = self.config.num_hidden_layers;
        if layers > n_layers {
            candle_core::bail!("forward_prefix: {layers} blocks asked, the model has {n_layers}");
        }
        let ids = input_ids.flatten_all()?;
        let x = match &self.arch {
            Arch::GptNeoX(m) => m.embed(&ids)?,
            Arch::Llama(m) => m.embed(&ids)?,
        };
        self.blocks_uncached(x, b, t, attention_mask, 0..layers, false)
    }

    /// The final hidden states `[b, t, hidden]` (after the final norm, as
    /// [`Self::forward_hidden`] returns them) from `hidden` `[b, t, hidden]`, the states entering
    /// block `start` (from [`Self::forward_prefix`] of a model whose first `start` blocks equal
    /// this one's). No cache.
    pub fn forward_hidden_from(
        &self,
        hidden: &Tensor,
        attention_mask: Option<&Tensor>,
        start: usize,
    ) -> candle_core::Result<Tensor> {
        let (b, t, h) = hidden.dims3()?;
        let n_layers = self.config.num_hidden_layers;
        if start > n_layers {
            candle_core::bail!(
                "forward_hidden_from: block {start} asked, the model has {n_layers}"
            );
        }
        if h != self.config.hidden_size {
            candle_core::bail!(
                "forward_hidden_from: hidden size {h}, the model has {}",
                self.config.hidden_size
            );
        }
        let x = hidden.reshape((b * t, h))?;
        self.blocks_uncached(x, b, t, attention_mask, start..n_layers, true)
    }

    /// Blocks `layers` on `x` `[b * t, hidden]` without a cache (and the final norm when
    /// `final_norm`), positions and masks from `attention_mask` as in [`Self::forward`]:
    /// `[b, t, hidden]`.
    fn blocks_uncached(
        &self,
        x: Tensor,
        b: usize,
        t: usize,
        attention_mask: Option<&Tensor>,
        layers: std::ops::Range<usize>,
        final_norm: bool,
    ) -> candle_core::Result<Tensor> {
        let (key_mask, positions) = self.mask_and_positions(b, t, 0, attention_mask, None)?;
        self.check_positions(&positions)?;
        let (cos, sin) = self.rope().gather_flat(&positions.flatten_all()?)?;
        let mut segs = layers::Segments {
            segs: vec![layers::Segment::new(b, t, &key_mask, None, None)?],
            cos,
            sin,
            extra: 0,
        };
        let x = match &self.arch {
            Arch::GptNeoX(m) => {
                let x = m.forward_blocks(x, layers, &mut segs)?;
                if final_norm { m.final_norm(&x)? } else { x }
            }
            Arch::Llama(m) => {
                let x = m.forward_blocks(x, layers, &mut segs)?;
                if final_norm { m.final_norm(&x)? } else { x }
            }
        };
        x.reshape((b, t, ()))
    }

    /// Per-row key masks (1 = attend) over `past + t` keys and the position ids `[b, t]` of
    /// [`Self::forward_hidden`].
    fn mask_and_positions(
        &self,
        b: usize,
        t: usize,
        past: usize,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
    ) -> candle_core::Result<(Vec<Vec<u32>>, Tensor)> {
        let key_mask: Vec<Vec<u32>> = match attention_mask {
            Some(m) => {
                let dims = m.dims2()?;
                if dims != (b, past + t) {
                    candle_core::bail!(
                        "attention_mask must be [{b}, {}], got {:?}",
                        past + t,
                        dims
                    );
                }
                m.to_dtype(DType::F32)?
                    .to_vec2::<f32>()?
                    .into_iter()
                    .map(|r| r.into_iter().map(|x| u32::from(x != 0.0)).collect())
                    .collect()
            }
            None => vec![vec![1; past + t]; b],
        };
        let positions = match position_ids {
            Some(p) => p.to_dtype(DType::U32)?,
            None => {
                let mut pos = Vec::with_capacity(b * t);
                for row in &key_mask {
                    let mut c = 0u32;
                    let mut all = Vec::with_capacity(row.len());
                    for &m in row {
                        c += m;
                        all.push(if m == 0 { 1 } else { c - 1 });
                    }
                    pos.extend_from_slice(&all[past..]);
                }
                Tensor::from_vec(pos, (b, t), &self.device)?
            }
        };
        Ok((key_mask, positions))
    }

    pub(crate) fn forward_hidden_with(
        &self,
        input_ids: &Tensor,
        key_mask: &[Vec<u32>],
        positions: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        self.check_positions(positions)?;
        let (cos, sin) = self.rope().gather_flat(&positions.flatten_all()?)?;
        let mut segs = layers::Segments {
            segs: vec![layers::Segment::new(b, t, key_mask, cache, None)?],
            cos,
            sin,
            extra: 0,
        };
        self.forward_segments(&input_ids.flatten_all()?, &mut segs)?
            .reshape((b, t, ()))
    }

    fn rope(&self) -> &layers::Rope {
        match &self.arch {
            Arch::GptNeoX(m) => &m.rope,
            Arch::Llama(m) => &m.rope,
        }
    }

    fn check_positions(&self, positions: &Tensor) -> candle_core::Result<()> {
        let max = positions.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
        if max >= self.max_positions() {
            candle_core::bail!(
                "position {max} is beyond max_position_embeddings = {}",
                self.max_positions()
            );
        }
        Ok(())
    }

    fn forward_segments(
        &self,
        ids: &Tensor,
        segs: &mut layers::Segments,
    ) -> candle_core::Result<Tensor> {
        match &self.arch {
            Arch::GptNeoX(m) => m.forward_segments(ids, segs),
            Arch::Llama(m) => m.forward_segments(ids, segs),
        }
    }

    /// One forward pass over independent parts, each `b` rows of `t` new tokens on top of its
    /// own cache (or none), padding (mask 0 among the new tokens) not computed; returns each
    /// part's final hidden states `[b, t, hidden]` (zeros at padding). Parts never attend to
    /// each other and the position-wise layers treat rows independently (padded to
    /// [`Self::min_rows`]), so a part's results do not depend on the other parts of the pass.
    pub(crate) fn forward_packed_parts(
        &self,
        parts: &mut [PackedPart<'_>],
    ) -> candle_core::Result<Vec<Tensor>> {
        let dev = &self.device;
        let max_pos = self.max_positions() as u32;
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        let mut packs = Vec::with_capacity(parts.len());
        let mut segs = Vec::with_capacity(parts.len());
        for part in parts.iter_mut() {
            let (b, t) = (part.b, part.t);
            if part.ids.len() != b * t || part.positions.len() != b * t || part.key_mask.len() != b
            {
                candle_core::bail!("malformed packed part ({b} rows of {t} tokens)");
            }
            let new_mask: Vec<Vec<u32>> = part
                .key_mask
                .iter()
                .map(|r| r[r.len().saturating_sub(t)..].to_vec())
                .collect();
            for (r, row) in new_mask.iter().enumerate() {
                for p in 0..t {
                    if row.get(p).copied().unwrap_or(1) != 0 {
                        let at = r * t + p;
                        if part.positions[at] >= max_pos {
                            candle_core::bail!(
                                "position {} is beyond max_position_embeddings = {max_pos}",
                                part.positions[at]
                            );
                        }
                        ids.push(part.ids[at]);
                        pos.push(part.positions[at]);
                    }
                }
            }
            let pack = layers::Packing::new(&new_mask, t, dev)?;
            packs.push(pack.clone());
            segs.push(layers::Segment::new(
                b,
                t,
                part.key_mask,
                part.cache.as_deref_mut(),
                Some(pack),
            )?);
        }
        let n = ids.len();
        let extra = if n > 0 {
            self.min_rows().saturating_sub(n)
        } else {
            0
        };
        let ids = layers::pad_last_row(&Tensor::from_vec(ids, n, dev)?, extra)?;
        let pos = layers::pad_last_row(&Tensor::from_vec(pos, n, dev)?, extra)?;
        let (cos, sin) = self.rope().gather_flat(&pos)?;
        let counts: Vec<usize> = segs.iter().map(|s| s.n).collect();
        let mut segs = layers::Segments {
            segs,
            cos,
            sin,
            extra,
        };
        let x = self.forward_segments(&ids, &mut segs)?;
        let mut out = Vec::with_capacity(parts.len());
        let mut off = 0;
        for ((part, pack), c) in parts.iter().zip(&packs).zip(counts) {
            let xs = x.narrow(0, off, c)?;
            out.push(pack.unpack(&xs)?.reshape((part.b, part.t, ()))?);
            off += c;
        }
        Ok(out)
    }

    /// One forward pass over independent groups of rows (see [`generate::Step`]), each with its
    /// own cache; returns the final hidden state of the last position of every row, `[R,
    /// hidden]` in group order. A group's results do not depend on the other groups of the pass:
    /// the position-wise layers run on all tokens as one matrix product (padded to
    /// [`Self::min_rows`] rows) and attention runs per group.
    pub(crate) fn forward_steps(
        &self,
        steps: &mut [generate::Step<'_>],
    ) -> candle_core::Result<Tensor> {
        let dev = &self.device;
        let mut ids = Vec::new();
        let mut pos = Vec::new();
        let mut segs = Vec::with_capacity(steps.len());
        let mut last = Vec::new();
        let max_pos = self.max_positions() as u32;
        for st in steps.iter_mut() {
            let b = st.key_mask.len();
            let t = st.ids.len() / b.max(1);
            if b == 0 || t == 0 || st.ids.len() != b * t || st.positions.len() != b * t {
                candle_core::bail!("malformed generation step ({b} rows, {} ids)", st.ids.len());
            }
            if let Some(&p) = st.positions.iter().find(|&&p| p >= max_pos) {
                candle_core::bail!("position {p} is beyond max_position_embeddings = {max_pos}");
            }
            let base = ids.len();
            ids.extend_from_slice(st.ids);
            pos.extend_from_slice(st.positions);
            last.extend((0..b).map(|r| (base + r * t + t - 1) as u32));
            segs.push(layers::Segment::new(
                b,
                t,
                st.key_mask,
                Some(&mut *st.cache),
                None,
            )?);
        }
        let extra = self.min_rows().saturating_sub(ids.len());
        let n = ids.len();
        let ids = layers::pad_last_row(&Tensor::from_vec(ids, n, dev)?, extra)?;
        let pos = layers::pad_last_row(&Tensor::from_vec(pos, n, dev)?, extra)?;
        let (cos, sin) = self.rope().gather_flat(&pos)?;
        let mut segs = layers::Segments {
            segs,
            cos,
            sin,
            extra,
        };
        let hidden = self.forward_segments(&ids, &mut segs)?;
        let r = last.len();
        hidden.index_select(&Tensor::from_vec(last, r, dev)?, 0)
    }

    /// Logits `[R, vocab]` (f32) of hidden rows `[R, hidden]`, padded like the trunk (see
    /// [`Self::min_rows`]) so that each row's logits never depend on the other rows.
    pub(crate) fn lm_head_rows(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let r = hidden.dim(0)?;
        let extra = rows_for_width(self.config.vocab_size).saturating_sub(r);
        self.lm_head(&layers::pad_last_row(hidden, extra)?)?
            .narrow(0, 0, r)?
            .to_dtype(DType::F32)
    }

    /// The fewest rows a batched matrix product of this model gets (padded with copies) when
    /// results must not depend on batch composition. gemm 0.19 (candle's CPU matmul) computes
    /// a row-major `[m, k] x [k, n]` product with a matrix-vector kernel when `m == 1` and with
    /// a "horizontal" kernel when `m * n <= 256`, each summing in another order than its general
    /// kernel; above both, every output row depends only on its own input row. So the rows must
    /// be at least 2 and more than `256 / n` for the narrowest projection `n` of the model.
    /// (`loglikelihood_is_identical_across_batch_sizes` and the generation batching tests on
    /// the tiny fixtures, whose widths are as small as 12, check this.)
    pub(crate) fn min_rows(&self) -> usize {
        let c = &self.config;
        let widths = [
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads.max(1) * c.head_dim,
            c.hidden_size,
            c.intermediate_size,
        ];
        let narrowest = widths.into_iter().filter(|&w| w > 0).min().unwrap_or(1);
        rows_for_width(narrowest)
    }

    /// Projects hidden states to logits (`[..., hidden]` -> `[..., vocab]`).
    pub fn lm_head(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        match &self.arch {
            Arch::GptNeoX(m) => m.lm_head(hidden),
            Arch::Llama(m) => m.lm_head(hidden),
        }
    }
}

/// The fewest rows for which gemm computes an `[m, k] x [k, width]` product with its general
/// kernel (see [`CausalLm::min_rows`]).
fn rows_for_width(width: usize) -> usize {
    2usize.max(256 / width.max(1) + 1)
}

/// `log_softmax(row)[i]`: `(x_i - max) - ln(sum_j exp(x_j - max))`, the exponentials in f32 (as
/// an f32 log-softmax computes them) summed in f64 in index order (a sequential f32 sum over a
/// 50k vocabulary drifts by ~1e-5).
fn log_softmax_at(row: &[f32], i: usize) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&x| (x - max).exp() as f64).sum();
    ((row[i] - max) as f64 - sum.ln()) as f32
}

/// Parses a device string: `cpu`, `cuda` or `cuda:N`. CUDA needs the `cuda` feature.
pub fn parse_device(s: &str) -> Result<Device, BackendError> {
    let s = s.trim();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                BackendError::Device(format!("invalid device `{s}` (use cpu, cuda or cuda:N)"))
            })?,
        None => {
            return Err(BackendError::Device(format!(
                "invalid device `{s}` (use cpu, cuda or cuda:N)"
            )));
        }
    };
    if cfg!(feature = "cuda") {
        Device::new_cuda(ordinal).map_err(|e| BackendError::Device(format!("cuda:{ordinal}: {e}")))
    } else {
        Err(BackendError::Device(format!(
            "`{s}` requested but trust-backends was built without the `cuda` feature"
        )))
    }
}

/// Parses a dtype string: `f32`, `f16` or `bf16` (also `float32`, `float16`, `bfloat16`).
pub fn parse_dtype(s: &str) -> Result<DType, BackendError> {
    match s.trim() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(BackendError::Runtime(format!(
            "unsupported dtype `{other}` (use f32, f16 or bf16)"
        ))),
    }
}

/// How to load a [`CandleModel`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Compute dtype (weights are converted on load). Default f32.
    pub dtype: DType,
    /// Device. Default CPU.
    pub device: Device,
    /// Rows per forward pass for generation and scoring. Default 8.
    pub batch_size: usize,
    /// Generation: let prompts of different lengths share a left-padded batch (faster for many
    /// distinct prompts). Default `false`: a batch only holds prompts of the same token length,
    /// which makes every completion bit-identical whatever it is batched with (the `n` samples of
    /// one prompt still share batches). With `true`, padded rows agree with unpadded ones only up
    /// to float rounding (~1e-6 in logits), which can very rarely flip a sampled token.
    pub pad_generation_batches: bool,
    /// Generation: the most rows decoded together in one forward pass, across requests (each
    /// group of up to `batch_size` rows, each beam search counting `num_beams` rows). Groups
    /// never attend to each other, so this changes speed, not results. Default 64.
    pub max_batch_rows: usize,
    /// GGUF models: keep the projection and output weights in their stored (quantized) types and
    /// multiply with candle's quantized kernels (faster, less memory) instead of dequantising
    /// them to `dtype` (the default: exact, and what training needs). Ignored for safetensors.
    pub quantized: bool,
    /// Log-likelihood scoring: compute a token prefix that several requests of one call share
    /// once (a prefix tree over the call's requests) and score each request from its KV cache.
    /// The log-probabilities are bit-identical to scoring every request on its own; `false`
    /// (`--no-prefix-sharing`) scores each request in full, for comparison. Default `true`.
    pub prefix_sharing: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DType::F32,
            device: Device::Cpu,
            batch_size: 8,
            pad_generation_batches: false,
            max_batch_rows: 64,
            quantized: false,
            prefix_sharing: true,
        }
    }
}

/// A tokenizer plus a [`CausalLm`], implementing [`trust_core::LanguageModel`].
#[derive(Debug, Clone)]
pub struct CandleModel {
    lm: Arc<CausalLm>,
    tokenizer: Arc<tokenizers::Tokenizer>,
    chat_template: Option<Arc<ChatTemplate>>,
    info: ModelInfo,
    batch_size: usize,
    pad_generation_batches: bool,
    max_batch_rows: usize,
    prefix_sharing: bool,
}

fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".to_string(),
        d => format!("{:?}", d.location()),
    }
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "other",
    }
}

impl CandleModel {
    /// Loads a model: a Hugging Face directory (`config.json`, `tokenizer.json`, safetensors) or
    /// a GGUF file (`.gguf`, or a directory holding exactly one and no `config.json`; see
    /// [`gguf`]). Errors name the file (and tensor or key) at fault.
    pub fn load(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self, BackendError> {
        let dir = dir.as_ref();
        match ModelFormat::resolve(dir)? {
            ModelFormat::Gguf(file) => Self::load_gguf(&file, opts),
            ModelFormat::HfDir(dir) => Self::load_hf(&dir, opts),
        }
    }

    fn load_hf(dir: &Path, opts: &LoadOptions) -> Result<Self, BackendError> {
        let config = ModelConfig::from_dir(dir)?;
        let tokenizer = loader::load_tokenizer(dir, config.vocab_size)?;
        let chat_template = loader::load_chat_template(dir)?;
        let store = Arc::new(SafetensorsStore::open_dir(dir)?);
        let vb = VarBuilder::from_backend(
            Box::new(SourceBackend(store.clone())),
            opts.dtype,
            opts.device.clone(),
        );
        let lm = match CausalLm::from_var_builder(&config, vb) {
            Ok(lm) => lm,
            Err(e) => {
                return Err(store
                    .take_error()
                    .unwrap_or_else(|| BackendError::Runtime(e.to_string())));
            }
        };
        let sha = store.sha256()?;
        Ok(Self::assemble(
            lm,
            tokenizer,
            chat_template,
            dir,
            sha,
            "",
            opts,
        ))
    }

    fn load_gguf(file: &Path, opts: &LoadOptions) -> Result<Self, BackendError> {
        if opts.quantized && !opts.device.is_cpu() {
            return Err(BackendError::Device(
                "--quantized runs on the CPU only (load without it to use this device)".into(),
            ));
        }
        let g = Arc::new(gguf::GgufFile::open(file)?);
        let config = g.model_config()?;
        let tokenizer = gguf_tokenizer::tokenizer(&g)?;
        loader::check_tokenizer_fits(&tokenizer, config.vocab_size, file)?;
        let chat_template = gguf_tokenizer::chat_template(&g)
            .map(|t| ChatTemplate::new(t, &gguf_tokenizer::special_tokens(&g)?, file))
            .transpose()?;
        let weights = Arc::new(gguf::GgufWeights::new(g.clone(), config.clone()));
        let vb = VarBuilder::from_backend(
            Box::new(SourceBackend(weights.clone())),
            opts.dtype,
            opts.device.clone(),
        );
        let quant: Option<&dyn layers::QuantSource> = if opts.quantized {
            Some(&*weights)
        } else {
            None
        };
        let lm = match CausalLm::build(&config, vb, quant) {
            Ok(lm) => lm,
            Err(e) => {
                return Err(weights
                    .take_error()
                    .unwrap_or_else(|| BackendError::Runtime(e.to_string())));
            }
        };
        let sha = loader::sha256_files(&[file.to_path_buf()])?;
        let extra = format!(
            " format=gguf:{}{}",
            g.file_type_name(),
            if opts.quantized { " quantized" } else { "" }
        );
        Ok(Self::assemble(
            lm,
            tokenizer,
            chat_template,
            file,
            sha,
            &extra,
            opts,
        ))
    }

    fn assemble(
        lm: CausalLm,
        tokenizer: tokenizers::Tokenizer,
        chat_template: Option<ChatTemplate>,
        path: &Path,
        sha: String,
        extra: &str,
        opts: &LoadOptions,
    ) -> Self {
        let info = ModelInfo {
            id: path.display().to_string(),
            backend: "candle".into(),
            weights_sha256: Some(sha),
            details: format!(
                "arch={} dtype={} device={}{extra}",
                lm.config().arch.as_str(),
                dtype_name(opts.dtype),
                device_name(&opts.device)
            ),
        };
        CandleModel {
            lm: Arc::new(lm),
            tokenizer: Arc::new(tokenizer),
            chat_template: chat_template.map(Arc::new),
            info,
            batch_size: opts.batch_size.max(1),
            pad_generation_batches: opts.pad_generation_batches,
            max_batch_rows: opts.max_batch_rows.max(1),
            prefix_sharing: opts.prefix_sharing,
        }
    }

    /// Wraps a model built elsewhere (e.g. on trainable `Var`s, see
    /// [`CausalLm::from_var_builder`]) with its tokenizer. `id` names it in [`ModelInfo`]; there is
    /// no weights hash. Fails when the tokenizer has more ids than the embedding has rows.
    pub fn from_parts(
        lm: CausalLm,
        tokenizer: tokenizers::Tokenizer,
        id: impl Into<String>,
        opts: &LoadOptions,
    ) -> Result<Self, BackendError> {
        let n = tokenizer.get_vocab_size(true);
        if n > lm.config().vocab_size {
            return Err(BackendError::Tokenizer {
                path: PathBuf::from("<in memory>"),
                message: format!(
                    "{n} token ids but the embedding has {} rows",
                    lm.config().vocab_size
                ),
            });
        }
        let info = ModelInfo {
            id: id.into(),
            backend: "candle".into(),
            weights_sha256: None,
            details: format!(
                "arch={} dtype={} device={}",
                lm.config().arch.as_str(),
                dtype_name(lm.dtype()),
                device_name(lm.device())
            ),
        };
        Ok(CandleModel {
            lm: Arc::new(lm),
            tokenizer: Arc::new(tokenizer),
            chat_template: None,
            info,
            batch_size: opts.batch_size.max(1),
            pad_generation_batches: opts.pad_generation_batches,
            max_batch_rows: opts.max_batch_rows.max(1),
            prefix_sharing: opts.prefix_sharing,
        })
    }

    /// The model.
    pub fn model(&self) -> &CausalLm {
        &self.lm
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// The model's chat template (GGUF `tokenizer.chat_template`, or `chat_template` in a
    /// directory's `tokenizer_config.json` / `chat_template.jinja`), if it has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_deref()
    }

    /// Same model with another chat template (e.g. one read from a file).
    pub fn with_chat_template(&self, template: Option<ChatTemplate>) -> Self {
        let mut m = self.clone();
        m.chat_template = template.map(Arc::new);
        m
    }

    /// Same model with prefix-shared log-likelihood scoring on or off (see
    /// [`LoadOptions::prefix_sharing`]; shares the weights).
    pub fn with_prefix_sharing(&self, on: bool) -> Self {
        let mut m = self.clone();
        m.prefix_sharing = on;
        m
    }

    /// Rows per forward pass.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Same model with another batch size (shares the weights).
    pub fn with_batch_size(&self, batch_size: usize) -> Self {
        let mut m = self.clone();
        m.batch_size = batch_size.max(1);
        m
    }

    /// Token ids of `text`, no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Backend(format!("tokenize: {e}")))
    }

    /// Synchronous [`trust_core::LanguageModel::loglikelihood`]: requests are sorted by length,
    /// right-padded into batches of [`Self::batch_size`] and scored in one forward pass each.
    /// With prefix sharing (the default, [`LoadOptions::prefix_sharing`]), requests whose token
    /// sequences share a prefix (a few-shot primer, a question asked with every option) compute
    /// that prefix once and score from its KV cache: the same log-probabilities to the bit.
    pub fn loglikelihood_sync(
        &self,
        requests: &[LogLikelihoodRequest],
    ) -> Vec<Result<LogLikelihood, ModelError>> {
        let max_len = self.lm.max_positions();
        let mut out: Vec<Option<Result<LogLikelihood, ModelError>>> = vec![None; requests.len()];
        let mut ready: Vec<(usize, Vec<u32>, usize)> = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let prepared = (|| {
                let ctx = self.encode(&r.context)?;
                let cont = self.encode(&r.continuation)?;
                if cont.is_empty() {
                    return Err(ModelError::InvalidRequest(
                        "the continuation tokenises to no tokens".into(),
                    ));
                }
                if ctx.is_empty() {
                    return Err(ModelError::InvalidRequest(
                        "the context tokenises to no tokens (nothing predicts the first continuation token)".into(),
                    ));
                }
                let n = ctx.len() + cont.len();
                if n > max_len {
                    return Err(ModelError::InvalidRequest(format!(
                        "context + continuation is {n} tokens, longer than max_position_embeddings = {max_len}"
                    )));
                }
                let plen = ctx.len();
                let mut ids = ctx;
                ids.extend(cont);
                Ok((ids, plen))
            })();
            match prepared {
                Ok((ids, plen)) => ready.push((i, ids, plen)),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        if self.prefix_sharing {
            let total: usize = ready.iter().map(|r| r.1.len()).sum();
            let ran = self.score_prefix_shared(ready, &mut out);
            tracing::debug!(
                requests = requests.len(),
                tokens = total,
                computed = ran,
                "prefix-shared log-likelihood scoring"
            );
        } else {
            ready.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
            for chunk in ready.chunks(self.batch_size) {
                prefix::deliver(&mut out, chunk, self.score_batch(chunk));
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ModelError::Backend("request was not scored".into()))))
            .collect()
    }

    pub(crate) fn score_batch(
        &self,
        rows: &[(usize, Vec<u32>, usize)],
    ) -> candle_core::Result<Vec<LogLikelihood>> {
        // Pad to a multiple of 32 tokens: candle's CPU reductions (the softmax sum) process 32
        // floats per step, so trailing padding then adds exact zeros and a row's log-probs are
        // bit-identical whatever it is batched with.
        let longest = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
        let l = longest.div_ceil(32) * 32;
        let suffixes: Vec<&[u32]> = rows.iter().map(|r| r.1.as_slice()).collect();
        let (ids, positions, mask) = padded_rows(0, &suffixes, l, l);
        let mut parts = [PackedPart {
            ids,
            positions,
            key_mask: &mask,
            b: rows.len(),
            t: l,
            cache: None,
        }];
        let hidden = self.lm.forward_packed_parts(&mut parts)?;
        self.continuation_logprobs(&hidden[0], rows, 0)
    }

    /// The continuation log-probabilities of `rows` from `hidden` `[b, t, hidden]`, the final
    /// hidden states of each row's tokens from position `depth` on (`depth` = 0: the whole
    /// row; see `prefix`).
    pub(crate) fn continuation_logprobs(
        &self,
        hidden: &Tensor,
        rows: &[(usize, Vec<u32>, usize)],
        depth: usize,
    ) -> candle_core::Result<Vec<LogLikelihood>> {
        let dev = self.lm.device();
        let (b, l, hdim) = hidden.dims3()?;
        // One output projection for the continuation positions of every row (the weight matrix
        // is streamed once per batch instead of once per row); each logits row only depends on
        // its own hidden state.
        let mut idx = Vec::new();
        for (row, (_, ids, plen)) in rows.iter().enumerate() {
            idx.extend((plen - 1..ids.len() - 1).map(|p| (row * l + p - depth) as u32));
        }
        let n = idx.len();
        let idx = Tensor::from_vec(idx, n, dev)?;
        let h = hidden.reshape((b * l, hdim))?.index_select(&idx, 0)?;
        let logits = self.lm.lm_head_rows(&h)?;
        let vocab = logits.dim(1)?;
        let logits = logits.flatten_all()?.to_vec1::<f32>()?;
        let mut targets = Vec::with_capacity(n);
        for (_, ids, plen) in rows {
            targets.extend_from_slice(&ids[*plen..]);
        }
        // Per position: the target's log-probability and whether it is the argmax. Only those
        // two numbers are needed, so no log-softmax matrix is materialised.
        let scored: Vec<(f32, bool)> = {
            use rayon::prelude::*;
            logits
                .par_chunks(vocab)
                .zip(targets.par_iter())
                .map(|(row, &target)| {
                    (
                        log_softmax_at(row, target as usize),
                        generate::argmax(row) == target,
                    )
                })
                .collect()
        };
        let mut results = Vec::with_capacity(b);
        let mut at = 0;
        for (_, ids, plen) in rows {
            let clen = ids.len() - plen;
            let mut token_logprobs = Vec::with_capacity(clen);
            let mut is_greedy = true;
            for &(lp, greedy) in &scored[at..at + clen] {
                token_logprobs.push(lp as f64);
                is_greedy &= greedy;
            }
            at += clen;
            let sum = token_logprobs.iter().sum();
            results.push(LogLikelihood {
                token_logprobs,
                sum,
                is_greedy,
            });
        }
        Ok(results)
    }

    /// Synchronous [`trust_core::LanguageModel::generate`]. Each request becomes `n` rows (one
    /// for greedy decoding, copied `n` times); sampled row `i` uses
    /// `SplitMix64::new(derive_seed(seed, "completion/{i}"))`. Rows are sorted by prompt length and
    /// grouped by up to [`Self::batch_size`] rows of equal prompt length (or left-padded mixed
    /// lengths, see [`LoadOptions::pad_generation_batches`]); each beam search is a group of its
    /// own. All groups share forward passes, up to [`LoadOptions::max_batch_rows`] rows each
    /// (`generate::run`); a request's completions do not depend on the others.
    pub fn generate_sync(
        &self,
        requests: &[GenerateRequest],
    ) -> Vec<Result<GenerateResponse, ModelError>> {
        self.generate_sync_cancellable(requests, &std::sync::atomic::AtomicBool::new(false))
    }

    /// [`Self::generate_sync`] that stops early once `cancel` is true (checked before every
    /// forward pass, e.g. set when a server's client has gone away): unfinished requests then
    /// end with `ModelError::Backend("generation cancelled")`; finished ones keep their result.
    pub fn generate_sync_cancellable(
        &self,
        requests: &[GenerateRequest],
        cancel: &std::sync::atomic::AtomicBool,
    ) -> Vec<Result<GenerateResponse, ModelError>> {
        let max_len = self.lm.max_positions();
        let mut out: Vec<Option<Result<GenerateResponse, ModelError>>> = vec![None; requests.len()];
        // (request, completion index, row)
        let mut rows: Vec<(usize, usize, RowSpec)> = Vec::new();
        let mut beams: Vec<(usize, beam::BeamSpec)> = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            let prepared = (|| {
                r.config.validate()?;
                let prompt = self.encode(&r.prompt)?;
                if prompt.is_empty() {
                    return Err(ModelError::InvalidRequest(
                        "the prompt tokenises to no tokens".into(),
                    ));
                }
                if prompt.len().saturating_add(r.config.max_new_tokens) > max_len {
                    return Err(ModelError::InvalidRequest(format!(
                        "prompt ({} tokens) + max_new_tokens ({}) exceeds max_position_embeddings = {max_len}",
                        prompt.len(),
                        r.config.max_new_tokens
                    )));
                }
                let stop_ids = match &r.config.stop {
                    StopPolicy::ModelEos => self.lm.config().eos_token_ids.clone(),
                    StopPolicy::Tokens(ids) => ids.clone(),
                    StopPolicy::Never => Vec::new(),
                };
                if r.config.num_beams > 1 {
                    if r.config.n > r.config.num_beams {
                        return Err(ModelError::InvalidRequest(format!(
                            "n ({}) must not exceed num_beams ({})",
                            r.config.n, r.config.num_beams
                        )));
                    }
                    let sampling = match r.config.sampling {
                        Sampling::Greedy => None,
                        Sampling::Sample {
                            temperature,
                            top_p,
                            top_k,
                        } => Some(beam::BeamSampling {
                            rng: SplitMix64::new(derive_seed(r.seed, "beams")),
                            temperature,
                            top_p,
                            top_k,
                        }),
                    };
                    beams.push((
                        i,
                        beam::BeamSpec {
                            prompt: prompt.clone(),
                            max_new_tokens: r.config.max_new_tokens,
                            num_beams: r.config.num_beams,
                            n: r.config.n,
                            stop_ids: stop_ids.clone(),
                            stop_strings: r.config.stop_strings.clone(),
                            sampling,
                        },
                    ));
                    return Ok(Vec::new());
                }
                let spec = |sampler| RowSpec {
                    prompt: prompt.clone(),
                    max_new_tokens: r.config.max_new_tokens,
                    sampler,
                    stop_ids: stop_ids.clone(),
                    stop_strings: r.config.stop_strings.clone(),
                };
                Ok(match r.config.sampling {
                    Sampling::Greedy => vec![(0, spec(Sampler::Greedy))],
                    Sampling::Sample {
                        temperature,
                        top_p,
                        top_k,
                    } => (0..r.config.n)
                        .map(|c| {
                            let rng =
                                SplitMix64::new(derive_seed(r.seed, &format!("completion/{c}")));
                            (
                                c,
                                spec(Sampler::Sample {
                                    rng,
                                    temperature,
                                    top_p,
                                    top_k,
                                }),
                            )
                        })
                        .collect(),
                })
            })();
            match prepared {
                Ok(rs) => rows.extend(rs.into_iter().map(|(c, s)| (i, c, s))),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        rows.sort_by(|a, b| {
            b.2.prompt
                .len()
                .cmp(&a.2.prompt.len())
                .then((a.0, a.1).cmp(&(b.0, b.1)))
        });
        let mut completions: Vec<Vec<Option<Completion>>> = requests
            .iter()
            .map(|r| vec![None; r.config.n.max(1)])
            .collect();
        // Work items: each beam search, then the row groups (equal prompt lengths, or mixed with
        // `pad_generation_batches`, at most `batch_size` rows each), longest prompts first.
        enum Owner {
            Beam(usize),
            Rows(Vec<(usize, usize)>),
        }
        let mut works = Vec::new();
        let mut owners = Vec::new();
        for (i, spec) in beams {
            works.push(generate::Work::Beam(spec));
            owners.push(Owner::Beam(i));
        }
        let padded = self.pad_generation_batches;
        for group in rows.chunk_by(|a, b| padded || a.2.prompt.len() == b.2.prompt.len()) {
            for chunk in group.chunks(self.batch_size) {
                works.push(generate::Work::Rows(
                    chunk.iter().map(|c| c.2.clone()).collect(),
                ));
                owners.push(Owner::Rows(chunk.iter().map(|c| (c.0, c.1)).collect()));
            }
        }
        generate::run(
            &self.lm,
            &self.tokenizer,
            works,
            self.max_batch_rows,
            Some(cancel),
            |w, result| match (&owners[w], result) {
                (Owner::Beam(i), r) => {
                    out[*i] = Some(
                        r.map(|completions| GenerateResponse { completions })
                            .map_err(|e| ModelError::Backend(e.to_string())),
                    );
                }
                (Owner::Rows(slots), Ok(done)) => {
                    for ((i, c), comp) in slots.iter().zip(done) {
                        completions[*i][*c] = Some(comp);
                    }
                }
                (Owner::Rows(slots), Err(e)) => {
                    for (i, _) in slots {
                        out[*i] = Some(Err(ModelError::Backend(e.to_string())));
                    }
                }
            },
        );
        for (i, r) in requests.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            let slots = std::mem::take(&mut completions[i]);
            let result = if matches!(r.config.sampling, Sampling::Greedy) {
                match slots.into_iter().next().flatten() {
                    Some(c) => Ok(GenerateResponse {
                        completions: vec![c; r.config.n],
                    }),
                    None => Err(ModelError::Backend("request was not decoded".into())),
                }
            } else {
                slots
                    .into_iter()
                    .collect::<Option<Vec<_>>>()
                    .map(|completions| GenerateResponse { completions })
                    .ok_or_else(|| ModelError::Backend("request was not decoded".into()))
            };
            out[i] = Some(result);
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(ModelError::Backend("request was not decoded".into())))
            })
            .collect()
    }

    /// Same model with another generation batching policy (see
    /// [`LoadOptions::pad_generation_batches`]).
    pub fn with_pad_generation_batches(&self, pad: bool) -> Self {
        let mut m = self.clone();
        m.pad_generation_batches = pad;
        m
    }

    /// Same model with another cap on the rows decoded together (see
    /// [`LoadOptions::max_batch_rows`]).
    pub fn with_max_batch_rows(&self, rows: usize) -> Self {
        let mut m = self.clone();
        m.max_batch_rows = rows.max(1);
        m
    }

    /// The model directory (or GGUF file) this was loaded from.
    pub fn dir(&self) -> PathBuf {
        PathBuf::from(&self.info.id)
    }
}

#[async_trait::async_trait]
impl trust_core::LanguageModel for CandleModel {
    fn info(&self) -> ModelInfo {
        self.info.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[
            Capability::Generate,
            Capability::Sampling,
            Capability::BeamSearch,
            Capability::LogLikelihood,
        ])
    }

    /// Runs synchronously on the calling thread (see the module docs).
    async fn generate(
        &self,
        requests: &[GenerateRequest],
    ) -> Vec<Result<GenerateResponse, ModelError>> {
        self.generate_sync(requests)
    }

    /// Runs synchronously on the calling thread (see the module docs).
    async fn loglikelihood(
        &self,
        requests: &[LogLikelihoodRequest],
    ) -> Vec<Result<LogLikelihood, ModelError>> {
        self.loglikelihood_sync(requests)
    }
}
