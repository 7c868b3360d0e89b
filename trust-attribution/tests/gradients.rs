//! Attribution on a tiny GPT-NeoX (PROTOCOLS A.8): reward-model gradients against finite
//! differences, SVD conversion of a full fine-tune, DataInf against the exact inverse-Hessian
//! influence on real LoRA gradients, and resume-after-interruption of the gradient store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use trust_align::hh::PreferencePair;
use trust_attribution::gradients::{
    AdapterSource, AttrStage, AttributeOptions, AttributionModel, LoraSelection, TestPair,
    run_attribution,
};
use trust_attribution::{
    DataInfConfig, ExactConfig, GradientSource, InMemoryGradients, datainf, exact_influence,
    mean_gradient, spearman,
};
use trust_backends::candle::tiny::{NeoxShape, train_tokenizer, write_model_dir};
use trust_core::rng::SplitMix64;

const TOPICS: &[&str] = &[
    "bake bread",
    "fix a bike",
    "learn chess",
    "plant tomatoes",
    "write a poem",
    "pick a lock",
    "hurt my neighbour",
    "steal a car",
];

fn pairs(n: usize) -> Vec<PreferencePair> {
    (0..n)
        .map(|i| {
            let t = TOPICS[i % TOPICS.len()];
            PreferencePair {
                index: i,
                prompt: format!(
                    "\n\nHuman: how do I {t}? (question {})\n\nAssistant:",
                    i / 8
                ),
                chosen: if i % 3 == 0 {
                    format!(" I can help you {t} safely, step by step.")
                } else {
                    " Sure, here is a safe and helpful answer.".into()
                },
                rejected: if i % 2 == 0 {
                    " No. Go away, you idiot.".into()
                } else {
                    format!(" Just {t}, who cares about the rules.")
                },
            }
        })
        .collect()
}

fn test_pairs() -> Vec<TestPair> {
    (0..4)
        .map(|i| TestPair {
            prompt: format!("Human: how do I {}?", TOPICS[(i * 3) % TOPICS.len()]),
            preferred: "Assistant: I can help you with that safely.".into(),
            dispreferred: "Assistant: Go away, you idiot.".into(),
        })
        .collect()
}

fn shape() -> NeoxShape {
    NeoxShape {
        vocab_size: 300,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        intermediate_size: 64,
        max_positions: 128,
        rotary_pct: 0.25,
    }
}

/// A base model and a "full fine-tune" of it (every linear layer of block 1 perturbed, plus a
/// reward head `v_head`), as two HF model directories.
fn models(root: &Path) -> (PathBuf, PathBuf) {
    let texts: Vec<String> = pairs(48)
        .iter()
        .flat_map(|p| [p.prompt.clone() + &p.chosen, p.prompt.clone() + &p.rejected])
        .chain(test_pairs().iter().flat_map(|t| {
            [
                t.prompt.clone() + &t.preferred,
                t.prompt.clone() + &t.dispreferred,
            ]
        }))
        .collect();
    let s = shape();
    let tok = train_tokenizer(texts.iter(), s.vocab_size).unwrap();
    let dev = Device::Cpu;
    let base_w = s.init_weights(0, &dev).unwrap();
    let base = root.join("base");
    write_model_dir(&base, &s.config_json(), &tok, &base_w).unwrap();
    let mut ft_w: HashMap<String, Tensor> = base_w.clone();
    let mut rng = SplitMix64::new(11);
    let mut names: Vec<&String> = base_w.keys().collect();
    names.sort(); // HashMap order differs between processes; the noise must not.
    for name in names {
        let w = &base_w[name];
        if name.starts_with("gpt_neox.layers.1.") && w.rank() == 2 {
            let noise: Vec<f32> = (0..w.elem_count())
                .map(|_| (trust_backends::candle::tiny::normal(&mut rng) * 0.03) as f32)
                .collect();
            let n = Tensor::from_vec(noise, w.dims(), &dev).unwrap();
            ft_w.insert(name.clone(), (w + n).unwrap());
        }
    }
    let head: Vec<f32> = (0..s.hidden_size)
        .map(|_| (trust_backends::candle::tiny::normal(&mut rng) * 0.5) as f32)
        .collect();
    ft_w.insert(
        "v_head.weight".into(),
        Tensor::from_vec(head, (1, s.hidden_size), &dev).unwrap(),
    );
    let ft = root.join("ft");
    write_model_dir(&ft, &s.config_json(), &tok, &ft_w).unwrap();
    (base, ft)
}

