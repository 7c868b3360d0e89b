//! `trust sophistry`: the sophistry audit (Wen et al., PROTOCOLS.md Part C) on saved outputs.
//!
//! Inputs: items, the init and rlhf outputs, and verdicts (CSV or JSONL; see docs/sophistry.md),
//! and/or a local judge model (`--judge-model DIR`, candle builds) that produces verdicts. Output:
//! the JSON report on stdout, or in `--out`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use trust_core::Bootstrap;
use trust_verticals::sophistry::{
    AuditConfig, Strata, Verdict, audit, load_items, load_outputs, load_verdicts,
};

/// Arguments of `trust sophistry`.
#[derive(clap::Args)]
pub struct SophistryArgs {
    /// Items: id, question, answer_a, answer_b, gold (A/B), optional story.
    #[arg(long)]
    items: PathBuf,
    /// Outputs of the model before RLHF: item_id, choice (A/B/unparsed), optional argument — or response.
    #[arg(long)]
    init: PathBuf,
    /// Outputs of the model after RLHF (same format).
    #[arg(long)]
    rlhf: PathBuf,
    /// Verdict files (item_id, model, evaluator, confidence); repeatable.
    #[arg(long)]
    verdicts: Vec<PathBuf>,
    /// A local judge model directory (config.json, tokenizer.json, *.safetensors): its greedy
    /// replies are parsed into confidence levels (evaluator `judge`).
    #[cfg(feature = "candle")]
    #[arg(long)]
    judge_model: Option<PathBuf>,
    /// Also judge by log p(" correct") vs log p(" incorrect") (evaluator `judge-loglik`).
    #[cfg(feature = "candle")]
    #[arg(long, requires = "judge_model")]
    judge_loglik: bool,
    /// Show the item's story to the judge.
    #[cfg(feature = "candle")]
    #[arg(long, requires = "judge_model")]
    judge_story: bool,
    /// New tokens of the judge's reply.
    #[cfg(feature = "candle")]
    #[arg(long, default_value_t = 16)]
    judge_max_new_tokens: usize,
    /// Population stratum sizes of a stratified sample: `same=N,differ=M` or
    /// `both_correct=N,both_wrong=M,differ=K`.
    #[arg(long)]
    strata: Option<String>,
    /// Bootstrap resamples for the confidence intervals.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Bootstrap seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the report here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Parses `--strata`.
pub fn parse_strata(s: &str) -> anyhow::Result<Strata> {
    let mut same = None;
    let mut both_correct = None;
    let mut both_wrong = None;
    let mut differ = None;
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("--strata: expected key=value, got {part:?}"))?;
        let v: usize = v
            .trim()
            .parse()
            .with_context(|| format!("--strata: {k}: not a count: {v:?}"))?;
        let slot = match k.trim() {
            "same" => &mut same,
            "both_correct" => &mut both_correct,
            "both_wrong" => &mut both_wrong,
            "differ" => &mut differ,
            other => bail!(
                "--strata: unknown stratum {other:?} (same, both_correct, both_wrong, differ)"
            ),
        };
        *slot = Some(v);
    }
    match (same, both_correct, both_wrong, differ) {
        (Some(same), None, None, Some(differ)) => Ok(Strata::TwoWay { same, differ }),
        (None, Some(both_correct), Some(both_wrong), Some(differ)) => Ok(Strata::ThreeWay {
            both_correct,
            both_wrong,
            differ,
        }),
        _ => bail!(
            "--strata: give same=N,differ=M or both_correct=N,both_wrong=M,differ=K, got {s:?}"
        ),
    }
}

pub fn run(a: SophistryArgs) -> anyhow::Result<()> {
    let strata = a.strata.as_deref().map(parse_strata).transpose()?;
    let items = load_items(&a.items)?;
    let init = load_outputs(&a.init)?;
    let rlhf = load_outputs(&a.rlhf)?;
    let mut verdicts: Vec<Verdict> = Vec::new();
    for path in &a.verdicts {
        verdicts.extend(load_verdicts(path)?);
    }
    #[allow(unused_mut)]
    let mut judges = Vec::new();
    #[cfg(feature = "candle")]
    if let Some(dir) = &a.judge_model {
        use trust_backends::candle::{CandleModel, LoadOptions};
        use trust_core::DecodingConfig;
        use trust_verticals::sophistry::{
            JudgeConfig, LoglikJudgeConfig, judge_with_loglik, judge_with_model,
        };
        let model = CandleModel::load(dir, &LoadOptions::default())
            .with_context(|| format!("loading judge model {}", dir.display()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let config = JudgeConfig {
            include_story: a.judge_story,
            decoding: DecodingConfig::greedy(a.judge_max_new_tokens),
            ..Default::default()
        };
        let run = rt.block_on(judge_with_model(&model, &items, &init, &rlhf, &config))?;
        verdicts.extend(run.verdicts);
        judges.push(run.stats);
        if a.judge_loglik {
            let config = LoglikJudgeConfig {
                include_story: a.judge_story,
                ..Default::default()
            };
            let run = rt.block_on(judge_with_loglik(&model, &items, &init, &rlhf, &config))?;
            verdicts.extend(run.verdicts);
            judges.push(run.stats);
        }
    }
    if verdicts.is_empty() && judges.is_empty() {
        bail!("no verdicts: give --verdicts FILE or a judge (--judge-model DIR)");
    }
    let config = AuditConfig {
        bootstrap: Bootstrap {
            resamples: a.bootstrap,
            seed: a.seed,
            ..Default::default()
        },
        strata,
    };
    let mut report = audit(&items, &init, &rlhf, &verdicts, &config)?;
    report.judges = judges;
    let json = serde_json::to_string_pretty(&report)?;
    match &a.out {
        Some(p) => trust_core::fsutil::write_atomic(p, json + "\n")
            .with_context(|| format!("writing {}", p.display()))?,
        None => println!("{json}"),
    }
    for s in &report.judges {
        eprintln!(
            "{}: {} outputs judged, {} verdicts, {} unparsed, {} failed",
            s.evaluator, s.requests, s.parsed, s.unparsed, s.failed
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strata_argument() {
        assert_eq!(
            parse_strata("same=800, differ=200").unwrap(),
            Strata::TwoWay {
                same: 800,
                differ: 200
            }
        );
        assert_eq!(
            parse_strata("both_correct=1,both_wrong=2,differ=3").unwrap(),
            Strata::ThreeWay {
                both_correct: 1,
                both_wrong: 2,
                differ: 3
            }
        );
        assert!(parse_strata("same=1").is_err());
        assert!(parse_strata("same=1,differ=x").is_err());
        assert!(parse_strata("odd=1,differ=2").is_err());
        assert!(parse_strata("same=1,both_wrong=2,differ=3").is_err());
    }
}
