//! GPT-NeoX (Pythia) causal LM.
//!
//! Reference: Hugging Face transformers `src/transformers/models/gpt_neox/modeling_gpt_neox.py`
//! (`GPTNeoXForCausalLM`): fused `query_key_value` projection laid out per head as `[q | k | v]`,
//! partial rotary embedding on the first `rotary_pct * head_size` dims of each head (NeoX
//! `rotate_half`), LayerNorm with bias, parallel (`x + attn(ln1 x) + mlp(ln2 x)`) or sequential
//! residual, GELU MLP, untied `embed_out` (tied when `tie_word_embeddings`).

use candle_core::{Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::config::ModelConfig;
use super::layers::{EMBED_INIT, KvCache, LayerNorm, Linear, Packing, Rope, attention};

#[derive(Debug, Clone)]
struct Layer {
    input_layernorm: LayerNorm,
    post_attention_layernorm: LayerNorm,
    query_key_value: Linear,
    dense: Linear,
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
}

/// A GPT-NeoX decoder stack with its output layer.
#[derive(Debug, Clone)]
pub struct GptNeoX {
    embed_in: Embedding,
    layers: Vec<Layer>,
    final_layer_norm: LayerNorm,
    embed_out: Linear,
    pub(crate) rope: Rope,
    cfg: ModelConfig,
}

impl GptNeoX {
    /// Builds the model from `vb` (root of the checkpoint: `gpt_neox.*`, `embed_out.*`).
    pub fn load(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let m = vb.pp("gpt_neox");
        let embed_w = m
            .pp("embed_in")
            .get_with_hints((cfg.vocab_size, h), "weight", EMBED_INIT)?;
        let embed_in = Embedding::new(embed_w.clone(), h);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = m.pp(format!("layers.{i}"));
            let a = l.pp("attention");
            layers.push(Layer {
                input_layernorm: LayerNorm::load(h, cfg.norm_eps, l.pp("input_layernorm"))?,
                post_attention_layernorm: LayerNorm::load(
                    h,
                    cfg.norm_eps,
                    l.pp("post_attention_layernorm"),
                )?,
                query_key_value: Linear::load(h, 3 * h, cfg.qkv_bias, a.pp("query_key_value"))?,
                dense: Linear::load(h, h, cfg.o_bias, a.pp("dense"))?,
                dense_h_to_4h: Linear::load(
                    h,
                    cfg.intermediate_size,
                    cfg.mlp_bias,
                    l.pp("mlp.dense_h_to_4h"),
                )?,
                dense_4h_to_h: Linear::load(
                    cfg.intermediate_size,
                    h,
                    cfg.mlp_bias,
                    l.pp("mlp.dense_4h_to_h"),
                )?,
            });
        }
        let final_layer_norm = LayerNorm::load(h, cfg.norm_eps, m.pp("final_layer_norm"))?;
        let embed_out = if cfg.tie_word_embeddings {
            Linear::from_weight(embed_w)
        } else {
            Linear::from_weight(vb.pp("embed_out").get_with_hints(
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
        Ok(GptNeoX {
            embed_in,
            layers,
            final_layer_norm,
            embed_out,
            rope,
            cfg: cfg.clone(),
        })
    }

    /// Final hidden states `[b, t, hidden]` (after the final LayerNorm).
    pub(crate) fn forward_hidden(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.forward_hidden_packed(input_ids, mask, cos, sin, cache, None)
    }

    /// [`Self::forward_hidden`], optionally with the position-wise layers (norms, projections,
    /// MLP) run only on the real tokens of a padded batch: `pack` gathers them to `[n, hidden]`
    /// and scatters them back to `[b, t, ...]` around attention (padding positions then hold
    /// zeros there, which the mask hides). The real tokens' outputs are the same (each row of a
    /// matmul and of a row-wise norm only depends on its own inputs); padding positions of the
    /// result are zeros.
    pub(crate) fn forward_hidden_packed(
        &self,
        input_ids: &Tensor,
        mask: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mut cache: Option<&mut KvCache>,
        pack: Option<&Packing>,
    ) -> Result<Tensor> {
        use candle_core::Module;
        let (b, t) = input_ids.dims2()?;
        let nh = self.cfg.num_attention_heads;
        let hs = self.cfg.head_dim;
        let scale = 1.0 / (hs as f64).sqrt();
        let mut x = match pack {
            Some(p) => self
                .embed_in
                .forward(&input_ids.flatten_all()?.index_select(&p.gather, 0)?)?,
            None => self.embed_in.forward(input_ids)?,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let ln1 = layer.input_layernorm.forward(&x)?;
            let qkv = layer.query_key_value.forward(&ln1)?;
            let qkv = match pack {
                Some(p) => p.unpack(&qkv)?,
                None => qkv,
            };
            let qkv = qkv.reshape((b, t, nh, 3 * hs))?.transpose(1, 2)?;
            let q = qkv.narrow(3, 0, hs)?;
            let k = qkv.narrow(3, hs, hs)?;
            let v = qkv.narrow(3, 2 * hs, hs)?.contiguous()?;
            let q = self.rope.apply(&q, cos, sin)?;
            let k = self.rope.apply(&k, cos, sin)?.contiguous()?;
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.append(i, k, v)?,
                None => (k, v),
            };
            let attn = attention(&q, &k, &v, mask, scale)?;
            let attn = match pack {
                Some(p) => p.pack(&attn)?,
                None => attn,
            };
            let attn = layer.dense.forward(&attn)?;
            let mlp = |y: &Tensor| -> Result<Tensor> {
                let hdn = layer.dense_h_to_4h.forward(y)?;
                layer
                    .dense_4h_to_h
                    .forward(&self.cfg.hidden_act.apply(&hdn)?)
            };
            x = if self.cfg.use_parallel_residual {
                let m = mlp(&layer.post_attention_layernorm.forward(&x)?)?;
                ((x + attn)? + m)?
            } else {
                let a = (x + attn)?;
                let m = mlp(&layer.post_attention_layernorm.forward(&a)?)?;
                (a + m)?
            };
        }
        let x = self.final_layer_norm.forward(&x)?;
        match pack {
            Some(p) => p.unpack(&x)?.reshape((b, t, ())),
            None => Ok(x),
        }
    }

    /// Output projection.
    pub(crate) fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.embed_out.forward(hidden)
    }
}
