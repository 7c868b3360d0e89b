//! # trust-report
//!
//! Reports people read. [`Report::build`] reads one or more run directories (each a
//! `trust eval --out DIR` output, or a `trust demo` output's `eval/<checkpoint>` directory) and
//! compares them checkpoint by checkpoint; [`html::render`] turns the result into one
//! self-contained HTML file (inline CSS and SVG, no script, no external URL), [`markdown::render`]
//! into a Markdown summary, and the [`Report`] itself serialises to the stable `report.json`
//! schema documented in `docs/report-schema.md` ([`SCHEMA_VERSION`]).
//!
//! ```no_run
//! use trust_report::{Report, RunInput};
//! # fn main() -> Result<(), trust_report::Error> {
//! let runs = vec![
//!     RunInput::load("out/base", Some("base"))?,
//!     RunInput::load("out/dpo", Some("dpo"))?,
//! ];
//! let report = Report::build(runs, None);
//! std::fs::write("report.html", trust_report::html::render(&report)).unwrap();
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod attribution;
pub mod html;
pub mod markdown;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use trust_core::VerticalReport;

pub use attribution::{AttributedPair, Attribution, PairGroup};

/// Version of the `report.json` schema. Bumped on any change that removes or renames a field
/// or changes a field's meaning; adding fields keeps the version.
pub const SCHEMA_VERSION: u32 = 1;

/// The built-in verticals in report order (others follow alphabetically).
const ORDER: &[&str] = &[
    "toxicity",
    "stereotype",
    "machine_ethics",
    "truthfulness",
    "privacy",
];

/// Errors reading run directories or attribution files; each names the file (and line or
/// field where it applies).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// I/O on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file whose content is not what a run or attribution file holds.
    #[error("{path}{}: {message}", .line.map(|l| format!(":{l}")).unwrap_or_default())]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line, for JSON Lines files.
        line: Option<usize>,
        /// What is wrong (names the field).
        message: String,
    },
    /// A run directory without any report.
    #[error(
        "{0}: no report found (expected report.json from `trust eval`, or <vertical>/report.json)"
    )]
    NoReports(PathBuf),
    /// Bad arguments (e.g. label count).
    #[error("{0}")]
    Usage(String),
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn format_err(path: &Path, message: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        line: None,
        message: message.into(),
    }
}

/// One vertical of one run, as found on disk.
#[derive(Debug, Clone)]
pub struct VerticalEntry {
    /// Vertical name.
    pub vertical: String,
    /// Protocol name.
    pub protocol: String,
    /// `ok`, `skipped`, `failed` (from `trust eval`'s combined report) or `missing`.
    pub status: String,
    /// Why it was skipped or failed.
    pub note: Option<String>,
    /// The report, when the vertical ran.
    pub report: Option<VerticalReport>,
}

/// One run directory (one checkpoint).
#[derive(Debug, Clone)]
pub struct RunInput {
    /// Label shown in the report.
    pub label: String,
    /// The directory read.
    pub dir: PathBuf,
    /// Model identity (from the combined report or the first manifest), if known.
    pub model: Option<Value>,
    /// Its verticals in report order.
    pub verticals: Vec<VerticalEntry>,
    /// What a reader should know about how the directory was read (a stale combined report
    /// superseded by per-vertical folders); the report shows them.
    pub notes: Vec<String>,
}

fn read_json(path: &Path) -> Result<Value, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        line: Some(e.line()),
        message: format!("not JSON: {e}"),
    })
}

fn vertical_report(path: &Path, field: &str, v: Value) -> Result<VerticalReport, Error> {
    serde_json::from_value(v).map_err(|e| {
        format_err(
            path,
            format!("field `{field}` is not a vertical report: {e}"),
        )
    })
}

