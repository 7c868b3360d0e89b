//! Building blocks shared by the model families.
//!
//! Everything here is written with plain, differentiable candle ops (no fused custom kernels
//! without a backward pass, no in-place updates), so the same code serves inference on mmap'd
//! weights and training on `Var`s. The one custom op, `FrozenLinear`, is a dense product whose
//! backward pass skips the gradient of a constant weight. Norms and softmax are computed in f32 whatever the compute
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

/// A linear layer `y = x W^T (+ b)`: dense, or with a quantized weight (GGUF `--quantized`,
/// candle's quantized matrix products; the bias stays dense).
#[derive(Debug, Clone)]
pub(crate) enum Linear {
    Dense(candle_nn::Linear),
    Quant {
        weight: candle_core::quantized::QMatMul,
        bias: Option<Tensor>,
    },
    /// A dense base layer plus a LoRA update `(x·Aᵀ)·B'ᵀ` (`B' = (α/r)·B`), the factored form
    /// of an adapter being trained (trust-align puts `<module>.lora_a` `[r, in]` and
    /// `<module>.lora_b` `[out, r]` beside the base weight). Backpropagation then costs the
    /// input gradient of the base product plus rank-r products, never the `[out, in]` gradient
    /// of a merged weight. The factors may carry a leading batch dimension (`[b, r, in]`,
    /// `[b, out, r]`: one copy per batch row), which gives every row its own gradient.
    Lora {
        base: candle_nn::Linear,
        a: Tensor,
        b: Tensor,
    },
}

/// `y = x·Wᵀ` for a constant `W` (not a variable) inside a graph being differentiated:
/// the same product as [`candle_nn::Linear`], but its backward pass returns only the input
/// gradient `g·W`. Candle's own matmul backward also forms the weight gradient `xᵀ·g` (an
/// `[out, in]` product as costly as the forward one) even when nothing needs it.
struct FrozenLinear {
    weight: Tensor,
}

impl candle_core::CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let candle_core::CpuStorage::F32(data) = storage else {
            candle_core::bail!("frozen linear: f32 input expected");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen linear: contiguous input expected");
        };
        let x = Tensor::from_slice(&data[start..end], layout.shape(), &Device::Cpu)?;
        let y = candle_nn::Linear::new(self.weight.clone(), None)
            .forward(&x)?
            .contiguous()?;
        let shape = y.shape().clone();
        let (st, l) = y.storage_and_layout();
        let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) =
            (&*st, l.contiguous_offsets())
        else {
            candle_core::bail!("frozen linear: unexpected product storage");
        };
        Ok((candle_core::CpuStorage::F32(v[a..b].to_vec()), shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let out = self.weight.dim(0)?;
        let g = grad_res.contiguous()?.reshape(((), out))?;
        Ok(Some(g.matmul(&self.weight)?.reshape(arg.shape())?))
    }
}