fn set(var: &candle_core::Var, vals: &[f32]) {
    var.set(&Tensor::from_vec(vals.to_vec(), var.as_tensor().dims(), &Device::Cpu).unwrap())
        .unwrap();
}

/// Reward-model Bradley–Terry gradients (LoRA A/B of two converted layers and the trainable
/// `v_head`) equal central finite differences of the loss; the SVD conversion reproduces ΔW up
/// to its truncation error.
#[test]
fn rm_gradients_match_finite_differences() {
    let root = tempfile::tempdir().unwrap();
    let (base, ft) = models(root.path());
    let mut opts = AttributeOptions::new(AttrStage::Rm, &ft, &base);
    opts.max_len = 48;
    opts.train_v_head = true;
    opts.lora = LoraSelection {
        rank: 2,
        targets: Some(vec!["attention.dense".into(), "mlp.dense_4h_to_h".into()]),
        layers: Some(vec![1]),
    };
    let m = AttributionModel::load(&opts).unwrap();
    let names = m.layout().names().to_vec();
    assert_eq!(names.len(), 5, "{names:?}");
    assert_eq!(names[4], "v_head.weight");
    match m.source() {
        AdapterSource::Svd { modules, .. } => {
            assert_eq!(modules.len(), 2);
            for c in modules {
                assert!(
                    c.residual_norm < c.delta_norm && c.delta_norm > 0.1,
                    "{c:?}"
                );
            }
        }
        other => panic!("expected an SVD conversion, got {other:?}"),
    }
    let (enc, skipped) = m.encode(&pairs(2));
    assert_eq!((enc.len(), skipped), (2, 0));
    let ex = &enc[1];
    let g = m.gradients(ex).unwrap();
    assert_eq!(g.len(), 5);
    let eps = 1e-2f32;
    let mut checked = 0;
    let mut nontrivial = 0;
    for (vi, var) in m.vars().iter().enumerate() {
        let orig: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for k in (0..orig.len()).step_by((orig.len() / 5).max(1)).take(5) {
            let mut p = orig.clone();
            p[k] += eps;
            set(var, &p);
            let lp = m.loss(ex).unwrap();
            p[k] = orig[k] - eps;
            set(var, &p);
            let lm = m.loss(ex).unwrap();
            set(var, &orig);
            let fd = (lp - lm) / (2.0 * eps as f64);
            let an = g[vi][k] as f64;
            assert!(
                (fd - an).abs() < 2e-3 + 0.05 * an.abs(),
                "{} [{k}]: autograd {an} vs finite difference {fd}",
                names[vi]
            );
            checked += 1;
            if an.abs() > 1e-3 {
                nontrivial += 1;
            }
        }
    }
    assert!(
        checked >= 20 && nontrivial >= 5,
        "{checked} checked, {nontrivial} non-trivial"
    );
}

