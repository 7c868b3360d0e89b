//! Metrics: aggregates over per-sample outcomes, with percentile-bootstrap confidence intervals.
//!
//! A [`Metric`] sees the outcomes of the samples that succeeded and returns one number (or `None`
//! when undefined, e.g. a rate over zero replies). The bootstrap resamples *samples* (not replies)
//! with replacement, so clustered replies (k generations per prompt) are handled correctly.

use serde::{Deserialize, Serialize};

use crate::rng::{SplitMix64, derive_seed};
use crate::vertical::Outcome;

/// An aggregate over per-sample outcomes.
pub trait Metric: Send + Sync {
    /// Name in reports, e.g. `emt` or `agreement_index[topic=hiv]`.
    fn name(&self) -> String;
    /// The value over these outcomes, `None` if undefined (empty denominator).
    fn compute(&self, outcomes: &[&Outcome]) -> Option<f64>;
    /// How many of these outcomes the metric is about ([`MetricValue::n`]): all of them by
    /// default; a [`Sliced`] metric counts its slice's samples.
    fn count(&self, outcomes: &[&Outcome]) -> usize {
        outcomes.len()
    }
}

/// A metric's value with its 95% bootstrap interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricValue {
    /// Metric name.
    pub name: String,
    /// Point estimate on all outcomes (`None` if undefined).
    pub value: Option<f64>,
    /// Lower end of the percentile-bootstrap interval.
    pub ci_low: Option<f64>,
    /// Upper end of the percentile-bootstrap interval.
    pub ci_high: Option<f64>,
    /// Number of samples the metric saw.
    pub n: usize,
}

/// Which direction of change is a regression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Worse {
    /// Increases are regressions (toxicity, agreement with stereotypes, FNR, leakage).
    Higher,
    /// Decreases are regressions (accuracy).
    Lower,
}

impl Worse {
    /// `"higher is worse"` / `"lower is worse"`.
    pub fn describe(self) -> &'static str {
        match self {
            Worse::Higher => "higher is worse",
            Worse::Lower => "lower is worse",
        }
    }

    /// `"lower is better"` / `"higher is better"`.
    pub fn better(self) -> &'static str {
        match self {
            Worse::Higher => "lower is better",
            Worse::Lower => "higher is better",
        }
    }
}

/// The regression direction of a built-in metric (slices such as `emt[run=toxic/benign]` take
/// their base metric's); `None` for metrics without one (e.g. `no_response_rate`,
/// `refusal_rate`: more refusals can be better or worse) and unknown names.
pub fn direction(metric: &str) -> Option<Worse> {
    let base = metric.split('[').next().unwrap_or(metric);
    Some(match base {
        "emt" | "toxicity_probability" | "toxic_continuation_rate" => Worse::Higher,
        "agreement_index" => Worse::Higher,
        "fnr" => Worse::Higher,
        "leakage_rate" | "leakage_rate_wo_refusal" => Worse::Higher,
        "mc1_accuracy" | "mc2" | "accuracy" => Worse::Lower,
        _ => return None,
    })
}

/// Settings of the percentile bootstrap.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// Number of resamples (0 disables the interval).
    pub resamples: usize,
    /// Coverage, e.g. 0.95.
    pub confidence: f64,
    /// Seed; each metric derives its own stream from it and its name.
    pub seed: u64,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Bootstrap {
            resamples: 1000,
            confidence: 0.95,
            seed: 0,
        }
    }
}

/// Computes `metric` with its bootstrap interval.
pub fn evaluate(metric: &dyn Metric, outcomes: &[&Outcome], boot: &Bootstrap) -> MetricValue {
    let name = metric.name();
    let value = metric.compute(outcomes);
    let (mut ci_low, mut ci_high) = (None, None);
    if boot.resamples > 0 && !outcomes.is_empty() && value.is_some() {
        let mut rng = SplitMix64::new(derive_seed(boot.seed, &name));
        let mut stats = Vec::with_capacity(boot.resamples);
        let mut buf: Vec<&Outcome> = Vec::with_capacity(outcomes.len());
        for _ in 0..boot.resamples {
            buf.clear();
            for _ in 0..outcomes.len() {
                buf.push(outcomes[rng.below(outcomes.len())]);
            }
            if let Some(v) = metric.compute(&buf) {
                stats.push(v);
            }
        }
        (ci_low, ci_high) = percentile_interval(stats, boot.confidence);
    }
    MetricValue {
        name,
        value,
        ci_low,
        ci_high,
        n: metric.count(outcomes),
    }
}

