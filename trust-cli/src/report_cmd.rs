//! `trust report`: compare run directories (checkpoints) in one self-contained HTML page, a
//! stable `report.json` (schema in `docs/report-schema.md`) and a Markdown summary.

use std::path::PathBuf;

use anyhow::{Context, bail};
use trust_core::fsutil::write_atomic;

/// Arguments of `trust report`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// Run directories, one per checkpoint, the first being the reference: `trust eval --out`
    /// directories, or a `trust demo` output's `eval/<checkpoint>`.
    #[arg(long, num_args = 1.., required = true)]
    runs: Vec<PathBuf>,
    /// Checkpoint labels, comma-separated, one per run directory (default: directory names).
    #[arg(long, value_delimiter = ',')]
    labels: Option<Vec<String>>,
    /// Attributed training pairs to show: a `trust demo` report.json, a `trust attribute`
    /// top file, or a scores JSON Lines file (`{"train_index", "score"}` per line).
    #[arg(long)]
    attribution: Option<PathBuf>,
    /// The HTML file to write; `<stem>.json` and `<stem>.md` are written beside it.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: ReportArgs) -> anyhow::Result<()> {
    if a.out.extension().and_then(|e| e.to_str()) != Some("html") {
        bail!("--out must name an .html file (got {})", a.out.display());
    }
    let json_path = a.out.with_extension("json");
    let md_path = a.out.with_extension("md");
    for d in &a.runs {
        let theirs = d.join("report.json");
        if theirs.exists()
            && json_path.exists()
            && theirs.canonicalize().ok() == json_path.canonicalize().ok()
        {
            bail!(
                "{} is the run's own report; write the report elsewhere (--out)",
                json_path.display()
            );
        }
    }
    // Spec verticals of the runs are rebuilt from their manifests (no spec file needed).
    for d in &a.runs {
        trust_verticals::spec::register_specs_in_run(d)?;
    }
    let mut report =
        trust_report::build_from_dirs(&a.runs, a.labels.as_deref(), a.attribution.as_deref())?;
    // Paired changes against the first run, where both runs answered samples of one protocol.
    let verticals: Vec<String> = report
        .verticals
        .iter()
        .map(|v| v.vertical.clone())
        .collect();
    let boot = trust_core::Bootstrap::default();
    let mut n_paired = 0;
    for (i, run) in a.runs.iter().enumerate().skip(1) {
        for v in &verticals {
            match trust_verticals::registry::paired_changes_between(&a.runs[0], run, v, &boot) {
                Ok(changes) => n_paired += report.attach_paired(v, i, &changes),
                Err(e) => tracing::debug!("{v}: no paired changes for {}: {e}", run.display()),
            }
        }
    }
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    write_atomic(&a.out, trust_report::html::render(&report))
        .with_context(|| format!("writing {}", a.out.display()))?;
    write_atomic(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    write_atomic(&md_path, trust_report::markdown::render(&report))
        .with_context(|| format!("writing {}", md_path.display()))?;
    eprintln!(
        "wrote {}, {} and {} ({} checkpoints, {} verticals, {n_paired} paired changes)",
        a.out.display(),
        json_path.display(),
        md_path.display(),
        report.checkpoints.len(),
        report.verticals.len()
    );
    Ok(())
}
