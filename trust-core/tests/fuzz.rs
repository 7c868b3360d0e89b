//! Fuzzing (docs/fuzzing.md): the JSON Lines data reader, the sample-record reader behind
//! `--resume` and the manifest reader on mutated inputs; none may panic.

use std::io::Cursor;

use trust_core::RunManifest;
use trust_core::fuzz::run;
use trust_core::runner::read_records_repairing;

#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Row {
    id: String,
    prompt: String,
    n: Option<u32>,
}

#[test]
fn jsonl_reader_never_panics() {
    let corpus = vec![
        b"{\"id\": \"a\", \"prompt\": \"p\", \"n\": 3}\n{\"id\": \"b\", \"prompt\": \"q\"}\r\n\n"
            .to_vec(),
        b"{\"id\": \"\\u00e9\", \"prompt\": \"\\ud83d\\ude00\"}\n".to_vec(),
    ];
    let n = run("jsonl", corpus, 5_000, |input| {
        let p = std::path::Path::new("fuzz.jsonl");
        let _ = trust_core::data::read_jsonl_from::<Row, _>(Cursor::new(input), p);
        let _ = trust_core::data::read_jsonl_from::<serde_json::Value, _>(Cursor::new(input), p);
    });
    assert_eq!(n, trust_core::fuzz::iterations(5_000));
}

#[test]
fn record_and_manifest_readers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("samples.jsonl");
    let manifest = dir.path().join("manifest.json");
    let mut outcome = trust_core::Outcome {
        labels: vec!["yes".into()],
        ..Default::default()
    };
    outcome.values.insert("ll".into(), -1.5);
    outcome.tags.insert("t".into(), "a".into());
    let recs = [
        trust_core::SampleRecord {
            id: "toy/000".into(),
            seed: 123,
            outcome: Some(outcome),
            error: None,
            responses: vec![trust_core::Response::from_replies(["yes", "no"])],
        },
        trust_core::SampleRecord {
            id: "toy/001".into(),
            seed: 9,
            outcome: None,
            error: Some("boom".into()),
            responses: Vec::new(),
        },
    ];
    let rec: Vec<u8> = recs
        .iter()
        .flat_map(|r| (serde_json::to_string(r).unwrap() + "\n").into_bytes())
        .collect();
    let rec = rec.as_slice();
    let man = br#"{"trust_version":"0.1.0","vertical":"toy","vertical_version":"1","protocol":"test","options":{"rows":3},"data_files":{"toy/prompts.txt":"ab"},"model":{"id":"mock","backend":"mock","weights_sha256":null,"details":""},"scorer":null,"seed":0,"limit":null,"batch_size":8,"resumed_with":[{"trust_version":"0.1.0","batch_size":4}]}"#;
    // The corpus entries are valid inputs, so mutations explore near-valid ones.
    std::fs::write(&records, rec).unwrap();
    assert_eq!(read_records_repairing(&records).unwrap().len(), 2);
    std::fs::write(&manifest, man).unwrap();
    assert_eq!(RunManifest::read(&manifest).unwrap().resumed_with.len(), 1);
    run("records", vec![rec.to_vec()], 3_000, |input| {
        std::fs::write(&records, input).unwrap();
        let _ = read_records_repairing(&records);
    });
    run("manifest", vec![man.to_vec()], 3_000, |input| {
        std::fs::write(&manifest, input).unwrap();
        let _ = RunManifest::read(&manifest);
    });
}
