//! Latency of `trust_verticals::guard::Guard::check` per reply, p50 / p99, under concurrent
//! callers, with the mock scorer (`cargo bench -p trust-verticals --bench guard_latency`).
//!
//! Options (environment): `GUARD_BENCH_CLIENTS` (default 64 concurrent callers),
//! `GUARD_BENCH_CHECKS` (checks per caller, default 200), `GUARD_BENCH_MAX_BATCH` (32),
//! `GUARD_BENCH_MAX_WAIT_US` (500). Built with `--features ort`, it also measures the tiny ONNX
//! classifier fixture (`trust-backends/tests/fixtures/onnx/tiny-classifier`, or
//! `GUARD_BENCH_ONNX=DIR`; ONNX Runtime found as for `trust classify`) and the shipped scorers
//! when `scripts/fetch-models.sh` installed them (`models/jigsaw-bilstm`, `models/hatesonar`, or
//! under `TRUST_MODELS_DIR`): batched texts/s and the guard's p50/p99 per reply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use trust_core::TextScorer;
use trust_core::testing::MockScorer;
use trust_verticals::guard::Guard;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(
    name: &str,
    scorer: Arc<dyn TextScorer>,
    clients: usize,
    checks: usize,
    max_batch: usize,
    max_wait: Duration,
) {
    let guard = Guard::builder()
        .scorer(scorer, 0.5)
        .secret("ssn", "123-45-6789")
        .secret("email", "alice@example.com")
        .max_batch(max_batch)
        .max_wait(max_wait)
        .budget(Duration::from_secs(5))
        .build()
        .expect("guard");
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let g = guard.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(checks);
                for i in 0..checks {
                    let reply = format!(
                        "Reply {i} from client {c}: here is a fairly ordinary answer of a few dozen words, \
                         which mentions nothing secret and is not rude at all, you idiot{}",
                        if i % 10 == 0 { " 123456789" } else { "" }
                    );
                    let t = Instant::now();
                    let v = g.check(&reply).await;
                    lat.push(t.elapsed());
                    assert!(v.toxicity.is_some(), "{v:?}");
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::with_capacity(clients * checks);
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    let wall = start.elapsed();
    all.sort();
    println!(
        "{name}: {} checks, {clients} concurrent callers, max_batch {max_batch}, max_wait {}us: p50 {:.1}us  p99 {:.1}us  max {:.1}us  throughput {:.0} replies/s",
        all.len(),
        max_wait.as_micros(),
        percentile(&all, 0.5).as_secs_f64() * 1e6,
        percentile(&all, 0.99).as_secs_f64() * 1e6,
        all.last().copied().unwrap_or_default().as_secs_f64() * 1e6,
        all.len() as f64 / wall.as_secs_f64()
    );
}

/// Texts per second when the scorer gets 4,096 replies in one call (warmed up first).
#[cfg_attr(not(feature = "ort"), allow(dead_code))]
async fn batched(name: &str, scorer: &dyn TextScorer) {
    let texts: Vec<String> = (0..4096)
        .map(|i| {
            format!(
                "Reply {i}: here is a fairly ordinary answer of a few dozen words, which mentions nothing secret{}",
                if i % 7 == 0 { " and calls you an idiot" } else { "" }
            )
        })
        .collect();
    let _ = scorer.score(&texts[..64]).await;
    let t = Instant::now();
    let out = scorer.score(&texts).await;
    assert!(out.iter().all(|r| r.is_ok()));
    println!(
        "{name}: batched {} texts in {:.3} s = {:.0} texts/s",
        texts.len(),
        t.elapsed().as_secs_f64(),
        texts.len() as f64 / t.elapsed().as_secs_f64()
    );
}

fn main() {
    let clients = env("GUARD_BENCH_CLIENTS", 64);
    let checks = env("GUARD_BENCH_CHECKS", 200);
    let max_batch = env("GUARD_BENCH_MAX_BATCH", 32);
    let max_wait = Duration::from_micros(env("GUARD_BENCH_MAX_WAIT_US", 500) as u64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        run(
            "mock scorer",
            Arc::new(MockScorer::default()),
            clients,
            checks,
            max_batch,
            max_wait,
        )
        .await;
        run(
            "mock scorer, single caller",
            Arc::new(MockScorer::default()),
            1,
            checks,
            max_batch,
            max_wait,
        )
        .await;
        #[cfg(feature = "ort")]
        {
            let dir = std::env::var("GUARD_BENCH_ONNX").unwrap_or_else(|_| {
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../trust-backends/tests/fixtures/onnx/tiny-classifier"
                )
                .to_string()
            });
            let models = std::env::var("TRUST_MODELS_DIR")
                .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../models").to_string());
            let mut scorers: Vec<(String, Arc<dyn TextScorer>)> = Vec::new();
            match trust_backends::ort::OrtClassifier::from_dir(&dir, Default::default()) {
                Ok(c) => scorers.push(("onnx tiny-classifier".into(), Arc::new(c))),
                Err(e) => eprintln!("skipping the ONNX classifier ({dir}): {e}"),
            }
            let jig = format!("{models}/jigsaw-bilstm");
            match trust_backends::scorers::jigsaw::JigsawScorer::load(&jig) {
                Ok(c) => scorers.push(("jigsaw BiLSTM".into(), Arc::new(c))),
                Err(e) => eprintln!("skipping jigsaw ({jig}; scripts/fetch-models.sh jigsaw): {e}"),
            }
            let hs = format!("{models}/hatesonar");
            match trust_backends::ort::OrtTextClassifier::from_dir(&hs, Default::default()) {
                Ok(c) => scorers.push(("hatesonar (ONNX)".into(), Arc::new(c))),
                Err(e) => {
                    eprintln!("skipping hatesonar ({hs}; scripts/fetch-models.sh hatesonar): {e}")
                }
            }
            for (name, c) in scorers {
                batched(&name, c.as_ref()).await;
                run(&name, c.clone(), clients, checks, max_batch, max_wait).await;
                run(
                    &format!("{name}, single caller"),
                    c,
                    1,
                    checks,
                    max_batch,
                    max_wait,
                )
                .await;
            }
        }
    });
}
