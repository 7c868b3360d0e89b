//! An OpenAI-compatible server over a [`CandleModel`] (behind `trust serve`).
//!
//! Endpoints: `GET /health` (`{"status", "model_requests", "max_in_flight", "cancelled"}`),
//! `GET /v1/models` (the served name only, never the model's path), `POST /v1/completions`,
//! `POST /v1/chat/completions`. Errors are OpenAI-style JSON (`{"error": {"message", "type",
//! "param", "code"}}`) with 400 (bad request, also `max_tokens` above
//! [`ServeOptions::max_tokens`]), 401 (missing or wrong key when one is required; the
//! `Bearer` scheme is case-insensitive), 404 (unknown route), 413 (body over [`BODY_LIMIT`]) or
//! 500 (model failure). A client that disconnects cancels its generation before the next
//! forward pass (`cancelled` in `/health` counts them).
//!
//! Completions follow the candle backend exactly: the prompt is tokenised without special
//! tokens; `temperature: 0` is greedy; otherwise sampling with `temperature` (default 1),
//! `top_p` (default 1) and the `top_k` extension (0 or -1 = off), the `n` samples of a request
//! seeded with `derive_seed(seed, "completion/{i}")` (`seed` defaults to 0, so an unseeded
//! request is still reproducible). Stops on the model's EOS ids plus `stop_token_ids`; with
//! `ignore_eos: true` only on `stop_token_ids`. `stop` strings cut the text as in the backend.
//! Each choice carries `token_ids` (the generated ids) and vLLM's `stop_reason`.
//! `echo` + `logprobs` are computed from one forward pass over prompt + completion:
//! `tokens` are single-token decodes, `text_offset` counts characters, the first token's
//! log-prob and top alternatives are `null`; `max_tokens: 0` only scores the prompt.
//!
//! Chat template (the simple documented one, for models without their own): every message
//! becomes `"{role}: {content}\n"`, followed by `"assistant:"`.
//!
//! Model work runs in `spawn_blocking`, one request at a time (each request's prompts form
//! batches of the model's batch size).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use candle_core::{DType, Tensor};
use trust_core::{DecodingConfig, FinishReason, GenerateRequest, ModelError, Sampling, StopPolicy};

use super::wire::{
    ChatChoice, ChatMessage, ChatRequest, ChatResponse, CompletionChoice, CompletionRequest,
    CompletionResponse, ErrorBody, ErrorDetail, Logprobs, SamplingParams,
};
use crate::candle::CandleModel;

/// An injected failure (for testing clients against a real model): what the server does with
/// one `/v1/completions` or `/v1/chat/completions` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Serve it normally.
    Ok,
    /// Answer with this HTTP status and an OpenAI-style error.
    Status(u16),
    /// Wait this long, then serve it normally.
    Stall(Duration),
    /// Send the status line and headers, then close the connection mid-body.
    Drop,
}

impl Fault {
    /// Parses a comma-separated plan: `500`, `429`, `stall:MS`, `drop`, `ok`, e.g.
    /// `500,429,drop,stall:3000`. Entry `i` applies to the `i`-th model request received.
    pub fn parse_plan(spec: &str) -> Result<Vec<Fault>, String> {
        spec.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| match s {
                "ok" => Ok(Fault::Ok),
                "drop" => Ok(Fault::Drop),
                _ => {
                    if let Some(ms) = s.strip_prefix("stall:") {
                        ms.parse::<u64>()
                            .map(|ms| Fault::Stall(Duration::from_millis(ms)))
                            .map_err(|_| format!("fault `{s}`: stall:MILLISECONDS"))
                    } else {
                        match s.parse::<u16>() {
                            Ok(c) if (400..600).contains(&c) => Ok(Fault::Status(c)),
                            _ => Err(format!(
                                "unknown fault `{s}` (an HTTP status 400-599, stall:MS, drop, ok)"
                            )),
                        }
                    }
                }
            })
            .collect()
    }
}

