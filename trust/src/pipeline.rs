//! The main job, end to end on one machine: a base model (SmolLM2-135M-Instruct by default,
//! [`DemoConfig::pretrained`]; or a tiny GPT-NeoX built here and pretrained briefly on HH-RLHF
//! dialogues, [`DemoConfig::standard`]) → LoRA SFT on a seeded training split of HH-RLHF → LoRA
//! DPO against the SFT model; beside it, a reward model trained from the SFT model and PPO from
//! the SFT model against it (the paper's SFT → PPO branch) → implicit-reward accuracy on the
//! held-out pairs (and the reward model's) → base / SFT / DPO / PPO on the five trust verticals
//! with paired changes against the base → the sophistry audit of the truthfulness answers (the
//! base as judge) → DataInf attribution of the vertical that moved most from SFT to DPO to the
//! DPO training pairs, and of the one that moved most from SFT to PPO through the reward model
//! (as the paper attributes PPO) → `report.json`, `report.html`, `report.md`.
//!
//! Every stage writes into its own folder under the output directory and is skipped when it is
//! already complete, so rerunning the same command resumes after a crash. A 135M model aligned
//! for minutes on a CPU gives evidence about that model and budget, not the paper's findings; the
//! tiny model only shows the stages run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::{Deserialize, Serialize};
use trust_backends::candle::{CandleModel, LoadOptions};
use trust_core::{DataDir, Response, Runner, TextScorer};
use trust_verticals::registry::{self, BuildOptions};

use trust_align::heldout::{HeldoutEval, PairLogprobs, pair_logprobs_many, split_heldout};
use trust_align::hh::{self, PreferencePair};
use trust_align::ppo::{PpoConfig, PpoRun, PpoStepLog, train_ppo};
use trust_align::reward::{RewardEval, RewardModel};
use trust_align::train::{Stage, StepLog, TrainConfig, TrainError, train};
use trust_attribution::{Attribution, AttributionSpec, TestPair, attribute};
use trust_backends::candle::tiny::{NeoxShape, train_tokenizer, write_model_dir};
use trust_backends::scorers::LexicalToxicity;

/// The statement every demo report carries.
pub const DISCLAIMER: &str = "This report comes from a tiny GPT-NeoX model built from random weights and trained for minutes \
on 2,312 HH-RLHF test-split dialogues, evaluated on a few samples per vertical with a weak lexical toxicity scorer. \
It shows that the base -> SFT -> DPO (and SFT -> reward model -> PPO) -> evaluate -> attribute pipeline runs; its numbers are not the paper's findings \
and say nothing about real models.";

/// [`DISCLAIMER`], naming the scorer actually used.
/// The caution of a run on a pretrained model.
pub const PRETRAINED_CAUTION: &str = "A 135M-parameter model aligned for a few minutes on 2 CPU cores, evaluated on stratified subsets of each benchmark: the direction and size of a change are evidence about this model and this budget, not the paper's findings for 1.4B-6.9B Pythia models. Read the paired intervals: a change whose interval includes 0 is not established.";

fn disclaimer(cfg: &DemoConfig) -> String {
    if cfg.base_model.is_some() {
        return PRETRAINED_CAUTION.to_string();
    }
    if cfg.jigsaw_scorer.is_some() {
        DISCLAIMER.replace(
            "a weak lexical toxicity scorer",
            "the Jigsaw-trained BiLSTM toxicity scorer",
        )
    } else {
        DISCLAIMER.to_string()
    }
}

/// Settings of the demo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoConfig {
    /// Model shape.
    pub shape: NeoxShape,
    /// Pretraining (full parameters).
    pub pretrain: TrainConfig,
    /// LoRA SFT.
    pub sft: TrainConfig,
    /// LoRA DPO.
    pub dpo: TrainConfig,
    /// The reward model of the PPO branch, trained from the SFT model on the training split
    /// (absent, with `ppo`: no PPO branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rm: Option<TrainConfig>,
    /// PPO from the SFT model (policy and KL reference) against the reward model `rm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppo: Option<PpoConfig>,
    /// A pretrained base model (a GGUF file or a model directory, e.g. SmolLM2-135M-Instruct
    /// from `scripts/fetch-models.sh`) instead of the tiny GPT-NeoX built and pretrained here.
    /// Absent from report.json when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<PathBuf>,
    /// HH-RLHF pairs held out of training (seeded split) to measure whether training
    /// generalises: implicit-reward pair accuracy and NLL per checkpoint.
    #[serde(default)]
    pub heldout_pairs: usize,
    /// Samples per vertical in evaluation (the first N of each vertical's sample order, or of
    /// the stratified subset when `eval_sample` is set).
    pub eval_limit: usize,
    /// Seeded stratified subset of N samples per vertical (`Runner::sample`), so the samples
    /// cover each vertical's groups; every checkpoint answers the same ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_sample: Option<usize>,
    /// Generations per prompt where a protocol has k (toxicity, stereotype).
    pub eval_samples: Option<usize>,
    /// (vertical, protocol) pairs evaluated.
    pub protocols: Vec<(String, String)>,
    /// Rows per forward pass in evaluation.
    pub eval_batch_size: usize,
    /// Generation: the most rows decoded together in one forward pass (beams count;
    /// [`LoadOptions::max_batch_rows`]): more rows use the matrix units better.
    #[serde(default = "default_max_batch_rows")]
    pub eval_max_batch_rows: usize,
    /// DPO training pairs attributed (the first N of the DPO data).
    pub attribution_train: usize,
    /// DPO β of the attribution loss.
    pub attribution_beta: f64,
    /// Test pairs (new vs old generations of the attributed vertical) at most.
    #[serde(default = "default_attribution_test")]
    pub attribution_test: usize,
    /// Run seed.
    pub seed: u64,
    /// Score toxicity with the Jigsaw BiLSTM in this directory (`models/jigsaw-bilstm`) instead of
    /// the lexical scorer fitted on the data. Absent from report.json when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jigsaw_scorer: Option<PathBuf>,
}

impl DemoConfig {
    /// The default: finishes in minutes on 2 CPU cores.
    pub fn standard() -> Self {
        let mut pretrain = TrainConfig::new(Stage::Pretrain);
        pretrain.steps = 400;
        pretrain.batch_size = 8;
        pretrain.max_len = 128;
        let mut sft = TrainConfig::new(Stage::Sft);
        sft.steps = 120;
        sft.batch_size = 8;
        sft.max_len = 128;
        let mut dpo = TrainConfig::new(Stage::Dpo);
        dpo.steps = 120;
        dpo.batch_size = 8;
        dpo.max_len = 128;
        dpo.beta = 0.1;
        let mut rm = TrainConfig::new(Stage::Rm);
        rm.steps = 60;
        rm.batch_size = 8;
        rm.max_len = 128;
        let ppo = PpoConfig {
            steps: 12,
            rollout_batch: 8,
            minibatch_size: 4,
            ppo_epochs: 2,
            max_new_tokens: 24,
            max_prompt_len: 96,
            lr: 1e-3,
            ..PpoConfig::default()
        };
        DemoConfig {
            shape: NeoxShape::demo(),
            pretrain,
            sft,
            dpo,
            rm: Some(rm),
            ppo: Some(ppo),
            base_model: None,
            heldout_pairs: 256,
            eval_limit: 24,
            eval_sample: None,
            eval_samples: None,
            protocols: default_protocols(),
            eval_batch_size: 16,
            eval_max_batch_rows: default_max_batch_rows(),
            attribution_train: 256,
            attribution_beta: 1.0,
            attribution_test: default_attribution_test(),
            seed: 0,
            jigsaw_scorer: None,
        }
    }

