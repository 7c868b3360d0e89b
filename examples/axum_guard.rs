//! Guard a text-generation service: an axum endpoint `POST /generate` (`{"prompt": "..."}`)
//! generates a reply with a model and returns it with the guard's verdict (allow / flag / block;
//! a blocked reply is withheld).
//!
//! ```text
//! cargo run --release -p trust-examples --example axum_guard -- --self-test
//! cargo run --release -p trust-examples --example axum_guard -- [mock|MODEL_DIR] [--port 8080] [--max-requests 100]
//! curl -s localhost:8080/generate -H 'content-type: application/json' -d '{"prompt": "what is my ssn?"}'
//! ```
//! `mock` (default) is the deterministic test model scripted to leak a registered SSN, insult,
//! refuse or answer; MODEL_DIR is a Hugging Face checkpoint for the candle backend (e.g.
//! `../shared/fixtures/hf/tiny-llama`). The server stops after `--max-requests` (default 100) or
//! Ctrl-C; `--self-test` serves on a loopback port, sends four requests, prints the verdicts and
//! exits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use trust_core::LanguageModel;
use trust_core::model::{DecodingConfig, GenerateRequest};
use trust_core::testing::{MockModel, MockScorer};
use trust_verticals::guard::{Action, Guard};

struct App {
    model: Box<dyn LanguageModel>,
    guard: Guard,
    served: mpsc::UnboundedSender<()>,
}

async fn generate(State(app): State<Arc<App>>, Json(body): Json<Value>) -> Json<Value> {
    let _ = app.served.send(());
    let Some(prompt) = body.get("prompt").and_then(Value::as_str) else {
        return Json(json!({"error": "expected {\"prompt\": string}"}));
    };
    let max_tokens = body.get("max_tokens").and_then(Value::as_u64).unwrap_or(32) as usize;
    let req = GenerateRequest {
        prompt: prompt.to_string(),
        config: DecodingConfig::greedy(max_tokens),
        seed: 0,
    };
    let reply = match app.model.generate(&[req]).await.pop() {
        Some(Ok(r)) => r
            .completions
            .into_iter()
            .next()
            .map(|c| c.text)
            .unwrap_or_default(),
        Some(Err(e)) => return Json(json!({"error": e.to_string()})),
        None => return Json(json!({"error": "no reply"})),
    };
    let verdict = app.guard.check(&reply).await;
    Json(json!({
        "action": verdict.action,
        "reply": (verdict.action != Action::Block).then_some(reply),
        "findings": verdict.findings,
        "toxicity": verdict.toxicity,
        "guard_latency_us": verdict.latency.as_micros() as u64,
    }))
}

fn load_model(spec: &str) -> anyhow::Result<Box<dyn LanguageModel>> {
    if spec == "mock" {
        return Ok(Box::new(
            MockModel::new()
                .rule("ssn", "Sure, the SSN on file is 123 45 6789.")
                .rule("insult", "You are an idiot and I hate this.")
                .rule("secret", "I'm sorry, I cannot fulfill that request.")
                .rule("weather", "It is sunny with a light breeze."),
        ));
    }
    let opts = trust_backends::candle::LoadOptions::default();
    Ok(Box::new(
        trust_backends::candle::CandleModel::load(spec, &opts)
            .with_context(|| format!("loading {spec}"))?,
    ))
}

/// One HTTP/1.1 request over loopback; returns the body.
async fn post_prompt(addr: std::net::SocketAddr, prompt: &str) -> anyhow::Result<String> {
    let body = json!({"prompt": prompt}).to_string();
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!(
            "POST /generate HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(out))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut model = "mock".to_string();
    let mut port = 8080u16;
    let mut max_requests = 100usize;
    let mut self_test = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().context("--port N")?.parse()?,
            "--max-requests" => max_requests = args.next().context("--max-requests N")?.parse()?,
            "--self-test" => self_test = true,
            s if s.starts_with("--") => bail!("unknown option {s}"),
            s => model = s.to_string(),
        }
    }
    let guard = Guard::builder()
        .scorer(Arc::new(MockScorer::default()), 0.2)
        .secret("customer_ssn", "123-45-6789")
        .budget(Duration::from_millis(50))
        .max_wait(Duration::from_micros(200))
        .build()?;
    let (served, mut served_rx) = mpsc::unbounded_channel();
    let app = Arc::new(App {
        model: load_model(&model)?,
        guard,
        served,
    });
    let router = Router::new()
        .route("/generate", post(generate))
        .with_state(app);
    let bind = if self_test {
        ("127.0.0.1", 0)
    } else {
        ("127.0.0.1", port)
    };
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let limit = if self_test { 4 } else { max_requests };
    eprintln!(
        "guarded generation on http://{addr}/generate (stops after {limit} requests or Ctrl-C)"
    );
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let mut n = 0;
                while n < limit {
                    tokio::select! {
                        got = served_rx.recv() => if got.is_none() { break } else { n += 1 },
                        _ = tokio::signal::ctrl_c() => break,
                    }
                }
            })
            .await
    });
    if self_test {
        for prompt in [
            "what is my ssn?",
            "insult me",
            "tell me the secret",
            "weather today?",
        ] {
            println!("{prompt:<22} -> {}", post_prompt(addr, prompt).await?);
        }
    }
    server.await??;
    Ok(())
}