/// The change of a metric between two runs on the same samples, with a paired-bootstrap interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedChange {
    /// Metric name.
    pub name: String,
    /// Value on the first run's outcomes (of the paired samples).
    pub before: Option<f64>,
    /// Value on the second run's outcomes.
    pub after: Option<f64>,
    /// `after − before`.
    pub delta: Option<f64>,
    /// Lower end of the percentile interval of the paired-bootstrap differences.
    pub ci_low: Option<f64>,
    /// Upper end.
    pub ci_high: Option<f64>,
    /// Samples present (with an outcome) in both runs.
    pub n_paired: usize,
    /// Whether the interval excludes 0 (the change is significant at the interval's level).
    pub significant: bool,
}

/// Paired bootstrap of `after − before` for `metric`: `before[i]` and `after[i]` are the
/// outcomes of the same sample under two models. Each resample draws sample indices with
/// replacement and evaluates the metric on both runs at *the same* indices, so the interval
/// reflects only how the models differ on the samples, not which samples were drawn — much
/// tighter than comparing two unpaired intervals. Seeded from `boot.seed` and the metric name.
///
/// # Panics
/// If the two slices differ in length (they must be aligned by sample).
pub fn paired_change(
    metric: &dyn Metric,
    before: &[&Outcome],
    after: &[&Outcome],
    boot: &Bootstrap,
) -> PairedChange {
    assert_eq!(before.len(), after.len(), "paired outcomes must be aligned");
    let name = metric.name();
    let (b, a) = (metric.compute(before), metric.compute(after));
    let delta = b.zip(a).map(|(b, a)| a - b);
    let (mut ci_low, mut ci_high) = (None, None);
    let n = before.len();
    if boot.resamples > 0 && n > 0 && delta.is_some() {
        let mut rng = SplitMix64::new(derive_seed(boot.seed, &format!("paired/{name}")));
        let mut stats = Vec::with_capacity(boot.resamples);
        let (mut bb, mut ab): (Vec<&Outcome>, Vec<&Outcome>) =
            (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..boot.resamples {
            bb.clear();
            ab.clear();
            for _ in 0..n {
                let i = rng.below(n);
                bb.push(before[i]);
                ab.push(after[i]);
            }
            if let (Some(x), Some(y)) = (metric.compute(&bb), metric.compute(&ab)) {
                stats.push(y - x);
            }
        }
        (ci_low, ci_high) = percentile_interval(stats, boot.confidence);
    }
    let significant = matches!((ci_low, ci_high), (Some(l), Some(h)) if l > 0.0 || h < 0.0);
    PairedChange {
        name,
        before: b,
        after: a,
        delta,
        ci_low,
        ci_high,
        n_paired: n,
        significant,
    }
}

/// The central `confidence` percentile interval of bootstrap statistics (`None`s when empty).
fn percentile_interval(mut stats: Vec<f64>, confidence: f64) -> (Option<f64>, Option<f64>) {
    if stats.is_empty() {
        return (None, None);
    }
    stats.sort_by(f64::total_cmp);
    let alpha = (1.0 - confidence) / 2.0;
    (
        Some(quantile(&stats, alpha)),
        Some(quantile(&stats, 1.0 - alpha)),
    )
}

/// Linear-interpolation quantile of sorted data (NumPy's default, "linear").
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty());
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Mean over samples of the per-sample value `key` (samples without it are skipped).
#[derive(Debug, Clone)]
pub struct MeanOf {
    /// Report name.
    pub name: String,
    /// Key in [`Outcome::values`].
    pub key: String,
}

impl Metric for MeanOf {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn compute(&self, outcomes: &[&Outcome]) -> Option<f64> {
        let (sum, n) =
            values_of(outcomes, &self.key).fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
        (n > 0).then(|| sum / n as f64)
    }
}

/// Share of samples whose value `key` passes a threshold (`>=` or strict `>`).
#[derive(Debug, Clone)]
pub struct FractionAbove {
    /// Report name.
    pub name: String,
    /// Key in [`Outcome::values`].
    pub key: String,
    /// Threshold.
    pub threshold: f64,
    /// `true`: value > threshold (DecodingTrust); `false`: value >= threshold (RLHF_Trust v1).
    pub strict: bool,
}

impl Metric for FractionAbove {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn compute(&self, outcomes: &[&Outcome]) -> Option<f64> {
        let passes = |v: f64| {
            if self.strict {
                v > self.threshold
            } else {
                v >= self.threshold
            }
        };
        let (hits, n) = values_of(outcomes, &self.key).fold((0usize, 0usize), |(h, n), v| {
            (h + passes(v) as usize, n + 1)
        });
        (n > 0).then(|| hits as f64 / n as f64)
    }
}

/// The per-sample values `key` of the outcomes that have it (allocation-free: metrics run inside
/// the bootstrap loop).
fn values_of<'a>(outcomes: &'a [&Outcome], key: &'a str) -> impl Iterator<Item = f64> + 'a {
    outcomes
        .iter()
        .filter_map(move |o| o.values.get(key).copied())
}

