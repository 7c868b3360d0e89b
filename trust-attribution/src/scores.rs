//! Post-processing of influence scores: the sign-wise normalisation of PROTOCOLS A.8 §6 and
//! ranking helpers.
//!
//! **Sign convention** (influence functions, A.8 §5): I(z_i) > 0 means up-weighting z_i raises the
//! test loss, so z_i is *harmful* to the test objective; I(z_i) < 0 means up-weighting z_i lowers
//! the test loss, so z_i is *helpful*. Normalisation keeps signs, so the same reading applies to
//! normalised scores.
//!
//! Score vectors are saved like the reference's `np.save` ([`write_npy`]: a 1-D little-endian
//! `float64` `.npy` file) and read back with [`read_npy`].

use std::path::Path;

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

const NPY_MAGIC: &[u8] = b"\x93NUMPY";

fn npy_error(path: &Path, message: impl Into<String>) -> AttributionError {
    AttributionError::Npy {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Writes `values` as a 1-D `<f8` NPY (format 1.0) file, as `numpy.save` does: readable with
/// `numpy.load`. The file is written to a temporary name and renamed into place.
pub fn write_npy(path: impl AsRef<Path>, values: &[f64]) -> Result<()> {
    let path = path.as_ref();
    let mut header = format!(
        "{{'descr': '<f8', 'fortran_order': False, 'shape': ({},), }}",
        values.len()
    );
    // magic (6) + version (2) + header length (2) + header, padded with spaces to a multiple of 64
    // and ended by a newline
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let header_len = u16::try_from(header.len())
        .map_err(|_| npy_error(path, "header too long for NPY format 1.0"))?;
    let mut bytes = Vec::with_capacity(10 + header.len() + 8 * values.len());
    bytes.extend_from_slice(NPY_MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&header_len.to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    trust_core::fsutil::write_atomic(path, &bytes).map_err(|e| AttributionError::io(path, e))
}

/// Reads a 1-D little-endian `float64`, C-order NPY file (format 1.x, 2.x or 3.x), such as
/// [`write_npy`] or `numpy.save(path, np.asarray(x, dtype="<f8"))` writes.
///
/// Errors on any other dtype, shape or order, or a truncated file.
pub fn read_npy(path: impl AsRef<Path>) -> Result<Vec<f64>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| AttributionError::io(path, e))?;
    if bytes.len() < 10 || !bytes.starts_with(NPY_MAGIC) {
        return Err(npy_error(path, "not an NPY file (bad magic)"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => {
            let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (
                usize::try_from(n).map_err(|_| npy_error(path, "header too long"))?,
                12,
            )
        }
        v => return Err(npy_error(path, format!("unsupported NPY version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| npy_error(path, "truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| npy_error(path, "header is not text"))?;
    let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
    if !compact.contains("'descr':'<f8'") {
        return Err(npy_error(
            path,
            format!("dtype must be '<f8': {}", header.trim()),
        ));
    }
    if !compact.contains("'fortran_order':False") {
        return Err(npy_error(path, "Fortran order is not supported"));
    }
    let shape = compact
        .split("'shape':(")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .ok_or_else(|| npy_error(path, "no shape in header"))?;
    let n: usize = shape
        .strip_suffix(',')
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| npy_error(path, format!("expected a 1-D shape, got ({shape})")))?;
    let data = &bytes[start + header_len..];
    if Some(data.len()) != n.checked_mul(8) {
        return Err(npy_error(
            path,
            format!("{} data bytes for {n} float64 values", data.len()),
        ));
    }
    Ok(data
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
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

    #[test]
    fn npy_round_trip_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("scores.npy");
        let v = vec![0.5, -1.0, 0.0, 1.0e-300, f64::MAX];
        write_npy(&p, &v).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        // header is padded to 64 bytes, as numpy does
        let hl = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
        assert_eq!((10 + hl) % 64, 0);
        assert_eq!(bytes[10 + hl - 1], b'\n');
        assert!(
            std::str::from_utf8(&bytes[10..10 + hl])
                .unwrap()
                .starts_with("{'descr': '<f8', 'fortran_order': False, 'shape': (5,), }")
        );
        assert_eq!(bytes.len(), 10 + hl + 40);
        assert_eq!(read_npy(&p).unwrap(), v);
        write_npy(&p, &[]).unwrap();
        assert!(read_npy(&p).unwrap().is_empty());
        // wrong dtype and truncated data are errors
        let mut bad = bytes.clone();
        let pos = bad.windows(3).position(|w| w == b"<f8").unwrap();
        bad[pos + 2] = b'4';
        std::fs::write(&p, &bad).unwrap();
        assert!(matches!(read_npy(&p), Err(AttributionError::Npy { .. })));
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        assert!(read_npy(&p).is_err());
    }
}
