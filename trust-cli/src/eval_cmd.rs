//! `trust eval`: run verticals against a model with the [`Runner`] and combine their reports.
//!
//! Each vertical writes `OUT/<vertical>/{manifest.json,samples.jsonl,report.json}` (the runner's
//! layout); `OUT/report.json` lists every requested vertical as `ok` (with its report),
//! `skipped` (no such protocol for it, or it needs a scorer and none was given) or `failed`
//! (with the error). One vertical failing or being skipped never stops the others.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::exit::usage;
use serde_json::json;
use trust_core::testing::MockModel;
use trust_core::{Capability, DataDir, LanguageModel, Runner, TextScorer};
use trust_verticals::registry::{self, BuildOptions};

/// Arguments of `trust eval`.
#[derive(clap::Args)]
pub struct EvalArgs {
    /// Model directory (Hugging Face layout), or `mock` for the deterministic test model
    /// (`mock:generate,sampling` restricts its capabilities, e.g. to test a backend without beam
    /// search or log-likelihood), or an OpenAI-compatible server `http[s]://HOST:PORT/v1#MODEL[;opt...]`
    /// (several, comma-separated, shard the run; see docs/http-backend.md).
    #[arg(long)]
    model: String,
    /// `all` or a comma-separated list of verticals (toxicity, stereotype, machine_ethics,
    /// truthfulness, privacy). Default: `all`, or none when `--vertical-spec` is given.
    #[arg(long)]
    verticals: Option<String>,
    /// A declarative vertical (TOML: data file, prompt template, decoding, parser, metrics; see
    /// docs/vertical-specs.md) to run as well; repeatable. It runs under its own protocol
    /// (unless `--protocol NAME=P` overrides it) and is recorded, spec and data sha256 included,
    /// in its manifest.
    #[arg(long, value_name = "FILE")]
    vertical_spec: Vec<PathBuf>,
    /// Protocol for every vertical, optionally followed by per-vertical overrides:
    /// `paper` or `paper,toxicity=paper-text,truthfulness=loglik`.
    #[arg(long, default_value = "paper")]
    protocol: String,
    /// Data directory (layout of data/; default: $TRUST_DATA_DIR, else the checkout's data/).
    #[arg(long, env = "TRUST_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Use only the first N samples of each vertical.
    #[arg(long)]
    limit: Option<usize>,
    /// Use a seeded stratified subset of N samples of each vertical, covering its groups evenly
    /// (toxic/non-toxic × template, topic × group × template, ethics label, PII type); the same
    /// seed and N give every model the same samples. `--limit` then applies to the subset.
    #[arg(long, value_name = "N")]
    sample: Option<usize>,
    /// Generations per prompt, for protocols that have k (toxicity, stereotype).
    #[arg(long)]
    samples: Option<usize>,
    /// Requests per model call (and, for local models, rows per scoring pass). Local models
    /// decode the requests of a call together, up to 64 rows per forward pass; results do not
    /// depend on it.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Local models: the most rows one forward pass decodes (a beam search counts its beams).
    /// More rows use the CPU's matrix units better and need more memory for the KV cache.
    #[arg(long, default_value_t = 64)]
    max_batch_rows: usize,
    /// Run seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue the run found in OUT.
    #[arg(long)]
    resume: bool,
    /// With --resume: redo the samples recorded as failed (e.g. after a transient backend error).
    #[arg(long, requires = "resume")]
    retry_errors: bool,
    /// Print the requests the first samples would send (JSON lines on stdout: the first N of
    /// --limit, default 2 per vertical) and exit without loading the model or writing anything.
    #[arg(long)]
    dry_run: bool,
    /// No progress bars (they are drawn on stderr only when it is a terminal).
    #[arg(long)]
    no_progress: bool,
    /// Output directory (not needed with --dry-run).
    #[arg(long, required_unless_present = "dry_run")]
    out: Option<PathBuf>,
    /// Text scorer for toxicity: `jigsaw` (the default when installed by
    /// scripts/fetch-models.sh: the Jigsaw-trained BiLSTM), `jigsaw:DIR`, an ONNX classifier
    /// `onnx:DIR[,primary=LABEL,batch=N,...]` or a bare `DIR` (e.g. `onnx:models/hatesonar`),
    /// `lexical` (the demo's n-gram regression), `mock` (word-list test scorer) or `none` (skip
    /// toxicity). Without it and without jigsaw installed, a run with toxicity is an error.
    #[arg(long)]
    scorer: Option<String>,
    /// Scorer label read as toxicity (default: the scorer's primary label).
    #[arg(long)]
    scorer_label: Option<String>,
    /// Device for model backends (`cpu`, `cuda`, `cuda:1`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype for model backends (`f32`, `f16`, `bf16`).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// GGUF models: multiply with the stored quantized weights instead of dequantising them to
    /// --dtype (faster; log-probs differ slightly, see trust-backends/README.md).
    #[arg(long)]
    quantized: bool,
    /// Local models: score log-likelihood requests in full instead of computing the token
    /// prefixes they share (a few-shot primer, a question before each option) once; same results
    /// to the bit, slower. For comparison.
    #[arg(long)]
    no_prefix_sharing: bool,
    /// Local models: how chat-message protocols meet the model's chat format. `auto` (default):
    /// the `decodingtrust*` protocols render their system/user messages with the model's chat
    /// template when it has one (else the HH layout `{system}\n\nHuman: {user}\n\nAssistant:`);
    /// raw-text protocols (`paper*`) stay raw. `none`: always the HH layout. `wrap`: as `auto`,
    /// and raw-text prompts are sent as one user message too (the model must have a template).
    /// A template FILE (`.jinja` or a tokenizer_config.json) is used as `wrap` with that template.
    /// Recorded in each vertical's manifest.
    #[arg(long, default_value = "auto")]
    chat_template: crate::chat_opts::ChatTemplateChoice,
    /// Bootstrap resamples for the confidence intervals.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Reuse generations across runs: each successful generation is stored in DIR (one JSON file
    /// per request) and a later request with the same key is answered from there. The key covers
    /// the model (path or served name, weights sha256, backend details such as dtype, device,
    /// quantisation and HTTP options), the prompt, the decoding settings and — for sampled
    /// decoding only — the request seed. Errors are never stored. Log-likelihood requests are
    /// not cached. See docs/cli.md before sharing a cache across trust versions or servers.
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
}

