//! `trust align`: pretraining, LoRA SFT, LoRA DPO, reward models and PPO in candle.

use std::path::PathBuf;

use anyhow::Context;
use trust_align::train::{Stage, TrainConfig, train};

/// Arguments of `trust align`.
#[derive(clap::Args)]
pub struct AlignArgs {
    /// Stage: `sft` (LoRA), `dpo` (LoRA, reference = --ref), `rm` (reward model: LoRA, or
    /// every weight with --full, plus a trained scalar `v_head` on the last token; Bradley–Terry
    /// loss), `ppo` (LoRA policy from --model, the SFT model, against the reward model --reward;
    /// the frozen reference is --model) or `pretrain` (full parameters).
    #[arg(long, value_parser = ["sft", "dpo", "rm", "ppo", "pretrain"])]
    stage: String,
    /// Model directory (HF layout: config.json, tokenizer.json, *.safetensors). For `ppo`: the
    /// SFT model, which is both the initial policy and the KL reference.
    #[arg(long)]
    model: PathBuf,
    /// Reference model for DPO (usually the SFT model).
    #[arg(long = "ref")]
    reference: Option<PathBuf>,
    /// PPO: the reward model (a `--stage rm` output directory, or any model directory whose
    /// safetensors hold `v_head.weight`). It must share the policy's tokenizer.
    #[arg(long)]
    reward: Option<PathBuf>,
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
    /// Save a checkpoint every N steps (0 = only at the end). Default: 10, for `ppo` 1.
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Hold out N pairs (a seeded split: training never sees them) and report the trained
    /// model's held-out pair accuracy at the end (`rm`: r(chosen) > r(rejected); `sft`, `dpo`:
    /// the implicit reward margin against --ref, or the model alone), also written to
    /// OUT/heldout.json. PPO holds out no prompts. Default 0.
    #[arg(long, default_value_t = 0)]
    heldout: usize,
    /// `rm`: train every transformer weight instead of LoRA adapters.
    #[arg(long)]
    full: bool,
    /// PPO: prompts completed per step.
    #[arg(long, default_value_t = 8)]
    rollout_batch: usize,
    /// PPO: rollouts per optimiser step.
    #[arg(long, default_value_t = 4)]
    minibatch_size: usize,
    /// PPO: optimisation passes over each rollout batch.
    #[arg(long, default_value_t = 4)]
    ppo_epochs: usize,
    /// PPO: longest response in tokens.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// PPO: longest prompt in tokens (truncated from the left).
    #[arg(long, default_value_t = 96)]
    max_prompt_len: usize,
    /// PPO: rollout sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// PPO: rollout top-k (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// PPO: rollout nucleus mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// PPO: initial KL coefficient β of the per-token penalty.
    #[arg(long, default_value_t = 0.05)]
    init_kl_coef: f64,
    /// PPO: KL target (nats per response) of the adaptive coefficient.
    #[arg(long, default_value_t = 6.0)]
    target_kl: f64,
    /// PPO: keep β fixed instead of adapting it to --target-kl.
    #[arg(long)]
    fixed_kl: bool,
    /// PPO: horizon of the adaptive KL controller.
    #[arg(long, default_value_t = 10000.0)]
    kl_horizon: f64,
    /// PPO: discount γ.
    #[arg(long, default_value_t = 1.0)]
    gamma: f64,
    /// PPO: GAE λ.
    #[arg(long, default_value_t = 0.95)]
    lam: f64,
    /// PPO: policy-ratio clip ε.
    #[arg(long, default_value_t = 0.2)]
    cliprange: f64,
    /// PPO: value clip around the rollout values.
    #[arg(long, default_value_t = 0.2)]
    cliprange_value: f64,
    /// PPO: value-loss weight.
    #[arg(long, default_value_t = 1.0)]
    vf_coef: f64,
    /// PPO: reward-model scores are clipped to ±this.
    #[arg(long, default_value_t = 10.0)]
    cliprange_reward: f64,
    /// PPO: whiten the per-token rewards over each rollout batch (mean kept; TRL's
    /// `whiten_rewards`).
    #[arg(long)]
    whiten_rewards: bool,
}

fn lora_targets(a: &AlignArgs) -> anyhow::Result<Vec<String>> {
    Ok(if a.lora_targets == ["auto"] {
        let arch = trust_backends::candle::ModelConfig::from_dir(&a.model)?.arch;
        trust_align::lora::default_targets(arch)
    } else {
        a.lora_targets.clone()
    })
}

