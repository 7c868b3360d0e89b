//! The runner: batches a vertical's requests across samples, streams per-sample records to
//! `samples.jsonl`, writes the manifest, resumes interrupted runs and computes the metrics.
//!
//! Invariants (tested in `tests/runner.rs`):
//! - a sample's randomness comes only from `derive_seed(run_seed, sample_id)`, so batch size,
//!   thread count and resume never change a record;
//! - records are written in sample order, one complete JSON line at a time, so an interrupted run
//!   leaves a prefix; resume keeps every complete line, drops a torn last line and redoes nothing
//!   that was written;
//! - a failing request fails its sample only; failures are listed beside the aggregate.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::DataDir;
use crate::error::{Error, Result};
use crate::manifest::RunManifest;
use crate::metric::{Bootstrap, MetricValue, evaluate};
use crate::model::LanguageModel;
use crate::rng::derive_seed;
use crate::scorer::{Scores, TextScorer};
use crate::vertical::{Outcome, Request, Response, Vertical};

/// File names inside a vertical's output directory.
pub const SAMPLES_FILE: &str = "samples.jsonl";
/// Manifest file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Report file name.
pub const REPORT_FILE: &str = "report.json";

/// One line of `samples.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    /// Sample id.
    pub id: String,
    /// The sample's seed.
    pub seed: u64,
    /// The outcome, when the sample succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Why the sample failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The model's responses (kept so outcomes can be recomputed without the model).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub responses: Vec<Response>,
}

/// A failed sample, listed in reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Sample id.
    pub id: String,
    /// The error.
    pub error: String,
}

/// The result of one vertical run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerticalReport {
    /// The manifest of the run.
    pub manifest: RunManifest,
    /// Samples selected.
    pub n_samples: usize,
    /// Samples scored.
    pub n_ok: usize,
    /// Samples that failed (listed in `failures`).
    pub n_failed: usize,
    /// Replies the vertical's parser could not interpret, over all samples.
    pub n_unparsed: usize,
    /// Metric values with bootstrap intervals.
    pub metrics: Vec<MetricValue>,
    /// The failed samples.
    pub failures: Vec<Failure>,
}

impl VerticalReport {
    /// The value of a metric by name.
    pub fn metric(&self, name: &str) -> Option<&MetricValue> {
        self.metrics.iter().find(|m| m.name == name)
    }
}

/// Observes a run: progress and the stream of records (a sink).
pub trait RunObserver: Send + Sync {
    /// Called once with the number of samples and how many are already done (resume).
    fn start(&self, _vertical: &str, _total: usize, _already_done: usize) {}
    /// Called after each record is written.
    fn record(&self, _record: &SampleRecord) {}
    /// Called when the run ends.
    fn finish(&self, _report: &VerticalReport) {}
}

/// Runs verticals against a model. Build one with [`Runner::builder`].
#[derive(Clone)]
pub struct Runner {
    batch_size: usize,
    scorer_batch_size: usize,
    seed: u64,
    out_dir: Option<PathBuf>,
    resume: bool,
    retry_errors: bool,
    limit: Option<usize>,
    sample: Option<usize>,
    stop_after: Option<usize>,
    bootstrap_resamples: usize,
    observer: Option<Arc<dyn RunObserver>>,
}

/// Builder of a [`Runner`].
#[derive(Clone)]
pub struct RunnerBuilder(Runner);