/// Settings of [`router`].
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Name reported by `/v1/models` and in responses (requests may name any model).
    pub model_name: String,
    /// Bearer token clients must send; `None` = no authentication.
    pub api_key: Option<String>,
    /// Injected faults, one per model request in arrival order (testing).
    pub faults: Vec<Fault>,
    /// Model requests whose prompt (or a message) contains this text always fail with 500
    /// (testing).
    pub fail_prompt: Option<String>,
    /// Reject `echo: true` with a 400, like servers without prompt log-probs (testing).
    pub reject_echo: bool,
    /// The chat template `/v1/chat/completions` renders messages with (`trust serve
    /// --chat-template`); `None` = the documented fallback [`chat_prompt`].
    pub chat_template: Option<crate::candle::ChatTemplate>,
    /// Largest `max_tokens` a request may ask for (400 above it); `None` = only the model's
    /// context bounds it.
    pub max_tokens: Option<usize>,
}

struct AppState {
    model: CandleModel,
    opts: ServeOptions,
    compute: Arc<tokio::sync::Semaphore>,
    requests: AtomicUsize,
    cancelled: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// Counts a model request as in flight while alive.
struct InFlight<'a>(&'a AppState);

impl<'a> InFlight<'a> {
    fn new(s: &'a AppState) -> Self {
        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(s)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Sets its flag when dropped: the handler future is dropped when the client disconnects, and
/// the model job, which checks the flag before every forward pass, then stops.
struct CancelOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The request body, or the OpenAI-style error for an unreadable or too large one (413).
fn body_or_error(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Bytes, Box<Response>> {
    body.map_err(|r| {
        let status = r.status();
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body is larger than the server's limit of {BODY_LIMIT} bytes")
        } else {
            r.body_text()
        };
        Box::new(error(status, message, "invalid_request_error"))
    })
}

/// Largest request body accepted (bytes).
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// The server's routes over `model`. Serve with `axum::serve(listener, router(..))`.
pub fn router(model: CandleModel, opts: ServeOptions) -> Router {
    let state = Arc::new(AppState {
        model,
        opts,
        compute: Arc::new(tokio::sync::Semaphore::new(1)),
        requests: AtomicUsize::new(0),
        cancelled: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
    });
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found", "not_found_error") })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// How long a connection may take to send a request's headers, idle keep-alive waits
/// included, before it is closed ([`serve_with`]).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until the process ends, with [`DEFAULT_HEADER_TIMEOUT`].
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    serve_with(listener, router, DEFAULT_HEADER_TIMEOUT).await
}

/// Serves `router` on `listener` (HTTP/1.1) until the process ends. A connection that has not
/// sent a complete request head within `header_timeout` — a new connection that sends nothing,
/// a slow header sender, or a keep-alive connection idle between requests — is closed, so idle
/// clients cannot hold connections open. Accept errors (e.g. too many open files) are retried
/// after a short pause instead of ending the server.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    header_timeout: Duration,
) -> std::io::Result<()> {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("trust serve: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Some(header_timeout))
                .keep_alive(true);
            // A connection's errors (timeouts, resets) end that connection only.
            let _ = builder.serve_connection(io, service).await;
        });
    }
}

fn error(status: StatusCode, message: impl Into<String>, kind: &str) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            message: message.into(),
            kind: Some(kind.into()),
            param: None,
            code: Some(serde_json::Value::from(status.as_u16())),
        },
    };
    (status, axum::Json(body)).into_response()
}

/// The first line of an error (candle errors can carry a backtrace).
fn first_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or("").to_string()
}

fn model_error(e: ModelError) -> Response {
    match e {
        ModelError::InvalidRequest(m) => error(StatusCode::BAD_REQUEST, m, "invalid_request_error"),
        ModelError::Unsupported { .. } => error(
            StatusCode::BAD_REQUEST,
            e.to_string(),
            "invalid_request_error",
        ),
        e => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            first_line(&e),
            "server_error",
        ),
    }
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ok",
        "model_requests": s.requests.load(Ordering::SeqCst),
        "max_in_flight": s.max_in_flight.load(Ordering::SeqCst),
        "cancelled": s.cancelled.load(Ordering::SeqCst),
    }))
    .into_response()
}

