//! `config.json` parsing shared by the model families.
//!
//! Accepts both the transformers-4.x spelling (`rotary_pct`, `rotary_emb_base`, `rope_theta`,
//! `rope_scaling`, `torch_dtype`) and the 5.x spelling (`rope_parameters { rope_theta,
//! partial_rotary_factor, rope_type, ... }`, `dtype`). When both are present, `rope_parameters`
//! wins (the shared fixtures carry both with identical values).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::BackendError;

/// Which family a checkpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// GPT-NeoX / Pythia (`model_type = "gpt_neox"`).
    GptNeoX,
    /// Llama (`model_type = "llama"`).
    Llama,
    /// Qwen2 (`model_type = "qwen2"`).
    Qwen2,
}

impl Architecture {
    /// The `model_type` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::GptNeoX => "gpt_neox",
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

/// Activation functions (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact erf GELU (`"gelu"`).
    GeluErf,
    /// tanh-approximated GELU (`"gelu_new"`, `"gelu_fast"`, `"gelu_pytorch_tanh"`).
    GeluTanh,
    /// SiLU / swish (`"silu"`, `"swish"`).
    Silu,
    /// ReLU (`"relu"`).
    Relu,
}

impl Activation {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_fast" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "silu" | "swish" => Activation::Silu,
            "relu" => Activation::Relu,
            _ => return None,
        })
    }

    pub(crate) fn apply(self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Activation::GeluErf => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Silu => x.silu(),
            Activation::Relu => x.relu(),
        }
    }
}

/// RoPE frequency scaling (`rope_type`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// Scale factor.
        factor: f64,
    },
    /// Llama 3.x frequency-dependent scaling.
    Llama3 {
        /// Scale factor.
        factor: f64,
        /// Low-frequency factor.
        low_freq_factor: f64,
        /// High-frequency factor.
        high_freq_factor: f64,
        /// Context length the model was pre-trained with.
        original_max_position_embeddings: f64,
    },
}

/// Rotary embedding settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    /// Base (`rope_theta`, `rotary_emb_base`).
    pub theta: f64,
    /// Fraction of each head's dimensions that rotate (`rotary_pct`, `partial_rotary_factor`).
    pub partial_rotary_factor: f64,
    /// Frequency scaling.
    pub scaling: RopeScaling,
}

/// The architecture-independent view of `config.json`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Family.
    pub arch: Architecture,
    /// Embedding rows (`vocab_size`).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); equals `num_attention_heads` for GPT-NeoX.
    pub num_key_value_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Norm epsilon (`layer_norm_eps` or `rms_norm_eps`).
    pub norm_eps: f64,
    /// Longest supported sequence.
    pub max_position_embeddings: usize,
    /// Whether the output layer shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Rotary settings.
    pub rope: RopeConfig,
    /// GPT-NeoX: parallel attention/MLP residual.
    pub use_parallel_residual: bool,
    /// Bias on the q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// EOS ids from `config.json` (and `generation_config.json` when present).
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint declares (`dtype` / `torch_dtype`), informational only.
    pub declared_dtype: Option<String>,
}

struct Reader<'a> {
    path: &'a Path,
    obj: &'a Map<String, Value>,
}

impl Reader<'_> {
    fn err(&self, message: String) -> BackendError {
        BackendError::Config {
            path: self.path.to_path_buf(),
            message,
        }
    }
    fn usize_opt(&self, key: &str) -> Result<Option<usize>, BackendError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                self.err(format!("`{key}` must be a non-negative integer, got {v}"))
            }),
        }
    }
    fn usize_req(&self, key: &str) -> Result<usize, BackendError> {
        let v = self
            .usize_opt(key)?
            .ok_or_else(|| self.err(format!("missing `{key}`")))?;
        if v == 0 {
            return Err(self.err(format!("`{key}` must be positive")));
        }
        Ok(v)
    }
    fn f64_in(&self, obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, BackendError> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be a number, got {v}"))),
        }
    }
    fn f64_opt(&self, key: &str) -> Result<Option<f64>, BackendError> {
        self.f64_in(self.obj, key)
    }
    fn bool_opt(&self, key: &str) -> Result<Option<bool>, BackendError> {
        match self.obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(format!("`{key}` must be a boolean, got {v}"))),
        }
    }
    fn str_opt(&self, key: &str) -> Option<&str> {
        self.obj.get(key).and_then(Value::as_str)
    }
}

fn eos_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

