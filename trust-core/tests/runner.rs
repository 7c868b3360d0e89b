//! Runner invariants: resume is lossless and byte-identical, batch size never changes results,
//! failures are per sample, capability mismatches fail before any request, caches never store
//! errors.

use std::sync::Arc;

use trust_core::metric::{LabelRate, MeanOf};
use trust_core::testing::{MockModel, MockScorer};
use trust_core::{
    Cached, Capability, DataDir, DecodingConfig, Error, GenerateRequest, LanguageModel,
    LogLikelihoodRequest, MemoryCache, Metric, Outcome, Request, Requirements, Response, Runner,
    Scores, Vertical,
};

/// A small vertical over a synthetic data file: sampled generation (2 samples per prompt), a
/// log-likelihood request and scorer texts, so every runner path is exercised.
struct Toy {
    rows: usize,
}

const FILE: &str = "toy/prompts.txt";

impl Vertical for Toy {
    type Sample = (usize, String);
    fn name(&self) -> &str {
        "toy"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn protocol(&self) -> &str {
        "test"
    }
    fn options(&self) -> serde_json::Value {
        serde_json::json!({"rows": self.rows})
    }
    fn requirements(&self) -> Requirements {
        Requirements {
            capabilities: vec![Capability::Sampling, Capability::LogLikelihood],
            scorer: true,
        }
    }
    fn data_files(&self) -> Vec<String> {
        vec![FILE.into()]
    }
    fn load(&self, data: &DataDir) -> trust_core::Result<Vec<Self::Sample>> {
        Ok(data
            .read_to_string(FILE)?
            .lines()
            .take(self.rows)
            .map(str::to_string)
            .enumerate()
            .collect())
    }
    fn sample_id(&self, s: &Self::Sample) -> String {
        format!("toy/{:03}", s.0)
    }
    fn requests(&self, s: &Self::Sample, seed: u64) -> Vec<Request> {
        vec![
            Request::Generate(GenerateRequest {
                prompt: s.1.clone(),
                config: DecodingConfig::sampled(8, 0.7, 0.9, 2),
                seed,
            }),
            Request::LogLikelihood(LogLikelihoodRequest {
                context: s.1.clone(),
                continuation: " yes no".into(),
            }),
        ]
    }
    fn texts_to_score(&self, _s: &Self::Sample, r: &[Response]) -> Vec<String> {
        r[0].texts().into_iter().map(str::to_string).collect()
    }
    fn score(
        &self,
        _s: &Self::Sample,
        r: &[Response],
        scores: &[Scores],
    ) -> Result<Outcome, String> {
        let texts = r[0].texts();
        let mut o = Outcome {
            labels: texts
                .iter()
                .map(|t| {
                    if t.contains("yes") {
                        "yes".into()
                    } else {
                        "other".into()
                    }
                })
                .collect(),
            ..Default::default()
        };
        o.values.insert(
            "max_score".into(),
            scores.iter().map(|s| s.values[0]).fold(0.0, f64::max),
        );
        o.values
            .insert("ll".into(), r[1].loglikelihood().ok_or("no loglik")?.sum);
        o.unparsed = texts.iter().filter(|t| t.is_empty()).count();
        Ok(o)
    }
    fn metrics(&self) -> Vec<Box<dyn Metric>> {
        vec![
            Box::new(MeanOf {
                name: "mean_ll".into(),
                key: "ll".into(),
            }),
            Box::new(MeanOf {
                name: "emt".into(),
                key: "max_score".into(),
            }),
            Box::new(LabelRate {
                name: "yes_rate".into(),
                labels: vec!["yes".into()],
                exclude: vec![],
            }),
        ]
    }
}

fn data_dir(rows: usize) -> (tempfile::TempDir, DataDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("toy")).unwrap();
    let text: String = (0..rows)
        .map(|i| format!("prompt number {i} says idiot things?\n"))
        .collect();
    std::fs::write(dir.path().join(FILE), text).unwrap();
    let d = DataDir::new(dir.path()).unwrap();
    (dir, d)
}

fn read(dir: &std::path::Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join("toy").join(file)).unwrap()
}