async fn models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = check_key(&s, &headers) {
        return r;
    }
    axum::Json(serde_json::json!({
        "object": "list",
        "data": [{"id": s.opts.model_name, "object": "model", "owned_by": "trust",
                  "root": s.opts.model_name}],
    }))
    .into_response()
}

fn check_key(s: &AppState, headers: &HeaderMap) -> Option<Response> {
    let want = s.opts.api_key.as_ref()?;
    // RFC 7235: the scheme is case-insensitive (`bearer` works as `Bearer`).
    let got = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim_start_matches(' '));
    if got == Some(want.as_str()) {
        None
    } else {
        Some(error(
            StatusCode::UNAUTHORIZED,
            "missing or invalid API key",
            "authentication_error",
        ))
    }
}

/// Counts a model request and applies its fault. `Some` = the response to send instead.
async fn apply_fault(s: &AppState, texts: &[&str]) -> Option<Response> {
    let k = s.requests.fetch_add(1, Ordering::SeqCst);
    let poisoned = s
        .opts
        .fail_prompt
        .as_ref()
        .is_some_and(|bad| texts.iter().any(|t| t.contains(bad.as_str())));
    if poisoned {
        return Some(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected fault: this prompt always fails",
            "server_error",
        ));
    }
    match s.opts.faults.get(k).cloned().unwrap_or(Fault::Ok) {
        Fault::Ok => None,
        Fault::Status(c) => Some(error(
            StatusCode::from_u16(c).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            format!("injected fault: HTTP {c}"),
            if c == 429 {
                "rate_limit_error"
            } else {
                "server_error"
            },
        )),
        Fault::Stall(d) => {
            tokio::time::sleep(d).await;
            None
        }
        Fault::Drop => {
            let stream = futures::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other("injected fault: drop"))
            });
            Some(
                Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from_stream(stream))
                    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
            )
        }
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
            "invalid_request_error",
        ))
    })
}

/// Largest `n` (sequences per prompt) the server accepts.
pub const MAX_N: usize = 128;
/// Most prompts in one `/v1/completions` request.
pub const MAX_PROMPTS: usize = 1024;

/// The decoding config of a request (`n` = samples per prompt).
fn decoding(s: &AppState, p: &SamplingParams) -> Result<(DecodingConfig, u64), ModelError> {
    let temperature = p.temperature.unwrap_or(1.0);
    if !(temperature >= 0.0 && temperature.is_finite()) {
        return Err(ModelError::InvalidRequest(format!(
            "temperature must be >= 0, got {temperature}"
        )));
    }
    let sampling = if temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Sample {
            temperature,
            top_p: p.top_p.unwrap_or(1.0),
            top_k: p.top_k.filter(|k| *k > 0).unwrap_or(0) as usize,
        }
    };
    let extra = p.stop_token_ids.clone().unwrap_or_default();
    let stop = if p.ignore_eos.unwrap_or(false) {
        if extra.is_empty() {
            StopPolicy::Never
        } else {
            StopPolicy::Tokens(extra)
        }
    } else {
        let mut ids = s.model.model().config().eos_token_ids.clone();
        if extra.is_empty() {
            StopPolicy::ModelEos
        } else {
            ids.extend(extra);
            StopPolicy::Tokens(ids)
        }
    };
    let n = p.n.unwrap_or(1);
    if n > MAX_N {
        return Err(ModelError::InvalidRequest(format!(
            "n must be at most {MAX_N}, got {n}"
        )));
    }
    let max_new_tokens = p.max_tokens.unwrap_or(16);
    if let Some(cap) = s.opts.max_tokens {
        if max_new_tokens > cap {
            return Err(ModelError::InvalidRequest(format!(
                "max_tokens must be at most {cap} on this server, got {max_new_tokens}"
            )));
        }
    }
    let config = DecodingConfig {
        max_new_tokens,
        sampling,
        n,
        num_beams: 1,
        stop,
        stop_strings: p.stop.clone().map(|s| s.into_vec()).unwrap_or_default(),
    };
    config.validate()?;
    Ok((config, p.seed.unwrap_or(0)))
}

