//! Matmul ceiling of this machine for a Pythia-70m-shaped model (f32, candle's CPU matmul):
//! GFLOP/s of each projection of one decoder step, and of the whole token, at several row
//! counts. A token costs `2 * 44.6M` FLOP in matrix products (6 layers of 3.15M weights + the
//! 25.8M output layer), so `tokens/s <= GFLOP/s / 0.089`; BENCHMARKS.md turns that into a lower
//! bound for a five-vertical paper-protocol run.
//!
//! `cargo bench -p trust-backends --bench matmul_roofline` (RAYON_NUM_THREADS sets the threads).

use std::time::Instant;

use candle_core::{Device, Tensor};

fn main() {
    let dev = Device::Cpu;
    let h = 512;
    // (name, in, out, count per token)
    let shapes = [
        ("qkv", h, 3 * h, 6),
        ("dense", h, h, 6),
        ("mlp_up", h, 4 * h, 6),
        ("mlp_down", 4 * h, h, 6),
        ("embed_out", h, 50304, 1),
    ];
    let weights: Vec<Tensor> = shapes
        .iter()
        .map(|&(_, i, o, _)| Tensor::randn(0f32, 0.02, (o, i), &dev).expect("weights"))
        .collect();
    println!("threads: {}", rayon::current_num_threads());
    println!(
        "{:>5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "rows", "qkv", "dense", "mlp_up", "mlp_down", "embed_out", "token GF/s", "tok/s"
    );
    for m in [1usize, 8, 40, 64, 128, 256] {
        let mut line = format!("{m:>5}");
        let mut total_s = 0.0;
        let mut total_flop = 0.0;
        for (&(_, i, o, count), w) in shapes.iter().zip(&weights) {
            let x = Tensor::randn(0f32, 1.0, (m, i), &dev).expect("input");
            let wt = w.t().expect("transpose");
            let _ = x.matmul(&wt).expect("warm-up");
            let reps = (2_000_000_000 / (2 * m * i * o)).clamp(3, 200);
            let t = Instant::now();
            for _ in 0..reps {
                let y = x.matmul(&wt).expect("matmul");
                std::hint::black_box(y);
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            let flop = 2.0 * (m * i * o) as f64;
            line.push_str(&format!(" {:>10.1}", flop / s / 1e9));
            total_s += s * count as f64;
            total_flop += flop * count as f64;
        }
        let gf = total_flop / total_s / 1e9;
        line.push_str(&format!(" {gf:>12.1} {:>10.0}", m as f64 / total_s));
        println!("{line}");
    }
}