/// A loaded model and, for local models, its chat template.
pub struct LoadedModel {
    /// The model.
    pub model: Box<dyn LanguageModel>,
    /// The chat template `--chat-template` chose (`None`: the HH layout, raw prompts).
    pub chat: Option<trust_core::SharedChatFormat>,
    /// Whether raw-text prompts are wrapped as one user message (`wrap` or a FILE).
    pub wrap_raw: bool,
}

/// How a local model is loaded (`trust eval` options).
pub struct LocalOpts<'a> {
    /// `--device`.
    pub device: &'a str,
    /// `--dtype`.
    pub dtype: &'a str,
    /// `--batch-size`.
    pub batch_size: usize,
    /// `--max-batch-rows`.
    pub max_batch_rows: usize,
    /// `--quantized`.
    pub quantized: bool,
    /// Not `--no-prefix-sharing`.
    pub prefix_sharing: bool,
    /// `--chat-template`.
    pub chat_template: crate::chat_opts::ChatTemplateChoice,
}

/// Loads the model named by `--model`: `mock`, a URL, or a model directory / GGUF file through
/// the candle backend.
pub fn load_model(spec: &str, o: &LocalOpts<'_>) -> anyhow::Result<LoadedModel> {
    let plain = |model| LoadedModel {
        model,
        chat: None,
        wrap_raw: false,
    };
    if spec == "mock" {
        return Ok(plain(Box::new(MockModel::new())));
    }
    if let Some(caps) = spec.strip_prefix("mock:") {
        return Ok(plain(Box::new(
            MockModel::new().with_capabilities(&parse_capabilities(caps)?),
        )));
    }
    if spec.starts_with("http://") || spec.starts_with("https://") {
        return Ok(plain(load_http_model(spec)?));
    }
    load_model_dir(Path::new(spec), o)
}

