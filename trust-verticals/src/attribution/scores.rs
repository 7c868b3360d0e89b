//! Post-processing of influence scores: the sign-wise normalisation of PROTOCOLS A.8 §6 and
//! ranking helpers.
//!
//! **Sign convention** (influence functions, A.8 §5): I(z_i) > 0 means up-weighting z_i raises the
//! test loss, so z_i is *harmful* to the test objective; I(z_i) < 0 means up-weighting z_i lowers
//! the test loss, so z_i is *helpful*. Normalisation keeps signs, so the same reading applies to
//! normalised scores.

use super::{AttributionError, Result};

/// Normalises scores separately by sign to [−1, 1]: positive scores are divided by the largest
/// positive score, negative scores by |smallest negative score|, zeros stay 0 (A.8 §6). The most
/// harmful example gets 1, the most helpful −1.
///
/// Errors when a score is NaN or infinite.
pub fn normalize_signwise(scores: &[f64]) -> Result<Vec<f64>> {
    if let Some(i) = scores.iter().position(|x| !x.is_finite()) {
        return Err(AttributionError::NonFinite(format!(
            "score {i} is {}",
            scores[i]
        )));
    }
    let max_pos = scores
        .iter()
        .copied()
        .filter(|&x| x > 0.0)
        .fold(0.0f64, f64::max);
    let max_neg = scores
        .iter()
        .copied()
        .filter(|&x| x < 0.0)
        .map(f64::abs)
        .fold(0.0f64, f64::max);
    Ok(scores
        .iter()
        .map(|&x| {
            if x > 0.0 {
                // x ≤ max_pos, so the quotient is in (0, 1]; clamp against rounding anyway.
                (x / max_pos).min(1.0)
            } else if x < 0.0 {
                (x / max_neg).max(-1.0)
            } else {
                0.0
            }
        })
        .collect())
}

fn top_k(
    scores: &[f64],
    k: usize,
    keep: impl Fn(f64) -> bool,
    descending: bool,
) -> Vec<(usize, f64)> {
    let mut v: Vec<(usize, f64)> = scores
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, x)| keep(x))
        .collect();
    v.sort_by(|a, b| {
        let o = a.1.total_cmp(&b.1);
        (if descending { o.reverse() } else { o }).then(a.0.cmp(&b.0))
    });
    v.truncate(k);
    v
}

/// Up to `k` most harmful examples: strictly positive scores (up-weighting raises the test loss),
/// largest first, as `(index, score)`; ties go to the smaller index. NaN scores are never listed.
pub fn most_harmful(scores: &[f64], k: usize) -> Vec<(usize, f64)> {
    top_k(scores, k, |x| x > 0.0, true)
}

/// Up to `k` most helpful examples: strictly negative scores (up-weighting lowers the test loss),
/// most negative first, as `(index, score)`; ties go to the smaller index. NaN scores are never
/// listed.
pub fn most_helpful(scores: &[f64], k: usize) -> Vec<(usize, f64)> {
    top_k(scores, k, |x| x < 0.0, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_by_hand() {
        let s = [0.5, -2.0, 0.0, 3.0, -0.1, 0.5, f64::NAN];
        assert_eq!(most_harmful(&s, 2), vec![(3, 3.0), (0, 0.5)]);
        assert_eq!(most_harmful(&s, 10), vec![(3, 3.0), (0, 0.5), (5, 0.5)]);
        assert_eq!(most_helpful(&s, 5), vec![(1, -2.0), (4, -0.1)]);
        assert!(most_helpful(&s, 0).is_empty());
    }

    #[test]
    fn normalise_rejects_nan() {
        assert!(normalize_signwise(&[1.0, f64::NAN]).is_err());
        assert_eq!(normalize_signwise(&[]).unwrap(), Vec::<f64>::new());
    }
}