impl ModelConfig {
    /// Reads `dir/config.json` (and `dir/generation_config.json` for extra EOS ids), or, when
    /// `dir` names a GGUF model (see [`super::ModelFormat::resolve`]), the GGUF metadata.
    pub fn from_dir(dir: &Path) -> Result<Self, BackendError> {
        if let super::ModelFormat::Gguf(file) = super::ModelFormat::resolve(dir)? {
            return super::gguf::GgufFile::open(&file)?.model_config();
        }
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|source| BackendError::Io {
            path: path.clone(),
            source,
        })?;
        let mut cfg = Self::from_json_str(&text, &path)?;
        let gen_path = dir.join("generation_config.json");
        if let Ok(text) = std::fs::read_to_string(&gen_path) {
            if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(&text) {
                for id in eos_ids(o.get("eos_token_id")) {
                    if !cfg.eos_token_ids.contains(&id) {
                        cfg.eos_token_ids.push(id);
                    }
                }
            }
        }
        Ok(cfg)
    }

    /// Parses the text of a `config.json`; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, BackendError> {
        let path_buf: PathBuf = path.to_path_buf();
        let value: Value = serde_json::from_str(text).map_err(|e| BackendError::Config {
            path: path_buf.clone(),
            message: format!("invalid JSON: {e}"),
        })?;
        let Value::Object(obj) = &value else {
            return Err(BackendError::Config {
                path: path_buf,
                message: "not a JSON object".into(),
            });
        };
        let r = Reader { path, obj };
        let arch = match r.str_opt("model_type") {
            Some("gpt_neox") => Architecture::GptNeoX,
            Some("llama") => Architecture::Llama,
            Some("qwen2") => Architecture::Qwen2,
            Some(other) => {
                return Err(r.err(format!(
                    "unsupported model_type `{other}` (supported: gpt_neox, llama, qwen2)"
                )));
            }
            None => return Err(r.err("missing `model_type`".into())),
        };
        let hidden_size = r.usize_req("hidden_size")?;
        let num_attention_heads = r.usize_req("num_attention_heads")?;
        if hidden_size % num_attention_heads != 0 && r.usize_opt("head_dim")?.is_none() {
            return Err(r.err(format!(
                "hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}"
            )));
        }
        let head_dim = match arch {
            Architecture::GptNeoX => hidden_size / num_attention_heads,
            _ => r
                .usize_opt("head_dim")?
                .unwrap_or(hidden_size / num_attention_heads),
        };
        let num_key_value_heads = match arch {
            Architecture::GptNeoX => num_attention_heads,
            _ => r
                .usize_opt("num_key_value_heads")?
                .unwrap_or(num_attention_heads),
        };
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(r.err(format!(
                "num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}"
            )));
        }
        let act_name = r.str_opt("hidden_act").unwrap_or(match arch {
            Architecture::GptNeoX => "gelu",
            _ => "silu",
        });
        let hidden_act = Activation::parse(act_name)
            .ok_or_else(|| r.err(format!("unsupported hidden_act `{act_name}`")))?;
        let norm_eps = match arch {
            Architecture::GptNeoX => r.f64_opt("layer_norm_eps")?.unwrap_or(1e-5),
            _ => r.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
        };
        let rope = parse_rope(&r, arch)?;
        let attention_bias = r.bool_opt("attention_bias")?;
        let (qkv_bias, o_bias, mlp_bias) = match arch {
            // GPT-NeoX: `attention_bias` (default true) covers qkv and dense; the MLP always has bias.
            Architecture::GptNeoX => {
                let b = attention_bias.unwrap_or(true);
                (b, b, true)
            }
            Architecture::Llama => {
                let b = attention_bias.unwrap_or(false);
                (b, b, r.bool_opt("mlp_bias")?.unwrap_or(false))
            }
            // Qwen2: q/k/v always have a bias, o_proj and the MLP never do.
            Architecture::Qwen2 => (true, false, false),
        };
        if arch == Architecture::Qwen2 && r.bool_opt("use_sliding_window")?.unwrap_or(false) {
            return Err(r.err("use_sliding_window = true is not supported".into()));
        }
        let declared_dtype = r
            .str_opt("dtype")
            .or_else(|| r.str_opt("torch_dtype"))
            .map(str::to_string);
        let config = ModelConfig {
            arch,
            vocab_size: r.usize_req("vocab_size")?,
            hidden_size,
            num_hidden_layers: r.usize_req("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            intermediate_size: r.usize_req("intermediate_size")?,
            hidden_act,
            norm_eps,
            max_position_embeddings: r.usize_opt("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: r.bool_opt("tie_word_embeddings")?.unwrap_or(false),
            rope,
            use_parallel_residual: r.bool_opt("use_parallel_residual")?.unwrap_or(true),
            qkv_bias,
            o_bias,
            mlp_bias,
            eos_token_ids: eos_ids(obj.get("eos_token_id")),
            declared_dtype,
        };
        config.check_sizes().map_err(|m| r.err(m))?;
        Ok(config)
    }

    /// Checks every size against a sane bound before anything is allocated from it (a corrupt
    /// or hostile config with `num_hidden_layers: 1e12` must be an error naming the field, not
    /// a failed allocation that aborts the process). The bounds are far above any released
    /// model; the weights' shapes are checked against the config afterwards.
    pub fn check_sizes(&self) -> Result<(), String> {
        let bounds: [(&str, usize, usize); 8] = [
            ("vocab_size", self.vocab_size, 1 << 24),
            ("hidden_size", self.hidden_size, 1 << 17),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 12),
            ("num_attention_heads", self.num_attention_heads, 1 << 12),
            ("num_key_value_heads", self.num_key_value_heads, 1 << 12),
            ("head_dim", self.head_dim, 1 << 14),
            ("intermediate_size", self.intermediate_size, 1 << 20),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 21,
            ),
        ];
        for (field, value, max) in bounds {
            if value == 0 || value > max {
                return Err(format!(
                    "`{field}` = {value} is outside the supported range 1..={max}"
                ));
            }
        }
        Ok(())
    }

    /// A Hugging Face `config.json` describing this model (what a checkpoint trained from a GGUF
    /// base is saved with, so that transformers loads it). `None` for settings transformers'
    /// Llama/Qwen2 classes cannot express (partial rotary, parallel residual); GPT-NeoX
    /// checkpoints always come with their own config.json.
    pub fn to_hf_json(&self) -> Option<serde_json::Value> {
        let (arch_class, model_type) = match self.arch {
            Architecture::Llama => ("LlamaForCausalLM", "llama"),
            Architecture::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
            Architecture::GptNeoX => return None,
        };
        if self.rotary_dim() != self.head_dim || self.hidden_act != Activation::Silu {
            return None;
        }
        let mut rope = serde_json::json!({ "rope_theta": self.rope.theta, "rope_type": "default" });
        match &self.rope.scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => {
                rope["rope_type"] = "linear".into();
                rope["factor"] = (*factor).into();
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                rope["rope_type"] = "llama3".into();
                rope["factor"] = (*factor).into();
                rope["low_freq_factor"] = (*low_freq_factor).into();
                rope["high_freq_factor"] = (*high_freq_factor).into();
                rope["original_max_position_embeddings"] =
                    (*original_max_position_embeddings).into();
            }
        }
        let mut v = serde_json::json!({
            "architectures": [arch_class],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "rope_theta": self.rope.theta,
            "rope_parameters": rope.clone(),
            "dtype": "float32",
            "torch_dtype": "float32",
        });
        if !matches!(self.rope.scaling, RopeScaling::Default) {
            v["rope_scaling"] = rope;
        }
        if self.arch == Architecture::Llama {
            v["attention_bias"] = self.qkv_bias.into();
            v["mlp_bias"] = self.mlp_bias.into();
        } else {
            v["use_sliding_window"] = false.into();
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => v["eos_token_id"] = (*one).into(),
            many => v["eos_token_id"] = many.to_vec().into(),
        }
        Some(v)
    }

    /// Number of dimensions of each head that rotate.
    pub fn rotary_dim(&self) -> usize {
        let d = (self.head_dim as f64 * self.rope.partial_rotary_factor) as usize;
        d - d % 2
    }
}