/// A reward model trained by `trust align --stage rm` (LoRA adapters + a trained `v_head`) is
/// attributed through its own adapters, and the attributed loss is the reward model's
/// Bradley–Terry loss on the merged weights.
#[test]
fn a_trained_reward_model_is_attributed_through_its_adapters() {
    use trust_align::train::{Stage, TrainConfig, train};
    let root = tempfile::tempdir().unwrap();
    let (base, _ft) = models(root.path());
    let rm_dir = root.path().join("rm");
    let cfg = TrainConfig {
        steps: 4,
        batch_size: 4,
        max_len: 48,
        lr: 5e-3,
        ..TrainConfig::new(Stage::Rm)
    };
    train(&cfg, &base, None, &pairs(16), &rm_dir, &mut |_| {}).unwrap();
    let mut opts = AttributeOptions::new(AttrStage::Rm, &rm_dir, &base);
    opts.max_len = 48;
    let m = AttributionModel::load(&opts).unwrap();
    assert!(
        matches!(m.source(), AdapterSource::Trained),
        "{:?}",
        m.source()
    );
    let names = m.layout().names().to_vec();
    assert_eq!(
        names.len(),
        2 * 2 * 2,
        "query_key_value and dense of 2 blocks, A and B: {names:?}"
    );
    let (enc, _) = m.encode(&pairs(3));
    let rm = trust_align::reward::RewardModel::load_cpu(&rm_dir).unwrap();
    for ex in &enc {
        let (want, _) =
            trust_align::reward::rm_batch_loss_with(&rm.model, &rm.head, 0, &[ex], &Device::Cpu)
                .unwrap();
        let want = f64::from(want.to_scalar::<f32>().unwrap());
        let got = m.loss(ex).unwrap();
        assert!(
            (got - want).abs() < 1e-4,
            "attributed loss {got} vs reward model {want}"
        );
        let g = m.gradients(ex).unwrap();
        assert!(g.iter().flatten().all(|x| x.is_finite()));
        assert!(g.iter().flatten().any(|&x| x != 0.0));
    }
}

/// Without a `v_head` the rm stage is a clear error (unless a test head is requested).
#[test]
fn rm_without_head_is_an_error_naming_the_directory() {
    let root = tempfile::tempdir().unwrap();
    let (base, _ft) = models(root.path());
    // The base model has no v_head: use it as "aligned" model vs itself.
    let mut opts = AttributeOptions::new(AttrStage::Rm, &base, &base);
    opts.lora.layers = Some(vec![1]);
    let err = AttributionModel::load(&opts)
        .err()
        .expect("no v_head")
        .to_string();
    assert!(
        err.contains("v_head.weight") && err.contains("base"),
        "{err}"
    );
    opts.init_v_head = true;
    // ΔW = 0 everywhere: the conversion still yields (zero) adapters and a usable model.
    assert!(AttributionModel::load(&opts).is_ok());
}