    /// The smallest configuration that exercises every stage (tests, CI).
    pub fn minimal() -> Self {
        let mut c = Self::standard();
        c.shape = NeoxShape {
            vocab_size: 320,
            hidden_size: 32,
            num_layers: 2,
            num_heads: 4,
            intermediate_size: 64,
            max_positions: 1024,
            rotary_pct: 0.25,
        };
        for (t, steps) in [(&mut c.pretrain, 4), (&mut c.sft, 3), (&mut c.dpo, 3)] {
            t.steps = steps;
            t.batch_size = 4;
            t.max_len = 64;
        }
        if let Some(rm) = &mut c.rm {
            rm.steps = 3;
            rm.batch_size = 4;
            rm.max_len = 64;
        }
        if let Some(ppo) = &mut c.ppo {
            ppo.steps = 2;
            ppo.rollout_batch = 4;
            ppo.minibatch_size = 2;
            ppo.ppo_epochs = 1;
            ppo.max_new_tokens = 6;
            ppo.max_prompt_len = 48;
        }
        c.eval_limit = 2;
        c.eval_samples = Some(2);
        c.attribution_train = 8;
        c.heldout_pairs = 8;
        c
    }

    /// The main job on a pretrained model (`model`: a GGUF file or model directory; LoRA on the
    /// attention projections of the last third of its blocks): LoRA SFT on the HH-RLHF chosen replies, LoRA
    /// DPO against the SFT model, stratified subsets of 48 samples per vertical, 200 held-out
    /// pairs, DataInf over 64 DPO pairs.
    pub fn pretrained(model: &Path) -> Result<Self, DemoError> {
        let mc = trust_backends::candle::ModelConfig::from_dir(model)?;
        // DPO adapts the attention and MLP projections: on SmolLM2, adding the MLP raised the held-out DPO
        // pair accuracy from 0.575 to 0.595 at the same steps and learning rate (BENCHMARKS.md).
        // (SFT keeps the attention projections.)
        let targets = trust_align::lora::default_targets(mc.arch);
        let mut dpo_targets = targets.clone();
        dpo_targets.extend(trust_align::lora::mlp_targets(mc.arch));
        // LoRA on the last third of the blocks: backpropagation stops at the first adapted
        // block, so a step costs a forward pass plus a third of a backward pass.
        let n = mc.num_hidden_layers;
        let layers: Vec<usize> = (n - n.div_ceil(3)..n).collect();
        let mut c = Self::standard();
        c.base_model = Some(model.to_path_buf());
        let mut sft = TrainConfig::new(Stage::Sft);
        sft.steps = 30;
        sft.batch_size = 4;
        sft.max_len = 96;
        sft.lr = 3e-4;
        sft.mask_prompt = true;
        sft.lora.targets = targets;
        sft.lora.layers = Some(layers.clone());
        let mut dpo = TrainConfig::new(Stage::Dpo);
        dpo.steps = 40;
        dpo.batch_size = 4;
        dpo.max_len = 96;
        dpo.lr = 2e-3;
        dpo.beta = 0.1;
        dpo.lora.targets = dpo_targets;
        dpo.lora.layers = Some(layers);
        let mut rm = TrainConfig::new(Stage::Rm);
        rm.steps = 40;
        rm.batch_size = 4;
        rm.max_len = 96;
        // Held-out reward accuracy of 40 steps of 4 pairs from the SFT model (BENCHMARKS.md):
        // lr 3e-4 0.520, 1e-3 0.500, 3e-3 0.540 (8 pairs, last 6 blocks, 64 tokens: 0.460).
        rm.lr = 3e-3;
        rm.lora = dpo.lora.clone();
        // A short PPO run: 8 steps of 8 rollouts ≈ 20 s a step on 2 cores (BENCHMARKS.md).
        let ppo = PpoConfig {
            steps: 8,
            rollout_batch: 8,
            minibatch_size: 4,
            ppo_epochs: 2,
            max_new_tokens: 32,
            max_prompt_len: 64,
            lr: 1e-3,
            lora: dpo.lora.clone(),
            ..PpoConfig::default()
        };
        c.sft = sft;
        c.dpo = dpo;
        c.rm = Some(rm);
        c.ppo = Some(ppo);
        c.heldout_pairs = 200;
        c.eval_sample = Some(48);
        c.eval_limit = 48;
        // 32 prompts of a call decoded together, up to 160 rows (32 toxicity prompts x 5
        // beams): 1.4x faster than 16 / 64 on the beam protocols (toxicity on 48 samples:
        // 80 s vs 113 s).
        c.eval_batch_size = 32;
        c.eval_max_batch_rows = 160;
        c.attribution_train = 64;
        c.attribution_beta = 0.1;
        Ok(c)
    }
}

fn default_attribution_test() -> usize {
    48
}

fn default_max_batch_rows() -> usize {
    LoadOptions::default().max_batch_rows
}

/// The protocols the demo evaluates: the paper's (RLHF_Trust code) for every vertical, including
/// HF beam-sample decoding for toxicity and stereotype. Other protocols (`paper-text`,
/// `decodingtrust`, `corrected`, ...) can be set in [`DemoConfig::protocols`].
pub fn default_protocols() -> Vec<(String, String)> {
    [
        "toxicity",
        "stereotype",
        "machine_ethics",
        "truthfulness",
        "privacy",
    ]
    .iter()
    .map(|v| (v.to_string(), "paper".to_string()))
    .collect()
}

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// Training or attribution failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Data, runner or vertical failure.
    #[error(transparent)]
    Core(#[from] trust_core::Error),
    /// Loading a model failed.
    #[error(transparent)]
    Backend(#[from] trust_backends::BackendError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// One vertical's result on one checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerticalResult {
    /// Protocol.
    pub protocol: String,
    /// Samples evaluated / failed / unparsed replies.
    pub n_samples: usize,
    /// Failed samples.
    pub n_failed: usize,
    /// Unparsed replies.
    pub n_unparsed: usize,
    /// Metrics with 95% bootstrap intervals.
    pub metrics: Vec<trust_core::MetricValue>,
}

/// A training pair with its attribution score.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoredPair {
    /// Index in the training data.
    pub train_index: usize,
    /// DataInf score normalised to [−1, 1].
    pub score: f64,
    /// The pair's prompt (last 300 characters).
    pub prompt: String,
    /// Chosen response.
    pub chosen: String,
    /// Rejected response.
    pub rejected: String,
}