fn parse_rope(r: &Reader<'_>, arch: Architecture) -> Result<RopeConfig, BackendError> {
    let empty = Map::new();
    let params = match r.obj.get("rope_parameters") {
        Some(Value::Object(o)) => Some(o),
        None | Some(Value::Null) => None,
        Some(v) => return Err(r.err(format!("`rope_parameters` must be an object, got {v}"))),
    };
    let scaling_obj = match r.obj.get("rope_scaling") {
        Some(Value::Object(o)) => Some(o),
        _ => None,
    };
    // Scaling keys live in `rope_parameters` (5.x) or `rope_scaling` (4.x).
    let sc: &Map<String, Value> = params.or(scaling_obj).unwrap_or(&empty);
    let theta = match params
        .map(|p| r.f64_in(p, "rope_theta"))
        .transpose()?
        .flatten()
    {
        Some(t) => t,
        None => match arch {
            Architecture::GptNeoX => r
                .f64_opt("rotary_emb_base")?
                .or(r.f64_opt("rope_theta")?)
                .unwrap_or(10000.0),
            _ => r.f64_opt("rope_theta")?.unwrap_or(10000.0),
        },
    };
    let partial = match params
        .map(|p| r.f64_in(p, "partial_rotary_factor"))
        .transpose()?
        .flatten()
    {
        Some(p) => p,
        None => match arch {
            Architecture::GptNeoX => r
                .f64_opt("rotary_pct")?
                .or(r.f64_opt("partial_rotary_factor")?)
                .unwrap_or(0.25),
            _ => r.f64_opt("partial_rotary_factor")?.unwrap_or(1.0),
        },
    };
    if !(partial > 0.0 && partial <= 1.0) {
        return Err(r.err(format!(
            "partial rotary factor must be in (0, 1], got {partial}"
        )));
    }
    let rope_type = sc
        .get("rope_type")
        .or_else(|| sc.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let need = |key: &str| -> Result<f64, BackendError> {
        r.f64_in(sc, key)?
            .ok_or_else(|| r.err(format!("rope_type `{rope_type}` needs `{key}`")))
    };
    let scaling = match rope_type {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear {
            factor: need("factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")?,
            low_freq_factor: need("low_freq_factor")?,
            high_freq_factor: need("high_freq_factor")?,
            original_max_position_embeddings: need("original_max_position_embeddings")?,
        },
        other => {
            return Err(r.err(format!(
                "unsupported rope_type `{other}` (supported: default, linear, llama3)"
            )));
        }
    };
    Ok(RopeConfig {
        theta,
        partial_rotary_factor: partial,
        scaling,
    })
}
