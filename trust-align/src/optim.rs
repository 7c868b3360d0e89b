//! AdamW with state that can be saved and restored exactly (for resumable training).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Result, Tensor, Var};

/// AdamW (Loshchilov & Hutter), decoupled weight decay, bias-corrected moments.
#[derive(Debug)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Steps taken.
    pub t: usize,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    /// A fresh optimiser for `vars`.
    pub fn new(vars: &[Var], lr: f64, weight_decay: f64) -> Result<Self> {
        let m = vars
            .iter()
            .map(|v| v.as_tensor().zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = vars
            .iter()
            .map(|v| v.as_tensor().zeros_like())
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            t: 0,
            m,
            v,
        })
    }

    /// One update of `vars` with `grads` (same order; `None` = no gradient, skipped).
    pub fn step(&mut self, vars: &[Var], grads: &[Option<Tensor>]) -> Result<()> {
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let Some(g) = g else { continue };
            let m = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update =
                (m.affine(1.0 / c1, 0.0)? / (v.affine(1.0 / c2, 0.0)?.sqrt()? + self.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - self.lr * self.weight_decay))?;
            var.set(&(decayed - (update * self.lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Saves the moments to `path` (safetensors); `t` and the hyper-parameters go in the caller's
    /// state file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut map = HashMap::new();
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            map.insert(format!("m.{i}"), m.clone());
            map.insert(format!("v.{i}"), v.clone());
        }
        candle_core::safetensors::save(&map, path)
    }

    /// Restores moments saved by [`AdamW::save`].
    pub fn load(&mut self, path: &Path, t: usize, device: &Device) -> Result<()> {
        let map = candle_core::safetensors::load(path, device)?;
        for i in 0..self.m.len() {
            let (Some(m), Some(v)) = (map.get(&format!("m.{i}")), map.get(&format!("v.{i}")))
            else {
                candle_core::bail!(
                    "{}: optimiser state lacks moments of parameter {i}",
                    path.display()
                )
            };
            self.m[i] = m.clone();
            self.v[i] = v.clone();
        }
        self.t = t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimises_a_quadratic() {
        let x = Var::new(&[3.0f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(std::slice::from_ref(&x), 0.1, 0.0).unwrap();
        for _ in 0..300 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap().get(x.as_tensor()).cloned();
            opt.step(std::slice::from_ref(&x), &[g]).unwrap();
        }
        let v: Vec<f32> = x.as_tensor().to_vec1().unwrap();
        assert!(v.iter().all(|a| a.abs() < 0.05), "{v:?}");
    }

    #[test]
    fn first_step_moves_by_lr_per_coordinate() {
        // With bias correction the first AdamW step is lr * g/|g| per coordinate.
        let x = Var::new(&[1.0f32, -1.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(std::slice::from_ref(&x), 0.01, 0.0).unwrap();
        let g = Tensor::new(&[4.0f32, -0.5], &Device::Cpu).unwrap();
        opt.step(std::slice::from_ref(&x), &[Some(g)]).unwrap();
        let v: Vec<f32> = x.as_tensor().to_vec1().unwrap();
        assert!(
            (v[0] - 0.99).abs() < 1e-5 && (v[1] + 0.99).abs() < 1e-5,
            "{v:?}"
        );
    }
}
