//! OrtCausalLm against the reference outputs of tests/fixtures/onnx/tiny-causal-lm (made by
//! scripts/make_onnx_fixtures.py): the same model exported with a key/value cache (`model.onnx`)
//! and without (`model_no_past.onnx`). Needs the ONNX Runtime library.
#![cfg(feature = "ort")]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use trust_backends::BackendError;
use trust_backends::ort::{OrtCausalLm, OrtCausalLmOptions, SessionOptions};
use trust_core::{
    Capability, DecodingConfig, FinishReason, GenerateRequest, LanguageModel, LogLikelihoodRequest,
    ModelError, Sampling, StopPolicy,
};

const TOL: f64 = 1e-5;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/tiny-causal-lm")
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap())
        .unwrap()
}

fn load(file: &str, sessions: usize) -> OrtCausalLm {
    OrtCausalLm::from_dir(
        fixture_dir(),
        OrtCausalLmOptions {
            model_file: Some(file.into()),
            session: SessionOptions {
                sessions: Some(sessions),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("loading {file}: {e}"))
}

fn both() -> [(&'static str, OrtCausalLm); 2] {
    [
        ("model.onnx", load("model.onnx", 2)),
        ("model_no_past.onnx", load("model_no_past.onnx", 2)),
    ]
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn greedy_request(prompt: &str, max_new: usize, stop: StopPolicy) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        config: DecodingConfig::greedy(max_new).with_stop(stop),
        seed: 0,
    }
}

#[test]
fn signature_is_detected() {
    let kv = load("model.onnx", 1);
    assert!(kv.has_kv_cache());
    let no = load("model_no_past.onnx", 1);
    assert!(!no.has_kv_cache());
    assert_eq!(kv.eos_token_ids(), &[0]);
    let info = kv.info();
    assert_eq!(info.backend, "ort");
    assert_eq!(info.weights_sha256.as_ref().map(String::len), Some(64));
    assert_ne!(info.weights_sha256, no.info().weights_sha256);
    let caps = kv.capabilities();
    assert!(
        caps.has(Capability::Generate)
            && caps.has(Capability::Sampling)
            && caps.has(Capability::LogLikelihood)
    );
    assert!(!caps.has(Capability::BeamSearch));
}

#[test]
fn prompt_logits_match_reference() {
    let exp = expected();
    for (file, lm) in both() {
        for case in exp["greedy"].as_array().unwrap() {
            let ids = u32s(&case["prompt_ids"]);
            assert_eq!(
                lm.encode(case["prompt"].as_str().unwrap()).unwrap(),
                ids,
                "tokenization"
            );
            let (vocab, logits) = lm.sequence_logits(&ids).unwrap();
            let last = &logits[(ids.len() - 1) * vocab..];
            let want = f64s(&case["last_logits"]);
            assert_eq!(last.len(), want.len());
            for (i, (g, w)) in last.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(*g) - w).abs() <= TOL,
                    "{file}: logit {i}: {g} vs {w}"
                );
            }
        }
    }
}

#[tokio::test]
async fn greedy_generation_matches_reference() {
    let exp = expected();
    for (file, lm) in both() {
        let cases = exp["greedy"].as_array().unwrap();
        let reqs: Vec<GenerateRequest> = cases
            .iter()
            .map(|c| {
                greedy_request(
                    c["prompt"].as_str().unwrap(),
                    c["max_new_tokens"].as_u64().unwrap() as usize,
                    StopPolicy::Never,
                )
            })
            .collect();
        let got = lm.generate(&reqs).await;
        for (c, r) in cases.iter().zip(got) {
            let r = r.unwrap();
            assert_eq!(r.completions.len(), 1);
            let comp = &r.completions[0];
            assert_eq!(
                comp.token_ids,
                u32s(&c["token_ids"]),
                "{file}: {:?}",
                c["prompt"]
            );
            assert_eq!(comp.text, c["text"].as_str().unwrap(), "{file}");
            assert_eq!(comp.finish_reason, FinishReason::Length);
        }
    }
}

