//! Throughput of the candle backend on a Pythia-70m-shaped model with random weights, built in
//! memory (hidden 512, 6 layers, 8 heads, intermediate 2048, vocab 50304, rotary_pct 0.25).
//!
//! Run: `cargo bench -p trust-backends --bench candle_throughput` (release profile). Prompts
//! are tokenised with the shared fixture tokenizer (`$TRUST_FIXTURES_DIR/tiny-gpt-neox`, default
//! `<workspace>/../shared/fixtures/hf`); nothing is downloaded. Respects `RAYON_NUM_THREADS`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use trust_backends::candle::{CandleModel, CausalLm, LoadOptions, ModelConfig};
use trust_core::{DecodingConfig, GenerateRequest, LogLikelihoodRequest, StopPolicy};

const CONFIG: &str = r#"{
  "model_type": "gpt_neox", "vocab_size": 50304, "hidden_size": 512, "num_hidden_layers": 6,
  "num_attention_heads": 8, "intermediate_size": 2048, "hidden_act": "gelu", "rotary_pct": 0.25,
  "rotary_emb_base": 10000, "max_position_embeddings": 2048, "use_parallel_residual": true,
  "layer_norm_eps": 1e-5, "tie_word_embeddings": false, "eos_token_id": 0
}"#;

fn tokenizer_path() -> PathBuf {
    let root = match std::env::var_os("TRUST_FIXTURES_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/fixtures/hf"
        )),
    };
    root.join("tiny-gpt-neox/tokenizer.json")
}

fn main() {
    let threads = candle_core::utils::get_num_threads();
    let cfg = ModelConfig::from_json_str(CONFIG, Path::new("<bench>")).unwrap();
    let tok = tokenizers::Tokenizer::from_file(tokenizer_path()).expect("fixture tokenizer.json");
    let words = "The quick brown fox jumps over the lazy dog while the assistant explains why honesty matters. ";
    println!("candle_throughput: Pythia-70m-shaped random model, f32, cpu, {threads} threads");
    for dtype in [DType::F32, DType::BF16] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
        let lm = CausalLm::from_var_builder(&cfg, vb).unwrap();
        let base = CandleModel::from_parts(
            lm,
            tok.clone(),
            "pythia-70m-shaped",
            &LoadOptions::default(),
        )
        .unwrap();

        // Log-likelihood: 16 requests of about 100 context + 28 continuation tokens.
        let reqs: Vec<LogLikelihoodRequest> = (0..16)
            .map(|i| LogLikelihoodRequest {
                context: format!("{i} {}", words.repeat(5)),
                continuation: words.repeat(2),
            })
            .collect();
        let ntok: usize = reqs
            .iter()
            .map(|r| {
                base.encode(&r.context).unwrap().len() + base.encode(&r.continuation).unwrap().len()
            })
            .sum();
        for bs in [1, 8] {
            let m = base.with_batch_size(bs);
            m.loglikelihood_sync(&reqs[..2]); // warm-up
            let t = Instant::now();
            let out = m.loglikelihood_sync(&reqs);
            let secs = t.elapsed().as_secs_f64();
            assert!(out.iter().all(|r| r.is_ok()));
            println!(
                "  {dtype:?} loglik   batch {bs:>2}: {ntok} tokens in {secs:.2} s = {:.0} tokens/s",
                ntok as f64 / secs
            );
        }

        // Greedy decoding: 8 prompts (about 20 tokens each), 32 new tokens each.
        let gen_reqs: Vec<GenerateRequest> = (0..8)
            .map(|i| GenerateRequest {
                prompt: format!("{} {}", i + 10, &words[..80]),
                config: DecodingConfig::greedy(32).with_stop(StopPolicy::Never),
                seed: 0,
            })
            .collect();
        for bs in [1, 8] {
            let m = base.with_batch_size(bs).with_pad_generation_batches(true);
            m.generate_sync(&gen_reqs[..1]); // warm-up
            let t = Instant::now();
            let out = m.generate_sync(&gen_reqs);
            let secs = t.elapsed().as_secs_f64();
            let n: usize = out
                .iter()
                .map(|r| r.as_ref().unwrap().completions[0].token_ids.len())
                .sum();
            println!(
                "  {dtype:?} greedy   batch {bs:>2}: {n} new tokens in {secs:.2} s = {:.1} tokens/s",
                n as f64 / secs
            );
        }
    }
}
