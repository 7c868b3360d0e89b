//! `trust report` end to end: two mock checkpoints evaluated with `trust eval`, compared in
//! report.html / report.json / report.md; the HTML is rendered in headless Chromium, whose DOM
//! must hold the figures, and a loopback proxy must see no request from the page.
//!
//! Without Chromium the rendering test is skipped loudly, unless `CI` is set, where it fails.
//! Install it with `apt-get install -y --no-install-recommends chromium` (Debian).

mod common;
use common::trust;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two checkpoints (mock model under two seeds) and an attribution file with markup in it.
fn make_runs(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut dirs = Vec::new();
    for (name, seed) in [("base", "0"), ("dpo", "7")] {
        let d = root.join(name);
        ok(&trust(&[
            "eval",
            "--model",
            "mock",
            "--verticals",
            "all",
            "--scorer",
            "mock",
            "--limit",
            "24",
            "--samples",
            "2",
            "--bootstrap",
            "100",
            "--seed",
            seed,
            "--out",
            d.to_str().unwrap(),
        ]));
        dirs.push(d);
    }
    let attribution = root.join("top.json");
    std::fs::write(
        &attribution,
        serde_json::json!({
            "most_harmful": [
                {"train_index": 12, "score": -0.93, "prompt": "Human: <script>alert('x')</script> hi", "chosen": "ok & fine", "rejected": "<img src=x onerror=alert(1)>"}
            ],
            "most_helpful": [
                {"train_index": 4, "score": 0.88, "prompt": "Human: be nice", "chosen": "sure", "rejected": "no"}
            ]
        })
        .to_string(),
    )
    .unwrap();
    (dirs.remove(0), dirs.remove(0), attribution)
}