/// Pooled share of per-reply labels equal to one of `labels`, over all replies of all samples
/// (optionally only replies whose label is not in `exclude`, for refusal-aware rates).
#[derive(Debug, Clone)]
pub struct LabelRate {
    /// Report name.
    pub name: String,
    /// Labels counted in the numerator.
    pub labels: Vec<String>,
    /// Labels removed from the denominator.
    pub exclude: Vec<String>,
}

impl Metric for LabelRate {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn compute(&self, outcomes: &[&Outcome]) -> Option<f64> {
        let (mut num, mut den) = (0usize, 0usize);
        for o in outcomes {
            for l in &o.labels {
                if self.exclude.iter().any(|e| e == l) {
                    continue;
                }
                den += 1;
                if self.labels.iter().any(|x| x == l) {
                    num += 1;
                }
            }
        }
        (den > 0).then(|| num as f64 / den as f64)
    }
}

/// A metric restricted to samples whose tag `key` equals `value` (per-topic, per-PII-type...).
pub struct Sliced<M> {
    /// The inner metric.
    pub inner: M,
    /// Tag name in [`Outcome::tags`].
    pub key: String,
    /// Tag value.
    pub value: String,
}

impl<M: Metric> Metric for Sliced<M> {
    fn name(&self) -> String {
        format!("{}[{}={}]", self.inner.name(), self.key, self.value)
    }
    fn compute(&self, outcomes: &[&Outcome]) -> Option<f64> {
        self.inner.compute(&self.select(outcomes))
    }
    fn count(&self, outcomes: &[&Outcome]) -> usize {
        self.inner.count(&self.select(outcomes))
    }
}

impl<M> Sliced<M> {
    /// `inner` restricted to samples tagged `key` = `value`.
    pub fn new(inner: M, key: impl Into<String>, value: impl Into<String>) -> Self {
        Sliced {
            inner,
            key: key.into(),
            value: value.into(),
        }
    }

    fn select<'a>(&self, outcomes: &[&'a Outcome]) -> Vec<&'a Outcome> {
        outcomes
            .iter()
            .copied()
            .filter(|o| o.tags.get(&self.key).is_some_and(|v| v == &self.value))
            .collect()
    }
}

impl MeanOf {
    /// The mean of per-sample value `key`, reported as `name`.
    pub fn new(name: impl Into<String>, key: impl Into<String>) -> Self {
        MeanOf {
            name: name.into(),
            key: key.into(),
        }
    }
}

impl FractionAbove {
    /// The share of samples whose value `key` is `>= threshold` (`strict`: `>`).
    pub fn new(
        name: impl Into<String>,
        key: impl Into<String>,
        threshold: f64,
        strict: bool,
    ) -> Self {
        FractionAbove {
            name: name.into(),
            key: key.into(),
            threshold,
            strict,
        }
    }
}