/// The product of a dense layer: through [`FrozenLinear`] when `x` is being differentiated and
/// the weight is a constant f32 CPU tensor, else candle's [`candle_nn::Linear`] (the same
/// values either way).
fn dense_forward(l: &candle_nn::Linear, x: &Tensor) -> Result<Tensor> {
    let w = l.weight();
    if x.track_op()
        && !w.track_op()
        && x.device().is_cpu()
        && w.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
    {
        let y = x
            .contiguous()?
            .apply_op1(FrozenLinear { weight: w.clone() })?;
        match l.bias() {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    } else {
        l.forward(x)
    }
}

/// `x·Fᵀ` for a LoRA factor `F` (`[k, n]`, shared by every row; or `[b, k, n]`, one per batch
/// row, with `x` `[b, t, n]` or its rows stacked batch-major as `[b * t, n]`, the layout of
/// the model's uncached passes).
fn factor_product(x: &Tensor, f: &Tensor) -> Result<Tensor> {
    if f.rank() == 3 {
        if x.rank() == 2 {
            let (rows, n) = x.dims2()?;
            let b = f.dim(0)?;
            if b == 0 || rows % b != 0 {
                candle_core::bail!(
                    "per-row LoRA factors for {b} rows applied to {rows} stacked tokens"
                );
            }
            return x
                .contiguous()?
                .reshape((b, rows / b, n))?
                .matmul(&f.t()?)?
                .reshape((rows, ()));
        }
        return x.matmul(&f.t()?);
    }
    let dims = x.dims().to_vec();
    let n = dims[dims.len() - 1];
    let y = x.contiguous()?.reshape(((), n))?.matmul(&f.t()?)?;
    let mut out = dims;
    let last = out.len() - 1;
    out[last] = f.dim(0)?;
    y.reshape(out)
}

/// Where quantized weights come from when a model is built (HF tensor name and expected shape
/// → the stored tensor, rows in HF order). `None` from [`QuantSource::get`] = load densely.
pub(crate) trait QuantSource {
    fn get(&self, name: &str, shape: &[usize]) -> Option<Result<candle_core::quantized::QTensor>>;
}

impl Linear {
    pub(crate) fn load(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let base = candle_nn::linear_b(in_dim, out_dim, bias, vb.clone())?;
        if vb.contains_tensor("lora_a") {
            let a = vb.get_unchecked("lora_a")?;
            let b = vb.get_unchecked("lora_b")?;
            let (ra, rb) = (a.rank(), b.rank());
            let ok = (ra == 2 || ra == 3)
                && ra == rb
                && a.dim(D::Minus1)? == in_dim
                && b.dim(D::Minus2)? == out_dim
                && a.dim(D::Minus2)? == b.dim(D::Minus1)?;
            if !ok {
                candle_core::bail!(
                    "{}: LoRA factors {:?} / {:?} do not fit a {in_dim} -> {out_dim} layer",
                    vb.prefix(),
                    a.dims(),
                    b.dims()
                );
            }
            return Ok(Linear::Lora { base, a, b });
        }
        Ok(Linear::Dense(base))
    }
    /// [`Self::load`], taking the weight from `quant` when it has one.
    pub(crate) fn load_q(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
        quant: Option<&dyn QuantSource>,
    ) -> Result<Self> {
        let name = format!("{}.weight", vb.prefix());
        match quant.and_then(|q| q.get(&name, &[out_dim, in_dim])) {
            Some(w) => Ok(Linear::Quant {
                weight: candle_core::quantized::QMatMul::from_qtensor(w?)?,
                bias: if bias {
                    Some(vb.get(out_dim, "bias")?)
                } else {
                    None
                },
            }),
            None => Self::load(in_dim, out_dim, bias, vb),
        }
    }
    pub(crate) fn from_weight(weight: Tensor) -> Self {
        Linear::Dense(candle_nn::Linear::new(weight, None))
    }
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Linear::Dense(l) => dense_forward(l, x),
            Linear::Lora { base, a, b } => {
                dense_forward(base, x)? + factor_product(&factor_product(x, a)?, b)?
            }
            Linear::Quant { weight, bias } => {
                let y = weight.forward(x)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
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

    /// cos/sin at the flat `positions` `[n]` (u32): each `[n, 1, rot_dim]`, for packed rows
    /// `[n, heads, head_dim]`.
    pub(crate) fn gather_flat(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = positions.dim(0)?;
        let cos = self
            .cos
            .index_select(positions, 0)?
            .reshape((n, 1, self.rot_dim))?;
        let sin = self
            .sin
            .index_select(positions, 0)?
            .reshape((n, 1, self.rot_dim))?;
        Ok((cos, sin))
    }

    /// Applies the rotation to the first `rot_dim` dims of `x` `[b, h, t, d]` (or packed rows
    /// `[n, h, d]` with tables `[n, 1, rot_dim]`).
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
        x.reshape((self.b * self.t, d))?
            .index_select(&self.gather, 0)
    }

    /// `[n, d]` -> `[b * t, d]`, zeros at padding positions.
    pub(crate) fn unpack(&self, x: &Tensor) -> Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let zero = Tensor::zeros((1, d), x.dtype(), x.device())?;
        Tensor::cat(&[x, &zero], 0)?.index_select(&self.scatter, 0)
    }
}

