//! [`HttpModel`]: [`LanguageModel`] over an OpenAI-compatible HTTP server.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use trust_core::rng::{SplitMix64, derive_seed};
use trust_core::{
    Capabilities, Capability, Completion, FinishReason, GenerateRequest, GenerateResponse,
    LanguageModel, LogLikelihood, LogLikelihoodRequest, ModelError, ModelInfo, Sampling,
    StopPolicy,
};

use super::wire::{
    ChatMessage, ChatRequest, ChatResponse, CompletionChoice, CompletionRequest,
    CompletionResponse, ErrorBody, Prompt, SamplingParams, Stop,
};
use crate::BackendError;

/// Settings of an [`HttpModel`]. [`HttpOptions::new`] gives the defaults; fields are public.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpOptions {
    /// Base URL up to and including the API version, e.g. `http://127.0.0.1:8000/v1` or
    /// `https://api.example.com/v1` (TLS by rustls, no OpenSSL; server certificates are checked
    /// against the Mozilla roots compiled in, plus [`HttpOptions::ca_cert`]).
    pub base_url: String,
    /// A PEM file of extra root certificates to trust for `https` (a private CA, or a server's
    /// self-signed certificate). `None`: the `TRUST_CA_CERT` environment variable, if set.
    pub ca_cert: Option<std::path::PathBuf>,
    /// Served model name, sent as `model`.
    pub model: String,
    /// Use `/v1/chat/completions`: the prompt becomes one user message (after the optional
    /// system message) and the server applies its chat template. No log-likelihood then.
    pub chat: bool,
    /// System message for chat mode.
    pub system_prompt: Option<String>,
    /// Environment variable holding the API key (sent as `Authorization: Bearer`). Unset or
    /// empty variable = no key. The key is never logged, printed or put in an error.
    pub api_key_env: String,
    /// HTTP requests in flight at most (one per trait request; `n` samples share one).
    pub max_concurrency: usize,
    /// Limit on one attempt (connect + response), after which it is retried.
    pub timeout: Duration,
    /// Limit on connecting.
    pub connect_timeout: Duration,
    /// Retries after the first attempt on 408/429/5xx, connection errors, dropped connections
    /// and timeouts.
    pub max_retries: usize,
    /// Backoff before retry `k` (0-based): `min(backoff_max, backoff_base * 2^k)` times a jitter
    /// factor in [0.5, 1.5) drawn from a generator seeded with `jitter_seed`. A `Retry-After`
    /// header (seconds) raises the wait, capped at `backoff_max`.
    pub backoff_base: Duration,
    /// Cap on one backoff wait.
    pub backoff_max: Duration,
    /// Seed of the backoff jitter.
    pub jitter_seed: u64,
    /// Claim [`Capability::LogLikelihood`] (completions mode only): scored through `echo` +
    /// `logprobs`. Set it from [`HttpModel::probe_loglikelihood`] when unsure; a server that
    /// rejects echo makes requests fail with [`ModelError::Unsupported`] and turns it off.
    pub loglikelihood: bool,
    /// `max_tokens` of log-likelihood requests: 0 (vLLM, `trust serve`) or 1 for servers that
    /// reject 0 (the extra generated token is ignored).
    pub loglikelihood_max_tokens: usize,
    /// Send [`StopPolicy::Tokens`] as the vLLM extensions `stop_token_ids` + `ignore_eos`.
    /// Off: such requests fail with [`ModelError::InvalidRequest`].
    pub stop_token_ids: bool,
    /// Send [`StopPolicy::Never`] as the vLLM extension `ignore_eos: true`. Off: such requests
    /// fail with [`ModelError::InvalidRequest`].
    pub ignore_eos: bool,
    /// Send a non-zero `top_k` as the `top_k` extension (vLLM, llama.cpp). Off: `top_k > 0`
    /// fails with [`ModelError::InvalidRequest`].
    pub top_k: bool,
    /// What a [`StopPolicy::Tokens`] request does when [`HttpOptions::stop_token_ids`] is off
    /// (servers without the extension, e.g. hosted OpenAI-compatible APIs).
    pub token_stops: TokenStops,
}

/// How a request that stops on given token ids (the `paper` protocols' `eos_token_id=50256`) is
/// sent to a server without the `stop_token_ids` extension: an explicit user choice, recorded
/// in the model's `details` (so runs under different choices never resume into each other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenStops {
    /// Fail the request, naming the choices (default: never deviate silently).
    #[default]
    Refuse,
    /// Drop the token stop and let the server stop on its own EOS. A deviation from the
    /// protocol: for Pythia-style models, where 50256 never fires, the paper generates to
    /// `max_new_tokens` while this stops at the model's EOS.
    ModelEos,
}

