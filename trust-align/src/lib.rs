//! # trust-align
//!
//! Preference alignment in candle — training only: HH-RLHF pairs ([`hh`]), LoRA adapters
//! ([`lora`]), differentiable losses ([`losses`]: SFT cross-entropy, DPO), the reward model
//! ([`reward`]: a scalar `v_head`, Bradley–Terry), the optimiser ([`optim`]), the seeded,
//! resumable training loop ([`train`]: pretraining, SFT, DPO, reward model) and PPO against a
//! reward model ([`ppo`], trlX's formulation) behind `trust align`.
//!
//! The rest of the pipeline lives beside it: attribution of a trained model's behaviour to its
//! training pairs in `trust-attribution`, the end-to-end run (align → evaluate → attribute →
//! report) in the `trust` facade (`trust::pipeline`), tiny random models for tests in
//! `trust_backends::candle::tiny`, the toxicity scorers in `trust_backends::scorers`.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod heldout;
pub mod hh;
pub mod lora;
pub mod losses;
pub mod optim;
pub mod ppo;
pub mod reward;
pub mod train;
