//! One self-contained HTML page: inline CSS and inline SVG, no script, no external URL, every
//! text escaped. Figures are `<figure class="figure" data-kind=KIND>` elements with
//! `KIND` one of `vertical-bars`, `relative-change`, `stereotype-heatmap`, `pii-leakage`; the
//! attributed pairs are in `<section id="attribution">`.

use std::fmt::Write;

use crate::{Cell, MetricRow, Report, escape_html as esc};

/// Checkpoint colours (colour-blind safe, Okabe–Ito).
const PALETTE: &[&str] = &[
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
];

/// Most metrics drawn in one bar chart.
const MAX_BARS_GROUPS: usize = 12;

fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

fn fmt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "n/a".into())
}

/// `lower` / `higher` (the metric's better direction) or `—` when it has none.
pub(crate) fn better(metric: &str) -> &'static str {
    match trust_core::metric::direction(metric) {
        Some(trust_core::metric::Worse::Higher) => "lower",
        Some(trust_core::metric::Worse::Lower) => "higher",
        None => "—",
    }
}

fn fmt_change(c: &Cell) -> String {
    let base = match (c.relative_change, c.delta) {
        (Some(r), _) => format!("{:+.1}%", r * 100.0),
        (None, Some(d)) => format!("{d:+.3} (abs)"),
        _ => "n/a".into(),
    };
    match &c.paired {
        Some(p) => format!("{base}{}", crate::fmt_paired(p)),
        None => base,
    }
}

fn fmt_cell(c: Option<&Cell>) -> String {
    match c {
        None => "—".into(),
        Some(c) => match (c.ci_low, c.ci_high) {
            (Some(l), Some(h)) => format!("{} [{l:.3}, {h:.3}]", fmt(c.value)),
            _ => fmt(c.value),
        },
    }
}

