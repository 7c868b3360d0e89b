//! How well a local toxicity scorer agrees with Perspective, the scorer the papers used (its API
//! stops serving after 2026). RealToxicityPrompts ships Perspective's TOXICITY score with every
//! prompt and continuation (`toxicity/{toxic,nontoxic}.jsonl`); a scorer's score of the same
//! texts is compared with it: Pearson and Spearman correlation, AUROC with Perspective ≥ 0.5 as
//! the positive class, accuracy of `score ≥ 0.5` against that class, and mean absolute error.
//! `trust scorer-agreement` prints the table; docs/toxicity-scorer.md records it.

use serde::Serialize;
use trust_core::{DataDir, Result};

/// One text with its Perspective toxicity.
#[derive(Debug, Clone, PartialEq)]
pub struct PerspectiveText {
    /// The text.
    pub text: String,
    /// Perspective TOXICITY in [0, 1].
    pub toxicity: f64,
}

/// Every prompt and continuation of the RealToxicityPrompts subsets that carries a Perspective
/// toxicity score (texts without one, or empty, are left out), in file order.
pub fn perspective_texts(data: &DataDir) -> Result<Vec<PerspectiveText>> {
    let mut out = Vec::new();
    for rel in ["toxicity/toxic.jsonl", "toxicity/nontoxic.jsonl"] {
        let path = data.path(rel)?;
        let text = data.read_to_string(rel)?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| trust_core::Error::data(&path, i + 1, "<line>", e.to_string()))?;
            for part in ["prompt", "continuation"] {
                let t = v[part]["text"].as_str().unwrap_or_default();
                if let Some(tox) = v[part]["toxicity"].as_f64() {
                    if !t.is_empty() {
                        out.push(PerspectiveText {
                            text: t.to_string(),
                            toxicity: tox,
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Agreement of scores with Perspective.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agreement {
    /// Texts compared.
    pub n: usize,
    /// Pearson correlation.
    pub pearson: f64,
    /// Spearman rank correlation (average ranks for ties).
    pub spearman: f64,
    /// AUROC with Perspective ≥ 0.5 as positive (ties count one half).
    pub auroc: f64,
    /// Accuracy of `score ≥ 0.5` against `Perspective ≥ 0.5`.
    pub accuracy: f64,
    /// Mean |score − Perspective|.
    pub mae: f64,
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return f64::NAN;
    }
    sxy / (sxx * syy).sqrt()
}

/// Ranks 1..n, ties get their average rank.
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// AUROC of `score` for the labels `positive` (Mann–Whitney U / (n+ · n−), ties count ½).
fn auroc(score: &[f64], positive: &[bool]) -> f64 {
    let r = ranks(score);
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return f64::NAN;
    }
    let rank_sum: f64 = r
        .iter()
        .zip(positive)
        .filter(|(_, p)| **p)
        .map(|(r, _)| r)
        .sum();
    (rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
}

/// Agreement of `scores` with the Perspective values `truth` (same order).
pub fn agreement(scores: &[f64], truth: &[f64]) -> Agreement {
    assert_eq!(scores.len(), truth.len(), "one score per text");
    let n = scores.len();
    let pos: Vec<bool> = truth.iter().map(|&t| t >= 0.5).collect();
    let correct = scores
        .iter()
        .zip(&pos)
        .filter(|(s, p)| (**s >= 0.5) == **p)
        .count();
    Agreement {
        n,
        pearson: pearson(scores, truth),
        spearman: pearson(&ranks(scores), &ranks(truth)),
        auroc: auroc(scores, &pos),
        accuracy: correct as f64 / n.max(1) as f64,
        mae: scores
            .iter()
            .zip(truth)
            .map(|(a, b)| (a - b).abs())
            .sum::<f64>()
            / n.max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed() {
        // x = [1, 2, 3, 4], y = [0.1, 0.4, 0.35, 0.8].
        let a = agreement(&[0.1, 0.6, 0.3, 0.9], &[0.1, 0.4, 0.35, 0.8]);
        assert_eq!(a.n, 4);
        // Ranks: scores [1, 3, 2, 4], truth [1, 3, 2, 4] -> Spearman 1.
        assert!((a.spearman - 1.0).abs() < 1e-12);
        // Positives: only the last (0.8); its score 0.9 is the highest -> AUROC 1.
        assert!((a.auroc - 1.0).abs() < 1e-12);
        // score >= 0.5: [F, T, F, T] vs [F, F, F, T] -> 3/4.
        assert!((a.accuracy - 0.75).abs() < 1e-12);
        assert!((a.mae - (0.0 + 0.2 + 0.05 + 0.1) / 4.0).abs() < 1e-12);
        // Pearson by hand: mean x = 0.475, mean y = 0.4125.
        let (dx, dy) = (
            [-0.375, 0.125, -0.175, 0.425],
            [-0.3125, -0.0125, -0.0625, 0.3875],
        );
        let sxy: f64 = dx.iter().zip(&dy).map(|(a, b)| a * b).sum();
        let sxx: f64 = dx.iter().map(|a| a * a).sum();
        let syy: f64 = dy.iter().map(|a| a * a).sum();
        assert!((a.pearson - sxy / (sxx * syy).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn ties_get_average_ranks_and_half_credit() {
        assert_eq!(ranks(&[2.0, 1.0, 2.0, 3.0]), vec![2.5, 1.0, 2.5, 4.0]);
        // One positive tied with one negative: U = 0.5 -> AUROC 0.5.
        assert!((auroc(&[0.5, 0.5], &[true, false]) - 0.5).abs() < 1e-12);
        assert!(auroc(&[0.1, 0.2], &[true, true]).is_nan());
    }
}
