//! `trust attribute`: DataInf attribution of a vertical's change to the training pairs
//! (PROTOCOLS A.8; see docs/attribution.md).
//!
//! Writes one `{"train_index", "score"}` line per scored training pair to `--out` (and the score
//! vector to `<out>.npy`, as the paper's `np.save`), the most
//! helpful / harmful pairs with their text to `<out>.top.json` (and stdout), and keeps the
//! per-example gradients in a resumable store (`--store`, default `<out>.store/`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::json;
use trust_attribution::gradients::{
    AttrStage, AttributeOptions, LoraSelection, Progress, run_attribution,
};
use trust_attribution::test_pairs::{TestPairOptions, load_test_pairs, stage_test_pair};
use trust_attribution::{DataInfConfig, most_harmful, most_helpful};
use trust_core::DataDir;

/// Arguments of `trust attribute`.
#[derive(clap::Args)]
pub struct AttributeArgs {
    /// The aligned model directory: with `adapter/` (LoRA trained over --base), else a full
    /// fine-tune of --base, converted to LoRA by a truncated SVD of W_ft − W_base.
    #[arg(long)]
    model: PathBuf,
    /// The model the aligned one started from (the adapters' base; the SVD's W_base).
    #[arg(long)]
    base: PathBuf,
    /// Loss attributed: `sft` (cross-entropy), `dpo` (reference = --ref), `rm` (reward model,
    /// Bradley–Terry through `v_head`; the paper's PPO attribution).
    #[arg(long, value_parser = ["sft", "dpo", "rm"])]
    stage: String,
    /// Training pairs: HH-RLHF `.jsonl`/`.jsonl.gz` or `{"prompt","chosen","rejected"}` lines.
    #[arg(long)]
    train: PathBuf,
    /// Vertical whose generations make the test loss.
    #[arg(long, value_parser = ["toxicity", "stereotype", "machine_ethics", "truthfulness", "privacy"])]
    vertical: String,
    /// The aligned model's generations: `samples.jsonl` of `trust eval` / `trust demo`, or plain
    /// `{"prompt","continuation"}` lines.
    #[arg(long)]
    generations: PathBuf,
    /// The earlier model's generations (same format); needed for `dpo` and `rm`.
    #[arg(long)]
    baseline_generations: Option<PathBuf>,
    /// Output: one `{"train_index", "score"}` line per training pair.
    #[arg(long)]
    out: PathBuf,
    /// DPO reference model (default: --base).
    #[arg(long = "ref")]
    reference: Option<PathBuf>,
    /// Protocol the generations were made with (to rebuild the prompts).
    #[arg(long, default_value = "paper")]
    protocol: String,
    /// Data directory (layout of data/; default: $TRUST_DATA_DIR, else the checkout's data/), for samples.jsonl input.
    #[arg(long, env = "TRUST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// DPO β of the attribution loss (the paper: 1.0).
    #[arg(long, default_value_t = 1.0)]
    beta: f64,
    /// Rank of the SVD conversion of a full fine-tune (the paper: 4).
    #[arg(long, default_value_t = 4)]
    lora_rank: usize,
    /// Attributed module suffixes, comma separated (default: all adapter modules / every block
    /// linear layer).
    #[arg(long, value_delimiter = ',')]
    lora_targets: Option<Vec<String>>,
    /// Attributed blocks, comma separated, or `last:K` for the last K blocks (the paper: last 4).
    #[arg(long)]
    lora_layers: Option<String>,
    /// Use only the first N training pairs.
    #[arg(long)]
    limit: Option<usize>,
    /// Gradient store directory (default: `<out>.store`). Rerunning resumes extraction.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Most helpful / harmful pairs listed.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Write sign-normalised scores in [−1, 1] (default).
    #[arg(long, conflicts_with = "raw")]
    normalize: bool,
    /// Write raw DataInf influence scores.
    #[arg(long)]
    raw: bool,
    /// Longest sequence in tokens (the paper: 1024).
    #[arg(long, default_value_t = 1024)]
    max_len: usize,
    /// SFT: score only the response tokens (the paper scores the whole text).
    #[arg(long)]
    mask_prompt: bool,
    /// DataInf damping constant c in λ_l = c · mean(g²) (the paper: 0.1).
    #[arg(long, default_value_t = 0.1)]
    damping: f64,
    /// Keep every K-th test pair (the paper: 3).
    #[arg(long, default_value_t = 1)]
    test_stride: usize,
    /// Keep at most N test pairs (the paper's code, by a bug, keeps as many as generation files).
    #[arg(long)]
    max_test: Option<usize>,
    /// RM: attach a seeded random `v_head` when the model has none (testing only).
    #[arg(long)]
    init_v_head: bool,
    /// RM: attribute through `v_head` too (default: frozen head, LoRA tensors only).
    #[arg(long)]
    train_v_head: bool,
}