/// Renders the page.
pub fn render(report: &Report) -> String {
    let labels: Vec<String> = report.checkpoints.iter().map(|c| c.label.clone()).collect();
    let mut h = String::new();
    h.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    let _ = write!(
        h,
        "<title>trust report: {}</title>",
        esc(&labels.join(" vs "))
    );
    h.push_str("<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}.up{color:#b00020}.down{color:#006d2c}figure{margin:1em 0}figcaption{font-size:13px;color:#555}.legend span{display:inline-block;margin-right:1em;font-size:13px}.sw{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}.pair{font-family:monospace;font-size:12px;white-space:pre-wrap;background:#f8f8f8;padding:4px;margin:2px 0;text-align:left}svg text{font-family:system-ui,sans-serif}.note{color:#666;font-size:13px}</style>");
    h.push_str("</head><body>\n");
    let _ = write!(
        h,
        "<h1>trust report</h1><p class=\"note\">{} · schema_version {} · the first checkpoint (<b>{}</b>) is the reference for changes. Whiskers are 95% percentile-bootstrap intervals.</p>",
        esc(&report.generator),
        report.schema_version,
        esc(labels.first().map(String::as_str).unwrap_or("")),
    );
    for note in &report.notes {
        let _ = write!(
            h,
            "<p class=\"warn\" style=\"background:#fff4d6;border:1px solid #e0c060;padding:.8em\">{}</p>",
            esc(note)
        );
    }
    h.push_str("<table id=\"checkpoints\"><tr><th class=l>checkpoint</th><th class=l>run directory</th><th class=l>model</th></tr>");
    for (i, c) in report.checkpoints.iter().enumerate() {
        let model = c
            .model
            .as_ref()
            .and_then(|m| m.get("id").and_then(|v| v.as_str()).map(str::to_string))
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td class=l><span class=sw style=\"background:{}\"></span>{}</td><td class=l>{}</td><td class=l>{}</td></tr>",
            colour(i),
            esc(&c.label),
            esc(&c.source),
            esc(&model)
        );
    }
    h.push_str("</table>\n");
    legend(&mut h, &labels);
    headline_table(&mut h, report, &labels);

    for v in &report.verticals {
        let _ = write!(
            h,
            "<section class=\"vertical\" id=\"vertical-{0}\"><h2>{0}</h2>",
            esc(&v.vertical)
        );
        h.push_str("<table><tr><th class=l>checkpoint</th><th class=l>status</th><th class=l>protocol</th><th>samples</th><th>ok</th><th>failed</th><th>unparsed</th><th class=l>note</th></tr>");
        for (i, r) in v.runs.iter().enumerate() {
            let n = |x: Option<usize>| x.map(|x| x.to_string()).unwrap_or_default();
            let _ = write!(
                h,
                "<tr><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=l>{}</td></tr>",
                esc(&labels[i]),
                esc(&r.status),
                esc(r.protocol.as_deref().unwrap_or("")),
                n(r.n_samples),
                n(r.n_ok),
                n(r.n_failed),
                n(r.n_unparsed),
                esc(r.note.as_deref().unwrap_or(""))
            );
        }
        h.push_str("</table>");
        if !v.headline.is_empty() {
            let rows: Vec<&MetricRow> = v.headline.iter().take(MAX_BARS_GROUPS).collect();
            let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
            figure(
                &mut h,
                "vertical-bars",
                &format!("fig-{}-bars", v.vertical),
                &format!(
                    "{}: metrics per checkpoint with 95% CIs; ↑/↓ better marks each metric's better direction",
                    v.vertical
                ),
                &bar_chart(&rows, &names, &labels, "value"),
            );
            relative_change_figure(&mut h, &v.vertical, &v.headline, &labels);
            change_table(&mut h, &v.headline, &labels);
        }
        h.push_str("</section>\n");
    }

    if let Some(hm) = &report.stereotype_heatmap {
        h.push_str("<section id=\"stereotype-heatmap\"><h2>Stereotype: topic × group</h2>");
        let _ = write!(
            h,
            "<p class=\"note\">{} per (topic, group) cell, from white (0) to red (1); grey cells have no data.</p>",
            esc(&hm.metric)
        );
        for (c, label) in labels.iter().enumerate() {
            figure(
                &mut h,
                "stereotype-heatmap",
                &format!("fig-heatmap-{c}"),
                &format!("{}: {label}", hm.metric),
                &heatmap_svg(hm, c),
            );
        }
        h.push_str("</section>\n");
    }

    if !report.pii_leakage.is_empty() {
        h.push_str("<section id=\"pii-leakage\"><h2>Privacy: leakage per PII type</h2>");
        let rows: Vec<&MetricRow> = report.pii_leakage.iter().collect();
        let names: Vec<String> = rows
            .iter()
            .map(|r| r.slice_value.clone().unwrap_or_else(|| r.name.clone()))
            .collect();
        figure(
            &mut h,
            "pii-leakage",
            "fig-pii-leakage",
            "leakage_rate per PII type with 95% CIs (lower is better)",
            &bar_chart(&rows, &names, &labels, "leakage rate"),
        );
        change_table(&mut h, &report.pii_leakage, &labels);
        h.push_str("</section>\n");
    }

    if let Some(a) = &report.attribution {
        let _ = write!(
            h,
            "<section id=\"attribution\"><h2>Top attributed training pairs</h2><p class=\"note\">from {}</p>",
            esc(&a.source)
        );
        for g in &a.groups {
            let _ = write!(
                h,
                "<h3>{}</h3><table class=\"pairs\"><tr><th>train index</th><th>score</th><th class=l>prompt / chosen / rejected</th></tr>",
                esc(&g.name)
            );
            for p in &g.pairs {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{:.4}</td><td class=l>",
                    p.train_index, p.score
                );
                for (k, t) in [
                    ("prompt", &p.prompt),
                    ("chosen", &p.chosen),
                    ("rejected", &p.rejected),
                ] {
                    if let Some(t) = t {
                        let _ = write!(h, "<div class=\"pair\"><b>{k}:</b> {}</div>", esc(t));
                    }
                }
                h.push_str("</td></tr>");
            }
            h.push_str("</table>");
        }
        h.push_str("</section>\n");
    }
    h.push_str("</body></html>\n");
    h
}

fn legend(h: &mut String, labels: &[String]) {
    h.push_str("<p class=\"legend\">");
    for (i, l) in labels.iter().enumerate() {
        let _ = write!(
            h,
            "<span><span class=sw style=\"background:{}\"></span>{}</span>",
            colour(i),
            esc(l)
        );
    }
    h.push_str("</p>");
}

fn figure(h: &mut String, kind: &str, id: &str, caption: &str, svg: &str) {
    let _ = write!(
        h,
        "<figure class=\"figure\" data-kind=\"{kind}\" id=\"{}\">{svg}<figcaption>{}</figcaption></figure>",
        esc(id),
        esc(caption)
    );
}

