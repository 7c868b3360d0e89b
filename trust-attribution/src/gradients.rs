//! DataInf attribution of an aligned model's behaviour to its training pairs (PROTOCOLS A.8),
//! over LoRA adapters (trained ones, or ones obtained by a truncated SVD of a full fine-tune).
//!
//! Two entry points:
//! - [`attribute`]: the small in-memory path `trust demo` uses (SFT/DPO, adapters from
//!   [`trust_align::train::train`], every adapter tensor attributed).
//! - [`run_attribution`]: the full pipeline behind `trust attribute` — an [`AttributionModel`]
//!   ([`AttributionModel::load`]: `adapter/` of the aligned model, or [`convert_full_to_lora`]
//!   of `W_ft − W_base`), stage losses SFT / DPO / reward-model Bradley–Terry ([`AttrStage`]),
//!   per-example gradients of the selected LoRA tensors written to resumable on-disk
//!   [`GradientStoreWriter`] stores ([`extract_to_store`]), and DataInf streamed block by block
//!   over the memory-mapped store, so memory stays bounded by one block for 100k+ examples.
//!
//! Each LoRA `A` (`[r, d_in]`) and `B` (`[d_out, r]`) tensor is one DataInf "layer". The paper
//! stores `grad(B)ᵀ`; DataInf only uses inner products and norms within a layer, so the
//! orientation does not change any score. The attributed tensors are chosen by an explicit
//! [`LoraSelection`] (targets and block indices), not by the paper's hard-coded `names[288:-2]`
//! slice; [`LoraSelection::last_blocks`] gives "the last k blocks" that slice selects.
//!
//! Sign convention (influence functions): I > 0 means up-weighting the pair raises the test loss
//! (harmful for the test objective), I < 0 lowers it (helpful). With the test pairs of
//! [`crate::test_pairs`] (aligned model's generation preferred), "helpful" pairs are those that
//! pushed the model towards what it now generates.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::{
    AttributionError, DataInfConfig, GradientStoreReader, GradientStoreWriter, InMemoryGradients,
    LayerLayout, RandomizedSvdConfig, StoreKey, datainf, lora_from_delta_randomized,
    lora_from_finetune, mean_gradient, normalize_signwise,
};
use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use trust_backends::candle::{CausalLm, ModelConfig};

use trust_align::hh::PreferencePair;
use trust_align::lora::{LoraAdapters, LoraConfig};
use trust_align::reward::RewardHead;
use trust_align::train::{
    Encoded, FrozenPrefix, PairEncoded, Stage, TrainConfig, TrainError, Trainee, encode,
    encode_pairs, load_lora_trainee, load_weights,
};

/// A test-side pair: the loss is low when the model prefers `preferred` to `dispreferred` (DPO)
/// or assigns `preferred` high likelihood (SFT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestPair {
    /// Conditioning text.
    pub prompt: String,
    /// The continuation that should become more likely.
    pub preferred: String,
    /// The continuation that should become less likely (DPO only).
    pub dispreferred: String,
}

/// Test pairs in the training-pair shape the encoders take (index = position in `test`,
/// chosen = preferred, rejected = dispreferred).
fn as_preference_pairs(test: &[TestPair]) -> Vec<PreferencePair> {
    test.iter()
        .enumerate()
        .map(|(i, t)| PreferencePair {
            index: i,
            prompt: t.prompt.clone(),
            chosen: t.preferred.clone(),
            rejected: t.dispreferred.clone(),
        })
        .collect()
}

/// What to attribute.
#[derive(Debug, Clone)]
pub struct AttributionSpec<'a> {
    /// The stage whose loss is differentiated (`Sft` or `Dpo`).
    pub stage: Stage,
    /// Directory written by [`trust_align::train::train`] for that stage (holds `adapter/`).
    pub trained_dir: &'a Path,
    /// The model the adapters were trained on.
    pub base_dir: &'a Path,
    /// DPO reference model directory.
    pub reference_dir: Option<&'a Path>,
    /// DPO β of the attribution loss (the paper's attribution code uses 1.0).
    pub beta: f64,
    /// Longest sequence in tokens.
    pub max_len: usize,
}

/// Scores of every training pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attribution {
    /// `PreferencePair::index` of each scored pair, in order.
    pub train_index: Vec<usize>,
    /// Raw DataInf influence I(z_i).
    pub scores: Vec<f64>,
    /// Scores normalised to [−1, 1] separately by sign (A.8 §6).
    pub normalized: Vec<f64>,
    /// Number of test pairs averaged.
    pub n_test: usize,
    /// Damping λ_l per LoRA tensor.
    pub lambdas: Vec<f64>,
}

