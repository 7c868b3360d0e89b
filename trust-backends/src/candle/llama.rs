//! Llama causal LM (also the decoder used for Qwen2, see `qwen2.rs`).
//!
//! Reference: Hugging Face transformers `src/transformers/models/llama/modeling_llama.py`
//! (`LlamaForCausalLM`): RMSNorm (normalise in f32, cast, scale), separate q/k/v/o projections
//! with optional `attention_bias`, grouped-query attention (`repeat_kv`), full (or partial)
//! rotary embedding with NeoX `rotate_half`, rope scaling (`default`, `linear`, `llama3`),
//! SwiGLU MLP `down(act(gate x) * up x)` with optional `mlp_bias`, `lm_head` tied to
//! `embed_tokens` when `tie_word_embeddings`.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::config::ModelConfig;
use super::layers::{EMBED_INIT, Linear, QuantSource, RmsNorm, Rope, Segments};

#[derive(Debug, Clone)]
struct Layer {
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

/// A Llama-style decoder stack with its output layer (Llama and Qwen2 checkpoints).
#[derive(Debug, Clone)]
pub struct Llama {
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    pub(crate) rope: Rope,
    cfg: ModelConfig,
}

impl Llama {
    /// Builds the model from `vb` (root of the checkpoint: `model.*`, `lm_head.*`). Biases follow
    /// `cfg.qkv_bias`, `cfg.o_bias` and `cfg.mlp_bias`.
    pub fn load(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Self::load_q(cfg, vb, None)
    }

    /// [`Self::load`], with the projection (and output) weights taken from `quant` where it has
    /// them (quantized inference); norms, biases and the embedding stay dense.
    pub(crate) fn load_q(
        cfg: &ModelConfig,
        vb: VarBuilder,
        quant: Option<&dyn QuantSource>,
    ) -> Result<Self> {
        let h = cfg.hidden_size;
        let hd = cfg.head_dim;
        let nh = cfg.num_attention_heads;
        let kvh = cfg.num_key_value_heads;
        let ff = cfg.intermediate_size;
        let m = vb.pp("model");
        let embed_w =
            m.pp("embed_tokens")
                .get_with_hints((cfg.vocab_size, h), "weight", EMBED_INIT)?;
        let embed_tokens = Embedding::new(embed_w.clone(), h);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = m.pp(format!("layers.{i}"));
            let a = l.pp("self_attn");
            let p = l.pp("mlp");
            layers.push(Layer {
                input_layernorm: RmsNorm::load(h, cfg.norm_eps, l.pp("input_layernorm"))?,
                post_attention_layernorm: RmsNorm::load(
                    h,
                    cfg.norm_eps,
                    l.pp("post_attention_layernorm"),
                )?,
                q_proj: Linear::load_q(h, nh * hd, cfg.qkv_bias, a.pp("q_proj"), quant)?,
                k_proj: Linear::load_q(h, kvh * hd, cfg.qkv_bias, a.pp("k_proj"), quant)?,
                v_proj: Linear::load_q(h, kvh * hd, cfg.qkv_bias, a.pp("v_proj"), quant)?,
                o_proj: Linear::load_q(nh * hd, h, cfg.o_bias, a.pp("o_proj"), quant)?,
                gate_proj: Linear::load_q(h, ff, cfg.mlp_bias, p.pp("gate_proj"), quant)?,
                up_proj: Linear::load_q(h, ff, cfg.mlp_bias, p.pp("up_proj"), quant)?,
                down_proj: Linear::load_q(ff, h, cfg.mlp_bias, p.pp("down_proj"), quant)?,
            });
        }
        let norm = RmsNorm::load(h, cfg.norm_eps, m.pp("norm"))?;
        let head_name = if cfg.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        let quant_head = quant.and_then(|q| q.get(head_name, &[cfg.vocab_size, h]));
        let lm_head = if let Some(w) = quant_head {
            Linear::Quant {
                weight: candle_core::quantized::QMatMul::from_qtensor(w?)?,
                bias: None,
            }
        } else if cfg.tie_word_embeddings {
            Linear::from_weight(embed_w)
        } else {
            Linear::from_weight(vb.pp("lm_head").get_with_hints(
                (cfg.vocab_size, h),
                "weight",
                EMBED_INIT,
            )?)
        };
        let rope = Rope::new(
            &cfg.rope,
            cfg.rotary_dim(),
            cfg.max_position_embeddings,
            vb.dtype(),
            vb.device(),
        )?;
        Ok(Llama {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            cfg: cfg.clone(),
        })
    }

    /// Final hidden states `[N, hidden]` (after the final RMSNorm) of the packed token rows
    /// `ids` `[N]` of `segs` (see `GptNeoX::forward_segments`).
    pub(crate) fn forward_segments(&self, ids: &Tensor, segs: &mut Segments) -> Result<Tensor> {
        let x = self.embed_tokens.forward(ids)?;
        let x = self.forward_blocks(x, 0..self.layers.len(), segs)?;
        self.final_norm(&x)
    }

    /// The embeddings of `ids` `[N]`: the input of block 0.
    pub(crate) fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.forward(ids)
    }

    /// Blocks `layers` on the packed rows `x` `[N, hidden]` (the input of block
    /// `layers.start`), without the final norm.
    pub(crate) fn forward_blocks(
        &self,
        mut x: Tensor,
        layers: std::ops::Range<usize>,
        segs: &mut Segments,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let nh = self.cfg.num_attention_heads;
        let kvh = self.cfg.num_key_value_heads;
        let hd = self.cfg.head_dim;
        let scale = 1.0 / (hd as f64).sqrt();
        for i in layers {
            let layer = &self.layers[i];
            let y = layer.input_layernorm.forward(&x)?;
            let q = layer.q_proj.forward(&y)?.reshape((n, nh, hd))?;
            let k = layer.k_proj.forward(&y)?.reshape((n, kvh, hd))?;
            let v = layer.v_proj.forward(&y)?.reshape((n, kvh, hd))?;
            let attn = segs.attend(i, &self.rope, &q, &k, &v, scale)?;
            x = (x + layer.o_proj.forward(&attn)?)?;
            let y = layer.post_attention_layernorm.forward(&x)?;
            let g = self.cfg.hidden_act.apply(&layer.gate_proj.forward(&y)?)?;
            let u = layer.up_proj.forward(&y)?;
            x = (x + layer.down_proj.forward(&(g * u)?)?)?;
        }
        Ok(x)
    }

    /// The final norm (after the last block).
    pub(crate) fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        self.norm.forward(x)
    }

    /// Output projection.
    pub(crate) fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }
}