impl RunnerBuilder {
    /// Requests per model call (default 8).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.0.batch_size = n.max(1);
        self
    }
    /// Texts per scorer call (default 32).
    pub fn scorer_batch_size(mut self, n: usize) -> Self {
        self.0.scorer_batch_size = n.max(1);
        self
    }
    /// Run seed (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.0.seed = seed;
        self
    }
    /// Write `<dir>/<vertical>/{manifest.json,samples.jsonl,report.json}`.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.0.out_dir = Some(dir.into());
        self
    }
    /// Continue a run found in the output directory instead of refusing to overwrite it.
    pub fn resume(mut self, yes: bool) -> Self {
        self.0.resume = yes;
        self
    }
    /// On resume, redo the samples recorded as failed instead of keeping their failure. The
    /// failed records are dropped from `samples.jsonl` before the run continues, and the file is
    /// rewritten in sample order at the end, so it equals a fresh run's.
    pub fn retry_errors(mut self, yes: bool) -> Self {
        self.0.retry_errors = yes;
        self
    }
    /// Use only the first `n` samples.
    pub fn limit(mut self, n: Option<usize>) -> Self {
        self.0.limit = n;
        self
    }
    /// Use a seeded stratified subset of `n` samples ([`crate::subset::stratified_subset`] over
    /// [`Vertical::stratum`], seeded from the run seed), kept in data order; `limit` then
    /// applies to it. Every model run with the same seed and `n` answers the same samples, so
    /// checkpoints can be compared sample by sample.
    pub fn sample(mut self, n: Option<usize>) -> Self {
        self.0.sample = n;
        self
    }
    /// Stop with [`Error::Interrupted`] after writing `n` records (simulates a crash; tests).
    pub fn stop_after(mut self, n: Option<usize>) -> Self {
        self.0.stop_after = n;
        self
    }
    /// Bootstrap resamples for confidence intervals (default 1000; 0 = none).
    pub fn bootstrap_resamples(mut self, n: usize) -> Self {
        self.0.bootstrap_resamples = n;
        self
    }
    /// Progress / record observer.
    pub fn observer(mut self, o: Arc<dyn RunObserver>) -> Self {
        self.0.observer = Some(o);
        self
    }
    /// The runner.
    pub fn build(self) -> Runner {
        self.0
    }
}

impl Runner {
    /// A builder with defaults.
    pub fn builder() -> RunnerBuilder {
        RunnerBuilder(Runner {
            batch_size: 8,
            scorer_batch_size: 32,
            seed: 0,
            out_dir: None,
            resume: false,
            retry_errors: false,
            limit: None,
            sample: None,
            stop_after: None,
            bootstrap_resamples: 1000,
            observer: None,
        })
    }

    /// The run seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Builds the manifest this runner would write for `vertical` on `model`.
    pub fn manifest<V: Vertical>(
        &self,
        vertical: &V,
        model: &dyn LanguageModel,
        scorer: Option<&dyn TextScorer>,
        data: &DataDir,
    ) -> Result<RunManifest> {
        let mut data_files = BTreeMap::new();
        for rel in vertical.data_files() {
            let check = data.check(&rel)?;
            data_files.insert(rel, check.sha256);
        }
        Ok(RunManifest {
            trust_version: env!("CARGO_PKG_VERSION").to_string(),
            vertical: vertical.name().to_string(),
            vertical_version: vertical.version().to_string(),
            protocol: vertical.protocol().to_string(),
            options: vertical.options(),
            data_files,
            model: model.info(),
            scorer: scorer.map(|s| s.info()),
            seed: self.seed,
            limit: self.limit,
            sample: self.sample,
            batch_size: self.batch_size,
            resumed_with: Vec::new(),
        })
    }

    /// Checks requirements before anything is sent.
    pub fn check_requirements<V: Vertical>(
        vertical: &V,
        model: &dyn LanguageModel,
        scorer: Option<&dyn TextScorer>,
    ) -> Result<()> {
        let req = vertical.requirements();
        let caps = model.capabilities();
        for cap in req.capabilities {
            if !caps.has(cap) {
                return Err(Error::MissingCapability {
                    vertical: vertical.name().to_string(),
                    protocol: vertical.protocol().to_string(),
                    capability: cap,
                    model: model.info().id,
                });
            }
        }
        if req.scorer && scorer.is_none() {
            return Err(Error::MissingScorer {
                vertical: vertical.name().to_string(),
            });
        }
        Ok(())
    }

