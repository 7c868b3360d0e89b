//! Token choice from a logits row, shared by every backend that decodes locally.
//!
//! One implementation means the same (logits, seed) picks the same token in every backend: a
//! sampled run on candle and on ONNX Runtime agree wherever their logits agree.

use crate::rng::SplitMix64;

/// Argmax of a logits row: the first index on ties (like `torch.argmax`); NaNs are never chosen
/// unless every value is NaN (then 0).
/// Byte offset of the earliest occurrence in `text` of any non-empty stop string, where a
/// completion is cut (`DecodingConfig::stop_strings`); shared by every backend that decodes.
pub fn first_stop(text: &str, stop_strings: &[String]) -> Option<usize> {
    stop_strings
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

/// Index of the largest logit (lowest index on ties).
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in row.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}

/// Draws a token: candidates sorted by logit (descending, ties by id), cut to the top `top_k`
/// (0 = all), softmax(logits / temperature) in f64, cut to the smallest prefix whose mass reaches
/// `top_p`, then `u = rng.next_f64() * mass` picks the first candidate whose cumulative mass
/// exceeds `u`. A pure function of the logits and the generator state; NaN logits are skipped.
pub fn sample(
    logits: &[f32],
    rng: &mut SplitMix64,
    temperature: f64,
    top_p: f64,
    top_k: usize,
) -> u32 {
    let mut idx: Vec<u32> = (0..logits.len() as u32)
        .filter(|&i| !logits[i as usize].is_nan())
        .collect();
    if idx.is_empty() {
        return 0;
    }
    idx.sort_by(|&a, &b| {
        logits[b as usize]
            .partial_cmp(&logits[a as usize])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    if top_k > 0 && top_k < idx.len() {
        idx.truncate(top_k);
    }
    let max = f64::from(logits[idx[0] as usize]) / temperature;
    let mut probs: Vec<f64> = idx
        .iter()
        .map(|&i| (f64::from(logits[i as usize]) / temperature - max).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    if top_p < 1.0 {
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (j, p) in probs.iter().enumerate() {
            cum += p / total;
            if cum >= top_p {
                keep = j + 1;
                break;
            }
        }
        probs.truncate(keep);
        idx.truncate(keep);
    }
    let mass: f64 = probs.iter().sum();
    let u = rng.next_f64() * mass;
    let mut cum = 0.0;
    for (j, p) in probs.iter().enumerate() {
        cum += p;
        if cum > u {
            return idx[j];
        }
    }
    idx[idx.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_stop_is_the_earliest_non_empty_match() {
        let stops = vec!["".to_string(), "\n\n".to_string(), "Q:".to_string()];
        assert_eq!(first_stop("abc Q: x\n\ny", &stops), Some(4));
        assert_eq!(first_stop("a\n\nQ:", &stops), Some(1));
        assert_eq!(first_stop("nothing here", &stops), None);
        assert_eq!(first_stop("anything", &[]), None);
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn sampling_respects_top_k_top_p_and_frequencies() {
        let logits = [2.0f32, 1.0, 0.0, -1.0];
        let mut rng = SplitMix64::new(1);
        for _ in 0..200 {
            assert!(sample(&logits, &mut rng, 1.0, 1.0, 2) < 2, "top-k 2");
            assert_eq!(
                sample(&logits, &mut rng, 1.0, 0.5, 0),
                0,
                "the top token alone has mass > 0.5"
            );
        }
        // Frequencies follow softmax(logits / T).
        let mut counts = [0usize; 4];
        let n = 40_000;
        for _ in 0..n {
            counts[sample(&logits, &mut rng, 2.0, 1.0, 0) as usize] += 1;
        }
        let z: f64 = logits.iter().map(|&l| (l as f64 / 2.0).exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let p = (logits[i] as f64 / 2.0).exp() / z;
            assert!(
                (c as f64 / n as f64 - p).abs() < 0.01,
                "token {i}: {} vs {p}",
                c as f64 / n as f64
            );
        }
        let mut a = SplitMix64::new(9);
        let mut b = SplitMix64::new(9);
        assert_eq!(
            sample(&logits, &mut a, 0.7, 0.9, 3),
            sample(&logits, &mut b, 0.7, 0.9, 3)
        );
    }
}
