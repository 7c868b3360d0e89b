//! `trust scorer-agreement`: how well each toxicity scorer agrees with Perspective on every
//! RealToxicityPrompts prompt and continuation that carries a Perspective score (see
//! [`trust_verticals::scorer_agreement`]). Prints a Markdown table (one row per scorer label),
//! or JSON lines with `--json`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use trust_core::{DataDir, TextScorer};
use trust_verticals::scorer_agreement::{agreement, perspective_texts};

use crate::eval_cmd::make_scorer;

/// Arguments of `trust scorer-agreement`.
#[derive(clap::Args)]
pub struct AgreementArgs {
    /// Scorers to compare (repeat, or comma-separate): `jigsaw`, `onnx:models/hatesonar`,
    /// `lexical`, `mock`, ... Default: every installed one of jigsaw and hatesonar, and lexical.
    #[arg(long, value_delimiter = ',')]
    scorer: Vec<String>,
    /// Data directory (layout of data/; default: $TRUST_DATA_DIR, else the checkout's data/).
    #[arg(long, env = "TRUST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Use only the first N texts.
    #[arg(long)]
    limit: Option<usize>,
    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

fn default_specs() -> Vec<String> {
    let mut specs = Vec::new();
    if crate::scorer_arg::installed_jigsaw().is_some() {
        specs.push("jigsaw".to_string());
    }
    if let Some(d) = crate::scorer_arg::models_dir("hatesonar") {
        if cfg!(feature = "ort") && d.join("hatesonar/config.json").exists() {
            specs.push(format!("onnx:{}", d.join("hatesonar").display()));
        }
    }
    specs.push("lexical".into());
    specs
}

/// Runs `trust scorer-agreement`.
pub fn run(a: AgreementArgs) -> anyhow::Result<()> {
    let data = DataDir::resolve(a.data_dir.as_deref())?;
    let mut texts = perspective_texts(&data)?;
    if let Some(n) = a.limit {
        texts.truncate(n);
    }
    if texts.is_empty() {
        bail!(
            "no texts with a Perspective score in {}",
            data.root().display()
        );
    }
    let truth: Vec<f64> = texts.iter().map(|t| t.toxicity).collect();
    let inputs: Vec<String> = texts.iter().map(|t| t.text.clone()).collect();
    let specs = if a.scorer.is_empty() {
        default_specs()
    } else {
        a.scorer.clone()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("starting the async runtime")?;
    if !a.json {
        println!(
            "{} RealToxicityPrompts texts with a Perspective toxicity score ({} with Perspective >= 0.5)\n",
            texts.len(),
            truth.iter().filter(|&&t| t >= 0.5).count()
        );
        println!("| scorer | label | Pearson | Spearman | AUROC | accuracy@0.5 | MAE | texts/s |");
        println!("|---|---|---|---|---|---|---|---|");
    }
    for spec in &specs {
        let scorer: Box<dyn TextScorer> =
            make_scorer(spec, &data)?.with_context(|| format!("--scorer {spec}: no scorer"))?;
        let info = scorer.info();
        let t0 = std::time::Instant::now();
        let mut values: Vec<Vec<f64>> = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(512) {
            for (i, r) in rt.block_on(scorer.score(chunk)).into_iter().enumerate() {
                let r = r.with_context(|| format!("{spec}: scoring {:?}", chunk[i]))?;
                values.push(r.values);
            }
        }
        let rate = inputs.len() as f64 / t0.elapsed().as_secs_f64();
        for (li, label) in info.labels.iter().enumerate() {
            let s = values
                .iter()
                .map(|v| v.get(li).copied())
                .collect::<Option<Vec<f64>>>()
                .with_context(|| format!("{spec}: a score has no value for label `{label}`"))?;
            let g = agreement(&s, &truth);
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"scorer": spec, "scorer_id": info.id, "label": label, "agreement": g, "texts_per_s": rate})
                );
            } else {
                println!(
                    "| {spec} | {label} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {rate:.0} |",
                    g.pearson, g.spearman, g.auroc, g.accuracy, g.mae
                );
            }
        }
    }
    if !a.json && specs.iter().any(|s| s == "lexical") {
        println!(
            "\nlexical is fitted on 9/10 of these very texts (its held-out Pearson r is about 0.70, see docs/toxicity-scorer.md): its row is in-sample, not a fair comparison."
        );
    }
    Ok(())
}