    /// Runs `vertical` on `model` (and `scorer`, if the vertical needs one).
    pub async fn run<V: Vertical>(
        &self,
        vertical: &V,
        model: &dyn LanguageModel,
        scorer: Option<&dyn TextScorer>,
        data: &DataDir,
    ) -> Result<VerticalReport> {
        Self::check_requirements(vertical, model, scorer)?;
        let mut samples = vertical.load(data)?;
        if let Some(n) = self.sample {
            let strata: Vec<String> = samples.iter().map(|s| vertical.stratum(s)).collect();
            let keep = crate::subset::stratified_subset(
                &strata,
                n,
                crate::rng::derive_seed(self.seed, &format!("sample/{}", vertical.name())),
            );
            let mut keep = keep.into_iter().peekable();
            let mut i = 0usize;
            samples.retain(|_| {
                let k = keep.peek() == Some(&i);
                if k {
                    keep.next();
                }
                i += 1;
                k
            });
        }
        if let Some(n) = self.limit {
            samples.truncate(n);
        }
        // Every id of the vertical, before any subset: a resumed record outside the current
        // subset is kept (a smaller --limit), one outside the data is reported.
        let all_ids: HashSet<String> = if self.out_dir.is_some() && self.resume {
            vertical
                .load(data)?
                .iter()
                .map(|s| vertical.sample_id(s))
                .collect()
        } else {
            HashSet::new()
        };
        let ids: Vec<String> = samples.iter().map(|s| vertical.sample_id(s)).collect();
        let mut seen = HashSet::new();
        for id in &ids {
            if !seen.insert(id.as_str()) {
                return Err(Error::Config(format!(
                    "vertical `{}` produced the sample id `{id}` twice; ids must be unique",
                    vertical.name()
                )));
            }
        }
        let mut manifest = self.manifest(vertical, model, scorer, data)?;

        let dir = self.out_dir.as_ref().map(|d| d.join(vertical.name()));
        let mut done: HashMap<String, SampleRecord> = HashMap::new();
        let mut sink = None;
        let mut retried = false;
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let mpath = dir.join(MANIFEST_FILE);
            let spath = dir.join(SAMPLES_FILE);
            if mpath.exists() || spath.exists() {
                if !self.resume {
                    return Err(Error::OutputExists(dir.clone()));
                }
                let records = read_records_repairing(&spath)?;
                if mpath.exists() {
                    let on_disk = RunManifest::read(&mpath)?;
                    on_disk.check_resumable(&manifest, &mpath)?;
                    // Record this invocation's batch size / version when they differ, and
                    // report what the manifest says.
                    manifest = match on_disk.with_resumption(&manifest) {
                        Some(updated) => {
                            updated.write(&mpath)?;
                            updated
                        }
                        None => on_disk,
                    };
                } else if !records.is_empty() {
                    return Err(Error::Config(format!(
                        "{} holds {} records but {} is missing, so the settings that produced \
                         them are unknown; resuming would mix them with this run's. Move the \
                         folder away or delete {} to start over",
                        spath.display(),
                        records.len(),
                        mpath.display(),
                        dir.display()
                    )));
                } else {
                    manifest.write(&mpath)?;
                }
                check_resumed_records(&records, &all_ids, self.seed, &spath)?;
                let n_read = records.len();
                let kept: Vec<SampleRecord> = records
                    .into_iter()
                    .filter(|r| !(self.retry_errors && r.error.is_some()))
                    .collect();
                if kept.len() < n_read {
                    write_records(&spath, kept.iter())?;
                    retried = true;
                }
                for rec in kept {
                    done.insert(rec.id.clone(), rec);
                }
            } else {
                manifest.write(&mpath)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&spath)
                .map_err(|e| Error::io(&spath, e))?;
            sink = Some((spath, std::io::BufWriter::new(file)));
        }

