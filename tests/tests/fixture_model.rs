//! Every vertical, paper protocol, on a real model: the tiny GPT-NeoX saved by HF transformers
//! (`shared/fixtures/hf/tiny-gpt-neox`) through the candle backend and the runner. Its replies
//! are meaningless; what is checked is that the whole path works on a real backend: requests are
//! accepted or fail per sample with a reason, outcomes are recorded, a rerun is identical.

use std::path::{Path, PathBuf};

use trust_backends::candle::{CandleModel, LoadOptions};
use trust_core::testing::MockScorer;
use trust_core::{DataDir, Runner, TextScorer};
use trust_verticals::registry::{self, BuildOptions, VERTICALS};

fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

#[tokio::test]
async fn every_vertical_runs_on_the_tiny_fixture_model() {
    let data = DataDir::new(shared().join("data")).unwrap();
    let model = CandleModel::load(
        shared().join("fixtures/hf/tiny-gpt-neox"),
        &LoadOptions::default(),
    )
    .unwrap();
    let scorer = MockScorer::default();
    let mut total_ok = 0;
    for &vertical in VERTICALS {
        let opts = BuildOptions {
            samples: Some(2),
            scorer: Some(scorer.info()),
            ..Default::default()
        };
        let v = registry::build(vertical, "paper", &opts).unwrap();
        let run = |dir: &Path| {
            Runner::builder()
                .batch_size(4)
                .limit(Some(3))
                .bootstrap_resamples(50)
                .out_dir(dir)
                .build()
        };
        let a = tempfile::tempdir().unwrap();
        let report = v
            .run(
                &run(a.path()),
                &model,
                Some(&scorer as &dyn TextScorer),
                &data,
            )
            .await
            .unwrap();
        assert_eq!(report.n_samples, 3, "{vertical}");
        assert_eq!(report.n_ok + report.n_failed, 3, "{vertical}");
        eprintln!("{vertical}: {} ok, {} failed", report.n_ok, report.n_failed);
        total_ok += report.n_ok;
        // The fixture allows 256 positions: longer prompts fail alone, with the reason.
        for f in &report.failures {
            assert!(
                f.error.contains("max_position_embeddings"),
                "{vertical}: {}",
                f.error
            );
        }
        assert_eq!(report.manifest.model.backend, "candle");
        assert!(report.manifest.model.weights_sha256.is_some());
        assert_eq!(report.manifest.protocol, "paper");
        if report.n_ok > 0 {
            assert!(
                report.metrics.iter().any(|m| m.value.is_some()),
                "{vertical}: no metric value"
            );
        }
        // Same run again: identical records (greedy and seeded sampling are deterministic).
        let b = tempfile::tempdir().unwrap();
        v.run(
            &run(b.path()),
            &model,
            Some(&scorer as &dyn TextScorer),
            &data,
        )
        .await
        .unwrap();
        let read = |d: &Path| std::fs::read(d.join(vertical).join("samples.jsonl")).unwrap();
        assert_eq!(read(a.path()), read(b.path()), "{vertical}: rerun differs");
    }
    assert!(
        total_ok >= 6,
        "only {total_ok} samples scored on the fixture model"
    );
}