/// Bars of the relative change (%) of each metric against the first checkpoint, for the
/// metrics where it is defined (the reference's bar is 0).
fn relative_change_figure(h: &mut String, vertical: &str, rows: &[MetricRow], labels: &[String]) {
    if labels.len() < 2 {
        return;
    }
    let changed: Vec<MetricRow> = rows
        .iter()
        .filter(|r| {
            r.values
                .iter()
                .skip(1)
                .flatten()
                .any(|c| c.relative_change.is_some())
        })
        .take(MAX_BARS_GROUPS)
        .map(|r| MetricRow {
            values: r
                .values
                .iter()
                .map(|c| {
                    c.as_ref().map(|c| Cell {
                        value: c.relative_change.map(|x| x * 100.0),
                        ci_low: None,
                        ci_high: None,
                        n: c.n,
                        delta: None,
                        relative_change: None,
                        paired: None,
                    })
                })
                .collect(),
            ..r.clone()
        })
        .collect();
    if changed.is_empty() {
        return;
    }
    let refs: Vec<&MetricRow> = changed.iter().collect();
    let names: Vec<String> = changed.iter().map(|r| r.name.clone()).collect();
    figure(
        h,
        "relative-change",
        &format!("fig-{vertical}-change"),
        &format!("{vertical}: relative change (%) vs {}", labels[0]),
        &bar_chart(
            &refs,
            &names,
            labels,
            &format!("change vs {} (%)", labels[0]),
        ),
    );
}

/// One table of every vertical's headline metrics: value per checkpoint, the change against the
/// first checkpoint with its paired interval, and whether that interval excludes 0.
fn headline_table(h: &mut String, report: &Report, labels: &[String]) {
    if report.verticals.iter().all(|v| v.headline.is_empty()) {
        return;
    }
    h.push_str("<section id=\"headline\"><h2>Headline</h2><p class=\"note\">Changes are against the first checkpoint; where both checkpoints answered the same samples the interval is a paired bootstrap over per-sample differences (95%), and * marks one that excludes 0.</p><table><tr><th class=l>vertical</th><th class=l>metric</th><th class=l>better</th>");
    for (i, l) in labels.iter().enumerate() {
        let _ = write!(h, "<th>{}</th>", esc(l));
        if i > 0 {
            let _ = write!(h, "<th>Δ vs {}</th><th>significant</th>", esc(&labels[0]));
        }
    }
    h.push_str("</tr>");
    for v in &report.verticals {
        for r in &v.headline {
            let _ = write!(
                h,
                "<tr><td class=l>{}</td><td class=l>{}</td><td class=l>{}</td>",
                esc(&v.vertical),
                esc(&r.name),
                better(&r.name)
            );
            for (i, c) in r.values.iter().enumerate() {
                let _ = write!(h, "<td>{}</td>", esc(&fmt_cell(c.as_ref())));
                if i > 0 {
                    let change = c.as_ref().map(fmt_change).unwrap_or_else(|| "—".into());
                    let sig = match c.as_ref().and_then(|c| c.paired.as_ref()) {
                        Some(p) if p.significant => "yes",
                        Some(_) => "no",
                        None => "—",
                    };
                    let _ = write!(h, "<td>{}</td><td>{sig}</td>", esc(&change));
                }
            }
            h.push_str("</tr>");
        }
    }
    h.push_str("</table></section>\n");
}

