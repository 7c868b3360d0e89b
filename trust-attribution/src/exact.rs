//! Exact inverse-Hessian influence for small problems, a dense Cholesky solver and Spearman's rank
//! correlation (to compare DataInf's ranking with the exact one).
//!
//! Per layer l: G_l = (1/n) Σ_i g_il g_ilᵀ (the Gauss–Newton / empirical-Fisher Hessian stand-in of
//! DataInf), h_l = (G_l + λ_l I)⁻¹ v_l by Cholesky, I(z_i) = −Σ_l ⟨h_l, g_il⟩ — the quantity DataInf
//! approximates. Memory is O(d_l²) `f64` per layer and time O(n·d_l² + d_l³), so layers are limited
//! to [`ExactConfig::max_dim`] (default 2048: a 32 MiB matrix).

use super::datainf::{DataInfConfig, influence_scores, layer_damping, stream};
use super::source::{GradientSource, LayerVectors, check_layer_vectors};
use super::{AttributionError, Result};

/// Settings of [`exact_influence`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExactConfig {
    /// Damping (λ_l = c · (1/n) Σ_i mean(g_il²), as in DataInf) and block size.
    pub datainf: DataInfConfig,
    /// Largest layer size accepted (the d × d matrix is held in memory). Default 2048.
    pub max_dim: usize,
}

impl Default for ExactConfig {
    fn default() -> Self {
        ExactConfig {
            datainf: DataInfConfig::default(),
            max_dim: 2048,
        }
    }
}

/// Output of [`exact_influence`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExactResult {
    /// λ_l per layer (same formula as DataInf).
    pub lambdas: Vec<f64>,
    /// h_l = (G_l + λ_l I)⁻¹ v_l per layer (0 for a layer whose gradients are all zero).
    pub hvp: LayerVectors,
    /// I(z_i) per training example (raw).
    pub scores: Vec<f64>,
}

/// G_l = (1/n) Σ_i g_il g_ilᵀ for every layer, each a row-major d_l × d_l matrix.
///
/// Errors when a layer is larger than `max_dim` or the source is empty.
pub fn gram_matrices(
    train: &dyn GradientSource,
    max_dim: usize,
    block_size: usize,
) -> Result<Vec<Vec<f64>>> {
    let layout = train.layout();
    if let Some((l, &d)) = layout
        .dims()
        .iter()
        .enumerate()
        .find(|(_, d)| **d > max_dim)
    {
        return Err(AttributionError::InvalidArgument(format!(
            "layer {l} (`{}`) has {d} parameters, more than the exact solver's limit of {max_dim}",
            layout.names()[l]
        )));
    }
    let n = train.len();
    if n == 0 {
        return Err(AttributionError::InvalidArgument(
            "no training gradients".into(),
        ));
    }
    let mut gram: Vec<Vec<f64>> = layout.dims().iter().map(|&d| vec![0.0f64; d * d]).collect();
    let mut buf = Vec::new();
    stream(train, block_size.max(1), |_, rec| {
        for (l, m) in gram.iter_mut().enumerate() {
            let d = layout.dims()[l];
            buf.clear();
            buf.extend(layout.layer(rec, l).iter().map(|&x| f64::from(x)));
            for r in 0..d {
                let gr = buf[r];
                if gr == 0.0 {
                    continue;
                }
                let row = &mut m[r * d..r * d + d];
                for c in r..d {
                    row[c] += gr * buf[c];
                }
            }
        }
        Ok(())
    })?;
    let inv = 1.0 / n as f64;
    for (m, &d) in gram.iter_mut().zip(layout.dims()) {
        for r in 0..d {
            for c in r..d {
                let x = m[r * d + c] * inv;
                m[r * d + c] = x;
                m[c * d + r] = x;
            }
        }
    }
    Ok(gram)
}

/// Exact influence scores: h_l = (G_l + λ_l I)⁻¹ v_l by Cholesky, I(z_i) = −Σ_l ⟨h_l, g_il⟩.
pub fn exact_influence(
    train: &dyn GradientSource,
    test_mean: &[Vec<f64>],
    config: &ExactConfig,
) -> Result<ExactResult> {
    check_layer_vectors(test_mean, train.layout(), "test gradient")?;
    let lambdas = layer_damping(train, &config.datainf)?;
    let block = config.datainf.block_size;
    let gram = gram_matrices(train, config.max_dim, block)?;
    let mut hvp = Vec::with_capacity(gram.len());
    for (l, mut m) in gram.into_iter().enumerate() {
        let d = test_mean[l].len();
        if lambdas[l] == 0.0 {
            hvp.push(vec![0.0; d]);
            continue;
        }
        for k in 0..d {
            m[k * d + k] += lambdas[l];
        }
        let chol = cholesky(&m, d)?;
        hvp.push(cholesky_solve(&chol, d, &test_mean[l])?);
    }
    let scores = influence_scores(train, &hvp, block)?;
    Ok(ExactResult {
        lambdas,
        hvp,
        scores,
    })
}

fn check_square(a: &[f64], n: usize, what: &str) -> Result<()> {
    if n == 0 || n.checked_mul(n) != Some(a.len()) {
        return Err(AttributionError::Shape(format!(
            "{what}: expected a non-empty {n} × {n} matrix, got {} values",
            a.len()
        )));
    }
    if a.iter().any(|x| !x.is_finite()) {
        return Err(AttributionError::NonFinite(format!(
            "{what} holds a NaN or infinity"
        )));
    }
    Ok(())
}