/// Key/value cache of one decoder stack.
///
/// Two layouts: tensors per layer (`(k, v)`, each `[b, kv_heads, T, head_dim]`, grown by
/// concatenation; any device and dtype), or, for f32 on the CPU ([`KvCache::new_flat`], what
/// `CausalLm::new_cache` gives there), one growable buffer per layer, row and key/value head that
/// decoding steps append to in place and attend over directly.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>,
    flat: Option<Vec<FlatLayer>>,
}

/// One layer of a flat cache: `k[row * kv_heads + g]` holds `len * head_dim` floats.
#[derive(Debug, Clone, Default)]
struct FlatLayer {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
    rows: usize,
}

impl KvCache {
    /// An empty cache for `num_layers` layers (tensor layout).
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: vec![None; num_layers],
            flat: None,
        }
    }

    /// An empty cache for `num_layers` layers in the flat layout (f32 models on the CPU only).
    pub fn new_flat(num_layers: usize) -> Self {
        KvCache {
            layers: vec![None; num_layers],
            flat: Some(vec![FlatLayer::default(); num_layers]),
        }
    }

    pub(crate) fn is_flat(&self) -> bool {
        self.flat.is_some()
    }

    /// Flat layout: appends `t` tokens per row to layer `i`, `k`/`v` `[b, kv_heads, t,
    /// head_dim]` row-major.
    pub(crate) fn push_flat(
        &mut self,
        i: usize,
        b: usize,
        kvh: usize,
        t: usize,
        k: &[f32],
        v: &[f32],
    ) -> Result<()> {
        let Some(flat) = self.flat.as_mut() else {
            candle_core::bail!("not a flat kv cache");
        };
        let layer = &mut flat[i];
        if layer.rows == 0 {
            layer.k = vec![Vec::new(); b * kvh];
            layer.v = vec![Vec::new(); b * kvh];
            layer.rows = b;
        }
        if layer.k.len() != b * kvh || k.len() != v.len() || k.len() % (b * kvh) != 0 {
            candle_core::bail!(
                "kv cache holds {} row heads, got {}",
                layer.k.len(),
                b * kvh
            );
        }
        // t * head_dim floats per row and head.
        let d = k.len() / (b * kvh);
        for j in 0..b * kvh {
            layer.k[j].extend_from_slice(&k[j * d..(j + 1) * d]);
            layer.v[j].extend_from_slice(&v[j * d..(j + 1) * d]);
        }
        layer.len += t;
        Ok(())
    }

    /// Flat layout: row `r`'s key and value buffers (one per key/value head) and their length.
    pub(crate) fn flat_row(
        &self,
        i: usize,
        r: usize,
        kvh: usize,
    ) -> (&[Vec<f32>], &[Vec<f32>], usize) {
        let l = &self.flat.as_ref().expect("flat kv cache")[i];
        (
            &l.k[r * kvh..(r + 1) * kvh],
            &l.v[r * kvh..(r + 1) * kvh],
            l.len,
        )
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        if let Some(f) = &self.flat {
            return f.first().map(|l| l.len).unwrap_or(0);
        }
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dim(2).unwrap_or(0))
            .unwrap_or(0)
    }

    /// Keeps the first `len` cached positions of every layer (tensor layout only).
    pub(crate) fn truncate(&mut self, len: usize) -> Result<()> {
        if self.is_flat() {
            candle_core::bail!("truncate: not for a flat kv cache");
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            if k.dim(2)? > len {
                *k = k.narrow(2, 0, len)?.contiguous()?;
                *v = v.narrow(2, 0, len)?.contiguous()?;
            }
        }
        Ok(())
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reorders (or replicates) the batch rows: row `j` of the result is row `indices[j]` now.
    pub fn reorder(&mut self, indices: &[u32]) -> Result<()> {
        if let Some(flat) = &mut self.flat {
            for l in flat.iter_mut() {
                if l.rows == 0 {
                    continue;
                }
                let g = l.k.len() / l.rows;
                if let Some(&j) = indices.iter().find(|&&j| j as usize >= l.rows) {
                    candle_core::bail!("reorder index {j} out of range ({} rows)", l.rows);
                }
                // A row's last use takes its buffers; earlier uses copy them.
                let mut uses = vec![0usize; l.rows];
                for &j in indices {
                    uses[j as usize] += 1;
                }
                let mut k = Vec::with_capacity(indices.len() * g);
                let mut v = Vec::with_capacity(indices.len() * g);
                for &j in indices {
                    let j = j as usize;
                    uses[j] -= 1;
                    for h in 0..g {
                        if uses[j] == 0 {
                            k.push(std::mem::take(&mut l.k[j * g + h]));
                            v.push(std::mem::take(&mut l.v[j * g + h]));
                        } else {
                            // A copy keeps the original's spare capacity, so the next
                            // decoding steps append without reallocating (a plain clone has
                            // none: every step of a beam search would copy each copied row
                            // twice).
                            k.push(copy_with_capacity(&l.k[j * g + h]));
                            v.push(copy_with_capacity(&l.v[j * g + h]));
                        }
                    }
                }
                l.k = k;
                l.v = v;
                l.rows = indices.len();
            }
            return Ok(());
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            let idx = Tensor::new(indices, k.device())?;
            *k = k.index_select(&idx, 0)?;
            *v = v.index_select(&idx, 0)?;
        }
        Ok(())
    }

    /// Appends `k`, `v` (`[b, kv_heads, t, head_dim]`) for layer `i` and returns the full
    /// keys/values (tensor layout; the flat layout materialises them).
    pub(crate) fn append(&mut self, i: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        if self.is_flat() {
            let (b, g, t, d) = k.dims4()?;
            let kv = k.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let vv = v.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            self.push_flat(i, b, g, t, &kv, &vv)?;
            let layer = &self.flat.as_ref().expect("flat kv cache")[i];
            let cat = |bufs: &[Vec<f32>]| -> Result<Tensor> {
                let all: Vec<f32> = bufs.iter().flatten().copied().collect();
                Tensor::from_vec(all, (b, g, layer.len, d), k.device())?.to_dtype(k.dtype())
            };
            return Ok((cat(&layer.k)?, cat(&layer.v)?));
        }
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
    let tk = k.dim(2)?;
    // Grouped-query attention without copying keys and values per head: the `rep` query heads
    // that share a key/value head (heads `g * rep .. (g + 1) * rep`, as transformers'
    // `repeat_kv` orders them) are stacked as `rep * t` query rows of one product per key/value
    // head. Each score and output element is the same sum as with repeated keys.
    let rep = h / kv_h.max(1);
    let dtype = q.dtype();
    let qg = q.contiguous()?.reshape((b, kv_h, rep * t, d))?;
    let scores = (qg.matmul(&k.t()?.contiguous()?)? * scale)?;
    let scores = scores
        .reshape((b, h, t, tk))?
        .to_dtype(DType::F32)?
        .broadcast_add(mask)?;
    // Inference passes (nothing to differentiate) use candle's fused softmax: the same max,
    // exponentials, sum and division per row, parallel over rows, without the temporaries.
    let probs = if scores.track_op() {
        candle_nn::ops::softmax(&scores, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores.contiguous()?)?
    }
    .to_dtype(dtype)?;
    let out = probs
        .reshape((b, kv_h, rep * t, tk))?
        .matmul(&v.contiguous()?)?
        .reshape((b, h, t, d))?;
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

/// One group of rows in a [`Segments`] forward pass: `b` rows of `t` new tokens each, sharing a
/// KV cache. Different segments never attend to each other, so a segment's results do not
/// depend on which other segments share the pass (the position-wise layers of all segments run
/// as one matrix product on the packed tokens; each output row of a matrix product only depends
/// on its own input row, see `CausalLm::min_rows`).
#[derive(Debug)]
pub(crate) struct Segment<'a> {
    b: usize,
    t: usize,
    /// Additive mask `[b, 1, t, past + t]`, built by the first layer that needs it.
    mask: Option<Tensor>,
    /// Per row, 1 (attend) or 0 over all `past + t` key positions.
    key_mask: &'a [Vec<u32>],
    cache: Option<&'a mut KvCache>,
    /// Real tokens of a padded segment (`None`: all `b * t` tokens are packed rows).
    pack: Option<Packing>,
    /// Packed rows this segment contributes.
    pub(crate) n: usize,
}

impl<'a> Segment<'a> {
    /// `b` rows of `t` new tokens (`key_mask` rows cover `past + t` keys); with `pack`, only
    /// the packing's real tokens are packed rows.
    pub(crate) fn new(
        b: usize,
        t: usize,
        key_mask: &'a [Vec<u32>],
        cache: Option<&'a mut KvCache>,
        pack: Option<Packing>,
    ) -> Result<Self> {
        let n = match &pack {
            Some(p) => p.gather.dim(0)?,
            None => b * t,
        };
        Ok(Segment {
            b,
            t,
            mask: None,
            key_mask,
            cache,
            pack,
            n,
        })
    }

    /// A decoding step (one new token per row) over a flat cache: attention runs on the cache
    /// buffers directly instead of through tensors.
    fn is_fast(&self) -> bool {
        self.t == 1 && self.pack.is_none() && self.cache.as_deref().is_some_and(|c| c.is_flat())
    }
}

/// A copy of `src` with at least its capacity and room for half its length again.
fn copy_with_capacity(src: &Vec<f32>) -> Vec<f32> {
    let mut c = Vec::with_capacity(src.capacity().max(src.len() + src.len() / 2 + 256));
    c.extend_from_slice(src);
    c
}

/// `x` with `extra` copies of its last row (dim 0) appended; unchanged when empty.
pub(crate) fn pad_last_row(x: &Tensor, extra: usize) -> Result<Tensor> {
    let n = x.dim(0)?;
    if extra == 0 || n == 0 {
        return Ok(x.clone());
    }
    let mut reps = vec![1usize; x.rank()];
    reps[0] = extra;
    Tensor::cat(&[x, &x.narrow(0, n - 1, 1)?.repeat(reps)?], 0)
}

/// The segments of one forward pass, in packed-row order.
#[derive(Debug)]
pub(crate) struct Segments<'a> {
    pub(crate) segs: Vec<Segment<'a>>,
    /// Rotary tables of every packed row (extra rows included), `[N, 1, rot_dim]`.
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
    /// Copies of the last packed row appended after the real rows (see
    /// `CausalLm::min_rows`): they keep every matrix product on the kernel whose per-row results
    /// do not depend on the number of rows.
    pub(crate) extra: usize,
}

