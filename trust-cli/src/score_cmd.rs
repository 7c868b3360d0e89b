//! `trust score`: score saved replies without a model.
//!
//! Input: JSON Lines `{"id": sample id, "reply": text}`; several lines with the same id are that
//! sample's replies in order (toxicity: a line may add `"scores": {"toxicity": 0.7}`; machine
//! ethics `paper`: three replies per id, for prefixes 0, 2, 6; a line may carry the sample's
//! `"seed"`, else `--run-seed` derives it). Output: one `{"id", "label"}`
//! line per input line, in input order, then one line with the aggregate metrics.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use serde_json::json;
use trust_core::ScorerInfo;
use trust_core::metric::Bootstrap;
use trust_verticals::registry::{self, BuildOptions, SavedSample};

use crate::eval_cmd::make_scorer;

/// Arguments of `trust score`.
#[derive(clap::Args)]
pub struct ScoreArgs {
    /// Vertical name.
    #[arg(long, required_unless_present = "vertical_spec")]
    vertical: Option<String>,
    /// A declarative vertical (TOML, docs/vertical-specs.md) to score the replies with, instead
    /// of a built-in `--vertical`.
    #[arg(long, value_name = "FILE", conflicts_with = "vertical")]
    vertical_spec: Option<PathBuf>,
    /// Protocol variant (default: `paper`, or the spec's protocol).
    #[arg(long)]
    protocol: Option<String>,
    /// JSON Lines file of saved replies.
    #[arg(long)]
    replies: PathBuf,
    /// Data directory (layout of data/; default: $TRUST_DATA_DIR, else the checkout's data/).
    #[arg(long, env = "TRUST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Text scorer for toxicity (`mock`, `onnx:DIR[,...]` or an ONNX classifier directory);
    /// without it, lines must carry `"scores"`.
    #[arg(long)]
    scorer: Option<String>,
    /// Label read as toxicity: from the scorer, or the key in each line's `"scores"`
    /// (default: the scorer's primary label, or `toxicity`).
    #[arg(long)]
    scorer_label: Option<String>,
    /// Bootstrap resamples for the confidence intervals.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Bootstrap seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The `--seed` of the `trust eval` run the replies came from: a sample's seed is then
    /// derive_seed(N, id), unless its line has `"seed"` (as samples.jsonl records do). Only
    /// protocols whose scoring depends on the sample seed read it (truthfulness `paper-exp`).
    #[arg(long, default_value_t = 0, value_name = "N")]
    run_seed: u64,
}

/// The string field `name` of line `n`: missing and mistyped are different errors.
fn string_field<'a>(
    v: &'a serde_json::Value,
    name: &str,
    path: &std::path::Path,
    n: usize,
) -> anyhow::Result<&'a str> {
    match v.get(name) {
        Some(serde_json::Value::String(s)) => Ok(s.as_str()),
        None => bail!(
            "{}:{n}: field `{name}` (a string) is missing",
            path.display()
        ),
        Some(other) => bail!(
            "{}:{n}: field `{name}` must be a string, got {}",
            path.display(),
            json_kind(other)
        ),
    }
}

/// What kind of JSON value `v` is, with a short excerpt (for type errors).
fn json_kind(v: &serde_json::Value) -> String {
    let kind = match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    };
    let text = v.to_string();
    let excerpt: String = text.chars().take(40).collect();
    format!("{kind} ({excerpt})")
}

struct Line {
    line: usize,
    group: usize,
    index: usize,
}

pub fn run(a: ScoreArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(a))
}

async fn run_async(a: ScoreArgs) -> anyhow::Result<()> {
    let (name, default_protocol) = match &a.vertical_spec {
        Some(file) => {
            let name = crate::eval_cmd::register_spec(file)?;
            let p = registry::protocols(&name).unwrap_or_default();
            (name, p.first().cloned().unwrap_or_default())
        }
        None => (a.vertical.clone().unwrap_or_default(), "paper".to_string()),
    };
    let protocol = a.protocol.clone().unwrap_or(default_protocol);
    let data = crate::eval_cmd::data_dir_for(a.data_dir.as_deref(), a.vertical_spec.is_some())?;
    let scorer = match a.scorer.as_deref() {
        Some(spec) => make_scorer(spec, &data)?,
        None => None,
    };
    let label = a.scorer_label.clone().unwrap_or_else(|| "toxicity".into());
    let info = match &scorer {
        Some(s) => s.info(),
        None => ScorerInfo {
            id: format!("given scores ({label})"),
            labels: vec![label.clone()],
            primary: Some(label.clone()),
            weights_sha256: None,
        },
    };
    let opts = BuildOptions {
        samples: None,
        scorer_label: a.scorer_label.clone(),
        scorer: Some(info),
        ..Default::default()
    };
    let vertical = registry::build(&name, &protocol, &opts)?;

    let path = &a.replies;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut groups: Vec<SavedSample> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut lines = Vec::new();
    for (i, text) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let text = text.with_context(|| format!("reading {}:{n}", path.display()))?;
        if text.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}:{n}: not a JSON object", path.display()))?;
        let id = string_field(&v, "id", path, n)?;
        let reply = string_field(&v, "reply", path, n)?;
        let score = match v.get("scores") {
            None | Some(serde_json::Value::Null) => None,
            Some(s) => match s.get(&label).and_then(|x| x.as_f64()) {
                Some(x) => Some(x),
                None => bail!(
                    "{}:{n}: field `scores` has no number for label `{label}`",
                    path.display()
                ),
            },
        };
        let seed = match v.get("seed") {
            None | Some(serde_json::Value::Null) => None,
            Some(x) => match x.as_u64() {
                Some(x) => Some(x),
                None => bail!(
                    "{}:{n}: field `seed` must be a non-negative integer, got {x}",
                    path.display()
                ),
            },
        };
        let g = *by_id.entry(id.to_string()).or_insert_with(|| {
            groups.push(SavedSample {
                id: id.to_string(),
                seed: Some(trust_core::rng::derive_seed(a.run_seed, id)),
                ..Default::default()
            });
            groups.len() - 1
        });
        let s = &mut groups[g];
        if let Some(seed) = seed {
            if s.replies.is_empty() {
                s.seed = Some(seed);
            } else if s.seed != Some(seed) {
                bail!(
                    "{}:{n}: sample `{id}` has seed {seed} here but {} on an earlier line",
                    path.display(),
                    s.seed.unwrap_or_default()
                );
            }
        }
        lines.push(Line {
            line: n,
            group: g,
            index: s.replies.len(),
        });
        s.replies.push(reply.to_string());
        s.scores.push(score);
        s.sources.push(format!("{}:{n}", path.display()));
    }
    let boot = Bootstrap {
        resamples: a.bootstrap,
        confidence: 0.95,
        seed: a.seed,
    };
    let scored = vertical
        .score_saved(&data, &groups, scorer.as_deref(), &boot)
        .await
        .with_context(|| format!("scoring {}", path.display()))?;

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for l in &lines {
        let (id, outcome) = &scored.outcomes[l.group];
        let Some(label) = outcome.labels.get(l.index) else {
            bail!(
                "{}:{}: no label produced for this reply of `{id}`",
                path.display(),
                l.line
            );
        };
        writeln!(out, "{}", json!({"id": id, "label": label}))?;
    }
    writeln!(
        out,
        "{}",
        json!({
            "vertical": vertical.name(),
            "protocol": vertical.protocol(),
            "n_samples": groups.len(),
            "n_replies": lines.len(),
            "n_unparsed": scored.n_unparsed,
            "metrics": scored.metrics,
        })
    )?;
    Ok(())
}
