//! Exit codes and run bookkeeping of `trust` in CI pipelines: usage errors exit 2, work that did
//! not happen exits 1, broken pipes end quietly, the combined report merges, and `trust check`
//! gates regressions.

mod common;

use std::path::Path;

use common::trust;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `trust eval` into `out` with `extra` arguments; `--model mock` and `--limit 3` unless `extra`
/// sets them.
fn eval_mock(out: &Path, extra: &[&str]) -> std::process::Output {
    let mut base = vec!["eval"];
    if !extra.contains(&"--model") {
        base.extend(["--model", "mock"]);
    }
    if !extra.contains(&"--limit") {
        base.extend(["--limit", "3"]);
    }
    base.extend([
        "--samples",
        "1",
        "--bootstrap",
        "20",
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ]);
    trust(&[&base[..], extra].concat())
}

fn combined(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

/// The combined report's entry of `vertical`.
fn entry_of(report: &serde_json::Value, vertical: &str) -> Option<serde_json::Value> {
    report["verticals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["vertical"] == vertical)
        .cloned()
}

fn status_of(report: &serde_json::Value, vertical: &str) -> Option<String> {
    entry_of(report, vertical).map(|e| e["status"].as_str().unwrap().to_string())
}

#[test]
fn usage_errors_exit_2_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--protocol", "papr"], "no protocol `papr` for toxicity"),
        (&["--verticals", "toxicty"], "unknown vertical `toxicty`"),
        (
            &["--verticals", "toxicity", "--scorer", "none"],
            "--scorer none",
        ),
        (
            &["--protocol", "paper,bogus=paper"],
            "unknown vertical `bogus`",
        ),
        (&["--model", "mock:telepathy"], "unknown capability"),
    ];
    for (i, (args, needle)) in cases.iter().enumerate() {
        let out = dir.path().join(format!("run{i}"));
        let o = eval_mock(&out, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
        assert!(!out.join("report.json").exists(), "{args:?} wrote a report");
    }
    // clap's own usage errors also exit 2.
    let o = trust(&["eval", "--model", "mock", "--limit", "x", "--out", "y"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_vertical_that_cannot_run_or_has_failed_samples_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    // Beam search missing: the vertical fails, the others still run, exit 1.
    let out = dir.path().join("nobeam");
    let o = eval_mock(
        &out,
        &[
            "--model",
            "mock:generate,sampling",
            "--verticals",
            "stereotype,machine_ethics",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let r = combined(&out);
    assert_eq!(status_of(&r, "stereotype").as_deref(), Some("failed"));
    assert_eq!(status_of(&r, "machine_ethics").as_deref(), Some("ok"));
    // A server that answers nothing: every sample fails, the vertical has no scored sample.
    let out = dir.path().join("dead");
    let o = eval_mock(
        &out,
        &[
            "--model",
            "http://127.0.0.1:9/v1#nothing;vllm;retries=0",
            "--verticals",
            "machine_ethics",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no sample was scored"),
        "{}",
        stderr(&o)
    );
    // The summary line shows the counts.
    assert!(
        stdout(&o).contains("machine_ethics\tpaper\tsamples=3 ok=0 failed=3"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn the_summary_shows_counts_and_every_headline_metric() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ok");
    let o = eval_mock(&out, &["--verticals", "privacy", "--limit", "6"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(
        s.contains("privacy\tpaper\tsamples=6 ok=6 failed=0 unparsed="),
        "{s}"
    );
    for m in ["leakage_rate", "leakage_rate_wo_refusal", "refusal_rate"] {
        assert!(s.contains(&format!("privacy\tpaper\t{m}\t")), "{m}: {s}");
    }
    assert!(
        s.contains("slice metrics in"),
        "hidden slices are counted: {s}"
    );
}

#[test]
fn list_fails_when_data_files_are_missing() {
    let empty = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_trust"))
        .args(["list", "--data-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("data files missing"), "{}", stderr(&o));
    // The checkout's data passes.
    let o = trust(&["list"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_the_process_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_trust"))
        .args([
            "eval",
            "--model",
            "mock",
            "--dry-run",
            "--verticals",
            "all",
            "--limit",
            "200",
        ])
        .env("TRUST_DATA_DIR", common::data_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The read end is dropped here: every later write hits a broken pipe.
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.signal(), Some(13), "SIGPIPE: {:?} {err}", o.status);
}

#[test]
fn the_combined_report_keeps_verticals_of_earlier_invocations() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    assert!(
        eval_mock(&out, &["--verticals", "stereotype"])
            .status
            .success()
    );
    let o = eval_mock(&out, &["--verticals", "privacy", "--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = combined(&out);
    assert_eq!(status_of(&r, "stereotype").as_deref(), Some("ok"));
    assert_eq!(status_of(&r, "privacy").as_deref(), Some("ok"));
    // A refused rerun (no --resume) fails, but does not wipe the finished vertical.
    let o = eval_mock(&out, &["--verticals", "stereotype"]);
    assert_eq!(o.status.code(), Some(1));
    let r = combined(&out);
    let st = entry_of(&r, "stereotype").unwrap();
    assert_eq!(st["status"], "ok");
    assert_eq!(st["last_attempt"]["status"], "failed");
    assert_eq!(status_of(&r, "privacy").as_deref(), Some("ok"));
    // Report order is kept.
    let names: Vec<&str> = r["verticals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["vertical"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["stereotype", "privacy"]);
}

/// Sets every truthfulness record's MC1 outcome in `run` to `value`.
fn force_mc1(run: &Path, value: f64) {
    let p = run.join("truthfulness/samples.jsonl");
    let text = std::fs::read_to_string(&p).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut r: serde_json::Value = serde_json::from_str(line).unwrap();
        r["outcome"]["values"]["mc1"] = serde_json::json!(value);
        out.push_str(&serde_json::to_string(&r).unwrap());
        out.push('\n');
    }
    std::fs::write(p, out).unwrap();
}

#[test]
fn check_gates_regressions_past_their_bound() {
    let dir = tempfile::tempdir().unwrap();
    let (base, cand) = (dir.path().join("base"), dir.path().join("cand"));
    for run in [&base, &cand] {
        let o = eval_mock(
            run,
            &[
                "--verticals",
                "truthfulness,machine_ethics",
                "--protocol",
                "paper,truthfulness=loglik",
                "--limit",
                "30",
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let check = |bounds: &str| {
        trust(&[
            "check",
            "--baseline",
            base.to_str().unwrap(),
            "--candidate",
            cand.to_str().unwrap(),
            "--max-regression",
            bounds,
            "--bootstrap",
            "200",
        ])
    };
    // Identical runs: no change, pass.
    let o = check("truthfulness.mc1_accuracy=0.05,machine_ethics.fnr=0.05");
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o).matches("\tpass").count(), 2, "{}", stdout(&o));
    // The candidate gets every item wrong: accuracy falls by 1.0, the interval excludes 0.
    force_mc1(&base, 1.0);
    force_mc1(&cand, 0.0);
    let o = check("truthfulness.mc1_accuracy=0.05,machine_ethics.fnr=0.05");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let s = stdout(&o);
    assert!(
        s.contains("truthfulness\tmc1_accuracy\t1.0000\t0.0000\t-1.0000"),
        "{s}"
    );
    assert!(s.contains("REGRESSED"), "{s}");
    assert!(
        stderr(&o).contains("1 of 2 bounded metric(s) regressed"),
        "{}",
        stderr(&o)
    );
    // The same fall read as an improvement (explicit direction): pass.
    let o = check("truthfulness.mc1_accuracy=+0.05");
    assert!(o.status.success(), "{}", stdout(&o));
    // A bound the runs cannot answer fails the gate rather than passing it.
    let o = check("privacy.leakage_rate=0.1,truthfulness.no_such_metric=+0.1");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o).matches("NOT CHECKED").count(),
        2,
        "{}",
        stdout(&o)
    );
    // JSON output is the library's report.
    let o = trust(&[
        "check",
        "--baseline",
        base.to_str().unwrap(),
        "--candidate",
        cand.to_str().unwrap(),
        "--max-regression",
        "truthfulness.mc1_accuracy=0.05",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(j["rows"][0]["verdict"]["status"], "regressed");
    assert_eq!(j["rows"][0]["change"]["n_paired"], 30);
    // Bad bounds are usage errors.
    let o = check("truthfulness.mc1_accuracy");
    assert_eq!(o.status.code(), Some(2));
    let o = check("privacy.refusal_rate=0.1");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no known worse direction"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn library_errors_get_the_cli_flag_that_fixes_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let out_s = out.to_str().unwrap();
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            "mock",
            "--verticals",
            "privacy",
            "--limit",
            "2",
            "--bootstrap",
            "10",
            "--out",
            out_s,
        ];
        args.extend_from_slice(extra);
        common::trust(&args)
    };
    assert!(eval(&[]).status.success());
    let again = eval(&[]);
    assert_eq!(again.status.code(), Some(1));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("already holds results") && err.contains("pass --resume"),
        "{err}"
    );
    let bad = eval(&["--data-dir", "/nonexistent-trust-data", "--resume"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("/nonexistent-trust-data is not a directory") && err.contains("--data-dir"),
        "{err}"
    );
    assert_eq!(err.matches("not a directory").count(), 1, "{err}");
}
