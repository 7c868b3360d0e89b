//! The `my-trust` example binary: `trust_cli::run` with a Rust vertical registered gives the
//! whole CLI, the custom vertical beside the built-in ones.
use std::path::Path;
use std::process::{Command, Output};

/// `my-trust eval --model mock --verticals VERTICALS ... --out OUT`.
fn eval(verticals: &str, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_my-trust"))
        .args(["eval", "--model", "mock", "--verticals", verticals])
        .args([
            "--limit",
            "3",
            "--bootstrap",
            "10",
            "--no-progress",
            "--out",
        ])
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn a_users_binary_runs_its_vertical_with_the_built_in_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = eval("capitals,machine_ethics", &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("capitals\tgreedy\tsamples=3 ok=3"),
        "{stdout}"
    );
    assert!(
        stdout.contains("machine_ethics\tpaper\tsamples=3"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("capitals/report.json")).unwrap())
            .unwrap();
    // The mock model never names a capital.
    assert_eq!(report["metrics"][0]["name"], "accuracy");
    assert_eq!(report["metrics"][0]["value"], 0.0);
    // The registry lists it; the built-in names stay reserved; usage errors still exit 2.
    let o = eval("capitalz", &dir.path().join("x"));
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("privacy, capitals"), "{stderr}");
}