impl RunInput {
    /// Reads a run directory: `DIR/report.json` written by `trust eval` (with its `verticals`
    /// list), a single vertical's directory (`DIR/report.json` is a vertical report), or a
    /// directory of `<vertical>/report.json` (a `trust demo` output's `eval/<checkpoint>`).
    /// The label defaults to the directory's name.
    pub fn load(dir: impl AsRef<Path>, label: Option<&str>) -> Result<RunInput, Error> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            ));
        }
        let label = label.map(str::to_string).unwrap_or_else(|| {
            dir.canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| dir.display().to_string())
        });
        let combined = dir.join(trust_core::runner::REPORT_FILE);
        let mut verticals = Vec::new();
        let mut notes = Vec::new();
        let mut model = None;
        if combined.is_file() {
            let v = read_json(&combined)?;
            if let Some(list) = v.get("verticals") {
                let list = list
                    .as_array()
                    .ok_or_else(|| format_err(&combined, "field `verticals` is not a list"))?;
                model = v.get("model").cloned().filter(|m| !m.is_null());
                for (i, e) in list.iter().enumerate() {
                    let field = |k: &str| format!("verticals[{i}].{k}");
                    let get = |k: &str| -> Result<String, Error> {
                        e.get(k)
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .ok_or_else(|| {
                                format_err(&combined, format!("field `{}` missing", field(k)))
                            })
                    };
                    let report = match e.get("report") {
                        Some(r) if !r.is_null() => {
                            Some(vertical_report(&combined, &field("report"), r.clone())?)
                        }
                        _ => None,
                    };
                    verticals.push(VerticalEntry {
                        vertical: get("vertical")?,
                        protocol: get("protocol")?,
                        status: get("status")?,
                        note: e
                            .get("reason")
                            .or_else(|| e.get("error"))
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        report,
                    });
                }
                supersede_stale(dir, &combined, &mut verticals, &mut notes)?;
            } else {
                let r = vertical_report(&combined, "<root>", v)?;
                verticals.push(entry_of(r));
            }
        } else {
            let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect();
            subdirs.sort();
            for sub in subdirs {
                let p = sub.join(trust_core::runner::REPORT_FILE);
                if p.is_file() {
                    let r = vertical_report(&p, "<root>", read_json(&p)?)?;
                    verticals.push(entry_of(r));
                } else if sub.join(trust_core::runner::SAMPLES_FILE).is_file() {
                    verticals.push(VerticalEntry {
                        vertical: sub
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        protocol: String::new(),
                        status: "missing".into(),
                        note: Some("samples.jsonl without report.json (interrupted run?)".into()),
                        report: None,
                    });
                }
            }
        }
        if verticals.is_empty() {
            return Err(Error::NoReports(dir.to_path_buf()));
        }
        if model.is_none() {
            model = verticals
                .iter()
                .find_map(|v| v.report.as_ref())
                .and_then(|r| serde_json::to_value(&r.manifest.model).ok());
        }
        verticals.sort_by_key(|v| order_key(&v.vertical));
        Ok(RunInput {
            label,
            dir: dir.to_path_buf(),
            model,
            verticals,
            notes,
        })
    }
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// `trust eval` writes `DIR/<vertical>/report.json` per vertical and then the combined
/// `DIR/report.json`. A per-vertical report newer than the combined file, or one the combined
/// file does not list, means the combined file is stale (an interrupted or older invocation
/// wrote it): the per-vertical report replaces its entry, with a note saying so.
fn supersede_stale(
    dir: &Path,
    combined: &Path,
    verticals: &mut Vec<VerticalEntry>,
    notes: &mut Vec<String>,
) -> Result<(), Error> {
    let combined_time = modified(combined);
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for sub in subdirs {
        let p = sub.join(trust_core::runner::REPORT_FILE);
        if !p.is_file() {
            continue;
        }
        let r = match read_json(&p).map(serde_json::from_value::<VerticalReport>) {
            Ok(Ok(r)) => r,
            _ => {
                notes.push(format!(
                    "{} is not a vertical report; ignored",
                    p.strip_prefix(dir).unwrap_or(&p).display()
                ));
                continue;
            }
        };
        let name = r.manifest.vertical.clone();
        let shown = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
        match verticals.iter().position(|v| v.vertical == name) {
            None => {
                notes.push(format!(
                    "{name}: read from {shown}; the combined report.json does not list it"
                ));
                verticals.push(entry_of(r));
            }
            Some(i) => {
                let newer = match (modified(&p), combined_time) {
                    (Some(a), Some(b)) => a > b,
                    _ => false,
                };
                let same = verticals[i].report.as_ref().is_some_and(|old| {
                    serde_json::to_value(old).ok() == serde_json::to_value(&r).ok()
                });
                if newer && !same {
                    notes.push(format!(
                        "{name}: read from {shown}, which is newer than the combined report.json (stale: its entry said `{}`)",
                        verticals[i].status
                    ));
                    verticals[i] = entry_of(r);
                }
            }
        }
    }
    Ok(())
}

fn entry_of(r: VerticalReport) -> VerticalEntry {
    VerticalEntry {
        vertical: r.manifest.vertical.clone(),
        protocol: r.manifest.protocol.clone(),
        status: "ok".into(),
        note: None,
        report: Some(r),
    }
}

fn order_key(v: &str) -> (usize, String) {
    (
        ORDER.iter().position(|o| *o == v).unwrap_or(ORDER.len()),
        v.to_string(),
    )
}

