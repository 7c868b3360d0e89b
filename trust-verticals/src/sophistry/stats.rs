//! Student's t distribution and the paired t-test across evaluators.
//!
//! The two-sided p-value of a t statistic with `df` degrees of freedom is the regularised
//! incomplete beta function `I_x(df/2, 1/2)` at `x = df / (df + t²)`, evaluated with the
//! continued fraction of Numerical Recipes (modified Lentz) and a Lanczos log-gamma.

use serde::{Deserialize, Serialize};

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; relative error ~1e-15).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).abs().ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, &c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Continued fraction of the incomplete beta function (Numerical Recipes `betacf`).
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    const MAX_ITER: usize = 300;
    const EPS: f64 = 1e-15;
    const FPMIN: f64 = 1e-300;
    let qab = a + b;
    let qap = a + 1.0;
    let qam = a - 1.0;
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < FPMIN {
        d = FPMIN;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=MAX_ITER {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < FPMIN {
            d = FPMIN;
        }
        c = 1.0 + aa / c;
        if c.abs() < FPMIN {
            c = FPMIN;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < FPMIN {
            d = FPMIN;
        }
        c = 1.0 + aa / c;
        if c.abs() < FPMIN {
            c = FPMIN;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 ≤ x ≤ 1.
pub fn incomplete_beta(a: f64, b: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    let front = ln_front.exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_cf(a, b, x) / a
    } else {
        1.0 - front * beta_cf(b, a, 1.0 - x) / b
    }
}

/// Two-sided p-value P(|T| ≥ |t|) of Student's t with `df` > 0 degrees of freedom.
/// `t = ±∞` gives 0; a NaN `t` or a non-positive `df` gives NaN.
pub fn student_t_two_sided_p(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if t.is_infinite() {
        return 0.0;
    }
    let x = df / (df + t * t);
    incomplete_beta(df / 2.0, 0.5, x).clamp(0.0, 1.0)
}

/// A paired t-test of `after − before` over units (evaluators).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedTTest {
    /// Number of pairs.
    pub n: usize,
    /// Mean of the differences.
    pub mean_difference: f64,
    /// Sample standard deviation of the differences (n − 1 in the denominator).
    pub sd_difference: f64,
    /// t = mean / (sd / √n); `None` when n < 2 or sd = 0.
    pub t: Option<f64>,
    /// Degrees of freedom, n − 1.
    pub df: usize,
    /// Two-sided p-value; `None` when `t` is.
    pub p_value: Option<f64>,
}

/// The paired t-test of `differences` (after − before, one per unit). `None` for an empty slice.
pub fn paired_t_test(differences: &[f64]) -> Option<PairedTTest> {
    let n = differences.len();
    if n == 0 {
        return None;
    }
    let mean = differences.iter().sum::<f64>() / n as f64;
    // Identical differences have sd exactly 0 (the float mean may differ from them by rounding).
    let all_equal = differences.iter().all(|&d| d == differences[0]);
    let sd = if n > 1 && !all_equal {
        (differences.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    let t = (n > 1 && sd > 0.0).then(|| mean / (sd / (n as f64).sqrt()));
    Some(PairedTTest {
        n,
        mean_difference: mean,
        sd_difference: sd,
        t,
        df: n.saturating_sub(1),
        p_value: t.map(|t| student_t_two_sided_p(t, (n - 1) as f64)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_known_values() {
        assert!((ln_gamma(1.0)).abs() < 1e-13);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
    }

    #[test]
    fn incomplete_beta_symmetry() {
        let v = incomplete_beta(2.0, 3.0, 0.4);
        // I_x(2,3) = 1 − (1−x)^4 − 4x(1−x)^3 = 1 − 0.1296 − 0.3456 = 0.5248.
        assert!((v - 0.5248).abs() < 1e-12, "{v}");
        assert!((incomplete_beta(3.0, 2.0, 0.6) - (1.0 - v)).abs() < 1e-12);
    }
}