/// Runs DataInf for `train` against `test` (see the module docs).
pub fn attribute(
    spec: &AttributionSpec<'_>,
    train: &[PreferencePair],
    test: &[TestPair],
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Attribution, TrainError> {
    if matches!(spec.stage, Stage::Pretrain) {
        return Err(TrainError::Invalid(
            "attribution needs a LoRA stage (sft or dpo)".into(),
        ));
    }
    let device = Device::Cpu;
    let trainee = load_lora_trainee(spec.trained_dir, spec.base_dir, &device)?;
    let config = ModelConfig::from_dir(spec.base_dir)?;
    let tok = trust_backends::candle::loader::load_tokenizer(spec.base_dir, config.vocab_size)?;
    let eos = config.eos_token_ids.first().copied();
    // The blocks before the first adapted one run once per example and, when the reference
    // has the same weights there (the usual reference = the trained model's base), are shared.
    let mut prefix = FrozenPrefix {
        layers: trainee.frozen_layers(),
        reference_shares: false,
    };
    let reference = match spec.reference_dir {
        Some(dir) => {
            let (reference, shares) =
                trust_align::train::load_reference(dir, &trainee, prefix.layers, &device)?;
            prefix.reference_shares = shares;
            Some(reference)
        }
        None if spec.stage == Stage::Dpo => {
            return Err(TrainError::Invalid(
                "DPO attribution needs the reference model".into(),
            ));
        }
        None => None,
    };
    let mut tc = TrainConfig::new(spec.stage);
    tc.max_len = spec.max_len;
    tc.mask_prompt = false; // the paper's SFT attribution loss scores the whole text
    let vars = trainee.vars();
    let adapters = trainee.adapters().expect("LoRA trainee");
    let layout = LayerLayout::new(adapters.modules.iter().flat_map(|m| {
        [
            (format!("{}.lora_A", m.module), m.a.as_tensor().elem_count()),
            (format!("{}.lora_B", m.module), m.b.as_tensor().elem_count()),
        ]
    }))
    .map_err(|e| TrainError::Invalid(e.to_string()))?;

    let (train_enc, _) = encode_pairs(&tok, train, &tc, eos);
    let (test_enc, _) = encode_pairs(&tok, &as_preference_pairs(test), &tc, eos);
    if train_enc.is_empty() || test_enc.is_empty() {
        return Err(TrainError::Invalid(
            "no encodable training or test pair".into(),
        ));
    }
    let total = train_enc.len() + test_enc.len();
    let mut done = 0;
    let mut grads =
        |enc: &[trust_align::train::PairEncoded]| -> Result<InMemoryGradients, TrainError> {
            let mut store = InMemoryGradients::new(layout.clone());
            for chunk in enc.chunks(GRADIENT_BATCH) {
                let batch: Vec<&trust_align::train::PairEncoded> = chunk.iter().collect();
                let gs = trust_align::train::example_gradients_batched(
                    spec.stage,
                    &trainee,
                    reference.as_ref(),
                    None,
                    prefix,
                    &vars,
                    &batch,
                    spec.beta,
                    &device,
                )?;
                for g in gs {
                    let slices: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
                    store
                        .push(&slices)
                        .map_err(|e| TrainError::Invalid(e.to_string()))?;
                    done += 1;
                    on_progress(done, total);
                }
            }
            Ok(store)
        };
    let train_g = grads(&train_enc)?;
    let test_g = grads(&test_enc)?;
    let inv = |e: crate::AttributionError| TrainError::Invalid(e.to_string());
    let v = mean_gradient(&test_g, 256).map_err(inv)?;
    let r = datainf(&train_g, &v, &DataInfConfig::default()).map_err(inv)?;
    let normalized = normalize_signwise(&r.scores).map_err(inv)?;
    Ok(Attribution {
        train_index: train_enc.iter().map(|e| e.index).collect(),
        scores: r.scores,
        normalized,
        n_test: test_enc.len(),
        lambdas: r.lambdas,
    })
}

// ---------------------------------------------------------------------------------------------
// The full pipeline (`trust attribute`).
// ---------------------------------------------------------------------------------------------

/// The loss attributed: the training stage whose objective is differentiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttrStage {
    /// Token-mean next-token cross-entropy on prompt + chosen (the prompt unmasked unless
    /// [`AttributeOptions::mask_prompt`]).
    Sft,
    /// DPO against the reference model, β = [`AttributeOptions::beta`].
    Dpo,
    /// Reward model: Bradley–Terry on (prompt + chosen, prompt + rejected) through `v_head`
    /// (the paper attributes PPO through its reward model).
    Rm,
}

impl AttrStage {
    /// The training stage whose loss is attributed.
    pub fn train_stage(self) -> Stage {
        match self {
            AttrStage::Sft => Stage::Sft,
            AttrStage::Dpo => Stage::Dpo,
            AttrStage::Rm => Stage::Rm,
        }
    }

    /// `sft`, `dpo` or `rm`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttrStage::Sft => "sft",
            AttrStage::Dpo => "dpo",
            AttrStage::Rm => "rm",
        }
    }
}

impl std::str::FromStr for AttrStage {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, TrainError> {
        match s {
            "sft" => Ok(AttrStage::Sft),
            "dpo" => Ok(AttrStage::Dpo),
            "rm" | "ppo" => Ok(AttrStage::Rm),
            o => Err(TrainError::Invalid(format!(
                "unknown stage `{o}` (sft, dpo or rm)"
            ))),
        }
    }
}

/// The linear layers of GPT-NeoX and Llama/Qwen2 blocks: the default conversion targets (every
/// linear layer of the blocks; the LM head and embeddings are never converted, as in the paper).
pub const DEFAULT_TARGETS: &[&str] = &[
    "attention.query_key_value",
    "attention.dense",
    "mlp.dense_h_to_4h",
    "mlp.dense_4h_to_h",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// Which LoRA tensors are attributed (and, for a converted full fine-tune, which linear layers
/// get adapters of which rank).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSelection {
    /// Rank r of the SVD conversion (ignored for trained adapters, which keep their rank).
    pub rank: usize,
    /// Module-name suffixes (`None` = every adapter module / [`DEFAULT_TARGETS`]).
    pub targets: Option<Vec<String>>,
    /// Block indices (`None` = all blocks).
    pub layers: Option<Vec<usize>>,
}

impl Default for LoraSelection {
    fn default() -> Self {
        LoraSelection {
            rank: 4,
            targets: None,
            layers: None,
        }
    }
}

