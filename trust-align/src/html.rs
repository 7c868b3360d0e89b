//! A self-contained HTML rendering of the demo report (no script, no network).

use std::fmt::Write;

use crate::demo::DemoReport;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn fmt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "n/a".into())
}

/// Renders `report` as one HTML page with per-vertical bar charts (95% CIs as whiskers), the
/// relative change against the first checkpoint, and the top attributed training pairs.
pub fn render(report: &DemoReport) -> String {
    let mut h = String::new();
    h.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>trust demo report</title><style>");
    h.push_str("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}.warn{background:#fff4d6;border:1px solid #e0c060;padding:1em}.pair{font-family:monospace;font-size:12px;white-space:pre-wrap;background:#f8f8f8;padding:6px;margin:4px 0}");
    h.push_str("</style></head><body><h1>trust demo: base → SFT → DPO</h1>");
    let _ = write!(
        h,
        "<p class=\"warn\"><b>Read this first.</b> {}</p>",
        esc(&report.disclaimer)
    );
    let _ = write!(
        h,
        "<p>Toxicity scorer: {}</p>",
        esc(&report.toxicity_scorer)
    );
    h.push_str("<h2>Training</h2><table><tr><th class=l>stage</th><th>steps</th><th>final loss</th><th>DPO margin</th><th>DPO reward accuracy</th></tr>");
    for (stage, l) in &report.training {
        let _ = write!(
            h,
            "<tr><td class=l>{}</td><td>{}</td><td>{:.3}</td><td>{}</td><td>{}</td></tr>",
            esc(stage),
            l.step,
            l.loss,
            fmt(l.margin),
            fmt(l.reward_accuracy)
        );
    }
    h.push_str("</table>");
    let first = report.checkpoints.first().cloned().unwrap_or_default();
    let verticals: Vec<String> = report
        .results
        .values()
        .next()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    for v in &verticals {
        let protocol = report
            .results
            .get(&first)
            .and_then(|m| m.get(v))
            .map(|r| r.protocol.clone())
            .unwrap_or_default();
        let _ = write!(
            h,
            "<h2 id=\"v-{0}\">{0} <small>(protocol {1})</small></h2>",
            esc(v),
            esc(&protocol)
        );
        let metric_names: Vec<String> = report
            .results
            .get(&first)
            .and_then(|m| m.get(v))
            .map(|r| r.metrics.iter().map(|m| m.name.clone()).collect())
            .unwrap_or_default();
        // Bar chart of the headline metric.
        if let Some(name) = metric_names.first() {
            let _ = write!(
                h,
                "<svg width=\"420\" height=\"{}\" role=\"img\" aria-label=\"{} by checkpoint\">",
                30 * report.checkpoints.len() + 20,
                esc(name)
            );
            for (i, c) in report.checkpoints.iter().enumerate() {
                let m = report
                    .results
                    .get(c)
                    .and_then(|x| x.get(v))
                    .and_then(|r| r.metrics.iter().find(|m| &m.name == name));
                let y = 10 + 30 * i;
                let _ = write!(
                    h,
                    "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text>",
                    y + 15,
                    esc(c)
                );
                if let Some(m) = m {
                    let w = |x: f64| 60.0 + 340.0 * x.clamp(0.0, 1.0);
                    if let Some(val) = m.value {
                        let _ = write!(
                            h,
                            "<rect x=\"60\" y=\"{y}\" width=\"{:.1}\" height=\"20\" fill=\"#4a7fb5\"/>",
                            w(val) - 60.0
                        );
                    }
                    if let (Some(lo), Some(hi)) = (m.ci_low, m.ci_high) {
                        let _ = write!(
                            h,
                            "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{}\" y2=\"{}\" stroke=\"#000\"/>",
                            w(lo),
                            w(hi),
                            y + 10,
                            y + 10
                        );
                    }
                }
            }
            h.push_str("</svg>");
        }
        h.push_str("<table><tr><th class=l>metric</th>");
        for c in &report.checkpoints {
            let _ = write!(h, "<th>{0}</th><th>{0} 95% CI</th>", esc(c));
        }
        for c in report.checkpoints.iter().skip(1) {
            let _ = write!(h, "<th>Δ% {} vs {}</th>", esc(c), esc(&first));
        }
        h.push_str("</tr>");
        for name in &metric_names {
            let _ = write!(h, "<tr><td class=l>{}</td>", esc(name));
            let get = |c: &str| {
                report
                    .results
                    .get(c)
                    .and_then(|x| x.get(v))
                    .and_then(|r| r.metrics.iter().find(|m| &m.name == name))
            };
            for c in &report.checkpoints {
                let m = get(c);
                let _ = write!(
                    h,
                    "<td>{}</td><td>{}</td>",
                    fmt(m.and_then(|m| m.value)),
                    m.map(|m| format!("[{}, {}]", fmt(m.ci_low), fmt(m.ci_high)))
                        .unwrap_or_default()
                );
            }
            let base = get(&first).and_then(|m| m.value);
            for c in report.checkpoints.iter().skip(1) {
                let rel = match (base, get(c).and_then(|m| m.value)) {
                    (Some(b), Some(x)) if b != 0.0 => format!("{:+.1}%", 100.0 * (x - b) / b),
                    _ => "n/a".into(),
                };
                let _ = write!(h, "<td>{rel}</td>");
            }
            h.push_str("</tr>");
        }
        h.push_str("</table>");
        for c in &report.checkpoints {
            if let Some(r) = report.results.get(c).and_then(|x| x.get(v)) {
                let _ = write!(
                    h,
                    "<p><small>{}: {} samples, {} failed, {} unparsed replies</small></p>",
                    esc(c),
                    r.n_samples,
                    r.n_failed,
                    r.n_unparsed
                );
            }
        }
    }
    if let Some(a) = &report.attribution {
        let _ = write!(
            h,
            "<h2 id=\"attribution\">Attribution: {} change through {}</h2><p>{} training pairs scored against {} test pairs. Test loss: {}.</p>",
            esc(&a.vertical),
            esc(&a.stage),
            a.n_train,
            a.n_test,
            esc(&a.test_loss)
        );
        for (title, list) in [
            ("Most helpful (lower the test loss)", &a.most_helpful),
            ("Most harmful (raise the test loss)", &a.most_harmful),
        ] {
            let _ = write!(h, "<h3>{title}</h3>");
            for p in list {
                let _ = write!(
                    h,
                    "<div class=\"pair\">#{} score {:+.3}\n…{}\nCHOSEN:{}\nREJECTED:{}</div>",
                    p.train_index,
                    p.score,
                    esc(&p.prompt),
                    esc(&p.chosen),
                    esc(&p.rejected)
                );
            }
        }
    }
    h.push_str("<h2>Timings (s)</h2><table>");
    for (k, v) in &report.timings {
        let _ = write!(h, "<tr><td class=l>{}</td><td>{v:.1}</td></tr>", esc(k));
    }
    h.push_str("</table></body></html>\n");
    h
}
