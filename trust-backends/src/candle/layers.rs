//! Building blocks shared by the model families.
//!
//! Everything here is written with plain, differentiable candle ops (no fused custom kernels
//! without a backward pass, no in-place updates), so the same code serves inference on mmap'd
//! weights and training on `Var`s. Norms and softmax are computed in f32 whatever the compute
//! dtype, as transformers does.

use candle_core::{D, DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{RopeConfig, RopeScaling};

/// Initialisation of embedding and untied output matrices when a model is built on a fresh
/// `VarMap` (transformers' `initializer_range` default).
pub(crate) const EMBED_INIT: candle_nn::Init = candle_nn::Init::Randn {
    mean: 0.0,
    stdev: 0.02,
};

/// A linear layer `y = x W^T (+ b)`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    pub(crate) fn load(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Linear {
            inner: candle_nn::linear_b(in_dim, out_dim, bias, vb)?,
        })
    }
    pub(crate) fn from_weight(weight: Tensor) -> Self {
        Linear {
            inner: candle_nn::Linear::new(weight, None),
        }
    }
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)
    }
}

/// LayerNorm with bias (GPT-NeoX), computed in f32.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub(crate) fn load(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let w = self.weight.to_dtype(DType::F32)?;
        let b = self.bias.to_dtype(DType::F32)?;
        xn.broadcast_mul(&w)?.broadcast_add(&b)?.to_dtype(dtype)
    }
}

/// RMSNorm (Llama/Qwen2): normalise in f32, cast back, then scale (transformers' order).
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn load(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(RmsNorm {
            weight: vb.get(dim, "weight")?,
            eps,
        })
    }
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xf
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .to_dtype(dtype)?;
        xn.broadcast_mul(&self.weight)
    }
}

/// Rotary position embedding tables (NeoX-style `rotate_half`).
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    /// `[max_positions, rot_dim]` = cat(freqs, freqs).cos()
    cos: Tensor,
    sin: Tensor,
    rot_dim: usize,
    max_positions: usize,
}