impl LoraSelection {
    /// Block indices of the last `k` of `num_layers` blocks (the paper's `names[288:-2]` on a
    /// 28-block GPT-J is `last_blocks(28, 4)` = 24..=27).
    pub fn last_blocks(num_layers: usize, k: usize) -> Vec<usize> {
        (num_layers.saturating_sub(k)..num_layers).collect()
    }

    fn config(&self) -> LoraConfig {
        LoraConfig {
            rank: self.rank,
            alpha: self.rank as f64,
            targets: self
                .targets
                .clone()
                .unwrap_or_else(|| DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect()),
            layers: self.layers.clone(),
        }
    }

    /// Whether the module (weight name without `.weight`) is selected; with `targets = None`
    /// any module of the selected blocks is (used for trained adapters, whose modules are all
    /// linear layers).
    pub fn selects(&self, module: &str) -> bool {
        match &self.targets {
            Some(_) => self.config().matches(&format!("{module}.weight")),
            None => match &self.layers {
                None => true,
                Some(layers) => {
                    trust_align::lora::layer_index(module).is_some_and(|i| layers.contains(&i))
                }
            },
        }
    }
}

/// Settings of [`AttributionModel::load`] and [`run_attribution`].
#[derive(Debug, Clone)]
pub struct AttributeOptions {
    /// Loss attributed.
    pub stage: AttrStage,
    /// The aligned model: a directory with `adapter/` (trained over `base_dir`), or a full
    /// fine-tune of `base_dir` (converted by SVD).
    pub model_dir: PathBuf,
    /// The model the adapters / fine-tune start from.
    pub base_dir: PathBuf,
    /// DPO reference model (default: `base_dir`, i.e. the SFT model the DPO run started from).
    pub reference_dir: Option<PathBuf>,
    /// DPO β of the attribution loss (the paper's code: 1.0).
    pub beta: f64,
    /// Longest sequence in tokens (the paper truncates to 1,024).
    pub max_len: usize,
    /// SFT: score only response tokens (`false` = the paper's whole-text loss).
    pub mask_prompt: bool,
    /// Attributed tensors / conversion rank.
    pub lora: LoraSelection,
    /// RM: attach a seeded random `v_head` when the checkpoint has none (tests only).
    pub init_v_head: bool,
    /// RM: differentiate the head too (an extra layer `v_head.weight`); default frozen.
    pub train_v_head: bool,
    /// DataInf damping and block size.
    pub datainf: DataInfConfig,
    /// Examples whose gradients come from one batched forward/backward pass
    /// ([`trust_align::train::example_gradients_batched`]; 1 = one pass per example). Batches
    /// start at multiples of this size, also on resume, so a resumed store holds the same bits
    /// as an uninterrupted one; other sizes give the same gradients up to float rounding.
    pub gradient_batch: usize,
}

/// Default [`AttributeOptions::gradient_batch`]: 8 examples (16 sequences for DPO and RM) per
/// pass.
pub const GRADIENT_BATCH: usize = 8;

impl AttributeOptions {
    /// Defaults: β = 1, max_len 1024, SFT prompt unmasked, rank-4 selection of every block.
    pub fn new(stage: AttrStage, model_dir: &Path, base_dir: &Path) -> Self {
        AttributeOptions {
            stage,
            model_dir: model_dir.to_path_buf(),
            base_dir: base_dir.to_path_buf(),
            reference_dir: None,
            beta: 1.0,
            max_len: 1024,
            mask_prompt: false,
            lora: LoraSelection::default(),
            init_v_head: false,
            train_v_head: false,
            datainf: DataInfConfig::default(),
            gradient_batch: GRADIENT_BATCH,
        }
    }
}

/// One linear layer converted from a full fine-tune.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConvertedModule {
    /// Module path.
    pub module: String,
    /// ‖ΔW‖_F.
    pub delta_norm: f64,
    /// ‖ΔW − B·A‖_F (the rank-r truncation error).
    pub residual_norm: f64,
}

/// The result of [`convert_full_to_lora`].
#[derive(Debug)]
pub struct LoraConversion {
    /// The weights the adapters apply to.
    pub weights: HashMap<String, Tensor>,
    /// The adapters.
    pub adapters: LoraAdapters,
    /// Per converted module, the norms of ΔW and of the truncation error.
    pub modules: Vec<ConvertedModule>,
}

