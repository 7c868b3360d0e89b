//! The facade re-exports what a user needs: a custom vertical-free run through the prelude on the
//! mock model, and the paths the docs name.

use trust::prelude::*;

#[tokio::test]
async fn a_run_through_the_prelude() {
    // No flag, no environment: the checkout's data/ is found (a clone alone is enough).
    let data = DataDir::new(trust::core::data::checkout_data_dir().expect("data/ of the checkout"))
        .unwrap();
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

#[test]
fn attribution_core_is_reexported_without_a_model_backend() {
    // The model-independent half of trust-attribution is always part of the facade.
    let n = trust::attribution::normalize_signwise(&[2.0, -1.0, 0.5, -0.25]).unwrap();
    assert_eq!(n, vec![1.0, -1.0, 0.25, -0.25]);
    assert_eq!(trust::attribution::most_harmful(&n, 1), vec![(0, 1.0)]);
    assert!(trust::attribution::normalize_signwise(&[f64::NAN]).is_err());
}

#[test]
fn scorers_tree_holds_every_scorer() {
    // The lexical scorer is reachable without `align`; jigsaw under `candle` (default).
    fn is_scorer<S: trust::core::TextScorer>() {}
    is_scorer::<trust::scorers::LexicalToxicity>();
    let e = trust::scorers::jigsaw::JigsawScorer::load("/nonexistent")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent"), "{e}");
}

#[cfg(feature = "attribution")]
#[test]
fn the_pipeline_is_a_library_api() {
    // `trust demo` is wiring over `trust::pipeline`: its configurations are plain data.
    let minimal = trust::pipeline::DemoConfig::minimal();
    let standard = trust::pipeline::DemoConfig::standard();
    assert!(minimal.sft.steps < standard.sft.steps);
    assert!(minimal.attribution_train <= standard.attribution_train);
    assert_eq!(
        trust::pipeline::default_protocols().len(),
        5,
        "one protocol per vertical"
    );
}

#[cfg(feature = "attribution")]
#[test]
fn the_pretrained_pipeline_adapts_the_last_third_of_the_blocks() {
    use trust::backends::candle::tiny::{NeoxShape, train_tokenizer, write_model_dir};
    let dir = tempfile::tempdir().unwrap();
    let shape = NeoxShape {
        vocab_size: 300,
        hidden_size: 16,
        num_layers: 6,
        num_heads: 2,
        intermediate_size: 32,
        max_positions: 64,
        rotary_pct: 0.25,
    };
    let texts = ["Human: hi\n\nAssistant: hello there".to_string()];
    let tok = train_tokenizer(texts.iter(), shape.vocab_size).unwrap();
    let weights = shape.init_weights(0, &candle_core::Device::Cpu).unwrap();
    write_model_dir(dir.path(), &shape.config_json(), &tok, &weights).unwrap();
    let c = trust::pipeline::DemoConfig::pretrained(dir.path()).unwrap();
    assert_eq!(c.base_model.as_deref(), Some(dir.path()));
    assert_eq!(c.sft.lora.layers, Some(vec![4, 5]));
    assert_eq!(c.dpo.lora.layers, Some(vec![4, 5]));
    assert_eq!(
        c.sft.lora.targets,
        ["attention.query_key_value", "attention.dense"]
    );
    assert_eq!(
        c.dpo.lora.targets,
        [
            "attention.query_key_value",
            "attention.dense",
            "mlp.dense_h_to_4h",
            "mlp.dense_4h_to_h"
        ]
    );
    assert_eq!(c.eval_sample, Some(48));
    assert!(c.heldout_pairs >= 200);
    assert!(trust::pipeline::DemoConfig::pretrained(&dir.path().join("missing")).is_err());
}