/// Cholesky factor of a symmetric positive-definite row-major n × n matrix: the lower-triangular
/// L (row-major, upper part zero) with A = L Lᵀ. Only the lower triangle of `a` is read.
///
/// Errors on a shape mismatch, a non-finite entry, or a pivot ≤ 0 (not positive definite).
pub fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>> {
    check_square(a, n, "cholesky")?;
    let mut l = vec![0.0f64; n * n];
    for j in 0..n {
        let mut diag = a[j * n + j];
        for k in 0..j {
            diag -= l[j * n + k] * l[j * n + k];
        }
        if diag.is_nan() || diag <= 0.0 {
            return Err(AttributionError::NotPositiveDefinite {
                index: j,
                value: diag,
            });
        }
        let ljj = diag.sqrt();
        l[j * n + j] = ljj;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            l[i * n + j] = s / ljj;
        }
    }
    Ok(l)
}

/// Solves A x = b given the Cholesky factor `l` of A (from [`cholesky`]): forward then back
/// substitution.
pub fn cholesky_solve(l: &[f64], n: usize, b: &[f64]) -> Result<Vec<f64>> {
    check_square(l, n, "cholesky factor")?;
    if b.len() != n {
        return Err(AttributionError::Shape(format!(
            "right-hand side has {} values, expected {n}",
            b.len()
        )));
    }
    // L y = b
    let mut y = vec![0.0f64; n];
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * y[k];
        }
        y[i] = s / l[i * n + i];
    }
    // Lᵀ x = y
    let mut x = vec![0.0f64; n];
    for i in (0..n).rev() {
        let mut s = y[i];
        for k in i + 1..n {
            s -= l[k * n + i] * x[k];
        }
        x[i] = s / l[i * n + i];
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(AttributionError::NonFinite(
            "cholesky_solve produced a non-finite value".into(),
        ));
    }
    Ok(x)
}

/// Ranks 1..n of `x` (ascending), ties sharing their average rank.
///
/// Errors when `x` holds a NaN.
pub fn average_ranks(x: &[f64]) -> Result<Vec<f64>> {
    if x.iter().any(|v| v.is_nan()) {
        return Err(AttributionError::NonFinite("cannot rank NaN".into()));
    }
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0f64; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        // -0.0 and 0.0 compare equal here (total_cmp orders them but they are a tie)
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = avg;
        }
        i = j + 1;
    }
    Ok(ranks)
}

/// Spearman's rank correlation of `x` and `y` (Pearson correlation of their average ranks, so ties
/// are handled).
///
/// Errors when the lengths differ, there are fewer than 2 values, a value is NaN, or one side is
/// constant (the correlation is undefined).
pub fn spearman(x: &[f64], y: &[f64]) -> Result<f64> {
    if x.len() != y.len() {
        return Err(AttributionError::Shape(format!(
            "spearman: {} vs {} values",
            x.len(),
            y.len()
        )));
    }
    if x.len() < 2 {
        return Err(AttributionError::InvalidArgument(
            "spearman needs at least 2 pairs".into(),
        ));
    }
    let rx = average_ranks(x)?;
    let ry = average_ranks(y)?;
    let n = rx.len() as f64;
    let mx = rx.iter().sum::<f64>() / n;
    let my = ry.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return Err(AttributionError::InvalidArgument(
            "spearman is undefined when one side is constant".into(),
        ));
    }
    Ok(sxy / (sxx * syy).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_by_hand() {
        // A = [[4, 2], [2, 3]] = L Lᵀ with L = [[2, 0], [1, √2]]
        let l = cholesky(&[4.0, 2.0, 2.0, 3.0], 2).unwrap();
        assert!((l[0] - 2.0).abs() < 1e-15 && l[1] == 0.0);
        assert!((l[2] - 1.0).abs() < 1e-15 && (l[3] - 2f64.sqrt()).abs() < 1e-15);
        let x = cholesky_solve(&l, 2, &[2.0, 5.0]).unwrap();
        // 4x + 2y = 2, 2x + 3y = 5 → x = −0.5, y = 2
        assert!(
            (x[0] + 0.5).abs() < 1e-14 && (x[1] - 2.0).abs() < 1e-14,
            "{x:?}"
        );
    }

    #[test]
    fn cholesky_rejects_indefinite_and_bad_shapes() {
        let err = cholesky(&[1.0, 2.0, 2.0, 1.0], 2).unwrap_err();
        assert!(
            matches!(err, AttributionError::NotPositiveDefinite { index: 1, .. }),
            "{err}"
        );
        assert!(cholesky(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(cholesky(&[f64::NAN], 1).is_err());
        assert!(cholesky_solve(&[1.0], 1, &[1.0, 2.0]).is_err());
    }

    #[test]
    fn ranks_and_spearman_by_hand() {
        assert_eq!(
            average_ranks(&[10.0, 20.0, 20.0, 5.0]).unwrap(),
            vec![2.0, 3.5, 3.5, 1.0]
        );
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]).unwrap() - 1.0).abs() < 1e-15);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap() + 1.0).abs() < 1e-15);
        // ranks x = (1,2,3,4), y = (1, 2.5, 2.5, 4): r = 4.5 / sqrt(5 · 4.5)
        let r = spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 5.0, 5.0, 9.0]).unwrap();
        assert!((r - 4.5 / (5.0f64 * 4.5).sqrt()).abs() < 1e-12, "{r}");
        assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_err());
        assert!(spearman(&[1.0], &[1.0]).is_err());
        assert!(spearman(&[1.0, f64::NAN], &[1.0, 2.0]).is_err());
    }
}
