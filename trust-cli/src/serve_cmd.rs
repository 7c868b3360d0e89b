//! `trust serve`: an OpenAI-compatible HTTP server over a local model (candle backend).
//!
//! Prints `listening on http://ADDR` on stdout once the socket is bound (with `--port 0` the
//! line names the port the system chose), then serves until killed. See
//! `docs/http-backend.md` and `trust_backends::http::server` for the API.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use trust_backends::candle::{CandleModel, LoadOptions, parse_device, parse_dtype};
use trust_backends::http::server::{self, Fault, ServeOptions};

/// Arguments of `trust serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Model: a directory (Hugging Face layout), a .gguf file, or a directory holding one.
    #[arg(long)]
    model: PathBuf,
    /// GGUF models: multiply with the stored quantized weights (see `trust generate --help`).
    #[arg(long)]
    quantized: bool,
    /// How /v1/chat/completions turns messages into a prompt: `auto` (default: the model's chat
    /// template, else the documented `{role}: {content}` lines), `none` (always those lines),
    /// `wrap` (the model's template; an error if it has none) or a template FILE.
    #[arg(long, default_value = "auto")]
    chat_template: crate::chat_opts::ChatTemplateChoice,
    /// Port (0 = any free port; the chosen one is printed).
    #[arg(long)]
    port: u16,
    /// Address to bind. Anything but loopback exposes the model to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Rows per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Name served by /v1/models (default: the directory's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY`, the key read from this environment variable.
    #[arg(long)]
    api_key_env: Option<String>,
    /// Largest `max_tokens` one request may ask for; above it the request gets HTTP 400
    /// (0 = no cap but the model's context).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    max_tokens: usize,
    /// Seconds a connection may take to send a request's headers (idle keep-alive waits
    /// included) before it is closed.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    header_timeout: u64,
    /// Device (`cpu`, `cuda`, `cuda:1`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype (`f32`, `f16`, `bf16`).
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Testing: faults for the first model requests, e.g. `500,429,drop,stall:3000`.
    #[arg(long, hide = true, env = "TRUST_SERVE_FAULTS")]
    fault_plan: Option<String>,
    /// Testing: model requests whose prompt contains this text always fail with HTTP 500.
    #[arg(long, hide = true)]
    fault_prompt: Option<String>,
    /// Testing: reject `echo: true` like servers without prompt log-probs.
    #[arg(long, hide = true)]
    reject_echo: bool,
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let faults = match a.fault_plan.as_deref() {
        Some(p) => Fault::parse_plan(p).map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    let api_key = match &a.api_key_env {
        Some(var) => match std::env::var(var) {
            Ok(k) if !k.is_empty() => Some(k),
            _ => bail!("--api-key-env {var}: the variable is unset or empty"),
        },
        None => None,
    };
    let opts = LoadOptions {
        dtype: parse_dtype(&a.dtype)?,
        device: parse_device(&a.device)?,
        batch_size: a.batch_size.max(1),
        quantized: a.quantized,
        ..LoadOptions::default()
    };
    let model = CandleModel::load(&a.model, &opts)
        .with_context(|| format!("loading model {}", a.model.display()))?;
    let chat_template = a.chat_template.resolve(&model)?;
    let model_name = a.served_model_name.clone().unwrap_or_else(|| {
        a.model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("binding {}:{}", a.host, a.port))?;
        let addr = listener.local_addr()?;
        let router = server::router(
            model,
            ServeOptions {
                model_name: model_name.clone(),
                api_key,
                faults,
                fail_prompt: a.fault_prompt.clone(),
                reject_echo: a.reject_echo,
                chat_template,
                max_tokens: (a.max_tokens > 0).then_some(a.max_tokens),
            },
        );
        println!("listening on http://{addr}");
        std::io::stdout().flush().ok();
        eprintln!("serving {model_name} at http://{addr}/v1 (OpenAI-compatible)");
        server::serve_with(
            listener,
            router,
            std::time::Duration::from_secs(a.header_timeout.max(1)),
        )
        .await
        .context("serving")
    })
}