impl HttpOptions {
    /// Defaults for a server at `base_url` serving `model`: completions mode, key from
    /// `OPENAI_API_KEY`, 8 requests in flight, 120 s per attempt, 4 retries from 500 ms,
    /// log-likelihood claimed, `max_tokens` 0 for scoring, extensions off.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        HttpOptions {
            base_url: base_url.into(),
            ca_cert: None,
            model: model.into(),
            chat: false,
            system_prompt: None,
            api_key_env: "OPENAI_API_KEY".into(),
            max_concurrency: 8,
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            max_retries: 4,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            jitter_seed: 0,
            loglikelihood: true,
            loglikelihood_max_tokens: 0,
            stop_token_ids: false,
            ignore_eos: false,
            top_k: false,
            token_stops: TokenStops::Refuse,
        }
    }

    /// Parses `URL#MODEL[;key=value...]`, the `--model` syntax of `trust eval`:
    /// `http://127.0.0.1:8000/v1#tiny;chat;concurrency=4;timeout=60;retries=2;backoff_ms=100;
    /// loglik=off;loglik_max_tokens=1;api_key_env=MY_KEY;vllm` (`vllm` turns on the
    /// `stop_token_ids`, `ignore_eos` and `top_k` extensions; each can also be named alone), or
    /// `https://…#model;ca_cert=/path/ca.pem`.
    pub fn from_spec(spec: &str) -> Result<Self, BackendError> {
        let bad = |m: String| config_error(spec, m);
        let (url, rest) = spec.split_once('#').ok_or_else(|| {
            bad("expected URL#MODEL (e.g. http://127.0.0.1:8000/v1#my-model)".into())
        })?;
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(bad("the URL must start with http:// or https://".into()));
        }
        let mut parts = rest.split(';');
        let model = parts.next().unwrap_or("").trim();
        if model.is_empty() {
            return Err(bad("no model name after `#`".into()));
        }
        let mut o = HttpOptions::new(url.trim_end_matches('/'), model);
        for p in parts.map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let num = |v: &str| -> Result<u64, BackendError> {
                v.parse::<u64>()
                    .map_err(|_| bad(format!("`{k}` needs a non-negative integer, got `{v}`")))
            };
            let flag = |v: &str| -> Result<bool, BackendError> {
                match v {
                    "" | "on" | "true" | "1" => Ok(true),
                    "off" | "false" | "0" => Ok(false),
                    _ => Err(bad(format!("`{k}` takes on/off, got `{v}`"))),
                }
            };
            match k {
                "chat" => o.chat = flag(v)?,
                "system" => o.system_prompt = Some(v.to_string()),
                "ca_cert" if !v.is_empty() => o.ca_cert = Some(v.into()),
                "api_key_env" => o.api_key_env = v.to_string(),
                "concurrency" => o.max_concurrency = num(v)?.max(1) as usize,
                "timeout" => o.timeout = Duration::from_secs_f64(num(v)? as f64),
                "timeout_ms" => o.timeout = Duration::from_millis(num(v)?),
                "retries" => o.max_retries = num(v)? as usize,
                "backoff_ms" => o.backoff_base = Duration::from_millis(num(v)?),
                "backoff_max_ms" => o.backoff_max = Duration::from_millis(num(v)?),
                "jitter_seed" => o.jitter_seed = num(v)?,
                "loglik" => o.loglikelihood = flag(v)?,
                "loglik_max_tokens" => o.loglikelihood_max_tokens = num(v)? as usize,
                "stop_token_ids" => o.stop_token_ids = flag(v)?,
                "ignore_eos" => o.ignore_eos = flag(v)?,
                "top_k" => o.top_k = flag(v)?,
                "stop_ids" => match v {
                    "send" => {
                        o.stop_token_ids = true;
                        o.ignore_eos = true;
                    }
                    "model_eos" => o.token_stops = TokenStops::ModelEos,
                    "refuse" => o.token_stops = TokenStops::Refuse,
                    _ => {
                        return Err(bad(format!(
                            "`stop_ids` takes send (the vLLM extension), model_eos (stop on the \
                             server's EOS instead) or refuse, got `{v}`"
                        )));
                    }
                },
                "vllm" => {
                    let on = flag(v)?;
                    o.stop_token_ids = on;
                    o.ignore_eos = on;
                    o.top_k = on;
                }
                _ => return Err(bad(format!("unknown option `{k}`"))),
            }
        }
        Ok(o)
    }
}