/// `http://HOST:PORT/v1#MODEL[;opt...]`, or several comma-separated (a [`ShardedModel`]).
///
/// [`ShardedModel`]: trust_backends::http::ShardedModel
#[cfg(feature = "http")]
fn load_http_model(spec: &str) -> anyhow::Result<Box<dyn LanguageModel>> {
    use trust_backends::http::{HttpModel, HttpOptions, ShardedModel};
    let mut members: Vec<Box<dyn LanguageModel>> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        members.push(Box::new(HttpModel::new(HttpOptions::from_spec(part)?)?));
    }
    if members.len() == 1 {
        return Ok(members.remove(0));
    }
    Ok(Box::new(
        ShardedModel::new(members).context("--model: no URL")?,
    ))
}

#[cfg(not(feature = "http"))]
fn load_http_model(spec: &str) -> anyhow::Result<Box<dyn LanguageModel>> {
    bail!("cannot use {spec}: this build has no `http` feature")
}

/// Parses `generate,sampling,beam_search,loglikelihood` (for `--model mock:CAPS`).
fn parse_capabilities(list: &str) -> anyhow::Result<Vec<Capability>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|c| {
            Ok(match c {
                "generate" => Capability::Generate,
                "sampling" => Capability::Sampling,
                "beam_search" => Capability::BeamSearch,
                "loglikelihood" => Capability::LogLikelihood,
                other => {
                    return Err(usage(format!(
                        "unknown capability `{other}` in --model mock:... (generate, sampling, beam_search, loglikelihood)"
                    )));
                }
            })
        })
        .collect()
}

/// Loads a Hugging Face model directory or a GGUF file with the candle backend.
#[cfg(feature = "candle")]
fn load_model_dir(dir: &Path, o: &LocalOpts<'_>) -> anyhow::Result<LoadedModel> {
    use crate::chat_opts::ChatTemplateChoice;
    use trust_backends::candle::{CandleModel, LoadOptions, parse_device, parse_dtype};
    let opts = LoadOptions {
        dtype: parse_dtype(o.dtype)?,
        device: parse_device(o.device)?,
        batch_size: o.batch_size.max(1),
        max_batch_rows: o.max_batch_rows.max(1),
        quantized: o.quantized,
        prefix_sharing: o.prefix_sharing,
        ..LoadOptions::default()
    };
    let model = CandleModel::load(dir, &opts)
        .with_context(|| format!("loading model {}", dir.display()))?;
    let template = o.chat_template.resolve(&model)?;
    let wrap_raw = matches!(
        o.chat_template,
        ChatTemplateChoice::Wrap | ChatTemplateChoice::File(_)
    );
    if let Some(t) = &template {
        eprintln!(
            "chat template: {} ({}){}",
            t.origin().display(),
            trust_core::ChatFormat::describe(t),
            if wrap_raw {
                ", raw-text prompts sent as one user message"
            } else {
                ", for the chat-message protocols"
            }
        );
    }
    let chat = template.map(|t| std::sync::Arc::new(t) as trust_core::SharedChatFormat);
    Ok(LoadedModel {
        model: Box::new(model),
        chat,
        wrap_raw,
    })
}

/// Without the `candle` feature there is no local model backend.
#[cfg(not(feature = "candle"))]
fn load_model_dir(dir: &Path, _o: &LocalOpts<'_>) -> anyhow::Result<LoadedModel> {
    bail!(
        "cannot load {}: candle backend not available in this build (use --model mock)",
        dir.display()
    )
}

/// Builds the text scorer named by `--scorer` (see `scorer_arg`): `jigsaw[:DIR]`, `lexical`
/// (fitted on `data`), `mock`, `none`, `onnx:DIR[,key=value...]`; a bare existing directory is
/// read as `onnx:DIR`.
pub fn make_scorer(spec: &str, data: &DataDir) -> anyhow::Result<Option<Box<dyn TextScorer>>> {
    let s = spec.trim();
    if s == "lexical" {
        return make_lexical(data);
    }
    let bare_dir = !matches!(s, "" | "none" | "mock" | "jigsaw")
        && !s.starts_with("onnx:")
        && !s.starts_with("jigsaw:")
        && Path::new(s).is_dir();
    if bare_dir {
        return crate::scorer_arg::load_scorer(&format!("onnx:{s}"));
    }
    crate::scorer_arg::load_scorer(s)
}

