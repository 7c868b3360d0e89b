//! DataInf (Kwon et al. 2024) as used by the attribution code of PROTOCOLS A.8 §5.
//!
//! For every layer l (each LoRA `A` or `B` tensor, flattened, of size d_l), training gradients
//! g_il (i = 1..n) and the mean test gradient v_l:
//!
//! ```text
//! λ_l    = c · (1/n) Σ_i mean(g_il²)  = c · (1/n) Σ_i ‖g_il‖² / d_l        (c = 0.1 by default)
//! h_l    = (1/(n·λ_l)) Σ_i [ v_l − (⟨v_l, g_il⟩ / (λ_l + ‖g_il‖²)) · g_il ]
//! I(z_i) = − Σ_l ⟨h_l, g_il⟩
//! ```
//!
//! The reference code (`IFEngine.compute_hvp_proposed`, `lambda_const_param = 10`) computes
//! `lambda_const = torch.mean(S) / lambda_const_param` with `S[i] = torch.mean(grad_i**2)`, i.e.
//! exactly the λ_l above with c = 1 / lambda_const_param = 0.1; `mean` runs over all d_l entries of
//! the tensor. h_l is the average over i of the Sherman–Morrison inverse (λ_l I + g_il g_ilᵀ)⁻¹ v_l,
//! DataInf's stand-in for (G_l + λ_l I)⁻¹ v_l with G_l = (1/n) Σ_i g_il g_ilᵀ (see
//! [`super::exact`] for the exact version).
//!
//! **Sign:** I(z_i) > 0 means up-weighting z_i raises the test loss (harmful to the test
//! objective), I(z_i) < 0 means it lowers it (helpful).
//!
//! **Streaming:** three passes over the training [`GradientSource`], one block at a time:
//! pass 1 computes λ_l ([`layer_damping`]), pass 2 accumulates Σ_i c_il g_il for h_l
//! ([`datainf_hvp`]), pass 3 computes the scores ([`influence_scores`]). [`datainf_many`] serves
//! several test vectors (e.g. one per vertical) with the same three passes. Memory is one block of
//! `f32` plus O(Σ_l d_l) `f64` plus the n output scores. All sums are in `f64`.
//!
//! **Degenerate layers:** if every training gradient of a layer is exactly zero, λ_l = 0 and the
//! formula divides by zero; such a layer contributes nothing to any score (all its ⟨h_l, g_il⟩ have
//! g_il = 0), so h_l is set to 0 and the layer is listed in [`DataInfResult::zero_layers`].

use super::source::{GradientSource, LayerLayout, LayerVectors, check_finite, check_layer_vectors};
use super::{AttributionError, Result};

/// Settings of [`datainf`].
#[derive(Debug, Clone, PartialEq)]
pub struct DataInfConfig {
    /// The constant c in λ_l = c · (1/n) Σ_i mean(g_il²). Default 0.1 (= 1 / `lambda_const_param`
    /// with the reference's `lambda_const_param = 10`). Must be finite and > 0.
    pub damping_scale: f64,
    /// Number of examples per streamed block (≥ 1). Default 256.
    pub block_size: usize,
}

impl Default for DataInfConfig {
    fn default() -> Self {
        DataInfConfig {
            damping_scale: 0.1,
            block_size: 256,
        }
    }
}

impl DataInfConfig {
    /// The configuration matching the reference's `lambda_const_param` (c = 1 / param).
    pub fn from_lambda_const_param(lambda_const_param: f64) -> Self {
        DataInfConfig {
            damping_scale: 1.0 / lambda_const_param,
            ..Self::default()
        }
    }

    fn check(&self) -> Result<()> {
        if !(self.damping_scale.is_finite() && self.damping_scale > 0.0) {
            return Err(AttributionError::InvalidArgument(format!(
                "damping_scale must be finite and > 0, got {}",
                self.damping_scale
            )));
        }
        if self.block_size == 0 {
            return Err(AttributionError::InvalidArgument(
                "block_size must be ≥ 1".into(),
            ));
        }
        Ok(())
    }
}

/// Output of [`datainf`].
#[derive(Debug, Clone, PartialEq)]
pub struct DataInfResult {
    /// λ_l per layer.
    pub lambdas: Vec<f64>,
    /// h_l per layer (the approximate inverse-Hessian–vector product).
    pub hvp: LayerVectors,
    /// I(z_i) per training example, in source order (raw, not normalised).
    pub scores: Vec<f64>,
    /// Indices of layers whose training gradients are all zero (λ_l = 0, h_l set to 0).
    pub zero_layers: Vec<usize>,
}