fn parse_layers(s: &str, model: &Path) -> anyhow::Result<Vec<usize>> {
    if let Some(k) = s.strip_prefix("last:") {
        let k: usize = k
            .parse()
            .with_context(|| format!("--lora-layers `{s}`: K must be a number"))?;
        let cfg = trust_backends::candle::ModelConfig::from_dir(model)?;
        return Ok(LoraSelection::last_blocks(cfg.num_hidden_layers, k));
    }
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<usize>()
                .with_context(|| format!("--lora-layers: `{x}` is not a block index"))
        })
        .collect()
}

pub fn run(a: AttributeArgs) -> anyhow::Result<()> {
    let stage: AttrStage = a.stage.parse()?;
    if stage != AttrStage::Sft && a.baseline_generations.is_none() {
        bail!(
            "--stage {} compares new and old generations: pass --baseline-generations",
            a.stage
        );
    }
    let data = DataDir::resolve(a.data_dir.as_deref()).ok();
    let opts_tp = TestPairOptions {
        stride: a.test_stride,
        max_pairs: a.max_test,
        skip_empty: true,
    };
    let raw_test = load_test_pairs(
        &a.vertical,
        &a.protocol,
        data.as_ref(),
        &a.generations,
        a.baseline_generations.as_deref(),
        &opts_tp,
    )?;
    let test: Vec<_> = raw_test.iter().map(|r| stage_test_pair(stage, r)).collect();

    let hh = trust_align::hh::load(&a.train)?;
    if !hh.skipped.is_empty() {
        eprintln!(
            "{}: skipped {} rows (first: line {}: {})",
            a.train.display(),
            hh.skipped.len(),
            hh.skipped[0].0,
            hh.skipped[0].1
        );
    }
    let mut pairs = hh.pairs;
    if let Some(n) = a.limit {
        pairs.truncate(n);
    }
    if pairs.is_empty() {
        bail!("{}: no training pairs", a.train.display());
    }
    let mut opts = AttributeOptions::new(stage, &a.model, &a.base);
    opts.reference_dir = a.reference.clone();
    opts.beta = a.beta;
    opts.max_len = a.max_len;
    opts.mask_prompt = a.mask_prompt;
    opts.init_v_head = a.init_v_head;
    opts.train_v_head = a.train_v_head;
    opts.datainf = DataInfConfig {
        damping_scale: a.damping,
        ..DataInfConfig::default()
    };
    opts.lora = LoraSelection {
        rank: a.lora_rank,
        targets: a.lora_targets.clone(),
        layers: a
            .lora_layers
            .as_deref()
            .map(|s| parse_layers(s, &a.base))
            .transpose()?,
    };
    let store = a.store.clone().unwrap_or_else(|| {
        let mut s = a.out.clone().into_os_string();
        s.push(".store");
        PathBuf::from(s)
    });
    eprintln!(
        "attributing {} test pairs ({} / {}) to {} training pairs, stage {}, store {}",
        test.len(),
        a.vertical,
        a.protocol,
        pairs.len(),
        stage.as_str(),
        store.display()
    );

    let started = Instant::now();
    let mut phase_start = Instant::now();
    let mut last_print = Instant::now();
    let mut current = "";
    let run = run_attribution(&opts, &pairs, &test, &store, &mut |p: &Progress| {
        if p.phase != current {
            current = p.phase;
            phase_start = Instant::now();
            if p.resumed > 0 {
                eprintln!(
                    "{}: resuming after {} examples found in the store",
                    p.phase, p.resumed
                );
            }
        }
        let fresh = p.done - p.resumed;
        if p.phase != "score"
            && (last_print.elapsed().as_secs_f64() > 2.0 || p.done == p.total)
            && fresh > 0
        {
            last_print = Instant::now();
            let rate = fresh as f64 / phase_start.elapsed().as_secs_f64().max(1e-9);
            let eta = (p.total - p.done) as f64 / rate.max(1e-9);
            eprintln!(
                "{} gradients {}/{} ({rate:.1} ex/s, eta {eta:.0}s)",
                p.phase, p.done, p.total
            );
        }
    })
    .with_context(|| format!("attributing with {}", a.model.display()))?;
    let at = &run.attribution;
    eprintln!(
        "scored {} training pairs against {} test pairs in {:.1}s ({} skipped; {} tensors attributed{})",
        at.scores.len(),
        at.n_test,
        started.elapsed().as_secs_f64(),
        run.skipped_train,
        run.layers.len(),
        if run.zero_layers.is_empty() {
            String::new()
        } else {
            format!(", {} with zero gradients", run.zero_layers.len())
        }
    );

    let use_raw = a.raw && !a.normalize;
    let written = if use_raw { &at.scores } else { &at.normalized };
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    }
    let mut lines = String::new();
    for (&idx, &s) in at.train_index.iter().zip(written) {
        lines += &format!("{}\n", json!({"train_index": idx, "score": s}));
    }
    trust_core::fsutil::write_atomic(&a.out, lines).with_context(|| a.out.display().to_string())?;

    // The score vector as the paper saves it (`np.save`, one value per scored pair, in order).
    let mut npy = a.out.clone().into_os_string();
    npy.push(".npy");
    trust_attribution::write_npy(PathBuf::from(&npy), written)?;

    let by_index: std::collections::HashMap<usize, &trust_align::hh::PreferencePair> =
        pairs.iter().map(|p| (p.index, p)).collect();
    let listed = |ranked: Vec<(usize, f64)>| -> Vec<serde_json::Value> {
        ranked
            .into_iter()
            .map(|(k, score)| {
                let idx = at.train_index[k];
                let p = by_index[&idx];
                json!({
                    "train_index": idx,
                    "score": score,
                    "raw": at.scores[k],
                    "prompt": trust_report::clip_start(&p.prompt, 400),
                    "chosen": p.chosen,
                    "rejected": p.rejected,
                })
            })
            .collect()
    };
    let top = json!({
        "stage": stage.as_str(),
        "vertical": a.vertical,
        "protocol": a.protocol,
        "score": if use_raw { "raw" } else { "normalized" },
        "sign": "influence-function convention: score < 0 = helpful (up-weighting lowers the test loss, i.e. moves the model towards its new generations), > 0 = harmful",
        "n_train": at.scores.len(),
        "n_test": at.n_test,
        "layers": run.layers,
        "lambdas": at.lambdas,
        "zero_layers": run.zero_layers,
        "adapters": run.adapters,
        "most_helpful": listed(most_helpful(written, a.top_k)),
        "most_harmful": listed(most_harmful(written, a.top_k)),
    });
    let mut top_path = a.out.clone().into_os_string();
    top_path.push(".top.json");
    let top_path = PathBuf::from(top_path);
    trust_core::fsutil::write_atomic(&top_path, serde_json::to_string_pretty(&top)? + "\n")
        .with_context(|| top_path.display().to_string())?;

    let show = |title: &str, items: &serde_json::Value| {
        println!("{title}:");
        for it in items.as_array().into_iter().flatten() {
            println!(
                "  #{:<6} score {:+.4}  prompt {:?}\n          chosen {:?}\n          rejected {:?}",
                it["train_index"],
                it["score"].as_f64().unwrap_or(f64::NAN),
                trust_report::clip_start(it["prompt"].as_str().unwrap_or(""), 120),
                trust_report::clip_start(it["chosen"].as_str().unwrap_or(""), 160),
                trust_report::clip_start(it["rejected"].as_str().unwrap_or(""), 160),
            );
        }
    };
    show(
        &format!("most helpful (top {})", a.top_k),
        &top["most_helpful"],
    );
    show(
        &format!("most harmful (top {})", a.top_k),
        &top["most_harmful"],
    );
    eprintln!("wrote {} and {}", a.out.display(), top_path.display());
    Ok(())
}
