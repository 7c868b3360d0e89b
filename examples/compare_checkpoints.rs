//! Compare two checkpoints on one vertical: run it on both, print each metric's value with its
//! 95% CI and the change, and write a self-contained HTML report (`trust report`'s renderer).
//!
//! ```text
//! cargo run --release -p trust-examples --example compare_checkpoints -- \
//!     ../shared/fixtures/hf/tiny-gpt-neox ../shared/fixtures/hf/tiny-llama \
//!     [--vertical machine_ethics] [--protocol paper] [--limit 20] [--out compare-out]
//! ```
//! Either model may be `mock` (the deterministic test model). Data come from $TRUST_DATA_DIR, else the checkout's data/.
//! Writes `OUT/<a|b>/<vertical>/...` (runner layout) and `OUT/report.{html,json,md}`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use trust_core::testing::MockModel;
use trust_core::{DataDir, LanguageModel, Runner};
use trust_verticals::registry::{self, BuildOptions};

fn load(spec: &str) -> anyhow::Result<Box<dyn LanguageModel>> {
    if spec == "mock" {
        return Ok(Box::new(MockModel::new()));
    }
    let opts = trust_backends::candle::LoadOptions::default();
    Ok(Box::new(
        trust_backends::candle::CandleModel::load(spec, &opts)
            .with_context(|| format!("loading {spec}"))?,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut models = Vec::new();
    let (mut vertical, mut protocol, mut limit, mut out) = (
        "machine_ethics".to_string(),
        "paper".to_string(),
        20usize,
        PathBuf::from("compare-out"),
    );
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--vertical" => vertical = args.next().context("--vertical NAME")?,
            "--protocol" => protocol = args.next().context("--protocol NAME")?,
            "--limit" => limit = args.next().context("--limit N")?.parse()?,
            "--out" => out = args.next().context("--out DIR")?.into(),
            s if s.starts_with("--") => bail!("unknown option {s}"),
            s => models.push(s.to_string()),
        }
    }
    if models.len() != 2 {
        bail!(
            "usage: compare_checkpoints MODEL_A MODEL_B [--vertical V] [--protocol P] [--limit N] [--out DIR]"
        );
    }
    let data = DataDir::resolve(None)?;
    let v = registry::build(&vertical, &protocol, &BuildOptions::default())?;
    if v.requirements().scorer {
        bail!("{vertical} needs a text scorer; this example compares scorer-free verticals");
    }
    let mut dirs = Vec::new();
    let mut reports = Vec::new();
    for (label, spec) in ["a", "b"].iter().zip(&models) {
        let dir = out.join(label);
        let runner = Runner::builder()
            .seed(0)
            .limit(Some(limit))
            .out_dir(&dir)
            .resume(true)
            .build();
        eprintln!("running {vertical}/{protocol} on {spec}");
        reports.push(v.run(&runner, load(spec)?.as_ref(), None, &data).await?);
        dirs.push(dir);
    }
    println!("{:<32} {:>24} {:>24} {:>10}", "metric", "A", "B", "B - A");
    let show = |m: Option<&trust_core::MetricValue>| match m {
        Some(m) => match (m.value, m.ci_low, m.ci_high) {
            (Some(x), Some(l), Some(h)) => format!("{x:.3} [{l:.3},{h:.3}]"),
            (Some(x), _, _) => format!("{x:.3}"),
            _ => "n/a".into(),
        },
        None => "-".into(),
    };
    for m in &reports[0].metrics {
        let b = reports[1].metric(&m.name);
        let delta = match (m.value, b.and_then(|b| b.value)) {
            (Some(x), Some(y)) => format!("{:+.3}", y - x),
            _ => "n/a".into(),
        };
        println!(
            "{:<32} {:>24} {:>24} {:>10}",
            m.name,
            show(Some(m)),
            show(b),
            delta
        );
    }
    let labels = vec!["a".to_string(), "b".to_string()];
    let report = trust_report::build_from_dirs(&dirs, Some(&labels), None)?;
    std::fs::write(out.join("report.html"), trust_report::html::render(&report))?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(
        out.join("report.md"),
        trust_report::markdown::render(&report),
    )?;
    eprintln!("wrote {}", out.join("report.html").display());
    Ok(())
}