/// Converts a full fine-tune to LoRA form (A.8 §1): for every 2-D weight selected by `sel`
/// present in both, ΔW = W_ft − W_base → rank-r truncated SVD → `A = Vᵀ[:r]` (r × d_in),
/// `B = U_r Σ_r` (d_out × r), alpha = r (scaling 1). Returns the weights the adapters apply to
/// (the fine-tuned weights, with each converted linear layer replaced by its base weight, so the
/// model keeps the fine-tune's other changes such as biases and norms), the adapters and the
/// per-module truncation errors. Large matrices use the randomized SVD.
pub fn convert_full_to_lora(
    finetuned: &HashMap<String, Tensor>,
    base: &HashMap<String, Tensor>,
    sel: &LoraSelection,
) -> Result<LoraConversion, TrainError> {
    let cfg = sel.config();
    let mut names: Vec<&String> = finetuned.keys().filter(|n| cfg.matches(n)).collect();
    names.sort();
    if names.is_empty() {
        return Err(TrainError::Invalid(format!(
            "LoRA targets {:?} (layers {:?}) match no weight of the fine-tuned model",
            cfg.targets, cfg.layers
        )));
    }
    let mut weights = finetuned.clone();
    let mut factors = Vec::new();
    let mut report = Vec::new();
    for name in names {
        let ft = &finetuned[name];
        let Some(bw) = base.get(name) else {
            return Err(TrainError::Invalid(format!(
                "base model lacks `{name}` that the fine-tuned model has"
            )));
        };
        if ft.dims() != bw.dims() || ft.rank() != 2 {
            return Err(TrainError::Invalid(format!(
                "`{name}`: fine-tuned shape {:?} vs base {:?} (need equal 2-D shapes)",
                ft.dims(),
                bw.dims()
            )));
        }
        let (d_out, d_in) = ft.dims2()?;
        let rank = cfg.rank.min(d_out.min(d_in));
        let w_ft: Vec<f32> = ft.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let w_b: Vec<f32> = bw.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let inv = |e: crate::AttributionError| TrainError::Invalid(format!("`{name}`: {e}"));
        let f = if d_out.min(d_in) > 256 {
            let delta: Vec<f64> = w_ft
                .iter()
                .zip(&w_b)
                .map(|(&a, &b)| f64::from(a) - f64::from(b))
                .collect();
            lora_from_delta_randomized(&delta, d_out, d_in, rank, &RandomizedSvdConfig::default())
                .map_err(inv)?
        } else {
            lora_from_finetune(&w_ft, &w_b, d_out, d_in, rank).map_err(inv)?
        };
        let delta_norm = w_ft
            .iter()
            .zip(&w_b)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum::<f64>()
            .sqrt();
        let module = name.strip_suffix(".weight").unwrap_or(name).to_string();
        let dev = ft.device();
        factors.push((
            module.clone(),
            Tensor::from_vec(f.a_f32(), (rank, d_in), dev)?,
            Tensor::from_vec(f.b_f32(), (d_out, rank), dev)?,
        ));
        report.push(ConvertedModule {
            module,
            delta_norm,
            residual_norm: f.residual_norm,
        });
        weights.insert(name.clone(), bw.to_dtype(DType::F32)?);
    }
    let adapters = LoraAdapters::from_factors(
        LoraConfig {
            rank: cfg.rank,
            alpha: cfg.rank as f64,
            ..cfg
        },
        factors,
    )?;
    Ok(LoraConversion {
        weights,
        adapters,
        modules: report,
    })
}

