//! Training tests on a tiny GPT-NeoX built from scratch: losses fall, DPO margins rise,
//! checkpoints resume exactly and saved models load back with identical outputs.

use candle_core::Device;
use trust_align::train::{Stage, TrainConfig, train};

mod common;
use common::{pairs, tiny_model};

fn cfg(stage: Stage, steps: usize) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 4,
        max_len: 48,
        lr: if stage == Stage::Pretrain { 1e-2 } else { 5e-3 },
        ..TrainConfig::new(stage)
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

#[test]
fn pretrain_sft_dpo_learn_and_resume_exactly() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    tiny_model(&base);
    let data = pairs();

    let pre = train(
        &cfg(Stage::Pretrain, 12),
        &base,
        None,
        &data,
        &root.path().join("pre"),
        &mut |_| {},
    )
    .unwrap();
    let losses: Vec<f64> = pre.iter().map(|l| l.loss).collect();
    assert!(
        mean(&losses[9..]) < mean(&losses[..3]) - 0.5,
        "pretraining loss did not fall: {losses:?}"
    );

    let pre_dir = root.path().join("pre");
    let sft = train(
        &cfg(Stage::Sft, 10),
        &pre_dir,
        None,
        &data,
        &root.path().join("sft"),
        &mut |_| {},
    )
    .unwrap();
    let losses: Vec<f64> = sft.iter().map(|l| l.loss).collect();
    assert!(
        mean(&losses[7..]) < mean(&losses[..3]),
        "SFT loss did not fall: {losses:?}"
    );
    assert!(
        root.path()
            .join("sft/adapter/adapter_model.safetensors")
            .exists()
    );

    let sft_dir = root.path().join("sft");
    let dpo = train(
        &cfg(Stage::Dpo, 10),
        &sft_dir,
        Some(&sft_dir),
        &data,
        &root.path().join("dpo"),
        &mut |_| {},
    )
    .unwrap();
    assert!(
        dpo[0].margin.unwrap().abs() < 1e-4,
        "policy starts at the reference: {:?}",
        dpo[0]
    );
    let last = dpo.last().unwrap();
    assert!(
        last.margin.unwrap() > 0.05 && last.reward_accuracy.unwrap() > 0.9,
        "DPO margin did not rise: {last:?}"
    );
    assert!(last.loss < dpo[0].loss);

    // Resume: crash after step 4 (the last checkpoint is at step 2), resume, and compare with an
    // uninterrupted run.
    let mut c10 = cfg(Stage::Dpo, 10);
    c10.checkpoint_every = 2;
    let part = root.path().join("dpo-part");
    let mut calls = 0;
    let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = train(&c10, &sft_dir, Some(&sft_dir), &data, &part, &mut |l| {
            calls += 1;
            if l.step == 4 {
                panic!("simulated crash after step 4");
            }
        });
    }));
    assert!(stopped.is_err() && calls == 4);
    let resumed = train(&c10, &sft_dir, Some(&sft_dir), &data, &part, &mut |_| {}).unwrap();
    let full = train(
        &c10,
        &sft_dir,
        Some(&sft_dir),
        &data,
        &root.path().join("dpo-full"),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(resumed.len(), 10);
    assert_eq!(
        resumed[2..],
        full[2..],
        "resumed steps differ from an uninterrupted run"
    );
    let a = std::fs::read(part.join("model.safetensors")).unwrap();
    let b = std::fs::read(root.path().join("dpo-full/model.safetensors")).unwrap();
    assert_eq!(a, b, "resumed weights differ");
}

/// A tiny GPT-NeoX with LoRA adapters `lora` (initialised with `seed`, `B` random so that
/// gradients reach `A`), its tokenizer and base weights, and the base as a frozen reference.
struct LoraFixture {
    _root: tempfile::TempDir,
    config: trust_backends::candle::ModelConfig,
    tok: tokenizers::Tokenizer,
    weights: std::collections::HashMap<String, candle_core::Tensor>,
    trainee: trust_align::train::Trainee,
    reference: trust_backends::candle::CausalLm,
}

