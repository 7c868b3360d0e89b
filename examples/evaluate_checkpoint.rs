//! Evaluate a local Hugging Face checkpoint on one trust vertical with the paper's protocol.
//!
//! ```text
//! cargo run --release -p trust-examples --example evaluate_checkpoint -- MODEL_DIR [DATA_DIR]
//! ```
//! MODEL_DIR holds config.json, tokenizer.json and *.safetensors (GPT-NeoX/Pythia, Llama, Qwen2);
//! DATA_DIR defaults to $TRUST_DATA_DIR, else the checkout's data/.

use trust_backends::candle::{CandleModel, LoadOptions};
use trust_core::{DataDir, Runner};
use trust_verticals::registry::{self, BuildOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let model_dir = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: evaluate_checkpoint MODEL_DIR [DATA_DIR]"))?;
    let data = DataDir::resolve(args.next().as_deref().map(std::path::Path::new))?;
    let model = CandleModel::load(&model_dir, &LoadOptions::default())?;
    let ethics = registry::build("machine_ethics", "paper", &BuildOptions::default())?;
    let runner = Runner::builder()
        .batch_size(16)
        .seed(0)
        .limit(Some(20))
        .build();
    let report = ethics.run(&runner, &model, None, &data).await?;
    for m in &report.metrics {
        println!(
            "{:<28} {:?}  95% CI [{:?}, {:?}]  n={}",
            m.name, m.value, m.ci_low, m.ci_high, m.n
        );
    }
    println!(
        "{} samples, {} failed, {} unparsed replies",
        report.n_samples, report.n_failed, report.n_unparsed
    );
    Ok(())
}