/// Content hash of a model directory: SHA-256 over the names and SHA-256s of `config.json`,
/// `*.safetensors` and `adapter/*` (used in gradient-store keys).
pub fn model_fingerprint(dir: &Path) -> Result<String, TrainError> {
    let mut files: Vec<PathBuf> = Vec::new();
    if let Ok(trust_backends::candle::ModelFormat::Gguf(file)) =
        trust_backends::candle::ModelFormat::resolve(dir)
    {
        files.push(file);
    }
    for d in [dir.to_path_buf(), dir.join("adapter")] {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name == "config.json"
                || name == "adapter_config.json"
                || p.extension().is_some_and(|x| x == "safetensors")
            {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut s = String::new();
    for f in &files {
        let h = trust_core::data::sha256_file(f)
            .map_err(|e| TrainError::Invalid(format!("{}: {e}", f.display())))?;
        let rel = f.strip_prefix(dir).unwrap_or(f);
        s.push_str(&format!("{} {h}\n", rel.display()));
    }
    Ok(trust_core::data::sha256_bytes(s.as_bytes()))
}

/// How the attributed adapters were obtained.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AdapterSource {
    /// `adapter/` of the aligned model directory.
    Trained,
    /// Truncated SVD of the full fine-tune.
    Svd {
        /// Rank.
        rank: usize,
        /// Per converted module.
        modules: Vec<ConvertedModule>,
    },
}

/// A model ready for per-example gradients of the attributed stage loss.
pub struct AttributionModel {
    stage: AttrStage,
    trainee: Trainee,
    model: CausalLm,
    reference: Option<CausalLm>,
    prefix: FrozenPrefix,
    head: Option<RewardHead>,
    vars: Vec<Var>,
    layout: LayerLayout,
    tokenizer: tokenizers::Tokenizer,
    eos: Option<u32>,
    beta: f64,
    max_len: usize,
    mask_prompt: bool,
    gradient_batch: usize,
    source: AdapterSource,
    fingerprint: String,
    device: Device,
}

impl AttributionModel {
    /// Loads the aligned model as LoRA over its base (see [`AttributeOptions::model_dir`]),
    /// the DPO reference and the reward head as the stage needs, and selects the attributed
    /// tensors. Errors when the selection matches no adapter tensor.
    pub fn load(opts: &AttributeOptions) -> Result<Self, TrainError> {
        let device = Device::Cpu;
        if !(opts.beta.is_finite() && opts.beta > 0.0) {
            return Err(TrainError::Invalid(format!(
                "β must be finite and > 0, got {}",
                opts.beta
            )));
        }
        if opts.lora.rank == 0 {
            return Err(TrainError::Invalid("LoRA rank must be ≥ 1".into()));
        }
        let config = ModelConfig::from_dir(&opts.base_dir)?;
        let tokenizer =
            trust_backends::candle::loader::load_tokenizer(&opts.base_dir, config.vocab_size)?;
        let eos = config.eos_token_ids.first().copied();
        let has_adapter = opts.model_dir.join("adapter/adapter_config.json").exists();
        let mut model_weights: Option<HashMap<String, Tensor>> = None;
        let (trainee, source) = if has_adapter {
            (
                load_lora_trainee(&opts.model_dir, &opts.base_dir, &device)?,
                AdapterSource::Trained,
            )
        } else {
            let ft = load_weights(&opts.model_dir, &device)?;
            let base = load_weights(&opts.base_dir, &device)?;
            let LoraConversion {
                weights: w,
                adapters,
                modules,
            } = convert_full_to_lora(&ft, &base, &opts.lora)?;
            model_weights = Some(ft);
            (
                Trainee::with_adapters(config.clone(), w, adapters, device.clone()),
                AdapterSource::Svd {
                    rank: opts.lora.rank,
                    modules,
                },
            )
        };
        let adapters = trainee
            .adapters()
            .ok_or_else(|| TrainError::Invalid("not a LoRA model".into()))?;
        let mut vars = Vec::new();
        let mut layers = Vec::new();
        for m in adapters
            .modules
            .iter()
            .filter(|m| opts.lora.selects(&m.module))
        {
            layers.push((format!("{}.lora_A", m.module), m.a.as_tensor().elem_count()));
            layers.push((format!("{}.lora_B", m.module), m.b.as_tensor().elem_count()));
            vars.push(m.a.clone());
            vars.push(m.b.clone());
        }
        if vars.is_empty() {
            return Err(TrainError::Invalid(format!(
                "the LoRA selection (targets {:?}, layers {:?}) matches none of the {} adapter modules of {}",
                opts.lora.targets,
                opts.lora.layers,
                adapters.modules.len(),
                opts.model_dir.display()
            )));
        }
        let mut fingerprint = format!(
            "model={} base={}",
            model_fingerprint(&opts.model_dir)?,
            model_fingerprint(&opts.base_dir)?
        );
        // DPO: the blocks before the first adapted one are shared by the policy and, when its
        // weights there are the policy's base weights (the usual reference = the model the
        // policy was trained from), by the reference.
        let mut prefix = FrozenPrefix::default();
        let reference = match opts.stage {
            AttrStage::Dpo => {
                let dir = opts.reference_dir.as_deref().unwrap_or(&opts.base_dir);
                fingerprint.push_str(&format!(" ref={}", model_fingerprint(dir)?));
                let k = trainee.frozen_layers();
                let (reference, shares) =
                    trust_align::train::load_reference(dir, &trainee, k, &device)?;
                prefix = FrozenPrefix {
                    layers: k,
                    reference_shares: shares,
                };
                Some(reference)
            }
            _ => None,
        };
        let head = match opts.stage {
            AttrStage::Rm => {
                let w = match model_weights.take() {
                    Some(w) => w,
                    None => load_weights(&opts.model_dir, &device)?,
                };
                let mut head =
                    if w.contains_key(trust_align::reward::V_HEAD_WEIGHT) || !opts.init_v_head {
                        RewardHead::from_weights(&w, config.hidden_size, &opts.model_dir)?
                    } else {
                        fingerprint.push_str(" v_head=init(seed 0)");
                        RewardHead::init(config.hidden_size, 0, &device)?
                    };
                if opts.train_v_head {
                    head.trainable = true;
                    layers.push((
                        trust_align::reward::V_HEAD_WEIGHT.to_string(),
                        head.weight.as_tensor().elem_count(),
                    ));
                    vars.push(head.weight.clone());
                }
                Some(head)
            }
            _ => None,
        };
        let layout = LayerLayout::new(layers).map_err(|e| TrainError::Invalid(e.to_string()))?;
        let model = trainee.model()?;
        Ok(AttributionModel {
            stage: opts.stage,
            trainee,
            model,
            reference,
            prefix,
            head,
            vars,
            layout,
            tokenizer,
            eos,
            beta: opts.beta,
            max_len: opts.max_len,
            mask_prompt: opts.mask_prompt,
            gradient_batch: opts.gradient_batch.max(1),
            source,
            fingerprint,
            device,
        })
    }

    /// The per-example gradient layout: one layer per attributed tensor.
    pub fn layout(&self) -> &LayerLayout {
        &self.layout
    }

    /// The blocks computed once per sequence and shared with the DPO reference (see
    /// [`stage_loss_with`]); the default (none) for the other stages.
    pub fn frozen_prefix(&self) -> FrozenPrefix {
        self.prefix
    }

    /// How the adapters were obtained.
    pub fn source(&self) -> &AdapterSource {
        &self.source
    }

    /// The LoRA trainee (base weights + adapters).
    pub fn trainee(&self) -> &Trainee {
        &self.trainee
    }

    /// Tokenises pairs for the stage: SFT (prompt + chosen, eos appended, prompt scored unless
    /// masked), DPO (response tokens scored), RM (prompt + response without eos, so the reward
    /// is read at the response's last token). Pairs that cannot be encoded are skipped and
    /// counted.
    pub fn encode(&self, pairs: &[PreferencePair]) -> (Vec<PairEncoded>, usize) {
        match self.stage {
            AttrStage::Sft | AttrStage::Dpo => {
                let mut tc = TrainConfig::new(self.stage.train_stage());
                tc.max_len = self.max_len;
                tc.mask_prompt = self.mask_prompt;
                encode_pairs(&self.tokenizer, pairs, &tc, self.eos)
            }
            AttrStage::Rm => {
                let mut out = Vec::new();
                let mut skipped = 0;
                for p in pairs {
                    let enc =
                        |r: &str| encode(&self.tokenizer, &p.prompt, r, None, self.max_len, true);
                    match (enc(&p.chosen), enc(&p.rejected)) {
                        (Ok(c), Ok(r)) => out.push(PairEncoded {
                            index: p.index,
                            sft: c.clone(),
                            chosen: c,
                            rejected: r,
                        }),
                        _ => skipped += 1,
                    }
                }
                (out, skipped)
            }
        }
    }

    /// The stage loss of one encoded example, recomputed from the current adapter values (for
    /// finite-difference checks).
    pub fn loss(&self, example: &PairEncoded) -> Result<f64, TrainError> {
        let model = self.trainee.model()?;
        let l = stage_loss(
            self.stage,
            &model,
            self.reference.as_ref(),
            self.head.as_ref(),
            example,
            self.beta,
            &self.device,
        )?;
        Ok(l.to_scalar::<f32>()? as f64)
    }

    /// The attributed variables, in layout order (LoRA `A`, `B` per selected module, then the
    /// head weight when trainable).
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// Gradients of the stage loss of one example w.r.t. the attributed tensors, one flattened
    /// vector per layout layer (batch 1; see [`stage_gradients`]).
    pub fn gradients(&self, example: &PairEncoded) -> Result<Vec<Vec<f32>>, TrainError> {
        Ok(stage_gradients_with(
            self.stage,
            &self.model,
            self.reference.as_ref(),
            self.prefix,
            self.head.as_ref(),
            &self.vars,
            example,
            self.beta,
            &self.device,
        )?)
    }

    /// [`Self::gradients`] of several examples from one batched forward/backward pass
    /// ([`trust_align::train::example_gradients_batched`]); one pass per example when the reward
    /// head is attributed too.
    pub fn gradients_batch(
        &self,
        examples: &[PairEncoded],
    ) -> Result<Vec<Vec<Vec<f32>>>, TrainError> {
        let head_attributed = self.head.as_ref().is_some_and(|h| {
            self.vars
                .iter()
                .any(|v| v.as_tensor().id() == h.weight.as_tensor().id())
        });
        if head_attributed || examples.len() == 1 {
            return examples.iter().map(|e| self.gradients(e)).collect();
        }
        let prefix = FrozenPrefix {
            layers: self.trainee.frozen_layers(),
            reference_shares: self.prefix.reference_shares,
        };
        let batch: Vec<&PairEncoded> = examples.iter().collect();
        Ok(trust_align::train::example_gradients_batched(
            self.stage.train_stage(),
            &self.trainee,
            self.reference.as_ref(),
            self.head.as_ref(),
            prefix,
            &self.vars,
            &batch,
            self.beta,
            &self.device,
        )?)
    }

    /// Examples per batched gradient pass ([`AttributeOptions::gradient_batch`]).
    pub fn gradient_batch(&self) -> usize {
        self.gradient_batch
    }

    /// Store key of gradients of `examples` (model + reference + head hashes, the attributed
    /// tensors and source, the loss and its settings, the data hash).
    pub fn store_key(&self, role: &str, examples: &[PairEncoded]) -> StoreKey {
        // One SHA-256 per example, then a hash of those: memory stays O(n · 64 bytes).
        let mut data = String::with_capacity(examples.len() * 65);
        for e in examples {
            let mut one = format!("{};", e.index);
            for s in [&e.sft, &e.chosen, &e.rejected] {
                one.push_str(&format!("{:?}:{:?};", s.ids, s.targets));
            }
            data.push_str(&trust_core::data::sha256_bytes(one.as_bytes()));
            data.push('\n');
        }
        StoreKey {
            model: self.fingerprint.clone(),
            lora: format!(
                "{} layers={:?}",
                serde_json::to_string(&self.source).unwrap_or_default(),
                self.layout.names()
            ),
            loss: match self.stage {
                AttrStage::Sft => format!("sft token-mean-ce mask_prompt={}", self.mask_prompt),
                AttrStage::Dpo => format!("dpo beta={}", self.beta),
                AttrStage::Rm => format!(
                    "rm bradley-terry v_head={}",
                    if self.head.as_ref().is_some_and(|h| h.trainable) {
                        "trainable"
                    } else {
                        "frozen"
                    }
                ),
            },
            data: format!(
                "{role} n={} max_len={} sha256={}",
                examples.len(),
                self.max_len,
                trust_core::data::sha256_bytes(data.as_bytes())
            ),
        }
    }
}

/// Sum of the log-probs of one unpadded sequence's target tokens, `[1]`. Only the positions
/// that predict a target go through the LM head, so a DPO response of 32 tokens after a 96-token
/// prompt costs a quarter of the full-vocabulary projection of [`trust_align::train::batch_logprob`]
/// (same value up to float rounding).
pub fn target_logprob(
    model: &CausalLm,
    e: &Encoded,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let ids = Tensor::from_vec(e.ids.clone(), (1, e.ids.len()), device)?;
    let hidden = model.forward_hidden(&ids, None, None, None)?;
    logprob_of_hidden(model, &hidden, e, device)
}

/// [`target_logprob`] from the final hidden states `[1, t, hidden]` of `e`.
fn logprob_of_hidden(
    model: &CausalLm,
    hidden: &Tensor,
    e: &Encoded,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let t = e.ids.len();
    let pos: Vec<u32> = (1..t)
        .filter(|&j| e.targets.get(j).is_some_and(|&x| x > 0.0))
        .map(|j| (j - 1) as u32)
        .collect();
    if pos.is_empty() {
        return Tensor::zeros(1, DType::F32, device);
    }
    let next: Vec<u32> = pos.iter().map(|&p| e.ids[p as usize + 1]).collect();
    let k = pos.len();
    let hidden = hidden.squeeze(0)?;
    let h = hidden.index_select(&Tensor::from_vec(pos, k, device)?, 0)?;
    let lp = candle_nn::ops::log_softmax(
        &model.lm_head(&h)?.to_dtype(DType::F32)?,
        candle_core::D::Minus1,
    )?;
    lp.gather(&Tensor::from_vec(next, (k, 1), device)?, 1)?
        .sum_all()?
        .reshape(1)
}

/// The stage loss of one example (batch 1, no padding): SFT token-mean cross-entropy over the
/// `sft` targets, DPO on `chosen` / `rejected` against `reference` (its log-probs detached), or
/// the reward model's Bradley–Terry loss through `head`. Equal to
/// [`trust_align::train::batch_loss`] / [`trust_align::reward::rm_loss`] on a batch of one, but projects only
/// scored positions through the LM head ([`target_logprob`]).
pub fn stage_loss(
    stage: AttrStage,
    model: &CausalLm,
    reference: Option<&CausalLm>,
    head: Option<&RewardHead>,
    e: &PairEncoded,
    beta: f64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    stage_loss_with(
        stage,
        model,
        reference,
        FrozenPrefix::default(),
        head,
        e,
        beta,
        device,
    )
}

/// [`stage_loss`] with the frozen prefix of the DPO policy computed once per sequence and
/// shared with the reference when `prefix.reference_shares` (see
/// [`trust_align::train::FrozenPrefix`]): the same loss and gradients up to float rounding,
/// for two trunk passes instead of four. `prefix.layers` must not exceed the first block any
/// attributed variable (or any adapter, for sharing) touches.
#[allow(clippy::too_many_arguments)]
pub fn stage_loss_with(
    stage: AttrStage,
    model: &CausalLm,
    reference: Option<&CausalLm>,
    prefix: FrozenPrefix,
    head: Option<&RewardHead>,
    e: &PairEncoded,
    beta: f64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    if stage == AttrStage::Dpo && prefix.layers > 0 {
        let reference = reference
            .ok_or_else(|| candle_core::Error::Msg("DPO needs a reference model".into()))?;
        let k = prefix.layers;
        let mut lps = Vec::with_capacity(4);
        for enc in [&e.chosen, &e.rejected] {
            let ids = Tensor::from_vec(enc.ids.clone(), (1, enc.ids.len()), device)?;
            let h0 = model.forward_prefix(&ids, None, k)?.detach();
            let pol = logprob_of_hidden(
                model,
                &model.forward_hidden_from(&h0, None, k)?,
                enc,
                device,
            )?;
            let rf = if prefix.reference_shares {
                logprob_of_hidden(
                    reference,
                    &reference.forward_hidden_from(&h0, None, k)?,
                    enc,
                    device,
                )?
            } else {
                target_logprob(reference, enc, device)?
            };
            lps.push((pol, rf.detach()));
        }
        let ((pc, rc), (pr, rr)) = (lps[0].clone(), lps[1].clone());
        return Ok(trust_align::losses::dpo_loss(&pc, &pr, &rc, &rr, beta)?.0);
    }
    match stage {
        AttrStage::Sft => {
            let n: f32 = e.sft.targets.iter().skip(1).sum();
            if n == 0.0 {
                candle_core::bail!("example {} has no scored token", e.index);
            }
            (target_logprob(model, &e.sft, device)?.neg()? / f64::from(n))?.squeeze(0)
        }
        AttrStage::Dpo => {
            let reference = reference
                .ok_or_else(|| candle_core::Error::Msg("DPO needs a reference model".into()))?;
            let pc = target_logprob(model, &e.chosen, device)?;
            let pr = target_logprob(model, &e.rejected, device)?;
            let rc = target_logprob(reference, &e.chosen, device)?.detach();
            let rr = target_logprob(reference, &e.rejected, device)?.detach();
            Ok(trust_align::losses::dpo_loss(&pc, &pr, &rc, &rr, beta)?.0)
        }
        AttrStage::Rm => {
            let head =
                head.ok_or_else(|| candle_core::Error::Msg("RM needs a reward head".into()))?;
            trust_align::reward::rm_loss(model, head, &[e], device)
        }
    }
}

/// Gradients of [`stage_loss`] w.r.t. `vars`, each flattened row-major (zeros for a variable the
/// loss does not reach).
#[allow(clippy::too_many_arguments)]
pub fn stage_gradients(
    stage: AttrStage,
    model: &CausalLm,
    reference: Option<&CausalLm>,
    head: Option<&RewardHead>,
    vars: &[Var],
    e: &PairEncoded,
    beta: f64,
    device: &Device,
) -> candle_core::Result<Vec<Vec<f32>>> {
    stage_gradients_with(
        stage,
        model,
        reference,
        FrozenPrefix::default(),
        head,
        vars,
        e,
        beta,
        device,
    )
}

/// [`stage_gradients`] through [`stage_loss_with`].
#[allow(clippy::too_many_arguments)]
pub fn stage_gradients_with(
    stage: AttrStage,
    model: &CausalLm,
    reference: Option<&CausalLm>,
    prefix: FrozenPrefix,
    head: Option<&RewardHead>,
    vars: &[Var],
    e: &PairEncoded,
    beta: f64,
    device: &Device,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let grads =
        stage_loss_with(stage, model, reference, prefix, head, e, beta, device)?.backward()?;
    vars.iter()
        .map(|v| match grads.get(v.as_tensor()) {
            Some(g) => g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>(),
            None => Ok(vec![0.0; v.as_tensor().elem_count()]),
        })
        .collect()
}

/// Progress of [`run_attribution`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// `train` or `test` gradients, or `score`.
    pub phase: &'static str,
    /// Examples done in this phase (including ones found in the store).
    pub done: usize,
    /// Examples in this phase.
    pub total: usize,
    /// Examples found already extracted when the phase started (resume).
    pub resumed: usize,
}

