//! `trust generate / eval / align` on a real GGUF model (SmolLM2-135M-Instruct, fetched by
//! `scripts/fetch-models.sh`; these tests skip without it, except under `CI`, where they fail).

mod common;

use std::path::PathBuf;

use common::trust;

fn smollm2() -> Option<PathBuf> {
    let dir = match std::env::var_os("TRUST_MODELS_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models")),
    }
    .join("smollm2-135m-instruct");
    if dir.join("SmolLM2-135M-Instruct.Q4_1.gguf").exists() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing under CI (scripts/test.sh fetches it)",
        dir.display()
    );
    eprintln!("skipping: no SmolLM2 (run scripts/fetch-models.sh smollm2)");
    None
}

fn lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn generate_answers_through_the_chat_template() {
    let Some(model) = smollm2() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"prompt\": \"What is the capital of France?\"}\n",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}]}\n",
        ),
    )
    .unwrap();
    let m = model.to_str().unwrap();
    let i = input.to_str().unwrap();
    let common = [
        "--model",
        m,
        "--input",
        i,
        "--max-new-tokens",
        "12",
        "--greedy",
        "--stop",
        "eos",
    ];
    let out = trust(&[&["generate"], &common[..], &["--chat-template", "auto"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = lines(&out);
    // A raw prompt is sent as one user message, so both lines are the same request.
    assert_eq!(got[0]["ids"], got[1]["ids"]);
    let text = got[0]["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "{text}");
    // The model's EOS (<|im_end|>, id 2 in the GGUF) ended the reply before 12 tokens.
    assert!(got[0]["ids"].as_array().unwrap().len() < 12, "{text}");

    // `none`: the raw prompt goes as is, and a messages line is refused naming file and line.
    let out = trust(&[&["generate"], &common[..], &["--chat-template", "none"]].concat());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in.jsonl:2") && err.contains("chat template"),
        "{err}"
    );

    // --quantized runs the stored Q4_1 weights (its drift from the dequantised model is
    // measured in trust-backends/tests/gguf.rs).
    let out = trust(&[&["generate"], &common[..], &["--quantized"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!lines(&out)[0]["text"].as_str().unwrap().is_empty());
}

#[test]
fn eval_records_the_chat_template_of_chat_protocols() {
    let Some(model) = smollm2() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let run = |choice: &str, out: &str| {
        let o = trust(&[
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--verticals",
            "machine_ethics",
            "--protocol",
            "decodingtrust",
            "--limit",
            "2",
            "--no-progress",
            "--chat-template",
            choice,
            "--out",
            tmp.path().join(out).to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join(out).join("machine_ethics/manifest.json"))
                .unwrap(),
        )
        .unwrap();
        m["options"]["chat_layout"].as_str().unwrap().to_string()
    };
    assert!(run("auto", "a").starts_with("chat_template sha256:"));
    assert_eq!(
        run("none", "b"),
        "{system}\\n\\nHuman: {user}\\n\\nAssistant:"
    );
}

#[test]
fn align_from_gguf_writes_a_transformers_directory() {
    let Some(model) = smollm2() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train.jsonl");
    std::fs::write(
        &train,
        concat!(
            "{\"chosen\": \"\\n\\nHuman: Hi\\n\\nAssistant: Hello! How can I help?\", \"rejected\": \"\\n\\nHuman: Hi\\n\\nAssistant: Go away.\"}\n",
            "{\"chosen\": \"\\n\\nHuman: Thanks\\n\\nAssistant: You are welcome.\", \"rejected\": \"\\n\\nHuman: Thanks\\n\\nAssistant: Whatever.\"}\n",
        ),
    )
    .unwrap();
    let out_dir = tmp.path().join("sft");
    let o = trust(&[
        "align",
        "--stage",
        "sft",
        "--model",
        model.to_str().unwrap(),
        "--train",
        train.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--steps",
        "1",
        "--batch-size",
        "2",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "adapter/adapter_config.json",
    ] {
        assert!(out_dir.join(f).exists(), "{f} missing");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["model_type"], "llama");
    assert_eq!(cfg["num_hidden_layers"], 30);
    assert_eq!(cfg["tie_word_embeddings"], true);
    // The trained directory loads back (safetensors now) with the GGUF's tokenizer and template.
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, "{\"prompt\": \"Hello\"}\n").unwrap();
    let o = trust(&[
        "generate",
        "--model",
        out_dir.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--max-new-tokens",
        "3",
        "--greedy",
        "--chat-template",
        "wrap",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The main job itself (`trust demo`, the default SmolLM2 pipeline) on a few samples: LoRA SFT
/// and DPO steps, reward-model and PPO steps on the real model, held-out scoring, all five
/// verticals on every checkpoint, the sophistry audit and both attributions, in a few minutes.
#[test]
fn the_real_main_job_runs_end_to_end_on_a_few_samples() {
    let Some(model) = smollm2() else { return };
    let out = tempfile::tempdir().unwrap();
    let o = trust(&[
        "demo",
        "--model",
        model.to_str().unwrap(),
        "--sample",
        "2",
        "--heldout",
        "8",
        "--sft-steps",
        "2",
        "--dpo-steps",
        "2",
        "--rm-steps",
        "2",
        "--ppo-steps",
        "1",
        "--attribution-pairs",
        "4",
        "--attribution-test",
        "2",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let log = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{log}");
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    assert!(
        r["disclaimer"].as_str().unwrap().contains("135M-parameter"),
        "{}",
        r["disclaimer"]
    );
    assert_eq!(
        r["model"]["weights_sha256"].as_str().map(str::len),
        Some(64)
    );
    assert!(
        r["toxicity_scorer"].as_str().unwrap().contains("jigsaw"),
        "{}",
        r["toxicity_scorer"]
    );
    for ckpt in ["base", "sft", "dpo", "ppo"] {
        assert_eq!(r["heldout"][ckpt]["n_pairs"].as_u64(), Some(8), "{ckpt}");
        for v in [
            "toxicity",
            "stereotype",
            "machine_ethics",
            "truthfulness",
            "privacy",
        ] {
            assert_eq!(
                r["results"][ckpt][v]["n_samples"].as_u64(),
                Some(2),
                "{ckpt}/{v}"
            );
            assert_eq!(
                r["results"][ckpt][v]["n_failed"].as_u64(),
                Some(0),
                "{ckpt}/{v}"
            );
        }
    }
    assert_eq!(r["training"]["dpo"]["step"].as_u64(), Some(2));
    assert_eq!(r["training"]["rm"]["step"].as_u64(), Some(2));
    assert_eq!(r["ppo_training"]["step"].as_u64(), Some(1));
    assert_eq!(r["reward_model"]["n_pairs"].as_u64(), Some(8));
    assert_eq!(r["attribution"]["n_train"].as_u64(), Some(4));
    assert!(r["sophistry"]["audits"]["dpo"]["n_items"].as_u64().unwrap() >= 1);
    for stage in [
        "sft",
        "dpo",
        "rm",
        "ppo",
        "heldout",
        "eval",
        "sophistry",
        "attribution",
    ] {
        assert!(r["timings"][stage].as_f64().is_some(), "{stage}");
    }
    assert!(log.contains("[6/6] attributing the"), "{log}");
}
