//! Build a small GPT-NeoX model from nothing: a byte-level BPE tokenizer trained on the given
//! texts and randomly initialised weights, written as a Hugging Face model directory
//! (`config.json`, `tokenizer.json`, `model.safetensors`) that any HF-compatible loader reads.
//!
//! This is what `trust demo --tiny` and the tests start from: a model that needs no download.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};
use trust_core::rng::{SplitMix64, derive_seed};

/// The end-of-text token (id 0), as in Pythia's tokenizer.
pub const EOT: &str = "<|endoftext|>";

/// Shape of a GPT-NeoX model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeoxShape {
    /// Vocabulary size (also the BPE target size).
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Number of blocks.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Maximum sequence length.
    pub max_positions: usize,
    /// Fraction of each head's dims that get rotary embeddings.
    pub rotary_pct: f64,
}

impl NeoxShape {
    /// The default demo size: small enough to pretrain, align and evaluate on 2 CPU cores.
    pub fn demo() -> Self {
        NeoxShape {
            vocab_size: 1024,
            hidden_size: 128,
            num_layers: 2,
            num_heads: 4,
            intermediate_size: 512,
            max_positions: 1024,
            rotary_pct: 0.25,
        }
    }

    /// The HF `config.json`.
    pub fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["GPTNeoXForCausalLM"],
            "model_type": "gpt_neox",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": "gelu",
            "rotary_pct": self.rotary_pct,
            "rotary_emb_base": 10000,
            "max_position_embeddings": self.max_positions,
            "layer_norm_eps": 1e-5,
            "use_parallel_residual": true,
            "attention_bias": true,
            "tie_word_embeddings": false,
            "bos_token_id": 0,
            "eos_token_id": 0,
            "torch_dtype": "float32",
        })
    }

    /// Randomly initialised weights with HF tensor names: N(0, 0.02) for matrices, zero biases,
    /// unit norm gains. Deterministic in `seed`.
    pub fn init_weights(&self, seed: u64, device: &Device) -> Result<HashMap<String, Tensor>> {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let mut shapes: Vec<(String, Vec<usize>, Init)> = vec![
            ("gpt_neox.embed_in.weight".into(), vec![v, h], Init::Normal),
            (
                "gpt_neox.final_layer_norm.weight".into(),
                vec![h],
                Init::Ones,
            ),
            (
                "gpt_neox.final_layer_norm.bias".into(),
                vec![h],
                Init::Zeros,
            ),
            ("embed_out.weight".into(), vec![v, h], Init::Normal),
        ];
        for l in 0..self.num_layers {
            let p = format!("gpt_neox.layers.{l}");
            for ln in ["input_layernorm", "post_attention_layernorm"] {
                shapes.push((format!("{p}.{ln}.weight"), vec![h], Init::Ones));
                shapes.push((format!("{p}.{ln}.bias"), vec![h], Init::Zeros));
            }
            for (name, out, inp) in [
                ("attention.query_key_value", 3 * h, h),
                ("attention.dense", h, h),
                ("mlp.dense_h_to_4h", i, h),
                ("mlp.dense_4h_to_h", h, i),
            ] {
                shapes.push((format!("{p}.{name}.weight"), vec![out, inp], Init::Normal));
                shapes.push((format!("{p}.{name}.bias"), vec![out], Init::Zeros));
            }
        }
        let mut out = HashMap::new();
        for (name, shape, init) in shapes {
            let n: usize = shape.iter().product();
            let t = match init {
                Init::Zeros => Tensor::zeros(shape, DType::F32, device)?,
                Init::Ones => Tensor::ones(shape, DType::F32, device)?,
                Init::Normal => {
                    let mut rng = SplitMix64::new(derive_seed(seed, &name));
                    let vals: Vec<f32> = (0..n).map(|_| (normal(&mut rng) * 0.02) as f32).collect();
                    Tensor::from_vec(vals, shape, device)?
                }
            };
            out.insert(name, t);
        }
        Ok(out)
    }
}

enum Init {
    Zeros,
    Ones,
    Normal,
}

/// A standard normal draw (Box–Muller).
pub fn normal(rng: &mut SplitMix64) -> f64 {
    let u1 = rng.next_f64().max(f64::MIN_POSITIVE);
    let u2 = rng.next_f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Trains a byte-level BPE tokenizer (GPT-2 pre-tokenisation, no prefix space, `<|endoftext|>` =
/// id 0), like the Pythia tokenizer but small.
pub fn train_tokenizer<S: AsRef<str> + Send>(
    texts: impl Iterator<Item = S> + Send,
    vocab_size: usize,
) -> std::result::Result<Tokenizer, tokenizers::Error> {
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(EOT, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tok.with_decoder(Some(ByteLevel::default()));
    tok.with_post_processor(Some(ByteLevel::default().trim_offsets(false)));
    tok.train(&mut trainer, texts)?;
    Ok(tok)
}

/// Writes `config.json`, `tokenizer.json` and `model.safetensors` into `dir`.
pub fn write_model_dir(
    dir: &Path,
    config: &serde_json::Value,
    tokenizer: &Tokenizer,
    weights: &HashMap<String, Tensor>,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(config)? + "\n",
    )?;
    tokenizer.save(dir.join("tokenizer.json"), false)?;
    candle_core::safetensors::save(weights, dir.join("model.safetensors"))?;
    Ok(())
}

/// A random-weight model of `shape` with a tokenizer trained on `texts`, written to `dir` as a
/// Hugging Face directory (CPU, f32): a fixture for tests and examples in one call.
pub fn write_random_model<S: AsRef<str> + Send>(
    dir: &Path,
    shape: &NeoxShape,
    texts: impl Iterator<Item = S> + Send,
    seed: u64,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let tok = train_tokenizer(texts, shape.vocab_size)?;
    let weights = shape.init_weights(seed, &Device::Cpu)?;
    write_model_dir(dir, &shape.config_json(), &tok, &weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_trains_and_round_trips() {
        let texts: Vec<String> = (0..200)
            .map(|i| format!("\n\nHuman: how do I bake bread number {i}?\n\nAssistant: You mix flour and water."))
            .collect();
        let tok = train_tokenizer(texts.iter(), 300).unwrap();
        assert_eq!(tok.token_to_id(EOT), Some(0));
        let s = "\n\nHuman: how do I bake bread?";
        let enc = tok.encode(s, false).unwrap();
        assert!(enc.get_ids().len() < s.len(), "merges learned");
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), s);
        assert!(tok.get_vocab_size(true) <= 300);
    }

    #[test]
    fn weights_have_hf_names_shapes_and_are_seeded() {
        let shape = NeoxShape {
            vocab_size: 50,
            hidden_size: 8,
            num_layers: 2,
            num_heads: 2,
            intermediate_size: 16,
            max_positions: 32,
            rotary_pct: 0.25,
        };
        let w = shape.init_weights(1, &Device::Cpu).unwrap();
        assert_eq!(w.len(), 4 + 2 * 12);
        assert_eq!(
            w["gpt_neox.layers.1.attention.query_key_value.weight"].dims(),
            &[24, 8]
        );
        let again = shape.init_weights(1, &Device::Cpu).unwrap();
        let a: Vec<f32> = w["embed_out.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = again["embed_out.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b);
        let std = (a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / a.len() as f64).sqrt();
        assert!((std - 0.02).abs() < 0.005, "std {std}");
    }
}