#[tokio::test]
async fn interrupted_then_resumed_run_is_byte_identical() {
    let (_d, data) = data_dir(30);
    let model = MockModel::new();
    let scorer = MockScorer::default();
    let v = Toy { rows: 30 };

    let full = tempfile::tempdir().unwrap();
    let runner = Runner::builder()
        .batch_size(4)
        .seed(9)
        .out_dir(full.path())
        .build();
    let report_full = runner.run(&v, &model, Some(&scorer), &data).await.unwrap();
    assert_eq!(report_full.n_ok, 30);

    let part = tempfile::tempdir().unwrap();
    let crashing = Runner::builder()
        .batch_size(4)
        .seed(9)
        .out_dir(part.path())
        .stop_after(Some(11))
        .build();
    let err = crashing
        .run(&v, &model, Some(&scorer), &data)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Interrupted { written: 11 }), "{err}");
    // Simulate a torn write of the 12th line.
    let samples = part.path().join("toy/samples.jsonl");
    let mut bytes = std::fs::read(&samples).unwrap();
    assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 11);
    bytes.extend_from_slice(b"{\"id\":\"toy/011\",\"se");
    std::fs::write(&samples, bytes).unwrap();

    // Without --resume the existing output is protected.
    let again = Runner::builder()
        .batch_size(4)
        .seed(9)
        .out_dir(part.path())
        .build();
    assert!(matches!(
        again.run(&v, &model, Some(&scorer), &data).await,
        Err(Error::OutputExists(_))
    ));

    let calls_before = model.calls();
    let resumed = Runner::builder()
        .batch_size(4)
        .seed(9)
        .out_dir(part.path())
        .resume(true)
        .build();
    let report_resumed = resumed.run(&v, &model, Some(&scorer), &data).await.unwrap();
    // 19 samples redone: ceil(19/4) generate + ceil(19/4) loglik batches; nothing already written is redone.
    assert_eq!(model.calls() - calls_before, 2 * 19usize.div_ceil(4));
    assert_eq!(
        read(full.path(), "samples.jsonl"),
        read(part.path(), "samples.jsonl")
    );
    assert_eq!(
        read(full.path(), "report.json"),
        read(part.path(), "report.json")
    );
    assert_eq!(report_full, report_resumed);
}

#[tokio::test]
async fn batch_size_does_not_change_results() {
    let (_d, data) = data_dir(20);
    let model = MockModel::new();
    let scorer = MockScorer::default();
    let v = Toy { rows: 20 };
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    Runner::builder()
        .batch_size(1)
        .out_dir(a.path())
        .build()
        .run(&v, &model, Some(&scorer), &data)
        .await
        .unwrap();
    Runner::builder()
        .batch_size(8)
        .out_dir(b.path())
        .build()
        .run(&v, &model, Some(&scorer), &data)
        .await
        .unwrap();
    assert_eq!(
        read(a.path(), "samples.jsonl"),
        read(b.path(), "samples.jsonl")
    );
    assert_eq!(
        read(a.path(), "report.json").len(),
        read(b.path(), "report.json").len()
    );
    let ra: serde_json::Value = serde_json::from_slice(&read(a.path(), "report.json")).unwrap();
    let rb: serde_json::Value = serde_json::from_slice(&read(b.path(), "report.json")).unwrap();
    assert_eq!(ra["metrics"], rb["metrics"]);
    assert!(model.batch_sizes().contains(&8) && model.batch_sizes().contains(&1));
}

#[tokio::test]
async fn resume_with_other_options_names_the_field() {
    let (_d, data) = data_dir(10);
    let model = MockModel::new();
    let scorer = MockScorer::default();
    let out = tempfile::tempdir().unwrap();
    let r = Runner::builder()
        .out_dir(out.path())
        .stop_after(Some(3))
        .build();
    let _ = r.run(&Toy { rows: 10 }, &model, Some(&scorer), &data).await;
    let r2 = Runner::builder().out_dir(out.path()).resume(true).build();
    let err = r2
        .run(&Toy { rows: 9 }, &model, Some(&scorer), &data)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("options.rows") && msg.contains("10") && msg.contains('9'),
        "{msg}"
    );
    let r3 = Runner::builder()
        .out_dir(out.path())
        .resume(true)
        .seed(5)
        .build();
    let msg = r3
        .run(&Toy { rows: 10 }, &model, Some(&scorer), &data)
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("`seed`"), "{msg}");
}

