//! A small, dependency-free mutational fuzzer for the parsers and loaders (`tests/fuzz*.rs` of
//! each crate; docs/fuzzing.md).
//!
//! It needs no nightly toolchain (cargo-fuzz does) and is deterministic: input `i` of a target is
//! a function of the target's name, `i` and its seed corpus, so a failure reproduces with the
//! same `TRUST_FUZZ_ITERS`. Each input is a corpus entry (committed examples of real inputs)
//! with one to four mutations: bit flips, "interesting" bytes (`0`, `0xff`, quotes, separators,
//! Python-only whitespace `\x1c`...), insertions, deletions, duplications, truncations, splices
//! from other entries and overwrites with boundary integers (`0`, `u32::MAX`, `u64::MAX`,
//! `i64::MIN`...) — the values that turn a length field into an allocation bomb.
//!
//! [`run`] calls the target on every input and fails, naming the target, the input's index and
//! its bytes (also written to `target/fuzz-failures/`), if the target panics. A target that
//! aborts the process (a failed allocation) fails the test binary itself.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::rng::{SplitMix64, derive_seed};

/// Bytes that parsers treat specially.
const INTERESTING_BYTES: &[u8] = &[
    0x00, 0xff, 0x7f, 0x80, b'"', b'\'', b'\\', b'\n', b'\r', b',', b'.', b'<', b'>', b'{', b'}',
    b'[', b']', b':', b' ', 0x1c, 0x1f, 0xc3, 0xe2,
];

/// Little-endian integers that stress length and count fields.
const INTERESTING_INTS: &[u64] = &[
    0,
    1,
    2,
    0x7f,
    0xff,
    0x100,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
];

/// Generates mutated inputs from a seed corpus.
#[derive(Debug, Clone)]
pub struct Mutator {
    rng: SplitMix64,
    corpus: Vec<Vec<u8>>,
}

impl Mutator {
    /// A mutator over `corpus` (an empty corpus starts from empty inputs).
    pub fn new(seed: u64, corpus: Vec<Vec<u8>>) -> Self {
        let corpus = if corpus.is_empty() {
            vec![Vec::new()]
        } else {
            corpus
        };
        Mutator {
            rng: SplitMix64::new(seed),
            corpus,
        }
    }

    fn pos(&mut self, len: usize) -> usize {
        self.rng.below(len + 1)
    }

    /// The next input: a corpus entry with 1-4 mutations.
    pub fn next_input(&mut self) -> Vec<u8> {
        let k = self.rng.below(self.corpus.len());
        let mut v = self.corpus[k].clone();
        let n = 1 + self.rng.below(4);
        for _ in 0..n {
            self.mutate(&mut v);
        }
        v
    }

    fn mutate(&mut self, v: &mut Vec<u8>) {
        match self.rng.below(9) {
            0 if !v.is_empty() => {
                let i = self.rng.below(v.len());
                v[i] ^= 1 << self.rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = self.rng.below(v.len());
                v[i] = INTERESTING_BYTES[self.rng.below(INTERESTING_BYTES.len())];
            }
            2 => {
                let i = self.pos(v.len());
                let b = INTERESTING_BYTES[self.rng.below(INTERESTING_BYTES.len())];
                let count = 1 + self.rng.below(4);
                v.splice(i..i, std::iter::repeat_n(b, count));
            }
            3 if !v.is_empty() => {
                let i = self.rng.below(v.len());
                let len = 1 + self.rng.below((v.len() - i).min(64));
                v.drain(i..i + len);
            }
            4 if !v.is_empty() => {
                let i = self.rng.below(v.len());
                let len = 1 + self.rng.below((v.len() - i).min(64));
                let chunk: Vec<u8> = v[i..i + len].to_vec();
                let at = self.pos(v.len());
                v.splice(at..at, chunk);
            }
            5 => {
                let at = self.pos(v.len());
                v.truncate(at);
            }
            6 => {
                let other = self.corpus[self.rng.below(self.corpus.len())].clone();
                if !other.is_empty() {
                    let i = self.rng.below(other.len());
                    let len = 1 + self.rng.below((other.len() - i).min(256));
                    let at = self.pos(v.len());
                    v.splice(at..at, other[i..i + len].iter().copied());
                }
            }
            7 if v.len() >= 8 => {
                let x = INTERESTING_INTS[self.rng.below(INTERESTING_INTS.len())];
                let width = [1usize, 2, 4, 8][self.rng.below(4)];
                let i = self.rng.below(v.len() - width + 1);
                v[i..i + width].copy_from_slice(&x.to_le_bytes()[..width]);
            }
            _ => {
                // Random bytes inserted.
                let at = self.pos(v.len());
                let count = 1 + self.rng.below(8);
                let bytes: Vec<u8> = (0..count).map(|_| self.rng.next_u64() as u8).collect();
                v.splice(at..at, bytes);
            }
        }
    }
}

/// Iterations per target: `TRUST_FUZZ_ITERS`, else `default`.
pub fn iterations(default: usize) -> usize {
    std::env::var("TRUST_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Runs `target` on [`iterations`]`(default)` inputs mutated from `corpus` (plus the corpus
/// itself, unmutated, first). Panics — naming the target, the input index and its bytes — if
/// the target panics on one. Returns the number of inputs run.
pub fn run(name: &str, corpus: Vec<Vec<u8>>, default: usize, target: impl Fn(&[u8])) -> usize {
    let iters = iterations(default);
    let mut m = Mutator::new(derive_seed(0, &format!("fuzz/{name}")), corpus.clone());
    let inputs = corpus
        .into_iter()
        .chain(std::iter::repeat_with(|| m.next_input()))
        .take(iters.max(1));
    let mut n = 0;
    for (i, input) in inputs.enumerate() {
        if catch_unwind(AssertUnwindSafe(|| target(&input))).is_err() {
            let dir =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fuzz-failures");
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("{name}-{i}.bin"));
            let _ = std::fs::write(&file, &input);
            panic!(
                "fuzz target `{name}` panicked on input {i} ({} bytes, saved to {}): {:?}",
                input.len(),
                file.display(),
                String::from_utf8_lossy(&input[..input.len().min(400)])
            );
        }
        n += 1;
    }
    n
}

/// The input as text: valid UTF-8 kept, invalid sequences replaced (for `&str` targets).
pub fn text(input: &[u8]) -> String {
    String::from_utf8_lossy(input).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_deterministic_and_varied() {
        let corpus = vec![b"{\"id\": \"a\", \"n\": 1}".to_vec(), b"wrong.".to_vec()];
        let mut a = Mutator::new(7, corpus.clone());
        let mut b = Mutator::new(7, corpus.clone());
        let xs: Vec<Vec<u8>> = (0..200).map(|_| a.next_input()).collect();
        let ys: Vec<Vec<u8>> = (0..200).map(|_| b.next_input()).collect();
        assert_eq!(xs, ys);
        let distinct: std::collections::HashSet<&Vec<u8>> = xs.iter().collect();
        assert!(distinct.len() > 150, "{}", distinct.len());
        assert!(xs.iter().any(|x| !corpus.contains(x)));
    }

    #[test]
    fn a_panicking_target_is_reported_with_its_input() {
        let r = std::panic::catch_unwind(|| {
            run("self-test", vec![b"ok".to_vec()], 500, |x| {
                assert!(!x.contains(&0xff), "0xff");
            })
        });
        let msg = r.unwrap_err();
        let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("fuzz target `self-test` panicked on input"),
            "{msg}"
        );
        assert_eq!(run("self-test-ok", vec![b"ok".to_vec()], 50, |_| {}), 50);
    }
}