/// DataInf vs the exact inverse-Hessian influence on real per-example LoRA gradients (DPO loss,
/// rank-1 adapters on one attention output layer: 2 layers of 32 parameters, n = 96). Also: the
/// streamed DataInf over the gradients equals a plain dense evaluation of the A.8 §5 formula.
#[test]
fn datainf_ranks_close_to_exact_influence_on_tiny_lora() {
    let root = tempfile::tempdir().unwrap();
    let (base, ft) = models(root.path());
    let mut opts = AttributeOptions::new(AttrStage::Dpo, &ft, &base);
    opts.max_len = 48;
    opts.lora = LoraSelection {
        rank: 1,
        targets: Some(vec!["attention.dense".into()]),
        layers: Some(vec![1]),
    };
    let m = AttributionModel::load(&opts).unwrap();
    let (train, _) = m.encode(&pairs(96));
    let tp: Vec<PreferencePair> = test_pairs()
        .iter()
        .enumerate()
        .map(|(i, t)| PreferencePair {
            index: i,
            prompt: t.prompt.clone(),
            chosen: t.preferred.clone(),
            rejected: t.dispreferred.clone(),
        })
        .collect();
    let (test, _) = m.encode(&tp);
    let collect = |enc: &[trust_align::train::PairEncoded]| {
        let mut g = InMemoryGradients::new(m.layout().clone());
        for e in enc {
            let v = m.gradients(e).unwrap();
            let s: Vec<&[f32]> = v.iter().map(Vec::as_slice).collect();
            g.push(&s).unwrap();
        }
        g
    };
    let (tg, sg) = (collect(&train), collect(&test));
    assert_eq!(tg.len(), 96);
    let v = mean_gradient(&sg, 16).unwrap();

    // Dense reference of A.8 §5, written out plainly.
    let cfg = DataInfConfig::default();
    let r = datainf(&tg, &v, &cfg).unwrap();
    let layout = tg.layout().clone();
    let n = tg.len();
    let mut want = vec![0.0f64; n];
    assert_eq!(v.len(), layout.num_layers());
    for (l, vl) in v.iter().enumerate() {
        let gl: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                layout
                    .layer(tg.record(i).unwrap(), l)
                    .iter()
                    .map(|&x| x as f64)
                    .collect()
            })
            .collect();
        let d = gl[0].len();
        let lambda = 0.1 * gl.iter().flatten().map(|x| x * x).sum::<f64>() / (n * d) as f64;
        let mut h = vec![0.0; d];
        for g in &gl {
            let vg: f64 = vl.iter().zip(g).map(|(a, b)| a * b).sum();
            let gg: f64 = g.iter().map(|x| x * x).sum();
            for (hk, (vk, gk)) in h.iter_mut().zip(vl.iter().zip(g)) {
                *hk += (vk - vg / (lambda + gg) * gk) / (n as f64 * lambda);
            }
        }
        for (i, g) in gl.iter().enumerate() {
            want[i] -= h.iter().zip(g).map(|(a, b)| a * b).sum::<f64>();
        }
    }
    let scale = want.iter().fold(0.0f64, |a, x| a.max(x.abs()));
    for (a, b) in r.scores.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-6 * scale, "{a} vs {b}");
    }

    let rhos = spearman_by_damping(&tg, &v, "DPO");
    // Measured: 0.465 (c = 0.1), 0.781 (c = 1), 0.958 (c = 10); SFT loss on the same adapters:
    // 0.548, 0.830, 0.975. DataInf's error grows as the damping shrinks (it swaps the inverse
    // and the average): at the reference's c = 0.1 the ranking is only roughly preserved (over
    // six random draws of the fine-tune noise it ranged 0.10–0.71), at c = 10 it is close to
    // exact. Thresholds: under no association Spearman's ρ has SD ≈ 1/√(n−1) ≈ 0.10 for n = 96,
    // so ρ > 0.3 at c = 0.1 is 3 SD above chance; ρ > 0.9 at c = 10; and ρ must not fall as the
    // damping grows.
    assert!(rhos[0] > 0.3, "c = 0.1: Spearman {:.3}", rhos[0]);
    assert!(rhos[2] > 0.9, "c = 10: Spearman {:.3}", rhos[2]);
    assert!(
        rhos[0] <= rhos[1] + 0.02 && rhos[1] <= rhos[2] + 0.02,
        "{rhos:?}"
    );

    // The same adapters under the SFT loss (cross-entropy never saturates).
    opts.stage = AttrStage::Sft;
    let m = AttributionModel::load(&opts).unwrap();
    let (train, _) = m.encode(&pairs(96));
    let (test, _) = m.encode(&tp);
    let mut tg = InMemoryGradients::new(m.layout().clone());
    let mut sg = InMemoryGradients::new(m.layout().clone());
    for (enc, store) in [(&train, &mut tg), (&test, &mut sg)] {
        for e in enc.iter() {
            let g = m.gradients(e).unwrap();
            let sl: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
            store.push(&sl).unwrap();
        }
    }
    let v = mean_gradient(&sg, 16).unwrap();
    let rhos = spearman_by_damping(&tg, &v, "SFT");
    assert!(rhos[0] > 0.3 && rhos[2] > 0.9, "SFT: {rhos:?}");
}