#[tokio::test]
async fn failures_are_per_sample_and_listed() {
    let (_d, data) = data_dir(6);
    let model = MockModel::new().fail_on("number 3 ");
    let scorer = MockScorer::default();
    let report = Runner::builder()
        .batch_size(4)
        .build()
        .run(&Toy { rows: 6 }, &model, Some(&scorer), &data)
        .await
        .unwrap();
    assert_eq!((report.n_samples, report.n_ok, report.n_failed), (6, 5, 1));
    assert_eq!(report.failures[0].id, "toy/003");
    assert!(report.failures[0].error.contains("scripted failure"));
    assert_eq!(report.metric("emt").unwrap().n, 5);
}

#[tokio::test]
async fn capability_and_scorer_mismatch_fail_before_any_request() {
    let (_d, data) = data_dir(3);
    let chat_like =
        MockModel::new().with_capabilities(&[Capability::Generate, Capability::Sampling]);
    let scorer = MockScorer::default();
    let err = Runner::builder()
        .build()
        .run(&Toy { rows: 3 }, &chat_like, Some(&scorer), &data)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingCapability {
                capability: Capability::LogLikelihood,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("log-likelihood"));
    assert_eq!(chat_like.calls(), 0);
    let model = MockModel::new();
    let err = Runner::builder()
        .build()
        .run(&Toy { rows: 3 }, &model, None, &data)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::MissingScorer { .. }));
    assert_eq!(model.calls(), 0);
}

#[tokio::test]
async fn report_values_match_a_hand_computation() {
    let (_d, data) = data_dir(4);
    let model = MockModel::new()
        .rule("number 2 ", "yes idiot")
        .rule("prompt", "calm words here");
    let scorer = MockScorer::default();
    let report = Runner::builder()
        .bootstrap_resamples(200)
        .build()
        .run(&Toy { rows: 4 }, &model, Some(&scorer), &data)
        .await
        .unwrap();
    // Sample 2 replies "yes idiot" twice (score 0.5); the others "calm words here" (score 0).
    assert_eq!(report.metric("emt").unwrap().value, Some(0.5 / 4.0));
    assert_eq!(report.metric("yes_rate").unwrap().value, Some(2.0 / 8.0));
    let m = report.metric("emt").unwrap();
    assert!(m.ci_low.unwrap() <= 0.125 && m.ci_high.unwrap() >= 0.125);
}

#[tokio::test]
async fn cache_answers_repeats_and_never_stores_errors() {
    let model = Arc::new(MockModel::new().fail_on("bad"));
    let cached = Cached::new(model.clone(), MemoryCache::default());
    let reqs = vec![
        GenerateRequest {
            prompt: "good".into(),
            config: DecodingConfig::greedy(4),
            seed: 1,
        },
        GenerateRequest {
            prompt: "bad".into(),
            config: DecodingConfig::greedy(4),
            seed: 1,
        },
        GenerateRequest {
            prompt: "good".into(),
            config: DecodingConfig::sampled(4, 1.0, 1.0, 1),
            seed: 1,
        },
    ];
    let first = cached.generate(&reqs).await;
    assert!(first[1].is_err());
    let second = cached.generate(&reqs).await;
    assert_eq!(
        cached.hits(),
        2,
        "the two successes are cached, the error is not"
    );
    assert_eq!(first[0], second[0]);
    assert_eq!(first[2], second[2]);
    // Greedy ignores the seed in the key; sampled decoding does not.
    let greedy_other_seed = GenerateRequest {
        seed: 2,
        ..reqs[0].clone()
    };
    let sampled_other_seed = GenerateRequest {
        seed: 2,
        ..reqs[2].clone()
    };
    cached
        .generate(&[greedy_other_seed, sampled_other_seed])
        .await;
    assert_eq!(cached.hits(), 3);
    assert_eq!(cached.lookups(), 8);
}

#[test]
fn cache_keys_separate_what_can_change_a_generation() {
    let info = trust_core::testing::MockModel::new().info();
    let req = GenerateRequest {
        prompt: "p".into(),
        config: DecodingConfig::greedy(4),
        seed: 0,
    };
    let key = trust_core::cache::cache_key(&info, &req);
    assert_eq!(key.len(), 64);
    let other_dtype = trust_core::ModelInfo {
        details: format!("{} dtype=bf16", info.details),
        ..info.clone()
    };
    let other_weights = trust_core::ModelInfo {
        weights_sha256: Some("00".repeat(32)),
        ..info.clone()
    };
    let longer = GenerateRequest {
        config: DecodingConfig::greedy(5),
        ..req.clone()
    };
    for (what, k) in [
        ("details", trust_core::cache::cache_key(&other_dtype, &req)),
        (
            "weights",
            trust_core::cache::cache_key(&other_weights, &req),
        ),
        ("decoding", trust_core::cache::cache_key(&info, &longer)),
    ] {
        assert_ne!(k, key, "{what} must change the key");
    }
}

