//! A clone alone is enough: with no `--data-dir` and no `TRUST_DATA_DIR`, `trust` finds the
//! benchmark data committed under the checkout's `data/`, from any working directory.

use std::process::Command;

#[test]
fn the_checkout_data_is_found_with_no_flag() {
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trust"))
        .arg("list")
        .env_remove("TRUST_DATA_DIR")
        .current_dir(elsewhere.path())
        .output()
        .expect("run trust");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../data")
        .canonicalize()
        .unwrap();
    assert!(
        stdout.contains(&format!("data directory: {}", want.display())),
        "{stdout}"
    );
    for rel in [
        "toxicity/toxic.jsonl",
        "privacy/pii_prompts.jsonl",
        "truthfulness/truth_mc.json",
    ] {
        let line = stdout.lines().find(|l| l.contains(rel)).unwrap_or_default();
        assert!(line.contains(" ok "), "{rel}: {line}");
    }
}

#[test]
fn a_data_folder_in_the_working_directory_wins_over_the_build_checkout() {
    // ./data with a SHA256SUMS naming the trust files is the data of the checkout one stands in.
    let here = tempfile::tempdir().unwrap();
    let data = here.path().join("data");
    std::fs::create_dir_all(data.join("toxicity")).unwrap();
    std::fs::write(
        data.join("SHA256SUMS"),
        "a51d4650b14af9c0e795a9cfca2949916855662cee7c8db3dd551d38735d80cb  toxicity/toxic.jsonl\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trust"))
        .arg("list")
        .env_remove("TRUST_DATA_DIR")
        .current_dir(here.path().join("data"))
        .output()
        .expect("run trust");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Its files are missing, so `trust list` reports them and exits 1.
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    // From inside data/ the search climbs to the folder that holds it.
    assert!(
        stdout.contains(&format!("data directory: {}", data.display())),
        "{stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.contains("toxicity/toxic.jsonl"))
        .unwrap();
    assert!(line.contains("missing"), "{line}");
}
