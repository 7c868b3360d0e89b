//! The `trust` command line as a library: [`run`] is the whole CLI (what the `trust` binary's
//! `main` calls), with extra verticals registered, so a binary of your own gets every command —
//! `eval`, `score`, `report`, `check`, `demo` — with your Rust verticals in the registry
//! (`--verticals yours`).
//!
//! ```no_run
//! use trust_verticals::registry::CustomVertical;
//!
//! fn main() -> std::process::ExitCode {
//!     let mine = CustomVertical::new("refusal", ["v1"], |_protocol, _opts| {
//!         # unimplemented!()
//!         // Ok(Box::new(MyRefusalVertical::new()))
//!     });
//!     trust_cli::run([mine])
//! }
//! ```
//!
//! `examples/my_trust.rs` is a complete binary. Exit codes ([`run`]): 0 success; 1 runtime
//! failure or asked-for work that did not happen; 2 usage error (bad arguments).

#![cfg_attr(docsrs, feature(doc_cfg))]
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "trust",
    version,
    about = "Measure what preference alignment does to a language model's trustworthiness",
    after_help = "Exit codes: 0 success; 1 runtime failure or asked-for work that did not happen (`eval`: a requested vertical not run, with no scored sample, or with any failed sample; `check`: a regression; `list`: missing or corrupt data files); 2 usage error (bad arguments). See docs/cli.md."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the data files found in a data directory and their checksums.
    List(list::ListArgs),
    /// Per-label probabilities of JSONL texts (`{"text": ...}`) from an ONNX classifier.
    #[cfg(feature = "ort")]
    Classify(classify_cmd::ClassifyArgs),
    /// Run verticals against a model and write per-vertical and combined reports.
    Eval(eval_cmd::EvalArgs),
    /// Agreement of toxicity scorers with Perspective on the RealToxicityPrompts texts
    /// (Pearson, Spearman, AUROC, accuracy at 0.5, MAE per label).
    ScorerAgreement(agreement_cmd::AgreementArgs),
    /// Score saved replies (JSON Lines `{"id", "reply"}`) without a model.
    Score(score_cmd::ScoreArgs),
    /// Compare run directories (checkpoints): self-contained report.html, report.json, report.md.
    Report(report_cmd::ReportArgs),
    /// Regression gate for CI: exit 1 when a candidate run regresses a metric past its bound
    /// against a baseline run (paired bootstrap over the shared samples, interval excluding 0).
    Check(check_cmd::CheckArgs),
    /// The sophistry audit (Wen et al.): correctness, approval, evaluation error rate and FPR of
    /// a model before and after RLHF from evaluator verdicts and/or a judge model; JSON report.
    Sophistry(sophistry_cmd::SophistryArgs),
    /// Log-likelihood of continuations with a local model (JSONL in: prompt, continuation).
    #[cfg(feature = "candle")]
    Loglik(model_cmds::LoglikArgs),
    /// Generate text with a local model (JSONL in: prompt; default stop: never).
    #[cfg(feature = "candle")]
    Generate(model_cmds::GenerateArgs),
    /// Align a model: full-parameter pretraining, LoRA SFT, LoRA DPO, a reward model or PPO
    /// against a reward model, on preference pairs.
    #[cfg(feature = "candle")]
    Align(align_cmd::AlignArgs),
    /// The main job: SmolLM2-135M-Instruct (or --tiny) → LoRA SFT → DPO, and SFT → reward model →
    /// PPO; held-out accuracy; all five verticals on every checkpoint; the sophistry audit; the
    /// attribution of the largest changes to the training pairs; report.json / html / md.
    #[cfg(feature = "candle")]
    Demo(demo_cmd::DemoArgs),
    /// Attribute a vertical's change to the training pairs (DataInf over LoRA gradients of the
    /// SFT, DPO or reward-model loss); writes {"train_index", "score"} lines.
    #[cfg(feature = "candle")]
    Attribute(attribute_cmd::AttributeArgs),
    /// Serve a local model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions).
    #[cfg(all(feature = "candle", feature = "http"))]
    Serve(serve_cmd::ServeArgs),
}