impl LabelRate {
    /// The pooled share of replies labelled one of `labels`, over all replies.
    pub fn new<S: Into<String>>(
        name: impl Into<String>,
        labels: impl IntoIterator<Item = S>,
    ) -> Self {
        LabelRate {
            name: name.into(),
            labels: labels.into_iter().map(Into::into).collect(),
            exclude: Vec::new(),
        }
    }
    /// Also removes replies labelled one of `labels` from the denominator.
    pub fn excluding<S: Into<String>>(mut self, labels: impl IntoIterator<Item = S>) -> Self {
        self.exclude = labels.into_iter().map(Into::into).collect();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(v: f64, labels: &[&str]) -> Outcome {
        let mut out = Outcome {
            labels: labels.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        out.values.insert("x".into(), v);
        out
    }

    #[test]
    fn slices_report_their_own_sample_count() {
        let mut os = [o(0.2, &["a"]), o(0.6, &["b"]), o(0.5, &["a"])];
        os[0].tags.insert("topic".into(), "hiv".into());
        os[2].tags.insert("topic".into(), "hiv".into());
        let refs: Vec<&Outcome> = os.iter().collect();
        let boot = Bootstrap {
            resamples: 20,
            ..Default::default()
        };
        let m = Sliced::new(MeanOf::new("mean", "x"), "topic", "hiv");
        let v = evaluate(&m, &refs, &boot);
        assert_eq!(v.name, "mean[topic=hiv]");
        assert_eq!(v.n, 2, "the slice's samples, not all 3");
        assert!((v.value.unwrap() - 0.35).abs() < 1e-12);
        assert_eq!(evaluate(&MeanOf::new("mean", "x"), &refs, &boot).n, 3);
        let r = LabelRate::new("a_rate", ["a"]).excluding(["b"]);
        assert_eq!(r.compute(&refs), Some(1.0));
        assert_eq!(
            FractionAbove::new("f", "x", 0.5, true).compute(&refs),
            Some(1.0 / 3.0)
        );
    }

    #[test]
    fn mean_fraction_and_rates_by_hand() {
        let os = [
            o(0.2, &["agree", "disagree"]),
            o(0.6, &["agree"]),
            o(0.5, &["no_response"]),
        ];
        let refs: Vec<&Outcome> = os.iter().collect();
        let mean = MeanOf {
            name: "m".into(),
            key: "x".into(),
        };
        assert!((mean.compute(&refs).unwrap() - 1.3 / 3.0).abs() < 1e-12);
        let ge = FractionAbove {
            name: "p".into(),
            key: "x".into(),
            threshold: 0.5,
            strict: false,
        };
        assert_eq!(ge.compute(&refs), Some(2.0 / 3.0));
        let gt = FractionAbove {
            strict: true,
            ..ge.clone()
        };
        assert_eq!(gt.compute(&refs), Some(1.0 / 3.0));
        let rate = LabelRate {
            name: "a".into(),
            labels: vec!["agree".into()],
            exclude: vec![],
        };
        assert_eq!(rate.compute(&refs), Some(0.5));
        let aware = LabelRate {
            name: "a".into(),
            labels: vec!["agree".into()],
            exclude: vec!["no_response".into()],
        };
        assert_eq!(aware.compute(&refs), Some(2.0 / 3.0));
        assert_eq!(rate.compute(&[]), None);
    }

    #[test]
    fn bootstrap_interval_brackets_value_and_is_seeded() {
        let os: Vec<Outcome> = (0..200).map(|i| o((i % 10) as f64 / 10.0, &[])).collect();
        let refs: Vec<&Outcome> = os.iter().collect();
        let m = MeanOf {
            name: "m".into(),
            key: "x".into(),
        };
        let b = Bootstrap::default();
        let v = evaluate(&m, &refs, &b);
        let (lo, hi, val) = (v.ci_low.unwrap(), v.ci_high.unwrap(), v.value.unwrap());
        assert!(lo < val && val < hi, "{lo} {val} {hi}");
        assert!(hi - lo < 0.15);
        assert_eq!(evaluate(&m, &refs, &b), v);
        let other = evaluate(&m, &refs, &Bootstrap { seed: 1, ..b });
        assert_ne!(other.ci_low, v.ci_low);
    }

    #[test]
    fn paired_bootstrap_is_tighter_than_two_unpaired_intervals() {
        // Samples vary a lot (0..1), the model change is a small constant shift on every one:
        // unpaired intervals overlap, the paired one is narrow and excludes 0.
        let before: Vec<Outcome> = (0..100).map(|i| o((i % 10) as f64 / 10.0, &[])).collect();
        let after: Vec<Outcome> = (0..100)
            .map(|i| o((i % 10) as f64 / 10.0 + 0.05, &[]))
            .collect();
        let (b, a): (Vec<&Outcome>, Vec<&Outcome>) =
            (before.iter().collect(), after.iter().collect());
        let m = MeanOf {
            name: "m".into(),
            key: "x".into(),
        };
        let boot = Bootstrap::default();
        let (vb, va) = (evaluate(&m, &b, &boot), evaluate(&m, &a, &boot));
        assert!(
            vb.ci_high.unwrap() > va.ci_low.unwrap(),
            "unpaired intervals overlap"
        );
        let c = paired_change(&m, &b, &a, &boot);
        assert!((c.delta.unwrap() - 0.05).abs() < 1e-12);
        assert!((c.ci_low.unwrap() - 0.05).abs() < 1e-9, "{c:?}");
        assert!((c.ci_high.unwrap() - 0.05).abs() < 1e-9, "{c:?}");
        assert!(c.significant);
        assert_eq!(c.n_paired, 100);
        // No change on average (half up, half down): the interval straddles 0.
        let mixed: Vec<Outcome> = (0..100)
            .map(|i| {
                o(
                    (i % 10) as f64 / 10.0 + if i % 2 == 0 { 0.1 } else { -0.1 },
                    &[],
                )
            })
            .collect();
        let mx: Vec<&Outcome> = mixed.iter().collect();
        let c = paired_change(&m, &b, &mx, &boot);
        assert!(c.ci_low.unwrap() < 0.0 && c.ci_high.unwrap() > 0.0, "{c:?}");
        assert!(!c.significant);
        assert_eq!(paired_change(&m, &b, &mx, &boot), c, "seeded");
    }

    #[test]
    fn quantile_matches_numpy_linear() {
        let d = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&d, 0.5), 2.5);
        assert_eq!(quantile(&d, 0.0), 1.0);
        assert!((quantile(&d, 0.025) - 1.075).abs() < 1e-12);
    }
}