/// Attribution summary in the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttributionSummary {
    /// Vertical whose change is attributed.
    pub vertical: String,
    /// Why this vertical (the largest SFT -> DPO change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// Stage attributed.
    pub stage: String,
    /// How the test loss is built.
    pub test_loss: String,
    /// Training pairs scored.
    pub n_train: usize,
    /// Test pairs averaged.
    pub n_test: usize,
    /// Pairs whose up-weighting most lowers the test loss (pushed the model towards its DPO behaviour).
    pub most_helpful: Vec<ScoredPair>,
    /// Pairs whose up-weighting most raises it.
    pub most_harmful: Vec<ScoredPair>,
}

/// `report.json` of the demo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoReport {
    /// What the numbers do and do not mean.
    pub disclaimer: String,
    /// The settings.
    pub config: DemoConfig,
    /// Checkpoints, in order.
    pub checkpoints: Vec<String>,
    /// Last step of each training stage.
    pub training: BTreeMap<String, StepLog>,
    /// checkpoint → vertical → result.
    pub results: BTreeMap<String, BTreeMap<String, VerticalResult>>,
    /// Scorer used for toxicity.
    pub toxicity_scorer: String,
    /// The attribution.
    pub attribution: Option<AttributionSummary>,
    /// Seconds per stage.
    pub timings: BTreeMap<String, f64>,
    /// The base model's id and weights sha256 (pretrained runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<trust_core::ModelInfo>,
    /// Held-out implicit-reward pair accuracy per checkpoint (base: the model alone prefers the
    /// chosen reply; SFT: against the base; DPO: against the SFT model, its DPO reference).
    #[serde(default)]
    pub heldout_pair_accuracy: BTreeMap<String, f64>,
    /// The full held-out figures per checkpoint (accuracy, margin, NLL of chosen and rejected).
    #[serde(default)]
    pub heldout: BTreeMap<String, HeldoutEval>,
    /// checkpoint → vertical → paired-bootstrap change of every metric against the first
    /// checkpoint (same samples).
    #[serde(default)]
    pub changes: BTreeMap<String, BTreeMap<String, Vec<trust_core::metric::PairedChange>>>,
    /// How the evaluation samples were drawn.
    #[serde(default)]
    pub sampling: String,
    /// The sophistry audit of the truthfulness answers (absent when truthfulness was not run
    /// with a generating protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sophistry: Option<SophistrySummary>,
    /// The reward model of the PPO branch on the held-out pairs (share with r(chosen) >
    /// r(rejected)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_model: Option<RewardEval>,
    /// The last PPO step (mean score, KL, entropy, clip fraction, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppo_training: Option<PpoStepLog>,
    /// Attribution of the vertical that moved most from SFT to PPO to the training pairs,
    /// through the reward model's Bradley–Terry loss (the paper's PPO attribution).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppo_attribution: Option<AttributionSummary>,
}

/// The sophistry audit (Wen et al.; `trust_verticals::sophistry`) of the TruthfulQA answers: the
/// first checkpoint judges every checkpoint's replies, and each later checkpoint is audited
/// against the first (approval vs correctness, false-positive rate on the items both get wrong).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SophistrySummary {
    /// Who judges, and how.
    pub judge: String,
    /// What the judge sees.
    pub judge_prompt: String,
    /// Items (TruthfulQA questions answered by every checkpoint).
    pub n_items: usize,
    /// Aligned checkpoint → its audit against the first checkpoint (init = first, rlhf = it).
    pub audits: BTreeMap<String, trust_verticals::sophistry::AuditReport>,
}