fn dot(a: &[f64], g: &[f32]) -> f64 {
    a.iter().zip(g).map(|(&x, &y)| x * f64::from(y)).sum()
}

fn sum_sq(g: &[f32]) -> f64 {
    g.iter().map(|&y| f64::from(y) * f64::from(y)).sum()
}

/// Streams `source`, checking finiteness and that it yields exactly `len()` examples in order.
pub(crate) fn stream(
    source: &dyn GradientSource,
    block_size: usize,
    mut f: impl FnMut(usize, &[f32]) -> Result<()>,
) -> Result<usize> {
    let layout = source.layout();
    let mut next = 0usize;
    source.for_each_block(block_size, &mut |block| {
        for (i, rec) in block.iter() {
            if i != next {
                return Err(AttributionError::InvalidArgument(format!(
                    "gradient source yielded example {i}, expected {next}"
                )));
            }
            check_finite(rec, i, layout)?;
            f(i, rec)?;
            next += 1;
        }
        Ok(())
    })?;
    if next != source.len() {
        return Err(AttributionError::InvalidArgument(format!(
            "gradient source announced {} examples but streamed {next}",
            source.len()
        )));
    }
    Ok(next)
}

fn nonempty(source: &dyn GradientSource) -> Result<usize> {
    match source.len() {
        0 => Err(AttributionError::InvalidArgument(
            "no training gradients".into(),
        )),
        n => Ok(n),
    }
}

/// Pass 1: λ_l = c · (1/n) Σ_i ‖g_il‖² / d_l for every layer.
pub fn layer_damping(train: &dyn GradientSource, config: &DataInfConfig) -> Result<Vec<f64>> {
    config.check()?;
    let n = nonempty(train)?;
    let layout = train.layout();
    let mut s = vec![0.0f64; layout.num_layers()];
    stream(train, config.block_size, |_, rec| {
        for (l, acc) in s.iter_mut().enumerate() {
            *acc += sum_sq(layout.layer(rec, l)) / layout.dims()[l] as f64;
        }
        Ok(())
    })?;
    Ok(s.into_iter()
        .map(|x| config.damping_scale * x / n as f64)
        .collect())
}

fn check_lambdas(lambdas: &[f64], layout: &LayerLayout) -> Result<()> {
    if lambdas.len() != layout.num_layers() {
        return Err(AttributionError::Shape(format!(
            "expected {} damping values, got {}",
            layout.num_layers(),
            lambdas.len()
        )));
    }
    if let Some((l, x)) = lambdas
        .iter()
        .enumerate()
        .find(|(_, x)| !(x.is_finite() && **x >= 0.0))
    {
        return Err(AttributionError::InvalidArgument(format!(
            "damping of layer {l} must be finite and ≥ 0, got {x}"
        )));
    }
    Ok(())
}

/// Pass 2: h_l = (1/(n·λ_l)) Σ_i [ v_l − (⟨v_l, g_il⟩ / (λ_l + ‖g_il‖²)) · g_il ] for every layer,
/// with `test_mean` = v (one `f64` vector per layer) and `lambdas` from [`layer_damping`].
/// A layer with λ_l = 0 gets h_l = 0 (see the module docs).
pub fn datainf_hvp(
    train: &dyn GradientSource,
    test_mean: &[Vec<f64>],
    lambdas: &[f64],
    block_size: usize,
) -> Result<LayerVectors> {
    let mut h = datainf_hvp_many(train, &[test_mean.to_vec()], lambdas, block_size)?;
    Ok(h.swap_remove(0))
}