/// One generated sequence as the server reports it.
struct Generated {
    text: String,
    token_ids: Vec<u32>,
    finish: FinishReason,
    stop_reason: Option<serde_json::Value>,
}

/// Generates `n` sequences for every prompt (`max_tokens: 0`: empty ones).
fn generate_all(
    model: &CandleModel,
    prompts: &[String],
    config: &DecodingConfig,
    seed: u64,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Vec<Vec<Generated>>, ModelError> {
    if config.max_new_tokens == 0 {
        return Ok(prompts
            .iter()
            .map(|_| {
                (0..config.n)
                    .map(|_| Generated {
                        text: String::new(),
                        token_ids: Vec::new(),
                        finish: FinishReason::Length,
                        stop_reason: None,
                    })
                    .collect()
            })
            .collect());
    }
    let requests: Vec<GenerateRequest> = prompts
        .iter()
        .map(|p| GenerateRequest {
            prompt: p.clone(),
            config: config.clone(),
            seed,
        })
        .collect();
    let mut out = Vec::with_capacity(prompts.len());
    for r in model.generate_sync_cancellable(&requests, cancel) {
        let resp = r?;
        out.push(
            resp.completions
                .into_iter()
                .map(|c| {
                    let stop_reason = match c.finish_reason {
                        FinishReason::StopString => {
                            let full = model
                                .tokenizer()
                                .decode(&c.token_ids, true)
                                .unwrap_or_default();
                            let rest = full.get(c.text.len()..).unwrap_or("");
                            config
                                .stop_strings
                                .iter()
                                .find(|s| rest.starts_with(s.as_str()))
                                .or(config.stop_strings.first())
                                .map(|s| serde_json::Value::String(s.clone()))
                        }
                        _ => None,
                    };
                    Generated {
                        text: c.text,
                        token_ids: c.token_ids,
                        finish: c.finish_reason,
                        stop_reason,
                    }
                })
                .collect(),
        );
    }
    Ok(out)
}

/// A position's token log-prob and its best alternatives `(id, log-prob)`.
type PositionLogprobs = (f64, Vec<(u32, f64)>);

/// Per-position log-probs of `ids` (position 0 has none): the token's log-prob and the `k`
/// best alternatives. Mirrors the candle backend's scoring pass (rows padded to 32 tokens).
fn sequence_logprobs(
    model: &CandleModel,
    ids: &[u32],
    k: usize,
) -> candle_core::Result<Vec<PositionLogprobs>> {
    let lm = model.model();
    let len = ids.len();
    if len < 2 {
        return Ok(Vec::new());
    }
    let l = len.div_ceil(32) * 32;
    let mut padded = ids.to_vec();
    padded.resize(l, 0);
    let mut mask = vec![1u32; len];
    mask.resize(l, 0);
    let mut pos: Vec<u32> = (0..len as u32).collect();
    pos.resize(l, 0);
    let dev = lm.device();
    let input = Tensor::from_vec(padded, (1, l), dev)?;
    let positions = Tensor::from_vec(pos, (1, l), dev)?;
    let hidden = lm.forward_hidden_with(&input, &[mask], &positions, None)?;
    let h = hidden.get(0)?.narrow(0, 0, len - 1)?;
    let logits = lm.lm_head(&h)?.to_dtype(DType::F32)?;
    let lsm = crate::candle::generate::log_softmax_f32(&logits)?.to_vec2::<f32>()?;
    let mut out = Vec::with_capacity(len - 1);
    for (t, row) in lsm.iter().enumerate() {
        let target = ids[t + 1];
        let mut order: Vec<u32> = (0..row.len() as u32).collect();
        let kk = k.max(1).min(row.len());
        order.select_nth_unstable_by(kk - 1, |a, b| {
            row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b))
        });
        order.truncate(kk);
        order.sort_by(|a, b| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b)));
        out.push((
            row[target as usize] as f64,
            order
                .into_iter()
                .map(|i| (i, row[i as usize] as f64))
                .collect(),
        ));
    }
    Ok(out)
}