pub fn run(a: AlignArgs) -> anyhow::Result<()> {
    if a.stage == "ppo" {
        return run_ppo(a);
    }
    if a.reward.is_some() {
        anyhow::bail!("--reward is for --stage ppo");
    }
    let stage = match a.stage.as_str() {
        "sft" => Stage::Sft,
        "dpo" => Stage::Dpo,
        "rm" => Stage::Rm,
        _ => Stage::Pretrain,
    };
    if a.full && stage != Stage::Rm {
        anyhow::bail!("--full is for --stage rm (pretrain always trains every weight)");
    }
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
    cfg.lora.targets = lora_targets(&a)?;
    cfg.lora.layers = a.lora_layers.clone();
    cfg.seed = a.seed;
    cfg.checkpoint_every = a.checkpoint_every.unwrap_or(10);
    cfg.full = a.full;
    let (pairs, heldout) = load_pairs(&a)?;
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
    let mut summary = serde_json::json!({"out": a.out, "steps": logs.len(), "final_loss": last});
    if !heldout.is_empty() {
        let mut progress = |done: usize, total: usize| {
            if done == total {
                eprintln!("held-out: {total} scored");
            }
        };
        let value = if stage == Stage::Rm {
            let rm = trust_align::reward::RewardModel::load_cpu(&a.out)?;
            let e = rm.evaluate_pairs(&heldout, cfg.max_len, 8, &mut progress)?;
            eprintln!(
                "held-out reward accuracy {:.3} (mean margin {:+.3}) over {} pairs",
                e.pair_accuracy, e.mean_margin, e.n_pairs
            );
            serde_json::to_value(e)?
        } else {
            let e = trust_align::heldout::evaluate_pairs(
                &a.out,
                a.reference.as_deref(),
                &heldout,
                cfg.max_len,
                8,
                &mut progress,
            )?;
            eprintln!(
                "held-out pair accuracy {:.3}, chosen NLL {:.3}/token over {} pairs",
                e.pair_accuracy, e.chosen_nll, e.n_pairs
            );
            serde_json::to_value(e)?
        };
        let path = a.out.join("heldout.json");
        trust_core::fsutil::write_atomic(&path, serde_json::to_string_pretty(&value)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        summary["heldout_pair_accuracy"] = value["pair_accuracy"].clone();
    }
    println!("{summary}");
    Ok(())
}

/// The training pairs (after `--limit`), and the `--heldout` pairs split off them.
fn load_pairs(
    a: &AlignArgs,
) -> anyhow::Result<(
    Vec<trust_align::hh::PreferencePair>,
    Vec<trust_align::hh::PreferencePair>,
)> {
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
    if a.heldout == 0 {
        return Ok((pairs, Vec::new()));
    }
    if a.heldout >= pairs.len() {
        anyhow::bail!(
            "--heldout {} leaves no training pair ({} pairs in {})",
            a.heldout,
            pairs.len(),
            a.train.display()
        );
    }
    Ok(trust_align::heldout::split_heldout(
        &pairs, a.heldout, a.seed,
    ))
}

fn run_ppo(a: AlignArgs) -> anyhow::Result<()> {
    use trust_align::ppo::{PpoConfig, PpoRun, train_ppo};
    let Some(reward) = a.reward.clone() else {
        anyhow::bail!("--stage ppo needs --reward RM_DIR (train one with --stage rm)");
    };
    if a.reference.is_some() || a.full || a.heldout > 0 {
        anyhow::bail!(
            "--ref, --full and --heldout are not PPO options (the reference is --model itself)"
        );
    }
    let cfg = PpoConfig {
        steps: a.steps,
        rollout_batch: a.rollout_batch,
        minibatch_size: a.minibatch_size,
        ppo_epochs: a.ppo_epochs,
        max_new_tokens: a.max_new_tokens,
        max_prompt_len: a.max_prompt_len,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        lr: a.lr.unwrap_or(PpoConfig::default().lr),
        weight_decay: a.weight_decay,
        init_kl_coef: a.init_kl_coef,
        target_kl: (!a.fixed_kl).then_some(a.target_kl),
        horizon: a.kl_horizon,
        gamma: a.gamma,
        lam: a.lam,
        cliprange: a.cliprange,
        cliprange_value: a.cliprange_value,
        vf_coef: a.vf_coef,
        cliprange_reward: a.cliprange_reward,
        whiten_rewards: a.whiten_rewards,
        lora: trust_align::lora::LoraConfig {
            rank: a.lora_rank,
            alpha: a.lora_alpha,
            targets: lora_targets(&a)?,
            layers: a.lora_layers.clone(),
        },
        seed: a.seed,
        checkpoint_every: a.checkpoint_every.unwrap_or(1),
    };
    let (pairs, _) = load_pairs(&a)?;
    let prompts: Vec<(usize, String)> = pairs.into_iter().map(|p| (p.index, p.prompt)).collect();
    eprintln!(
        "{} prompts, {} PPO steps of {} rollouts ({} epochs, minibatches of {}), reward model {}",
        prompts.len(),
        cfg.steps,
        cfg.rollout_batch,
        cfg.ppo_epochs,
        cfg.minibatch_size,
        reward.display()
    );
    let total = cfg.steps;
    let started = std::time::Instant::now();
    let mut first_step: Option<usize> = None;
    let run = PpoRun {
        config: &cfg,
        policy_dir: &a.model,
        reward_dir: &reward,
        prompts: &prompts,
        out_dir: &a.out,
    };
    let logs = train_ppo(&run, &mut |l| {
        // Steps taken in this invocation (a resumed run starts later).
        let first = *first_step.get_or_insert(l.step);
        let done = l.step + 1 - first;
        let eta = started.elapsed().as_secs_f64() / done as f64 * (total - l.step) as f64;
        eprintln!(
            "step {}/{total} score {:+.3} kl {:.3} (β {:.4}) entropy {:.2} len {:.1} \
             clip {:.2} vf {:.3} | {:.0} tok/s rollout eta {eta:.0}s",
            l.step,
            l.mean_score,
            l.mean_kl,
            l.kl_coef,
            l.entropy,
            l.response_len,
            l.pg_clipfrac,
            l.vf_loss,
            l.rollout_tokens as f64 / l.rollout_secs.max(1e-9),
        );
    })
    .with_context(|| format!("PPO on {}", a.model.display()))?;
    let last = logs.last();
    println!(
        "{}",
        serde_json::json!({
            "out": a.out,
            "steps": logs.len(),
            "final_mean_score": last.map(|l| l.mean_score),
            "final_mean_kl": last.map(|l| l.mean_kl),
        })
    );
    Ok(())
}
