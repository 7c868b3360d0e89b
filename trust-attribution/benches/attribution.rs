//! Attribution benchmark on a Pythia-70m-shaped GPT-NeoX (random weights: hidden 512, 6 blocks,
//! 8 heads, MLP 2048, vocab 50304), LoRA r = 4 on the last 4 blocks' attention + MLP linears
//! (the paper's "last 4 blocks" selection; 16 modules, 32 attributed tensors).
//!
//! Prints:
//! 1. per-example gradient extraction rate (examples/s) for the SFT, DPO and reward-model losses
//!    ([`trust_attribution::gradients::stage_gradients`], what `trust attribute` runs) on random token
//!    sequences (prompt 96 + response 32 tokens; SFT scores the whole text as the paper; batch 1),
//!    and the same examples `BENCH_BATCH` (default 8) per batched pass
//!    ([`trust_align::train::example_gradients_batched`], what `trust attribute` and the main job
//!    run), with the ratio;
//! 2. DataInf scoring time for n = 2,312 training examples (the HH-RLHF harmless-base test
//!    split size) with gradients of the right layout: extrapolated from n = 256 and measured,
//!    in memory and streamed from the on-disk memory-mapped store.
//!
//! Run: `cargo bench -p trust-attribution --features candle --bench attribution` (env: `BENCH_N`
//! examples per stage, default 50; `BENCH_SCORE_N`, default 2312; `BENCH_BATCH`, default 8;
//! `BENCH_MODEL=DIR` a real model directory instead of the random Pythia-70m shape, e.g. the
//! main job's `trust-demo/models/sft`).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use trust_align::lora::LoraConfig;
use trust_align::reward::RewardHead;
use trust_align::train::{Encoded, FrozenPrefix, PairEncoded, Trainee, example_gradients_batched};
use trust_attribution::gradients::{AttrStage, stage_gradients_with};
use trust_attribution::{
    DataInfConfig, GradientStoreReader, GradientStoreWriter, InMemoryGradients, LayerLayout,
    StoreKey, datainf, mean_gradient,
};
use trust_backends::candle::tiny::NeoxShape;
use trust_backends::candle::{CausalLm, ModelConfig};
use trust_core::rng::SplitMix64;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seq(rng: &mut SplitMix64, vocab: usize, prompt: usize, response: usize) -> Encoded {
    let ids: Vec<u32> = (0..prompt + response)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect();
    let mut targets = vec![0.0; prompt];
    targets.extend(std::iter::repeat_n(1.0, response));
    Encoded { ids, targets }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = env_usize("BENCH_N", 50);
    let batch = env_usize("BENCH_BATCH", trust_attribution::gradients::GRADIENT_BATCH).max(1);
    let score_n = env_usize("BENCH_SCORE_N", 2312);
    let dev = Device::Cpu;
    let shape = NeoxShape {
        vocab_size: 50304,
        hidden_size: 512,
        num_layers: 6,
        num_heads: 8,
        intermediate_size: 2048,
        max_positions: 2048,
        rotary_pct: 0.25,
    };
    let t = Instant::now();
    // BENCH_MODEL=DIR: a real model directory (e.g. the main job's models/sft) instead of the
    // random Pythia-70m shape; LoRA r = 8 on every attention and MLP projection of its last
    // third of blocks (the main job's DPO / reward-model adapters).
    let (config, weights, lora, what) = match std::env::var_os("BENCH_MODEL") {
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            let config = ModelConfig::from_dir(&dir)?;
            let weights = trust_align::train::load_weights(&dir, &dev)?;
            let nl = config.num_hidden_layers;
            let mut targets = trust_align::lora::default_targets(config.arch);
            targets.extend(trust_align::lora::mlp_targets(config.arch));
            let lora = LoraConfig {
                rank: 8,
                alpha: 16.0,
                targets,
                layers: Some((nl - nl.div_ceil(3)..nl).collect()),
            };
            let what = format!(
                "{} (r=8, last {} of {nl} blocks, attention + MLP)",
                dir.display(),
                nl.div_ceil(3)
            );
            (config, weights, lora, what)
        }
        None => {
            let weights = shape.init_weights(0, &dev)?;
            let config = ModelConfig::from_json_str(
                &shape.config_json().to_string(),
                std::path::Path::new("pythia-70m-shaped/config.json"),
            )?;
            let lora = LoraConfig {
                rank: 4,
                alpha: 4.0,
                targets: vec![
                    "attention.query_key_value".into(),
                    "attention.dense".into(),
                    "mlp.dense_h_to_4h".into(),
                    "mlp.dense_4h_to_h".into(),
                ],
                layers: Some(trust_attribution::gradients::LoraSelection::last_blocks(
                    6, 4,
                )),
            };
            (
                config,
                weights,
                lora,
                "random Pythia-70m-shaped weights (LoRA r=4 on blocks 2..=5, 4 linears each)"
                    .to_string(),
            )
        }
    };
    eprintln!("{what} loaded in {:.1}s", t.elapsed().as_secs_f64());
    let trainee = Trainee::lora(config.clone(), weights.clone(), lora, 1, dev.clone())?;
    for m in &trainee.adapters().expect("lora").modules {
        let b = Tensor::randn(0f32, 0.01, m.b.as_tensor().dims(), &dev)?;
        m.b.set(&b)?;
    }
    let vars = trainee.vars();
    let layout = LayerLayout::new(trainee.adapters().expect("lora").modules.iter().flat_map(
        |m| {
            [
                (format!("{}.lora_A", m.module), m.a.as_tensor().elem_count()),
                (format!("{}.lora_B", m.module), m.b.as_tensor().elem_count()),
            ]
        },
    ))?;
    println!(
        "{what}: {} tensors, {} parameters per example",
        layout.num_layers(),
        layout.record_len()
    );
    let model = trainee.model()?;
    let reference =
        CausalLm::from_var_builder(&config, VarBuilder::from_tensors(weights, DType::F32, &dev))?;
    let head = RewardHead::init(config.hidden_size, 0, &dev)?;
    let mut rng = SplitMix64::new(7);
    let examples: Vec<PairEncoded> = (0..n)
        .map(|i| {
            let chosen = seq(&mut rng, config.vocab_size, 96, 32);
            let mut rejected = seq(&mut rng, config.vocab_size, 96, 32);
            rejected.ids[..96].copy_from_slice(&chosen.ids[..96]);
            let mut sft = chosen.clone();
            sft.targets.iter_mut().for_each(|x| *x = 1.0);
            PairEncoded {
                index: i,
                sft,
                chosen,
                rejected,
            }
        })
        .collect();

    // 1. Gradient extraction.
    let sq_norm = |g: &[Vec<f32>]| {
        g.iter()
            .flatten()
            .map(|&x| f64::from(x).powi(2))
            .sum::<f64>()
    };
    let frozen = FrozenPrefix {
        layers: trainee.frozen_layers(),
        reference_shares: true,
    };
    for st in [AttrStage::Sft, AttrStage::Dpo, AttrStage::Rm] {
        let stage = st.as_str();
        // The one-example path as `trust attribute` ran it: DPO shares the frozen first blocks
        // with the reference, SFT and RM run the whole model.
        let pre = if st == AttrStage::Dpo {
            frozen
        } else {
            FrozenPrefix::default()
        };
        let t = Instant::now();
        let mut norm = 0.0f64;
        for e in &examples {
            let g = stage_gradients_with(
                st,
                &model,
                Some(&reference),
                pre,
                Some(&head),
                &vars,
                e,
                1.0,
                &dev,
            )?;
            norm += sq_norm(&g);
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "gradients {stage:>3}: {n} examples (128 tokens) in {s:.2}s = {:.2} examples/s (mean |g|^2 {:.3e})",
            n as f64 / s,
            norm / n as f64
        );
        // The same examples, `batch` per forward/backward pass (one copy of the adapter
        // factors per example; the frozen first blocks computed once without a graph).
        let t = Instant::now();
        let mut norm_b = 0.0f64;
        for chunk in examples.chunks(batch) {
            let refs: Vec<&PairEncoded> = chunk.iter().collect();
            for g in example_gradients_batched(
                st.train_stage(),
                &trainee,
                Some(&reference),
                Some(&head),
                frozen,
                &vars,
                &refs,
                1.0,
                &dev,
            )? {
                norm_b += sq_norm(&g);
            }
        }
        let sb = t.elapsed().as_secs_f64();
        println!(
            "gradients {stage:>3}, batched {batch}: {n} examples in {sb:.2}s = {:.2} examples/s ({:.2}x per-example; mean |g|^2 {:.3e})",
            n as f64 / sb,
            s / sb,
            norm_b / n as f64
        );
    }

    // 2. DataInf scoring on random gradients of this layout.
    let rec = layout.record_len();
    let fill = |store: &mut InMemoryGradients,
                m: usize,
                seed: u64|
     -> Result<(), Box<dyn std::error::Error>> {
        let mut r = SplitMix64::new(seed);
        let mut buf = vec![0f32; rec];
        for _ in 0..m {
            buf.iter_mut()
                .for_each(|x| *x = (r.next_f64() * 2.0 - 1.0) as f32 * 1e-3);
            store.push_record(&buf)?;
        }
        Ok(())
    };
    let mut test = InMemoryGradients::new(layout.clone());
    fill(&mut test, 8, 99)?;
    let v = mean_gradient(&test, 256)?;
    let cfg = DataInfConfig::default();
    let small_n = 256.min(score_n);
    let mut small = InMemoryGradients::new(layout.clone());
    fill(&mut small, small_n, 1)?;
    let t = Instant::now();
    datainf(&small, &v, &cfg)?;
    let small_s = t.elapsed().as_secs_f64();
    drop(small);
    println!(
        "DataInf n = {small_n}: {small_s:.3}s -> extrapolated n = {score_n}: {:.2}s",
        small_s * score_n as f64 / small_n as f64
    );
    let mut full = InMemoryGradients::new(layout.clone());
    fill(&mut full, score_n, 2)?;
    let t = Instant::now();
    let r = datainf(&full, &v, &cfg)?;
    println!(
        "DataInf n = {score_n} in memory ({:.0} MiB): measured {:.2}s",
        (score_n * rec * 4) as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    let dir = std::env::temp_dir().join(format!("trust-attr-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let key = StoreKey {
        model: "bench".into(),
        lora: "r4 last4".into(),
        loss: "random".into(),
        data: format!("n={score_n}"),
    };
    let t = Instant::now();
    let mut w = GradientStoreWriter::open(&dir, &key, &layout)?;
    for i in 0..score_n {
        w.append_record(full.record(i).expect("record"))?;
    }
    w.finish()?;
    let write_s = t.elapsed().as_secs_f64();
    drop(full);
    let reader = GradientStoreReader::open(&dir)?;
    let t = Instant::now();
    let r2 = datainf(&reader, &v, &cfg)?;
    println!(
        "DataInf n = {score_n} streamed from the mmap store: measured {:.2}s (store write {write_s:.2}s); same scores: {}",
        t.elapsed().as_secs_f64(),
        r.scores == r2.scores
    );
    drop(reader);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