#[tokio::test]
async fn dir_cache_survives_a_new_wrapper() {
    let dir = tempfile::tempdir().unwrap();
    let req = GenerateRequest {
        prompt: "p".into(),
        config: DecodingConfig::greedy(4),
        seed: 0,
    };
    let a = Cached::new(
        MockModel::new(),
        trust_core::DirCache::new(dir.path()).unwrap(),
    );
    let ra = a.generate(std::slice::from_ref(&req)).await;
    let b = Cached::new(
        MockModel::new().rule("p", "different"),
        trust_core::DirCache::new(dir.path()).unwrap(),
    );
    let rb = b.generate(std::slice::from_ref(&req)).await;
    assert_eq!(b.hits(), 1);
    assert_eq!(ra, rb);
}

#[tokio::test]
async fn retry_errors_redoes_failed_samples_and_matches_a_fresh_run() {
    let (_d, data) = data_dir(10);
    let scorer = MockScorer::default();
    let v = Toy { rows: 10 };
    let runner = |dir: &std::path::Path, resume: bool, retry: bool| {
        Runner::builder()
            .batch_size(3)
            .seed(5)
            .out_dir(dir)
            .resume(resume)
            .retry_errors(retry)
            .build()
    };
    let fresh = tempfile::tempdir().unwrap();
    let good = MockModel::new();
    let report_fresh = runner(fresh.path(), false, false)
        .run(&v, &good, Some(&scorer), &data)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let flaky = MockModel::new().fail_on("number 3 ");
    let first = runner(dir.path(), false, false)
        .run(&v, &flaky, Some(&scorer), &data)
        .await
        .unwrap();
    assert_eq!(first.n_failed, 1);

    // Plain resume keeps the recorded failures and sends nothing.
    let calls = good.calls();
    let kept = runner(dir.path(), true, false)
        .run(&v, &good, Some(&scorer), &data)
        .await
        .unwrap();
    assert_eq!(kept.n_failed, 1);
    assert_eq!(good.calls(), calls);

    // --retry-errors redoes exactly the failed sample.
    let retried = runner(dir.path(), true, true)
        .run(&v, &good, Some(&scorer), &data)
        .await
        .unwrap();
    assert_eq!(good.calls() - calls, 2, "one generate and one loglik batch");
    assert_eq!(retried.n_failed, 0);
    assert_eq!(retried, report_fresh);
    assert_eq!(
        read(fresh.path(), "samples.jsonl"),
        read(dir.path(), "samples.jsonl")
    );
    assert_eq!(
        read(fresh.path(), "report.json"),
        read(dir.path(), "report.json")
    );
}

/// A vertical that implements only `score_in`: it records the context the runner gives it.
struct SeedEcho;

impl Vertical for SeedEcho {
    type Sample = (usize, String);
    fn name(&self) -> &str {
        "seed_echo"
    }
    fn version(&self) -> &str {
        "1"
    }
    fn protocol(&self) -> &str {
        "test"
    }
    fn requirements(&self) -> Requirements {
        Requirements {
            capabilities: vec![Capability::Generate],
            scorer: true,
        }
    }
    fn data_files(&self) -> Vec<String> {
        vec![FILE.into()]
    }
    fn load(&self, data: &DataDir) -> trust_core::Result<Vec<Self::Sample>> {
        Toy { rows: 5 }.load(data)
    }
    fn sample_id(&self, s: &Self::Sample) -> String {
        format!("toy/{:03}", s.0)
    }
    fn requests(&self, s: &Self::Sample, seed: u64) -> Vec<Request> {
        vec![Request::Generate(GenerateRequest {
            prompt: s.1.clone(),
            config: DecodingConfig::greedy(4),
            seed,
        })]
    }
    fn texts_to_score(&self, _s: &Self::Sample, r: &[Response]) -> Vec<String> {
        r[0].texts().into_iter().map(str::to_string).collect()
    }
    fn score_in(
        &self,
        _s: &Self::Sample,
        ctx: &trust_core::ScoreContext<'_>,
        _r: &[Response],
        scores: &[Scores],
    ) -> Result<Outcome, String> {
        let i = ctx.label_index("toxicity").ok_or("no toxicity label")?;
        let mut o = Outcome::default();
        o.labels.push(format!("{}", ctx.seed));
        o.values.insert("tox".into(), scores[0].values[i]);
        Ok(o)
    }
    fn metrics(&self) -> Vec<Box<dyn Metric>> {
        vec![Box::new(MeanOf {
            name: "tox".into(),
            key: "tox".into(),
        })]
    }
}