/// Writes the gradients of `examples` into the store at `dir` (created, or resumed: examples
/// already present are skipped, a torn last record is cut), then opens it for reading. Flushes
/// every 16 examples and syncs every 1,024.
pub fn extract_to_store(
    model: &AttributionModel,
    examples: &[PairEncoded],
    dir: &Path,
    key: &StoreKey,
    phase: &'static str,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<GradientStoreReader, TrainError> {
    let inv = |e: AttributionError| TrainError::Invalid(e.to_string());
    let mut w = GradientStoreWriter::open(dir, key, model.layout()).map_err(inv)?;
    let start = w.resume_info().examples_done;
    if start > examples.len() {
        return Err(TrainError::Invalid(format!(
            "{}: store holds {start} records but there are only {} examples",
            dir.display(),
            examples.len()
        )));
    }
    on_progress(&Progress {
        phase,
        done: start,
        total: examples.len(),
        resumed: start,
    });
    // Batches start at multiples of the batch size, also after a resume (the examples of a
    // partly stored batch before `start` are recomputed and dropped), so every example's
    // gradient comes from the same batch as in an uninterrupted run.
    let bs = model.gradient_batch();
    let mut lo = start / bs * bs;
    while lo < examples.len() {
        let hi = (lo + bs).min(examples.len());
        let grads = model.gradients_batch(&examples[lo..hi])?;
        for (i, g) in (lo..hi).zip(grads) {
            if i < start {
                continue;
            }
            let slices: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
            w.append(&slices).map_err(inv)?;
            if (i + 1) % 1024 == 0 {
                w.sync().map_err(inv)?;
            } else if (i + 1) % 16 == 0 {
                w.flush().map_err(inv)?;
            }
            on_progress(&Progress {
                phase,
                done: i + 1,
                total: examples.len(),
                resumed: start,
            });
        }
        lo = hi;
    }
    w.sync().map_err(inv)?;
    w.reader().map_err(inv)
}

