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
//! [`privacy::Privacy`]) with [`trust_core::Runner`] directly. Training-data attribution (DataInf)
//! lives in its own crate, `trust-attribution`.
//!
//! ```no_run
//! use trust_core::testing::MockModel;
//! use trust_core::{DataDir, Runner};
//! use trust_verticals::{BuildOptions, build};
//!
//! # async fn demo() -> trust_core::Result<()> {
//! let data = DataDir::resolve(None)?; // $TRUST_DATA_DIR, else the checkout's data/
//! let vertical = build("machine_ethics", "paper", &BuildOptions::default())?;
//! let runner = Runner::builder().limit(Some(20)).out_dir("out").build();
//! let report = vertical.run(&runner, &MockModel::new(), None, &data).await?;
//! println!("FNR = {:?}", report.metric("fnr").and_then(|m| m.value));
//! # Ok(())
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

pub mod common;
pub mod gate;
pub mod guard;
pub mod machine_ethics;
pub mod privacy;
#[rustfmt::skip]
pub mod py_unicode;
pub mod registry;
pub mod scorer_agreement;
pub mod sophistry;
pub mod spec;
pub mod stereotype;
pub mod toxicity;
pub mod truthfulness;

pub use registry::{AnyVertical, BuildOptions, SavedSample, SavedScores, build};
