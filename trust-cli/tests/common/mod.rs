//! Helpers shared by the `trust` binary's integration tests.
#![allow(dead_code)] // each test file uses a subset

use std::path::PathBuf;
use std::process::{Command, Output};

/// `$TRUST_DATA_DIR`, else the repository's `data/`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("TRUST_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../data")))
}

/// Runs the built `trust` binary with `args` and the data directory in its environment.
pub fn trust(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_trust"))
        .args(args)
        .env("TRUST_DATA_DIR", data_dir())
        .output()
        .expect("run trust")
}
