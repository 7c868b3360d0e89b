//! Training losses on candle tensors: SFT cross-entropy, DPO and Bradley–Terry.
//!
//! All functions are differentiable with candle's autograd (no fused op without a backward pass),
//! so they serve training and per-example gradients for attribution alike.
//!
//! Shapes: `logits` `[b, t, v]` (f32), `ids` `[b, t]` (u32), `target_mask` `[b, t]` (f32, 1 where
//! the token at that position is a *target* to score, 0 for prompt and padding). The logits at
//! position `t − 1` score the token at position `t` (the true next-token log-prob; the paper's
//! toxicity side metric is off by one, which verticals reproduce separately).

use candle_core::{D, DType, Result, Tensor};

/// Log-prob of each token given everything before it: `[b, t − 1]`, entry `j` scores `ids[:, j + 1]`.
pub fn token_logprobs(logits: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (_b, t, _v) = logits.dims3()?;
    let lp = candle_nn::ops::log_softmax(
        &logits.narrow(1, 0, t - 1)?.to_dtype(DType::F32)?,
        D::Minus1,
    )?;
    let next = ids
        .narrow(1, 1, t - 1)?
        .to_dtype(DType::U32)?
        .unsqueeze(2)?;
    lp.gather(&next.contiguous()?, 2)?.squeeze(2)
}

/// Sum of target-token log-probs per sequence: `[b]`.
pub fn sequence_logprob(logits: &Tensor, ids: &Tensor, target_mask: &Tensor) -> Result<Tensor> {
    let (_b, t) = ids.dims2()?;
    let lp = token_logprobs(logits, ids)?;
    let m = target_mask.narrow(1, 1, t - 1)?.to_dtype(DType::F32)?;
    (lp * m)?.sum(1)
}

/// Token-mean next-token cross-entropy over the target tokens of the whole batch (scalar).
pub fn sft_loss(logits: &Tensor, ids: &Tensor, target_mask: &Tensor) -> Result<Tensor> {
    let (_b, t) = ids.dims2()?;
    let lp = token_logprobs(logits, ids)?;
    let m = target_mask.narrow(1, 1, t - 1)?.to_dtype(DType::F32)?;
    let n = m.sum_all()?;
    (lp * &m)?.sum_all()?.neg()?.broadcast_div(&n)
}

/// `log σ(x)`, computed stably and differentiably: `−(relu(−x) + log(1 + e^{−|x|}))`.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let softplus_neg = (x.neg()?.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    softplus_neg.neg()
}

/// The DPO loss (Rafailov et al. 2023), mean over the batch, and the implicit reward margins
/// `β[(log π_w − log π_ref,w) − (log π_l − log π_ref,l)]` per pair.
pub fn dpo_loss(
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    ref_chosen: &Tensor,
    ref_rejected: &Tensor,
    beta: f64,
) -> Result<(Tensor, Tensor)> {
    let margins =
        ((policy_chosen - ref_chosen)? - (policy_rejected - ref_rejected)?)?.affine(beta, 0.0)?;
    let loss = log_sigmoid(&margins)?.neg()?.mean_all()?;
    Ok((loss, margins))
}