/// Result of [`run_attribution`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttributionRun {
    /// Scores (raw and sign-normalised) per encoded training pair.
    pub attribution: Attribution,
    /// Attributed tensor names (DataInf layers), in order.
    pub layers: Vec<String>,
    /// Layers whose training gradients were all zero (ignored by DataInf).
    pub zero_layers: Vec<String>,
    /// Training pairs that could not be encoded (not scored).
    pub skipped_train: usize,
    /// Test pairs that could not be encoded.
    pub skipped_test: usize,
    /// Training gradients found in the store at start (resumed).
    pub resumed_train: usize,
    /// How the adapters were obtained.
    pub adapters: AdapterSource,
}

/// The full pipeline: load the model, extract training gradients into `store_dir/train-<key>` and
/// test gradients into `store_dir/test-<key>` (both resumable; `<key>` = the first 16 hex digits
/// of the [`StoreKey`] hash, so runs with other settings get their own stores), average the test
/// gradients and stream DataInf over the training store.
pub fn run_attribution(
    opts: &AttributeOptions,
    train: &[PreferencePair],
    test: &[TestPair],
    store_dir: &Path,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<AttributionRun, TrainError> {
    let model = AttributionModel::load(opts)?;
    let (train_enc, skipped_train) = model.encode(train);
    let (test_enc, skipped_test) = model.encode(&as_preference_pairs(test));
    if train_enc.is_empty() {
        return Err(TrainError::Invalid(format!(
            "no encodable training pair ({skipped_train} skipped)"
        )));
    }
    if test_enc.is_empty() {
        return Err(TrainError::Invalid(format!(
            "no encodable test pair ({skipped_test} skipped)"
        )));
    }
    let train_key = model.store_key("train", &train_enc);
    let test_key = model.store_key("test", &test_enc);
    let train_dir = store_dir.join(format!("train-{}", &train_key.sha256()[..16]));
    let test_dir = store_dir.join(format!("test-{}", &test_key.sha256()[..16]));
    let mut resumed_train = 0;
    let train_g = extract_to_store(
        &model,
        &train_enc,
        &train_dir,
        &train_key,
        "train",
        &mut |p| {
            resumed_train = p.resumed;
            on_progress(p)
        },
    )?;
    let test_g = extract_to_store(&model, &test_enc, &test_dir, &test_key, "test", on_progress)?;
    let inv = |e: AttributionError| TrainError::Invalid(e.to_string());
    let v = mean_gradient(&test_g, opts.datainf.block_size).map_err(inv)?;
    on_progress(&Progress {
        phase: "score",
        done: 0,
        total: train_enc.len(),
        resumed: 0,
    });
    let r = datainf(&train_g, &v, &opts.datainf).map_err(inv)?;
    let normalized = normalize_signwise(&r.scores).map_err(inv)?;
    on_progress(&Progress {
        phase: "score",
        done: train_enc.len(),
        total: train_enc.len(),
        resumed: 0,
    });
    let names = model.layout().names().to_vec();
    Ok(AttributionRun {
        zero_layers: r.zero_layers.iter().map(|&l| names[l].clone()).collect(),
        layers: names,
        attribution: Attribution {
            train_index: train_enc.iter().map(|e| e.index).collect(),
            scores: r.scores,
            normalized,
            n_test: test_enc.len(),
            lambdas: r.lambdas,
        },
        skipped_train,
        skipped_test,
        resumed_train,
        adapters: model.source,
    })
}