fn lora_fixture(lora: trust_align::lora::LoraConfig, seed: u64) -> LoraFixture {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    tiny_model(&base);
    let dev = Device::Cpu;
    let config = trust_backends::candle::ModelConfig::from_dir(&base).unwrap();
    let tok = trust_backends::candle::loader::load_tokenizer(&base, config.vocab_size).unwrap();
    let weights = trust_align::train::load_weights(&base, &dev).unwrap();
    let trainee =
        trust_align::train::Trainee::lora(config.clone(), weights.clone(), lora, seed, dev.clone())
            .unwrap();
    for m in &trainee.adapters().unwrap().modules {
        let b = candle_core::Tensor::randn(0f32, 0.5, m.b.as_tensor().dims(), &dev).unwrap();
        m.b.set(&b).unwrap();
    }
    let reference = trust_backends::candle::CausalLm::from_var_builder(
        &config,
        candle_nn::VarBuilder::from_tensors(weights.clone(), candle_core::DType::F32, &dev),
    )
    .unwrap();
    LoraFixture {
        _root: root,
        config,
        tok,
        weights,
        trainee,
        reference,
    }
}

/// Per-example LoRA gradients of the DPO and SFT losses match central finite differences.
#[test]
fn example_gradients_match_finite_differences() {
    use trust_align::lora::LoraConfig;
    use trust_align::train::{encode_pairs, example_gradients};
    let lora = LoraConfig {
        rank: 2,
        alpha: 2.0,
        targets: vec!["attention.dense".into()],
        layers: Some(vec![1]),
    };
    let LoraFixture {
        tok,
        trainee,
        reference,
        ..
    } = lora_fixture(lora, 5);
    let dev = Device::Cpu;
    let vars = trainee.vars();
    for stage in [Stage::Sft, Stage::Dpo] {
        let (enc, _) = encode_pairs(&tok, &pairs()[..1], &cfg(stage, 1), Some(0));
        let model = trainee.model().unwrap();
        let g =
            example_gradients(stage, &model, Some(&reference), &vars, &enc[0], 0.5, &dev).unwrap();
        assert_eq!(g.len(), 2);
        let loss_at = || -> f64 {
            let m = trainee.model().unwrap();
            let (l, _) =
                trust_align::train::batch_loss(stage, &m, Some(&reference), &[&enc[0]], 0.5, &dev)
                    .unwrap();
            l.to_scalar::<f32>().unwrap() as f64
        };
        let mut checked = 0;
        for (vi, var) in vars.iter().enumerate() {
            let orig: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for k in (0..orig.len()).step_by(7).take(6) {
                let eps = 1e-2f32;
                let mut p = orig.clone();
                p[k] += eps;
                var.set(&candle_core::Tensor::from_vec(p, var.as_tensor().dims(), &dev).unwrap())
                    .unwrap();
                let lp = loss_at();
                let mut m = orig.clone();
                m[k] -= eps;
                var.set(&candle_core::Tensor::from_vec(m, var.as_tensor().dims(), &dev).unwrap())
                    .unwrap();
                let lm = loss_at();
                var.set(
                    &candle_core::Tensor::from_vec(orig.clone(), var.as_tensor().dims(), &dev)
                        .unwrap(),
                )
                .unwrap();
                let fd = (lp - lm) / (2.0 * eps as f64);
                let an = g[vi][k] as f64;
                assert!(
                    (fd - an).abs() < 2e-3 + 0.05 * an.abs(),
                    "{stage:?} var {vi} [{k}]: autograd {an} vs finite difference {fd}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 10);
    }
}

#[test]
fn heldout_accuracy_rises_with_dpo_and_is_zero_against_itself() {
    use trust_align::heldout::evaluate_pairs;
    let root = tempfile::tempdir().unwrap();
    let (init, dpo) = (root.path().join("init"), root.path().join("dpo"));
    tiny_model(&init);
    let data = pairs();
    let (train_pairs, heldout) = (&data[..18], &data[18..]);
    let mut ticks = Vec::new();
    // A model against itself: every margin is exactly 0, which counts as not preferred.
    let same = evaluate_pairs(&init, Some(&init), heldout, 48, 4, &mut |d, t| {
        ticks.push((d, t))
    })
    .unwrap();
    assert_eq!(same.n_pairs, 6);
    assert_eq!(same.pair_accuracy, 0.0);
    assert_eq!(same.mean_margin, 0.0);
    assert_eq!(
        ticks.last(),
        Some(&(24, 24)),
        "chosen + rejected, of both models"
    );
    assert_eq!(ticks.len(), 6, "3 batches of 4 sequences, per model");
    assert!(same.chosen_nll > 0.0 && same.chosen_nll.is_finite());
    let mut c = cfg(Stage::Dpo, 12);
    c.lr = 2e-2;
    train(&c, &init, Some(&init), train_pairs, &dpo, &mut |_| {}).unwrap();
    let after = evaluate_pairs(&dpo, Some(&init), heldout, 48, 4, &mut |_, _| {}).unwrap();
    assert!(after.mean_margin > 0.0, "{after:?}");
    assert!(after.pair_accuracy > 0.5, "{after:?}");
    // DPO lowers the rejected replies' likelihood more than the chosen ones'.
    assert!(
        after.rejected_nll - after.chosen_nll > same.rejected_nll - same.chosen_nll,
        "{after:?} vs {same:?}"
    );
    // Without a reference: the model alone, log p(chosen) vs log p(rejected).
    let alone = evaluate_pairs(&dpo, None, heldout, 48, 4, &mut |_, _| {}).unwrap();
    assert!(alone.reference.is_none());
    assert_eq!(alone.chosen_nll, after.chosen_nll);
}

/// The frozen prefix (blocks before the first adapted one, computed once and shared with the
/// reference) changes neither the loss nor the gradients; the scored-positions-only output
/// layer gives the full-logits log-probs.
#[test]
fn frozen_prefix_and_scored_positions_change_nothing() {
    use trust_align::lora::LoraConfig;
    use trust_align::train::{
        FrozenPrefix, ScoredBatch, batch_loss, batch_loss_with, encode_pairs, shared_prefix_layers,
    };
    let lora = LoraConfig {
        rank: 2,
        alpha: 2.0,
        targets: vec!["attention.query_key_value".into(), "attention.dense".into()],
        layers: Some(vec![1]),
    };
    let LoraFixture {
        tok,
        weights,
        trainee,
        reference,
        ..
    } = lora_fixture(lora, 5);
    let dev = Device::Cpu;
    assert_eq!(trainee.frozen_layers(), 1);
    let merged = trainee.weights().unwrap();
    assert_eq!(shared_prefix_layers(&weights, &merged, 2).unwrap(), 1);
    assert_eq!(shared_prefix_layers(&weights, &weights, 2).unwrap(), 2);
    let vars = trainee.vars();
    let data = pairs();
    for stage in [Stage::Sft, Stage::Dpo] {
        let (enc, _) = encode_pairs(&tok, &data[..5], &cfg(stage, 1), Some(0));
        let batch: Vec<_> = enc.iter().collect();
        let model = trainee.model().unwrap();
        let (l0, m0) = batch_loss(stage, &model, Some(&reference), &batch, 0.5, &dev).unwrap();
        let prefix = FrozenPrefix {
            layers: 1,
            reference_shares: true,
        };
        let (l1, m1) =
            batch_loss_with(stage, &model, Some(&reference), prefix, &batch, 0.5, &dev).unwrap();
        let (a, b) = (
            l0.to_scalar::<f32>().unwrap(),
            l1.to_scalar::<f32>().unwrap(),
        );
        assert!(
            (a - b).abs() <= 1e-6 * a.abs().max(1.0),
            "{stage:?}: {a} vs {b}"
        );
        if let (Some(m0), Some(m1)) = (m0, m1) {
            let (m0, m1) = (m0.to_vec1::<f32>().unwrap(), m1.to_vec1::<f32>().unwrap());
            assert_eq!(m0.len(), 5);
            for (x, y) in m0.iter().zip(&m1) {
                assert!((x - y).abs() <= 1e-5, "{stage:?} margins {m0:?} vs {m1:?}");
            }
            assert!(
                m0.iter().any(|&x| x.abs() > 1e-3),
                "margins are not trivially 0"
            );
        }
        let (g0, g1) = (l0.backward().unwrap(), l1.backward().unwrap());
        for v in &vars {
            let x = g0
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let y = g1
                .get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{stage:?}: zero gradient");
            for (p, q) in x.iter().zip(&y) {
                assert!(
                    (p - q).abs() <= 1e-5 * scale,
                    "{stage:?}: gradient {p} vs {q}"
                );
            }
        }
        // The scored-positions-only log-probs against the full logits.
        let seqs: Vec<_> = enc.iter().map(|p| &p.chosen).collect();
        let (ids, mask, targets) = trust_align::train::collate(&seqs, &dev).unwrap();
        let full = trust_align::losses::sequence_logprob(
            &reference.forward(&ids, Some(&mask), None, None).unwrap(),
            &ids,
            &targets,
        )
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        let sb = ScoredBatch::new(&seqs, &dev).unwrap();
        let hidden = reference
            .forward_hidden(&sb.ids, Some(&sb.mask), None, None)
            .unwrap();
        let got = sb
            .logprob(&reference, &hidden)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (x, y) in full.iter().zip(&got) {
            assert!((x - y).abs() <= 1e-4, "{full:?} vs {got:?}");
        }
    }
}

/// Several checkpoints scored together (sharing the blocks they have in common) give exactly
/// what each gives alone.
#[test]
fn heldout_scoring_of_several_checkpoints_equals_one_at_a_time() {
    use trust_align::heldout::{pair_logprobs, pair_logprobs_many};
    let root = tempfile::tempdir().unwrap();
    let (init, dpo) = (root.path().join("init"), root.path().join("dpo"));
    tiny_model(&init);
    let data = pairs();
    let mut c = cfg(Stage::Dpo, 3);
    c.lr = 2e-2;
    c.lora.targets = vec!["attention.query_key_value".into()];
    c.lora.layers = Some(vec![1]);
    train(&c, &init, Some(&init), &data[..18], &dpo, &mut |_| {}).unwrap();
    let held = &data[18..];
    let many = pair_logprobs_many(&[&init, &dpo], held, 48, 4, &mut |_, _| {}).unwrap();
    let a = pair_logprobs(&init, held, 48, 4, &mut |_, _| {}).unwrap();
    let b = pair_logprobs(&dpo, held, 48, 4, &mut |_, _| {}).unwrap();
    assert_eq!(many, vec![a.clone(), b.clone()]);
    assert_ne!(a.chosen, b.chosen, "training changed the model");
}

/// The trainee's model (factored adapters: `x·Wᵀ + (x·Aᵀ)·B'ᵀ`) computes the same losses and
/// adapter gradients as a model built from the merged weights `W + B'·A`.
#[test]
fn factored_adapters_equal_merged_weights() {
    use trust_align::lora::LoraConfig;
    use trust_align::train::{batch_loss, encode_pairs};
    let lora = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec![
            "attention.query_key_value".into(),
            "attention.dense".into(),
            "mlp.dense_h_to_4h".into(),
        ],
        layers: None,
    };
    let LoraFixture {
        config,
        tok,
        trainee,
        reference,
        ..
    } = lora_fixture(lora, 3);
    let dev = Device::Cpu;
    let merged = trust_backends::candle::CausalLm::from_var_builder(
        &config,
        candle_nn::VarBuilder::from_tensors(
            trainee.weights().unwrap(),
            candle_core::DType::F32,
            &dev,
        ),
    )
    .unwrap();
    let factored = trainee.model().unwrap();
    let data = pairs();
    for stage in [Stage::Sft, Stage::Dpo] {
        let (enc, _) = encode_pairs(&tok, &data[..6], &cfg(stage, 1), Some(0));
        let batch: Vec<_> = enc.iter().collect();
        let (l0, _) = batch_loss(stage, &merged, Some(&reference), &batch, 0.5, &dev).unwrap();
        let (l1, _) = batch_loss(stage, &factored, Some(&reference), &batch, 0.5, &dev).unwrap();
        let (a, b) = (
            l0.to_scalar::<f32>().unwrap(),
            l1.to_scalar::<f32>().unwrap(),
        );
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "{stage:?}: {a} vs {b}"
        );
        let (g0, g1) = (l0.backward().unwrap(), l1.backward().unwrap());
        for v in trainee.vars() {
            let get = |g: &candle_core::backprop::GradStore| {
                g.get(v.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            };
            let (x, y) = (get(&g0), get(&g1));
            let scale = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0, "{stage:?}: zero gradient");
            for (p, q) in x.iter().zip(&y) {
                assert!(
                    (p - q).abs() <= 1e-4 * scale,
                    "{stage:?}: gradient {p} vs {q}"
                );
            }
        }
    }
}