/// [`datainf_hvp`] for several test vectors (e.g. one per vertical) in a single pass over the
/// training gradients; returns one h per test vector, in order.
pub fn datainf_hvp_many(
    train: &dyn GradientSource,
    test_means: &[LayerVectors],
    lambdas: &[f64],
    block_size: usize,
) -> Result<Vec<LayerVectors>> {
    let n = nonempty(train)?;
    let layout = train.layout();
    for (t, v) in test_means.iter().enumerate() {
        check_layer_vectors(v, layout, &format!("test gradient {t}"))?;
    }
    check_lambdas(lambdas, layout)?;
    // acc[t]_l = Σ_i c_il g_il, c_il = ⟨v_l, g_il⟩ / (λ_l + ‖g_il‖²)
    let mut acc: Vec<LayerVectors> = test_means
        .iter()
        .map(|_| layout.dims().iter().map(|&d| vec![0.0f64; d]).collect())
        .collect();
    stream(train, block_size.max(1), |_, rec| {
        for (l, &lambda) in lambdas.iter().enumerate() {
            if lambda == 0.0 {
                continue;
            }
            let g = layout.layer(rec, l);
            let denom = lambda + sum_sq(g);
            for (a, v) in acc.iter_mut().zip(test_means) {
                let c = dot(&v[l], g) / denom;
                for (x, &y) in a[l].iter_mut().zip(g) {
                    *x += c * f64::from(y);
                }
            }
        }
        Ok(())
    })?;
    let nf = n as f64;
    Ok(acc
        .into_iter()
        .zip(test_means)
        .map(|(a, v)| {
            a.into_iter()
                .enumerate()
                .map(|(l, a)| {
                    let lambda = lambdas[l];
                    if lambda == 0.0 {
                        return vec![0.0; a.len()];
                    }
                    // (1/(nλ)) Σ_i (v − c_i g_i) = (n v − Σ_i c_i g_i) / (nλ)
                    a.iter()
                        .zip(&v[l])
                        .map(|(&s, &v)| (nf * v - s) / (nf * lambda))
                        .collect()
                })
                .collect()
        })
        .collect())
}

/// Pass 3: I(z_i) = −Σ_l ⟨h_l, g_il⟩ for every training example, in source order. Works with any
/// per-layer vector `h` (DataInf's or the exact inverse-HVP of [`super::exact`]).
pub fn influence_scores(
    train: &dyn GradientSource,
    hvp: &[Vec<f64>],
    block_size: usize,
) -> Result<Vec<f64>> {
    let mut s = influence_scores_many(train, &[hvp.to_vec()], block_size)?;
    Ok(s.swap_remove(0))
}

/// [`influence_scores`] for several h in a single pass; returns one score vector per h.
pub fn influence_scores_many(
    train: &dyn GradientSource,
    hvps: &[LayerVectors],
    block_size: usize,
) -> Result<Vec<Vec<f64>>> {
    let layout = train.layout();
    for (t, h) in hvps.iter().enumerate() {
        check_layer_vectors(h, layout, &format!("inverse-HVP {t}"))?;
    }
    let mut scores: Vec<Vec<f64>> = hvps
        .iter()
        .map(|_| Vec::with_capacity(train.len()))
        .collect();
    stream(train, block_size.max(1), |_, rec| {
        for (out, h) in scores.iter_mut().zip(hvps) {
            let s: f64 = h
                .iter()
                .enumerate()
                .map(|(l, h)| dot(h, layout.layer(rec, l)))
                .sum();
            out.push(-s);
        }
        Ok(())
    })?;
    Ok(scores)
}

/// DataInf scores of every training example for the mean test gradient `test_mean`
/// (see [`super::source::mean_gradient`]): passes 1–3 of the module docs.
pub fn datainf(
    train: &dyn GradientSource,
    test_mean: &[Vec<f64>],
    config: &DataInfConfig,
) -> Result<DataInfResult> {
    let mut r = datainf_many(train, &[test_mean.to_vec()], config)?;
    Ok(r.swap_remove(0))
}

