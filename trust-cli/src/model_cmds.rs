//! `trust loglik` and `trust generate`: run a local model (a Hugging Face directory with GPT-NeoX,
//! Llama or Qwen2 weights, or a GGUF file) with the candle backend over a JSONL file, one JSON
//! line out per line in.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use trust_backends::candle::{CandleModel, ChatMessage, LoadOptions, parse_device, parse_dtype};

use crate::chat_opts::ChatTemplateChoice;
use trust_core::{DecodingConfig, GenerateRequest, LogLikelihoodRequest, Sampling, StopPolicy};

/// Options shared by the model subcommands.
#[derive(clap::Args)]
pub struct ModelOpts {
    /// Model: a directory (config.json, tokenizer.json, model.safetensors or a sharded index), a
    /// .gguf file, or a directory holding one .gguf.
    #[arg(long)]
    model: PathBuf,
    /// Input JSONL file.
    #[arg(long)]
    input: PathBuf,
    /// Sequences per forward pass (scoring) or per generation group.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Generation: the most rows one forward pass decodes across requests (a beam search
    /// counts its beams).
    #[arg(long, default_value_t = 64)]
    max_batch_rows: usize,
    /// Device: cpu, cuda or cuda:N (CUDA needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// GGUF models: multiply with the stored quantized weights (candle's quantized kernels, CPU)
    /// instead of dequantising them to --dtype (faster; log-probs differ slightly, see
    /// trust-backends/README.md).
    #[arg(long)]
    quantized: bool,
}

/// Arguments of `trust loglik`.
#[derive(clap::Args)]
pub struct LoglikArgs {
    #[command(flatten)]
    model: ModelOpts,
    /// Score every request in full instead of computing the token prefixes that requests share
    /// (a few-shot primer, a question before each option) once; same log-probabilities to the
    /// bit, slower. For comparison.
    #[arg(long)]
    no_prefix_sharing: bool,
}

/// Arguments of `trust generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelOpts,
    /// Number of new tokens (at most).
    #[arg(long)]
    max_new_tokens: usize,
    /// Greedy decoding (the default when no --temperature is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "seed"])]
    greedy: bool,
    /// Sampling temperature (> 0); turns on seeded sampling.
    #[arg(long)]
    temperature: Option<f64>,
    /// Nucleus mass in (0, 1] for sampling (default 1.0 = off).
    #[arg(long, requires = "temperature")]
    top_p: Option<f64>,
    /// Sampling seed (default 0). Every input line uses this seed, so a line's output does not
    /// depend on the other lines of the file.
    #[arg(long, requires = "temperature")]
    seed: Option<u64>,
    /// When to stop early: `never` (default: always produce --max-new-tokens), `eos` (the
    /// model's EOS ids from config.json / generation_config.json) or a comma-separated list of
    /// token ids (e.g. `50256`).
    #[arg(long, default_value = "never")]
    stop: String,
    /// Chat formatting: `auto` (default: lines with `messages` are rendered with the model's
    /// chat template; a `prompt` line becomes one user message when the model has a template,
    /// and stays raw otherwise), `none` (prompts raw; `messages` lines are refused), `wrap`
    /// (like auto, but a model without a template is an error) or a template FILE (.jinja, or a
    /// tokenizer_config.json).
    #[arg(long, default_value = "auto")]
    chat_template: ChatTemplateChoice,
}

#[derive(Deserialize)]
struct LoglikLine {
    prompt: String,
    continuation: String,
}

#[derive(Deserialize)]
struct GenerateLine {
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
}

/// Reads a JSONL file; errors name the file and the 1-based line. Blank lines are skipped.
fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Vec<(usize, T)>> {
    let f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: T = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: malformed input line", path.display(), i + 1))?;
        out.push((i + 1, v));
    }
    Ok(out)
}

fn load(o: &ModelOpts) -> anyhow::Result<CandleModel> {
    if o.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let opts = LoadOptions {
        dtype: parse_dtype(&o.dtype)?,
        device: parse_device(&o.device)?,
        batch_size: o.batch_size,
        max_batch_rows: o.max_batch_rows.max(1),
        quantized: o.quantized,
        ..LoadOptions::default()
    };
    Ok(CandleModel::load(&o.model, &opts)?)
}

