//! LoRA adapters that work with any model built from a `VarBuilder`.
//!
//! Instead of rewriting every model's linear layers, an adapter set puts its factors beside the
//! base weights it adapts ([`LoraAdapters::factored`]: `<module>.lora_a` = `A`, `<module>.lora_b`
//! = `(α / r) · B`, graph-connected to the trainable variables) and the model is built from that
//! map (`VarBuilder::from_tensors`): every model family's linear layer then computes
//! `x·Wᵀ + (x·Aᵀ)·B'ᵀ`, so backpropagation reaches `A` and `B` through rank-r products and never
//! forms an `[out, in]` weight gradient. [`LoraAdapters::merged`] gives the equivalent weights
//! `W' = W + (α / r) · B · A` (saved checkpoints, inference).
//!
//! Saved adapters use PEFT's tensor names (`base_model.model.<module>.lora_A.weight`, `lora_B`)
//! with an `adapter_config.json`, so they can be read back by PEFT.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor, Var};
use serde::{Deserialize, Serialize};
use trust_core::rng::{SplitMix64, derive_seed};

/// Which linear layers get adapters, and their rank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank r.
    pub rank: usize,
    /// Scaling numerator α (scale = α / r).
    pub alpha: f64,
    /// Module-name suffixes to adapt, e.g. `attention.query_key_value`, `mlp.dense_4h_to_h`.
    pub targets: Vec<String>,
    /// Block indices to adapt (`layers.<i>.`); `None` = every block.
    #[serde(default)]
    pub layers: Option<Vec<usize>>,
}

impl LoraConfig {
    /// `α / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Whether the weight tensor `name` (ending in `.weight`) is adapted.
    pub fn matches(&self, name: &str) -> bool {
        let Some(module) = name.strip_suffix(".weight") else {
            return false;
        };
        if !self.targets.iter().any(|t| module.ends_with(t.as_str())) {
            return false;
        }
        match &self.layers {
            None => true,
            Some(layers) => layer_index(module).is_some_and(|i| layers.contains(&i)),
        }
    }
}

