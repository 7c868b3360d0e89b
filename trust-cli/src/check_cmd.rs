//! `trust check`: the regression gate ([`trust_verticals::gate`]) for CI pipelines.

use std::path::PathBuf;

use anyhow::bail;
use trust_core::metric::Bootstrap;
use trust_verticals::gate::{self, Bound, CheckReport, Verdict};

/// Arguments of `trust check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The reference run (a `trust eval --out` directory, e.g. the released checkpoint).
    #[arg(long)]
    baseline: PathBuf,
    /// The run to gate (same verticals and protocols, e.g. the new checkpoint).
    #[arg(long)]
    candidate: PathBuf,
    /// Comma-separated bounds `vertical.metric=MAX`: the candidate fails when the metric moves
    /// more than MAX in its worse direction with the paired interval excluding 0. Built-in
    /// metrics know their worse direction (emt, toxicity_probability, agreement_index, fnr,
    /// leakage_rate: up; mc1_accuracy: down); any other metric takes `+MAX` (increases regress)
    /// or `-MAX` (decreases regress). Slices work: `toxicity.emt[run=toxic/benign]=0.05`.
    #[arg(long, value_name = "SPEC")]
    max_regression: String,
    /// Bootstrap resamples of the paired intervals.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Interval coverage.
    #[arg(long, default_value_t = 0.95)]
    confidence: f64,
    /// Print the result as JSON (the library's `CheckReport`) instead of a table.
    #[arg(long)]
    json: bool,
}

fn fmt(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "n/a".into())
}

/// The table `trust check` prints.
pub fn table(r: &CheckReport) -> String {
    let mut out = String::from(
        "vertical\tmetric\tbaseline\tcandidate\tchange\tinterval\tn\tbound\tverdict\n",
    );
    for row in &r.rows {
        let b = &row.bound;
        let bound = format!(
            "{}{} ({})",
            match b.worse {
                gate::Worse::Higher => "+",
                gate::Worse::Lower => "-",
            },
            b.max,
            b.worse.describe()
        );
        let (before, after, delta, ci, n) = match &row.change {
            Some(c) => (
                fmt(c.before),
                fmt(c.after),
                c.delta
                    .map(|d| format!("{d:+.4}"))
                    .unwrap_or_else(|| "n/a".into()),
                match (c.ci_low, c.ci_high) {
                    (Some(l), Some(h)) => format!("[{l:+.4}, {h:+.4}]"),
                    _ => "n/a".into(),
                },
                c.n_paired.to_string(),
            ),
            None => (
                "n/a".into(),
                "n/a".into(),
                "n/a".into(),
                "n/a".into(),
                "0".into(),
            ),
        };
        let verdict = match &row.verdict {
            Verdict::Pass => "pass".to_string(),
            Verdict::Regressed => "REGRESSED".to_string(),
            Verdict::Missing(why) => format!("NOT CHECKED: {why}"),
        };
        out.push_str(&format!(
            "{}\t{}\t{before}\t{after}\t{delta}\t{ci}\t{n}\t{bound}\t{verdict}\n",
            b.vertical, b.metric
        ));
    }
    out
}

pub fn run(a: CheckArgs) -> anyhow::Result<()> {
    // Spec verticals of the runs are rebuilt from their manifests (no spec file needed).
    for d in [&a.baseline, &a.candidate] {
        trust_verticals::spec::register_specs_in_run(d)?;
    }
    let bounds =
        Bound::parse_list(&a.max_regression).map_err(|e| crate::exit::usage(e.to_string()))?;
    if !(a.confidence > 0.0 && a.confidence < 1.0) {
        return Err(crate::exit::usage(format!(
            "--confidence {} must be in (0, 1)",
            a.confidence
        )));
    }
    if a.bootstrap == 0 {
        return Err(crate::exit::usage(
            "--bootstrap 0 gives no interval, so no change could be told from noise",
        ));
    }
    let boot = Bootstrap {
        resamples: a.bootstrap,
        confidence: a.confidence,
        seed: a.seed,
    };
    let report = gate::check(&a.baseline, &a.candidate, &bounds, &boot)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    let (regressed, missing) = (report.regressed(), report.missing());
    if regressed + missing > 0 {
        bail!(
            "{regressed} of {} bounded metric(s) regressed{}",
            report.rows.len(),
            if missing > 0 {
                format!(", {missing} could not be compared")
            } else {
                String::new()
            }
        );
    }
    eprintln!(
        "all {} bounded metric(s) within their bounds",
        report.rows.len()
    );
    Ok(())
}
