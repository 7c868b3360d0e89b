//! `trust serve` + the `http` backend, end to end on loopback: a real server process serving the
//! tiny GPT-NeoX fixture through the candle backend, faults injected with its hidden
//! `--fault-plan` / `--fault-prompt` options.

mod common;
use common::data_dir;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use trust_backends::candle::{CandleModel, LoadOptions};
use trust_backends::http::server::chat_prompt;
use trust_backends::http::wire::ChatMessage;
use trust_backends::http::{HttpModel, HttpOptions, ShardedModel};
use trust_core::{
    Capability, DecodingConfig, GenerateRequest, LanguageModel, LogLikelihoodRequest, ModelError,
    StopPolicy,
};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/hf/tiny-gpt-neox"
);

/// A `trust serve` child process on a loopback port chosen by the system; killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(extra: &[&str], envs: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trust"));
        cmd.args([
            "serve",
            "--model",
            FIXTURE,
            "--port",
            "0",
            "--served-model-name",
            "tiny",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn trust serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("trust serve did not start: {line:?}"))
            .to_string();
        let s = Server { child, addr };
        // Bounded poll of /health (the socket is bound before the line is printed, so the
        // first try normally succeeds).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = s.request("GET", "/health", None) {
                break;
            }
            assert!(Instant::now() < deadline, "/health never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn spec(&self, opts: &str) -> String {
        format!("{}#tiny{opts}", self.base())
    }

    fn options(&self) -> HttpOptions {
        let mut o = HttpOptions::new(self.base(), "tiny");
        o.stop_token_ids = true;
        o.ignore_eos = true;
        o.top_k = true;
        o.backoff_base = Duration::from_millis(5);
        o.timeout = Duration::from_secs(60);
        o
    }

    /// A raw HTTP/1.1 request: (status, body).
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        self.request_with(method, path, body, "")
    }

    /// [`Self::request`] with extra header lines (each ending in `\r\n`).
    fn request_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &str,
    ) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(&self.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let body = body.unwrap_or("");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|x| x.1)
            .unwrap_or("")
            .to_string();
        Ok((status, body))
    }

    fn health(&self, field: &str) -> u64 {
        let (_, body) = self.request("GET", "/health", None).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v[field].as_u64().unwrap()
    }

    fn model_requests(&self) -> u64 {
        self.health("model_requests")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn local() -> CandleModel {
    CandleModel::load(FIXTURE, &LoadOptions::default()).unwrap()
}

fn trust(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trust"));
    cmd.args(args).env("TRUST_DATA_DIR", data_dir());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run trust")
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn generation_requests() -> Vec<GenerateRequest> {
    let prompts = [
        "Hello, my name is",
        "The capital of France is",
        "Once upon a time",
        "1 2 3 4",
    ];
    let mut with_stop = DecodingConfig::greedy(20);
    with_stop.stop_strings = vec!["e".into()];
    let configs = [
        DecodingConfig::greedy(12),
        DecodingConfig::greedy(10).with_stop(StopPolicy::Never),
        DecodingConfig::greedy(10).with_stop(StopPolicy::Tokens(vec![5, 17, 50])),
        with_stop,
        DecodingConfig::sampled(8, 0.8, 0.9, 3),
    ];
    let mut out = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        for c in &configs {
            out.push(GenerateRequest {
                prompt: p.to_string(),
                config: c.clone(),
                seed: 7 + i as u64,
            });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_over_http_equal_in_process_ones() {
    let srv = Server::start(&[], &[]);
    let http = HttpModel::new(srv.options()).unwrap();
    let reqs = generation_requests();
    let want = local().generate(&reqs).await;
    let got = http.generate(&reqs).await;
    assert_eq!(got.len(), reqs.len());
    let mut stop_strings = 0;
    for ((r, w), g) in reqs.iter().zip(want).zip(got) {
        let (w, g) = (w.unwrap(), g.unwrap_or_else(|e| panic!("{r:?}: {e}")));
        assert_eq!(w, g, "{r:?}");
        stop_strings += g
            .completions
            .iter()
            .filter(|c| c.finish_reason == trust_core::FinishReason::StopString)
            .count();
    }
    assert!(stop_strings > 0, "no request stopped on a stop string");

    // Chat mode: the server's documented template, then the same decoding.
    let mut o = srv.options();
    o.chat = true;
    o.system_prompt = Some("Be brief.".into());
    let chat = HttpModel::new(o).unwrap();
    assert!(!chat.capabilities().has(Capability::LogLikelihood));
    let r = GenerateRequest {
        prompt: "Hi there".into(),
        config: DecodingConfig::greedy(10),
        seed: 0,
    };
    let templated = GenerateRequest {
        prompt: chat_prompt(&[
            ChatMessage {
                role: "system".into(),
                content: "Be brief.".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "Hi there".into(),
            },
        ]),
        ..r.clone()
    };
    let want = local()
        .generate(std::slice::from_ref(&templated))
        .await
        .remove(0)
        .unwrap();
    let got = chat.generate(&[r]).await.remove(0).unwrap();
    assert_eq!(want, got);
    let ll = chat
        .loglikelihood(&[LogLikelihoodRequest {
            context: "a".into(),
            continuation: "b".into(),
        }])
        .await;
    assert!(
        matches!(
            &ll[0],
            Err(ModelError::Unsupported {
                capability: Capability::LogLikelihood,
                ..
            })
        ),
        "{ll:?}"
    );

    // Without the extensions, token-id stop policies are refused up front.
    let plain = HttpModel::new(HttpOptions::new(srv.base(), "tiny")).unwrap();
    let before = srv.model_requests();
    let r = plain
        .generate(&[GenerateRequest {
            prompt: "x".into(),
            config: DecodingConfig::greedy(4).with_stop(StopPolicy::Never),
            seed: 0,
        }])
        .await;
    assert!(
        matches!(&r[0], Err(ModelError::InvalidRequest(m)) if m.contains("ignore_eos")),
        "{r:?}"
    );
    assert_eq!(srv.model_requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loglikelihood_over_http_matches_in_process_where_tokenisation_agrees() {
    let srv = Server::start(&[], &[]);
    let http = HttpModel::new(srv.options()).unwrap();
    assert!(http.probe_loglikelihood().await.unwrap());
    assert!(http.capabilities().has(Capability::LogLikelihood));
    let local = local();
    let pairs = [
        ("The capital of France is", " Paris"),
        ("Hello, my name", " is John"),
        ("1 2 3", " 4 5"),
        ("Once upon a time", " there was a princess"),
        ("Question: is the sky blue? Answer:", " yes"),
        // The context ends in a space: joined, " world" is one token that straddles the
        // boundary, while separately the space and "world" are two tokens.
        ("Hello ", "world"),
    ];
    let reqs: Vec<LogLikelihoodRequest> = pairs
        .iter()
        .map(|(c, x)| LogLikelihoodRequest {
            context: c.to_string(),
            continuation: x.to_string(),
        })
        .collect();
    let want = local.loglikelihood(&reqs).await;
    let got = http.loglikelihood(&reqs).await;
    let mut agreeing = 0;
    for ((r, w), g) in reqs.iter().zip(want).zip(got) {
        let (w, g) = (w.unwrap(), g.unwrap_or_else(|e| panic!("{r:?}: {e}")));
        let mut separate = local.encode(&r.context).unwrap();
        separate.extend(local.encode(&r.continuation).unwrap());
        let joined = local
            .encode(&format!("{}{}", r.context, r.continuation))
            .unwrap();
        if separate == joined {
            agreeing += 1;
            assert_eq!(w.token_logprobs.len(), g.token_logprobs.len(), "{r:?}");
            for (a, b) in w.token_logprobs.iter().zip(&g.token_logprobs) {
                assert!((a - b).abs() <= 1e-5, "{r:?}: {a} vs {b}");
            }
            assert!((w.sum - g.sum).abs() <= 1e-4, "{r:?}");
            assert_eq!(w.is_greedy, g.is_greedy, "{r:?}");
        } else {
            // Documented caveat: different tokens, but still a score of the whole continuation.
            assert!(g.sum.is_finite() && g.sum < 0.0, "{r:?}: {g:?}");
        }
    }
    assert!(agreeing >= 4, "only {agreeing} pairs tokenise alike");

    // A greedy continuation is recognised as such.
    let ctx = "Once upon a time";
    let g = local
        .generate(&[GenerateRequest {
            prompt: ctx.into(),
            config: DecodingConfig::greedy(3),
            seed: 0,
        }])
        .await
        .remove(0)
        .unwrap();
    let cont = g.completions[0].text.clone();
    let mut joined = local.encode(ctx).unwrap();
    joined.extend(&g.completions[0].token_ids);
    if !cont.is_empty() && local.encode(&format!("{ctx}{cont}")).unwrap() == joined {
        let r = LogLikelihoodRequest {
            context: ctx.into(),
            continuation: cont,
        };
        let got = http
            .loglikelihood(std::slice::from_ref(&r))
            .await
            .remove(0)
            .unwrap();
        assert!(got.is_greedy, "{got:?}");
    }

    // OpenAI-style errors with proper status codes.
    let (code, body) = srv
        .request("POST", "/v1/completions", Some("{not json"))
        .unwrap();
    assert_eq!(code, 400, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid request body")
    );
    let (code, body) = srv
        .request(
            "POST",
            "/v1/completions",
            Some(r#"{"prompt": "hi", "max_tokens": 1000}"#),
        )
        .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("max_position_embeddings"), "{body}");
    let (code, body) = srv
        .request(
            "POST",
            "/v1/completions",
            Some(r#"{"prompt": "hi", "n": 1000000000, "temperature": 1}"#),
        )
        .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("n must be at most"), "{body}");
    let (code, _) = srv.request("GET", "/v1/nope", None).unwrap();
    assert_eq!(code, 404);
    let (code, body) = srv.request("GET", "/v1/models", None).unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("\"tiny\""), "{body}");
    // Echo: the first token's log-prob is null.
    let (code, body) = srv
        .request(
            "POST",
            "/v1/completions",
            Some(r#"{"prompt": "Hello world", "max_tokens": 0, "echo": true, "logprobs": 2}"#),
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let lp = &v["choices"][0]["logprobs"];
    assert!(lp["token_logprobs"][0].is_null());
    assert!(lp["token_logprobs"][1].as_f64().unwrap() < 0.0);
    assert_eq!(lp["top_logprobs"][1].as_object().unwrap().len(), 2);
    assert_eq!(lp["text_offset"][0], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_dropped_connections_are_retried() {
    let srv = Server::start(&["--fault-plan", "500,429,drop,503"], &[]);
    let mut o = srv.options();
    o.max_retries = 4;
    let http = HttpModel::new(o).unwrap();
    let r = GenerateRequest {
        prompt: "The capital of France is".into(),
        config: DecodingConfig::greedy(8),
        seed: 0,
    };
    let got = http.generate(std::slice::from_ref(&r)).await.remove(0);
    let want = local()
        .generate(std::slice::from_ref(&r))
        .await
        .remove(0)
        .unwrap();
    assert_eq!(got.unwrap(), want);
    assert_eq!(srv.model_requests(), 5, "four failures, then the answer");

    // With fewer retries than faults the request fails as transient, naming the last error.
    let srv = Server::start(&["--fault-plan", "500,500,500"], &[]);
    let mut o = srv.options();
    o.max_retries = 1;
    let http = HttpModel::new(o).unwrap();
    let got = http.generate(std::slice::from_ref(&r)).await.remove(0);
    assert!(
        matches!(&got, Err(ModelError::Transient(m)) if m.contains("HTTP 500") && m.contains("2 attempts")),
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_responses_time_out_and_are_retried_or_reported() {
    let srv = Server::start(&["--fault-plan", "stall:3000,stall:3000"], &[]);
    let r = GenerateRequest {
        prompt: "Once upon a time".into(),
        config: DecodingConfig::greedy(6),
        seed: 0,
    };
    let mut o = srv.options();
    o.timeout = Duration::from_millis(300);
    o.max_retries = 0;
    let impatient = HttpModel::new(o.clone()).unwrap();
    let got = impatient.generate(std::slice::from_ref(&r)).await.remove(0);
    assert!(
        matches!(&got, Err(ModelError::Transient(m)) if m.contains("no response within")),
        "{got:?}"
    );
    o.max_retries = 2;
    let patient = HttpModel::new(o).unwrap();
    let got = patient
        .generate(std::slice::from_ref(&r))
        .await
        .remove(0)
        .unwrap();
    let want = local()
        .generate(std::slice::from_ref(&r))
        .await
        .remove(0)
        .unwrap();
    assert_eq!(got, want);
}

#[test]
fn a_failing_request_fails_its_sample_only_and_sharding_gives_the_same_report() {
    // The second privacy prompt (pii-0001) is poisoned through a phone number only it contains.
    let line = std::fs::read_to_string(data_dir().join("privacy/pii_prompts.jsonl")).unwrap();
    let second: serde_json::Value = serde_json::from_str(line.lines().nth(1).unwrap()).unwrap();
    let poisoned = second["context"][0]["value"].as_str().unwrap().to_string();
    let a = Server::start(&[], &[]);
    let b = Server::start(&[], &[]);
    let bad = Server::start(&["--fault-prompt", &poisoned], &[]);
    let dir = tempfile::tempdir().unwrap();
    let eval = |model: &str, out: &str| {
        let out_dir = dir.path().join(out);
        let o = trust(
            &[
                "eval",
                "--model",
                model,
                "--verticals",
                "privacy,machine_ethics,toxicity",
                "--protocol",
                "paper,toxicity=paper-text",
                "--scorer",
                "mock",
                "--limit",
                "3",
                "--samples",
                "2",
                "--bootstrap",
                "20",
                "--batch-size",
                "4",
                "--out",
                out_dir.to_str().unwrap(),
            ],
            &[],
        );
        (o, out_dir)
    };

    // One poisoned prompt: its sample fails, the others are scored.
    let (_, out) = eval(&bad.spec(";vllm;retries=1;backoff_ms=1"), "bad");
    let rep = read_json(&out.join("privacy/report.json"));
    assert_eq!(rep["n_samples"], 3, "{rep}");
    assert_eq!(rep["n_failed"], 1, "{rep}");
    assert_eq!(rep["n_ok"], 2, "{rep}");
    assert_eq!(rep["failures"][0]["id"], "pii-0001", "{rep}");
    let err = rep["failures"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("HTTP 500") && err.contains("always fails"),
        "{err}"
    );

    // One server vs the same run sharded over two: identical records and metrics.
    let (o1, one) = eval(&a.spec(";vllm"), "one");
    assert!(
        o1.status.success(),
        "{}",
        String::from_utf8_lossy(&o1.stderr)
    );
    let (o2, two) = eval(&format!("{},{}", a.spec(";vllm"), b.spec(";vllm")), "two");
    assert!(
        o2.status.success(),
        "{}",
        String::from_utf8_lossy(&o2.stderr)
    );
    assert!(b.model_requests() > 0, "the second shard got no requests");
    for v in ["privacy", "machine_ethics", "toxicity"] {
        let s1 = std::fs::read_to_string(one.join(v).join("samples.jsonl")).unwrap();
        let s2 = std::fs::read_to_string(two.join(v).join("samples.jsonl")).unwrap();
        assert_eq!(s1.lines().count(), 3, "{v}");
        assert_eq!(s1, s2, "{v}: records differ");
        let (r1, r2) = (
            read_json(&one.join(v).join("report.json")),
            read_json(&two.join(v).join("report.json")),
        );
        assert_eq!(r1["n_ok"], 3, "{v}: {r1}");
        for k in [
            "n_samples",
            "n_ok",
            "n_failed",
            "n_unparsed",
            "metrics",
            "failures",
        ] {
            assert_eq!(r1[k], r2[k], "{v}: {k}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_is_sent_but_never_shown() {
    let key = "sk-test-0123456789-secret";
    let srv = Server::start(
        &["--api-key-env", "TRUST_TEST_SERVE_KEY"],
        &[("TRUST_TEST_SERVE_KEY", key)],
    );
    let dir = tempfile::tempdir().unwrap();
    let run = |var_value: &str, out: &str| {
        let out_dir = dir.path().join(out);
        let o = trust(
            &[
                "eval",
                "--model",
                &srv.spec(";api_key_env=MY_KEY;retries=0;vllm"),
                "--verticals",
                "privacy",
                "--limit",
                "2",
                "--bootstrap",
                "10",
                "--out",
                out_dir.to_str().unwrap(),
            ],
            &[("MY_KEY", var_value), ("TRUST_LOG", "trace")],
        );
        let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&o.stderr));
        for f in [
            "report.json",
            "privacy/samples.jsonl",
            "privacy/manifest.json",
        ] {
            text.push_str(&std::fs::read_to_string(out_dir.join(f)).unwrap_or_default());
        }
        (o, text, out_dir)
    };
    let (o, text, out) = run(key, "good");
    assert!(o.status.success(), "{text}");
    assert_eq!(read_json(&out.join("privacy/report.json"))["n_ok"], 2);
    assert!(!text.contains(key), "the key leaked into the output");

    let wrong = "sk-wrong-9876543210";
    let (_, text, out) = run(wrong, "bad");
    let rep = read_json(&out.join("privacy/report.json"));
    assert_eq!(rep["n_failed"], 2, "{rep}");
    assert!(
        rep["failures"][0]["error"]
            .as_str()
            .unwrap()
            .contains("HTTP 401"),
        "{rep}"
    );
    assert!(
        !text.contains(wrong) && !text.contains(key),
        "a key leaked into the output"
    );

    // Debug output of a model holding a key (here: the value of PATH) never shows it.
    let mut o = HttpOptions::new(srv.base(), "tiny");
    o.api_key_env = "PATH".into();
    let m = HttpModel::new(o).unwrap();
    let path = std::env::var("PATH").unwrap();
    assert!(m.has_api_key());
    let dbg = format!("{m:?}");
    assert!(!dbg.contains(&path) && dbg.contains("redacted"), "{dbg}");
    let r = m
        .generate(&[GenerateRequest {
            prompt: "x".into(),
            config: DecodingConfig::greedy(2),
            seed: 0,
        }])
        .await;
    let e = format!("{:?}", r[0]);
    assert!(e.contains("401") && !e.contains(&path), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_stay_within_the_concurrency_limit() {
    let srv = Server::start(
        &[
            "--fault-plan",
            "stall:300,stall:300,stall:300,stall:300,stall:300,stall:300",
        ],
        &[],
    );
    let mut o = srv.options();
    o.max_concurrency = 2;
    let http = HttpModel::new(o).unwrap();
    let reqs: Vec<GenerateRequest> = (0..6)
        .map(|i| GenerateRequest {
            prompt: format!("Number {i}"),
            config: DecodingConfig::greedy(2),
            seed: 0,
        })
        .collect();
    let got = http.generate(&reqs).await;
    assert!(got.iter().all(|r| r.is_ok()), "{got:?}");
    assert_eq!(srv.model_requests(), 6);
    // Two are sent at once and each stalls 300 ms, so exactly two overlap.
    assert_eq!(srv.health("max_in_flight"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_echo_gives_a_capability_error() {
    let srv = Server::start(&["--reject-echo"], &[]);
    let http = HttpModel::new(srv.options()).unwrap();
    assert!(
        http.capabilities().has(Capability::LogLikelihood),
        "claimed until known"
    );
    let r = LogLikelihoodRequest {
        context: "Hello".into(),
        continuation: " world".into(),
    };
    let got = http.loglikelihood(std::slice::from_ref(&r)).await.remove(0);
    match &got {
        Err(
            e @ ModelError::Unsupported {
                capability: Capability::LogLikelihood,
                ..
            },
        ) => {
            assert!(e.to_string().contains("log-likelihood"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!http.capabilities().has(Capability::LogLikelihood));
    let fresh = HttpModel::new(srv.options()).unwrap();
    assert!(!fresh.probe_loglikelihood().await.unwrap());
    assert!(!fresh.capabilities().has(Capability::LogLikelihood));
    // Generation still works.
    let g = fresh
        .generate(&[GenerateRequest {
            prompt: "Hi".into(),
            config: DecodingConfig::greedy(3),
            seed: 0,
        }])
        .await;
    assert!(g[0].is_ok(), "{g:?}");
}

#[test]
fn a_sharded_model_needs_a_member() {
    assert!(ShardedModel::new(Vec::new()).is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_completions_use_the_chat_template_given() {
    let tmp = tempfile::tempdir().unwrap();
    let tpl = tmp.path().join("chat.jinja");
    std::fs::write(
        &tpl,
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] | trim }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}\n",
    )
    .unwrap();
    let srv = Server::start(&["--chat-template", tpl.to_str().unwrap()], &[]);
    let mut o = srv.options();
    o.chat = true;
    o.system_prompt = Some("Be brief.".into());
    let chat = HttpModel::new(o).unwrap();
    let r = GenerateRequest {
        prompt: " Hi there ".into(),
        config: DecodingConfig::greedy(10),
        seed: 0,
    };
    // The template's rendering (trim_blocks drops the newline after each block tag; the
    // template's final newline is dropped as in Jinja), then the same decoding in process.
    let templated = GenerateRequest {
        prompt: "<system>Be brief.\n<user>Hi there\n<assistant>".into(),
        ..r.clone()
    };
    let want = local()
        .generate(std::slice::from_ref(&templated))
        .await
        .remove(0)
        .unwrap();
    let got = chat.generate(&[r]).await.remove(0).unwrap();
    assert_eq!(want, got);
    // A template that raises is a 400 naming the reason.
    std::fs::write(&tpl, "{{ raise_exception('roles must alternate') }}").unwrap();
    let srv = Server::start(&["--chat-template", tpl.to_str().unwrap()], &[]);
    let (status, body) = srv
        .request(
            "POST",
            "/v1/chat/completions",
            Some(r#"{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}"#),
        )
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("roles must alternate"), "{body}");
}

#[test]
fn requests_are_bounded_and_the_model_path_stays_private() {
    let key = "sk-bounded-0123";
    let srv = Server::start(
        &["--api-key-env", "TRUST_TEST_SERVE_KEY2"],
        &[("TRUST_TEST_SERVE_KEY2", key)],
    );
    let auth = format!("Authorization: bearer {key}\r\n");
    // A lowercase `bearer` scheme is accepted (RFC 7235); a wrong key is not.
    let (status, body) = srv.request_with("GET", "/v1/models", None, &auth).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"tiny\""), "{body}");
    assert!(
        !body.contains("tiny-gpt-neox") && !body.contains("/fixtures/"),
        "/v1/models exposes the model path: {body}"
    );
    let (status, _) = srv
        .request_with("GET", "/v1/models", None, "Authorization: bearer nope\r\n")
        .unwrap();
    assert_eq!(status, 401);

    // max_tokens = u64::MAX: refused with a 400 naming the cap, not generated forever.
    let huge = r#"{"model": "tiny", "prompt": "Hello", "max_tokens": 18446744073709551615}"#;
    let (status, body) = srv
        .request_with("POST", "/v1/completions", Some(huge), &auth)
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("at most 4096"), "{msg}");

    // A body over the limit: 413 as OpenAI-style JSON.
    let big = format!(
        r#"{{"model": "tiny", "prompt": "{}"}}"#,
        "a".repeat(3 * 1024 * 1024)
    );
    let (status, body) = srv
        .request_with("POST", "/v1/completions", Some(&big), &auth)
        .unwrap();
    assert_eq!(status, 413, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error", "{body}");

    // Without the server cap, the model's context still bounds max_tokens (the prompt + new
    // tokens sum must not wrap around).
    let open = Server::start(&["--max-tokens", "0"], &[]);
    let (status, body) = open.request("POST", "/v1/completions", Some(huge)).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("max_position_embeddings"), "{body}");
}

#[test]
fn a_client_that_disconnects_cancels_its_generation() {
    let srv = Server::start(&[], &[]);
    // 1,024 prompts x 128 samples x 200 tokens: minutes of work on 2 cores if not cancelled.
    let prompts: Vec<String> = (0..1024).map(|i| format!("\"Prompt {i}\"")).collect();
    let body = format!(
        r#"{{"model": "tiny", "prompt": [{}], "n": 128, "max_tokens": 200, "temperature": 1.0, "ignore_eos": true}}"#,
        prompts.join(",")
    );
    let mut conn = TcpStream::connect(&srv.addr).unwrap();
    write!(
        conn,
        "POST /v1/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        srv.addr,
        body.len()
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while srv.model_requests() < 1 {
        assert!(Instant::now() < deadline, "the request never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(60);
    while srv.health("cancelled") < 1 {
        assert!(
            Instant::now() < deadline,
            "the generation was not cancelled after the client went away"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The model is free again: a small request is answered.
    let (status, body) = srv
        .request(
            "POST",
            "/v1/completions",
            Some(r#"{"model": "tiny", "prompt": "Hi", "max_tokens": 2}"#),
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn idle_and_slow_connections_are_closed_after_the_header_timeout() {
    let srv = Server::start(&["--header-timeout", "1"], &[]);
    // A connection that never sends anything is closed (read returns EOF), not held forever.
    let t = Instant::now();
    let mut idle = TcpStream::connect(&srv.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = Vec::new();
    let _ = idle.read_to_end(&mut buf);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "idle connection closed after {waited:?}"
    );
    // A keep-alive connection is answered, then closed once idle for the timeout.
    let t = Instant::now();
    let mut ka = TcpStream::connect(&srv.addr).unwrap();
    ka.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(ka, "GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", srv.addr).unwrap();
    let mut resp = Vec::new();
    let _ = ka.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // A slow sender that never finishes its headers is cut off too.
    let t = Instant::now();
    let mut slow = TcpStream::connect(&srv.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(slow, "GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // The server still answers.
    assert_eq!(srv.request("GET", "/health", None).unwrap().0, 200);
}

/// Fuzzing (docs/fuzzing.md): mutated request bodies (completions and chat) get an answer — 200
/// or an OpenAI-style 4xx — never a dropped connection (a handler panic) or a 500.
#[test]
fn fuzzed_request_bodies_get_an_answer_not_a_crash() {
    let srv = Server::start(&["--max-tokens", "8"], &[]);
    let corpus = vec![
        br#"{"model": "tiny", "prompt": ["Hello", "x"], "max_tokens": 3, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "n": 2, "seed": 4, "stop": ["\n"], "stop_token_ids": [0], "echo": true, "logprobs": 2}"#.to_vec(),
        br#"{"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}"#.to_vec(),
    ];
    let n = trust_core::fuzz::run("http-bodies", corpus, 300, |input| {
        let body = String::from_utf8_lossy(input);
        for path in ["/v1/completions", "/v1/chat/completions"] {
            let (status, text) = srv
                .request("POST", path, Some(&body))
                .expect("the server answered");
            assert!(
                status == 200 || (400..500).contains(&status),
                "{path}: HTTP {status} for {body:?}: {text}"
            );
            if status != 200 {
                let v: serde_json::Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{path}: non-JSON error {text:?}: {e}"));
                assert!(v["error"]["message"].is_string(), "{text}");
            }
        }
    });
    assert_eq!(n, trust_core::fuzz::iterations(300));
    assert_eq!(srv.request("GET", "/health", None).unwrap().0, 200);
}
