//! A regression gate for CI: does a candidate run (a new checkpoint) regress a metric past a
//! bound against a baseline run?
//!
//! Both runs are `trust eval --out` directories of the same verticals under the same protocol.
//! Each bounded metric gets a paired bootstrap over the samples both runs answered
//! ([`crate::registry::paired_changes_between`]); it *regresses* when its change in the worse
//! direction exceeds the bound **and** the interval of the change excludes 0 on that side, so
//! noise alone does not fail a build. A bounded metric that cannot be compared (vertical or
//! metric missing in a run, no shared samples, an undefined value) fails the gate too: a check
//! that did not happen is not a pass.
//!
//! ```
//! use trust_verticals::gate::{Bound, Worse};
//!
//! let bounds = Bound::parse_list("toxicity.emt=0.02,truthfulness.mc1_accuracy=0.05").unwrap();
//! assert_eq!(bounds[0].worse, Worse::Higher); // more toxicity is worse
//! assert_eq!(bounds[1].worse, Worse::Lower); // less accuracy is worse
//! // Any other metric names its direction with a sign: `+` = increases are regressions.
//! let b = Bound::parse_list("stereotype.no_response_rate=+0.1").unwrap();
//! assert_eq!((b[0].worse, b[0].max), (Worse::Higher, 0.1));
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};
use trust_core::metric::{Bootstrap, PairedChange};
use trust_core::{Error, Result};

pub use trust_core::metric::{Worse, direction};

/// One bound: `vertical.metric` may move at most `max` in its worse direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bound {
    /// Vertical name.
    pub vertical: String,
    /// Metric name (may be a slice, `emt[run=toxic/benign]`).
    pub metric: String,
    /// Largest tolerated change in the worse direction (≥ 0).
    pub max: f64,
    /// The worse direction.
    pub worse: Worse,
}

/// Splits `s` at `sep` where it is not inside `[...]`.
fn split_outside_brackets(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            c if c == sep && depth == 0 => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

impl Bound {
    /// Parses one `vertical.metric=BOUND`: `BOUND` is a non-negative number for metrics with a
    /// known direction ([`direction`]), or `+X` (increases past X regress) / `-X` (decreases
    /// past X regress) for any metric.
    pub fn parse(item: &str) -> Result<Bound> {
        let bad = |why: &str| Error::Config(format!("--max-regression `{item}`: {why}"));
        let parts = split_outside_brackets(item.trim(), '=');
        let [name, value] = parts.as_slice() else {
            return Err(bad(
                "expected vertical.metric=BOUND (e.g. toxicity.emt=0.02)",
            ));
        };
        let (vertical, metric) = name
            .trim()
            .split_once('.')
            .ok_or_else(|| bad("expected vertical.metric before `=`"))?;
        let (vertical, metric) = (vertical.trim(), metric.trim());
        if crate::registry::protocols(vertical).is_none() {
            return Err(bad(&format!(
                "unknown vertical `{vertical}` (known: {})",
                crate::registry::known_verticals().join(", ")
            )));
        }
        if metric.is_empty() {
            return Err(bad("empty metric name"));
        }
        let value = value.trim();
        let (sign, number) = match value.as_bytes().first() {
            Some(b'+') => (Some(Worse::Higher), &value[1..]),
            Some(b'-') => (Some(Worse::Lower), &value[1..]),
            _ => (None, value),
        };
        let max: f64 = number
            .parse()
            .ok()
            .filter(|x: &f64| x.is_finite() && *x >= 0.0)
            .ok_or_else(|| bad("the bound must be a finite number ≥ 0, optionally signed"))?;
        let worse = match (sign, direction(metric)) {
            (Some(s), _) => s,
            (None, Some(d)) => d,
            (None, None) => {
                return Err(bad(&format!(
                    "`{metric}` has no known worse direction; write +{number} (increases regress) or -{number} (decreases regress)"
                )));
            }
        };
        Ok(Bound {
            vertical: vertical.to_string(),
            metric: metric.to_string(),
            max,
            worse,
        })
    }

    /// Parses a comma-separated list of [`Bound::parse`] items (commas inside `[...]` do not
    /// split).
    pub fn parse_list(spec: &str) -> Result<Vec<Bound>> {
        let items: Vec<&str> = split_outside_brackets(spec, ',')
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items.is_empty() {
            return Err(Error::Config("--max-regression is empty".into()));
        }
        items.into_iter().map(Bound::parse).collect()
    }
}

/// The verdict on one bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "reason")]
pub enum Verdict {
    /// Within the bound, or the interval does not exclude 0.
    Pass,
    /// Past the bound in the worse direction with the interval excluding 0.
    Regressed,
    /// Could not be compared (the reason).
    Missing(String),
}

/// One row of a [`CheckReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRow {
    /// The bound checked.
    pub bound: Bound,
    /// The paired change (absent when the metric could not be compared at all).
    pub change: Option<PairedChange>,
    /// The verdict.
    pub verdict: Verdict,
}

/// The result of [`check`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckReport {
    /// One row per bound, in the order given.
    pub rows: Vec<CheckRow>,
}

impl CheckReport {
    /// Rows that regressed.
    pub fn regressed(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.verdict == Verdict::Regressed)
            .count()
    }

    /// Rows that could not be compared.
    pub fn missing(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r.verdict, Verdict::Missing(_)))
            .count()
    }

    /// Whether every bound passed.
    pub fn passed(&self) -> bool {
        self.rows.iter().all(|r| r.verdict == Verdict::Pass)
    }
}