/// The Bradley–Terry reward-model loss `−log σ(r_w − r_l)`, mean over the batch.
pub fn bradley_terry_loss(reward_chosen: &Tensor, reward_rejected: &Tensor) -> Result<Tensor> {
    log_sigmoid(&(reward_chosen - reward_rejected)?)?
        .neg()?
        .mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn toy() -> (Var, Tensor, Tensor) {
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..2 * 4 * 5)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let logits = Var::from_vec(vals, (2, 4, 5), &dev).unwrap();
        let ids = Tensor::new(&[[1u32, 2, 3, 4], [0, 4, 4, 1]], &dev).unwrap();
        let mask = Tensor::new(&[[0f32, 0., 1., 1.], [0., 1., 1., 0.]], &dev).unwrap();
        (logits, ids, mask)
    }

    fn log_softmax_ref(row: &[f32]) -> Vec<f64> {
        let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let z: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
        row.iter().map(|&x| x as f64 - m - z.ln()).collect()
    }

    #[test]
    fn sequence_logprob_matches_a_plain_loop() {
        let (logits, ids, mask) = toy();
        let got: Vec<f32> = sequence_logprob(logits.as_tensor(), &ids, &mask)
            .unwrap()
            .to_vec1()
            .unwrap();
        let l: Vec<Vec<Vec<f32>>> = logits.as_tensor().to_vec3().unwrap();
        let ids_v: Vec<Vec<u32>> = ids.to_vec2().unwrap();
        let m: Vec<Vec<f32>> = mask.to_vec2().unwrap();
        for b in 0..2 {
            let mut want = 0.0;
            for t in 1..4 {
                if m[b][t] > 0.0 {
                    want += log_softmax_ref(&l[b][t - 1])[ids_v[b][t] as usize];
                }
            }
            assert!((got[b] as f64 - want).abs() < 1e-5, "{} vs {want}", got[b]);
        }
        let sft: f32 = sft_loss(logits.as_tensor(), &ids, &mask)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((sft + (got[0] + got[1]) / 4.0).abs() < 1e-5);
    }

    #[test]
    fn log_sigmoid_is_stable_and_exact() {
        let x = Tensor::new(&[-100f32, -2.0, 0.0, 3.0, 100.0], &Device::Cpu).unwrap();
        let got: Vec<f32> = log_sigmoid(&x).unwrap().to_vec1().unwrap();
        for (g, xv) in got.iter().zip([-100f64, -2.0, 0.0, 3.0, 100.0]) {
            let want = -(1.0 + (-xv).exp()).ln();
            assert!((*g as f64 - want).abs() < 1e-5, "{g} vs {want}");
        }
    }

    /// The DPO loss gradient w.r.t. the policy logits equals central finite differences.
    #[test]
    fn dpo_gradient_matches_finite_differences() {
        let (logits, ids, mask) = toy();
        let dev = Device::Cpu;
        let ref_c = Tensor::new(&[-3.0f32], &dev).unwrap();
        let ref_r = Tensor::new(&[-2.5f32], &dev).unwrap();
        let loss_of = |l: &Tensor| -> Tensor {
            let s = sequence_logprob(l, &ids, &mask).unwrap();
            let (c, r) = (s.narrow(0, 0, 1).unwrap(), s.narrow(0, 1, 1).unwrap());
            dpo_loss(&c, &r, &ref_c, &ref_r, 0.5).unwrap().0
        };
        let loss = loss_of(logits.as_tensor());
        let grads = loss.backward().unwrap();
        let g: Vec<f32> = grads
            .get(logits.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f32> = logits.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let eps = 1e-2f32;
        let mut checked = 0;
        for k in 0..base.len() {
            let mut plus = base.clone();
            plus[k] += eps;
            let mut minus = base.clone();
            minus[k] -= eps;
            let f = |v: Vec<f32>| -> f32 {
                loss_of(&Tensor::from_vec(v, (2, 4, 5), &dev).unwrap())
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let fd = (f(plus) - f(minus)) / (2.0 * eps);
            assert!(
                (fd - g[k]).abs() < 2e-3,
                "component {k}: autograd {} vs finite difference {fd}",
                g[k]
            );
            if g[k].abs() > 1e-3 {
                checked += 1;
            }
        }
        assert!(
            checked >= 10,
            "only {checked} non-trivial gradient components"
        );
    }

    #[test]
    fn bradley_terry_prefers_the_larger_reward() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[2.0f32], &dev).unwrap();
        let l = Tensor::new(&[0.0f32], &dev).unwrap();
        let a: f32 = bradley_terry_loss(&w, &l).unwrap().to_scalar().unwrap();
        let b: f32 = bradley_terry_loss(&l, &w).unwrap().to_scalar().unwrap();
        assert!((a as f64 - (1.0 + (-2.0f64).exp()).ln()).abs() < 1e-6);
        assert!(b > a);
    }
}