/// Splits `base[key=value]` into (`base`, Some((`key`, `value`))).
pub fn split_metric_name(name: &str) -> (&str, Option<(&str, &str)>) {
    if let Some(open) = name.find('[')
        && name.ends_with(']')
    {
        let inner = &name[open + 1..name.len() - 1];
        if let Some((k, v)) = inner.split_once('=') {
            return (&name[..open], Some((k, v)));
        }
    }
    (name, None)
}

/// One checkpoint in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Label (`base`, `sft`, ...).
    pub label: String,
    /// The run directory read.
    pub source: String,
    /// Model identity, if known.
    pub model: Option<Value>,
}

/// A metric's value in one checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Point estimate (`null` when undefined).
    pub value: Option<f64>,
    /// Lower end of the 95% bootstrap interval.
    pub ci_low: Option<f64>,
    /// Upper end of the 95% bootstrap interval.
    pub ci_high: Option<f64>,
    /// Samples the metric saw.
    pub n: usize,
    /// `value − value of the first checkpoint` (`null` if either is undefined).
    pub delta: Option<f64>,
    /// `delta / |value of the first checkpoint|` (`null` if undefined or the first is 0).
    pub relative_change: Option<f64>,
    /// The paired-bootstrap interval of the change against the first checkpoint, when both
    /// answered the same samples and it was computed ([`Report::attach_paired`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paired: Option<PairedInterval>,
}

/// A paired-bootstrap 95% interval of a change: [`trust_core::metric::PairedChange`].
pub use trust_core::metric::PairedChange as PairedInterval;

/// One metric across checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    /// Full metric name as the vertical reports it (`leakage_rate[pii=email]`).
    pub name: String,
    /// Name without the slice (`leakage_rate`).
    pub base: String,
    /// Slice key, for sliced metrics (`pii`).
    pub slice_key: Option<String>,
    /// Slice value (`email`).
    pub slice_value: Option<String>,
    /// One entry per checkpoint, in checkpoint order; `null` where the checkpoint lacks it.
    pub values: Vec<Option<Cell>>,
}

/// A vertical's status in one checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    /// `ok`, `skipped`, `failed`, `missing` (the checkpoint has no such vertical or no report).
    pub status: String,
    /// Protocol run.
    pub protocol: Option<String>,
    /// Why it was skipped or failed.
    pub note: Option<String>,
    /// Samples selected / scored / failed, and unparsed replies.
    pub n_samples: Option<usize>,
    /// Samples scored.
    pub n_ok: Option<usize>,
    /// Samples failed.
    pub n_failed: Option<usize>,
    /// Replies the parser could not interpret.
    pub n_unparsed: Option<usize>,
}

/// One vertical across checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerticalSection {
    /// Vertical name.
    pub vertical: String,
    /// Per checkpoint status.
    pub runs: Vec<RunStatus>,
    /// Unsliced metrics (the bar charts).
    pub headline: Vec<MetricRow>,
    /// Sliced metrics (`name[key=value]`).
    pub sliced: Vec<MetricRow>,
}

/// The stereotype agreement index per (topic, group) cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heatmap {
    /// Metric the cells come from (`agreement_index`).
    pub metric: String,
    /// Row labels.
    pub topics: Vec<String>,
    /// Column labels.
    pub groups: Vec<String>,
    /// `values[checkpoint][topic][group]`, `null` where undefined.
    pub values: Vec<Vec<Vec<Option<f64>>>>,
}

/// The report (`report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `trust-report <version>`.
    pub generator: String,
    /// Checkpoints in order; the first is the reference of `delta` and `relative_change`.
    pub checkpoints: Vec<Checkpoint>,
    /// Verticals in report order.
    pub verticals: Vec<VerticalSection>,
    /// Stereotype heat map, when a stereotype run reports cell metrics.
    pub stereotype_heatmap: Option<Heatmap>,
    /// Privacy leakage per PII type (`leakage_rate[pii=...]` rows).
    pub pii_leakage: Vec<MetricRow>,
    /// Attributed training pairs, when an attribution file was given.
    pub attribution: Option<Attribution>,
    /// Notes shown first to readers (e.g. what a demo's numbers do not mean). Optional in
    /// schema 1; absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// ` Δ [lo, hi]*` for a paired interval (`*` when it excludes 0).
