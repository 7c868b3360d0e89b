//! `trust align --stage rm` and `--stage ppo` end to end on a tiny random GPT-NeoX: the reward
//! model reports its held-out accuracy and loads as a reward model, PPO logs every step and
//! writes a loadable policy, and bad combinations of flags are refused.
#![cfg(feature = "candle")]

mod common;
use common::{data_dir, trust};
use std::path::Path;
use std::process::Output;

use trust_backends::candle::tiny::{NeoxShape, write_random_model};

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn tiny(dir: &Path) {
    let pairs = trust_align::hh::load(&data_dir().join("hh-rlhf/harmless-base-test.jsonl.gz"))
        .unwrap()
        .pairs;
    let texts: Vec<String> = pairs
        .iter()
        .take(200)
        .flat_map(|p| [p.prompt.clone() + &p.chosen, p.prompt.clone() + &p.rejected])
        .collect();
    let shape = NeoxShape {
        vocab_size: 300,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        intermediate_size: 64,
        max_positions: 256,
        rotary_pct: 0.25,
    };
    write_random_model(dir, &shape, texts.iter(), 0).unwrap();
}

#[test]
fn rm_and_ppo_stages_train_report_and_refuse_bad_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    tiny(&base);
    let train = data_dir().join("hh-rlhf/harmless-base-test.jsonl.gz");
    let common = [
        "--train",
        p(&train),
        "--limit",
        "24",
        "--batch-size",
        "4",
        "--max-len",
        "64",
    ];
    let align = |extra: &[&str]| -> Output {
        let mut args = vec!["align"];
        args.extend(common);
        args.extend(extra);
        trust(&args)
    };
    let sft = tmp.path().join("sft");
    ok(&align(&[
        "--stage",
        "sft",
        "--model",
        p(&base),
        "--steps",
        "2",
        "--out",
        p(&sft),
    ]));

    // Reward model with 6 held-out pairs.
    let rm = tmp.path().join("rm");
    let out = align(&[
        "--stage",
        "rm",
        "--model",
        p(&base),
        "--steps",
        "3",
        "--heldout",
        "6",
        "--out",
        p(&rm),
    ]);
    let stdout = ok(&out);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let acc = summary["heldout_pair_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{summary}");
    let held: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rm.join("heldout.json")).unwrap()).unwrap();
    assert_eq!(held["n_pairs"], 6);
    assert_eq!(held["pair_accuracy"].as_f64(), Some(acc));
    assert!(String::from_utf8_lossy(&out.stderr).contains("held-out reward accuracy"));
    let log = std::fs::read_to_string(rm.join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3);
    assert!(log.contains("reward_accuracy"));
    trust_align::reward::RewardModel::load_cpu(&rm).unwrap();

    // PPO from the SFT model against that reward model.
    let ppo = tmp.path().join("ppo");
    let ppo_args = [
        "--stage",
        "ppo",
        "--model",
        p(&sft),
        "--reward",
        p(&rm),
        "--steps",
        "2",
        "--rollout-batch",
        "4",
        "--minibatch-size",
        "2",
        "--ppo-epochs",
        "1",
        "--max-new-tokens",
        "6",
        "--max-prompt-len",
        "48",
        "--out",
        p(&ppo),
    ];
    let out = align(&ppo_args);
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("step 2/2") && stderr.contains("eta") && stderr.contains("tok/s"),
        "{stderr}"
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["steps"], 2);
    let log = std::fs::read_to_string(ppo.join("train_log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for key in [
        "mean_score",
        "mean_kl",
        "kl_coef",
        "entropy",
        "pg_clipfrac",
        "vf_loss",
    ] {
        assert!(
            lines[1][key].as_f64().is_some_and(f64::is_finite),
            "{key}: {}",
            lines[1]
        );
    }
    for f in [
        "model.safetensors",
        "value_head.safetensors",
        "adapter/adapter_config.json",
        "tokenizer.json",
    ] {
        assert!(ppo.join(f).exists(), "{f} missing");
    }
    // Rerunning a finished run resumes at its end: no step is retaken, the log is kept.
    let again = align(&ppo_args);
    ok(&again);
    assert!(!String::from_utf8_lossy(&again.stderr).contains("step 1/2"));
    assert_eq!(
        std::fs::read_to_string(ppo.join("train_log.jsonl")).unwrap(),
        log
    );

    // Refused: PPO without a reward model, a "reward model" without a head, --full off rm.
    let no_rm = align(&[
        "--stage",
        "ppo",
        "--model",
        p(&sft),
        "--out",
        p(&tmp.path().join("x")),
    ]);
    assert!(!no_rm.status.success());
    assert!(String::from_utf8_lossy(&no_rm.stderr).contains("--reward"));
    let headless = align(&[
        "--stage",
        "ppo",
        "--model",
        p(&sft),
        "--reward",
        p(&sft),
        "--steps",
        "1",
        "--out",
        p(&tmp.path().join("y")),
    ]);
    assert!(!headless.status.success());
    assert!(String::from_utf8_lossy(&headless.stderr).contains("v_head.weight"));
    let full_sft = align(&[
        "--stage",
        "sft",
        "--full",
        "--model",
        p(&base),
        "--out",
        p(&tmp.path().join("z")),
    ]);
    assert!(!full_sft.status.success());
    assert!(String::from_utf8_lossy(&full_sft.stderr).contains("--full"));
}
