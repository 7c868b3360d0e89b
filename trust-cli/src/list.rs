//! `trust list`: verticals and their protocols, data files found and their checksums (exit 1
//! when a file is missing or does not match its published checksum).

use std::path::PathBuf;

use trust_core::DataDir;

/// Arguments of `trust list`.
#[derive(clap::Args)]
pub struct ListArgs {
    /// Data directory (layout of data/; default: $TRUST_DATA_DIR, else the checkout's data/).
    #[arg(long, env = "TRUST_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

pub fn run(a: ListArgs) -> anyhow::Result<()> {
    println!("verticals and their protocols (default: paper):");
    for v in trust_verticals::registry::known_verticals() {
        let protocols = trust_verticals::registry::protocols(&v).unwrap_or_default();
        println!("  {v:<16} {}", protocols.join(", "));
    }
    let data = DataDir::resolve(a.data_dir.as_deref())?;
    println!("data directory: {}", data.root().display());
    let (mut missing, mut mismatched) = (0usize, 0usize);
    for (rel, _) in trust_core::data::KNOWN_FILES {
        match data.check(rel) {
            Ok(c) => {
                let status = match c.matches_known {
                    Some(true) => "ok",
                    Some(false) => {
                        mismatched += 1;
                        "CHECKSUM MISMATCH"
                    }
                    None => "unknown",
                };
                println!("  {rel:<40} {status:<18} {}", c.sha256);
            }
            Err(_) => {
                missing += 1;
                println!("  {rel:<40} missing");
            }
        }
    }
    if missing + mismatched > 0 {
        anyhow::bail!(
            "{}: {missing} of {} data files missing, {mismatched} with a checksum mismatch",
            data.root().display(),
            trust_core::data::KNOWN_FILES.len()
        );
    }
    Ok(())
}