fn spearman_by_damping(tg: &InMemoryGradients, v: &[Vec<f64>], what: &str) -> Vec<f64> {
    let mut rhos = Vec::new();
    for c in [0.1, 1.0, 10.0] {
        let dcfg = DataInfConfig {
            damping_scale: c,
            ..DataInfConfig::default()
        };
        let approx = datainf(tg, v, &dcfg).unwrap();
        let exact = exact_influence(
            tg,
            v,
            &ExactConfig {
                datainf: dcfg,
                ..ExactConfig::default()
            },
        )
        .unwrap();
        let rho = spearman(&approx.scores, &exact.scores).unwrap();
        println!(
            "tiny LoRA ({what}, n = {}, 2 x 32 params): Spearman(DataInf, exact) = {rho:.3} at damping c = {c}",
            tg.len()
        );
        rhos.push(rho);
    }
    rhos
}

fn train_store(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("train-")
        })
        .expect("train store")
}

/// A run interrupted during gradient extraction (and with a torn last record) resumes from the
/// store and gives bit-identical scores to an uninterrupted run.
#[test]
fn resume_after_interruption_gives_identical_scores() {
    let root = tempfile::tempdir().unwrap();
    let (base, ft) = models(root.path());
    let mut opts = AttributeOptions::new(AttrStage::Dpo, &ft, &base);
    opts.max_len = 48;
    opts.lora = LoraSelection {
        rank: 2,
        targets: None,
        layers: Some(vec![1]),
    };
    let data = pairs(20);
    let test = test_pairs();

    let full_store = root.path().join("store-full");
    let full = run_attribution(&opts, &data, &test, &full_store, &mut |_| {}).unwrap();
    assert_eq!(full.attribution.scores.len(), 20);
    assert_eq!(full.resumed_train, 0);
    assert_eq!(full.layers.len(), 8, "{:?}", full.layers);

    let store = root.path().join("store");
    let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = run_attribution(&opts, &data, &test, &store, &mut |p| {
            if p.phase == "train" && p.done == 9 {
                panic!("simulated crash after 9 training gradients");
            }
        });
    }));
    assert!(stopped.is_err());
    // Tear the last record, as a crash in the middle of a write would.
    let f = train_store(&store).join("gradients.f32");
    let len = std::fs::metadata(&f).unwrap().len();
    let rec = len / 9;
    assert_eq!(len % 9, 0, "9 complete records");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len - rec / 2)
        .unwrap();

    let mut fresh = 0;
    let resumed = run_attribution(&opts, &data, &test, &store, &mut |p| {
        if p.phase == "train" {
            fresh = p.done - p.resumed;
        }
    })
    .unwrap();
    assert_eq!(resumed.resumed_train, 8, "the torn 9th record is redone");
    assert_eq!(fresh, 12);
    let bits = |s: &[f64]| s.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&resumed.attribution.scores),
        bits(&full.attribution.scores)
    );
    assert_eq!(
        std::fs::read(train_store(&store).join("gradients.f32")).unwrap(),
        std::fs::read(train_store(&full_store).join("gradients.f32")).unwrap()
    );

    // A finished store is reused without recomputing anything.
    let mut recomputed = 0;
    let again = run_attribution(&opts, &data, &test, &store, &mut |p| {
        if p.phase != "score" {
            recomputed += p.done - p.resumed;
        }
    })
    .unwrap();
    assert_eq!(again.resumed_train, 20);
    assert_eq!(recomputed, 0);
    assert_eq!(
        bits(&again.attribution.scores),
        bits(&full.attribution.scores)
    );
}

