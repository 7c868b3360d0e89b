//! DataInf attribution of an aligned model's behaviour to its training pairs (PROTOCOLS A.8),
//! over the LoRA adapters that [`crate::train`] produced.
//!
//! Training side: per-example gradients of the stage loss (SFT cross-entropy or DPO against the
//! reference) w.r.t. every LoRA `A`/`B` tensor, each tensor a DataInf "layer". Test side: the same
//! loss on test pairs (prompt, preferred continuation, dispreferred continuation) built from a
//! vertical's generations, averaged. Scores come from
//! [`trust_verticals::attribution::datainf`]; I > 0 means up-weighting the pair raises the test
//! loss.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use trust_backends::candle::{CausalLm, ModelConfig};
use trust_verticals::attribution::{
    DataInfConfig, InMemoryGradients, LayerLayout, datainf, mean_gradient, normalize_signwise,
};

use crate::hh::PreferencePair;
use crate::train::{
    Stage, TrainConfig, TrainError, encode_pairs, example_gradients, load_lora_trainee,
    load_weights,
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

/// What to attribute.
#[derive(Debug, Clone)]
pub struct AttributionSpec<'a> {
    /// The stage whose loss is differentiated (`Sft` or `Dpo`).
    pub stage: Stage,
    /// Directory written by [`crate::train::train`] for that stage (holds `adapter/`).
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
    let reference = match spec.reference_dir {
        Some(dir) => {
            let rc = ModelConfig::from_dir(dir)?;
            Some(CausalLm::from_var_builder(
                &rc,
                VarBuilder::from_tensors(load_weights(dir, &device)?, DType::F32, &device),
            )?)
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
    let model = trainee.model()?;
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
    let test_as_pairs: Vec<PreferencePair> = test
        .iter()
        .enumerate()
        .map(|(i, t)| PreferencePair {
            index: i,
            prompt: t.prompt.clone(),
            chosen: t.preferred.clone(),
            rejected: t.dispreferred.clone(),
        })
        .collect();
    let (test_enc, _) = encode_pairs(&tok, &test_as_pairs, &tc, eos);
    if train_enc.is_empty() || test_enc.is_empty() {
        return Err(TrainError::Invalid(
            "no encodable training or test pair".into(),
        ));
    }
    let total = train_enc.len() + test_enc.len();
    let mut done = 0;
    let mut grads = |enc: &[crate::train::PairEncoded]| -> Result<InMemoryGradients, TrainError> {
        let mut store = InMemoryGradients::new(layout.clone());
        for e in enc {
            let g = example_gradients(
                spec.stage,
                &model,
                reference.as_ref(),
                &vars,
                e,
                spec.beta,
                &device,
            )?;
            let slices: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
            store
                .push(&slices)
                .map_err(|e| TrainError::Invalid(e.to_string()))?;
            done += 1;
            on_progress(done, total);
        }
        Ok(store)
    };
    let train_g = grads(&train_enc)?;
    let test_g = grads(&test_enc)?;
    let inv =
        |e: trust_verticals::attribution::AttributionError| TrainError::Invalid(e.to_string());
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