#[cfg(feature = "candle")]
fn make_lexical(data: &DataDir) -> anyhow::Result<Option<Box<dyn TextScorer>>> {
    let s = trust_backends::scorers::lexical::LexicalToxicity::fit(data, 0)
        .context("fitting the lexical scorer on the RealToxicityPrompts data")?;
    Ok(Some(Box::new(s)))
}

#[cfg(not(feature = "candle"))]
fn make_lexical(_data: &DataDir) -> anyhow::Result<Option<Box<dyn TextScorer>>> {
    bail!("the lexical scorer needs a build with the `candle` feature")
}

/// The scorer a run uses when `--scorer` is not given: the Jigsaw BiLSTM when installed, for
/// runs that need one; an error saying how to install it otherwise.
pub fn default_scorer(needs_one: bool) -> anyhow::Result<Option<Box<dyn TextScorer>>> {
    if !needs_one {
        return Ok(None);
    }
    match crate::scorer_arg::installed_jigsaw() {
        Some(dir) => {
            eprintln!(
                "toxicity scorer: jigsaw ({}; the default; --scorer chooses another)",
                dir.display()
            );
            crate::scorer_arg::load_jigsaw(Some(&dir.display().to_string())).map(Some)
        }
        None => bail!(
            "toxicity needs a text scorer and none is installed: run scripts/fetch-models.sh jigsaw, or pass --scorer (jigsaw:DIR, onnx:DIR, lexical, mock; `none` skips toxicity)"
        ),
    }
}

/// Registers the vertical spec in `file` and returns its name; a bad spec is a usage error.
pub fn register_spec(file: &Path) -> anyhow::Result<String> {
    trust_verticals::spec::register_file(file).map_err(|e| usage(e.to_string()))
}

/// `--data-dir`, else the default data directory. Spec verticals read their own data files, so a
/// run of only those (`only_specs`) without `--data-dir` may have none.
pub fn data_dir_for(dir: Option<&Path>, only_specs: bool) -> anyhow::Result<DataDir> {
    if only_specs && dir.is_none() {
        return Ok(DataDir::resolve(None).unwrap_or_else(|_| DataDir::empty()));
    }
    Ok(DataDir::resolve(dir)?)
}

/// Protocols of `vertical` whose decoding needs no beam search.
fn beam_free_protocols(vertical: &str) -> Vec<String> {
    registry::protocols(vertical)
        .unwrap_or_default()
        .iter()
        .filter(|p| {
            registry::build(vertical, p, &BuildOptions::default())
                .map(|v| {
                    !v.requirements()
                        .capabilities
                        .contains(&Capability::BeamSearch)
                })
                .unwrap_or(false)
        })
        .map(|p| p.to_string())
        .collect()
}

/// Parses `--verticals`.
pub fn parse_verticals(spec: &str) -> anyhow::Result<Vec<String>> {
    if spec.trim() == "all" {
        return Ok(registry::VERTICALS.iter().map(|s| s.to_string()).collect());
    }
    let mut out = Vec::new();
    for v in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if registry::protocols(v).is_none() {
            return Err(usage(format!(
                "unknown vertical `{v}` (known: {}, or all)",
                registry::known_verticals().join(", ")
            )));
        }
        if !out.iter().any(|x| x == v) {
            out.push(v.to_string());
        }
    }
    if out.is_empty() {
        return Err(usage("--verticals is empty"));
    }
    Ok(out)
}

/// Parses `--protocol`: a default and `vertical=protocol` overrides.
pub fn parse_protocols(spec: &str) -> anyhow::Result<(String, Vec<(String, String)>)> {
    let mut default = None;
    let mut overrides = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match part.split_once('=') {
            Some((v, p)) => {
                if registry::protocols(v.trim()).is_none() {
                    return Err(usage(format!(
                        "--protocol: unknown vertical `{v}` in `{part}`"
                    )));
                }
                overrides.push((v.trim().to_string(), p.trim().to_string()));
            }
            None if default.is_none() => default = Some(part.to_string()),
            None => {
                return Err(usage(format!(
                    "--protocol: two default protocols given (`{}` and `{part}`)",
                    default.unwrap_or_default()
                )));
            }
        }
    }
    Ok((default.unwrap_or_else(|| "paper".into()), overrides))
}

