//! `trust demo`: the main job (SFT → DPO, and SFT → reward model → PPO → held-out accuracy →
//! evaluate → paired changes → sophistry audit → attribute → report) on SmolLM2-135M-Instruct (the default; `--model` for
//! another GGUF file or model directory) or on the toy model built here (`--tiny`, `--minimal`),
//! wiring over `trust::pipeline`.

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
    /// The toy pipeline instead of a pretrained model: a tiny GPT-NeoX built from random
    /// weights here, pretrained for minutes, with the lexical toxicity scorer. It shows the
    /// stages run; its numbers mean nothing (for tests and CI).
    #[arg(long, conflicts_with = "model")]
    tiny: bool,
    /// The smallest configuration that runs every stage (seconds; for tests; implies --tiny).
    #[arg(long, conflicts_with = "model")]
    minimal: bool,
    /// The pretrained base model: `smollm2` (the default: SmolLM2-135M-Instruct from
    /// scripts/fetch-models.sh, fetched if missing) or a GGUF file / model directory. Uses the
    /// jigsaw scorer (fetched if missing) unless --scorer says otherwise.
    #[arg(long, value_name = "smollm2|PATH")]
    model: Option<String>,
    /// Seeded stratified subset of N samples per vertical (pretrained default 48).
    #[arg(long, value_name = "N")]
    sample: Option<usize>,
    /// HH-RLHF pairs held out of training (default 256; pretrained 200).
    #[arg(long, value_name = "N")]
    heldout: Option<usize>,
    /// DPO training pairs attributed (pretrained default 64).
    #[arg(long, value_name = "N")]
    attribution_pairs: Option<usize>,
    /// Attribution test pairs at most (default 48).
    #[arg(long, value_name = "N")]
    attribution_test: Option<usize>,
    /// Tiny model: pretraining steps (default 400).
    #[arg(long)]
    pretrain_steps: Option<usize>,
    /// SFT steps (default 120).
    #[arg(long)]
    sft_steps: Option<usize>,
    /// DPO steps (default 120).
    #[arg(long)]
    dpo_steps: Option<usize>,
    /// Reward-model steps of the PPO branch (tiny default 60; pretrained 40).
    #[arg(long)]
    rm_steps: Option<usize>,
    /// PPO steps (tiny default 12; pretrained 8).
    #[arg(long)]
    ppo_steps: Option<usize>,
    /// Leave out the PPO branch (reward model, PPO, its evaluation and attribution).
    #[arg(long, conflicts_with_all = ["rm_steps", "ppo_steps"])]
    no_ppo: bool,
    /// Samples per vertical in evaluation (tiny default 24; pretrained 48).
    #[arg(long)]
    eval_limit: Option<usize>,
    /// Tiny model: hidden size (default 128).
    #[arg(long)]
    hidden_size: Option<usize>,
    /// Tiny model: number of layers (default 2).
    #[arg(long)]
    layers: Option<usize>,
    /// Run seed (default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Start from the settings in this JSON file (the output of --print-config, or the
    /// `config` object of a demo's report.json) instead of the defaults; the other flags
    /// then apply on top.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the resolved settings as JSON (the format --config reads) and exit.
    #[arg(long)]
    print_config: bool,
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
    let from_file = a
        .config
        .as_ref()
        .map(|path| -> anyhow::Result<DemoConfig> {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!("{}:{}:{}: {e}", path.display(), e.line(), e.column())
            })?;
            // A whole report.json holds the settings under `config`.
            let v = match v.get("config") {
                Some(c) if v.get("checkpoints").is_some() => c.clone(),
                _ => v,
            };
            serde_json::from_value(v)
                .map_err(|e| anyhow::anyhow!("{}: not demo settings: {e}", path.display()))
        })
        .transpose()?;
    let mut cfg = match from_file {
        Some(c) => {
            if let Some(m) = &a.model {
                anyhow::bail!("--model {m}: give the model in the --config file (base_model)");
            }
            c
        }
        None if a.minimal => DemoConfig::minimal(),
        None if a.tiny => DemoConfig::standard(),
        None => {
            let m = a.model.as_deref().unwrap_or("smollm2");
            let path = if m == "smollm2" {
                smollm2()?
            } else {
                PathBuf::from(m)
            };
            DemoConfig::pretrained(&path)?
        }
    };
    let pretrained = cfg.base_model.is_some();
    if pretrained {
        for (flag, given) in [
            ("--pretrain-steps", a.pretrain_steps.is_some()),
            ("--hidden-size", a.hidden_size.is_some()),
            ("--layers", a.layers.is_some()),
        ] {
            anyhow::ensure!(
                !given,
                "{flag} shapes the tiny model; add --tiny (or drop {flag})"
            );
        }
    }
    let scorer = a.scorer.clone().unwrap_or_else(|| {
        if a.config.is_some() && a.model.is_none() {
            // The file's own choice.
            return match &cfg.jigsaw_scorer {
                Some(d) => format!("jigsaw:{}", d.display()),
                None => "lexical".to_string(),
            };
        }
        if pretrained { "jigsaw" } else { "lexical" }.to_string()
    });
    match scorer.as_str() {
        "lexical" => cfg.jigsaw_scorer = None,
        "jigsaw" => {
            if crate::scorer_arg::installed_jigsaw().is_none() && pretrained {
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
    if a.no_ppo {
        cfg.rm = None;
        cfg.ppo = None;
    }
    if let Some(n) = a.rm_steps {
        cfg.rm
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("--rm-steps: this configuration has no PPO branch"))?
            .steps = n;
    }
    if let Some(n) = a.ppo_steps {
        cfg.ppo
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("--ppo-steps: this configuration has no PPO branch"))?
            .steps = n;
    }
    if let Some(n) = a.attribution_pairs {
        cfg.attribution_train = n;
    }
    if let Some(n) = a.attribution_test {
        cfg.attribution_test = n;
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
    if let Some(seed) = a.seed.or(a.config.is_none().then_some(0)) {
        cfg.seed = seed;
        for t in [&mut cfg.pretrain, &mut cfg.sft, &mut cfg.dpo] {
            t.seed = seed;
        }
        if let Some(rm) = &mut cfg.rm {
            rm.seed = seed;
        }
        if let Some(ppo) = &mut cfg.ppo {
            ppo.seed = seed;
        }
    }
    if a.print_config {
        println!("{}", serde_json::to_string_pretty(&cfg)?);
        return Ok(());
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
