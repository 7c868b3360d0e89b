//! `trust eval` polish: an indicatif progress bar with ETA per vertical (a [`RunObserver`]) and
//! `--dry-run` (the requests the first samples would send, without a model).

use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use trust_core::model::{
    Capabilities, Capability, GenerateRequest, GenerateResponse, LogLikelihood,
    LogLikelihoodRequest, ModelInfo,
};
use trust_core::testing::MockScorer;
use trust_core::{
    DataDir, LanguageModel, ModelError, RunObserver, Runner, SampleRecord, VerticalReport,
};
use trust_verticals::registry::{self, BuildOptions};

/// One progress bar per vertical on stderr (drawn only when stderr is a terminal).
pub struct Progress {
    enabled: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Progress {
    /// Bars when `enabled`.
    pub fn new(enabled: bool) -> Self {
        Progress {
            enabled,
            bar: Mutex::new(None),
        }
    }
}

impl RunObserver for Progress {
    fn start(&self, vertical: &str, total: usize, already_done: usize) {
        if !self.enabled {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:>15} [{elapsed_precise}] {wide_bar} {pos}/{len} samples, ETA {eta}",
        ) {
            bar.set_style(style);
        }
        bar.set_prefix(vertical.to_string());
        bar.set_position(already_done as u64);
        bar.reset_eta();
        *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
    }
    fn record(&self, _record: &SampleRecord) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            b.inc(1);
        }
    }
    fn finish(&self, report: &VerticalReport) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // The bar is cleared and replaced by one ended line that stays in the scrollback.
            let elapsed = b.elapsed();
            b.finish_and_clear();
            eprintln!("{}", finish_line(report, elapsed));
        }
    }
}

/// `  toxicity done: 48 samples (46 ok, 2 failed, 1 unparsed) in 1m 02s`.
fn finish_line(report: &VerticalReport, elapsed: std::time::Duration) -> String {
    let secs = elapsed.as_secs();
    let took = if secs >= 60 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", elapsed.as_secs_f64())
    };
    format!(
        "{:>15} done: {} samples ({} ok, {} failed, {} unparsed) in {took}",
        report.manifest.vertical, report.n_samples, report.n_ok, report.n_failed, report.n_unparsed
    )
}

/// Records every request it receives and answers none (each fails with "dry run").
#[derive(Default)]
struct Recorder {
    requests: Mutex<Vec<serde_json::Value>>,
}

#[async_trait::async_trait]
impl LanguageModel for Recorder {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            id: "dry-run".into(),
            backend: "dry-run".into(),
            ..ModelInfo::default()
        }
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::of(&[
            Capability::Generate,
            Capability::Sampling,
            Capability::BeamSearch,
            Capability::LogLikelihood,
        ])
    }
    async fn generate(
        &self,
        requests: &[GenerateRequest],
    ) -> Vec<Result<GenerateResponse, ModelError>> {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for q in requests {
            r.push(json!({"kind": "generate", "request": q}));
        }
        requests
            .iter()
            .map(|_| Err(ModelError::InvalidRequest("dry run".into())))
            .collect()
    }
    async fn loglikelihood(
        &self,
        requests: &[LogLikelihoodRequest],
    ) -> Vec<Result<LogLikelihood, ModelError>> {
        let mut r = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for q in requests {
            r.push(json!({"kind": "loglikelihood", "request": q}));
        }
        requests
            .iter()
            .map(|_| Err(ModelError::InvalidRequest("dry run".into())))
            .collect()
    }
}

/// `trust eval --dry-run`: prints one JSON line per request the first `n` samples of each
/// vertical would send (`{"vertical", "protocol", "kind", "request"}`), in the order the runner
/// sends them, with the seeds of a real run. No model is loaded and nothing is written.
pub async fn dry_run(
    verticals: &[String],
    default_protocol: &str,
    overrides: &[(String, String)],
    samples: Option<usize>,
    n: usize,
    seed: u64,
    data: &DataDir,
) -> anyhow::Result<()> {
    let mock = MockScorer::default();
    for name in verticals {
        let protocol = overrides
            .iter()
            .rev()
            .find(|(v, _)| v == name)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| default_protocol.to_string());
        if !registry::protocols(name)
            .unwrap_or_default()
            .contains(&protocol)
        {
            eprintln!("skipping {name}: no protocol `{protocol}`");
            continue;
        }
        // The dry run never scores; the scorer label is only checked by a real run.
        let opts = BuildOptions {
            samples,
            scorer_label: None,
            scorer: None,
            ..Default::default()
        };
        let vertical = registry::build(name, &protocol, &opts)?;
        let recorder = Arc::new(Recorder::default());
        let runner = Runner::builder()
            .seed(seed)
            .limit(Some(n))
            .bootstrap_resamples(0)
            .build();
        let scorer: Option<&dyn trust_core::TextScorer> =
            vertical.requirements().scorer.then_some(&mock as _);
        vertical
            .run(&runner, recorder.as_ref(), scorer, data)
            .await?;
        for r in recorder
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let mut line = json!({"vertical": name, "protocol": protocol});
            if let (Some(o), serde_json::Value::Object(m)) = (line.as_object_mut(), r) {
                o.extend(m);
            }
            println!("{line}");
        }
    }
    Ok(())
}
