//! Shared fixtures of the training tests: preference pairs and a tiny GPT-NeoX trained from
//! scratch on their text.

use std::path::Path;

use candle_core::Device;
use trust_align::hh::PreferencePair;
use trust_backends::candle::tiny::{NeoxShape, train_tokenizer, write_model_dir};

pub fn pairs() -> Vec<PreferencePair> {
    (0..24)
        .map(|i| PreferencePair {
            index: i,
            prompt: format!(
                "\n\nHuman: can you help me with task {}?\n\nAssistant:",
                i % 6
            ),
            chosen: " Sure, here is a safe and helpful answer.".into(),
            rejected: " No. Go away, you idiot.".into(),
        })
        .collect()
}

pub fn tiny_model(dir: &Path) {
    let texts: Vec<String> = pairs()
        .iter()
        .flat_map(|p| [p.prompt.clone() + &p.chosen, p.prompt.clone() + &p.rejected])
        .collect();
    let shape = NeoxShape {
        vocab_size: 300,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        intermediate_size: 64,
        max_positions: 128,
        rotary_pct: 0.25,
    };
    let tok = train_tokenizer(texts.iter(), shape.vocab_size).unwrap();
    let weights = shape.init_weights(0, &Device::Cpu).unwrap();
    write_model_dir(dir, &shape.config_json(), &tok, &weights).unwrap();
}
