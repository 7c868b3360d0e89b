//! # trust-verticals
//!
//! The five trust verticals of **trust** — toxicity, stereotypical bias, machine ethics,
//! truthfulness and privacy — each under named protocol variants (`paper`, `decodingtrust`,
//! `corrected`, ...) that reproduce the reference code's prompts, decoding and parsing byte for
//! byte. See `trust-verticals/PROTOCOLS.md` for the per-vertical tables of differences.
//!
//! Build a vertical by name with [`registry::build`] and run it type-erased through
//! [`registry::AnyVertical`], or use the concrete types ([`toxicity::Toxicity`],
//! [`stereotype::Stereotype`], [`machine_ethics::MachineEthics`], [`truthfulness::Truthfulness`],
//! [`privacy::Privacy`]) with [`trust_core::Runner`] directly.
#![warn(missing_docs)]

pub mod common;
pub mod machine_ethics;
pub mod privacy;
pub mod registry;
pub mod stereotype;
pub mod toxicity;
pub mod truthfulness;

pub use registry::{AnyVertical, BuildOptions, SavedSample, SavedScores, build};

pub mod attribution;