/// The last step log of a training directory (`StepLog`, or `PpoStepLog` for PPO).
fn last_log<T: serde::de::DeserializeOwned>(dir: &Path) -> Option<T> {
    let text = std::fs::read_to_string(dir.join("train_log.jsonl")).ok()?;
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

fn stage_complete(dir: &Path, steps: usize) -> bool {
    dir.join("model.safetensors").exists()
        && last_log::<StepLog>(dir).is_some_and(|l| l.step == steps)
}

/// The test pairs of an attribution of `vertical`'s change from checkpoint `from` to `to`:
/// `to`'s generations preferred over `from`'s, as `stage`'s test loss reads them.
#[allow(clippy::too_many_arguments)]
fn change_test_pairs(
    cfg: &DemoConfig,
    data: &DataDir,
    out: &Path,
    vertical: &str,
    protocol: &str,
    from: &str,
    to: &str,
    stage: trust_attribution::AttrStage,
) -> Result<Vec<TestPair>, DemoError> {
    let samples = |ckpt: &str| {
        out.join("eval")
            .join(ckpt)
            .join(vertical)
            .join(trust_core::runner::SAMPLES_FILE)
    };
    let raw = trust_attribution::test_pairs::load_test_pairs(
        vertical,
        protocol,
        Some(data),
        &samples(to),
        Some(&samples(from)),
        &trust_attribution::test_pairs::TestPairOptions {
            max_pairs: Some(cfg.attribution_test),
            ..Default::default()
        },
    )?;
    Ok(raw
        .iter()
        .map(|r| trust_attribution::test_pairs::stage_test_pair(stage, r))
        .collect())
}

/// Why a vertical was attributed: its change `label` (e.g. `SFT -> DPO`), `z` half-widths.
fn why_attributed(label: &str, change: &trust_core::metric::PairedChange, z: f64) -> String {
    format!(
        "the largest {label} change: {} {:+.3} [{:.3}, {:.3}] over {} paired samples ({z:.1} interval half-widths)",
        change.name,
        change.delta.unwrap_or(0.0),
        change.ci_low.unwrap_or(0.0),
        change.ci_high.unwrap_or(0.0),
        change.n_paired
    )
}

/// Runs the demo into `out`. `log` receives progress lines.
pub async fn run(
    cfg: &DemoConfig,
    data: &DataDir,
    out: &Path,
    log: &mut (dyn FnMut(&str) + Send),
) -> Result<DemoReport, DemoError> {
    std::fs::create_dir_all(out).map_err(|e| trust_core::Error::io(out, e))?;
    let mut timings = BTreeMap::new();
    let hh_path = data.path("hh-rlhf/harmless-base-test.jsonl.gz")?;
    let all_pairs = hh::load(&hh_path)?.pairs;
    let (pairs, heldout_set) = split_heldout(&all_pairs, cfg.heldout_pairs, cfg.seed);
    let models = out.join("models");
    let init = models.join("init");
    let base = cfg
        .base_model
        .clone()
        .unwrap_or_else(|| models.join("base"));
    let sft = models.join("sft");
    let dpo = models.join("dpo");
    let rm_dir = models.join("rm");
    let ppo_dir = models.join("ppo");
    let ppo_branch = match (&cfg.rm, &cfg.ppo) {
        (Some(rm), Some(ppo)) => Some((rm, ppo)),
        (None, None) => None,
        _ => {
            return Err(DemoError::Other(
                "the PPO branch needs both `rm` and `ppo` settings (or neither)".into(),
            ));
        }
    };

    // 1. Tokenizer and random initialisation.
    let t = Instant::now();
    if cfg.base_model.is_some() {
        log(&format!("[1/6] base model: {}", base.display()));
    } else if !init.join("model.safetensors").exists() {
        log("[1/6] training a byte-level BPE tokenizer and initialising the model");
        let texts: Vec<String> = pairs
            .iter()
            .flat_map(|p| [format!("{}{}", p.prompt, p.chosen), p.rejected.clone()])
            .collect();
        let tok = train_tokenizer(texts.iter(), cfg.shape.vocab_size)
            .map_err(|e| DemoError::Other(format!("tokenizer: {e}")))?;
        let weights = cfg
            .shape
            .init_weights(cfg.seed, &Device::Cpu)
            .map_err(TrainError::from)?;
        write_model_dir(&init, &cfg.shape.config_json(), &tok, &weights)
            .map_err(|e| DemoError::Other(format!("{}: {e}", init.display())))?;
    } else {
        log("[1/6] model initialised (cached)");
    }
    timings.insert("init".to_string(), t.elapsed().as_secs_f64());

    // 2-4. Training stages.
    let mut training = BTreeMap::new();
    let mut stages = vec![
        ("pretrain", &cfg.pretrain, &init, &base, None, 2),
        ("sft", &cfg.sft, &base, &sft, None, 3),
        ("dpo", &cfg.dpo, &sft, &dpo, Some(&sft), 4),
    ];
    if let Some((rm, _)) = ppo_branch {
        stages.push(("rm", rm, &sft, &rm_dir, None, 4));
    }
    for (name, tc, from, to, reference, stage_no) in stages {
        if name == "pretrain" && cfg.base_model.is_some() {
            continue;
        }
        let t = Instant::now();
        if stage_complete(to, tc.steps) {
            log(&format!("[{stage_no}/6] {name}: done (cached)"));
        } else {
            log(&format!(
                "[{stage_no}/6] {name}: {} steps of {} pairs",
                tc.steps,
                tc.batch_size * tc.grad_accum
            ));
            let started = Instant::now();
            let steps = tc.steps;
            let mut on_step = |l: &StepLog| {
                if l.step % 20 == 0 || l.step == steps {
                    let eta =
                        started.elapsed().as_secs_f64() / l.step as f64 * (steps - l.step) as f64;
                    let extra = l
                        .margin
                        .map(|m| {
                            format!(" margin {m:.3} acc {:.2}", l.reward_accuracy.unwrap_or(0.0))
                        })
                        .unwrap_or_default();
                    log(&format!(
                        "      step {}/{steps} loss {:.3}{extra} eta {eta:.0}s",
                        l.step, l.loss
                    ));
                }
            };
            train(
                tc,
                from,
                reference.map(|p| p.as_path()),
                &pairs,
                to,
                &mut on_step,
            )?;
        }
        if let Some(l) = last_log(to) {
            training.insert(name.to_string(), l);
        }
        timings.insert(name.to_string(), t.elapsed().as_secs_f64());
    }
    // PPO from the SFT model against the reward model.
    let mut ppo_training = None;
    if let Some((_, pc)) = ppo_branch {
        let t = Instant::now();
        if ppo_dir.join("model.safetensors").exists()
            && last_log::<PpoStepLog>(&ppo_dir).is_some_and(|l| l.step == pc.steps)
        {
            log("[4/6] ppo: done (cached)");
        } else {
            log(&format!(
                "[4/6] ppo: {} steps of {} rollouts (≤ {} new tokens, {} epochs of minibatches of {}) against the reward model",
                pc.steps, pc.rollout_batch, pc.max_new_tokens, pc.ppo_epochs, pc.minibatch_size
            ));
            let prompts: Vec<(usize, String)> =
                pairs.iter().map(|p| (p.index, p.prompt.clone())).collect();
            let started = Instant::now();
            let mut first = None;
            let steps = pc.steps;
            train_ppo(
                &PpoRun {
                    config: pc,
                    policy_dir: &sft,
                    reward_dir: &rm_dir,
                    prompts: &prompts,
                    out_dir: &ppo_dir,
                },
                &mut |l| {
                    let f = *first.get_or_insert(l.step);
                    let eta = started.elapsed().as_secs_f64() / (l.step + 1 - f) as f64
                        * (steps - l.step) as f64;
                    log(&format!(
                        "      step {}/{steps} score {:+.3} kl {:.3} entropy {:.2} clip {:.2} ({:.0} rollout tok/s) eta {eta:.0}s",
                        l.step,
                        l.mean_score,
                        l.mean_kl,
                        l.entropy,
                        l.pg_clipfrac,
                        l.rollout_tokens as f64 / l.rollout_secs.max(1e-9)
                    ));
                },
            )?;
        }
        ppo_training = last_log(&ppo_dir);
        timings.insert("ppo".to_string(), t.elapsed().as_secs_f64());
    }

    // Held-out pairs: does the training generalise?
    let t = Instant::now();
    let mut heldout = BTreeMap::new();
    if !heldout_set.is_empty() {
        // Each checkpoint's implicit reward is taken against the model it was trained from
        // (SFT against the base, DPO and PPO against SFT). The checkpoints not cached yet are
        // scored together: the blocks they share (all but the LoRA-adapted ones) run once.
        let mut ckpts = vec![("base", &base), ("sft", &sft), ("dpo", &dpo)];
        if ppo_branch.is_some() {
            ckpts.push(("ppo", &ppo_dir));
        }
        let reference_of = |ckpt: &str| match ckpt {
            "base" => None,
            "sft" => Some("base"),
            _ => Some("sft"),
        };
        let cache_of = |ckpt: &str| out.join("heldout").join(format!("{ckpt}.logprobs.json"));
        let mut cached: BTreeMap<&str, PairLogprobs> = ckpts
            .iter()
            .filter_map(|(ckpt, _)| {
                let text = std::fs::read_to_string(cache_of(ckpt)).ok()?;
                Some((*ckpt, serde_json::from_str(&text).ok()?))
            })
            .collect();
        let missing: Vec<(&str, &PathBuf)> = ckpts
            .iter()
            .filter(|(ckpt, _)| !cached.contains_key(ckpt))
            .map(|&(c, d)| (c, d))
            .collect();
        if !missing.is_empty() {
            let started = Instant::now();
            let mut last = Instant::now();
            let names: Vec<&str> = missing.iter().map(|(c, _)| *c).collect();
            let dirs: Vec<&Path> = missing.iter().map(|(_, d)| d.as_path()).collect();
            let lps = pair_logprobs_many(
                &dirs,
                &heldout_set,
                cfg.dpo.max_len,
                cfg.eval_batch_size,
                &mut |done, total| {
                    if last.elapsed().as_secs_f64() > 10.0 {
                        last = Instant::now();
                        let el = started.elapsed().as_secs_f64();
                        log(&format!(
                            "      held-out {}: {done}/{total} sequences, eta {:.0}s",
                            names.join("+"),
                            el / done as f64 * (total - done) as f64
                        ));
                    }
                },
            )?;
            for ((ckpt, _), lp) in missing.iter().zip(lps) {
                let cache = cache_of(ckpt);
                std::fs::create_dir_all(cache.parent().unwrap_or(out))
                    .map_err(|e| trust_core::Error::io(&cache, e))?;
                let text = serde_json::to_string(&lp)
                    .map_err(|e| trust_core::Error::json("heldout", e))?;
                std::fs::write(&cache, text).map_err(|e| trust_core::Error::io(&cache, e))?;
                cached.insert(ckpt, lp);
            }
        }
        for (ckpt, _) in &ckpts {
            let lp = &cached[ckpt];
            let reference = reference_of(ckpt).map(|r| (&cached[r], r.to_string()));
            let h = HeldoutEval::from_logprobs(lp, reference)?;
            log(&format!(
                "      held-out {ckpt}: pair accuracy {:.3} (margin {:+.3}{}), chosen NLL {:.3}/token over {} pairs",
                h.pair_accuracy,
                h.mean_margin,
                h.reference
                    .as_deref()
                    .map(|r| format!(" vs {r}"))
                    .unwrap_or_default(),
                h.chosen_nll,
                h.n_pairs
            ));
            heldout.insert(ckpt.to_string(), h);
        }
    }
    // The reward model ranks the held-out pairs too.
    let mut reward_model = None;
    if let (Some((rmc, _)), false) = (ppo_branch, heldout_set.is_empty()) {
        let cache = out.join("heldout").join("rm.json");
        let cached: Option<RewardEval> = std::fs::read_to_string(&cache)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let e = match cached {
            Some(e) => e,
            None => {
                let rm = RewardModel::load_cpu(&rm_dir)?;
                let started = Instant::now();
                let mut last = Instant::now();
                let e = rm.evaluate_pairs(
                    &heldout_set,
                    rmc.max_len,
                    cfg.eval_batch_size,
                    &mut |done, total| {
                        if last.elapsed().as_secs_f64() > 10.0 {
                            last = Instant::now();
                            let el = started.elapsed().as_secs_f64();
                            log(&format!(
                                "      held-out rm: {done}/{total} pairs, eta {:.0}s",
                                el / done as f64 * (total - done) as f64
                            ));
                        }
                    },
                )?;
                std::fs::create_dir_all(cache.parent().unwrap_or(out))
                    .map_err(|e| trust_core::Error::io(&cache, e))?;
                let text =
                    serde_json::to_string(&e).map_err(|e| trust_core::Error::json("heldout", e))?;
                std::fs::write(&cache, text).map_err(|e| trust_core::Error::io(&cache, e))?;
                e
            }
        };
        log(&format!(
            "      held-out rm: reward accuracy {:.3} (margin {:+.3}) over {} pairs",
            e.pair_accuracy, e.mean_margin, e.n_pairs
        ));
        reward_model = Some(e);
    }
    timings.insert("heldout".to_string(), t.elapsed().as_secs_f64());

    // 5. Evaluation.
    let t = Instant::now();
    log(&format!(
        "[5/6] evaluating base, SFT, DPO{} on the five verticals",
        if ppo_branch.is_some() { " and PPO" } else { "" }
    ));
    let (scorer, scorer_summary): (Box<dyn TextScorer>, String) = match &cfg.jigsaw_scorer {
        None => {
            let s = LexicalToxicity::fit(data, cfg.seed)?;
            let summary = format!(
                "{} (held-out Pearson r = {:.2} with Perspective scores).",
                s.info().id,
                s.heldout_pearson
            );
            (Box::new(s), summary)
        }
        Some(dir) => {
            let s = trust_backends::scorers::jigsaw::JigsawScorer::load(dir)?;
            let summary = trust_core::scorer::scorer_note(&s.info(), "toxic");
            (Box::new(s), summary)
        }
    };
    let mut results = BTreeMap::new();
    let mut checkpoints = vec![("base", &base), ("sft", &sft), ("dpo", &dpo)];
    if ppo_branch.is_some() {
        checkpoints.push(("ppo", &ppo_dir));
    }
    let mut base_info = None;
    for &(ckpt, dir) in &checkpoints {
        let model = CandleModel::load(
            dir,
            &LoadOptions {
                batch_size: cfg.eval_batch_size,
                max_batch_rows: cfg.eval_max_batch_rows,
                ..Default::default()
            },
        )?;
        if ckpt == "base" {
            base_info = Some(trust_core::LanguageModel::info(&model));
        }
        let runner = Runner::builder()
            .batch_size(cfg.eval_batch_size)
            .seed(cfg.seed)
            .limit(Some(cfg.eval_limit))
            .sample(cfg.eval_sample)
            .resume(true)
            .out_dir(out.join("eval").join(ckpt))
            .build();
        let mut per = BTreeMap::new();
        for (vertical, protocol) in &cfg.protocols {
            let opts = BuildOptions {
                samples: cfg.eval_samples,
                scorer: Some(scorer.info()),
                ..Default::default()
            };
            let v = registry::build(vertical, protocol, &opts)?;
            let needs_scorer = v.requirements().scorer;
            let started = Instant::now();
            let report = v
                .run(
                    &runner,
                    &model,
                    needs_scorer.then_some(scorer.as_ref()),
                    data,
                )
                .await?;
            log(&format!(
                "      {ckpt:<4} {vertical:<15} {protocol:<11} {} samples in {:.1}s: {}",
                report.n_samples,
                started.elapsed().as_secs_f64(),
                report
                    .metrics
                    .iter()
                    .take(2)
                    .map(|m| format!(
                        "{}={}",
                        m.name,
                        m.value.map(|v| format!("{v:.3}")).unwrap_or("n/a".into())
                    ))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            per.insert(
                vertical.clone(),
                VerticalResult {
                    protocol: protocol.clone(),
                    n_samples: report.n_samples,
                    n_failed: report.n_failed,
                    n_unparsed: report.n_unparsed,
                    metrics: report.metrics,
                },
            );
        }
        results.insert(ckpt.to_string(), per);
    }
    timings.insert("eval".to_string(), t.elapsed().as_secs_f64());

    // Paired changes against the first checkpoint (the same samples in every checkpoint).
    let boot = trust_core::Bootstrap {
        seed: cfg.seed,
        ..Default::default()
    };
    let mut changes = BTreeMap::new();
    for (ckpt, _) in checkpoints.iter().skip(1) {
        let mut per = BTreeMap::new();
        for (vertical, _) in &cfg.protocols {
            let c = trust_verticals::registry::paired_changes_between(
                &out.join("eval").join(checkpoints[0].0),
                &out.join("eval").join(ckpt),
                vertical,
                &boot,
            )?;
            per.insert(vertical.clone(), c);
        }
        changes.insert(ckpt.to_string(), per);
    }

    // The sophistry audit of the truthfulness answers, the first checkpoint as judge.
    let t = Instant::now();
    let sophistry = sophistry_audit(cfg, data, out, &checkpoints, log).await?;
    timings.insert("sophistry".to_string(), t.elapsed().as_secs_f64());

    // 6. Attribution of the change of the vertical that moved most from SFT to DPO (its
    // headline metric's paired change, in units of its interval's half-width) to the DPO
    // training pairs.
    let t = Instant::now();
    let moved = most_moved(cfg, out, "sft", "dpo", &boot)?;
    let attribution = match moved {
        None => None,
        Some((vertical, protocol, z, change)) => {
            log(&format!(
                "[6/6] attributing the {vertical} change (SFT -> DPO {} {:+.3}, {z:.1} half-widths: the largest) to {} DPO training pairs (DataInf)",
                change.name,
                change.delta.unwrap_or(0.0),
                cfg.attribution_train.min(pairs.len())
            ));
            let test = change_test_pairs(
                cfg,
                data,
                out,
                &vertical,
                &protocol,
                "sft",
                "dpo",
                trust_attribution::AttrStage::Dpo,
            )?;
            if test.is_empty() {
                return Err(DemoError::Other(format!(
                    "no {vertical} generations to build attribution test pairs from"
                )));
            }
            let train_pairs = &pairs[..cfg.attribution_train.min(pairs.len())];
            let train_pairs: Vec<PreferencePair> = train_pairs.to_vec();
            let train_pairs = &train_pairs[..];
            let spec = AttributionSpec {
                stage: Stage::Dpo,
                trained_dir: &dpo,
                base_dir: &sft,
                reference_dir: Some(&sft),
                beta: cfg.attribution_beta,
                max_len: cfg.dpo.max_len,
            };
            let mut last = Instant::now();
            let a = attribute(&spec, train_pairs, &test, &mut |done, total| {
                if last.elapsed().as_secs_f64() > 5.0 || done == total {
                    last = Instant::now();
                    log(&format!("      gradients {done}/{total}"));
                }
            })?;
            write_scores(&out.join("attribution_scores.jsonl"), &a)?;
            let mut summary = summarise(&a, &all_pairs, test.len());
            summary.vertical = vertical.clone();
            summary.why = Some(why_attributed("SFT -> DPO", &change, z));
            Some(summary)
        }
    };
    timings.insert("attribution".to_string(), t.elapsed().as_secs_f64());

    // The PPO change, attributed through the reward model's Bradley–Terry loss to the training
    // pairs (the reward model was trained on them; the paper's attribute_ppo.py).
    let t = Instant::now();
    let mut ppo_attribution = None;
    if ppo_branch.is_some()
        && let Some((vertical, protocol, z, change)) = most_moved(cfg, out, "sft", "ppo", &boot)?
    {
        let n_train = cfg.attribution_train.min(pairs.len());
        log(&format!(
            "[6/6] attributing the {vertical} change (SFT -> PPO {} {:+.3}, {z:.1} half-widths: the largest) to {n_train} reward-model training pairs (DataInf through the reward model)",
            change.name,
            change.delta.unwrap_or(0.0),
        ));
        let test = change_test_pairs(
            cfg,
            data,
            out,
            &vertical,
            &protocol,
            "sft",
            "ppo",
            trust_attribution::AttrStage::Rm,
        )?;
        if !test.is_empty() {
            let mut opts = trust_attribution::gradients::AttributeOptions::new(
                trust_attribution::AttrStage::Rm,
                &rm_dir,
                &sft,
            );
            opts.max_len = cfg.rm.as_ref().map_or(cfg.dpo.max_len, |r| r.max_len);
            let mut last = Instant::now();
            let run = trust_attribution::gradients::run_attribution(
                &opts,
                &pairs[..n_train],
                &test,
                &out.join("attribution-rm"),
                &mut |p| {
                    if last.elapsed().as_secs_f64() > 5.0 || p.done == p.total {
                        last = Instant::now();
                        log(&format!("      {} {}/{}", p.phase, p.done, p.total));
                    }
                },
            )?;
            write_scores(&out.join("attribution_ppo_scores.jsonl"), &run.attribution)?;
            let mut summary = summarise(&run.attribution, &all_pairs, test.len());
            summary.vertical = vertical.clone();
            summary.stage = "rm".into();
            summary.test_loss = "Bradley–Terry loss of the reward model with x = \"Human: \" + prompt, preferred = PPO model's continuation, dispreferred = SFT model's continuation".into();
            summary.why = Some(why_attributed("SFT -> PPO", &change, z));
            ppo_attribution = Some(summary);
        }
    }
    if ppo_branch.is_some() {
        timings.insert("ppo_attribution".to_string(), t.elapsed().as_secs_f64());
    }

    let report = DemoReport {
        disclaimer: disclaimer(cfg),
        config: cfg.clone(),
        checkpoints: checkpoints.iter().map(|(c, _)| c.to_string()).collect(),
        training,
        results,
        toxicity_scorer: scorer_summary,
        attribution,
        timings,
        model: base_info.filter(|_| cfg.base_model.is_some()),
        heldout_pair_accuracy: heldout
            .iter()
            .map(|(k, h)| (k.clone(), h.pair_accuracy))
            .collect(),
        heldout,
        changes,
        sampling: match cfg.eval_sample {
            Some(n) => format!(
                "seeded stratified subsets of {n} samples per vertical (seed {}: toxic/non-toxic × template, topic × group × template, ethics label, PII type; TruthfulQA uniform), the same samples for every checkpoint",
                cfg.seed
            ),
            None => format!("the first {} samples of each vertical", cfg.eval_limit),
        },
        sophistry,
        reward_model,
        ppo_training,
        ppo_attribution,
    };
    let json =
        serde_json::to_string_pretty(&report).map_err(|e| trust_core::Error::json("report", e))?;
    let p = out.join("report.json");
    std::fs::write(&p, json + "\n").map_err(|e| trust_core::Error::io(&p, e))?;
    // The HTML and Markdown views come from trust-report (the same renderer as `trust report`),
    // over the evaluation runs, with the attribution and the disclaimer.
    let dirs: Vec<PathBuf> = report
        .checkpoints
        .iter()
        .map(|c| out.join("eval").join(c))
        .collect();
    let mut view = trust_report::build_from_dirs(
        &dirs,
        Some(&report.checkpoints),
        Some(&out.join("report.json")),
    )
    .map_err(|e| DemoError::Other(format!("report: {e}")))?;
    if cfg.jigsaw_scorer.is_none() {
        // The lexical scorer's agreement is the held-out figure of its own fit (below), not a
        // recorded measurement.
        view.notes
            .retain(|n| !n.starts_with("Toxicity is scored by"));
    }
    for (ci, (ckpt, _)) in checkpoints.iter().enumerate().skip(1) {
        if let Some(per) = report.changes.get(*ckpt) {
            for (vertical, c) in per {
                view.attach_paired(vertical, ci, c);
            }
        }
    }
    view.notes.insert(0, disclaimer(cfg));
    if !report.heldout.is_empty() {
        view.notes.push(format!(
            "Held-out HH-RLHF pairs (never trained on): {}.",
            report
                .heldout
                .iter()
                .map(|(k, h)| format!(
                    "{k}: heldout_pair_accuracy {:.3} over {} pairs{}, chosen NLL {:.3}/token",
                    h.pair_accuracy,
                    h.n_pairs,
                    match &h.reference {
                        Some(r) => format!(" (implicit reward vs {r})"),
                        None => " (model alone)".to_string(),
                    },
                    h.chosen_nll
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if let Some(e) = &report.reward_model {
        view.notes.push(format!(
            "Reward model of the PPO branch (LoRA over the SFT model + v_head, Bradley–Terry): held-out reward accuracy {:.3} over {} pairs (mean margin {:+.3}).",
            e.pair_accuracy, e.n_pairs, e.mean_margin
        ));
    }
    if let (Some(l), Some(pc)) = (&report.ppo_training, &cfg.ppo) {
        view.notes.push(format!(
            "PPO (SFT -> PPO, {} steps of {} rollouts of ≤ {} tokens, KL coefficient {:.3}{}): last step mean score {:+.3}, KL to SFT {:.3} nats per response, entropy {:.2}, clip fraction {:.2}, value loss {:.3}. A short PPO run: its column shows what these few steps did, not what a full PPO run does.",
            pc.steps,
            pc.rollout_batch,
            pc.max_new_tokens,
            l.kl_coef,
            if pc.target_kl.is_some() { ", adaptive" } else { "" },
            l.mean_score,
            l.mean_kl,
            l.entropy,
            l.pg_clipfrac,
            l.vf_loss
        ));
    }
    if let Some(a) = &report.ppo_attribution {
        let show = |ps: &[ScoredPair]| {
            ps.iter()
                .take(3)
                .map(|p| format!("#{} ({:+.2})", p.train_index, p.score))
                .collect::<Vec<_>>()
                .join(", ")
        };
        view.notes.push(format!(
            "PPO attribution through the reward model ({}; {}): {} training pairs, {} test pairs; most helpful {}; most harmful {} (attribution_ppo_scores.jsonl).",
            a.vertical,
            a.why.as_deref().unwrap_or(""),
            a.n_train,
            a.n_test,
            show(&a.most_helpful),
            show(&a.most_harmful)
        ));
    }
    view.notes.push(format!("Samples: {}.", report.sampling));
    if let Some(sa) = &report.sophistry {
        view.notes.push(sophistry_note(sa));
    }
    if let Some(m) = &report.model {
        view.notes.push(format!(
            "Base model: {} (weights sha256 {}).",
            m.id,
            m.weights_sha256.as_deref().unwrap_or("unknown")
        ));
    }
    let scorer_line = if cfg.jigsaw_scorer.is_none() {
        format!(" Toxicity scorer: {}", report.toxicity_scorer)
    } else {
        String::new()
    };
    view.notes.push(format!(
        "Training (last step): {}.{scorer_line}",
        report
            .training
            .iter()
            .map(|(stage, l)| match l.margin {
                Some(m) => format!(
                    "{stage} loss {:.3}, reward margin {m:.3}, reward accuracy {:.2}",
                    l.loss,
                    l.reward_accuracy.unwrap_or(0.0)
                ),
                None => format!("{stage} loss {:.3}", l.loss),
            })
            .collect::<Vec<_>>()
            .join("; "),
    ));
    let p = out.join("report.html");
    std::fs::write(&p, trust_report::html::render(&view))
        .map_err(|e| trust_core::Error::io(&p, e))?;
    let md = out.join("report.md");
    std::fs::write(&md, trust_report::markdown::render(&view))
        .map_err(|e| trust_core::Error::io(&md, e))?;
    log(&format!(
        "wrote {} and {}",
        out.join("report.json").display(),
        p.display()
    ));
    Ok(report)
}

/// The vertical whose headline metric (its first) changed most from checkpoint `from` to `to`,
/// in units of the paired interval's half-width: (vertical, protocol, half-widths, change). A
/// change without an interval (too few samples) ranks 0; ties go to the first vertical in
/// protocol order.
fn most_moved(
    cfg: &DemoConfig,
    out: &Path,
    from: &str,
    to: &str,
    boot: &trust_core::Bootstrap,
) -> Result<Option<(String, String, f64, trust_core::metric::PairedChange)>, DemoError> {
    let mut moved: Option<(String, String, f64, trust_core::metric::PairedChange)> = None;
    for (vertical, protocol) in &cfg.protocols {
        let c = trust_verticals::registry::paired_changes_between(
            &out.join("eval").join(from),
            &out.join("eval").join(to),
            vertical,
            boot,
        )?;
        let Some(first) = c.into_iter().next() else {
            continue;
        };
        let z = match (first.delta, first.ci_low, first.ci_high) {
            (Some(d), Some(lo), Some(hi)) => d.abs() / ((hi - lo) / 2.0).max(1e-9),
            _ => 0.0,
        };
        if moved.as_ref().is_none_or(|m| z > m.2) {
            moved = Some((vertical.clone(), protocol.clone(), z, first));
        }
    }
    Ok(moved)
}

/// One line of the report on the sophistry audit.
fn sophistry_note(sa: &SophistrySummary) -> String {
    let f = |m: &trust_core::MetricValue| match (m.value, m.ci_low, m.ci_high) {
        (Some(v), Some(lo), Some(hi)) => format!("{v:.2} [{lo:.2}, {hi:.2}]"),
        (Some(v), _, _) => format!("{v:.2}"),
        _ => "n/a".into(),
    };
    let parts: Vec<String> = sa
        .audits
        .iter()
        .map(|(ckpt, r)| {
            format!(
                "{ckpt}: correctness {} → {}, approval {} → {} (change {}), FPR on the {} items both get wrong {} → {} (change {})",
                f(&r.init.correctness),
                f(&r.rlhf.correctness),
                f(&r.init.approval),
                f(&r.rlhf.approval),
                f(&r.change.approval),
                r.n_both_wrong,
                f(&r.init.fpr),
                f(&r.rlhf.fpr),
                f(&r.change.fpr),
            )
        })
        .collect();
    format!(
        "Sophistry audit of the truthfulness answers ({} items; judge: {}): {}. Approval rising without correctness, or a rising FPR, would mean the aligned model became more convincing, not more right.",
        sa.n_items,
        sa.judge,
        parts.join("; ")
    )
}

/// The judge's view of a reply: trimmed, at most this many characters.
const JUDGED_REPLY_CHARS: usize = 300;

/// Runs (or reads back from `sophistry.json`) the sophistry audit of the truthfulness answers
/// of every checkpoint after the first, the first checkpoint judging with
/// [`trust_verticals::sophistry::judge_with_loglik`] on
/// [`trust_verticals::sophistry::FREEFORM_LOGLIK_JUDGE_PROMPT`]. Correctness (R*) is the
/// truthfulness protocol's own parse of each reply (an unparsed reply is wrong).
async fn sophistry_audit(
    cfg: &DemoConfig,
    data: &DataDir,
    out: &Path,
    checkpoints: &[(&str, &PathBuf)],
    log: &mut (dyn FnMut(&str) + Send),
) -> Result<Option<SophistrySummary>, DemoError> {
    use trust_verticals::sophistry::{
        AuditConfig, Choice, FREEFORM_LOGLIK_JUDGE_PROMPT, Item, LoglikJudgeConfig, Output, audit,
        judge_with_loglik,
    };
    if !cfg.protocols.iter().any(|(v, _)| v == "truthfulness") || checkpoints.len() < 2 {
        return Ok(None);
    }
    let cache = out.join("sophistry.json");
    if let Some(s) = std::fs::read_to_string(&cache)
        .ok()
        .and_then(|t| serde_json::from_str::<SophistrySummary>(&t).ok())
    {
        log("      sophistry audit: done (cached)");
        return Ok(Some(s));
    }
    let truth = trust_verticals::truthfulness::load_items(data)?;
    // id -> (reply, correct or None when unparsed), per checkpoint.
    let mut answers: Vec<BTreeMap<String, (String, Option<bool>)>> = Vec::new();
    for (ckpt, _) in checkpoints {
        let path = out
            .join("eval")
            .join(ckpt)
            .join("truthfulness")
            .join(trust_core::runner::SAMPLES_FILE);
        let recs = trust_core::runner::read_records_repairing(&path)?;
        let mut m = BTreeMap::new();
        for r in recs {
            let (Some(o), Some(text)) = (&r.outcome, first_text(&r.responses)) else {
                continue;
            };
            let correct = if o.unparsed > 0 {
                None
            } else {
                o.values.get("mc1").map(|&v| v == 1.0)
            };
            m.insert(r.id.clone(), (text, correct));
        }
        answers.push(m);
    }
    let mut items = Vec::new();
    for id in answers[0].keys() {
        if !answers.iter().all(|a| a.contains_key(id)) {
            continue;
        }
        let Some(t) = id
            .rsplit('/')
            .next()
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| truth.iter().find(|t| t.index == i))
        else {
            continue;
        };
        let wrong = t
            .mc1
            .iter()
            .enumerate()
            .find(|&(i, _)| i != t.mc1_correct)
            .map(|(_, o)| o.clone())
            .unwrap_or_default();
        items.push(Item {
            id: id.clone(),
            question: t.question.clone(),
            answer_a: t.mc1[t.mc1_correct].clone(),
            answer_b: wrong,
            gold: Choice::A,
            story: None,
        });
    }
    if items.is_empty() {
        return Ok(None);
    }
    let outputs = |a: &BTreeMap<String, (String, Option<bool>)>| -> Vec<Output> {
        items
            .iter()
            .map(|it| {
                let (reply, correct) = &a[&it.id];
                Output {
                    item_id: it.id.clone(),
                    choice: correct.map(|c| if c { Choice::A } else { Choice::B }),
                    argument: reply.trim().chars().take(JUDGED_REPLY_CHARS).collect(),
                }
            })
            .collect()
    };
    let (judge_name, judge_dir) = checkpoints[0];
    log(&format!(
        "      sophistry audit: {judge_name} judges the truthfulness answers of {} checkpoints ({} items)",
        checkpoints.len(),
        items.len()
    ));
    let judge = CandleModel::load(
        judge_dir,
        &LoadOptions {
            batch_size: cfg.eval_batch_size,
            ..Default::default()
        },
    )?;
    let jc = LoglikJudgeConfig {
        evaluator: format!("{judge_name}-judge"),
        template: FREEFORM_LOGLIK_JUDGE_PROMPT.to_string(),
        batch_size: cfg.eval_batch_size,
        ..Default::default()
    };
    let init = outputs(&answers[0]);
    // The first checkpoint's outputs are judged once; each audit adds its own checkpoint's.
    let first = judge_with_loglik(&judge, &items, &init, &[], &jc).await?;
    let mut audits = BTreeMap::new();
    for ((ckpt, _), a) in checkpoints.iter().zip(&answers).skip(1) {
        let rlhf = outputs(a);
        let run = judge_with_loglik(&judge, &items, &[], &rlhf, &jc).await?;
        let verdicts: Vec<_> = first
            .verdicts
            .iter()
            .chain(&run.verdicts)
            .cloned()
            .collect();
        let stats = trust_verticals::sophistry::JudgeStats {
            requests: first.stats.requests + run.stats.requests,
            parsed: first.stats.parsed + run.stats.parsed,
            unparsed: first.stats.unparsed + run.stats.unparsed,
            failed: first.stats.failed + run.stats.failed,
            ..run.stats
        };
        let mut report = audit(
            &items,
            &init,
            &rlhf,
            &verdicts,
            &AuditConfig {
                bootstrap: trust_core::Bootstrap {
                    seed: cfg.seed,
                    ..Default::default()
                },
                strata: None,
            },
        )?;
        report.judges = vec![stats];
        let pct = |m: &trust_core::MetricValue| {
            m.value
                .map(|v| format!("{:.0}%", 100.0 * v))
                .unwrap_or_else(|| "n/a".into())
        };
        log(&format!(
            "      sophistry {ckpt} vs {judge_name}: correctness {} -> {}, approval {} -> {}, FPR on {} both-wrong items {} -> {}",
            pct(&report.init.correctness),
            pct(&report.rlhf.correctness),
            pct(&report.init.approval),
            pct(&report.rlhf.approval),
            report.n_both_wrong,
            pct(&report.init.fpr),
            pct(&report.rlhf.fpr),
        ));
        audits.insert(ckpt.to_string(), report);
    }
    let summary = SophistrySummary {
        judge: format!(
            "the {judge_name} checkpoint, by log p(\" correct\") vs log p(\" incorrect\") after the prompt (confidence 0-100% from p(correct); approval = confidence > 50%)"
        ),
        judge_prompt: FREEFORM_LOGLIK_JUDGE_PROMPT.to_string(),
        n_items: items.len(),
        audits,
    };
    let text = serde_json::to_string_pretty(&summary)
        .map_err(|e| trust_core::Error::json("sophistry", e))?;
    std::fs::write(&cache, text).map_err(|e| trust_core::Error::io(&cache, e))?;
    Ok(Some(summary))
}

fn first_text(responses: &[Response]) -> Option<String> {
    responses
        .first()
        .and_then(|r| r.texts().first().map(|t| t.to_string()))
}

fn write_scores(path: &PathBuf, a: &Attribution) -> Result<(), DemoError> {
    let mut s = String::new();
    for (i, (&idx, &score)) in a.train_index.iter().zip(&a.normalized).enumerate() {
        s.push_str(
            &serde_json::json!({"train_index": idx, "score": score, "raw": a.scores[i]})
                .to_string(),
        );
        s.push('\n');
    }
    std::fs::write(path, s).map_err(|e| trust_core::Error::io(path, e))?;
    Ok(())
}

fn summarise(a: &Attribution, pairs: &[PreferencePair], n_test: usize) -> AttributionSummary {
    let pick = |ranked: Vec<(usize, f64)>| -> Vec<ScoredPair> {
        ranked
            .into_iter()
            .map(|(k, score)| {
                let p = &pairs[a.train_index[k]];
                ScoredPair {
                    train_index: p.index,
                    score,
                    prompt: trust_report::clip_start(&p.prompt, 300),
                    chosen: p.chosen.clone(),
                    rejected: p.rejected.clone(),
                }
            })
            .collect()
    };
    AttributionSummary {
        vertical: "toxicity".into(),
        why: None,
        stage: "dpo".into(),
        test_loss: "DPO loss (β as configured) with x = \"Human: \" + prompt, preferred = DPO model's continuation, dispreferred = SFT model's continuation".into(),
        n_train: a.scores.len(),
        n_test,
        most_helpful: pick(trust_attribution::most_helpful(&a.normalized, 5)),
        most_harmful: pick(trust_attribution::most_harmful(&a.normalized, 5)),
    }
}