        if let Some(o) = &self.observer {
            o.start(
                vertical.name(),
                samples.len(),
                ids.iter().filter(|id| done.contains_key(*id)).count(),
            );
        }

        let pending: Vec<usize> = (0..samples.len())
            .filter(|&i| !done.contains_key(&ids[i]))
            .collect();
        let chunk = self.batch_size * 8;
        let mut written = 0usize;
        for part in pending.chunks(chunk) {
            let records = self
                .process(vertical, model, scorer, &samples, &ids, part)
                .await;
            for rec in records {
                if let Some((path, w)) = sink.as_mut() {
                    let mut line =
                        serde_json::to_string(&rec).map_err(|e| Error::json("sample record", e))?;
                    line.push('\n');
                    w.write_all(line.as_bytes())
                        .and_then(|_| w.flush())
                        .map_err(|e| Error::io(&*path, e))?;
                }
                if let Some(o) = &self.observer {
                    o.record(&rec);
                }
                done.insert(rec.id.clone(), rec);
                written += 1;
                if self.stop_after == Some(written) {
                    return Err(Error::Interrupted { written });
                }
            }
        }

        let ordered: Vec<&SampleRecord> = ids.iter().filter_map(|id| done.get(id)).collect();
        if retried && let Some((path, w)) = sink.take() {
            drop(w);
            write_records(&path, ordered.iter().copied())?;
        }
        let report = build_report(vertical, manifest, &ordered, self.bootstrap_resamples);
        if let Some(dir) = &dir {
            let p = dir.join(REPORT_FILE);
            let text =
                serde_json::to_string_pretty(&report).map_err(|e| Error::json("report", e))?;
            crate::fsutil::write_atomic(&p, text + "\n").map_err(|e| Error::io(&p, e))?;
        }
        if let Some(o) = &self.observer {
            o.finish(&report);
        }
        Ok(report)
    }

    /// Sends the requests of the samples `part` in batches and scores them.
    async fn process<V: Vertical>(
        &self,
        vertical: &V,
        model: &dyn LanguageModel,
        scorer: Option<&dyn TextScorer>,
        samples: &[V::Sample],
        ids: &[String],
        part: &[usize],
    ) -> Vec<SampleRecord> {
        let seeds: Vec<u64> = part
            .iter()
            .map(|&i| derive_seed(self.seed, &ids[i]))
            .collect();
        let requests: Vec<Vec<Request>> = part
            .iter()
            .zip(&seeds)
            .map(|(&i, &s)| vertical.requests(&samples[i], s))
            .collect();
        let mut answers: Vec<Vec<Option<std::result::Result<Response, String>>>> =
            requests.iter().map(|r| vec![None; r.len()]).collect();

        let mut gens = Vec::new();
        let mut lls = Vec::new();
        for (si, reqs) in requests.iter().enumerate() {
            for (ri, r) in reqs.iter().enumerate() {
                match r {
                    Request::Generate(g) => gens.push(((si, ri), g.clone())),
                    Request::LogLikelihood(l) => lls.push(((si, ri), l.clone())),
                }
            }
        }
        for batch in gens.chunks(self.batch_size) {
            let reqs: Vec<_> = batch.iter().map(|(_, r)| r.clone()).collect();
            let out = model.generate(&reqs).await;
            fill(&mut answers, batch, out, Response::Generate);
        }
        for batch in lls.chunks(self.batch_size) {
            let reqs: Vec<_> = batch.iter().map(|(_, r)| r.clone()).collect();
            let out = model.loglikelihood(&reqs).await;
            fill(&mut answers, batch, out, Response::LogLikelihood);
        }

        // Collect responses, then the texts to score across the whole part.
        let mut responses: Vec<std::result::Result<Vec<Response>, String>> = Vec::new();
        for a in answers {
            responses.push(
                a.into_iter()
                    .map(|x| x.unwrap_or_else(|| Err("no answer".into())))
                    .collect(),
            );
        }
        let texts: Vec<Vec<String>> = part
            .iter()
            .zip(&responses)
            .map(|(&i, r)| match r {
                Ok(r) => vertical.texts_to_score(&samples[i], r),
                Err(_) => Vec::new(),
            })
            .collect();
        let flat: Vec<String> = texts.iter().flatten().cloned().collect();
        let mut scores: Vec<std::result::Result<Scores, String>> = Vec::with_capacity(flat.len());
        if !flat.is_empty() {
            match scorer {
                Some(s) => {
                    for batch in flat.chunks(self.scorer_batch_size) {
                        let out = s.score(batch).await;
                        if out.len() != batch.len() {
                            let e = format!(
                                "scorer returned {} results for {} texts",
                                out.len(),
                                batch.len()
                            );
                            scores.extend(batch.iter().map(|_| Err(e.clone())));
                        } else {
                            scores.extend(out.into_iter().map(|r| r.map_err(|e| e.to_string())));
                        }
                    }
                }
                None => scores.extend(flat.iter().map(|_| Err("no scorer configured".to_string()))),
            }
        }

        let scorer_labels = scorer.map(|s| s.info().labels).unwrap_or_default();
        let mut out = Vec::with_capacity(part.len());
        let mut offset = 0;
        for (k, &i) in part.iter().enumerate() {
            let n_texts = texts[k].len();
            let my_scores = &scores[offset..offset + n_texts];
            offset += n_texts;
            let id = ids[i].clone();
            let seed = seeds[k];
            let rec = match &responses[k] {
                Err(e) => SampleRecord {
                    id,
                    seed,
                    outcome: None,
                    error: Some(e.clone()),
                    responses: Vec::new(),
                },
                Ok(resp) => {
                    let scored: std::result::Result<Vec<Scores>, String> =
                        my_scores.iter().cloned().collect();
                    let ctx = crate::vertical::ScoreContext::new(seed, &scorer_labels);
                    match scored.and_then(|s| vertical.score_in(&samples[i], &ctx, resp, &s)) {
                        Ok(o) => SampleRecord {
                            id,
                            seed,
                            outcome: Some(o),
                            error: None,
                            responses: resp.clone(),
                        },
                        Err(e) => SampleRecord {
                            id,
                            seed,
                            outcome: None,
                            error: Some(e),
                            responses: resp.clone(),
                        },
                    }
                }
            };
            out.push(rec);
        }
        out
    }
}