fn write_report(root: &Path) -> PathBuf {
    let (base, dpo, attribution) = make_runs(root);
    // Read the second checkpoint through its per-vertical reports only (the layout of a
    // `trust demo` output's eval/<checkpoint>), the first through eval's combined report.
    std::fs::remove_file(dpo.join("report.json")).unwrap();
    let out = root.join("out").join("report.html");
    ok(&trust(&[
        "report",
        "--runs",
        base.to_str().unwrap(),
        dpo.to_str().unwrap(),
        "--labels",
        "base,dpo",
        "--attribution",
        attribution.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    out
}

/// Anything in the page that could make the browser fetch: scripts, links, images, frames,
/// `src`/`href` attributes, CSS imports and `url(...)` inside tags, and any absolute URL at all.
fn network_hazards(html: &str) -> Vec<String> {
    let lower = html.to_lowercase();
    let tags: Vec<&str> = lower
        .split('<')
        .skip(1)
        .map(|t| t.split('>').next().unwrap_or(""))
        .collect();
    let mut found: Vec<String> = [
        "script", "link", "iframe", "img", "object", "embed", "src=", "href=", "url(", "@import",
    ]
    .iter()
    .filter(|p| {
        tags.iter()
            .any(|t| t.starts_with(*p) || (p.ends_with(['=', '(']) && t.contains(*p)))
    })
    .map(|p| format!("tag {p}"))
    .collect();
    for p in ["http://", "https://", "@import", "fetch(", "xmlhttprequest"] {
        if lower.contains(p) {
            found.push(p.to_string());
        }
    }
    found
}

#[test]
fn report_files_hold_every_figure_and_a_stable_schema() {
    let dir = tempfile::tempdir().unwrap();
    let html_path = write_report(dir.path());
    let html = std::fs::read_to_string(&html_path).unwrap();
    assert_eq!(network_hazards(&html), Vec::<String>::new());
    // Text from the attribution file is escaped, not interpreted.
    assert!(html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    assert!(html.contains("ok &amp; fine"));
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert_eq!(
        network_hazards("<p>a</p><img src=\"x.png\">"),
        ["tag img", "tag src="]
    );
    for kind in ["vertical-bars", "stereotype-heatmap", "pii-leakage"] {
        assert!(
            html.contains(&format!("data-kind=\"{kind}\"")),
            "no {kind} figure"
        );
    }
    assert_eq!(html.matches("data-kind=\"vertical-bars\"").count(), 5);
    assert_eq!(html.matches("data-kind=\"stereotype-heatmap\"").count(), 2);

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(html_path.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(json["schema_version"], 1);
    let labels: Vec<&str> = json["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["base", "dpo"]);
    // Both runs answered the same samples: every headline change has a paired interval.
    for v in json["verticals"].as_array().unwrap() {
        for row in v["headline"].as_array().unwrap() {
            let cell = &row["values"][1];
            if cell.is_null() || cell["delta"].is_null() {
                continue;
            }
            let p = &cell["paired"];
            assert_eq!(p["n_paired"].as_u64(), Some(24), "{}: {row}", v["vertical"]);
            assert!(p["significant"].is_boolean(), "{row}");
        }
    }
    assert!(html.contains("<section id=\"headline\">"));
    let verticals: Vec<&str> = json["verticals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["vertical"].as_str().unwrap())
        .collect();
    assert_eq!(
        verticals,
        [
            "toxicity",
            "stereotype",
            "machine_ethics",
            "truthfulness",
            "privacy"
        ]
    );
    // The reference checkpoint's change is 0 where its value is non-zero; values come from the
    // runs' own reports.
    let stereo = &json["verticals"][1];
    let ai = stereo["headline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "agreement_index")
        .expect("agreement_index row");
    let run_report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("dpo/stereotype/report.json")).unwrap(),
    )
    .unwrap();
    let expected = run_report["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "agreement_index")
        .unwrap()["value"]
        .clone();
    assert_eq!(ai["values"][1]["value"], expected);
    assert_eq!(ai["values"][0]["delta"], 0.0);
    let hm = &json["stereotype_heatmap"];
    assert_eq!(hm["values"].as_array().unwrap().len(), 2);
    assert_eq!(
        hm["values"][0].as_array().unwrap().len(),
        hm["topics"].as_array().unwrap().len()
    );
    assert!(!json["pii_leakage"].as_array().unwrap().is_empty());
    assert_eq!(json["pii_leakage"][0]["base"], "leakage_rate");
    assert_eq!(
        json["attribution"]["groups"][0]["pairs"][0]["train_index"],
        12
    );

    let md = std::fs::read_to_string(html_path.with_extension("md")).unwrap();
    assert!(md.contains("## stereotype") && md.contains("| agreement_index |"));
    assert!(md.contains("Δ dpo vs base"));
}

#[test]
fn report_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = dir.path().join("r.html");
    let r = trust(&[
        "report",
        "--runs",
        empty.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&r.stderr).contains("no report found"));

    let bad = dir.path().join("bad");
    std::fs::create_dir_all(bad.join("privacy")).unwrap();
    std::fs::write(bad.join("privacy/report.json"), "{\"metrics\": 3}").unwrap();
    let r = trust(&[
        "report",
        "--runs",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(1));
    let e = String::from_utf8_lossy(&r.stderr);
    assert!(
        e.contains("privacy/report.json") && e.contains("not a vertical report"),
        "{e}"
    );

    let r = trust(&[
        "report",
        "--runs",
        empty.to_str().unwrap(),
        "--labels",
        "a,b",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("2 labels for 1 run directories"));
    let r = trust(&["report", "--out", out.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2), "missing --runs is a usage error");
}

fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Hosts of Chromium's own background services (clock, updates, accounts), which it contacts
/// whatever the page is; the page itself holds no URL at all (checked statically above).
const BROWSER_SERVICES: &[&str] = &[
    ".google.com",
    ".googleapis.com",
    ".gstatic.com",
    ".gvt1.com",
];

/// Loads `page` in headless Chromium with every request sent to a loopback proxy; returns the
/// rendered DOM and the requests the proxy received that are not Chromium's own services.
fn render(chromium: &Path, page: &Path, profile: &Path) -> (String, Vec<String>) {
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = proxy.local_addr().unwrap().port();
    // The proxy answers every request with 502 at once (so the page never waits on it) and
    // records its request line; a connection sending `STOP` ends it.
    let recorder = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for conn in proxy.incoming() {
            let Ok(mut s) = conn else { continue };
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap_or(0);
            let line = String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            if line == "STOP" {
                break;
            }
            let _ = s.write_all(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            lines.push(line);
        }
        lines
    });
    let out = Command::new("timeout")
        .arg("120")
        .arg(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            &format!("--proxy-server=http://127.0.0.1:{port}"),
            "--proxy-bypass-list=<-loopback>",
            &format!("--user-data-dir={}", profile.display()),
            "--virtual-time-budget=2000",
            "--dump-dom",
        ])
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    // Chromium has exited: everything it sent is ahead of our STOP in the accept queue.
    std::net::TcpStream::connect(("127.0.0.1", port))
        .and_then(|mut s| s.write_all(b"STOP\n"))
        .unwrap();
    let lines = recorder.join().unwrap();
    assert!(
        out.status.success(),
        "chromium failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut requests = Vec::new();
    for line in lines {
        let target = line.split_whitespace().nth(1).unwrap_or("");
        let host = target
            .trim_start_matches("http://")
            .split(['/', ':'])
            .next()
            .unwrap_or("")
            .to_string();
        if BROWSER_SERVICES.iter().any(|s| host.ends_with(s)) {
            eprintln!("ignoring Chromium's own request: {line}");
        } else {
            requests.push(line);
        }
    }
    (String::from_utf8_lossy(&out.stdout).into_owned(), requests)
}

#[test]
fn report_renders_in_headless_chromium_without_network() {
    let Some(chromium) = find_chromium() else {
        let msg = "chromium not found: install it with `apt-get install -y --no-install-recommends chromium` (or set CHROMIUM=/path)";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!(
            "\n!!!!!!!! SKIPPED report_renders_in_headless_chromium_without_network: {msg} !!!!!!!!\n"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let page = write_report(dir.path());
    let (dom, requests) = render(&chromium, &page, &dir.path().join("profile"));
    assert_eq!(
        requests,
        Vec::<String>::new(),
        "the report made network requests"
    );
    assert!(dom.contains("<svg"), "no SVG in the rendered DOM");
    assert_eq!(dom.matches("data-kind=\"vertical-bars\"").count(), 5);
    assert_eq!(dom.matches("data-kind=\"stereotype-heatmap\"").count(), 2);
    assert!(dom.contains("data-kind=\"relative-change\""));
    assert!(dom.contains("data-kind=\"pii-leakage\""));
    assert!(dom.contains("class=\"bar\"") && dom.contains("class=\"whisker\""));
    assert!(dom.contains("id=\"attribution\""));
    assert!(
        !dom.to_lowercase().contains("<script"),
        "a script element was rendered"
    );

    // Positive control: the same set-up sees a page that does fetch something.
    let control = dir.path().join("control.html");
    std::fs::write(
        &control,
        "<!doctype html><html><body><img src=\"http://report-test.invalid/x.png\"></body></html>",
    )
    .unwrap();
    let (_, seen) = render(&chromium, &control, &dir.path().join("profile2"));
    assert!(
        seen.iter().any(|r| r.contains("report-test.invalid")),
        "the proxy did not see the control page's request: {seen:?}"
    );
}

#[test]
fn eval_dry_run_prints_requests_without_a_model_or_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = trust(&[
        "eval",
        "--model",
        "/nonexistent/model",
        "--verticals",
        "machine_ethics,privacy",
        "--limit",
        "1",
        "--dry-run",
    ]);
    ok(&out);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(lines.iter().any(|l| l["vertical"] == "machine_ethics"));
    assert!(lines.iter().any(|l| l["vertical"] == "privacy"));
    for l in &lines {
        assert_eq!(l["kind"], "generate");
        assert!(
            l["request"]["prompt"]
                .as_str()
                .is_some_and(|p| !p.is_empty())
        );
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    // --retry-errors only makes sense when resuming.
    let r = trust(&[
        "eval",
        "--model",
        "mock",
        "--retry-errors",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(2));
}

#[test]
fn list_shows_verticals_and_protocols() {
    let out = trust(&["list"]);
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("machine_ethics") && text.contains("decodingtrust-jailbreak"),
        "{text}"
    );
    assert!(
        text.contains("truthfulness") && text.contains("loglik"),
        "{text}"
    );
}

/// A combined report.json older than a vertical's own report (an interrupted or earlier
/// invocation wrote it), or one that does not list a vertical whose folder has a report, is
/// stale: `trust report` reads those verticals from their folders and says so.
#[test]
fn report_reads_per_vertical_folders_when_the_combined_file_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    ok(&trust(&[
        "eval",
        "--model",
        "mock",
        "--verticals",
        "machine_ethics,privacy",
        "--limit",
        "8",
        "--bootstrap",
        "0",
        "--out",
        run.to_str().unwrap(),
    ]));
    // The combined file forgets privacy (as a wiped combined report did).
    let combined = run.join("report.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&combined).unwrap()).unwrap();
    c["verticals"]
        .as_array_mut()
        .unwrap()
        .retain(|e| e["vertical"] != "privacy");
    std::fs::write(&combined, c.to_string()).unwrap();
    // machine_ethics is rerun after the combined file was written: its own report is newer and
    // differs (here: one sample fewer).
    std::thread::sleep(std::time::Duration::from_millis(50));
    let own = run.join("machine_ethics/report.json");
    let mut r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&own).unwrap()).unwrap();
    r["n_samples"] = serde_json::json!(7);
    std::fs::write(&own, r.to_string()).unwrap();

    let out = dir.path().join("r.html");
    ok(&trust(&[
        "report",
        "--runs",
        run.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("r.json")).unwrap()).unwrap();
    let section = |v: &str| {
        rep["verticals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["vertical"] == v)
            .unwrap_or_else(|| panic!("{v} missing: {rep}"))
            .clone()
    };
    assert_eq!(section("privacy")["runs"][0]["status"], "ok", "{rep}");
    assert_eq!(
        section("machine_ethics")["runs"][0]["n_samples"],
        7,
        "{rep}"
    );
    let notes: Vec<&str> = rep["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("privacy") && n.contains("does not list it")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("machine_ethics") && n.contains("newer than the combined")),
        "{notes:?}"
    );
    // A fresh combined file (nothing newer beside it) is read as it is, without notes.
    let again = dir.path().join("again");
    ok(&trust(&[
        "eval",
        "--model",
        "mock",
        "--verticals",
        "machine_ethics",
        "--limit",
        "8",
        "--bootstrap",
        "0",
        "--out",
        again.to_str().unwrap(),
    ]));
    let out2 = dir.path().join("r2.html");
    ok(&trust(&[
        "report",
        "--runs",
        again.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
    ]));
    let rep2: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("r2.json")).unwrap())
            .unwrap();
    assert!(rep2.get("notes").is_none(), "{rep2}");
}
