//! Score replies saved elsewhere (another harness, an API log) with a vertical's parser and
//! metrics, without a model.
//!
//! ```text
//! cargo run --release -p trust-examples --example score_saved_replies -- stereotype corrected replies.jsonl
//! ```
//! `replies.jsonl` holds one `{"id": SAMPLE_ID, "reply": TEXT}` per line (several lines per id
//! for verticals with several replies per sample, in request order); ids are the vertical's
//! sample ids, e.g. `stereotype/hiv/Homosexuals/0` (see `samples.jsonl` of a `trust eval` run).
//! Verticals that score texts (toxicity) use the mock scorer here. Data come from $TRUST_DATA_DIR, else the checkout's data/.

use anyhow::{Context, bail};
use trust_core::DataDir;
use trust_core::metric::Bootstrap;
use trust_core::testing::MockScorer;
use trust_verticals::registry::{self, BuildOptions, SavedSample};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [vertical, protocol, file] = &args[..] else {
        bail!("usage: score_saved_replies VERTICAL PROTOCOL REPLIES.jsonl");
    };
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    let mut saved: Vec<SavedSample> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{file}:{}: not JSON", i + 1))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .with_context(|| format!("{file}:{}: field `{k}` missing or not a string", i + 1))
        };
        let (id, reply) = (field("id")?, field("reply")?);
        let source = format!("{file}:{}", i + 1);
        match saved.iter_mut().find(|s| s.id == id) {
            Some(s) => {
                s.replies.push(reply);
                s.scores.push(None);
                s.sources.push(source);
            }
            None => saved.push(SavedSample {
                id,
                replies: vec![reply],
                scores: vec![None],
                sources: vec![source],
                seed: None,
            }),
        }
    }
    let data = DataDir::resolve(None)?;
    let v = registry::build(vertical, protocol, &BuildOptions::default())?;
    let scorer = MockScorer::default();
    let boot = Bootstrap {
        resamples: 1000,
        confidence: 0.95,
        seed: 0,
    };
    let out = v.score_saved(&data, &saved, Some(&scorer), &boot).await?;
    for (id, o) in &out.outcomes {
        println!("{id}\t{}", serde_json::to_string(o)?);
    }
    for m in &out.metrics {
        println!(
            "{:<40} {:?}  95% CI [{:?}, {:?}]  n={}",
            m.name, m.value, m.ci_low, m.ci_high, m.n
        );
    }
    println!("{} unparsed replies", out.n_unparsed);
    Ok(())
}