#[tokio::test]
async fn stop_policies() {
    let exp = expected();
    let lm = load("model.onnx", 1);
    // "Hello" greedily produces EOS (id 0) at its third step in the reference.
    let hello = exp["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["prompt"] == "Hello")
        .unwrap();
    let ref_ids = u32s(&hello["token_ids"]);
    let eos_at = ref_ids
        .iter()
        .position(|&t| t == 0)
        .expect("the reference run produces EOS");
    let r = lm
        .generate(&[greedy_request("Hello", 10, StopPolicy::ModelEos)])
        .await
        .remove(0)
        .unwrap();
    assert_eq!(r.completions[0].token_ids, ref_ids[..eos_at].to_vec());
    assert_eq!(r.completions[0].finish_reason, FinishReason::StopToken);

    // Stop on an explicit id: the fourth reference token of another prompt.
    let c = &exp["greedy"][0];
    let ids = u32s(&c["token_ids"]);
    let prompt = c["prompt"].as_str().unwrap();
    let stop = ids[3];
    let first = ids.iter().position(|&t| t == stop).unwrap();
    let r = lm
        .generate(&[greedy_request(prompt, 10, StopPolicy::Tokens(vec![stop]))])
        .await
        .remove(0)
        .unwrap();
    assert_eq!(r.completions[0].token_ids, ids[..first].to_vec());
    assert_eq!(r.completions[0].finish_reason, FinishReason::StopToken);

    // Tokens(50256) never fires here (out of this vocabulary), like the paper's Pythia setting.
    let r = lm
        .generate(&[greedy_request("Hello", 10, StopPolicy::Tokens(vec![50256]))])
        .await
        .remove(0)
        .unwrap();
    assert_eq!(r.completions[0].token_ids, ref_ids);
    assert_eq!(r.completions[0].finish_reason, FinishReason::Length);

    // A stop string cuts the text before it.
    let text = c["text"].as_str().unwrap();
    let needle: String = text.chars().skip(4).take(3).collect();
    let at = text.find(&needle).unwrap();
    let mut req = greedy_request(prompt, 10, StopPolicy::Never);
    req.config.stop_strings = vec![needle.clone()];
    let r = lm.generate(&[req]).await.remove(0).unwrap();
    assert_eq!(r.completions[0].text, text[..at]);
    assert_eq!(r.completions[0].finish_reason, FinishReason::StopString);
    assert!(r.completions[0].token_ids.len() < ids.len());
    assert_eq!(
        r.completions[0].token_ids[..],
        ids[..r.completions[0].token_ids.len()]
    );

    // max_new_tokens = 0 produces nothing.
    let r = lm
        .generate(&[greedy_request(prompt, 0, StopPolicy::Never)])
        .await
        .remove(0)
        .unwrap();
    assert!(r.completions[0].token_ids.is_empty() && r.completions[0].text.is_empty());
}

fn sampled_requests(exp: &Value) -> Vec<(GenerateRequest, Vec<Vec<u32>>)> {
    exp["sampling"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let config = DecodingConfig {
                max_new_tokens: c["max_new_tokens"].as_u64().unwrap() as usize,
                sampling: Sampling::Sample {
                    temperature: c["temperature"].as_f64().unwrap(),
                    top_p: c["top_p"].as_f64().unwrap(),
                    top_k: c["top_k"].as_u64().unwrap() as usize,
                },
                n: c["n"].as_u64().unwrap() as usize,
                num_beams: 1,
                stop: StopPolicy::Never,
                stop_strings: Vec::new(),
            };
            let want = c["token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(u32s)
                .collect();
            (
                GenerateRequest {
                    prompt: c["prompt"].as_str().unwrap().into(),
                    config,
                    seed: c["seed"].as_u64().unwrap(),
                },
                want,
            )
        })
        .collect()
}

#[tokio::test]
async fn seeded_sampling_matches_reference_and_ignores_batching() {
    let exp = expected();
    let cases = sampled_requests(&exp);
    let reqs: Vec<GenerateRequest> = cases.iter().map(|c| c.0.clone()).collect();
    for (file, lm) in both() {
        // All at once, one at a time, and reversed inside a batch that also holds greedy requests.
        let together = lm.generate(&reqs).await;
        for ((_, want), got) in cases.iter().zip(&together) {
            let got: Vec<Vec<u32>> = got
                .as_ref()
                .unwrap()
                .completions
                .iter()
                .map(|c| c.token_ids.clone())
                .collect();
            assert_eq!(&got, want, "{file}");
        }
        for (req, want) in &cases {
            let alone = lm
                .generate(std::slice::from_ref(req))
                .await
                .remove(0)
                .unwrap();
            let got: Vec<Vec<u32>> = alone
                .completions
                .iter()
                .map(|c| c.token_ids.clone())
                .collect();
            assert_eq!(&got, want, "{file} alone");
        }
        let mut mixed: Vec<GenerateRequest> = reqs.iter().rev().cloned().collect();
        mixed.insert(1, greedy_request("Hello", 5, StopPolicy::Never));
        let got = lm.generate(&mixed).await;
        for (i, (_, want)) in cases.iter().rev().enumerate() {
            let k = if i == 0 { 0 } else { i + 1 };
            let ids: Vec<Vec<u32>> = got[k]
                .as_ref()
                .unwrap()
                .completions
                .iter()
                .map(|c| c.token_ids.clone())
                .collect();
            assert_eq!(&ids, want, "{file} mixed");
        }
    }
    // Another seed gives other samples.
    let lm = load("model.onnx", 1);
    let mut other = cases[0].0.clone();
    other.seed += 1;
    let got = lm.generate(&[other]).await.remove(0).unwrap();
    let ids: Vec<Vec<u32>> = got
        .completions
        .iter()
        .map(|c| c.token_ids.clone())
        .collect();
    assert_ne!(ids, cases[0].1);
}

#[tokio::test]
async fn loglikelihood_matches_reference() {
    let exp = expected();
    let cases = exp["loglikelihood"].as_array().unwrap();
    let reqs: Vec<LogLikelihoodRequest> = cases
        .iter()
        .map(|c| LogLikelihoodRequest {
            context: c["context"].as_str().unwrap().into(),
            continuation: c["continuation"].as_str().unwrap().into(),
        })
        .collect();
    let mut saw_greedy = false;
    for (file, lm) in both() {
        for (c, r) in cases.iter().zip(lm.loglikelihood(&reqs).await) {
            let r = r.unwrap();
            let want = f64s(&c["token_logprobs"]);
            assert_eq!(r.token_logprobs.len(), want.len(), "{file}");
            for (g, w) in r.token_logprobs.iter().zip(&want) {
                assert!((g - w).abs() <= TOL, "{file}: {g} vs {w}");
            }
            assert!((r.sum - c["sum"].as_f64().unwrap()).abs() <= TOL * want.len() as f64);
            assert!((r.sum - r.token_logprobs.iter().sum::<f64>()).abs() < 1e-12);
            assert_eq!(
                r.is_greedy,
                c["is_greedy"].as_bool().unwrap(),
                "{file}: {:?}",
                c["continuation"]
            );
            saw_greedy |= r.is_greedy;
        }
        // Order and batch do not matter.
        let rev: Vec<LogLikelihoodRequest> = reqs.iter().rev().cloned().collect();
        let back = lm.loglikelihood(&rev).await;
        for (c, r) in cases.iter().rev().zip(back) {
            assert!((r.unwrap().sum - c["sum"].as_f64().unwrap()).abs() <= 1e-4);
        }
    }
    assert!(saw_greedy, "the fixture has a greedy continuation");
}

#[tokio::test]
async fn bad_requests_fail_alone() {
    let lm = load("model.onnx", 1);
    let exp = expected();
    let good = LogLikelihoodRequest {
        context: "Hello".into(),
        continuation: " world".into(),
    };
    let reqs = vec![
        LogLikelihoodRequest {
            context: String::new(),
            continuation: " world".into(),
        },
        good.clone(),
        LogLikelihoodRequest {
            context: "Hello".into(),
            continuation: String::new(),
        },
        LogLikelihoodRequest {
            context: "x ".repeat(200),
            continuation: " y".into(),
        },
    ];
    let got = lm.loglikelihood(&reqs).await;
    assert!(
        matches!(got[0], Err(ModelError::InvalidRequest(_))),
        "{:?}",
        got[0]
    );
    let want = exp["loglikelihood"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["context"] == "Hello")
        .unwrap();
    assert!((got[1].as_ref().unwrap().sum - want["sum"].as_f64().unwrap()).abs() <= 1e-4);
    assert!(
        matches!(got[2], Err(ModelError::InvalidRequest(_))),
        "{:?}",
        got[2]
    );
    assert!(
        matches!(&got[3], Err(ModelError::InvalidRequest(m)) if m.contains("128")),
        "{:?}",
        got[3]
    );

    let mut beams = greedy_request("Hello", 3, StopPolicy::Never);
    beams.config.num_beams = 2;
    let mut zero_n = greedy_request("Hello", 3, StopPolicy::Never);
    zero_n.config.n = 0;
    let got = lm
        .generate(&[
            beams,
            greedy_request("", 3, StopPolicy::Never),
            zero_n,
            greedy_request("Hello", 200, StopPolicy::Never),
        ])
        .await;
    assert!(
        matches!(
            got[0],
            Err(ModelError::Unsupported {
                capability: Capability::BeamSearch,
                ..
            })
        ),
        "{:?}",
        got[0]
    );
    assert!(
        matches!(got[1], Err(ModelError::InvalidRequest(_))),
        "{:?}",
        got[1]
    );
    assert!(
        matches!(got[2], Err(ModelError::InvalidRequest(_))),
        "{:?}",
        got[2]
    );
    assert!(
        matches!(got[3], Err(ModelError::InvalidRequest(_))),
        "{:?}",
        got[3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_generation() {
    let exp = expected();
    let lm: Arc<dyn LanguageModel> = Arc::new(load("model.onnx", 3));
    let cases: Arc<Vec<(String, Vec<u32>)>> = Arc::new(
        exp["greedy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["prompt"].as_str().unwrap().to_string(),
                    u32s(&c["token_ids"]),
                )
            })
            .collect(),
    );
    let mut handles = Vec::new();
    for task in 0..6usize {
        let lm = Arc::clone(&lm);
        let cases = Arc::clone(&cases);
        handles.push(tokio::spawn(async move {
            let (prompt, want) = &cases[task % cases.len()];
            for _ in 0..3 {
                let r = lm
                    .generate(&[greedy_request(prompt, want.len(), StopPolicy::Never)])
                    .await
                    .remove(0)
                    .unwrap();
                assert_eq!(&r.completions[0].token_ids, want, "task {task}");
            }
        }));
    }
    for h in handles {
        h.await.expect("task panicked");
    }
}

#[test]
fn classifier_export_is_not_a_causal_lm() {
    // The tiny classifier has no `logits` of shape [batch, seq, vocab] and a token_type_ids input.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/tiny-classifier");
    let err = OrtCausalLm::from_dir(&dir, OrtCausalLmOptions::default()).unwrap_err();
    assert!(
        matches!(err, BackendError::ModelSignature { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("token_type_ids"), "{err}");
}