/// The certificates of a PEM file (one or more `BEGIN CERTIFICATE` blocks), for
/// [`HttpOptions::ca_cert`].
fn read_ca_certs(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, BackendError> {
    let bad = |m: String| BackendError::Config {
        path: path.to_path_buf(),
        message: m,
    };
    let pem = std::fs::read(path).map_err(|e| bad(format!("reading the CA certificate: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| bad(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(
            "no `-----BEGIN CERTIFICATE-----` block in the file".into()
        ));
    }
    Ok(certs)
}

fn config_error(what: &str, message: String) -> BackendError {
    BackendError::Config {
        path: what.into(),
        message,
    }
}

/// An API key that never shows up in `Debug` output.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A model behind an OpenAI-compatible server (vLLM, TGI, llama.cpp server, mistral.rs,
/// `trust serve`). One HTTP request per trait request, at most
/// [`HttpOptions::max_concurrency`] in flight, each retried with backoff on transient failures;
/// a request that still fails is returned as its own error, never failing its batch.
///
/// - Generation: `/v1/completions` (or `/v1/chat/completions` with [`HttpOptions::chat`]) with
///   `max_tokens`, `temperature` (0 for greedy), `top_p`, `n`, `seed`, `stop`. Greedy requests
///   ask for one sequence and copy it `n` times, as the candle backend does. Sampled requests
///   send `n` and the request seed in one call: which sample gets which random stream is up to
///   the server (`trust serve` uses the candle backend's `derive_seed(seed, "completion/{i}")`,
///   so its samples equal in-process ones; vLLM seeds one generator per request).
/// - `token_ids` of a completion are filled only when the server returns them (`trust serve`
///   does; OpenAI-style servers generally do not: then they are empty).
/// - Log-likelihood: see [`HttpModel::loglikelihood`].
#[derive(Clone)]
pub struct HttpModel {
    inner: Arc<Inner>,
}

struct Inner {
    opts: HttpOptions,
    client: reqwest::Client,
    key: Option<Secret>,
    limit: tokio::sync::Semaphore,
    loglik: AtomicBool,
    retry_counter: AtomicU64,
}

impl fmt::Debug for HttpModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpModel")
            .field("opts", &self.inner.opts)
            .field("api_key", &self.inner.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// (index, text, finish_reason, stop_reason, token_ids) of a response choice.
type RawChoice = (
    usize,
    String,
    Option<String>,
    Option<serde_json::Value>,
    Option<Vec<u32>>,
);

/// Outcome of one failed attempt.
struct AttemptError {
    retryable: bool,
    status: Option<u16>,
    retry_after: Option<Duration>,
    message: String,
}

impl HttpModel {
    /// A client for the server in `opts`. Reads the API key from `opts.api_key_env` and the
    /// extra root certificates ([`HttpOptions::ca_cert`], else `TRUST_CA_CERT`) now; sends
    /// nothing yet.
    pub fn new(opts: HttpOptions) -> Result<Self, BackendError> {
        if !opts.base_url.starts_with("http://") && !opts.base_url.starts_with("https://") {
            return Err(config_error(
                &opts.base_url,
                "the URL must start with http:// or https://".into(),
            ));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(opts.timeout)
            .connect_timeout(opts.connect_timeout);
        let ca = opts.ca_cert.clone().or_else(|| {
            std::env::var_os("TRUST_CA_CERT")
                .filter(|v| !v.is_empty())
                .map(Into::into)
        });
        if let Some(path) = &ca {
            for cert in read_ca_certs(path)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| config_error(&opts.base_url, format!("building the HTTP client: {e}")))?;
        let key = std::env::var(&opts.api_key_env)
            .ok()
            .filter(|k| !k.is_empty())
            .map(Secret);
        let loglik = opts.loglikelihood && !opts.chat;
        Ok(HttpModel {
            inner: Arc::new(Inner {
                limit: tokio::sync::Semaphore::new(opts.max_concurrency.max(1)),
                client,
                key,
                loglik: AtomicBool::new(loglik),
                retry_counter: AtomicU64::new(0),
                opts,
            }),
        })
    }

    /// The options.
    pub fn options(&self) -> &HttpOptions {
        &self.inner.opts
    }

    /// Whether an API key was found.
    pub fn has_api_key(&self) -> bool {
        self.inner.key.is_some()
    }

    /// Asks the server to score a tiny continuation through `echo` + `logprobs` and sets
    /// [`Capability::LogLikelihood`] from the answer. `Err` only when the server could not be
    /// reached or failed for another reason.
    pub async fn probe_loglikelihood(&self) -> Result<bool, ModelError> {
        if self.inner.opts.chat {
            return Ok(false);
        }
        self.inner.loglik.store(true, Ordering::SeqCst);
        let r = LogLikelihoodRequest {
            context: "Hello".into(),
            continuation: " world".into(),
        };
        match self.loglikelihood_one(&r).await {
            Ok(_) => Ok(true),
            Err(ModelError::Unsupported { .. }) => Ok(false),
            Err(ModelError::InvalidRequest(_)) => Ok(true),
            Err(e) => Err(e),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.inner.opts.base_url.trim_end_matches('/'))
    }

    fn unsupported(&self, capability: Capability) -> ModelError {
        ModelError::Unsupported {
            model: self.info().id,
            capability,
        }
    }

    /// POSTs `body` to `path`, retrying transient failures; returns the response body.
    async fn post(&self, path: &str, body: &serde_json::Value) -> Result<Vec<u8>, AttemptError> {
        let o = &self.inner.opts;
        let mut rng = SplitMix64::new(derive_seed(
            o.jitter_seed,
            &format!(
                "backoff/{}",
                self.inner.retry_counter.fetch_add(1, Ordering::Relaxed)
            ),
        ));
        let url = self.url(path);
        let mut attempt = 0usize;
        loop {
            let result = {
                let _permit = self.inner.limit.acquire().await.map_err(|_| AttemptError {
                    retryable: false,
                    status: None,
                    retry_after: None,
                    message: "the HTTP client was shut down".into(),
                })?;
                self.attempt(&url, body).await
            };
            match result {
                Ok(bytes) => return Ok(bytes),
                Err(e) if e.retryable && attempt < o.max_retries => {
                    let exp = o
                        .backoff_base
                        .saturating_mul(1u32 << attempt.min(20))
                        .min(o.backoff_max);
                    let mut wait = exp.mul_f64(0.5 + rng.next_f64());
                    if let Some(ra) = e.retry_after {
                        wait = wait.max(ra.min(o.backoff_max));
                    }
                    tracing::debug!(
                        "{url}: attempt {} failed ({}); retrying in {wait:?}",
                        attempt + 1,
                        e.message
                    );
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(mut e) => {
                    if e.retryable {
                        e.message = format!("{} (after {} attempts)", e.message, attempt + 1);
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn attempt(&self, url: &str, body: &serde_json::Value) -> Result<Vec<u8>, AttemptError> {
        let transport = |e: reqwest::Error| AttemptError {
            retryable: !e.is_builder(),
            status: None,
            retry_after: None,
            message: if e.is_timeout() {
                format!("{url}: no response within {:?}", self.inner.opts.timeout)
            } else {
                // Without the source chain the message is often just "error sending request".
                let mut m = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    m.push_str(&format!(": {s}"));
                    src = s.source();
                }
                m
            },
        };
        let mut req = self.inner.client.post(url).json(body);
        if let Some(k) = &self.inner.key {
            req = req.bearer_auth(&k.0);
        }
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let bytes = resp.bytes().await.map_err(transport)?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let code = status.as_u16();
        let detail = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| {
                let s = String::from_utf8_lossy(&bytes);
                s.chars().take(300).collect()
            });
        Err(AttemptError {
            retryable: code == 408 || code == 429 || status.is_server_error(),
            status: Some(code),
            retry_after,
            message: format!("{url}: HTTP {code}: {detail}"),
        })
    }

    /// Maps a final failure of a request to a [`ModelError`].
    fn model_error(&self, e: AttemptError) -> ModelError {
        match e.status {
            _ if e.retryable => ModelError::Transient(e.message),
            Some(400 | 404 | 413 | 422) => ModelError::InvalidRequest(e.message),
            Some(401 | 403) => ModelError::Backend(format!(
                "{} (check the API key in ${})",
                e.message, self.inner.opts.api_key_env
            )),
            _ => ModelError::Backend(e.message),
        }
    }

    fn sampling_params(&self, r: &GenerateRequest) -> Result<SamplingParams, ModelError> {
        let o = &self.inner.opts;
        let c = &r.config;
        c.validate()?;
        if c.num_beams > 1 {
            return Err(self.unsupported(Capability::BeamSearch));
        }
        let mut p = SamplingParams {
            max_tokens: Some(c.max_new_tokens),
            seed: Some(r.seed),
            ..SamplingParams::default()
        };
        match c.sampling {
            Sampling::Greedy => {
                p.temperature = Some(0.0);
                p.n = Some(1);
            }
            Sampling::Sample {
                temperature,
                top_p,
                top_k,
            } => {
                p.temperature = Some(temperature);
                p.top_p = Some(top_p);
                p.n = Some(c.n);
                if top_k > 0 {
                    if !o.top_k {
                        return Err(ModelError::InvalidRequest(
                            "top_k > 0 needs the `top_k` extension (HttpOptions::top_k / ;top_k)"
                                .into(),
                        ));
                    }
                    p.top_k = Some(top_k as i64);
                }
            }
        }
        match &c.stop {
            StopPolicy::ModelEos => {}
            StopPolicy::Never => {
                if !o.ignore_eos {
                    return Err(ModelError::InvalidRequest(
                        "stop policy `never` needs the `ignore_eos` extension (HttpOptions::ignore_eos / ;ignore_eos)".into(),
                    ));
                }
                p.ignore_eos = Some(true);
            }
            StopPolicy::Tokens(ids) => {
                if o.stop_token_ids && o.ignore_eos {
                    p.stop_token_ids = Some(ids.clone());
                    p.ignore_eos = Some(true);
                } else if o.token_stops == TokenStops::Refuse {
                    return Err(ModelError::InvalidRequest(format!(
                        "the protocol stops on token ids {ids:?}, which needs the `stop_token_ids` \
                         and `ignore_eos` extensions: add `;vllm` (or `;stop_ids=send`) for vLLM \
                         and `trust serve`, or `;stop_ids=model_eos` to stop on the server's EOS \
                         instead (a deviation from the protocol, recorded in the manifest)"
                    )));
                }
                // TokenStops::ModelEos: no stop ids; the server stops on its EOS.
            }
        }
        if !c.stop_strings.is_empty() {
            p.stop = Some(Stop::Many(c.stop_strings.clone()));
        }
        Ok(p)
    }

    async fn generate_one(&self, r: &GenerateRequest) -> Result<GenerateResponse, ModelError> {
        let o = &self.inner.opts;
        let params = self.sampling_params(r)?;
        let want = params.n.unwrap_or(1);
        let (path, body) = if o.chat {
            let mut messages = Vec::new();
            if let Some(s) = &o.system_prompt {
                messages.push(ChatMessage {
                    role: "system".into(),
                    content: s.clone(),
                });
            }
            messages.push(ChatMessage {
                role: "user".into(),
                content: r.prompt.clone(),
            });
            let req = ChatRequest {
                model: o.model.clone(),
                messages,
                params,
            };
            ("chat/completions", serde_json::to_value(req))
        } else {
            let req = CompletionRequest {
                model: o.model.clone(),
                prompt: Prompt::One(r.prompt.clone()),
                params,
                echo: None,
                logprobs: None,
            };
            ("completions", serde_json::to_value(req))
        };
        let body = body.map_err(|e| ModelError::Backend(format!("encoding the request: {e}")))?;
        let bytes = self
            .post(path, &body)
            .await
            .map_err(|e| self.model_error(e))?;
        let bad = |e: serde_json::Error| {
            ModelError::Backend(format!("{}: unreadable response: {e}", self.url(path)))
        };
        // (text, finish_reason, stop_reason, token_ids) per choice, by index.
        let mut choices: Vec<RawChoice> = if o.chat {
            let resp: ChatResponse = serde_json::from_slice(&bytes).map_err(bad)?;
            resp.choices
                .into_iter()
                .map(|c| {
                    (
                        c.index,
                        c.message.content,
                        c.finish_reason,
                        c.stop_reason,
                        c.token_ids,
                    )
                })
                .collect()
        } else {
            let resp: CompletionResponse = serde_json::from_slice(&bytes).map_err(bad)?;
            resp.choices
                .into_iter()
                .map(|c: CompletionChoice| {
                    (c.index, c.text, c.finish_reason, c.stop_reason, c.token_ids)
                })
                .collect()
        };
        choices.sort_by_key(|c| c.0);
        if choices.len() != want {
            return Err(ModelError::Backend(format!(
                "{}: asked for {want} choices, got {}",
                self.url(path),
                choices.len()
            )));
        }
        let mut completions: Vec<Completion> = choices
            .into_iter()
            .map(|(_, mut text, finish, stop_reason, token_ids)| {
                let mut finish_reason = match finish.as_deref() {
                    Some("length") => FinishReason::Length,
                    _ if matches!(stop_reason, Some(serde_json::Value::String(_))) => {
                        FinishReason::StopString
                    }
                    _ => FinishReason::StopToken,
                };
                // Servers cut at stop strings already; cut again in case one does not.
                if let Some(cut) = trust_core::sampling::first_stop(&text, &r.config.stop_strings) {
                    text.truncate(cut);
                    finish_reason = FinishReason::StopString;
                }
                Completion {
                    text,
                    token_ids: token_ids.unwrap_or_default(),
                    finish_reason,
                }
            })
            .collect();
        if matches!(r.config.sampling, Sampling::Greedy) {
            let c = completions.remove(0);
            completions = vec![c; r.config.n];
        }
        Ok(GenerateResponse { completions })
    }

    async fn loglikelihood_one(
        &self,
        r: &LogLikelihoodRequest,
    ) -> Result<LogLikelihood, ModelError> {
        let o = &self.inner.opts;
        if o.chat || !self.inner.loglik.load(Ordering::SeqCst) {
            return Err(self.unsupported(Capability::LogLikelihood));
        }
        if r.continuation.is_empty() {
            return Err(ModelError::InvalidRequest(
                "the continuation tokenises to no tokens".into(),
            ));
        }
        let req = CompletionRequest {
            model: o.model.clone(),
            prompt: Prompt::One(format!("{}{}", r.context, r.continuation)),
            params: SamplingParams {
                max_tokens: Some(o.loglikelihood_max_tokens),
                temperature: Some(0.0),
                n: Some(1),
                ..SamplingParams::default()
            },
            echo: Some(true),
            logprobs: Some(1),
        };
        let body = serde_json::to_value(req)
            .map_err(|e| ModelError::Backend(format!("encoding the request: {e}")))?;
        let bytes = match self.post("completions", &body).await {
            Ok(b) => b,
            Err(e) => {
                let lower = e.message.to_lowercase();
                let rejects_echo = matches!(e.status, Some(400 | 422 | 501))
                    && (lower.contains("echo") || lower.contains("logprob"))
                    || e.status == Some(501);
                if rejects_echo {
                    self.inner.loglik.store(false, Ordering::SeqCst);
                    tracing::warn!(
                        "{}: server rejects echo + logprobs: {}",
                        o.base_url,
                        e.message
                    );
                    return Err(self.unsupported(Capability::LogLikelihood));
                }
                return Err(self.model_error(e));
            }
        };
        let resp: CompletionResponse = serde_json::from_slice(&bytes).map_err(|e| {
            ModelError::Backend(format!(
                "{}: unreadable response: {e}",
                self.url("completions")
            ))
        })?;
        let Some(lp) = resp.choices.into_iter().next().and_then(|c| c.logprobs) else {
            self.inner.loglik.store(false, Ordering::SeqCst);
            return Err(self.unsupported(Capability::LogLikelihood));
        };
        continuation_logprobs(&lp, r)
    }
}

/// Picks the continuation's tokens out of an echoed prompt's log-probs: those starting at or
/// after the context's end (in characters) and before the continuation's end, plus a token that
/// straddles the boundary (the server tokenised `context + continuation` as one text; see the
/// module docs).
pub fn continuation_logprobs(
    lp: &super::wire::Logprobs,
    r: &LogLikelihoodRequest,
) -> Result<LogLikelihood, ModelError> {
    let n = lp.tokens.len();
    if lp.token_logprobs.len() != n || lp.text_offset.len() != n {
        return Err(ModelError::Backend(format!(
            "logprobs: {} tokens, {} token_logprobs, {} text_offset",
            n,
            lp.token_logprobs.len(),
            lp.text_offset.len()
        )));
    }
    let start = r.context.chars().count();
    let end = start + r.continuation.chars().count();
    let mut picked = Vec::new();
    for i in 0..n {
        let off = lp.text_offset[i];
        let next = lp.text_offset.get(i + 1).copied().unwrap_or(usize::MAX);
        if off >= end {
            break;
        }
        if off >= start || next > start {
            picked.push(i);
        }
    }
    if picked.is_empty() {
        return Err(ModelError::InvalidRequest(
            "the continuation tokenises to no tokens".into(),
        ));
    }
    let mut token_logprobs = Vec::with_capacity(picked.len());
    let mut is_greedy = true;
    for &i in &picked {
        let Some(l) = lp.token_logprobs[i] else {
            return Err(ModelError::InvalidRequest(
                "the context tokenises to no tokens (nothing predicts the first continuation token)"
                    .into(),
            ));
        };
        token_logprobs.push(l);
        let best = lp
            .top_logprobs
            .get(i)
            .and_then(|t| t.as_ref())
            .and_then(|t| t.values().copied().reduce(f64::max));
        match best {
            Some(b) if l + 1e-6 * (1.0 + b.abs()) < b => is_greedy = false,
            Some(_) => {}
            None => {
                return Err(ModelError::Backend(
                    "logprobs: no top_logprobs to tell whether the continuation is greedy".into(),
                ));
            }
        }
    }
    let sum = token_logprobs.iter().sum();
    Ok(LogLikelihood {
        token_logprobs,
        sum,
        is_greedy,
    })
}

#[async_trait::async_trait]
impl LanguageModel for HttpModel {
    fn info(&self) -> ModelInfo {
        let o = &self.inner.opts;
        ModelInfo {
            id: format!("{}#{}", o.base_url, o.model),
            backend: "http".into(),
            weights_sha256: None,
            details: {
                let mut d = if o.chat {
                    "api=chat".to_string()
                } else {
                    "api=completions".to_string()
                };
                if o.token_stops == TokenStops::ModelEos && !o.stop_token_ids {
                    d.push_str(";stop_ids=model_eos");
                }
                d
            },
        }
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = vec![Capability::Generate, Capability::Sampling];
        if !self.inner.opts.chat && self.inner.loglik.load(Ordering::SeqCst) {
            caps.push(Capability::LogLikelihood);
        }
        Capabilities::of(&caps)
    }

    async fn generate(
        &self,
        requests: &[GenerateRequest],
    ) -> Vec<Result<GenerateResponse, ModelError>> {
        futures::future::join_all(requests.iter().map(|r| self.generate_one(r))).await
    }

    /// Log-likelihood through `/v1/completions` with `prompt = context + continuation`,
    /// `echo: true`, `logprobs: 1`, `max_tokens` [`HttpOptions::loglikelihood_max_tokens`]. The
    /// continuation's tokens are those at `text_offset >= len(context)` (characters), with a
    /// token straddling the boundary counted as the continuation's; `is_greedy` compares each
    /// token's log-prob with the best in `top_logprobs`. Because the server tokenises the
    /// joined text, the tokens can differ from the in-process backends' (which tokenise context
    /// and continuation separately) where a token spans the boundary, e.g. a context ending in
    /// a space. Chat mode, or a server that rejects echo: [`ModelError::Unsupported`].
    async fn loglikelihood(
        &self,
        requests: &[LogLikelihoodRequest],
    ) -> Vec<Result<LogLikelihood, ModelError>> {
        futures::future::join_all(requests.iter().map(|r| self.loglikelihood_one(r))).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::http::wire::Logprobs;

    #[test]
    fn spec_parses_url_model_and_options() {
        let o = HttpOptions::from_spec(
            "http://127.0.0.1:8000/v1/#pythia;chat;concurrency=3;timeout_ms=250;retries=0;loglik=off;vllm;api_key_env=K",
        )
        .unwrap();
        assert_eq!(o.base_url, "http://127.0.0.1:8000/v1");
        assert_eq!(o.model, "pythia");
        assert!(o.chat && !o.loglikelihood && o.stop_token_ids && o.ignore_eos && o.top_k);
        assert_eq!(o.max_concurrency, 3);
        assert_eq!(o.timeout, Duration::from_millis(250));
        assert_eq!(o.max_retries, 0);
        assert_eq!(o.api_key_env, "K");
        for bad in [
            "http://h/v1",
            "http://h/v1#",
            "ftp://h/v1#m",
            "http://h/v1#m;retries=-1",
            "http://h/v1#m;nope",
            "http://h/v1#m;chat=maybe",
        ] {
            assert!(HttpOptions::from_spec(bad).is_err(), "{bad}");
        }
        let o = HttpOptions::from_spec("http://h/v1#m;stop_ids=model_eos").unwrap();
        assert_eq!(o.token_stops, TokenStops::ModelEos);
        let o = HttpOptions::from_spec("http://h/v1#m;stop_ids=send").unwrap();
        assert!(o.stop_token_ids && o.ignore_eos);
        assert!(HttpOptions::from_spec("http://h/v1#m;stop_ids=maybe").is_err());
        let https = HttpOptions::from_spec("https://h/v1#m;ca_cert=/etc/x.pem").unwrap();
        assert_eq!(
            https.ca_cert.as_deref(),
            Some(std::path::Path::new("/etc/x.pem"))
        );
        let e = HttpModel::new(https).unwrap_err().to_string();
        assert!(
            e.starts_with("/etc/x.pem: reading the CA certificate"),
            "{e}"
        );
        assert!(HttpModel::new(HttpOptions::from_spec("https://h/v1#m").unwrap()).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let mut o = HttpOptions::new("https://h/v1", "m");
        o.ca_cert = Some(not_pem.clone());
        let e = HttpModel::new(o).unwrap_err().to_string();
        assert!(
            e.contains("ca.pem") && e.contains("BEGIN CERTIFICATE"),
            "{e}"
        );
    }

    fn echoed(tokens: &[(&str, Option<f64>, f64)]) -> Logprobs {
        // (token, its log-prob, best log-prob at its position)
        let mut lp = Logprobs::default();
        let mut off = 0;
        for (t, l, best) in tokens {
            lp.tokens.push(t.to_string());
            lp.token_logprobs.push(*l);
            lp.top_logprobs
                .push(l.map(|_| HashMap::from([("best".to_string(), *best)])));
            lp.text_offset.push(off);
            off += t.chars().count();
        }
        lp
    }

    #[test]
    fn continuation_tokens_are_picked_by_text_offset() {
        let lp = echoed(&[
            ("Hello", None, 0.0),
            (",", Some(-1.0), -1.0),
            (" wor", Some(-2.0), -0.5),
            ("ld", Some(-0.25), -0.25),
            ("!", Some(-3.0), -1.0),
        ]);
        let r = |c: &str, x: &str| LogLikelihoodRequest {
            context: c.into(),
            continuation: x.into(),
        };
        let ll = continuation_logprobs(&lp, &r("Hello,", " world")).unwrap();
        assert_eq!(ll.token_logprobs, vec![-2.0, -0.25]);
        assert_eq!(ll.sum, -2.25);
        assert!(!ll.is_greedy);
        let ll = continuation_logprobs(&lp, &r("Hello, wor", "ld")).unwrap();
        assert_eq!(ll.token_logprobs, vec![-0.25]);
        assert!(ll.is_greedy);
        // A boundary inside " wor": the straddling token counts as the continuation's.
        let ll = continuation_logprobs(&lp, &r("Hello, ", "world")).unwrap();
        assert_eq!(ll.token_logprobs, vec![-2.0, -0.25]);
        // Nothing predicts the first token of an empty context.
        assert!(matches!(
            continuation_logprobs(&lp, &r("", "Hello")),
            Err(ModelError::InvalidRequest(_))
        ));
        // Mismatched arrays are a backend error, not a panic.
        let mut broken = lp.clone();
        broken.text_offset.pop();
        assert!(matches!(
            continuation_logprobs(&broken, &r("Hello,", " world")),
            Err(ModelError::Backend(_))
        ));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let mut o = HttpOptions::new("http://127.0.0.1:9/v1", "m");
        o.api_key_env = "PATH".into();
        let m = HttpModel::new(o).unwrap();
        let path = std::env::var("PATH").unwrap();
        assert!(m.has_api_key());
        assert!(!format!("{m:?}").contains(&path));
        assert_eq!(m.info().backend, "http");
        assert_eq!(m.info().id, "http://127.0.0.1:9/v1#m");
    }
}

#[cfg(test)]
mod token_stop_tests {
    use super::*;

    fn paper_request() -> GenerateRequest {
        let mut config = trust_core::DecodingConfig::greedy(5);
        config.stop = StopPolicy::Tokens(vec![50256]);
        GenerateRequest {
            prompt: "x".into(),
            config,
            seed: 0,
        }
    }

    #[test]
    fn token_stops_without_the_extension_are_an_explicit_choice() {
        let m = HttpModel::new(HttpOptions::from_spec("http://127.0.0.1:9/v1#m").unwrap()).unwrap();
        let e = m.sampling_params(&paper_request()).unwrap_err().to_string();
        assert!(
            e.contains("[50256]") && e.contains(";vllm") && e.contains("model_eos"),
            "{e}"
        );
        assert_eq!(m.info().details, "api=completions");

        let m = HttpModel::new(
            HttpOptions::from_spec("http://127.0.0.1:9/v1#m;stop_ids=model_eos").unwrap(),
        )
        .unwrap();
        let p = m.sampling_params(&paper_request()).unwrap();
        assert_eq!((p.stop_token_ids, p.ignore_eos), (None, None));
        assert_eq!(m.info().details, "api=completions;stop_ids=model_eos");

        let m = HttpModel::new(HttpOptions::from_spec("http://127.0.0.1:9/v1#m;vllm").unwrap())
            .unwrap();
        let p = m.sampling_params(&paper_request()).unwrap();
        assert_eq!(
            (p.stop_token_ids, p.ignore_eos),
            (Some(vec![50256]), Some(true))
        );
    }
}