/// The records of a resumed `samples.jsonl` must be this vertical's samples, once each, with
/// this run's sample seeds (else they came from another run or were edited).
fn check_resumed_records(
    records: &[SampleRecord],
    all_ids: &HashSet<String>,
    seed: u64,
    path: &Path,
) -> Result<()> {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        let n = i + 1;
        if let Some(prev) = first.insert(r.id.as_str(), n) {
            return Err(Error::Config(format!(
                "{}: sample `{}` is recorded twice (records {prev} and {n}); the file was \
                 edited or written by two runs at once",
                path.display(),
                r.id
            )));
        }
        if !all_ids.is_empty() && !all_ids.contains(&r.id) {
            return Err(Error::Config(format!(
                "{}: record {n} has id `{}`, which is not a sample of this vertical's data",
                path.display(),
                r.id
            )));
        }
        let want = derive_seed(seed, &r.id);
        if r.seed != want {
            return Err(Error::Config(format!(
                "{}: record {n} (`{}`) has seed {} but this run's seed gives {want}; it comes \
                 from a run with another --seed",
                path.display(),
                r.id,
                r.seed
            )));
        }
    }
    Ok(())
}

type Answers = Vec<Vec<Option<std::result::Result<Response, String>>>>;

fn fill<T, R>(
    answers: &mut Answers,
    batch: &[((usize, usize), R)],
    out: Vec<std::result::Result<T, crate::error::ModelError>>,
    wrap: fn(T) -> Response,
) {
    if out.len() != batch.len() {
        let e = format!(
            "backend returned {} results for {} requests",
            out.len(),
            batch.len()
        );
        for ((si, ri), _) in batch {
            answers[*si][*ri] = Some(Err(e.clone()));
        }
        return;
    }
    for (((si, ri), _), r) in batch.iter().zip(out) {
        answers[*si][*ri] = Some(r.map(wrap).map_err(|e| e.to_string()));
    }
}