mod agreement_cmd;
mod check_cmd;
#[cfg(feature = "ort")]
mod classify_cmd;
mod eval_cmd;
mod exit;
mod list;
// Without `ort`, some `onnx:` option fields are parsed but never read.
#[cfg(feature = "candle")]
mod align_cmd;
#[cfg(feature = "candle")]
mod attribute_cmd;
#[cfg(feature = "candle")]
mod chat_opts;
#[cfg(feature = "candle")]
mod demo_cmd;
mod model_cmds;
mod progress;
mod report_cmd;
mod score_cmd;
#[cfg_attr(not(feature = "ort"), allow(dead_code))]
mod scorer_arg;
#[cfg(all(feature = "candle", feature = "http"))]
mod serve_cmd;
mod sophistry_cmd;

/// On small machines (at most 4 CPUs) candle's spinning element-wise thread pool costs more than
/// it saves (measured in BENCHMARKS.md: 1.5x-1.7x slower scoring on 2 cores): unless the user
/// chose, size it to one thread. Matrix products still use all cores (rayon).
/// `--quantized` is the exception: candle's quantized matrix products run on that pool, and one
/// thread makes them 1.9x slower (BENCHMARKS.md).
fn default_candle_threads() {
    let small = std::thread::available_parallelism().is_ok_and(|n| n.get() <= 4);
    let quantized = std::env::args_os().any(|a| a == "--quantized");
    if small && !quantized && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: first statement of `main`, before any thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// glibc hands every block above its mmap threshold (dynamic, up to 32 MB) back to the kernel
/// when it is freed, and trims the heap top above 128 KB, so a forward or backward pass that
/// allocates and frees the same large activations, logits and gradients layer after layer pays
/// page faults and kernel zeroing for them every time (half the system time of a DPO step on
/// SmolLM2). Keep freed memory in the heap for reuse instead.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Runs the `trust` command line on the process's arguments, with `verticals` registered
/// ([`trust_verticals::registry::register`]) next to the built-in ones, and returns the exit
/// code (0 success; 1 runtime failure or asked-for work that did not happen; 2 usage error).
/// Call it first thing in `main`: on machines with ≤ 4 CPUs it sets `CANDLE_NUM_THREADS=1`
/// unless set, and on glibc it keeps freed large blocks in the heap (`mallopt`), which is only
/// sound before other threads exist.
pub fn run(
    verticals: impl IntoIterator<Item = trust_verticals::registry::CustomVertical>,
) -> ExitCode {
    exit::quiet_broken_pipe();
    default_candle_threads();
    tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRUST_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    for v in verticals {
        let name = v.name().to_string();
        if let Err(e) = trust_verticals::registry::register(v) {
            eprintln!("error: registering vertical `{name}`: {e}");
            return ExitCode::from(2);
        }
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List(a) => list::run(a),
        #[cfg(feature = "ort")]
        Command::Classify(a) => classify_cmd::run(a),
        #[cfg(feature = "candle")]
        Command::Loglik(a) => model_cmds::run_loglik(a),
        #[cfg(feature = "candle")]
        Command::Generate(a) => model_cmds::run_generate(a),
        #[cfg(feature = "candle")]
        Command::Align(a) => align_cmd::run(a),
        #[cfg(feature = "candle")]
        Command::Demo(a) => demo_cmd::run_cmd(a),
        #[cfg(feature = "candle")]
        Command::Attribute(a) => attribute_cmd::run(a),
        #[cfg(all(feature = "candle", feature = "http"))]
        Command::Serve(a) => serve_cmd::run(a),
        Command::Eval(a) => eval_cmd::run(a),
        Command::ScorerAgreement(a) => agreement_cmd::run(a),
        Command::Score(a) => score_cmd::run(a),
        Command::Report(a) => report_cmd::run(a),
        Command::Check(a) => check_cmd::run(a),
        Command::Sophistry(a) => sophistry_cmd::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", exit::render(&e));
            ExitCode::from(u8::try_from(exit::code_of(&e)).unwrap_or(1))
        }
    }
}