/// The attribution losses (LM head only at scored positions, no padding) give the same
/// per-example gradients as the training path (`train::example_gradients`, full projection).
#[test]
fn fast_stage_gradients_equal_the_training_path() {
    use trust_align::train::{Stage, example_gradients, load_weights};
    let root = tempfile::tempdir().unwrap();
    let (base, ft) = models(root.path());
    let dev = Device::Cpu;
    let config = trust_backends::candle::ModelConfig::from_dir(&base).unwrap();
    let reference = trust_backends::candle::CausalLm::from_var_builder(
        &config,
        candle_nn::VarBuilder::from_tensors(
            load_weights(&base, &dev).unwrap(),
            candle_core::DType::F32,
            &dev,
        ),
    )
    .unwrap();
    for (stage, mask_prompt) in [
        (AttrStage::Sft, false),
        (AttrStage::Sft, true),
        (AttrStage::Dpo, false),
    ] {
        let mut opts = AttributeOptions::new(stage, &ft, &base);
        opts.max_len = 48;
        opts.mask_prompt = mask_prompt;
        opts.beta = 0.5;
        opts.lora.layers = Some(vec![1]);
        let m = AttributionModel::load(&opts).unwrap();
        if stage == AttrStage::Dpo {
            // Only block 1 was fine-tuned: block 0 is computed once per sequence and shared
            // with the reference (the base), and the gradients below must not change.
            let p = m.frozen_prefix();
            assert_eq!((p.layers, p.reference_shares), (1, true));
        }
        let (enc, _) = m.encode(&pairs(3));
        let model = m.trainee().model().unwrap();
        let train_stage = if stage == AttrStage::Sft {
            Stage::Sft
        } else {
            Stage::Dpo
        };
        for e in &enc {
            let fast = m.gradients(e).unwrap();
            let slow = example_gradients(
                train_stage,
                &model,
                Some(&reference),
                m.vars(),
                e,
                0.5,
                &dev,
            )
            .unwrap();
            let scale = slow.iter().flatten().fold(0f32, |a, x| a.max(x.abs()));
            assert!(scale > 1e-4, "{stage:?}: trivial gradients");
            for (f, s) in fast.iter().flatten().zip(slow.iter().flatten()) {
                assert!(
                    (f - s).abs() <= 1e-4 * scale,
                    "{stage:?} mask_prompt={mask_prompt}: {f} vs {s} (scale {scale})"
                );
            }
        }
    }
}

/// Per-example gradients from one batched pass (one copy of the adapter factors per example)
/// equal the one-example-at-a-time path (relative error ‖Δg‖ / ‖g‖ per attributed tensor: ≤ 1e-6
/// for SFT and the reward model, ≤ 3e-5 for DPO), for the SFT, DPO and reward-model
/// losses, on examples of different lengths (so the batch is padded).
#[test]
fn batched_per_example_gradients_equal_one_at_a_time() {
    let root = tempfile::tempdir().unwrap();
    let (base, ft) = models(root.path());
    for stage in [AttrStage::Sft, AttrStage::Dpo, AttrStage::Rm] {
        let mut opts = AttributeOptions::new(stage, &ft, &base);
        opts.max_len = 48;
        opts.beta = 0.5;
        opts.lora.layers = Some(vec![1]);
        let m = AttributionModel::load(&opts).unwrap();
        let (enc, _) = m.encode(&pairs(7));
        let lens: std::collections::BTreeSet<usize> = enc
            .iter()
            .flat_map(|e| [e.sft.ids.len(), e.chosen.ids.len(), e.rejected.ids.len()])
            .collect();
        assert!(lens.len() > 1, "examples of one length: nothing padded");
        let batched = m.gradients_batch(&enc).unwrap();
        assert_eq!(batched.len(), enc.len());
        for (e, got) in enc.iter().zip(&batched) {
            let want = m.gradients(e).unwrap();
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                // Relative error of the layer's gradient vector: ‖g − w‖ / ‖w‖.
                let norm = w.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
                let diff = g
                    .iter()
                    .zip(w)
                    .map(|(x, y)| f64::from(x - y).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!(norm > 1e-6, "{stage:?}: trivial gradient");
                // SFT and RM come out bit-identical here. DPO's gradient is scaled by
                // σ(−margin), and the margin's log-prob sums are added in another order (one
                // matrix product over the batch vs a sum per sequence): that rounding shows up
                // as a relative error of at most 1.2e-5 measured.
                let tol = if stage == AttrStage::Dpo { 3e-5 } else { 1e-6 };
                assert!(
                    diff <= tol * norm,
                    "{stage:?} example {}: relative error {:.2e}",
                    e.index,
                    diff / norm
                );
            }
        }
    }
}