/// Metrics and failure list from records (ordered as the samples).
pub fn build_report<V: Vertical>(
    vertical: &V,
    manifest: RunManifest,
    records: &[&SampleRecord],
    bootstrap_resamples: usize,
) -> VerticalReport {
    let outcomes: Vec<&Outcome> = records.iter().filter_map(|r| r.outcome.as_ref()).collect();
    let boot = Bootstrap {
        resamples: bootstrap_resamples,
        confidence: 0.95,
        seed: derive_seed(manifest.seed, &format!("bootstrap/{}", manifest.vertical)),
    };
    let metrics = vertical
        .metrics()
        .iter()
        .map(|m| evaluate(m.as_ref(), &outcomes, &boot))
        .collect();
    let failures: Vec<Failure> = records
        .iter()
        .filter_map(|r| {
            r.error.as_ref().map(|e| Failure {
                id: r.id.clone(),
                error: e.clone(),
            })
        })
        .collect();
    VerticalReport {
        n_samples: records.len(),
        n_ok: outcomes.len(),
        n_failed: failures.len(),
        n_unparsed: outcomes.iter().map(|o| o.unparsed).sum(),
        metrics,
        failures,
        manifest,
    }
}

/// Replaces `path` with `records`, one JSON line each (through a temporary file and a rename).
fn write_records<'a>(path: &Path, records: impl Iterator<Item = &'a SampleRecord>) -> Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).map_err(|e| Error::json("sample record", e))?);
        text.push('\n');
    }
    crate::fsutil::write_atomic(path, text).map_err(|e| Error::io(path, e))
}

/// Reads `samples.jsonl`, truncating a torn (incomplete or unparsable) last line left by a crash.
/// A bad line that is not the last one is an error naming it.
pub fn read_records_repairing(path: &Path) -> Result<Vec<SampleRecord>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut records = Vec::new();
    let mut good_len = 0usize;
    let mut start = 0usize;
    let mut line_no = 0usize;
    while start < bytes.len() {
        line_no += 1;
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| start + p);
        let Some(end) = end else { break }; // torn last line: no newline
        let line = &bytes[start..end];
        match serde_json::from_slice::<SampleRecord>(line) {
            Ok(r) => records.push(r),
            Err(e) => {
                if end + 1 < bytes.len() {
                    return Err(Error::data(path, line_no, "<row>", e.to_string()));
                }
                break;
            }
        }
        start = end + 1;
        good_len = start;
    }
    if good_len < bytes.len() {
        tracing::warn!(
            "{}: dropping a torn last line left by an interrupted run",
            path.display()
        );
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        f.set_len(good_len as u64).map_err(|e| Error::io(path, e))?;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resume recomputes metrics from `samples.jsonl`, so per-sample values must survive a JSON
    /// round trip bit for bit (serde_json's `float_roundtrip` feature).
    #[test]
    fn outcome_values_round_trip_through_json_exactly() {
        let mut rng = crate::rng::SplitMix64::new(42);
        for _ in 0..10_000 {
            let x =
                f64::from_bits(rng.next_u64() >> 2) * if rng.below(2) == 0 { 1.0 } else { -1.0 };
            if !x.is_finite() {
                continue;
            }
            let mut o = Outcome::default();
            o.values.insert("v".into(), x);
            let back: Outcome = serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
            assert_eq!(back.values["v"].to_bits(), x.to_bits(), "{x:e}");
        }
    }
}
