//! The facade re-exports what a user needs: a custom vertical-free run through the prelude on the
//! mock model, and the paths the docs name.

use trust::prelude::*;

#[tokio::test]
async fn a_run_through_the_prelude() {
    let data = DataDir::resolve(Some(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data"
    ))))
    .or_else(|_| DataDir::resolve(None))
    .expect("benchmark data (../shared/data or TRUST_DATA_DIR)");
    let tmp = std::env::temp_dir().join(format!("trust-facade-{}", std::process::id()));
    let v = registry::build("machine_ethics", "paper", &BuildOptions::default()).unwrap();
    let runner = Runner::builder()
        .batch_size(4)
        .seed(0)
        .limit(Some(3))
        .out_dir(&tmp)
        .build();
    let model = trust::core::testing::MockModel::new();
    let report = v.run(&runner, &model, None, &data).await.unwrap();
    assert_eq!(report.n_samples, 3);
    assert!(report.metrics.iter().any(|m| m.name == "fnr"));
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn backends_are_reachable_by_feature() {
    // candle (default): GGUF and the jigsaw scorer are part of the surface.
    let _ = trust::backends::candle::gguf::gguf_name("model.norm.weight");
    assert_eq!(
        trust::backends::candle::gguf::gguf_name("model.norm.weight").as_deref(),
        Some("output_norm.weight")
    );
    let e = JigsawScorer::load("/nonexistent").unwrap_err().to_string();
    assert!(e.contains("/nonexistent"));
}

#[test]
fn scorers_live_in_one_module() {
    use trust::scorers::{MockScorer, PERSPECTIVE_AGREEMENT, agreement};
    let _ = MockScorer::default();
    assert!(
        PERSPECTIVE_AGREEMENT
            .iter()
            .any(|k| k.scorer == "jigsaw" && k.label == "toxic")
    );
    let a = agreement(&[0.1, 0.9], &[0.2, 0.8]);
    assert!((a.auroc - 1.0).abs() < 1e-12);
}