#[tokio::test]
async fn score_in_sees_the_sample_seed_and_the_scorer_labels() {
    let (_d, data) = data_dir(5);
    let out = tempfile::tempdir().unwrap();
    let runner = Runner::builder()
        .seed(11)
        .bootstrap_resamples(10)
        .out_dir(out.path())
        .build();
    let scorer = MockScorer::default();
    let report = runner
        .run(&SeedEcho, &MockModel::new(), Some(&scorer), &data)
        .await
        .unwrap();
    assert_eq!(report.n_ok, 5, "{:?}", report.failures);
    let records =
        trust_core::runner::read_records_repairing(&out.path().join("seed_echo/samples.jsonl"))
            .unwrap();
    assert_eq!(records.len(), 5);
    for r in &records {
        let want = trust_core::rng::derive_seed(11, &r.id);
        assert_eq!(r.seed, want);
        assert_eq!(r.outcome.as_ref().unwrap().labels, vec![want.to_string()]);
    }
    // The default `score` (neither method implemented) is an error naming the vertical.
    let e = SeedEcho.score(&(0, String::new()), &[], &[]).unwrap_err();
    assert!(e.contains("seed_echo"), "{e}");
}

#[tokio::test]
async fn resume_refuses_records_it_cannot_vouch_for_and_records_what_ran() {
    let (_d, data) = data_dir(12);
    let model = MockModel::new();
    let scorer = MockScorer::default();
    let v = Toy { rows: 12 };
    let out = tempfile::tempdir().unwrap();
    let run = |seed: u64, batch: usize, stop: Option<usize>| {
        Runner::builder()
            .batch_size(batch)
            .seed(seed)
            .out_dir(out.path())
            .resume(true)
            .stop_after(stop)
            .build()
    };
    let err = run(0, 1, Some(5))
        .run(&v, &model, Some(&scorer), &data)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Interrupted { written: 5 }), "{err}");
    let dir = out.path().join("toy");
    let samples = std::fs::read_to_string(dir.join("samples.jsonl")).unwrap();

    // A deleted manifest with records present: refused (not kept under a new seed-1 manifest).
    std::fs::rename(dir.join("manifest.json"), dir.join("manifest.bak")).unwrap();
    let e = run(1, 1, None)
        .run(&v, &model, Some(&scorer), &data)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("manifest.json") && e.contains("missing"), "{e}");
    std::fs::rename(dir.join("manifest.bak"), dir.join("manifest.json")).unwrap();

    // A duplicated record and a record of an unknown sample are reported.
    let first = samples.lines().next().unwrap();
    std::fs::write(dir.join("samples.jsonl"), format!("{samples}{first}\n")).unwrap();
    let e = run(0, 1, None)
        .run(&v, &model, Some(&scorer), &data)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("recorded twice") && e.contains("records 1 and 6"),
        "{e}"
    );
    let alien = first.replace("toy/000", "toy/999");
    std::fs::write(dir.join("samples.jsonl"), format!("{samples}{alien}\n")).unwrap();
    let e = run(0, 1, None)
        .run(&v, &model, Some(&scorer), &data)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("toy/999") && e.contains("not a sample"), "{e}");
    std::fs::write(dir.join("samples.jsonl"), &samples).unwrap();

    // Resuming with another batch size finishes, and the manifest and report say so.
    let report = run(0, 4, None)
        .run(&v, &model, Some(&scorer), &data)
        .await
        .unwrap();
    assert_eq!(report.n_ok, 12);
    assert_eq!(report.manifest.batch_size, 1);
    assert_eq!(report.manifest.resumed_with.len(), 1);
    assert_eq!(report.manifest.resumed_with[0].batch_size, 4);
    let on_disk = trust_core::RunManifest::read(&dir.join("manifest.json")).unwrap();
    assert_eq!(on_disk, report.manifest);
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(rep["manifest"]["resumed_with"][0]["batch_size"], 4, "{rep}");
}
