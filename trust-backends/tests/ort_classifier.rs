//! OrtClassifier against the reference outputs of tests/fixtures/onnx/tiny-classifier (made by
//! scripts/make_onnx_fixtures.py). Needs the ONNX Runtime library: scripts/install-onnxruntime.sh.
#![cfg(feature = "ort")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use trust_backends::BackendError;
use trust_backends::ort::{Activation, OrtClassifier, OrtClassifierOptions, SessionOptions};
use trust_core::{ScorerError, TextScorer};

const TOL: f64 = 1e-5;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/tiny-classifier")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("valid JSON")
}

/// (text, logits, sigmoid probabilities, softmax probabilities).
type Case = (String, Vec<f64>, Vec<f64>, Vec<f64>);

fn cases() -> Vec<Case> {
    let f = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect::<Vec<f64>>()
    };
    expected()["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["text"].as_str().unwrap().to_string(),
                f(&c["logits"]),
                f(&c["sigmoid"]),
                f(&c["softmax"]),
            )
        })
        .collect()
}

fn options(sessions: usize, batch_size: usize) -> OrtClassifierOptions {
    OrtClassifierOptions {
        batch_size,
        session: SessionOptions {
            sessions: Some(sessions),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn load(opts: OrtClassifierOptions) -> OrtClassifier {
    OrtClassifier::from_dir(fixture_dir(), opts)
        .unwrap_or_else(|e| panic!("loading tiny-classifier: {e}"))
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= TOL,
            "{what}[{i}]: got {g}, want {w} (|diff| {} > {TOL})",
            (g - w).abs()
        );
    }
}

#[tokio::test]
async fn info_comes_from_config_and_model_file() {
    let clf = load(options(1, 32));
    let info = clf.info();
    let want: Vec<String> = expected()["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(info.labels, want);
    assert_eq!(info.primary.as_deref(), Some("toxicity"));
    assert_eq!(
        clf.activation(),
        Activation::Sigmoid,
        "config problem_type is multi_label_classification"
    );
    use sha2::Digest;
    let bytes = std::fs::read(fixture_dir().join("model.onnx")).unwrap();
    assert_eq!(
        info.weights_sha256.as_deref(),
        Some(hex::encode(sha2::Sha256::digest(&bytes)).as_str())
    );
    assert_eq!(info.label_index("threat").unwrap(), 3);
}

#[tokio::test]
async fn scores_match_reference_sigmoid_and_logits() {
    let clf = load(options(1, 32));
    let cases = cases();
    let texts: Vec<String> = cases.iter().map(|c| c.0.clone()).collect();
    let scores = clf.score(&texts).await;
    assert_eq!(scores.len(), texts.len());
    for ((text, _, sigmoid, _), s) in cases.iter().zip(&scores) {
        let s = s.as_ref().unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_close(&s.values, sigmoid, text);
    }
    let logits = clf.logits(&texts);
    for ((text, want, _, _), got) in cases.iter().zip(logits) {
        let got: Vec<f64> = got.unwrap().into_iter().map(f64::from).collect();
        assert_close(&got, want, &format!("logits of {text:?}"));
    }
}

#[tokio::test]
async fn activation_option_overrides_problem_type() {
    let clf = load(OrtClassifierOptions {
        activation: Some(Activation::Softmax),
        ..options(1, 32)
    });
    let cases = cases();
    let texts: Vec<String> = cases.iter().map(|c| c.0.clone()).collect();
    for ((text, _, _, softmax), s) in cases.iter().zip(clf.score(&texts).await) {
        let s = s.unwrap();
        assert_close(&s.values, softmax, text);
        assert!((s.values.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }
}

#[tokio::test]
async fn results_do_not_depend_on_batching_or_pool_size() {
    let cases = cases();
    let texts: Vec<String> = cases.iter().map(|c| c.0.clone()).collect();
    for (sessions, batch) in [(1, 1), (1, 2), (2, 3), (3, 32), (2, 1)] {
        let clf = load(options(sessions, batch));
        assert_eq!(clf.sessions(), sessions);
        let all = clf.score(&texts).await;
        for ((text, _, sigmoid, _), s) in cases.iter().zip(&all) {
            assert_close(
                &s.as_ref().unwrap().values,
                sigmoid,
                &format!("{text:?} (sessions {sessions}, batch {batch})"),
            );
        }
        // One at a time, and in reverse order.
        for ((text, _, sigmoid, _), t) in cases.iter().zip(&texts) {
            let one = clf.score(std::slice::from_ref(t)).await;
            assert_close(
                &one[0].as_ref().unwrap().values,
                sigmoid,
                &format!("{text:?} alone"),
            );
        }
        let rev: Vec<String> = texts.iter().rev().cloned().collect();
        let back = clf.score(&rev).await;
        for ((text, _, sigmoid, _), s) in cases.iter().rev().zip(&back) {
            assert_close(
                &s.as_ref().unwrap().values,
                sigmoid,
                &format!("{text:?} reversed"),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tasks_share_one_scorer() {
    let clf: Arc<dyn TextScorer> = Arc::new(load(options(2, 4)));
    let cases = Arc::new(cases());
    let mut handles = Vec::new();
    for task in 0..8usize {
        let clf = Arc::clone(&clf);
        let cases = Arc::clone(&cases);
        handles.push(tokio::spawn(async move {
            // Each task scores a different rotation, several times.
            let n = cases.len();
            let order: Vec<usize> = (0..n).map(|i| (i + task) % n).collect();
            let texts: Vec<String> = order.iter().map(|&i| cases[i].0.clone()).collect();
            for _ in 0..5 {
                let got = clf.score(&texts).await;
                assert_eq!(got.len(), n);
                for (&i, s) in order.iter().zip(&got) {
                    assert_close(
                        &s.as_ref().unwrap().values,
                        &cases[i].2,
                        &format!("task {task}: {:?}", cases[i].0),
                    );
                }
            }
            task
        }));
    }
    let mut done = Vec::new();
    for h in handles {
        done.push(h.await.expect("task panicked"));
    }
    assert_eq!(done, (0..8).collect::<Vec<_>>());
}

#[tokio::test]
async fn empty_text_fails_alone() {
    let clf = load(options(1, 32));
    let cases = cases();
    let texts = vec![cases[0].0.clone(), String::new(), cases[1].0.clone()];
    let got = clf.score(&texts).await;
    assert_close(&got[0].as_ref().unwrap().values, &cases[0].2, "first");
    assert!(
        matches!(got[1], Err(ScorerError::InvalidInput(_))),
        "{:?}",
        got[1]
    );
    assert_close(&got[2].as_ref().unwrap().values, &cases[1].2, "third");
}

#[test]
fn model_without_input_ids_is_rejected() {
    let err = OrtClassifier::from_dir(
        fixture_dir(),
        OrtClassifierOptions {
            model_file: Some("bad_inputs.onnx".into()),
            ..options(1, 32)
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, BackendError::ModelSignature { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("input_ids") && msg.contains("tokens") && msg.contains("bad_inputs.onnx"),
        "{msg}"
    );
}

fn copy_fixture_without(skip: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["model.onnx", "config.json", "tokenizer.json"] {
        if f != skip {
            std::fs::copy(fixture_dir().join(f), tmp.path().join(f)).unwrap();
        }
    }
    tmp
}

#[test]
fn a_file_that_is_not_onnx_is_rejected() {
    let tmp = copy_fixture_without("model.onnx");
    std::fs::write(tmp.path().join("model.onnx"), "this is not an ONNX model\n").unwrap();
    let err = OrtClassifier::from_dir(tmp.path(), options(1, 32)).unwrap_err();
    assert!(matches!(err, BackendError::Config { .. }), "{err:?}");
    assert!(err.to_string().contains("model.onnx"), "{err}");
}

#[test]
fn missing_files_are_named() {
    let tmp = copy_fixture_without("model.onnx");
    let err = OrtClassifier::from_dir(tmp.path(), options(1, 32)).unwrap_err();
    assert!(
        matches!(err, BackendError::Io { .. }) && err.to_string().contains("model.onnx"),
        "{err}"
    );

    let tmp = copy_fixture_without("tokenizer.json");
    let err = OrtClassifier::from_dir(tmp.path(), options(1, 32)).unwrap_err();
    assert!(
        matches!(err, BackendError::Tokenizer { .. }) && err.to_string().contains("tokenizer.json"),
        "{err}"
    );

    let err = OrtClassifier::from_dir(fixture_dir().join("nope"), options(1, 32)).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn labels_must_match_the_logits() {
    let tmp = copy_fixture_without("config.json");
    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"id2label": {"0": "toxic", "1": "ok"}}"#,
    )
    .unwrap();
    let err = OrtClassifier::from_dir(tmp.path(), options(1, 32)).unwrap_err();
    assert!(err.to_string().contains("2 labels"), "{err}");

    // No config at all: the labels are LABEL_i and the activation is softmax (HF's default).
    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    let clf = OrtClassifier::from_dir(tmp.path(), options(1, 32)).unwrap();
    assert_eq!(clf.labels().len(), 6);
    assert_eq!(clf.labels()[0], "LABEL_0");
    assert_eq!(clf.activation(), Activation::Softmax);
    assert_eq!(clf.info().primary, None);
}

#[test]
fn unknown_primary_label_is_rejected_and_a_known_one_is_kept() {
    let err = OrtClassifier::from_dir(
        fixture_dir(),
        OrtClassifierOptions {
            primary: Some("spam".into()),
            ..options(1, 32)
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("spam"), "{err}");
    let clf = OrtClassifier::from_dir(
        fixture_dir(),
        OrtClassifierOptions {
            primary: Some("insult".into()),
            ..options(1, 32)
        },
    )
    .unwrap();
    assert_eq!(clf.info().primary.as_deref(), Some("insult"));
}

#[test]
fn missing_library_path_names_the_install_script() {
    let opts = OrtClassifierOptions {
        session: SessionOptions {
            sessions: Some(1),
            dylib_path: Some("/nonexistent/libonnxruntime.so".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let err = OrtClassifier::from_dir(fixture_dir(), opts).unwrap_err();
    assert!(matches!(err, BackendError::OrtLibrary { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/libonnxruntime.so"), "{msg}");
    assert!(
        msg.contains("scripts/install-onnxruntime.sh") && msg.contains("ORT_DYLIB_PATH"),
        "{msg}"
    );
}

#[test]
fn truncation_caps_long_inputs() {
    // The model has 64 positions: longer texts are truncated (not an error), so two texts that
    // differ only after the first 64 tokens score the same.
    let clf = load(options(1, 32));
    let a = format!("{}I hate you", "word ".repeat(200));
    let b = format!("{}I love it", "word ".repeat(200));
    let got = clf.logits(&[a, b]);
    let (a, b) = (got[0].as_ref().unwrap(), got[1].as_ref().unwrap());
    assert_eq!(a, b);
}

#[test]
fn cuda_without_a_cuda_provider_is_an_explicit_error() {
    // With the CPU-only library (or a build without `ort-cuda`) asking for CUDA must fail loudly
    // instead of silently running on the CPU.
    use trust_backends::ort::OrtDevice;
    let opts = OrtClassifierOptions {
        session: SessionOptions {
            sessions: Some(1),
            device: OrtDevice::Cuda(0),
            ..Default::default()
        },
        ..Default::default()
    };
    let err = OrtClassifier::from_dir(fixture_dir(), opts).unwrap_err();
    assert!(matches!(err, BackendError::Device(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("CUDA"), "{msg}");
    if cfg!(feature = "ort-cuda") {
        assert!(msg.contains("no CUDA execution provider"), "{msg}");
    } else {
        assert!(msg.contains("ort-cuda"), "{msg}");
    }
}
