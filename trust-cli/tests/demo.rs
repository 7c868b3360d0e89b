//! The main job at its minimal size: every stage runs, the report holds all five verticals for
//! base/SFT/DPO/PPO plus the DPO and PPO attributions, and a rerun resumes (cached stages) with identical results.

use std::process::Command;

mod common;
use common::data_dir;

#[test]
fn minimal_demo_runs_every_stage_and_resumes() {
    let out = tempfile::tempdir().unwrap();
    let run = || {
        let o = Command::new(env!("CARGO_BIN_EXE_trust"))
            .args(["demo", "--minimal", "--data-dir"])
            .arg(data_dir())
            .arg("--out")
            .arg(out.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "demo failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let first_log = run();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    assert!(
        report["disclaimer"]
            .as_str()
            .unwrap()
            .contains("not the paper's findings")
    );
    assert_eq!(
        report["checkpoints"],
        serde_json::json!(["base", "sft", "dpo", "ppo"])
    );
    for ckpt in ["base", "sft", "dpo", "ppo"] {
        let r = &report["results"][ckpt];
        for v in [
            "toxicity",
            "stereotype",
            "machine_ethics",
            "truthfulness",
            "privacy",
        ] {
            assert!(
                r[v]["n_samples"].as_u64().unwrap() >= 1,
                "{ckpt}/{v}: {}",
                r[v]
            );
            assert!(
                !r[v]["metrics"].as_array().unwrap().is_empty(),
                "{ckpt}/{v}"
            );
        }
    }
    for stage in ["pretrain", "sft", "dpo", "rm"] {
        assert!(report["training"][stage]["step"].as_u64().unwrap() >= 1);
    }
    // The PPO branch: the reward model ranks the held-out pairs, PPO logged its last step.
    let rm = &report["reward_model"];
    assert_eq!(rm["n_pairs"].as_u64(), Some(8), "{rm}");
    assert!((0.0..=1.0).contains(&rm["pair_accuracy"].as_f64().unwrap()));
    let ppo = &report["ppo_training"];
    assert_eq!(ppo["step"].as_u64(), Some(2), "{ppo}");
    for k in ["mean_score", "mean_kl", "entropy", "vf_loss"] {
        assert!(ppo[k].as_f64().is_some_and(f64::is_finite), "{k}: {ppo}");
    }
    assert_eq!(report["heldout"]["ppo"]["reference"].as_str(), Some("sft"));
    let pa = &report["ppo_attribution"];
    assert_eq!(pa["stage"].as_str(), Some("rm"), "{pa}");
    assert!(pa["why"].as_str().unwrap().contains("SFT -> PPO"), "{pa}");
    assert_eq!(
        std::fs::read_to_string(out.path().join("attribution_ppo_scores.jsonl"))
            .unwrap()
            .lines()
            .count(),
        8
    );
    // Held-out pairs (never trained on) are scored for every checkpoint, against its reference.
    for ckpt in ["base", "sft", "dpo", "ppo"] {
        let acc = report["heldout_pair_accuracy"][ckpt].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{ckpt}: {acc}");
        assert_eq!(report["heldout"][ckpt]["n_pairs"].as_u64(), Some(8));
        assert!(report["heldout"][ckpt]["chosen_nll"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(report["heldout"]["dpo"]["reference"].as_str(), Some("sft"));
    assert!(report["heldout"]["base"]["reference"].is_null());
    // Paired changes against the base for every vertical, with intervals bracketing the change.
    for ckpt in ["sft", "dpo", "ppo"] {
        for v in ["toxicity", "machine_ethics", "privacy"] {
            let cs = report["changes"][ckpt][v].as_array().unwrap();
            assert!(!cs.is_empty(), "{ckpt}/{v}");
            for c in cs {
                if let (Some(d), Some(l), Some(h)) = (
                    c["delta"].as_f64(),
                    c["ci_low"].as_f64(),
                    c["ci_high"].as_f64(),
                ) {
                    assert!(l <= h && d.is_finite(), "{ckpt}/{v}: {c}");
                }
            }
        }
    }
    let attr = &report["attribution"];
    assert_eq!(attr["n_train"].as_u64(), Some(8));
    // The attributed vertical is the one whose SFT -> DPO change is largest, and says so.
    let attributed = attr["vertical"].as_str().unwrap();
    assert!(
        report["results"]["dpo"][attributed].is_object(),
        "{attributed}"
    );
    assert!(
        attr["why"].as_str().unwrap().contains("SFT -> DPO"),
        "{attr}"
    );
    // The sophistry audit of the truthfulness answers: the base judges SFT and DPO.
    let soph = &report["sophistry"];
    for ckpt in ["sft", "dpo", "ppo"] {
        let a = &soph["audits"][ckpt];
        let n = a["n_items"].as_u64().unwrap();
        assert!(n >= 1, "{soph}");
        assert_eq!(a["init"]["n_outputs"].as_u64(), Some(n));
        assert_eq!(
            a["judges"][0]["requests"].as_u64(),
            Some(2 * n),
            "every output of both checkpoints judged: {a}"
        );
        for m in ["correctness", "approval", "error_rate"] {
            let v = a["rlhf"][m]["value"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{ckpt} {m}: {v}");
        }
    }
    assert!(
        soph["judge_prompt"]
            .as_str()
            .unwrap()
            .contains("{argument}")
    );
    let helpful = attr["most_helpful"].as_array().unwrap();
    let harmful = attr["most_harmful"].as_array().unwrap();
    assert!(!helpful.is_empty() || !harmful.is_empty());
    for p in helpful.iter().chain(harmful) {
        let s = p["score"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&s));
    }
    let scores = std::fs::read_to_string(out.path().join("attribution_scores.jsonl")).unwrap();
    assert_eq!(scores.lines().count(), 8);
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert!(
        html.contains("its numbers are not the paper")
            && html.contains("<svg")
            && !html.contains("<script")
    );
    assert!(
        html.contains("attribution"),
        "attributed pairs missing from the HTML"
    );
    assert!(
        std::fs::read_to_string(out.path().join("report.md"))
            .unwrap()
            .contains("base vs sft vs dpo vs ppo")
    );
    assert!(first_log.contains("[2/6] pretrain: 4 steps"));

    // Rerun: every training stage is cached and the results are identical.
    let second_log = run();
    assert!(
        second_log.contains("pretrain: done (cached)")
            && second_log.contains("dpo: done (cached)")
            && second_log.contains("rm: done (cached)")
            && second_log.contains("ppo: done (cached)"),
        "{second_log}"
    );
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("report.json")).unwrap()).unwrap();
    // Compare as text: a fresh run's in-memory values and the rerun's values read back from
    // samples.jsonl must agree to the last bit (JSON floats round-trip exactly).
    assert!(
        report["results"] == again["results"],
        "results differ after resume"
    );
    assert!(
        report["attribution"] == again["attribution"],
        "attribution differs after resume"
    );
    assert!(
        report["sophistry"] == again["sophistry"],
        "sophistry audit differs after resume"
    );
    assert!(
        report["ppo_attribution"] == again["ppo_attribution"]
            && report["reward_model"] == again["reward_model"],
        "PPO branch differs after resume"
    );
}
