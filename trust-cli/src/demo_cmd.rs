//! `trust demo`: the main job (SFT → DPO → held-out accuracy → evaluate → paired changes →
//! attribute → report), on the tiny model built here (default for now) or on a pretrained model
//! (`--model smollm2` or a path), wiring over `trust::pipeline`.

use std::path::PathBuf;

use trust::pipeline::{DemoConfig, run};
use trust_core::DataDir;

/// Arguments of `trust demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Data directory (layout of data/; default: $TRUST_DATA_DIR, else the checkout's data/).
    #[arg(long, env = "TRUST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Output directory; rerunning with the same settings resumes where it stopped.
    #[arg(long, default_value = "trust-demo")]
    out: PathBuf,
    /// The smallest configuration that runs every stage (seconds; for tests; the tiny model).
    #[arg(long)]
    minimal: bool,
    /// A pretrained base model instead of the tiny one built here: `smollm2` (SmolLM2-135M-
    /// Instruct from scripts/fetch-models.sh, fetched if missing) or a GGUF file / model
    /// directory. Uses the jigsaw scorer (fetched if missing) unless --scorer says otherwise.
    #[arg(long, value_name = "smollm2|PATH", conflicts_with = "minimal")]
    model: Option<String>,
    /// Seeded stratified subset of N samples per vertical (pretrained default 48).
    #[arg(long, value_name = "N")]
    sample: Option<usize>,
    /// HH-RLHF pairs held out of training (default 256; pretrained 200).
    #[arg(long, value_name = "N")]
    heldout: Option<usize>,
    /// Pretraining steps (default 400).
    #[arg(long)]
    pretrain_steps: Option<usize>,
    /// SFT steps (default 120).
    #[arg(long)]
    sft_steps: Option<usize>,
    /// DPO steps (default 120).
    #[arg(long)]
    dpo_steps: Option<usize>,
    /// Samples per vertical in evaluation (default 24).
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Hidden size of the model (default 128).
    #[arg(long)]
    hidden_size: Option<usize>,
    /// Number of layers (default 2).
    #[arg(long)]
    layers: Option<usize>,
    /// Run seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Toxicity scorer: `lexical` (the n-gram regression fitted on the data; the tiny model's
    /// default) or `jigsaw` / `jigsaw:DIR` (the Jigsaw BiLSTM; scripts/fetch-models.sh jigsaw;
    /// the default with --model).
    #[arg(long)]
    scorer: Option<String>,
}

/// Runs `scripts/fetch-models.sh <what>` of the checkout this binary was built from.
fn fetch(what: &str) -> anyhow::Result<()> {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-models.sh");
    anyhow::ensure!(
        script.is_file(),
        "{what} is not installed and {} is not there to fetch it; set TRUST_MODELS_DIR or pass a path",
        script.display()
    );
    eprintln!("fetching {what} with {}", script.display());
    let status = std::process::Command::new("bash")
        .arg(&script)
        .arg(what)
        .status()
        .map_err(|e| anyhow::anyhow!("{}: {e}", script.display()))?;
    anyhow::ensure!(
        status.success(),
        "{} {what} failed ({status})",
        script.display()
    );
    Ok(())
}

fn smollm2() -> anyhow::Result<PathBuf> {
    let find = || {
        crate::scorer_arg::models_dir("smollm2-135m-instruct")
            .map(|d| d.join("smollm2-135m-instruct"))
            .filter(|d| d.is_dir())
    };
    if let Some(d) = find() {
        return Ok(d);
    }
    fetch("smollm2")?;
    find().ok_or_else(|| {
        anyhow::anyhow!("smollm2 was fetched but models/smollm2-135m-instruct is not found")
    })
}

pub fn run_cmd(a: DemoArgs) -> anyhow::Result<()> {
    let data = DataDir::resolve(a.data_dir.as_deref())?;
    let mut cfg = match (&a.model, a.minimal) {
        (Some(m), _) => {
            let path = if m == "smollm2" {
                smollm2()?
            } else {
                PathBuf::from(m)
            };
            DemoConfig::pretrained(&path)?
        }
        (None, true) => DemoConfig::minimal(),
        (None, false) => DemoConfig::standard(),
    };
    let scorer = a.scorer.clone().unwrap_or_else(|| {
        if a.model.is_some() {
            "jigsaw"
        } else {
            "lexical"
        }
        .to_string()
    });
    match scorer.as_str() {
        "lexical" => {}
        "jigsaw" => {
            if crate::scorer_arg::installed_jigsaw().is_none() && a.model.is_some() {
                fetch("jigsaw")?;
            }
            cfg.jigsaw_scorer = Some(crate::scorer_arg::installed_jigsaw().ok_or_else(|| {
                anyhow::anyhow!(
                    "the jigsaw scorer is not installed: run scripts/fetch-models.sh jigsaw"
                )
            })?)
        }
        other => match other.strip_prefix("jigsaw:") {
            Some(dir) => cfg.jigsaw_scorer = Some(dir.into()),
            None => anyhow::bail!("--scorer: `{other}` is not lexical, jigsaw or jigsaw:DIR"),
        },
    }
    if let Some(n) = a.pretrain_steps {
        cfg.pretrain.steps = n;
    }
    if let Some(n) = a.sft_steps {
        cfg.sft.steps = n;
    }
    if let Some(n) = a.dpo_steps {
        cfg.dpo.steps = n;
    }
    if let Some(n) = a.eval_limit {
        cfg.eval_limit = n;
    }
    if let Some(n) = a.sample {
        cfg.eval_sample = Some(n);
        cfg.eval_limit = cfg.eval_limit.max(n);
    }
    if let Some(n) = a.heldout {
        cfg.heldout_pairs = n;
    }
    if let Some(n) = a.hidden_size {
        cfg.shape.hidden_size = n;
        cfg.shape.intermediate_size = 4 * n;
    }
    if let Some(n) = a.layers {
        cfg.shape.num_layers = n;
    }
    cfg.seed = a.seed;
    for t in [&mut cfg.pretrain, &mut cfg.sft, &mut cfg.dpo] {
        t.seed = a.seed;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = std::time::Instant::now();
    let report = rt.block_on(run(&cfg, &data, &a.out, &mut |line: &str| {
        eprintln!("{line}")
    }))?;
    eprintln!("demo finished in {:.0}s", started.elapsed().as_secs_f64());
    eprintln!("{}", report.disclaimer);
    println!("{}", a.out.join("report.html").display());
    Ok(())
}
