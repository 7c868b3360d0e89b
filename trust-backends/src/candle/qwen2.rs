//! Qwen2 causal LM.
//!
//! Reference: Hugging Face transformers `src/transformers/models/qwen2/modeling_qwen2.py`
//! (`Qwen2ForCausalLM`). The decoder is Llama's (RMSNorm, GQA, RoPE, SwiGLU) except that the
//! q/k/v projections always carry a bias and `o_proj` and the MLP never do; most checkpoints tie
//! `lm_head` to `embed_tokens`. `config.rs` sets those flags for `model_type = "qwen2"`, so the
//! shared [`Llama`] stack is reused. Sliding-window attention (`use_sliding_window = true`) is
//! rejected at config time.

use candle_core::Result;
use candle_nn::VarBuilder;

use super::config::{Architecture, ModelConfig};
use super::llama::Llama;

/// Builds a Qwen2 model (the [`Llama`] stack with Qwen2's bias layout).
pub fn load(cfg: &ModelConfig, vb: VarBuilder) -> Result<Llama> {
    load_q(cfg, vb, None)
}

/// [`load`] with quantized weights where `quant` has them (see [`Llama::load_q`]).
pub(crate) fn load_q(
    cfg: &ModelConfig,
    vb: VarBuilder,
    quant: Option<&dyn super::layers::QuantSource>,
) -> Result<Llama> {
    debug_assert_eq!(cfg.arch, Architecture::Qwen2);
    let mut cfg = cfg.clone();
    cfg.qkv_bias = true;
    cfg.o_bias = false;
    cfg.mlp_bias = false;
    Llama::load_q(&cfg, vb, quant)
}