pub(crate) fn fmt_paired(p: &PairedInterval) -> String {
    match (p.ci_low, p.ci_high) {
        (Some(l), Some(h)) => format!(
            " (paired Δ {:+.3} [{l:+.3}, {h:+.3}]{})",
            p.delta.unwrap_or(f64::NAN),
            if p.significant { " *" } else { "" }
        ),
        _ => String::new(),
    }
}

impl Report {
    /// Attaches paired-bootstrap changes of `vertical` for checkpoint `checkpoint` (an index into
    /// [`Report::checkpoints`], > 0) against the first checkpoint: each change goes to the cell
    /// of the metric row with its name (headline, sliced and PII rows). Returns how many cells
    /// got one.
    pub fn attach_paired(
        &mut self,
        vertical: &str,
        checkpoint: usize,
        changes: &[trust_core::metric::PairedChange],
    ) -> usize {
        let mut n = 0;
        let by_name: std::collections::HashMap<&str, &trust_core::metric::PairedChange> =
            changes.iter().map(|c| (c.name.as_str(), c)).collect();
        let mut attach = |rows: &mut Vec<MetricRow>| {
            for r in rows.iter_mut() {
                if let (Some(c), Some(Some(cell))) =
                    (by_name.get(r.name.as_str()), r.values.get_mut(checkpoint))
                {
                    cell.paired = Some((*c).clone());
                    n += 1;
                }
            }
        };
        for v in self.verticals.iter_mut().filter(|v| v.vertical == vertical) {
            attach(&mut v.headline);
            attach(&mut v.sliced);
        }
        if vertical == "privacy" {
            attach(&mut self.pii_leakage);
        }
        n
    }

    /// Compares `runs` (the first is the reference checkpoint).
    pub fn build(runs: Vec<RunInput>, attribution: Option<Attribution>) -> Report {
        let checkpoints: Vec<Checkpoint> = runs
            .iter()
            .map(|r| Checkpoint {
                label: r.label.clone(),
                source: r.dir.display().to_string(),
                model: r.model.clone(),
            })
            .collect();
        let mut names: Vec<String> = Vec::new();
        for r in &runs {
            for v in &r.verticals {
                if !names.contains(&v.vertical) {
                    names.push(v.vertical.clone());
                }
            }
        }
        names.sort_by_key(|v| order_key(v));
        let mut verticals = Vec::new();
        for name in &names {
            let entries: Vec<Option<&VerticalEntry>> = runs
                .iter()
                .map(|r| r.verticals.iter().find(|v| &v.vertical == name))
                .collect();
            let runs_status = entries
                .iter()
                .map(|e| match e {
                    None => RunStatus {
                        status: "missing".into(),
                        protocol: None,
                        note: None,
                        n_samples: None,
                        n_ok: None,
                        n_failed: None,
                        n_unparsed: None,
                    },
                    Some(e) => RunStatus {
                        status: e.status.clone(),
                        protocol: Some(e.protocol.clone()).filter(|p| !p.is_empty()),
                        note: e.note.clone(),
                        n_samples: e.report.as_ref().map(|r| r.n_samples),
                        n_ok: e.report.as_ref().map(|r| r.n_ok),
                        n_failed: e.report.as_ref().map(|r| r.n_failed),
                        n_unparsed: e.report.as_ref().map(|r| r.n_unparsed),
                    },
                })
                .collect();
            let mut metric_names: Vec<String> = Vec::new();
            for e in entries.iter().flatten() {
                for m in e.report.iter().flat_map(|r| &r.metrics) {
                    if !metric_names.contains(&m.name) {
                        metric_names.push(m.name.clone());
                    }
                }
            }
            let mut headline = Vec::new();
            let mut sliced = Vec::new();
            for mname in metric_names {
                let values: Vec<Option<Cell>> = entries
                    .iter()
                    .map(|e| {
                        e.and_then(|e| e.report.as_ref())
                            .and_then(|r| r.metric(&mname))
                            .map(|m| Cell {
                                value: m.value,
                                ci_low: m.ci_low,
                                ci_high: m.ci_high,
                                n: m.n,
                                delta: None,
                                relative_change: None,
                                paired: None,
                            })
                    })
                    .collect();
                let row = with_changes(mname, values);
                if row.slice_key.is_some() {
                    sliced.push(row);
                } else {
                    headline.push(row);
                }
            }
            verticals.push(VerticalSection {
                vertical: name.clone(),
                runs: runs_status,
                headline,
                sliced,
            });
        }
        let stereotype_heatmap = verticals
            .iter()
            .find(|v| v.vertical == "stereotype")
            .and_then(|v| heatmap(v, checkpoints.len()));
        let pii_leakage = verticals
            .iter()
            .filter(|v| v.vertical == "privacy")
            .flat_map(|v| &v.sliced)
            .filter(|r| r.base == "leakage_rate" && r.slice_key.as_deref() == Some("pii"))
            .cloned()
            .collect();
        let mut notes = scorer_notes(&runs);
        for r in &runs {
            notes.extend(r.notes.iter().map(|n| format!("{}: {n}", r.label)));
        }
        notes.extend(sample_count_notes(&verticals, &checkpoints));
        Report {
            schema_version: SCHEMA_VERSION,
            generator: format!("trust-report {}", env!("CARGO_PKG_VERSION")),
            checkpoints,
            verticals,
            stereotype_heatmap,
            pii_leakage,
            attribution,
            notes,
        }
    }
}

