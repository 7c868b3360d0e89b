//! `trust demo`: the main job (build → pretrain → SFT → DPO → evaluate → attribute → report).

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
    /// The smallest configuration that runs every stage (seconds; for tests).
    #[arg(long)]
    minimal: bool,
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
    /// Toxicity scorer: `lexical` (default: the n-gram regression fitted on the data) or
    /// `jigsaw` / `jigsaw:DIR` (the Jigsaw BiLSTM; scripts/fetch-models.sh jigsaw).
    #[arg(long, default_value = "lexical")]
    scorer: String,
}

pub fn run_cmd(a: DemoArgs) -> anyhow::Result<()> {
    let data = DataDir::resolve(a.data_dir.as_deref())?;
    let mut cfg = if a.minimal {
        DemoConfig::minimal()
    } else {
        DemoConfig::standard()
    };
    match a.scorer.as_str() {
        "lexical" => {}
        "jigsaw" => {
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
