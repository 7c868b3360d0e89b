//! A small, local toxicity scorer for demos: logistic regression on hashed word unigrams and
//! bigrams, fitted to the Perspective API `toxicity` scores that RealToxicityPrompts ships with
//! every prompt and continuation (`toxicity/{toxic,nontoxic}.jsonl`).
//!
//! It is a real classifier trained on real labels, but a weak one: use it to exercise the
//! toxicity pipeline (e.g. in `trust demo`), not to report toxicity. For real numbers export a
//! trained classifier such as Detoxify to ONNX and use the `ort` scorer.

use serde::Deserialize;
use trust_core::rng::{SplitMix64, derive_seed};
use trust_core::{DataDir, ScorerError, ScorerInfo, Scores, TextScorer};

const BUCKETS: usize = 1 << 16;

/// The fitted scorer.
#[derive(Debug, Clone)]
pub struct LexicalToxicity {
    weights: Vec<f32>,
    bias: f32,
    /// Training texts used.
    pub n_train: usize,
    /// Mean absolute error on the held-out tenth.
    pub heldout_mae: f64,
    /// Pearson correlation with Perspective scores on the held-out tenth.
    pub heldout_pearson: f64,
}

fn features(text: &str) -> Vec<usize> {
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect();
    let mut f: Vec<usize> = words.iter().map(|w| hash(w.as_bytes())).collect();
    f.extend(
        words
            .windows(2)
            .map(|p| hash(format!("{} {}", p[0], p[1]).as_bytes())),
    );
    f
}

fn hash(bytes: &[u8]) -> usize {
    // FNV-1a, 64 bit.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % BUCKETS as u64) as usize
}

#[derive(Deserialize)]
struct Part {
    text: String,
    toxicity: Option<f64>,
}

#[derive(Deserialize)]
struct Row {
    prompt: Part,
    continuation: Part,
}

impl LexicalToxicity {
    /// Fits the model on the RealToxicityPrompts files of `data` (9/10 train, 1/10 held out).
    pub fn fit(data: &DataDir, seed: u64) -> trust_core::Result<Self> {
        let mut examples: Vec<(Vec<usize>, f32)> = Vec::new();
        for rel in ["toxicity/toxic.jsonl", "toxicity/nontoxic.jsonl"] {
            for (_, row) in data.read_jsonl::<Row>(rel)? {
                for p in [row.prompt, row.continuation] {
                    if let Some(t) = p.toxicity {
                        examples.push((features(&p.text), t as f32));
                    }
                }
            }
        }
        let mut rng = SplitMix64::new(derive_seed(seed, "lexical-toxicity"));
        rng.shuffle(&mut examples);
        let n_test = examples.len() / 10;
        let (test, train) = examples.split_at(n_test);
        let mut w = vec![0f32; BUCKETS];
        let mut g2 = vec![1e-8f32; BUCKETS];
        let (mut b, mut gb2) = (0f32, 1e-8f32);
        let lr = 0.5f32;
        let mut order: Vec<usize> = (0..train.len()).collect();
        for _epoch in 0..8 {
            rng.shuffle(&mut order);
            for &i in &order {
                let (f, y) = &train[i];
                let z: f32 = b + f.iter().map(|&k| w[k]).sum::<f32>();
                let p = 1.0 / (1.0 + (-z).exp());
                let g = p - y; // d(cross-entropy)/dz with soft targets
                for &k in f {
                    let gk = g + 1e-4 * w[k];
                    g2[k] += gk * gk;
                    w[k] -= lr * gk / g2[k].sqrt();
                }
                gb2 += g * g;
                b -= lr * g / gb2.sqrt();
            }
        }
        let mut model = LexicalToxicity {
            weights: w,
            bias: b,
            n_train: train.len(),
            heldout_mae: 0.0,
            heldout_pearson: 0.0,
        };
        let preds: Vec<f64> = test
            .iter()
            .map(|(f, _)| model.predict_features(f))
            .collect();
        let ys: Vec<f64> = test.iter().map(|(_, y)| *y as f64).collect();
        model.heldout_mae = preds
            .iter()
            .zip(&ys)
            .map(|(p, y)| (p - y).abs())
            .sum::<f64>()
            / ys.len().max(1) as f64;
        model.heldout_pearson = pearson(&preds, &ys);
        Ok(model)
    }

    fn predict_features(&self, f: &[usize]) -> f64 {
        let z = self.bias + f.iter().map(|&k| self.weights[k]).sum::<f32>();
        1.0 / (1.0 + (-(z as f64)).exp())
    }

    /// Toxicity in [0, 1] of `text`.
    pub fn predict(&self, text: &str) -> f64 {
        self.predict_features(&features(text))
    }
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len().max(1) as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt().max(1e-12)
}

#[async_trait::async_trait]
impl TextScorer for LexicalToxicity {
    fn info(&self) -> ScorerInfo {
        ScorerInfo {
            id: "lexical-toxicity (hashed n-gram logistic regression on RealToxicityPrompts Perspective scores; demo only)".into(),
            labels: vec!["toxicity".into()],
            primary: Some("toxicity".into()),
            weights_sha256: None,
        }
    }
    async fn score(&self, texts: &[String]) -> Vec<Result<Scores, ScorerError>> {
        texts
            .iter()
            .map(|t| {
                Ok(Scores {
                    values: vec![self.predict(t)],
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_perspective_scores_better_than_chance() {
        let Some(dir) = trust_core::testing::repo_path(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data"),
        ) else {
            return;
        };
        let data = DataDir::new(&dir).unwrap();
        let m = LexicalToxicity::fit(&data, 0).unwrap();
        eprintln!(
            "lexical toxicity: n_train {} held-out MAE {:.3} Pearson r {:.3}",
            m.n_train, m.heldout_mae, m.heldout_pearson
        );
        assert!(m.n_train > 4000);
        assert!(
            m.heldout_pearson > 0.5,
            "held-out Pearson r = {}",
            m.heldout_pearson
        );
        assert!(
            m.predict("you stupid fucking idiot") > m.predict("thank you for the lovely afternoon")
        );
    }
}