/// The verdict on one paired change under `bound`.
pub fn judge(bound: &Bound, c: &PairedChange) -> Verdict {
    let (Some(delta), Some(lo), Some(hi)) = (c.delta, c.ci_low, c.ci_high) else {
        return Verdict::Missing(if c.n_paired == 0 {
            "no sample answered in both runs".into()
        } else {
            format!(
                "the change is undefined on the {} paired samples",
                c.n_paired
            )
        });
    };
    let (worse_by, excludes_zero) = match bound.worse {
        Worse::Higher => (delta, lo > 0.0),
        Worse::Lower => (-delta, hi < 0.0),
    };
    if worse_by > bound.max && excludes_zero {
        Verdict::Regressed
    } else {
        Verdict::Pass
    }
}

/// Checks every bound between the `baseline` and `candidate` run directories.
///
/// Errors only on unreadable runs that no bound can use (e.g. `baseline` is not a directory);
/// a vertical or metric missing from a run becomes a [`Verdict::Missing`] row.
pub fn check(
    baseline: &Path,
    candidate: &Path,
    bounds: &[Bound],
    boot: &Bootstrap,
) -> Result<CheckReport> {
    for dir in [baseline, candidate] {
        if !dir.is_dir() {
            return Err(Error::Config(format!(
                "{}: not a run directory (a `trust eval --out` folder)",
                dir.display()
            )));
        }
    }
    let mut cache: std::collections::BTreeMap<
        String,
        std::result::Result<Vec<PairedChange>, String>,
    > = Default::default();
    let mut rows = Vec::with_capacity(bounds.len());
    for b in bounds {
        let changes = cache.entry(b.vertical.clone()).or_insert_with(|| {
            crate::registry::paired_changes_between(baseline, candidate, &b.vertical, boot)
                .map_err(|e| e.to_string())
        });
        let row = match changes {
            Err(e) => CheckRow {
                bound: b.clone(),
                change: None,
                verdict: Verdict::Missing(e.clone()),
            },
            Ok(list) => match list.iter().find(|c| c.name == b.metric) {
                None => CheckRow {
                    bound: b.clone(),
                    change: None,
                    verdict: Verdict::Missing(format!(
                        "{} has no metric `{}` (metrics: {})",
                        b.vertical,
                        b.metric,
                        list.iter()
                            .map(|c| c.name.as_str())
                            .filter(|n| !n.contains('['))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                },
                Some(c) => CheckRow {
                    bound: b.clone(),
                    verdict: judge(b, c),
                    change: Some(c.clone()),
                },
            },
        };
        rows.push(row);
    }
    Ok(CheckReport { rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(delta: f64, lo: f64, hi: f64) -> PairedChange {
        PairedChange {
            name: "emt".into(),
            before: Some(0.5),
            after: Some(0.5 + delta),
            delta: Some(delta),
            ci_low: Some(lo),
            ci_high: Some(hi),
            n_paired: 48,
            significant: lo > 0.0 || hi < 0.0,
        }
    }

    #[test]
    fn bounds_parse_with_known_and_signed_directions() {
        let b = Bound::parse_list(
            "toxicity.emt=0.02, stereotype.agreement_index=0.05,truthfulness.mc1_accuracy=0.1",
        )
        .unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(
            (b[0].vertical.as_str(), b[0].metric.as_str()),
            ("toxicity", "emt")
        );
        assert_eq!(b[1].worse, Worse::Higher);
        assert_eq!(b[2].worse, Worse::Lower);
        // Slices: `=` and `,` inside brackets belong to the name.
        let s = Bound::parse_list("toxicity.emt[run=toxic/benign]=0.1,privacy.refusal_rate=-0.2")
            .unwrap();
        assert_eq!(s[0].metric, "emt[run=toxic/benign]");
        assert_eq!(s[0].worse, Worse::Higher);
        assert_eq!((s[1].worse, s[1].max), (Worse::Lower, 0.2));
    }

    #[test]
    fn bad_bounds_are_named() {
        for (spec, needle) in [
            ("toxicity.emt", "expected vertical.metric=BOUND"),
            ("toxcity.emt=0.1", "unknown vertical `toxcity`"),
            ("toxicity.emt=abc", "finite number"),
            ("toxicity.emt=nan", "finite number"),
            ("privacy.refusal_rate=0.1", "no known worse direction"),
            ("emt=0.1", "vertical.metric"),
            ("", "empty"),
        ] {
            let e = Bound::parse_list(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
    }

    #[test]
    fn a_regression_needs_the_bound_and_an_interval_excluding_zero() {
        let up = Bound::parse("toxicity.emt=0.02").unwrap();
        // Past the bound, interval above 0: regressed.
        assert_eq!(judge(&up, &change(0.05, 0.01, 0.09)), Verdict::Regressed);
        // Past the bound but the interval straddles 0: noise, pass.
        assert_eq!(judge(&up, &change(0.05, -0.01, 0.11)), Verdict::Pass);
        // Significant but within the bound: pass.
        assert_eq!(judge(&up, &change(0.015, 0.005, 0.03)), Verdict::Pass);
        // Improvement: pass.
        assert_eq!(judge(&up, &change(-0.2, -0.3, -0.1)), Verdict::Pass);
        let down = Bound::parse("truthfulness.mc1_accuracy=0.02").unwrap();
        assert_eq!(
            judge(&down, &change(-0.05, -0.09, -0.01)),
            Verdict::Regressed
        );
        assert_eq!(judge(&down, &change(0.05, 0.01, 0.09)), Verdict::Pass);
        let mut none = change(0.0, 0.0, 0.0);
        none.delta = None;
        none.n_paired = 0;
        assert!(matches!(judge(&up, &none), Verdict::Missing(r) if r.contains("no sample")));
    }
}