/// DataInf for several test vectors (e.g. one per vertical) with the same training gradients:
/// still three passes over the training source in total. Returns one result per test vector, in
/// order; each equals what [`datainf()`] gives for that vector alone.
pub fn datainf_many(
    train: &dyn GradientSource,
    test_means: &[LayerVectors],
    config: &DataInfConfig,
) -> Result<Vec<DataInfResult>> {
    config.check()?;
    if test_means.is_empty() {
        return Err(AttributionError::InvalidArgument(
            "no test gradient given".into(),
        ));
    }
    for (t, v) in test_means.iter().enumerate() {
        check_layer_vectors(v, train.layout(), &format!("test gradient {t}"))?;
    }
    let lambdas = layer_damping(train, config)?;
    let hvps = datainf_hvp_many(train, test_means, &lambdas, config.block_size)?;
    let scores = influence_scores_many(train, &hvps, config.block_size)?;
    let zero_layers: Vec<usize> = lambdas
        .iter()
        .enumerate()
        .filter(|(_, x)| **x == 0.0)
        .map(|(l, _)| l)
        .collect();
    Ok(hvps
        .into_iter()
        .zip(scores)
        .map(|(hvp, scores)| DataInfResult {
            lambdas: lambdas.clone(),
            hvp,
            scores,
            zero_layers: zero_layers.clone(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::InMemoryGradients;

    #[test]
    fn one_example_one_layer_by_hand() {
        // n = 1, d = 2, g = (1, 1): mean(g²) = 1, λ = 0.1; v = (1, 0):
        // ⟨v,g⟩ = 1, ‖g‖² = 2, c = 1/2.1; h = (v − c g)/λ = ((1 − c), −c)/0.1
        // I = −⟨h, g⟩ = −(1 − 2c)/0.1
        let mut g = InMemoryGradients::new(LayerLayout::from_dims(&[2]).unwrap());
        g.push(&[&[1.0, 1.0]]).unwrap();
        let r = datainf(&g, &[vec![1.0, 0.0]], &DataInfConfig::default()).unwrap();
        let c = 1.0 / 2.1;
        assert!((r.lambdas[0] - 0.1).abs() < 1e-15);
        assert!(
            (r.scores[0] - (-(1.0 - 2.0 * c) / 0.1)).abs() < 1e-12,
            "{:?}",
            r.scores
        );
    }

    #[test]
    fn zero_layer_is_skipped_and_bad_input_errors() {
        let mut g = InMemoryGradients::new(LayerLayout::from_dims(&[1, 2]).unwrap());
        g.push(&[&[0.0], &[1.0, 0.0]]).unwrap();
        g.push(&[&[0.0], &[0.0, 1.0]]).unwrap();
        let v = vec![vec![1.0], vec![1.0, -1.0]];
        let r = datainf(&g, &v, &DataInfConfig::default()).unwrap();
        assert_eq!(r.zero_layers, vec![0]);
        assert!(r.scores.iter().all(|s| s.is_finite()));
        assert!(r.scores[0] < 0.0 && r.scores[1] > 0.0, "{:?}", r.scores);
        // wrong test-vector shape, bad damping, empty source
        assert!(datainf(&g, &[vec![1.0]], &DataInfConfig::default()).is_err());
        let bad = DataInfConfig {
            damping_scale: -1.0,
            ..Default::default()
        };
        assert!(datainf(&g, &v, &bad).is_err());
        let empty = InMemoryGradients::new(LayerLayout::from_dims(&[1, 2]).unwrap());
        assert!(datainf(&empty, &v, &DataInfConfig::default()).is_err());
    }

    #[test]
    fn non_finite_gradient_is_an_error() {
        let mut g = InMemoryGradients::new(LayerLayout::from_dims(&[2]).unwrap());
        g.push(&[&[1.0, f32::INFINITY]]).unwrap();
        let err = datainf(&g, &[vec![1.0, 0.0]], &DataInfConfig::default()).unwrap_err();
        assert!(matches!(err, AttributionError::NonFinite(_)), "{err}");
    }

    #[test]
    fn many_equals_one_at_a_time() {
        let mut g = InMemoryGradients::new(LayerLayout::from_dims(&[3, 2]).unwrap());
        for i in 0..7 {
            let x = i as f32;
            g.push(&[&[x, 1.0 - x, 0.5 * x], &[(x * 0.7).sin(), 2.0]])
                .unwrap();
        }
        let v1 = vec![vec![1.0, 0.0, -1.0], vec![0.3, 0.2]];
        let v2 = vec![vec![-0.5, 2.0, 0.0], vec![1.0, -1.0]];
        let cfg = DataInfConfig {
            block_size: 3,
            ..Default::default()
        };
        let many = datainf_many(&g, &[v1.clone(), v2.clone()], &cfg).unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(many[0], datainf(&g, &v1, &cfg).unwrap());
        assert_eq!(many[1], datainf(&g, &v2, &cfg).unwrap());
        assert_ne!(many[0].scores, many[1].scores);
        assert!(datainf_many(&g, &[], &cfg).is_err());
    }

    #[test]
    fn lambda_const_param_is_reciprocal() {
        assert_eq!(
            DataInfConfig::from_lambda_const_param(10.0).damping_scale,
            0.1
        );
    }
}