/// The `logprobs` object for prompt + completion ids, from token `from` on.
fn logprobs_object(
    model: &CandleModel,
    prompt_ids: &[u32],
    gen_ids: &[u32],
    k: usize,
    from: usize,
) -> Result<Logprobs, ModelError> {
    let mut ids = prompt_ids.to_vec();
    ids.extend_from_slice(gen_ids);
    let max_len = model.model().max_positions();
    if ids.len() > max_len {
        return Err(ModelError::InvalidRequest(format!(
            "prompt + completion is {} tokens, longer than max_position_embeddings = {max_len}",
            ids.len()
        )));
    }
    let lps = sequence_logprobs(model, &ids, k).map_err(|e| ModelError::Backend(first_line(&e)))?;
    let tok = model.tokenizer();
    let decode = |s: &[u32]| {
        tok.decode(s, false)
            .map_err(|e| ModelError::Backend(format!("decode: {e}")))
    };
    let mut out = Logprobs::default();
    for j in from..ids.len() {
        out.tokens.push(decode(&ids[j..j + 1])?);
        out.text_offset.push(decode(&ids[..j])?.chars().count());
        if j == 0 {
            out.token_logprobs.push(None);
            out.top_logprobs.push(None);
        } else {
            let (lp, top) = &lps[j - 1];
            out.token_logprobs.push(Some(*lp));
            let mut m = HashMap::new();
            if k > 0 {
                for (id, l) in top {
                    m.insert(decode(&[*id])?, *l);
                }
            }
            out.top_logprobs.push(Some(m));
        }
    }
    Ok(out)
}

fn finish_str(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

async fn completions(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    if let Some(r) = check_key(&s, &headers) {
        return r;
    }
    let body = match body_or_error(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let req: CompletionRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let prompts = req.prompt.clone().into_vec();
    let texts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let _in_flight = InFlight::new(&s);
    if let Some(r) = apply_fault(&s, &texts).await {
        return r;
    }
    if s.opts.reject_echo && req.echo == Some(true) {
        return error(
            StatusCode::BAD_REQUEST,
            "echo is not supported by this server",
            "invalid_request_error",
        );
    }
    let (config, seed) = match decoding(&s, &req.params) {
        Ok(c) => c,
        Err(e) => return model_error(e),
    };
    if prompts.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "prompt is empty",
            "invalid_request_error",
        );
    }
    let echo = req.echo.unwrap_or(false);
    let logprobs = req.logprobs;
    // The permit moves into the model job, so a job whose client went away still holds the
    // model until it has stopped.
    let Ok(permit) = s.compute.clone().acquire_owned().await else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "shutting down",
            "server_error",
        );
    };
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let state = s.clone();
    let job = tokio::task::spawn_blocking(move || -> Result<Vec<CompletionChoice>, ModelError> {
        let _permit = permit;
        let model = &state.model;
        let generated = generate_all(model, &prompts, &config, seed, &cancel);
        if cancel.load(Ordering::SeqCst) {
            state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
        let generated = generated?;
        let mut choices = Vec::new();
        for (p, (prompt, gens)) in prompts.iter().zip(generated).enumerate() {
            let prompt_ids = model.encode(prompt)?;
            if prompt_ids.is_empty() {
                return Err(ModelError::InvalidRequest(
                    "the prompt tokenises to no tokens".into(),
                ));
            }
            for (c, g) in gens.into_iter().enumerate() {
                let lp = match logprobs {
                    Some(k) => Some(logprobs_object(
                        model,
                        &prompt_ids,
                        &g.token_ids,
                        k,
                        if echo { 0 } else { prompt_ids.len() },
                    )?),
                    None => None,
                };
                choices.push(CompletionChoice {
                    index: p * config.n + c,
                    text: if echo {
                        format!("{prompt}{}", g.text)
                    } else {
                        g.text
                    },
                    logprobs: lp,
                    finish_reason: Some(finish_str(g.finish).into()),
                    stop_reason: g.stop_reason,
                    token_ids: Some(g.token_ids),
                });
            }
        }
        Ok(choices)
    });
    match job.await {
        Ok(Ok(choices)) => axum::Json(CompletionResponse {
            id: format!("cmpl-{}", s.requests.load(Ordering::SeqCst)),
            object: "text_completion".into(),
            model: s.opts.model_name.clone(),
            choices,
        })
        .into_response(),
        Ok(Err(e)) => model_error(e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("model task failed: {e}"),
            "server_error",
        ),
    }
}

