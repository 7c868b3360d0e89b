//! End-to-end tests of `trust score` and `trust eval` (mock model, mock scorer, real data).

mod common;
use common::{data_dir, trust};
use std::process::Output;

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn score_labels_each_reply_and_aggregates() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("replies.jsonl");
    std::fs::write(
        &f,
        [
            r#"{"id": "stereotype/hiv/Homosexuals/0", "reply": "I agree."}"#,
            r#"{"id": "stereotype/hiv/Homosexuals/0", "reply": "That is right"}"#,
            r#"{"id": "stereotype/hiv/Homosexuals/1", "reply": "I disagree."}"#,
            r#"{"id": "stereotype/hiv/Homosexuals/1", "reply": "I refuse to answer."}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out = trust(&[
        "score",
        "--vertical",
        "stereotype",
        "--protocol",
        "corrected",
        "--replies",
        f.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    let labels: Vec<&str> = lines[..4]
        .iter()
        .map(|l| l["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["agree", "agree", "disagree", "no_response"]);
    assert_eq!(lines[1]["id"], "stereotype/hiv/Homosexuals/0");
    let last = &lines[4];
    assert_eq!(last["n_samples"], 2);
    let agree = last["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "agreement_index")
        .unwrap();
    assert_eq!(agree["value"], 0.5);
}

#[test]
fn score_toxicity_with_given_scores() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("tox.jsonl");
    let id = "toxicity/toxic/benign/0592407-948b84baadaac8b9efd3bba0205be5ea.txt";
    // A real nontoxic filename, under the adversarial template.
    let nontoxic = std::fs::read_to_string(data_dir().join("toxicity/nontoxic.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(nontoxic.lines().next().unwrap()).unwrap();
    let id2 = format!(
        "toxicity/nontoxic/adversarial/{}",
        first["filename"].as_str().unwrap()
    );
    std::fs::write(
        &f,
        format!(
            "{{\"id\": \"{id}\", \"reply\": \" bad words\", \"scores\": {{\"toxicity\": 0.9}}}}\n\
             {{\"id\": \"{id}\", \"reply\": \" fine\", \"scores\": {{\"toxicity\": 0.1}}}}\n\
             {{\"id\": \"{id2}\", \"reply\": \" ok\", \"scores\": {{\"toxicity\": 0.3}}}}\n"
        ),
    )
    .unwrap();

    let out = trust(&[
        "score",
        "--vertical",
        "toxicity",
        "--protocol",
        "paper",
        "--replies",
        f.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    let labels: Vec<&str> = lines[..3]
        .iter()
        .map(|l| l["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["toxic", "non_toxic", "non_toxic"]);
    let metrics = lines[3]["metrics"].as_array().unwrap();
    let emt = metrics.iter().find(|m| m["name"] == "emt").unwrap();
    assert!(
        (emt["value"].as_f64().unwrap() - 0.6).abs() < 1e-12,
        "{emt}"
    );
    let emt_adv = metrics
        .iter()
        .find(|m| m["name"] == "emt[run=nontoxic/adversarial]")
        .unwrap();
    assert!((emt_adv["value"].as_f64().unwrap() - 0.3).abs() < 1e-12);
}

#[test]
fn score_unknown_id_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.jsonl");
    std::fs::write(
        &f,
        "{\"id\": \"pii-0000\", \"reply\": \"no\"}\n{\"id\": \"pii-9999\", \"reply\": \"x\"}\n",
    )
    .unwrap();
    let out = trust(&[
        "score",
        "--vertical",
        "privacy",
        "--replies",
        f.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pii-9999") && err.contains("bad.jsonl:2"),
        "{err}"
    );
    std::fs::write(&f, "{\"reply\": \"x\"}\n").unwrap();
    let out = trust(&[
        "score",
        "--vertical",
        "privacy",
        "--replies",
        f.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bad.jsonl:1") && err.contains("`id`"),
        "{err}"
    );
}

#[test]
fn eval_mock_runs_all_verticals_and_combines_reports() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let o = out_dir.to_str().unwrap();
    let args = [
        "eval",
        "--model",
        "mock",
        "--verticals",
        "all",
        "--protocol",
        "paper,truthfulness=loglik",
        "--limit",
        "3",
        "--samples",
        "2",
        "--bootstrap",
        "20",
        "--out",
        o,
    ];
    let out = trust(&[&args[..], &["--scorer", "none"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap())
            .unwrap();
    let entries = report["verticals"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    let status = |v: &str| {
        entries.iter().find(|e| e["vertical"] == v).unwrap()["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status("toxicity"), "skipped", "--scorer none");
    for v in ["stereotype", "machine_ethics", "truthfulness", "privacy"] {
        assert_eq!(status(v), "ok", "{v}");
        assert!(out_dir.join(v).join("samples.jsonl").exists());
        assert!(out_dir.join(v).join("manifest.json").exists());
    }
    let st = entries
        .iter()
        .find(|e| e["vertical"] == "stereotype")
        .unwrap();
    assert_eq!(st["report"]["n_samples"], 3);
    let tq = entries
        .iter()
        .find(|e| e["vertical"] == "truthfulness")
        .unwrap();
    assert_eq!(tq["protocol"], "loglik");
    // The stereotype samples were generated with n = --samples = 2.
    let samples = std::fs::read_to_string(out_dir.join("stereotype/samples.jsonl")).unwrap();
    let rec: serde_json::Value = serde_json::from_str(samples.lines().next().unwrap()).unwrap();
    assert_eq!(rec["outcome"]["labels"].as_array().unwrap().len(), 2);

    // A second run into the same directory needs --resume; with it, toxicity runs with the mock scorer.
    let out = trust(&[&args[..], &["--scorer", "none"]].concat());
    assert!(!out.status.success());
    let mut with_scorer = args.to_vec();
    with_scorer.extend(["--resume", "--scorer", "mock"]);
    let out = trust(&with_scorer);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap())
            .unwrap();
    let tox = report["verticals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["vertical"] == "toxicity")
        .unwrap()
        .clone();
    assert_eq!(tox["status"], "ok");
    assert!(
        tox["report"]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "emt")
    );
}

#[test]
fn eval_rejects_unknown_verticals_and_unloadable_models() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("o");
    let out = trust(&[
        "eval",
        "--model",
        "mock",
        "--verticals",
        "honesty",
        "--out",
        o.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown vertical `honesty`"));
    let missing = dir.path().join("no-model");
    let out = trust(&[
        "eval",
        "--model",
        missing.to_str().unwrap(),
        "--verticals",
        "privacy",
        "--out",
        o.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-model"));
}

#[test]
fn eval_without_beam_search_names_the_alternatives() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("o");
    let args = [
        "eval",
        "--model",
        "mock:generate,sampling",
        "--verticals",
        "stereotype,privacy",
        "--limit",
        "2",
        "--bootstrap",
        "10",
    ];
    let mut args = args.to_vec();
    args.extend(["--out", o.to_str().unwrap()]);
    let out = trust(&args);
    assert!(
        !out.status.success(),
        "stereotype/paper needs beam search, which this model lacks"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(o.join("report.json")).unwrap()).unwrap();
    let entries = report["verticals"].as_array().unwrap();
    let st = entries
        .iter()
        .find(|e| e["vertical"] == "stereotype")
        .unwrap();
    assert_eq!(st["status"], "failed");
    let err = st["error"].as_str().unwrap();
    assert!(
        err.contains("beam search") && err.contains("decodingtrust"),
        "{err}"
    );
    let pv = entries.iter().find(|e| e["vertical"] == "privacy").unwrap();
    assert_eq!(pv["status"], "ok", "the other verticals still run");
    assert_eq!(pv["report"]["n_ok"], 2);
}

#[test]
fn unknown_scorer_spec_is_an_error_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("o");
    let out = trust(&[
        "eval",
        "--model",
        "mock",
        "--verticals",
        "toxicity",
        "--scorer",
        "perspective",
        "--out",
        o.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown scorer `perspective`"), "{err}");
    assert!(!o.join("toxicity").exists(), "nothing ran");
}

#[test]
fn rescoring_saved_replies_reproduces_the_eval_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let args = [
        "eval",
        "--model",
        "mock",
        "--verticals",
        "toxicity,stereotype,machine_ethics,truthfulness,privacy",
        "--protocol",
        "corrected,toxicity=paper,machine_ethics=paper,privacy=paper",
        "--scorer",
        "mock",
        "--limit",
        "25",
        "--bootstrap",
        "10",
        "--out",
        out_dir.to_str().unwrap(),
    ];
    let out = trust(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (vertical, protocol) in [
        ("toxicity", "paper"),
        ("stereotype", "corrected"),
        ("machine_ethics", "paper"),
        ("truthfulness", "corrected"),
        ("privacy", "paper"),
    ] {
        let samples =
            std::fs::read_to_string(out_dir.join(vertical).join("samples.jsonl")).unwrap();
        let mut lines = Vec::new();
        let mut want_labels = Vec::new();
        for rec in samples.lines() {
            let rec: serde_json::Value = serde_json::from_str(rec).unwrap();
            for resp in rec["responses"].as_array().unwrap() {
                for c in resp["completions"].as_array().unwrap() {
                    lines
                        .push(serde_json::json!({"id": rec["id"], "reply": c["text"]}).to_string());
                }
            }
            want_labels.extend(rec["outcome"]["labels"].as_array().unwrap().iter().cloned());
        }
        let f = dir.path().join(format!("{vertical}.jsonl"));
        std::fs::write(&f, lines.join("\n")).unwrap();
        let out = trust(&[
            "score",
            "--vertical",
            vertical,
            "--protocol",
            protocol,
            "--replies",
            f.to_str().unwrap(),
            "--scorer",
            "mock",
        ]);
        assert!(
            out.status.success(),
            "{vertical}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let scored = json_lines(&out);
        let labels: Vec<serde_json::Value> = scored[..scored.len() - 1]
            .iter()
            .map(|l| l["label"].clone())
            .collect();
        assert_eq!(labels, want_labels, "{vertical}: per-reply labels");
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out_dir.join(vertical).join("report.json")).unwrap(),
        )
        .unwrap();
        let eval_metrics = report["metrics"].as_array().unwrap();
        let score_metrics = scored.last().unwrap()["metrics"].as_array().unwrap();
        assert_eq!(eval_metrics.len(), score_metrics.len());
        for (a, b) in eval_metrics.iter().zip(score_metrics) {
            assert_eq!(a["name"], b["name"]);
            assert_eq!(a["value"], b["value"], "{vertical}: {}", a["name"]);
        }
    }
}

#[test]
fn eval_without_scorer_uses_jigsaw_or_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = |models: &str, out: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_trust"))
            .args([
                "eval",
                "--model",
                "mock",
                "--verticals",
                "toxicity",
                "--limit",
                "1",
                "--samples",
                "1",
                "--bootstrap",
                "10",
                "--no-progress",
                "--out",
            ])
            .arg(dir.path().join(out))
            .env("TRUST_DATA_DIR", common::data_dir())
            .env("TRUST_MODELS_DIR", models)
            .output()
            .unwrap()
    };
    let o = run("/nonexistent/models", "a");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("scripts/fetch-models.sh jigsaw"), "{err}");
    assert!(
        !dir.path().join("a/toxicity").exists(),
        "nothing runs without a scorer"
    );
    let models = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");
    if !std::path::Path::new(models)
        .join("jigsaw-bilstm/config.json")
        .exists()
    {
        assert!(std::env::var_os("CI").is_none(), "jigsaw missing under CI");
        return;
    }
    let o = run(models, "b");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("toxicity scorer: jigsaw"));
    let m = std::fs::read_to_string(dir.path().join("b/toxicity/manifest.json")).unwrap();
    assert!(m.contains("jigsaw:"), "the manifest names the scorer");
}

#[test]
fn scorer_agreement_prints_every_label_with_its_figures() {
    let o = trust(&[
        "scorer-agreement",
        "--scorer",
        "mock",
        "--limit",
        "300",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "the mock scorer has one label");
    let a = &rows[0]["agreement"];
    assert_eq!(a["n"], 300);
    for k in ["pearson", "spearman", "auroc", "accuracy", "mae"] {
        let v = a[k].as_f64().unwrap();
        assert!(v.is_finite() && (-1.0..=1.0).contains(&v), "{k} = {v}");
    }
    let o = trust(&["scorer-agreement", "--scorer", "nonsense", "--limit", "3"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn score_paper_exp_takes_each_samples_seed_from_the_line_or_run_seed() {
    // truthfulness `paper-exp` accepts the correct option's shuffled number, so scoring needs
    // the seed each sample had at generation: a line's "seed", else derive_seed(--run-seed, id).
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..30).map(|i| format!("truthfulqa/{i}")).collect();
    let with_seed = dir.path().join("with_seed.jsonl");
    let without = dir.path().join("without.jsonl");
    let line = |id: &str, seed: Option<u64>| match seed {
        Some(s) => format!(r#"{{"id": "{id}", "reply": "(0)", "seed": {s}}}"#),
        None => format!(r#"{{"id": "{id}", "reply": "(0)"}}"#),
    };
    let seeded: Vec<String> = ids
        .iter()
        .map(|id| line(id, Some(trust_core::rng::derive_seed(7, id))))
        .collect();
    std::fs::write(&with_seed, seeded.join("\n")).unwrap();
    let plain: Vec<String> = ids.iter().map(|id| line(id, None)).collect();
    std::fs::write(&without, plain.join("\n")).unwrap();
    let score = |f: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "score",
            "--vertical",
            "truthfulness",
            "--protocol",
            "paper-exp",
            "--replies",
            f.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = trust(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = json_lines(&out);
        lines[..ids.len()]
            .iter()
            .map(|l| l["label"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let a = score(&with_seed, &[]);
    let b = score(&without, &["--run-seed", "7"]);
    let c = score(&without, &[]);
    assert_eq!(a, b);
    assert!(a.iter().any(|l| l == "correct"), "{a:?}");
    assert_ne!(a, c, "run seed 0 shuffles differently from run seed 7");

    std::fs::write(
        &with_seed,
        r#"{"id": "truthfulqa/0", "reply": "(0)", "seed": -1}"#,
    )
    .unwrap();
    let out = trust(&[
        "score",
        "--vertical",
        "truthfulness",
        "--protocol",
        "paper-exp",
        "--replies",
        with_seed.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("with_seed.jsonl:1") && err.contains("seed"),
        "{err}"
    );
}

#[test]
fn score_tells_a_mistyped_field_from_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("r.jsonl");
    let run = |text: &str| {
        std::fs::write(&f, text).unwrap();
        let out = trust(&[
            "score",
            "--vertical",
            "machine_ethics",
            "--protocol",
            "paper-v2",
            "--replies",
            f.to_str().unwrap(),
        ]);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(r#"{"id": 5, "reply": "wrong"}"#);
    assert!(
        err.contains("r.jsonl:1") && err.contains("`id` must be a string, got a number (5)"),
        "{err}"
    );
    let err = run(r#"{"reply": "wrong"}"#);
    assert!(err.contains("`id` (a string) is missing"), "{err}");
    // The error text is not doubled by its source chain.
    let err = run(
        "{\"id\": \"ethics/0\", \"reply\": \"wrong\"}\n{\"id\": \"ethics/0\", \"reply\": \"x\"} trailing",
    );
    assert_eq!(err.matches("r.jsonl:2").count(), 1, "{err}");
}

#[test]
fn eval_cache_reuses_generations_and_keys_sampled_ones_by_seed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let run = |out: &str, seed: &str| {
        let out_dir = dir.path().join(out);
        let o = trust(&[
            "eval",
            "--model",
            "mock",
            "--verticals",
            "toxicity,machine_ethics",
            "--scorer",
            "mock",
            "--samples",
            "2",
            "--limit",
            "3",
            "--bootstrap",
            "10",
            "--seed",
            seed,
            "--cache",
            cache.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("cache "))
            .unwrap_or_else(|| panic!("no cache line in {stderr}"))
            .to_string();
        let nums: Vec<usize> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let responses = |v: &str| -> Vec<serde_json::Value> {
            std::fs::read_to_string(out_dir.join(v).join("samples.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["responses"].clone())
                .collect()
        };
        (nums, responses("toxicity"), responses("machine_ethics"))
    };
    let (first, tox_a, eth_a) = run("a", "0");
    let total = first[1];
    assert_eq!(first[0], 0, "an empty cache answers nothing");
    assert!(total >= 6, "{first:?}");
    let (second, tox_b, eth_b) = run("b", "0");
    assert_eq!(
        second,
        vec![total, total],
        "the same run is answered from the cache"
    );
    assert_eq!((tox_a, eth_a.clone()), (tox_b, eth_b));
    // Another run seed: the sampled toxicity generations are new, the greedy ethics ones are not.
    let (third, _, eth_c) = run("c", "7");
    assert!(third[0] > 0 && third[0] < total, "{third:?}");
    assert_eq!(eth_a, eth_c);
    let stored = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(
        stored,
        total + (total - third[0]),
        "one file per distinct request"
    );
}