/// The protocol `--protocol` gives `vertical`: its last override, else the default.
pub fn protocol_for(vertical: &str, default: &str, overrides: &[(String, String)]) -> String {
    overrides
        .iter()
        .rev()
        .find(|(v, _)| v == vertical)
        .map(|(_, p)| p.clone())
        .unwrap_or_else(|| default.to_string())
}

/// Checks that every requested vertical has the protocol `--protocol` gives it (a usage error
/// naming each that does not), before any model is loaded.
pub fn check_protocols(
    verticals: &[String],
    default: &str,
    overrides: &[(String, String)],
) -> anyhow::Result<()> {
    let bad: Vec<String> = verticals
        .iter()
        .filter_map(|v| {
            let p = protocol_for(v, default, overrides);
            let known = registry::protocols(v).unwrap_or_default();
            (!known.contains(&p)).then(|| {
                format!(
                    "no protocol `{p}` for {v} (protocols: {})",
                    known.join(", ")
                )
            })
        })
        .collect();
    if !bad.is_empty() {
        return Err(usage(format!("--protocol: {}", bad.join("; "))));
    }
    Ok(())
}

/// The one-line summary of a vertical's run on stdout, then its headline metrics (slices are
/// counted, not printed: they are in the vertical's report.json).
fn print_summary(name: &str, protocol: &str, report: &trust_core::VerticalReport, out: &Path) {
    println!(
        "{name}\t{protocol}\tsamples={} ok={} failed={} unparsed={}",
        report.n_samples, report.n_ok, report.n_failed, report.n_unparsed
    );
    let mut hidden = 0usize;
    for m in &report.metrics {
        if m.name.contains('[') {
            hidden += 1;
            continue;
        }
        let v = m
            .value
            .map(|x| format!("{x:.4}"))
            .unwrap_or_else(|| "n/a".into());
        let ci = match (m.ci_low, m.ci_high) {
            (Some(l), Some(h)) => format!(" [{l:.4}, {h:.4}]"),
            _ => String::new(),
        };
        println!("{name}\t{protocol}\t{}\t{v}{ci}\tn={}", m.name, m.n);
    }
    if hidden > 0 {
        println!(
            "{name}\t{protocol}\t({hidden} slice metrics in {})",
            out.join(name)
                .join(trust_core::runner::REPORT_FILE)
                .display()
        );
    }
}

/// Why a finished vertical still fails the run: no scored sample, or failed samples.
fn shortfall(name: &str, report: &trust_core::VerticalReport) -> Option<String> {
    if report.n_ok == 0 {
        Some(format!(
            "{name}: no sample was scored ({} selected, {} failed)",
            report.n_samples, report.n_failed
        ))
    } else if report.n_failed > 0 {
        Some(format!(
            "{name}: {} of {} samples failed (rerun with --resume --retry-errors)",
            report.n_failed, report.n_samples
        ))
    } else {
        None
    }
}

/// Merges this invocation's entries into the combined report on disk: verticals not run now
/// keep their entry, and an entry that did not run now (`failed`, `skipped`) does not replace
/// an `ok` one (it is attached to it as `last_attempt`).
fn merge_entries(
    on_disk: Option<serde_json::Value>,
    now: Vec<serde_json::Value>,
) -> Vec<serde_json::Value> {
    let mut merged: Vec<serde_json::Value> = on_disk
        .as_ref()
        .and_then(|d| d["verticals"].as_array().cloned())
        .unwrap_or_default();
    for e in now {
        let name = e["vertical"].clone();
        match merged.iter_mut().find(|m| m["vertical"] == name) {
            Some(old) if e["status"] != "ok" && old["status"] == "ok" => {
                old["last_attempt"] = e;
            }
            Some(old) => *old = e,
            None => merged.push(e),
        }
    }
    // Report order.
    merged.sort_by_key(|e| {
        registry::VERTICALS
            .iter()
            .position(|v| e["vertical"] == *v)
            .unwrap_or(usize::MAX)
    });
    merged
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(a))
}