/// The documented chat template: `"{role}: {content}\n"` per message, then `"assistant:"`.
pub fn chat_prompt(messages: &[ChatMessage]) -> String {
    let mut p = String::new();
    for m in messages {
        p.push_str(&format!("{}: {}\n", m.role, m.content));
    }
    p.push_str("assistant:");
    p
}

async fn chat(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    if let Some(r) = check_key(&s, &headers) {
        return r;
    }
    let body = match body_or_error(body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let req: ChatRequest = match parse_body(&body) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    let texts: Vec<&str> = req.messages.iter().map(|m| m.content.as_str()).collect();
    let _in_flight = InFlight::new(&s);
    if let Some(r) = apply_fault(&s, &texts).await {
        return r;
    }
    if req.messages.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "messages is empty",
            "invalid_request_error",
        );
    }
    let (config, seed) = match decoding(&s, &req.params) {
        Ok(c) => c,
        Err(e) => return model_error(e),
    };
    let prompt = match &s.opts.chat_template {
        None => chat_prompt(&req.messages),
        Some(t) => {
            let messages: Vec<crate::candle::ChatMessage> = req
                .messages
                .iter()
                .map(|m| crate::candle::ChatMessage::new(m.role.clone(), m.content.clone()))
                .collect();
            match t.render(&messages, true) {
                Ok(p) => p,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("messages cannot be rendered: {e}"),
                        "invalid_request_error",
                    );
                }
            }
        }
    };
    // The permit moves into the model job, so a job whose client went away still holds the
    // model until it has stopped.
    let Ok(permit) = s.compute.clone().acquire_owned().await else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "shutting down",
            "server_error",
        );
    };
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let state = s.clone();
    let job = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let out = generate_all(&state.model, &[prompt], &config, seed, &cancel);
        if cancel.load(Ordering::SeqCst) {
            state.cancelled.fetch_add(1, Ordering::SeqCst);
        }
        out
    });
    match job.await {
        Ok(Ok(mut gens)) => {
            let choices = gens
                .pop()
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, g)| ChatChoice {
                    index: i,
                    message: ChatMessage {
                        role: "assistant".into(),
                        content: g.text,
                    },
                    finish_reason: Some(finish_str(g.finish).into()),
                    stop_reason: g.stop_reason,
                    token_ids: Some(g.token_ids),
                })
                .collect();
            axum::Json(ChatResponse {
                id: format!("chatcmpl-{}", s.requests.load(Ordering::SeqCst)),
                object: "chat.completion".into(),
                model: s.opts.model_name.clone(),
                choices,
            })
            .into_response()
        }
        Ok(Err(e)) => model_error(e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("model task failed: {e}"),
            "server_error",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_plans_parse_and_reject_nonsense() {
        assert_eq!(
            Fault::parse_plan("500, 429,drop,stall:20,ok").unwrap(),
            vec![
                Fault::Status(500),
                Fault::Status(429),
                Fault::Drop,
                Fault::Stall(Duration::from_millis(20)),
                Fault::Ok
            ]
        );
        for bad in ["200", "stall:x", "boom"] {
            assert!(Fault::parse_plan(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chat_template_is_the_documented_one() {
        let m = |r: &str, c: &str| ChatMessage {
            role: r.into(),
            content: c.into(),
        };
        assert_eq!(
            chat_prompt(&[m("system", "S"), m("user", "U")]),
            "system: S\nuser: U\nassistant:"
        );
    }
}
