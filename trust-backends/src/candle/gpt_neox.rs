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
use super::layers::{EMBED_INIT, LayerNorm, Linear, Rope, Segments};

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

    /// Final hidden states `[N, hidden]` (after the final LayerNorm) of the packed token rows
    /// `ids` `[N]` of `segs`: norms, projections and the MLP run on all rows at once, attention
    /// per segment ([`Segments::attend`]).
    pub(crate) fn forward_segments(&self, ids: &Tensor, segs: &mut Segments) -> Result<Tensor> {
        let x = self.embed(ids)?;
        let x = self.forward_blocks(x, 0..self.layers.len(), segs)?;
        self.final_norm(&x)
    }

    /// The embeddings of `ids` `[N]`: the input of block 0.
    pub(crate) fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        use candle_core::Module;
        self.embed_in.forward(ids)
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
        let hs = self.cfg.head_dim;
        let scale = 1.0 / (hs as f64).sqrt();
        for i in layers {
            let layer = &self.layers[i];
            let ln1 = layer.input_layernorm.forward(&x)?;
            let qkv = layer
                .query_key_value
                .forward(&ln1)?
                .reshape((n, nh, 3 * hs))?;
            let q = qkv.narrow(2, 0, hs)?;
            let k = qkv.narrow(2, hs, hs)?;
            let v = qkv.narrow(2, 2 * hs, hs)?;
            let attn = segs.attend(i, &self.rope, &q, &k, &v, scale)?;
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
        Ok(x)
    }

    /// The final norm (after the last block).
    pub(crate) fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        self.final_layer_norm.forward(x)
    }

    /// Output projection.
    pub(crate) fn lm_head(&self, hidden: &Tensor) -> Result<Tensor> {
        self.embed_out.forward(hidden)
    }
}