async fn run_async(a: EvalArgs) -> anyhow::Result<()> {
    // Spec verticals first: registered, they are known to --verticals and --protocol.
    let mut spec_names = Vec::new();
    for file in &a.vertical_spec {
        let name = register_spec(file)?;
        if !spec_names.contains(&name) {
            spec_names.push(name);
        }
    }
    let verticals_arg = a.verticals.clone().unwrap_or_else(|| {
        if spec_names.is_empty() {
            "all".into()
        } else {
            String::new()
        }
    });
    let mut verticals = if verticals_arg.trim().is_empty() {
        Vec::new()
    } else {
        parse_verticals(&verticals_arg)?
    };
    for n in &spec_names {
        if !verticals.contains(n) {
            verticals.push(n.clone());
        }
    }
    let (default_protocol, mut overrides) = parse_protocols(&a.protocol)?;
    // A registered vertical (a spec, or a Rust one of `trust_cli::run`) without the default
    // protocol runs under its first one, unless --protocol NAME=P says otherwise (later wins).
    for n in verticals.iter().rev() {
        let Some(own) = registry::protocols(n) else {
            continue;
        };
        if !registry::VERTICALS.contains(&n.as_str())
            && !own.contains(&default_protocol)
            && let Some(first) = own.first()
        {
            overrides.insert(0, (n.clone(), first.clone()));
        }
    }
    check_protocols(&verticals, &default_protocol, &overrides)?;
    // `--scorer none` leaves toxicity out of `all`; asking for it by name is contradictory.
    let no_scorer = a.scorer.as_deref().is_some_and(|s| s.trim() == "none");
    let mut not_requested = Vec::new();
    if no_scorer && verticals.iter().any(|v| v == "toxicity") {
        if verticals_arg.trim() != "all" {
            return Err(usage(
                "--verticals names toxicity but --scorer none gives it no scorer (drop one of them)",
            ));
        }
        verticals.retain(|v| v != "toxicity");
        eprintln!("toxicity left out: --scorer none");
        not_requested.push(json!({"vertical": "toxicity", "protocol": protocol_for("toxicity", &default_protocol, &overrides), "status": "skipped", "reason": "--scorer none"}));
    }
    // Spec verticals read their own data files: a run of only those needs no data directory.
    let only_specs = verticals.iter().all(|v| spec_names.contains(v));
    let data = data_dir_for(a.data_dir.as_deref(), only_specs)?;
    if a.dry_run {
        return crate::progress::dry_run(
            &verticals,
            &default_protocol,
            &overrides,
            a.samples,
            a.limit.unwrap_or(2),
            a.seed,
            &data,
        )
        .await;
    }
    let out = a.out.clone().context("--out is required")?;
    let LoadedModel {
        model,
        chat,
        wrap_raw,
    } = load_model(
        &a.model,
        &LocalOpts {
            device: &a.device,
            dtype: &a.dtype,
            batch_size: a.batch_size,
            max_batch_rows: a.max_batch_rows,
            quantized: a.quantized,
            prefix_sharing: !a.no_prefix_sharing,
            chat_template: a.chat_template.clone(),
        },
    )?;
    // `--cache`: the cache sits under the chat wrapping, so keys hold the prompt as sent.
    let mut cache_handle = None;
    let model: Box<dyn LanguageModel> = match &a.cache {
        Some(dir) => {
            let cache = trust_core::DirCache::new(dir)
                .with_context(|| format!("creating the cache directory {}", dir.display()))?;
            let cached = std::sync::Arc::new(trust_core::Cached::new(model, cache));
            cache_handle = Some((dir.clone(), cached.clone()));
            Box::new(cached)
        }
        None => model,
    };
    // `wrap`: raw-text protocols see the model through its chat template as one user message.
    let wrapped: Option<Box<dyn LanguageModel>> = match (&chat, wrap_raw) {
        (Some(c), true) => Some(Box::new(trust_core::ChatWrapped::new(
            model.as_ref(),
            c.clone(),
        ))),
        _ => None,
    };
    let scorer = match a.scorer.as_deref() {
        Some(spec) => make_scorer(spec, &data)?,
        None => default_scorer(verticals.iter().any(|v| v == "toxicity"))?,
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let runner = Runner::builder()
        .batch_size(a.batch_size)
        .seed(a.seed)
        .out_dir(&out)
        .resume(a.resume)
        .retry_errors(a.retry_errors)
        .limit(a.limit)
        .sample(a.sample)
        .bootstrap_resamples(a.bootstrap)
        .observer(std::sync::Arc::new(crate::progress::Progress::new(
            !a.no_progress,
        )))
        .build();

    let mut entries = not_requested;
    let mut problems: Vec<String> = Vec::new();
    for name in &verticals {
        let protocol = protocol_for(name, &default_protocol, &overrides);
        let opts = BuildOptions {
            samples: a.samples,
            scorer_label: a.scorer_label.clone(),
            scorer: scorer.as_ref().map(|s| s.info()),
            chat: chat.clone(),
        };
        let vertical = match registry::build(name, &protocol, &opts) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("{name}: {e}");
                problems.push(format!("{name}: {e}"));
                entries.push(json!({"vertical": name, "protocol": protocol, "status": "failed", "error": e.to_string()}));
                continue;
            }
        };
        if vertical.requirements().scorer && scorer.is_none() {
            let reason = format!(
                "{name} needs a text scorer; pass --scorer (jigsaw, onnx:DIR, lexical or mock)"
            );
            eprintln!("{name} not run: {reason}");
            problems.push(reason.clone());
            entries.push(json!({"vertical": name, "protocol": protocol, "status": "failed", "error": reason}));
            continue;
        }
        eprintln!("running {name} (protocol {protocol})");
        // Only verticals that score texts get (and record) the scorer.
        let vertical_scorer = if vertical.requirements().scorer {
            scorer.as_deref()
        } else {
            None
        };
        // A protocol with chat messages renders them itself (its manifest names the layout); a
        // raw-text one goes through the wrapping model under `wrap`.
        let is_chat_protocol = !vertical.options()["chat_layout"].is_null();
        let run_model: &dyn LanguageModel = match &wrapped {
            Some(w) if !is_chat_protocol => w.as_ref(),
            _ => model.as_ref(),
        };
        match vertical
            .run(&runner, run_model, vertical_scorer, &data)
            .await
        {
            Ok(report) => {
                print_summary(name, &protocol, &report, &out);
                problems.extend(shortfall(name, &report));
                entries.push(json!({"vertical": name, "protocol": protocol, "status": "ok", "report": report}));
            }
            Err(e) => {
                let mut msg = crate::exit::core_message(&e);
                if matches!(
                    e,
                    trust_core::Error::MissingCapability {
                        capability: Capability::BeamSearch,
                        ..
                    }
                ) {
                    msg.push_str(&format!(
                        "; protocols without beam search: {}",
                        beam_free_protocols(name).join(", ")
                    ));
                }
                eprintln!("{name}: {msg}");
                problems.push(format!("{name}: {msg}"));
                entries.push(json!({"vertical": name, "protocol": protocol, "status": "failed", "error": msg}));
            }
        }
    }
    let path = out.join("report.json");
    let on_disk = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let combined = json!({
        "model": model.info(),
        "scorer": scorer.as_ref().map(|s| s.info()),
        "protocol": a.protocol,
        "seed": a.seed,
        "limit": a.limit,
        "sample": a.sample,
        "samples": a.samples,
        "verticals": merge_entries(on_disk, entries),
    });
    trust_core::fsutil::write_atomic(&path, serde_json::to_string_pretty(&combined)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    if let Some((dir, cached)) = &cache_handle {
        eprintln!(
            "cache {}: {} of {} generation requests answered from it",
            dir.display(),
            cached.hits(),
            cached.lookups()
        );
    }
    if !problems.is_empty() {
        bail!(
            "{} problem(s), see {}:\n  {}",
            problems.len(),
            path.display(),
            problems.join("\n  ")
        );
    }
    Ok(())
}