impl Rope {
    /// Tables for positions `0..max_positions`, in f32 (as transformers computes them), stored in
    /// `dtype`.
    pub(crate) fn new(
        cfg: &RopeConfig,
        rot_dim: usize,
        max_positions: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self> {
        let half = rot_dim / 2;
        let mut inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0f32 / (cfg.theta as f32).powf((2 * i) as f32 / rot_dim as f32))
            .collect();
        match cfg.scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => {
                for f in &mut inv_freq {
                    *f /= factor as f32;
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = original_max_position_embeddings;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                for f in &mut inv_freq {
                    let inv = *f as f64;
                    let wavelen = 2.0 * std::f64::consts::PI / inv;
                    let scaled = if wavelen > low_wavelen {
                        inv / factor
                    } else {
                        inv
                    };
                    let smooth =
                        (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                    let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
                    let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                    *f = if medium {
                        smoothed as f32
                    } else {
                        scaled as f32
                    };
                }
            }
        }
        let mut cos = Vec::with_capacity(max_positions * rot_dim);
        let mut sin = Vec::with_capacity(max_positions * rot_dim);
        for p in 0..max_positions {
            for _rep in 0..2 {
                for &f in &inv_freq {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let cos = Tensor::from_vec(cos, (max_positions, rot_dim), dev)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (max_positions, rot_dim), dev)?.to_dtype(dtype)?;
        Ok(Rope {
            cos,
            sin,
            rot_dim,
            max_positions,
        })
    }

    pub(crate) fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// cos/sin gathered at `position_ids` `[b, t]` (u32): each `[b, 1, t, rot_dim]`.
    pub(crate) fn gather(&self, position_ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = position_ids.dims2()?;
        let flat = position_ids.flatten_all()?;
        let cos = self
            .cos
            .index_select(&flat, 0)?
            .reshape((b, 1, t, self.rot_dim))?;
        let sin = self
            .sin
            .index_select(&flat, 0)?
            .reshape((b, 1, t, self.rot_dim))?;
        Ok((cos, sin))
    }

    /// Applies the rotation to the first `rot_dim` dims of `x` `[b, h, t, d]`.
    pub(crate) fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let r = self.rot_dim;
        let x_rot = x.narrow(D::Minus1, 0, r)?;
        let half = r / 2;
        let x1 = x_rot.narrow(D::Minus1, 0, half)?;
        let x2 = x_rot.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        let out = (x_rot.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?;
        if r == d {
            Ok(out)
        } else {
            let x_pass = x.narrow(D::Minus1, r, d - r)?;
            Tensor::cat(&[&out, &x_pass], D::Minus1)
        }
    }
}

/// Where the real tokens of a right- or left-padded `[b, t]` batch are: lets position-wise
/// layers run on the `n` real tokens only (`[n, d]`) instead of all `b * t` positions.
#[derive(Debug, Clone)]
pub(crate) struct Packing {
    /// `[n]` (u32): flat index `row * t + pos` of each real token, in order.
    pub(crate) gather: Tensor,
    /// `[b * t]` (u32): for each flat position, its index in the packed rows, or `n` (a zero row)
    /// for padding.
    scatter: Tensor,
    b: usize,
    t: usize,
}

impl Packing {
    /// From the key mask rows (1 = real token), all of length `t`.
    pub(crate) fn new(key_mask: &[Vec<u32>], t: usize, dev: &Device) -> Result<Self> {
        let b = key_mask.len();
        let mut gather = Vec::new();
        let mut scatter = Vec::with_capacity(b * t);
        for (r, row) in key_mask.iter().enumerate() {
            for p in 0..t {
                if row.get(p).copied().unwrap_or(1) != 0 {
                    scatter.push(gather.len() as u32);
                    gather.push((r * t + p) as u32);
                } else {
                    scatter.push(u32::MAX);
                }
            }
        }
        let n = gather.len() as u32;
        for s in &mut scatter {
            if *s == u32::MAX {
                *s = n;
            }
        }
        Ok(Packing {
            gather: Tensor::from_vec(gather, n as usize, dev)?,
            scatter: Tensor::from_vec(scatter, b * t, dev)?,
            b,
            t,
        })
    }

    /// `[b, t, d]` -> `[n, d]` (the real tokens).
    pub(crate) fn pack(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        x.reshape((self.b * self.t, d))?.index_select(&self.gather, 0)
    }

    /// `[n, d]` -> `[b * t, d]`, zeros at padding positions.
    pub(crate) fn unpack(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let zero = Tensor::zeros((1, d), x.dtype(), x.device())?;
        Tensor::cat(&[x, &zero], 0)?.index_select(&self.scatter, 0)
    }
}

/// Key/value cache of one decoder stack: per layer `(k, v)`, each `[b, kv_heads, T, head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: vec![None; num_layers],
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dim(2).unwrap_or(0))
            .unwrap_or(0)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reorders (or replicates) the batch rows: row `j` of the result is row `indices[j]` now.
    pub fn reorder(&mut self, indices: &[u32]) -> Result<()> {
        for (k, v) in self.layers.iter_mut().flatten() {
            let idx = Tensor::new(indices, k.device())?;
            *k = k.index_select(&idx, 0)?;
            *v = v.index_select(&idx, 0)?;
        }
        Ok(())
    }

    /// Appends `k`, `v` for layer `i` and returns the full keys/values.
    pub(crate) fn append(&mut self, i: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let slot = &mut self.layers[i];
        let (k, v) = match slot.take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
        };
        *slot = Some((k.clone(), v.clone()));
        Ok((k, v))
    }
}

/// Eager scaled-dot-product attention with an additive mask.
///
/// `q` `[b, h, t, d]`, `k`/`v` `[b, kv_h, T, d]`, `mask` `[b, 1, t, T]` (f32, 0 or very negative).
/// Returns `[b, t, h * d]`.
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let kv_h = k.dim(1)?;
    let (k, v) = if kv_h == h {
        (k.clone(), v.clone())
    } else {
        let rep = h / kv_h;
        let tk = k.dim(2)?;
        let expand = |x: &Tensor| -> Result<Tensor> {
            x.unsqueeze(2)?
                .broadcast_as((b, kv_h, rep, tk, d))?
                .reshape((b, h, tk, d))
        };
        (expand(k)?, expand(v)?)
    };
    let dtype = q.dtype();
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    let scores = scores.to_dtype(DType::F32)?.broadcast_add(mask)?;
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(dtype)?;
    let out = probs.matmul(&v.contiguous()?)?;
    out.transpose(1, 2)?.reshape((b, t, h * d))
}

/// The value used for masked-out attention entries.
pub(crate) const MASKED: f32 = f32::MIN;

/// Additive causal + padding mask `[b, 1, t, past + t]` (f32).
///
/// `key_mask` has one row per batch entry over all `past + t` key positions (1 = attend).
pub(crate) fn build_mask(
    key_mask: &[Vec<u32>],
    past: usize,
    t: usize,
    dev: &Device,
) -> Result<Tensor> {
    let b = key_mask.len();
    let total = past + t;
    let mut m = vec![0f32; b * t * total];
    for (bi, row) in key_mask.iter().enumerate() {
        for i in 0..t {
            for j in 0..total {
                let ok = j <= past + i && row.get(j).copied().unwrap_or(1) != 0;
                if !ok {
                    m[(bi * t + i) * total + j] = MASKED;
                }
            }
        }
    }
    Tensor::from_vec(m, (b, 1, t, total), dev)
}