/// The attention projections of a model family, the default LoRA targets of `trust align`:
/// `attention.query_key_value` and `attention.dense` for GPT-NeoX (the paper's setting),
/// `self_attn.{q,k,v,o}_proj` for Llama and Qwen2.
pub fn default_targets(arch: trust_backends::candle::Architecture) -> Vec<String> {
    use trust_backends::candle::Architecture;
    let names: &[&str] = match arch {
        Architecture::GptNeoX => &["attention.query_key_value", "attention.dense"],
        Architecture::Llama | Architecture::Qwen2 => &[
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
        ],
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// The MLP projections of a model family (`mlp.dense_h_to_4h`, `mlp.dense_4h_to_h` for
/// GPT-NeoX; `mlp.{gate,up,down}_proj` for Llama and Qwen2), added to [`default_targets`] by the
/// main job on a pretrained model.
pub fn mlp_targets(arch: trust_backends::candle::Architecture) -> Vec<String> {
    use trust_backends::candle::Architecture;
    let names: &[&str] = match arch {
        Architecture::GptNeoX => &["mlp.dense_h_to_4h", "mlp.dense_4h_to_h"],
        Architecture::Llama | Architecture::Qwen2 => {
            &["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
        }
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// The block index in a name like `gpt_neox.layers.3.attention.dense`.
pub fn layer_index(name: &str) -> Option<usize> {
    let mut parts = name.split('.');
    while let Some(p) = parts.next() {
        if p == "layers" || p == "h" {
            return parts.next()?.parse().ok();
        }
    }
    None
}

/// One adapted module.
#[derive(Debug)]
pub struct LoraModule {
    /// Module path (the weight name without `.weight`).
    pub module: String,
    /// `A`: `[r, d_in]`.
    pub a: Var,
    /// `B`: `[d_out, r]`.
    pub b: Var,
}

/// A set of LoRA adapters over a base model's weights.
#[derive(Debug)]
pub struct LoraAdapters {
    /// The configuration.
    pub config: LoraConfig,
    /// Adapted modules, sorted by name.
    pub modules: Vec<LoraModule>,
}

impl LoraAdapters {
    /// Fresh adapters for every matching 2-D weight of `base`: `A` uniform in ±1/√d_in (seeded),
    /// `B = 0`, so the adapted model starts equal to the base (PEFT's default).
    pub fn init(config: LoraConfig, base: &HashMap<String, Tensor>, seed: u64) -> Result<Self> {
        let mut names: Vec<&String> = base.keys().filter(|n| config.matches(n)).collect();
        names.sort();
        if names.is_empty() {
            candle_core::bail!(
                "LoRA targets {:?} match no weight of the model",
                config.targets
            );
        }
        let mut modules = Vec::new();
        for name in names {
            let w = &base[name];
            let (d_out, d_in) = w.dims2()?;
            let module = name.strip_suffix(".weight").unwrap_or(name).to_string();
            let mut rng = SplitMix64::new(derive_seed(seed, &module));
            let bound = 1.0 / (d_in as f64).sqrt();
            let a: Vec<f32> = (0..config.rank * d_in)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
                .collect();
            let a = Var::from_vec(a, (config.rank, d_in), w.device())?;
            let b = Var::zeros((d_out, config.rank), DType::F32, w.device())?;
            modules.push(LoraModule { module, a, b });
        }
        Ok(LoraAdapters { config, modules })
    }

    /// Adapters with given factors (e.g. from a truncated SVD of `W_ft − W_base`).
    pub fn from_factors(
        config: LoraConfig,
        factors: Vec<(String, Tensor, Tensor)>,
    ) -> Result<Self> {
        let mut modules = Vec::new();
        for (module, a, b) in factors {
            modules.push(LoraModule {
                module,
                a: Var::from_tensor(&a)?,
                b: Var::from_tensor(&b)?,
            });
        }
        modules.sort_by(|x, y| x.module.cmp(&y.module));
        Ok(LoraAdapters { config, modules })
    }

    /// The trainable variables, `A` then `B` per module, in module order.
    pub fn vars(&self) -> Vec<Var> {
        self.modules
            .iter()
            .flat_map(|m| [m.a.clone(), m.b.clone()])
            .collect()
    }

    /// Base weights with the adapted ones replaced by `W + scale · B · A` (graph-connected).
    pub fn merged(&self, base: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
        let mut out = base.clone();
        let scale = self.config.scale();
        for m in &self.modules {
            let key = format!("{}.weight", m.module);
            let Some(w) = base.get(&key) else {
                candle_core::bail!("LoRA module `{}` has no base weight `{key}`", m.module)
            };
            let delta =
                m.b.as_tensor()
                    .matmul(m.a.as_tensor())?
                    .affine(scale, 0.0)?;
            out.insert(key, (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?);
        }
        Ok(out)
    }

    /// Base weights with each adapted module's factors beside its weight: `<module>.lora_a` =
    /// `A` `[r, in]` and `<module>.lora_b` = `(α / r) · B` `[out, r]`, graph-connected to the
    /// variables. A model built from this map computes the adapted layers as
    /// `x·Wᵀ + (x·Aᵀ)·B'ᵀ` (the same function as [`Self::merged`], up to float rounding).
    pub fn factored(&self, base: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
        self.factored_with(base, |m| {
            Ok((m.a.as_tensor().clone(), m.b.as_tensor().clone()))
        })
    }

    /// [`Self::factored`] with each module's factors `(A, B)` (unscaled; `B` is scaled by
    /// `α / r` here) given by `factors`, e.g. one copy per batch row (`[n, r, in]`,
    /// `[n, out, r]`), which the model's linear layers accept too.
    pub fn factored_with(
        &self,
        base: &HashMap<String, Tensor>,
        mut factors: impl FnMut(&LoraModule) -> Result<(Tensor, Tensor)>,
    ) -> Result<HashMap<String, Tensor>> {
        let mut out = base.clone();
        let scale = self.config.scale();
        for m in &self.modules {
            let key = format!("{}.weight", m.module);
            if !base.contains_key(&key) {
                candle_core::bail!("LoRA module `{}` has no base weight `{key}`", m.module)
            }
            let (a, b) = factors(m)?;
            out.insert(format!("{}.lora_a", m.module), a);
            out.insert(format!("{}.lora_b", m.module), b.affine(scale, 0.0)?);
        }
        Ok(out)
    }

    /// Saves `adapter_model.safetensors` and `adapter_config.json` (PEFT layout) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut tensors = HashMap::new();
        for m in &self.modules {
            tensors.insert(
                format!("base_model.model.{}.lora_A.weight", m.module),
                m.a.as_tensor().clone(),
            );
            tensors.insert(
                format!("base_model.model.{}.lora_B.weight", m.module),
                m.b.as_tensor().clone(),
            );
        }
        crate::train::save_tensors(&tensors, &dir.join("adapter_model.safetensors"))?;
        let cfg = serde_json::json!({
            "peft_type": "LORA",
            "r": self.config.rank,
            "lora_alpha": self.config.alpha,
            "lora_dropout": 0.0,
            "target_modules": self.config.targets,
            "layers_to_transform": self.config.layers,
            "bias": "none",
        });
        trust_core::fsutil::write_atomic(
            &dir.join("adapter_config.json"),
            serde_json::to_string_pretty(&cfg).expect("json"),
        )?;
        Ok(())
    }

    /// Loads adapters saved by [`LoraAdapters::save`].
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", cfg_path.display())))?;
        let config = LoraConfig {
            rank: v["r"].as_u64().unwrap_or(0) as usize,
            alpha: v["lora_alpha"].as_f64().unwrap_or(0.0),
            targets: serde_json::from_value(v["target_modules"].clone()).unwrap_or_default(),
            layers: serde_json::from_value(v["layers_to_transform"].clone()).unwrap_or(None),
        };
        if config.rank == 0 {
            candle_core::bail!("{}: `r` missing or zero", cfg_path.display());
        }
        let tensors =
            candle_core::safetensors::load(dir.join("adapter_model.safetensors"), device)?;
        let mut factors = Vec::new();
        for (name, a) in &tensors {
            if let Some(module) = name
                .strip_prefix("base_model.model.")
                .and_then(|n| n.strip_suffix(".lora_A.weight"))
            {
                let bname = format!("base_model.model.{module}.lora_B.weight");
                let Some(b) = tensors.get(&bname) else {
                    candle_core::bail!("adapter lacks `{bname}`")
                };
                factors.push((module.to_string(), a.clone(), b.clone()));
            }
        }
        Self::from_factors(config, factors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> HashMap<String, Tensor> {
        let dev = Device::Cpu;
        let mut m = HashMap::new();
        for i in 0..3 {
            m.insert(
                format!("gpt_neox.layers.{i}.attention.dense.weight"),
                Tensor::arange(0f32, 12.0, &dev)
                    .unwrap()
                    .reshape((3, 4))
                    .unwrap(),
            );
            m.insert(
                format!("gpt_neox.layers.{i}.attention.dense.bias"),
                Tensor::zeros(3, DType::F32, &dev).unwrap(),
            );
        }
        m
    }

    #[test]
    fn config_selects_targets_and_layers() {
        let c = LoraConfig {
            rank: 2,
            alpha: 4.0,
            targets: vec!["attention.dense".into()],
            layers: Some(vec![1, 2]),
        };
        assert!(c.matches("gpt_neox.layers.1.attention.dense.weight"));
        assert!(!c.matches("gpt_neox.layers.0.attention.dense.weight"));
        assert!(!c.matches("gpt_neox.layers.1.attention.dense.bias"));
        assert_eq!(c.scale(), 2.0);
        let bad = LoraConfig {
            targets: vec!["nope".into()],
            ..c
        };
        assert!(LoraAdapters::init(bad, &base(), 0).is_err());
    }

    #[test]
    fn merged_weights_start_at_base_and_carry_gradients_to_a_and_b() {
        let c = LoraConfig {
            rank: 2,
            alpha: 2.0,
            targets: vec!["attention.dense".into()],
            layers: None,
        };
        let b = base();
        let ad = LoraAdapters::init(c, &b, 7).unwrap();
        assert_eq!(ad.modules.len(), 3);
        let merged = ad.merged(&b).unwrap();
        let key = "gpt_neox.layers.0.attention.dense.weight";
        let diff: f32 = (&merged[key] - &b[key])
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0, "B = 0 at init");
        // Set B to ones and check W' = W + scale * B A, and that gradients reach A and B.
        ad.modules[0]
            .b
            .set(&Tensor::ones((3, 2), DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let merged = ad.merged(&b).unwrap();
        let loss = merged[key].sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        assert!(grads.get(ad.modules[0].a.as_tensor()).is_some());
        assert!(grads.get(ad.modules[0].b.as_tensor()).is_some());
        let want = (&b[key]
            + ad.modules[0]
                .b
                .as_tensor()
                .matmul(ad.modules[0].a.as_tensor())
                .unwrap())
        .unwrap();
        let err: f32 = (&merged[key] - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(err < 1e-6);
    }

    #[test]
    fn save_and_load_round_trip_exactly() {
        let c = LoraConfig {
            rank: 2,
            alpha: 8.0,
            targets: vec!["attention.dense".into()],
            layers: Some(vec![0]),
        };
        let ad = LoraAdapters::init(c.clone(), &base(), 3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        ad.save(dir.path()).unwrap();
        let back = LoraAdapters::load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(back.config, c);
        assert_eq!(back.modules.len(), 1);
        let a0: Vec<Vec<f32>> = ad.modules[0].a.as_tensor().to_vec2().unwrap();
        let a1: Vec<Vec<f32>> = back.modules[0].a.as_tensor().to_vec2().unwrap();
        assert_eq!(a0, a1);
    }
}
