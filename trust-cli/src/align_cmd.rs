//! `trust align`: pretraining, LoRA SFT and LoRA DPO in candle.

use std::path::PathBuf;

use anyhow::Context;
use trust_align::train::{Stage, TrainConfig, train};

/// Arguments of `trust align`.
#[derive(clap::Args)]
pub struct AlignArgs {
    /// Stage: `sft` (LoRA), `dpo` (LoRA, reference = --ref) or `pretrain` (full parameters).
    #[arg(long, value_parser = ["sft", "dpo", "pretrain"])]
    stage: String,
    /// Model directory (HF layout: config.json, tokenizer.json, *.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Reference model for DPO (usually the SFT model).
    #[arg(long = "ref")]
    reference: Option<PathBuf>,
    /// Training pairs: HH-RLHF `.jsonl`/`.jsonl.gz` (`chosen`/`rejected` dialogues) or
    /// `{"prompt","chosen","rejected"}` lines.
    #[arg(long)]
    train: PathBuf,
    /// Output directory (merged model, adapter/, train_log.jsonl, checkpoint/). Rerunning with
    /// the same settings resumes from the last checkpoint.
    #[arg(long)]
    out: PathBuf,
    /// Use only the first N pairs.
    #[arg(long)]
    limit: Option<usize>,
    /// Optimiser steps.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Pairs per micro-batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Micro-batches per optimiser step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Learning rate (default depends on the stage).
    #[arg(long)]
    lr: Option<f64>,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// DPO β.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// Longest sequence in tokens.
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// SFT: also score prompt tokens (the paper's attribution loss does).
    #[arg(long)]
    no_mask_prompt: bool,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// LoRA α.
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// LoRA target module suffixes, comma separated. `auto` (default): the attention
    /// projections of the model's family: `attention.query_key_value,attention.dense` for
    /// GPT-NeoX, `self_attn.q_proj,self_attn.k_proj,self_attn.v_proj,self_attn.o_proj` for
    /// Llama and Qwen2.
    #[arg(long, default_value = "auto", value_delimiter = ',')]
    lora_targets: Vec<String>,
    /// Blocks that get adapters, comma separated (default: all).
    #[arg(long, value_delimiter = ',')]
    lora_layers: Option<Vec<usize>>,
    /// Seed of data order and LoRA init.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Save a checkpoint every N steps (0 = only at the end).
    #[arg(long, default_value_t = 10)]
    checkpoint_every: usize,
}

pub fn run(a: AlignArgs) -> anyhow::Result<()> {
    let stage = match a.stage.as_str() {
        "sft" => Stage::Sft,
        "dpo" => Stage::Dpo,
        _ => Stage::Pretrain,
    };
    let mut cfg = TrainConfig::new(stage);
    cfg.steps = a.steps;
    cfg.batch_size = a.batch_size;
    cfg.grad_accum = a.grad_accum;
    if let Some(lr) = a.lr {
        cfg.lr = lr;
    }
    cfg.weight_decay = a.weight_decay;
    cfg.beta = a.beta;
    cfg.max_len = a.max_len;
    cfg.mask_prompt = !a.no_mask_prompt;
    cfg.lora.rank = a.lora_rank;
    cfg.lora.alpha = a.lora_alpha;
    cfg.lora.targets = if a.lora_targets == ["auto"] {
        let arch = trust_backends::candle::ModelConfig::from_dir(&a.model)?.arch;
        trust_align::lora::default_targets(arch)
    } else {
        a.lora_targets
    };
    cfg.lora.layers = a.lora_layers;
    cfg.seed = a.seed;
    cfg.checkpoint_every = a.checkpoint_every;
    let data = trust_align::hh::load(&a.train)?;
    if !data.skipped.is_empty() {
        eprintln!(
            "{}: skipped {} rows (first: line {}: {})",
            a.train.display(),
            data.skipped.len(),
            data.skipped[0].0,
            data.skipped[0].1
        );
    }
    let mut pairs = data.pairs;
    if let Some(n) = a.limit {
        pairs.truncate(n);
    }
    eprintln!(
        "{} pairs, {} steps of {}x{} ({:?})",
        pairs.len(),
        cfg.steps,
        cfg.batch_size,
        cfg.grad_accum,
        stage
    );
    let total = cfg.steps;
    let started = std::time::Instant::now();
    let logs = train(
        &cfg,
        &a.model,
        a.reference.as_deref(),
        &pairs,
        &a.out,
        &mut |l| {
            let eta = started.elapsed().as_secs_f64() / l.step as f64 * (total - l.step) as f64;
            match l.margin {
                Some(m) => eprintln!(
                    "step {}/{total} loss {:.4} margin {m:.4} acc {:.2} eta {eta:.0}s",
                    l.step,
                    l.loss,
                    l.reward_accuracy.unwrap_or(0.0)
                ),
                None => eprintln!("step {}/{total} loss {:.4} eta {eta:.0}s", l.step, l.loss),
            }
        },
    )
    .with_context(|| format!("training {}", a.model.display()))?;
    let last = logs.last().map(|l| l.loss).unwrap_or(f64::NAN);
    println!(
        "{}",
        serde_json::json!({"out": a.out, "steps": logs.len(), "final_loss": last})
    );
    Ok(())
}
