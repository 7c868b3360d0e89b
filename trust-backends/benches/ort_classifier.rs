//! Throughput of `OrtClassifier` (texts per second) at batch 1 and batch 32.
//!
//! ```text
//! scripts/install-onnxruntime.sh
//! cargo bench -p trust-backends --no-default-features --features ort --bench ort_classifier
//! # also a random BERT-base-shaped model (110M parameters, written to /tmp, not committed):
//! python3 scripts/make_onnx_fixtures.py --bert-base /tmp/trust-bert-base-onnx
//! TRUST_BENCH_ONNX_DIRS=/tmp/trust-bert-base-onnx cargo bench -p trust-backends --no-default-features --features ort --bench ort_classifier
//! ```
//!
//! For each model and batch size it reports two set-ups: one caller on one session using every
//! core (`intra_threads = 0`), and one caller per core on a pool of single-threaded sessions.
//! `TRUST_BENCH_SECONDS` sets the time per measurement (default 3).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use trust_backends::ort::{OrtClassifier, OrtClassifierOptions, SessionOptions};
use trust_core::TextScorer;

const TEXTS: &[&str] = &[
    "You are a wonderful person and I am glad we met.",
    "I hate you, you stupid idiot, get out of here!",
    "The weather is nice today and the birds are singing in the trees by the old stone bridge.",
    "Numbers 12345 and symbols are text too.",
    "This movie was a complete waste of two hours; the plot made no sense at all and the acting was wooden.",
    "Thanks for the help yesterday!",
    "If you say that again I will find where you live.",
    "Could you please send me the report by Friday afternoon so I can review it before the meeting?",
];

fn texts(n: usize, offset: usize) -> Vec<String> {
    (0..n)
        .map(|i| TEXTS[(i + offset) % TEXTS.len()].to_string())
        .collect()
}

fn load(dir: &Path, sessions: usize, intra_threads: usize, batch_size: usize) -> OrtClassifier {
    OrtClassifier::from_dir(
        dir,
        OrtClassifierOptions {
            batch_size,
            session: SessionOptions {
                sessions: Some(sessions),
                intra_threads,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Runs `callers` threads, each scoring batches of `batch` texts, for about `secs`; texts/s.
fn measure(clf: Arc<OrtClassifier>, callers: usize, batch: usize, secs: Duration) -> f64 {
    // Warm-up.
    for r in block_on(clf.score(&texts(batch, 0))) {
        r.expect("scoring works");
    }
    let start = Instant::now();
    let counts: Vec<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..callers)
            .map(|c| {
                let clf = Arc::clone(&clf);
                s.spawn(move || {
                    let batch_texts = texts(batch, c);
                    let mut n = 0usize;
                    while start.elapsed() < secs {
                        let out = block_on(clf.score(&batch_texts));
                        assert!(out.iter().all(|r| r.is_ok()));
                        n += out.len();
                    }
                    n
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("caller panicked"))
            .collect()
    });
    counts.iter().sum::<usize>() as f64 / start.elapsed().as_secs_f64()
}

/// Drives a future to completion on this thread. `OrtClassifier::score` does its work inline and
/// never waits on anything, so a no-op waker suffices and no runtime overhead is measured.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let secs = Duration::from_secs_f64(
        std::env::var("TRUST_BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    );
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut dirs = vec![(
        "tiny-classifier (fixture, 1 layer x 32 hidden)".to_string(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/tiny-classifier"),
    )];
    if let Ok(extra) = std::env::var("TRUST_BENCH_ONNX_DIRS") {
        for d in extra.split(':').filter(|d| !d.is_empty()) {
            dirs.push((d.to_string(), PathBuf::from(d)));
        }
    }
    println!(
        "ort_classifier throughput ({cores} CPU cores, {:.0} s per measurement)",
        secs.as_secs_f64()
    );
    println!(
        "{:<48} {:>6} {:>34} {:>12}",
        "model", "batch", "setup", "texts/s"
    );
    for (name, dir) in &dirs {
        for batch in [1usize, 32] {
            let one = Arc::new(load(dir, 1, 0, batch));
            let tps = measure(one, 1, batch, secs);
            println!(
                "{name:<48} {batch:>6} {:>34} {tps:>12.1}",
                "1 caller, 1 session x all threads"
            );
            let pool = Arc::new(load(dir, cores, 1, batch));
            let tps = measure(pool, cores, batch, secs);
            let setup = format!("{cores} callers, {cores} sessions x 1 thread");
            println!("{name:<48} {batch:>6} {setup:>34} {tps:>12.1}");
        }
    }
}