/// A note per vertical whose checkpoints ran different numbers of samples: their metrics are
/// over different sample sets, so the changes are not like for like.
fn sample_count_notes(verticals: &[VerticalSection], checkpoints: &[Checkpoint]) -> Vec<String> {
    let mut notes = Vec::new();
    for v in verticals {
        let counts: Vec<(&str, usize)> = v
            .runs
            .iter()
            .zip(checkpoints)
            .filter_map(|(r, c)| r.n_samples.map(|n| (c.label.as_str(), n)))
            .collect();
        if counts.windows(2).any(|w| w[0].1 != w[1].1) {
            let list: Vec<String> = counts.iter().map(|(l, n)| format!("{l} {n}")).collect();
            notes.push(format!(
                "{}: the checkpoints ran different numbers of samples ({}); changes compare different sample sets and only shared samples are paired",
                v.vertical,
                list.join(", ")
            ));
        }
    }
    notes
}

/// One note per distinct toxicity scorer of the runs: which scorer and its recorded agreement
/// with Perspective ([`trust_core::scorer::scorer_note`]).
fn scorer_notes(runs: &[RunInput]) -> Vec<String> {
    let mut notes: Vec<String> = Vec::new();
    for r in runs {
        for v in r.verticals.iter().filter(|v| v.vertical == "toxicity") {
            let Some(rep) = &v.report else { continue };
            let Some(info) = &rep.manifest.scorer else {
                continue;
            };
            let label = rep.manifest.options["scorer_label"]
                .as_str()
                .map(str::to_string)
                .or_else(|| info.primary.clone())
                .unwrap_or_default();
            let note = trust_core::scorer::scorer_note(info, &label);
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
    }
    notes
}

/// Fills `delta` and `relative_change` against the first checkpoint.
fn with_changes(name: String, mut values: Vec<Option<Cell>>) -> MetricRow {
    let reference = values
        .first()
        .and_then(|c| c.as_ref())
        .and_then(|c| c.value);
    for c in values.iter_mut().flatten() {
        if let (Some(r), Some(v)) = (reference, c.value) {
            c.delta = Some(v - r);
            c.relative_change = (r != 0.0).then(|| (v - r) / r.abs());
        }
    }
    let (base, slice) = split_metric_name(&name);
    MetricRow {
        base: base.to_string(),
        slice_key: slice.map(|s| s.0.to_string()),
        slice_value: slice.map(|s| s.1.to_string()),
        name,
        values,
    }
}

fn heatmap(v: &VerticalSection, n_checkpoints: usize) -> Option<Heatmap> {
    let cells: Vec<(&MetricRow, String, String)> = v
        .sliced
        .iter()
        .filter(|r| r.slice_key.as_deref() == Some("cell"))
        .filter_map(|r| {
            let (t, g) = r.slice_value.as_deref()?.split_once('/')?;
            Some((r, t.to_string(), g.to_string()))
        })
        .collect();
    if cells.is_empty() {
        return None;
    }
    let metric = cells[0].0.base.clone();
    let mut topics: Vec<String> = Vec::new();
    let mut groups: Vec<String> = Vec::new();
    for (_, t, g) in &cells {
        if !topics.contains(t) {
            topics.push(t.clone());
        }
        if !groups.contains(g) {
            groups.push(g.clone());
        }
    }
    let index: BTreeMap<(&str, &str), &MetricRow> = cells
        .iter()
        .map(|(r, t, g)| ((t.as_str(), g.as_str()), *r))
        .collect();
    let values = (0..n_checkpoints)
        .map(|c| {
            topics
                .iter()
                .map(|t| {
                    groups
                        .iter()
                        .map(|g| {
                            index
                                .get(&(t.as_str(), g.as_str()))
                                .and_then(|r| r.values.get(c))
                                .and_then(|x| x.as_ref())
                                .and_then(|x| x.value)
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    Some(Heatmap {
        metric,
        topics,
        groups,
        values,
    })
}

/// Reads the run directories `dirs` with optional `labels` (one per directory) and an optional
/// attribution file, and builds the report.
pub fn build_from_dirs(
    dirs: &[PathBuf],
    labels: Option<&[String]>,
    attribution: Option<&Path>,
) -> Result<Report, Error> {
    if dirs.is_empty() {
        return Err(Error::Usage("no run directories given".into()));
    }
    if let Some(l) = labels
        && l.len() != dirs.len()
    {
        return Err(Error::Usage(format!(
            "{} labels for {} run directories",
            l.len(),
            dirs.len()
        )));
    }
    let runs = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| RunInput::load(d, labels.map(|l| l[i].as_str())))
        .collect::<Result<Vec<_>, _>>()?;
    let attribution = attribution.map(Attribution::load).transpose()?;
    Ok(Report::build(runs, attribution))
}

/// The end of `s` in at most `max_chars` characters: when it is longer, the cut falls at a word
/// boundary (unless the last word alone is too long) and `…` marks it. Dialogue prompts end
/// with their question, so their end is the part worth showing.
///
/// ```
/// assert_eq!(trust_report::clip_start("Human: hello there friend", 14), "…there friend");
/// assert_eq!(trust_report::clip_start("short", 14), "short");
/// ```
pub fn clip_start(s: &str, max_chars: usize) -> String {
    let n = s.chars().count();
    if n <= max_chars {
        return s.to_string();
    }
    let keep = max_chars.saturating_sub(1);
    let start = s
        .char_indices()
        .nth(n - keep)
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    let window = &s[start..];
    // Cut where a word begins, unless that drops more than half the window.
    let cut = if s[..start].ends_with(char::is_whitespace) {
        0
    } else {
        match window.find(char::is_whitespace) {
            Some(i) if i <= window.len() / 2 => i,
            _ => 0,
        }
    };
    format!("…{}", window[cut..].trim_start())
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_shown_first_and_escaped_and_omitted_when_empty() {
        let mut r = Report::build(Vec::new(), None);
        assert!(!serde_json::to_string(&r).unwrap().contains("notes"));
        r.notes.push("tiny model <demo> only".into());
        let html = crate::html::render(&r);
        let note = html
            .find("tiny model &lt;demo&gt; only")
            .expect("note rendered, escaped");
        assert!(
            note < html.find("id=\"checkpoints\"").unwrap(),
            "note comes before the tables"
        );
        assert!(crate::markdown::render(&r).contains("> tiny model"));
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.notes, r.notes);
    }

    #[test]
    fn metric_names_split_into_base_and_slice() {
        assert_eq!(
            split_metric_name("leakage_rate[pii=phone number]"),
            ("leakage_rate", Some(("pii", "phone number")))
        );
        assert_eq!(
            split_metric_name("agreement_index[cell=hiv/Homosexuals]"),
            ("agreement_index", Some(("cell", "hiv/Homosexuals")))
        );
        assert_eq!(split_metric_name("fnr"), ("fnr", None));
    }

    #[test]
    fn changes_are_relative_to_the_first_checkpoint() {
        let cell = |v: Option<f64>| {
            Some(Cell {
                value: v,
                ci_low: None,
                ci_high: None,
                n: 1,
                delta: None,
                relative_change: None,
                paired: None,
            })
        };
        let row = with_changes(
            "m".into(),
            vec![cell(Some(0.5)), cell(Some(0.25)), None, cell(None)],
        );
        let c1 = row.values[1].as_ref().unwrap();
        assert_eq!(c1.delta, Some(-0.25));
        assert_eq!(c1.relative_change, Some(-0.5));
        assert_eq!(row.values[0].as_ref().unwrap().relative_change, Some(0.0));
        assert!(row.values[2].is_none());
        assert_eq!(row.values[3].as_ref().unwrap().delta, None);
        let zero = with_changes("m".into(), vec![cell(Some(0.0)), cell(Some(0.1))]);
        assert_eq!(zero.values[1].as_ref().unwrap().relative_change, None);
        assert_eq!(zero.values[1].as_ref().unwrap().delta, Some(0.1));
    }

    #[test]
    fn paired_changes_attach_to_the_named_rows_and_render() {
        let cell = |v: f64| {
            Some(Cell {
                value: Some(v),
                ci_low: None,
                ci_high: None,
                n: 50,
                delta: None,
                relative_change: None,
                paired: None,
            })
        };
        let mut report = Report {
            schema_version: SCHEMA_VERSION,
            generator: "test".into(),
            checkpoints: ["base", "dpo"]
                .iter()
                .map(|l| Checkpoint {
                    label: l.to_string(),
                    source: format!("runs/{l}"),
                    model: None,
                })
                .collect(),
            verticals: vec![VerticalSection {
                vertical: "machine_ethics".into(),
                runs: Vec::new(),
                headline: vec![with_changes("fnr".into(), vec![cell(0.5), cell(0.3)])],
                sliced: Vec::new(),
            }],
            stereotype_heatmap: None,
            pii_leakage: Vec::new(),
            attribution: None,
            notes: Vec::new(),
        };
        let change = |name: &str, l: f64, h: f64| trust_core::metric::PairedChange {
            name: name.into(),
            before: Some(0.5),
            after: Some(0.3),
            delta: Some(-0.2),
            ci_low: Some(l),
            ci_high: Some(h),
            n_paired: 50,
            significant: l > 0.0 || h < 0.0,
        };
        let n = report.attach_paired(
            "machine_ethics",
            1,
            &[change("fnr", -0.31, -0.09), change("other", 0.0, 1.0)],
        );
        assert_eq!(n, 1);
        let c = report.verticals[0].headline[0].values[1].as_ref().unwrap();
        assert!(c.paired.as_ref().unwrap().significant);
        assert_eq!(
            report.attach_paired("privacy", 1, &[change("fnr", 0.0, 1.0)]),
            0
        );
        let html = html::render(&report);
        assert!(
            html.contains("paired Δ -0.200 [-0.310, -0.090] *"),
            "{html}"
        );
        assert!(html.contains("<section id=\"headline\">"), "{html}");
        assert!(
            html.contains("<td class=l>machine_ethics</td><td class=l>fnr</td>"),
            "{html}"
        );
        let md = markdown::render(&report);
        assert!(md.contains("paired Δ -0.200 [-0.310, -0.090] *"), "{md}");
        // The Markdown opens with the same headline table: vertical, metric, change,
        // significant.
        let head = md.split("## Headline").nth(1).expect("headline section");
        assert!(
            head.contains("| machine_ethics | fnr |") && head.contains("*) | yes |"),
            "{md}"
        );
    }

    fn one_metric_report(values: &[Option<f64>], n_samples: &[usize]) -> Report {
        let labels = ["base", "sft", "dpo"];
        let cell = |v: &Option<f64>| {
            Some(Cell {
                value: *v,
                ci_low: v.map(|v| (v - 0.05).max(0.0)),
                ci_high: v.map(|v| v + 0.05),
                n: 48,
                delta: None,
                relative_change: None,
                paired: None,
            })
        };
        let checkpoints: Vec<Checkpoint> = labels[..values.len()]
            .iter()
            .map(|l| Checkpoint {
                label: l.to_string(),
                source: format!("runs/{l}"),
                model: None,
            })
            .collect();
        let verticals = vec![VerticalSection {
            vertical: "machine_ethics".into(),
            runs: n_samples
                .iter()
                .map(|n| RunStatus {
                    status: "ok".into(),
                    protocol: Some("paper".into()),
                    note: None,
                    n_samples: Some(*n),
                    n_ok: Some(*n),
                    n_failed: Some(0),
                    n_unparsed: Some(0),
                })
                .collect(),
            headline: vec![with_changes(
                "fnr".into(),
                values.iter().map(cell).collect(),
            )],
            sliced: Vec::new(),
        }];
        let notes = sample_count_notes(&verticals, &checkpoints);
        Report {
            schema_version: SCHEMA_VERSION,
            generator: "test".into(),
            checkpoints,
            verticals,
            stereotype_heatmap: None,
            pii_leakage: Vec::new(),
            attribution: None,
            notes,
        }
    }

    /// The `x` attributes of the elements with `class="{class}"` in an SVG.
    fn xs(svg: &str, class: &str) -> Vec<f64> {
        svg.split(&format!("class=\"{class}\" x=\""))
            .skip(1)
            .map(|t| t.split('"').next().unwrap().parse().unwrap())
            .collect()
    }

    #[test]
    fn single_metric_chart_labels_sit_under_their_bars_with_round_ticks_and_direction() {
        let report = one_metric_report(&[Some(0.42), Some(0.0), Some(0.3)], &[48, 48, 48]);
        let html = html::render(&report);
        let fig = html
            .split("data-kind=\"vertical-bars\"")
            .nth(1)
            .unwrap()
            .split("</svg>")
            .next()
            .unwrap();
        let bars = xs(fig, "bar");
        let label = xs(fig, "group-label")[0];
        assert_eq!(bars.len(), 3);
        // The label is at the centre of the three bars (not ~240 px beside them).
        let (first, last) = (bars[0], bars[2] + 58.0);
        assert!(
            (label - (first + last) / 2.0).abs() < 2.0,
            "{label} vs {bars:?}"
        );
        // Ticks at round values: 0, 0.1, ..., 0.5.
        let ticks: Vec<&str> = fig
            .split("class=\"tick\"")
            .skip(1)
            .map(|t| t.split('>').nth(1).unwrap().split('<').next().unwrap())
            .collect();
        assert_eq!(ticks, ["0.0", "0.1", "0.2", "0.3", "0.4", "0.5"], "{fig}");
        // A y-axis title and the better direction of fnr (lower).
        assert!(fig.contains("class=\"y-title\""), "{fig}");
        assert!(
            fig.contains("↓ better<title>lower is better</title>"),
            "{fig}"
        );
        // The zero bar is visible (2 px) and labelled 0.
        let heights: Vec<f64> = fig
            .split("height=\"")
            .skip(2)
            .map(|t| t.split('"').next().unwrap().parse().unwrap())
            .collect();
        assert!(heights.iter().all(|h| *h >= 2.0), "{heights:?}");
        assert!(fig.contains("class=\"bar-value\""), "{fig}");
        assert!(fig.contains(">0</text>"), "{fig}");
        // The headline tables name the better direction.
        assert!(
            html.contains("<td class=l>fnr</td><td class=l>lower</td>"),
            "{html}"
        );
        assert!(markdown::render(&report).contains("| machine_ethics | fnr | lower |"));
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        for (lo, hi) in [
            (0.0, 0.42),
            (0.0, 1.0),
            (-12.5, 30.0),
            (0.0, 0.0137),
            (0.0, 250.0),
        ] {
            let (a, b, t, d) = html::ticks(lo, hi);
            assert!(a <= lo && b >= hi, "{lo} {hi}: {a} {b}");
            assert!(t.len() >= 3 && t.len() <= 7, "{t:?}");
            let step = t[1] - t[0];
            let mag = 10f64.powf(step.log10().floor());
            let m = (step / mag * 10.0).round() / 10.0;
            assert!([1.0, 2.0, 2.5, 5.0].contains(&m), "{step} ({m})");
            for x in &t {
                // Printed with d decimals, every tick is exact.
                let printed: f64 = format!("{x:.d$}").parse().unwrap();
                assert!((printed - x).abs() < 1e-9, "{x} printed as {printed}");
            }
        }
        assert_eq!(html::ticks(0.0, 1.0).2, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
    }

    #[test]
    fn different_sample_counts_are_noted() {
        let same = one_metric_report(&[Some(0.4), Some(0.3)], &[48, 48]);
        assert!(same.notes.is_empty(), "{:?}", same.notes);
        let diff = one_metric_report(&[Some(0.4), Some(0.3)], &[48, 24]);
        assert_eq!(diff.notes.len(), 1);
        assert!(
            diff.notes[0].contains("machine_ethics") && diff.notes[0].contains("base 48, sft 24"),
            "{:?}",
            diff.notes
        );
    }

    #[test]
    fn markdown_tables_after_status_lists_are_separated_by_a_blank_line() {
        let mut report = one_metric_report(&[Some(0.4), Some(0.3)], &[48, 48]);
        report.verticals[0].runs[1].status = "failed".into();
        report.verticals[0].runs[1].note = Some("boom".into());
        let md = markdown::render(&report);
        let section = md.split("## machine_ethics").nth(1).unwrap();
        assert!(
            section.contains("- sft: **failed** (boom)\n\n| metric |"),
            "{section}"
        );
    }

    #[test]
    fn clipped_prompts_start_at_a_word_with_an_ellipsis() {
        let s = "Human: what is the capital of France? Assistant: Paris. Human: and of Spain?";
        for n in [10, 20, 40, 60] {
            let c = clip_start(s, n);
            assert!(c.chars().count() <= n, "{c:?}");
            assert!(c.starts_with('…'), "{c:?}");
            let rest = &c['…'.len_utf8()..];
            assert!(s.ends_with(rest), "{c:?}");
            let at = s.len() - rest.len();
            assert!(
                s[..at].ends_with(char::is_whitespace),
                "{n}: cut mid-word: {c:?}"
            );
        }
        assert_eq!(clip_start(s, 500), s);
        // One long word: cut inside it rather than show nothing.
        assert_eq!(clip_start("abcdefghij", 5), "…ghij");
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape_html("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }
}