fn parse_stop(s: &str) -> anyhow::Result<StopPolicy> {
    Ok(match s.trim() {
        "never" => StopPolicy::Never,
        "eos" => StopPolicy::ModelEos,
        list => StopPolicy::Tokens(
            list.split(',')
                .map(|x| {
                    x.trim()
                        .parse::<u32>()
                        .with_context(|| format!("--stop: `{x}` is not eos, never or a token id"))
                })
                .collect::<anyhow::Result<Vec<u32>>>()?,
        ),
    })
}

/// Runs `trust loglik`.
pub fn run_loglik(a: LoglikArgs) -> anyhow::Result<()> {
    let lines: Vec<(usize, LoglikLine)> = read_lines(&a.model.input)?;
    let model = load(&a.model)?.with_prefix_sharing(!a.no_prefix_sharing);
    let reqs: Vec<LogLikelihoodRequest> = lines
        .iter()
        .map(|(_, l)| LogLikelihoodRequest {
            context: l.prompt.clone(),
            continuation: l.continuation.clone(),
        })
        .collect();
    let t0 = std::time::Instant::now();
    let results = model.loglikelihood_sync(&reqs);
    eprintln!(
        "trust: scored {} requests in {:.3} s (after loading)",
        reqs.len(),
        t0.elapsed().as_secs_f64()
    );
    let mut out = std::io::stdout().lock();
    for ((line, _), r) in lines.iter().zip(results) {
        let r = r.with_context(|| format!("{}:{line}", a.model.input.display()))?;
        let v = serde_json::json!({
            "continuation_logprob_sum": r.sum,
            "continuation_logprobs": r.token_logprobs,
            "is_greedy": r.is_greedy,
        });
        writeln!(out, "{v}")?;
    }
    Ok(())
}

/// Runs `trust generate`.
pub fn run_generate(a: GenerateArgs) -> anyhow::Result<()> {
    let lines: Vec<(usize, GenerateLine)> = read_lines(&a.model.input)?;
    let stop = parse_stop(&a.stop)?;
    let sampling = match a.temperature {
        Some(temperature) if !a.greedy => Sampling::Sample {
            temperature,
            top_p: a.top_p.unwrap_or(1.0),
            top_k: 0,
        },
        _ => Sampling::Greedy,
    };
    let config = DecodingConfig {
        max_new_tokens: a.max_new_tokens,
        sampling,
        n: 1,
        num_beams: 1,
        stop,
        stop_strings: Vec::new(),
    };
    config.validate()?;
    let model = load(&a.model)?;
    let template = a.chat_template.resolve(&model)?;
    let seed = a.seed.unwrap_or(0);
    let mut reqs: Vec<GenerateRequest> = Vec::with_capacity(lines.len());
    for (line, l) in &lines {
        let at = || format!("{}:{line}", a.model.input.display());
        let prompt = match (&l.prompt, &l.messages, &template) {
            (Some(_), Some(_), _) => bail!("{}: give `prompt` or `messages`, not both", at()),
            (None, None, _) => bail!("{}: missing `prompt` (or `messages`)", at()),
            (Some(p), None, None) => p.clone(),
            (Some(p), None, Some(t)) => t
                .render(&[ChatMessage::new("user", p.clone())], true)
                .with_context(at)?,
            (None, Some(m), Some(t)) => t.render(m, true).with_context(at)?,
            (None, Some(_), None) => bail!(
                "{}: `messages` needs a chat template (the model has none, or --chat-template none)",
                at()
            ),
        };
        reqs.push(GenerateRequest {
            prompt,
            config: config.clone(),
            seed,
        });
    }
    let t0 = std::time::Instant::now();
    let results = model.generate_sync(&reqs);
    eprintln!(
        "trust: generated {} requests in {:.3} s (after loading)",
        reqs.len(),
        t0.elapsed().as_secs_f64()
    );
    let mut out = std::io::stdout().lock();
    for ((line, _), r) in lines.iter().zip(results) {
        let r = r.with_context(|| format!("{}:{line}", a.model.input.display()))?;
        let c = &r.completions[0];
        writeln!(
            out,
            "{}",
            serde_json::json!({ "ids": c.token_ids, "text": c.text })
        )?;
    }
    Ok(())
}
