//! End-to-end test of `trust attribute` on the tiny models and generations of `trust demo
//! --minimal` (base → SFT → DPO, evaluated on all verticals).
#![cfg(feature = "candle")]

mod common;
use common::{data_dir, trust};
use std::path::Path;
use std::process::Output;

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn attribute_scores_every_pair_resumes_and_rejects_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    ok(&trust(&["demo", "--minimal", "--out", p(&demo)]));
    let train = data_dir().join("hh-rlhf/harmless-base-test.jsonl.gz");
    let out = dir.path().join("scores.jsonl");
    let gens = |ckpt: &str| demo.join(format!("eval/{ckpt}/toxicity/samples.jsonl"));
    let (dpo, sft, base, init) = (
        demo.join("models/dpo"),
        demo.join("models/sft"),
        demo.join("models/base"),
        demo.join("models/init"),
    );
    let (g_dpo, g_sft) = (gens("dpo"), gens("sft"));
    let args: Vec<&str> = vec![
        "attribute",
        "--model",
        p(&dpo),
        "--base",
        p(&sft),
        "--stage",
        "dpo",
        "--train",
        p(&train),
        "--vertical",
        "toxicity",
        "--protocol",
        "paper-text",
        "--generations",
        p(&g_dpo),
        "--baseline-generations",
        p(&g_sft),
        "--limit",
        "10",
        "--top-k",
        "3",
        "--max-len",
        "64",
        "--out",
        p(&out),
    ];
    let first = trust(&args);
    ok(&first);
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10, "{text}");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["train_index"].as_u64(), Some(i as u64));
        let s = l["score"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&s), "{l}");
    }
    assert!(
        lines.iter().any(|l| l["score"].as_f64() == Some(1.0))
            || lines.iter().any(|l| l["score"].as_f64() == Some(-1.0))
    );
    let npy = trust_attribution::read_npy(dir.path().join("scores.jsonl.npy")).unwrap();
    assert_eq!(npy.len(), 10);
    assert_eq!(npy[3], lines[3]["score"].as_f64().unwrap());
    let top: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("scores.jsonl.top.json")).unwrap(),
    )
    .unwrap();
    let helpful = top["most_helpful"].as_array().unwrap();
    let harmful = top["most_harmful"].as_array().unwrap();
    assert!(!helpful.is_empty() || !harmful.is_empty());
    assert!(helpful.len() <= 3 && harmful.len() <= 3);
    for h in helpful {
        assert!(h["score"].as_f64().unwrap() < 0.0);
        assert!(h["chosen"].is_string() && h["prompt"].is_string());
    }
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.contains("most helpful") && stdout.contains("most harmful"));
    assert!(String::from_utf8_lossy(&first.stderr).contains("eta"));

    // Rerun: every gradient comes from the store, same scores.
    let again = trust(&args);
    ok(&again);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("resuming after 10 examples"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);

    // A full fine-tune (pretraining: base vs init) is converted by SVD; the last block only.
    let out2 = dir.path().join("sft.jsonl");
    let g_base = gens("base");
    ok(&trust(&[
        "attribute",
        "--model",
        p(&base),
        "--base",
        p(&init),
        "--stage",
        "sft",
        "--train",
        p(&train),
        "--vertical",
        "toxicity",
        "--protocol",
        "paper-text",
        "--generations",
        p(&g_base),
        "--limit",
        "6",
        "--lora-layers",
        "last:1",
        "--raw",
        "--max-len",
        "64",
        "--out",
        p(&out2),
    ]));
    let top2: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("sft.jsonl.top.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(top2["adapters"]["kind"], "svd");
    let layers = top2["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 8, "4 linear layers x (A, B) of block 1");
    assert!(
        layers
            .iter()
            .all(|l| l.as_str().unwrap().contains("layers.1."))
    );
    assert_eq!(std::fs::read_to_string(&out2).unwrap().lines().count(), 6);

    // Bad input: rm without a v_head, dpo without baseline generations, unknown vertical.
    let rm = trust(&[
        "attribute",
        "--model",
        p(&sft),
        "--base",
        p(&base),
        "--stage",
        "rm",
        "--train",
        p(&train),
        "--vertical",
        "toxicity",
        "--protocol",
        "paper-text",
        "--generations",
        p(&g_sft),
        "--baseline-generations",
        p(&gens("base")),
        "--limit",
        "2",
        "--out",
        p(&dir.path().join("rm.jsonl")),
    ]);
    assert!(!rm.status.success());
    assert!(String::from_utf8_lossy(&rm.stderr).contains("v_head.weight"));
    let no_base = trust(&[
        "attribute",
        "--model",
        p(&dpo),
        "--base",
        p(&sft),
        "--stage",
        "dpo",
        "--train",
        p(&train),
        "--vertical",
        "toxicity",
        "--generations",
        p(&g_dpo),
        "--out",
        p(&dir.path().join("x.jsonl")),
    ]);
    assert!(!no_base.status.success());
    assert!(String::from_utf8_lossy(&no_base.stderr).contains("--baseline-generations"));
    let wrong_vertical = trust(&[
        "attribute",
        "--model",
        p(&dpo),
        "--base",
        p(&sft),
        "--stage",
        "sft",
        "--train",
        p(&train),
        "--vertical",
        "stereotype",
        "--protocol",
        "decodingtrust",
        "--generations",
        p(&g_dpo),
        "--out",
        p(&dir.path().join("y.jsonl")),
    ]);
    assert!(!wrong_vertical.status.success());
    assert!(
        String::from_utf8_lossy(&wrong_vertical.stderr).contains("not a `stereotype` sample"),
        "{}",
        String::from_utf8_lossy(&wrong_vertical.stderr)
    );
}
