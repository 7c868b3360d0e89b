//! Reward-model and PPO training on a tiny GPT-NeoX: the reward model ranks held-out pairs, PPO
//! raises the reward of a fixed reward model with a bounded KL, and both resume to the byte.

use std::path::Path;

use trust_align::heldout::split_heldout;
use trust_align::ppo::{PpoConfig, PpoRun, PpoStepLog, train_ppo};
use trust_align::reward::RewardModel;
use trust_align::train::{Stage, TrainConfig, train};

mod common;
use common::{pairs, tiny_model};

fn rm_cfg(steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 4,
        max_len: 48,
        lr: 5e-3,
        ..TrainConfig::new(Stage::Rm)
    }
}

/// A policy that answers with the chosen reply to half the prompts and with the rejected one to
/// the other half: full-parameter language modelling on those dialogues.
fn mixed_policy(base: &Path, out: &Path) {
    let mixed: Vec<_> = pairs()
        .into_iter()
        .map(|mut p| {
            if p.index % 2 == 1 {
                p.chosen = p.rejected.clone();
            }
            p
        })
        .collect();
    let cfg = TrainConfig {
        steps: 30,
        batch_size: 4,
        max_len: 48,
        lr: 1e-2,
        ..TrainConfig::new(Stage::Pretrain)
    };
    train(&cfg, base, None, &mixed, out, &mut |_| {}).unwrap();
}

#[test]
fn reward_model_ranks_held_out_pairs_and_resumes_exactly() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    tiny_model(&base);
    let (train_pairs, held) = split_heldout(&pairs(), 6, 0);
    let rm_dir = root.path().join("rm");
    let logs = train(&rm_cfg(12), &base, None, &train_pairs, &rm_dir, &mut |_| {}).unwrap();
    let first = logs[0].loss;
    let last = logs.last().unwrap();
    assert!(
        last.loss < first - 0.2 && last.reward_accuracy == Some(1.0),
        "RM loss did not fall: {logs:?}"
    );
    // The output is a reward model: transformer + `v_head` (what `trust attribute --stage rm`
    // reads), and it ranks the held-out pairs.
    let dev = candle_core::Device::Cpu;
    let rm = RewardModel::load(&rm_dir, &dev).unwrap();
    let eval = rm.evaluate_pairs(&held, 48, 4, &mut |_, _| {}).unwrap();
    assert_eq!(eval.n_pairs, 6);
    assert_eq!(eval.pair_accuracy, 1.0, "{eval:?}");
    assert!(eval.mean_margin > 0.5, "{eval:?}");
    assert!(rm_dir.join("adapter/adapter_config.json").exists());

    // Resume: stop after step 5 (checkpoint at 4), resume, compare with an uninterrupted run.
    let mut c = rm_cfg(8);
    c.checkpoint_every = 4;
    let part = root.path().join("rm-part");
    let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = train(&c, &base, None, &train_pairs, &part, &mut |l| {
            if l.step == 5 {
                panic!("simulated crash after step 5");
            }
        });
    }));
    assert!(stopped.is_err());
    let resumed = train(&c, &base, None, &train_pairs, &part, &mut |_| {}).unwrap();
    let full_dir = root.path().join("rm-full");
    let full = train(&c, &base, None, &train_pairs, &full_dir, &mut |_| {}).unwrap();
    assert_eq!(resumed, full);
    assert_eq!(
        std::fs::read(part.join("model.safetensors")).unwrap(),
        std::fs::read(full_dir.join("model.safetensors")).unwrap(),
        "resumed reward model differs"
    );
}

fn ppo_cfg(steps: usize) -> PpoConfig {
    PpoConfig {
        steps,
        rollout_batch: 8,
        minibatch_size: 4,
        ppo_epochs: 2,
        max_new_tokens: 10,
        max_prompt_len: 32,
        lr: 1e-2,
        ..PpoConfig::default()
    }
}

/// The logs without their timings.
fn strip(logs: &[PpoStepLog]) -> Vec<PpoStepLog> {
    logs.iter()
        .map(|l| PpoStepLog {
            rollout_secs: 0.0,
            optim_secs: 0.0,
            ..l.clone()
        })
        .collect()
}

#[test]
fn ppo_raises_the_reward_with_bounded_kl_and_resumes_exactly() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    tiny_model(&base);
    let sft_dir = root.path().join("sft");
    mixed_policy(&base, &sft_dir);
    let rm_dir = root.path().join("rm");
    train(&rm_cfg(12), &base, None, &pairs(), &rm_dir, &mut |_| {}).unwrap();
    let prompts: Vec<(usize, String)> = pairs().into_iter().map(|p| (p.index, p.prompt)).collect();

    let cfg = PpoConfig {
        rollout_batch: 16,
        ppo_epochs: 4,
        lr: 5e-3,
        init_kl_coef: 0.1,
        ..ppo_cfg(24)
    };
    let out = root.path().join("ppo");
    let run = PpoRun {
        config: &cfg,
        policy_dir: &sft_dir,
        reward_dir: &rm_dir,
        prompts: &prompts,
        out_dir: &out,
    };
    let logs = train_ppo(&run, &mut |_| {}).unwrap();
    assert_eq!(logs.len(), 24);
    let mean = |ls: &[PpoStepLog]| ls.iter().map(|l| l.mean_score).sum::<f64>() / ls.len() as f64;
    let (early, late) = (mean(&logs[..4]), mean(&logs[20..]));
    // A step's mean score (16 rollouts) is noisy: over seeds 1-8 this rise ranged 0.39-3.13
    // (mean 1.1), with a fixed reward model of scores around 2.
    assert!(
        late > early + 0.5,
        "mean reward did not rise: {:?}",
        logs.iter().map(|l| l.mean_score).collect::<Vec<_>>()
    );
    // The first rollouts come from the reference itself: KL 0.
    assert!(logs[0].mean_kl.abs() < 1e-4, "{:?}", logs[0]);
    let max_kl = logs.iter().map(|l| l.mean_kl).fold(f64::MIN, f64::max);
    assert!(max_kl < 20.0, "KL ran away: {logs:?}");
    assert!(
        logs.iter()
            .all(|l| l.entropy > 0.0 && l.vf_loss.is_finite())
    );
    assert!(out.join("value_head.safetensors").exists());
    assert!(out.join("adapter/adapter_config.json").exists());
    // The policy loads as a model.
    trust_backends::candle::CandleModel::load(&out, &Default::default()).unwrap();

    // Resume: stop after step 3 (checkpoints every 2 steps), resume, compare.
    let mut c = ppo_cfg(4);
    c.checkpoint_every = 2;
    let part = root.path().join("ppo-part");
    let run_part = PpoRun {
        config: &c,
        out_dir: &part,
        ..run
    };
    let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = train_ppo(&run_part, &mut |l| {
            if l.step == 3 {
                panic!("simulated crash after step 3");
            }
        });
    }));
    assert!(stopped.is_err());
    let resumed = train_ppo(&run_part, &mut |_| {}).unwrap();
    let full_dir = root.path().join("ppo-full");
    let full = train_ppo(
        &PpoRun {
            config: &c,
            out_dir: &full_dir,
            ..run
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(strip(&resumed), strip(&full));
    for f in ["model.safetensors", "value_head.safetensors"] {
        assert_eq!(
            std::fs::read(part.join(f)).unwrap(),
            std::fs::read(full_dir.join(f)).unwrap(),
            "resumed {f} differs"
        );
    }
}