/// `a . b` with eight independent partial sums (vectorisable; a fixed order, so a row's result
/// never depends on anything but its inputs).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n8 = a.len() / 8 * 8;
    for (ca, cb) in a[..n8].chunks_exact(8).zip(b[..n8].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += ca[l] * cb[l];
        }
    }
    let mut tail = 0f32;
    for i in n8..a.len() {
        tail += a[i] * b[i];
    }
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

/// Attention of one row's new token over its cached keys/values (all heads): `q` `[heads *
/// hd]`, `keys[g]`/`vals[g]` `[len * hd]` per key/value head, `key_mask` over the `len`
/// positions. Softmax in f32 as the tensor path computes it (max-shifted, normalised, then the
/// weighted sum of values).
///
/// On x86-64 with AVX2 the same code runs compiled for AVX2 (eight lanes per instruction instead
/// of SSE2's four). Rust never contracts `a * b + c` into a fused multiply-add, so both builds
/// perform the same IEEE operations in the same order: the results are bit-identical.
#[allow(clippy::too_many_arguments)]
fn attend_row(
    q: &[f32],
    keys: &[Vec<f32>],
    vals: &[Vec<f32>],
    key_mask: &[u32],
    heads: usize,
    hd: usize,
    len: usize,
    scale: f32,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { attend_row_avx2(q, keys, vals, key_mask, heads, hd, len, scale, out) };
        return;
    }
    attend_row_portable(q, keys, vals, key_mask, heads, hd, len, scale, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
fn attend_row_avx2(
    q: &[f32],
    keys: &[Vec<f32>],
    vals: &[Vec<f32>],
    key_mask: &[u32],
    heads: usize,
    hd: usize,
    len: usize,
    scale: f32,
    out: &mut [f32],
) {
    attend_row_portable(q, keys, vals, key_mask, heads, hd, len, scale, out)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_row_portable(
    q: &[f32],
    keys: &[Vec<f32>],
    vals: &[Vec<f32>],
    key_mask: &[u32],
    heads: usize,
    hd: usize,
    len: usize,
    scale: f32,
    out: &mut [f32],
) {
    let rep = heads / keys.len().max(1);
    let mut scores = vec![0f32; len];
    for h in 0..heads {
        let g = h / rep.max(1);
        let (kb, vb) = (&keys[g], &vals[g]);
        let qh = &q[h * hd..(h + 1) * hd];
        let mut max = f32::NEG_INFINITY;
        for (j, sc) in scores.iter_mut().enumerate() {
            if key_mask.get(j).copied().unwrap_or(1) == 0 {
                *sc = f32::NEG_INFINITY;
                continue;
            }
            *sc = dot(qh, &kb[j * hd..(j + 1) * hd]) * scale;
            max = max.max(*sc);
        }
        let mut sum = 0f32;
        for sc in scores.iter_mut() {
            *sc = if *sc == f32::NEG_INFINITY {
                0.0
            } else {
                (*sc - max).exp()
            };
            sum += *sc;
        }
        let o = &mut out[h * hd..(h + 1) * hd];
        o.fill(0.0);
        for (j, &e) in scores.iter().enumerate() {
            if e == 0.0 {
                continue;
            }
            let p = e / sum;
            for (od, &vd) in o.iter_mut().zip(&vb[j * hd..(j + 1) * hd]) {
                *od += p * vd;
            }
        }
    }
}

impl<'a> Segments<'a> {
    /// Rotary embedding (on the packed rows) and per-segment attention. `q` `[N, heads,
    /// head_dim]`, `k`/`v` `[N, kv_heads, head_dim]`; returns `[N, heads * head_dim]`.
    pub(crate) fn attend(
        &mut self,
        layer: usize,
        rope: &Rope,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
    ) -> Result<Tensor> {
        use rayon::prelude::*;
        let (_, nh, hd) = q.dims3()?;
        let kvh = k.dim(1)?;
        let q = rope.apply(q, &self.cos, &self.sin)?;
        let k = rope.apply(k, &self.cos, &self.sin)?;
        let fast: Vec<bool> = self.segs.iter().map(Segment::is_fast).collect();
        let mut fast_out: Vec<Option<Vec<f32>>> = vec![None; self.segs.len()];
        if fast.iter().any(|&f| f) {
            let qv = q.flatten_all()?.to_vec1::<f32>()?;
            let kv = k.flatten_all()?.to_vec1::<f32>()?;
            let vv = v.flatten_all()?.to_vec1::<f32>()?;
            let w = kvh * hd;
            let mut off = 0;
            let mut units = Vec::new();
            for (si, (s, &f)) in self.segs.iter_mut().zip(&fast).enumerate() {
                if f {
                    let c = s.cache.as_deref_mut().expect("fast segments have a cache");
                    c.push_flat(
                        layer,
                        s.b,
                        kvh,
                        1,
                        &kv[off * w..(off + s.n) * w],
                        &vv[off * w..(off + s.n) * w],
                    )?;
                    units.extend((0..s.b).map(|r| (si, r, off + r)));
                }
                off += s.n;
            }
            let segs = &self.segs;
            let rows: Vec<Vec<f32>> = units
                .par_iter()
                .map(|&(si, r, at)| {
                    let s = &segs[si];
                    let c = s.cache.as_deref().expect("fast segments have a cache");
                    let (kb, vb, len) = c.flat_row(layer, r, kvh);
                    let mut out = vec![0f32; nh * hd];
                    attend_row(
                        &qv[at * nh * hd..(at + 1) * nh * hd],
                        kb,
                        vb,
                        &s.key_mask[r],
                        nh,
                        hd,
                        len,
                        scale as f32,
                        &mut out,
                    );
                    out
                })
                .collect();
            let mut it = units.iter().zip(rows);
            for (si, &f) in fast.iter().enumerate() {
                if f {
                    let mut buf = Vec::with_capacity(self.segs[si].b * nh * hd);
                    for _ in 0..self.segs[si].b {
                        let (_, row) = it.next().expect("one output per unit");
                        buf.extend(row);
                    }
                    fast_out[si] = Some(buf);
                }
            }
        }
        let mut outs = Vec::with_capacity(self.segs.len());
        let mut off = 0;
        for (si, s) in self.segs.iter_mut().enumerate() {
            let (b, t) = (s.b, s.t);
            if let Some(buf) = fast_out[si].take() {
                outs.push(Tensor::from_vec(buf, (b, nh * hd), q.device())?);
                off += s.n;
                continue;
            }
            let take = |x: &Tensor, heads: usize| -> Result<Tensor> {
                let x = x.narrow(0, off, s.n)?;
                let x = match &s.pack {
                    Some(p) => p.unpack(&x.reshape((s.n, heads * hd))?)?,
                    None => x,
                };
                x.reshape((b, t, heads, hd))?.transpose(1, 2)
            };
            let qs = take(&q, nh)?;
            let ks = take(&k, kvh)?.contiguous()?;
            let vs = take(v, kvh)?.contiguous()?;
            let (ks, vs) = match s.cache.as_deref_mut() {
                Some(c) => c.append(layer, ks, vs)?,
                None => (ks, vs),
            };
            if s.mask.is_none() {
                // The cache now holds past + t keys.
                s.mask = Some(build_mask(s.key_mask, ks.dim(2)? - t, t, q.device())?);
            }
            let mask = s.mask.as_ref().expect("just built");
            let a = attention(&qs, &ks, &vs, mask, scale)?;
            let a = match &s.pack {
                Some(p) => p.pack(&a)?,
                None => a.reshape((b * t, nh * hd))?,
            };
            outs.push(a);
            off += s.n;
        }
        let out = if outs.len() == 1 {
            outs.pop().expect("one output")
        } else {
            Tensor::cat(&outs, 0)?
        };
        pad_last_row(&out, self.extra)
    }
}

#[cfg(test)]
mod linear_tests {
    use super::*;

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= tol * scale, "{x} vs {y} (scale {scale})");
        }
    }

    /// The frozen product gives candle's values, and its backward pass the same input gradient
    /// as candle's matmul backward (which also forms the weight gradient).
    #[test]
    fn frozen_linear_matches_candle_forward_and_input_gradient() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (7, 5), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1.0, 7, &dev).unwrap();
        let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5), &dev).unwrap())
            .unwrap();
        let c = Tensor::randn(0f32, 1.0, (2, 3, 7), &dev).unwrap();
        let lin = candle_nn::Linear::new(w.clone(), Some(bias.clone()));
        let y = dense_forward(&lin, x.as_tensor()).unwrap();
        // Reference: the weight as a variable takes candle's own path.
        let wv = candle_core::Var::from_tensor(&w).unwrap();
        let lin_v = candle_nn::Linear::new(wv.as_tensor().clone(), Some(bias));
        let y_ref = lin_v.forward(x.as_tensor()).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            y_ref.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            "same product"
        );
        let g = (y * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (y_ref * &c).unwrap().sum_all().unwrap().backward().unwrap();
        close(
            g.get(x.as_tensor()).unwrap(),
            g_ref.get(x.as_tensor()).unwrap(),
            1e-6,
        );
        assert!(g.get(&w).is_none(), "no gradient for the constant weight");
        // A non-contiguous input goes through a copy.
        let xt = x.as_tensor().transpose(0, 1).unwrap();
        let yt = dense_forward(&lin, &xt).unwrap();
        close(&yt, &lin.forward(&xt.contiguous().unwrap()).unwrap(), 1e-6);
    }

    /// A LoRA layer equals its merged weight `W + B'·A`, with shared factors and with one copy of
    /// the factors per batch row (whose gradients are then the rows' own).
    #[test]
    fn lora_layer_equals_merged_weight_and_per_row_factors_split_gradients() {
        let dev = Device::Cpu;
        let (d_in, d_out, r) = (6, 4, 2);
        let w = Tensor::randn(0f32, 1.0, (d_out, d_in), &dev).unwrap();
        let a = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (r, d_in), &dev).unwrap())
            .unwrap();
        let b = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (d_out, r), &dev).unwrap())
            .unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 5, d_in), &dev).unwrap();
        let c = Tensor::randn(0f32, 1.0, (3, 5, d_out), &dev).unwrap();
        let lora = Linear::Lora {
            base: candle_nn::Linear::new(w.clone(), None),
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
        };
        let merged = (&w + b.as_tensor().matmul(a.as_tensor()).unwrap()).unwrap();
        let y = lora.forward(&x).unwrap();
        close(
            &y,
            &candle_nn::Linear::new(merged, None).forward(&x).unwrap(),
            1e-5,
        );
        let shared = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();
        // Per-row copies: row i's gradient is the gradient of row i's loss alone.
        let a3 = candle_core::Var::from_tensor(
            &a.as_tensor()
                .unsqueeze(0)
                .unwrap()
                .repeat((3, 1, 1))
                .unwrap(),
        )
        .unwrap();
        let b3 = candle_core::Var::from_tensor(
            &b.as_tensor()
                .unsqueeze(0)
                .unwrap()
                .repeat((3, 1, 1))
                .unwrap(),
        )
        .unwrap();
        let per_row = Linear::Lora {
            base: candle_nn::Linear::new(w.clone(), None),
            a: a3.as_tensor().clone(),
            b: b3.as_tensor().clone(),
        };
        let y3 = per_row.forward(&x).unwrap();
        close(&y3, &y, 1e-6);
        let g3 = (&y3 * &c).unwrap().sum_all().unwrap().backward().unwrap();
        let ga3 = g3.get(a3.as_tensor()).unwrap();
        close(
            &ga3.sum(0).unwrap(),
            shared.get(a.as_tensor()).unwrap(),
            1e-5,
        );
        for i in 0..3 {
            let xi = x.narrow(0, i, 1).unwrap();
            let ci = c.narrow(0, i, 1).unwrap();
            let gi = (lora.forward(&xi).unwrap() * ci)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            close(&ga3.get(i).unwrap(), gi.get(a.as_tensor()).unwrap(), 1e-5);
            close(
                &g3.get(b3.as_tensor()).unwrap().get(i).unwrap(),
                gi.get(b.as_tensor()).unwrap(),
                1e-5,
            );
        }
    }
}