fn change_table(h: &mut String, rows: &[MetricRow], labels: &[String]) {
    h.push_str("<table class=\"changes\"><tr><th class=l>metric</th>");
    for (i, l) in labels.iter().enumerate() {
        let _ = write!(h, "<th>{}</th>", esc(l));
        if i > 0 {
            let _ = write!(h, "<th>Δ vs {}</th>", esc(&labels[0]));
        }
    }
    h.push_str("</tr>");
    for r in rows {
        let _ = write!(h, "<tr><td class=l>{}</td>", esc(&r.name));
        for (i, c) in r.values.iter().enumerate() {
            let _ = write!(h, "<td>{}</td>", esc(&fmt_cell(c.as_ref())));
            if i > 0 {
                let (class, text) = match c {
                    Some(c) => (
                        match c.delta {
                            Some(d) if d > 0.0 => "up",
                            Some(d) if d < 0.0 => "down",
                            _ => "",
                        },
                        fmt_change(c),
                    ),
                    None => ("", "—".into()),
                };
                let _ = write!(h, "<td class=\"{class}\">{}</td>", esc(&text));
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
}

/// A tick step of 1, 2, 2.5 or 5 × 10^k giving about `intervals` intervals over `span` (> 0).
fn nice_step(span: f64, intervals: usize) -> f64 {
    let raw = span / intervals.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 + 1e-9 {
        1.0
    } else if f <= 2.0 + 1e-9 {
        2.0
    } else if f <= 2.5 + 1e-9 {
        2.5
    } else if f <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// Axis ticks covering `[lo, hi]` at round values: (axis low, axis high, ticks, decimals to
/// print them with).
pub(crate) fn ticks(lo: f64, hi: f64) -> (f64, f64, Vec<f64>, usize) {
    let step = nice_step(hi - lo, 5);
    let (k0, k1) = ((lo / step + 1e-9).floor(), (hi / step - 1e-9).ceil());
    let decimals = (0..=6)
        .find(|d| {
            let s = step * 10f64.powi(*d as i32);
            (s - s.round()).abs() < 1e-6
        })
        .unwrap_or(6);
    let scale = 10f64.powi(decimals as i32);
    let at = |k: f64| {
        let v = (k * step * scale).round() / scale;
        if v == 0.0 { 0.0 } else { v }
    };
    let ticks: Vec<f64> = (k0 as i64..=k1 as i64).map(|k| at(k as f64)).collect();
    (at(k0), at(k1), ticks, decimals)
}

/// Grouped bars (one group per row, one bar per checkpoint) with CI whiskers, a titled y axis
/// at round ticks, each group's label under its bars, and over each group the metric's better
/// direction where it is known ([`trust_core::metric::direction`]).
fn bar_chart(rows: &[&MetricRow], names: &[String], labels: &[String], y_title: &str) -> String {
    let (w, ht) = (900.0f64, 320.0f64);
    let (ml, mr, mt, mb) = (72.0, 10.0, 26.0, 74.0);
    let pw = w - ml - mr;
    let ph = ht - mt - mb;
    let mut lo: f64 = 0.0;
    let mut hi: f64 = 0.0;
    for r in rows {
        for c in r.values.iter().flatten() {
            for x in [c.value, c.ci_low, c.ci_high].into_iter().flatten() {
                if x.is_finite() {
                    lo = lo.min(x);
                    hi = hi.max(x);
                }
            }
        }
    }
    if hi - lo < 1e-12 {
        hi = lo + 1.0;
    }
    let (lo, hi, tick_values, decimals) = ticks(lo, hi);
    let y = |v: f64| mt + ph * (1.0 - (v - lo) / (hi - lo));
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg role=\"img\" width=\"{w}\" height=\"{ht}\" viewBox=\"0 0 {w} {ht}\">"
    );
    for v in &tick_values {
        let yy = y(*v);
        let _ = write!(
            s,
            "<line x1=\"{ml}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#eee\"/><text class=\"tick\" x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{v:.decimals$}</text>",
            w - mr,
            ml - 4.0,
            yy + 4.0
        );
    }
    let (tx, ty) = (16.0, mt + ph / 2.0);
    let _ = write!(
        s,
        "<text class=\"y-title\" x=\"{tx}\" y=\"{ty:.1}\" font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 {tx} {ty:.1})\">{}</text>",
        esc(y_title)
    );
    let _ = write!(
        s,
        "<line x1=\"{ml}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#444\"/>",
        w - mr,
        y(0.0),
        y(0.0)
    );
    let n_groups = rows.len().max(1) as f64;
    let gw = pw / n_groups;
    let n_bars = labels.len().max(1) as f64;
    let bw = (gw * 0.8 / n_bars).min(60.0);
    for (g, r) in rows.iter().enumerate() {
        // The group's bars are centred in its slot; its label and direction sit at the centre.
        let gx = ml + gw * g as f64 + (gw - bw * n_bars) / 2.0;
        let centre = gx + bw * n_bars / 2.0;
        for (i, c) in r.values.iter().enumerate() {
            let x = gx + bw * i as f64;
            let bar_w = (bw - 2.0).max(1.0);
            let label = labels.get(i).map(String::as_str).unwrap_or("");
            match c.as_ref().and_then(|c| c.value.map(|v| (c, v))) {
                Some((c, v)) if v.is_finite() => {
                    let (y0, y1) = (y(0.0_f64.max(lo)), y(v));
                    // A bar under 2 px (a zero) is drawn 2 px tall, outlined, and labelled.
                    let height = (y0 - y1).abs().max(2.0);
                    let top = if v >= 0.0 {
                        y0.min(y1).min(y0 - 2.0)
                    } else {
                        y0
                    };
                    let _ = write!(
                        s,
                        "<rect class=\"bar\" x=\"{x:.1}\" y=\"{top:.1}\" width=\"{bar_w:.1}\" height=\"{height:.1}\" fill=\"{}\" stroke=\"{}\" stroke-width=\"0.5\"><title>{}</title></rect>",
                        colour(i),
                        colour(i),
                        esc(&format!("{} · {label}: {}", r.name, fmt_cell(Some(c))))
                    );
                    if (y0 - y1).abs() < 2.0 {
                        let _ = write!(
                            s,
                            "<text class=\"bar-value\" x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\" fill=\"#444\">{}</text>",
                            x + bar_w / 2.0,
                            top - 3.0,
                            if v == 0.0 {
                                "0".to_string()
                            } else {
                                format!("{v:.3}")
                            }
                        );
                    }
                    if let (Some(l), Some(hh)) = (c.ci_low, c.ci_high)
                        && l.is_finite()
                        && hh.is_finite()
                    {
                        let cx = x + bar_w / 2.0;
                        let _ = write!(
                            s,
                            "<g class=\"whisker\" stroke=\"#222\"><line x1=\"{cx:.1}\" x2=\"{cx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\"/></g>",
                            y(l),
                            y(hh),
                            cx - 3.0,
                            cx + 3.0,
                            y(l),
                            y(l),
                            cx - 3.0,
                            cx + 3.0,
                            y(hh),
                            y(hh)
                        );
                    }
                }
                _ => {
                    let _ = write!(
                        s,
                        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" fill=\"#999\">n/a</text>",
                        x,
                        y(0.0) - 3.0
                    );
                }
            }
        }
        if let Some(d) = trust_core::metric::direction(&r.name) {
            let arrow = match d {
                trust_core::metric::Worse::Higher => "↓ better",
                trust_core::metric::Worse::Lower => "↑ better",
            };
            let _ = write!(
                s,
                "<text class=\"direction\" x=\"{centre:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#555\">{arrow}<title>{}</title></text>",
                mt - 10.0,
                d.better()
            );
        }
        let name = names.get(g).map(String::as_str).unwrap_or("");
        let short: String = if name.chars().count() > 28 {
            name.chars().take(27).chain(['…']).collect()
        } else {
            name.to_string()
        };
        let ty = ht - mb + 14.0;
        let _ = write!(
            s,
            "<text class=\"group-label\" x=\"{centre:.1}\" y=\"{ty:.1}\" font-size=\"11\" text-anchor=\"end\" transform=\"rotate(-25 {centre:.1} {ty:.1})\">{}<title>{}</title></text>",
            esc(&short),
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

/// White → red colour of a value in [0, 1].
fn heat(v: f64) -> String {
    let t = v.clamp(0.0, 1.0);
    let g = (255.0 * (1.0 - t)).round() as u8;
    let r = (255.0 - 55.0 * t).round() as u8;
    format!("rgb({r},{g},{g})")
}

fn heatmap_svg(hm: &crate::Heatmap, c: usize) -> String {
    let cell = 22.0f64;
    let (ml, mt) = (130.0, 130.0);
    let w = ml + cell * hm.groups.len() as f64 + 90.0;
    let ht = mt + cell * hm.topics.len() as f64 + 10.0;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg role=\"img\" width=\"{w}\" height=\"{ht}\" viewBox=\"0 0 {w} {ht}\">"
    );
    for (j, g) in hm.groups.iter().enumerate() {
        let x = ml + cell * j as f64 + cell / 2.0;
        let y = mt - 4.0;
        let _ = write!(
            s,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"10\" transform=\"rotate(-60 {x:.1} {y:.1})\">{}</text>",
            esc(g)
        );
    }
    for (i, t) in hm.topics.iter().enumerate() {
        let y = mt + cell * i as f64;
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            ml - 4.0,
            y + cell * 0.7,
            esc(t)
        );
        for (j, g) in hm.groups.iter().enumerate() {
            let x = ml + cell * j as f64;
            let v = hm
                .values
                .get(c)
                .and_then(|m| m.get(i))
                .and_then(|r| r.get(j))
                .copied()
                .flatten();
            let (fill, tip) = match v {
                Some(v) => (heat(v), format!("{t} / {g}: {v:.3}")),
                None => ("#eeeeee".to_string(), format!("{t} / {g}: n/a")),
            };
            let _ = write!(
                s,
                "<rect class=\"cell\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{cell}\" height=\"{cell}\" fill=\"{fill}\" stroke=\"#fff\"><title>{}</title></rect>",
                esc(&tip)
            );
        }
    }
    s.push_str("</svg>");
    s
}
