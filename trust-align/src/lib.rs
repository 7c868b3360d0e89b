//! # trust-align
//!
//! Preference alignment in candle, so that base → SFT → DPO → evaluate → attribute runs in one
//! tool: HH-RLHF pairs ([`hh`]), differentiable losses ([`losses`]) and LoRA adapters ([`lora`]).
#![warn(missing_docs)]

pub mod attribute;
pub mod demo;
pub mod hh;
pub mod lexical;
pub mod lora;
pub mod losses;
pub mod optim;
pub mod reward;
pub mod test_pairs;
pub mod tiny;
pub mod train;
