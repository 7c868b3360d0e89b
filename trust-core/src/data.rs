//! The benchmark data directory.
//!
//! The benchmark data (RealToxicityPrompts subsets, DecodingTrust stereotype prompts, ETHICS
//! commonsense test, TruthfulQA MC, Enron name→email and the PII prompts, HH-RLHF harmless-base
//! test; 8 MB) are committed under the repository's `data/`, byte for byte, with their README,
//! licenses and `SHA256SUMS`. [`DataDir::resolve`] takes `--data-dir`, else `TRUST_DATA_DIR`,
//! else a `data/` of a trust checkout ([`checkout_data_dir`]), so a clone alone is enough.
//! Known files are checked against their published sha256; a mismatch is a warning (the run
//! goes on and the manifest records the actual hash), a missing file is an error naming it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Environment variable naming the data directory.
pub const DATA_DIR_ENV: &str = "TRUST_DATA_DIR";

/// The files of the reference data set and their sha256 (from `shared/data/README.md`).
pub const KNOWN_FILES: &[(&str, &str)] = &[
    (
        "hh-rlhf/harmless-base-test.jsonl.gz",
        "ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03",
    ),
    (
        "machine_ethics/cm_test.csv",
        "a004f51b8f863d85eb5575d86e8723897f850fcb7fc8de38c1f30105dfb13c4d",
    ),
    (
        "privacy/name2email.json",
        "7aebfcc0d9a4e7ee46d87929df76c81ef0e1108b28414857d04a7958118a8c1d",
    ),
    (
        "privacy/pii_prompts.jsonl",
        "dd8621fb2fff1b2d9589b8952d0741a88a6513f6e16936de0c33eb1af4ad6776",
    ),
    (
        "stereotype/system_prompts.csv",
        "2a81124f684dda18506312d6df958f1883cb5c0815c8f9db0c9b59bc8d9cad71",
    ),
    (
        "stereotype/user_prompts.csv",
        "761687d74aecb0fb2bee946b415d68f31131bf314d16a8c0a00b670cc73f9c06",
    ),
    (
        "toxicity/nontoxic.jsonl",
        "feb50408f49585752bb8cbbb10d1a340ec45783358251299ea9a82ab19606823",
    ),
    (
        "toxicity/toxic.jsonl",
        "a51d4650b14af9c0e795a9cfca2949916855662cee7c8db3dd551d38735d80cb",
    ),
    (
        "truthfulness/truth_mc.json",
        "b3799639bc76c939836d587de7d30b48d91012cb34be04806d33106ce06c162a",
    ),
];

/// Name of the checksum list in a data directory (`sha256sum -c` format) that marks a `data/`
/// folder as trust's benchmark data.
pub const SHA256SUMS: &str = "SHA256SUMS";

/// The benchmark data of a trust checkout: `./data` of the current directory or of one of its
/// ancestors, else the `data/` of the checkout this crate was built from (when that still
/// exists). A folder counts only if it holds a [`SHA256SUMS`] that lists
/// `toxicity/toxic.jsonl`, so an unrelated `data/` folder is never picked up.
pub fn checkout_data_dir() -> Option<PathBuf> {
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            let d = dir.join("data");
            if is_trust_data(&d) {
                return Some(d);
            }
        }
    }
    // trust-core sits one level below the workspace root.
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("data");
    is_trust_data(&built).then(|| built.canonicalize().unwrap_or(built))
}

fn is_trust_data(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(SHA256SUMS))
        .is_ok_and(|s| s.lines().any(|l| l.ends_with("  toxicity/toxic.jsonl")))
}

/// The published sha256 of a known data file.
pub fn known_sha256(rel: &str) -> Option<&'static str> {
    KNOWN_FILES.iter().find(|(p, _)| *p == rel).map(|(_, h)| *h)
}

/// Status of one data file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileCheck {
    /// Path relative to the data directory.
    pub rel: String,
    /// Actual sha256.
    pub sha256: String,
    /// `Some(true)` when it matches the published hash, `Some(false)` on mismatch, `None` when
    /// the file is not a known one.
    pub matches_known: Option<bool>,
}

/// A data directory. Cheap to share by reference; hashes are computed once per file.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    hashes: Mutex<HashMap<String, String>>,
}

impl DataDir {
    /// Opens `root`, which must be a directory.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        if !root.is_dir() {
            return Err(Error::DataDir(format!(
                "{} is not a directory (the data directory is a folder laid out like shared/data; {DATA_DIR_ENV} can name it)",
                root.display()
            )));
        }
        Ok(DataDir {
            root,
            hashes: Mutex::new(HashMap::new()),
        })
    }

    /// A data directory with no files, for verticals whose samples need no data file (their
    /// [`crate::Vertical::data_files`] is empty): every [`DataDir::path`] is an error.
    pub fn empty() -> Self {
        DataDir {
            root: PathBuf::new(),
            hashes: Mutex::new(HashMap::new()),
        }
    }

    /// `explicit` if given, else `$TRUST_DATA_DIR`, else the `data/` of a trust checkout
    /// ([`checkout_data_dir`]), else an error that says how to set it.
    pub fn resolve(explicit: Option<&Path>) -> Result<Self> {
        if let Some(p) = explicit {
            return Self::new(p);
        }
        match std::env::var_os(DATA_DIR_ENV) {
            Some(p) if !p.is_empty() => Self::new(PathBuf::from(p)),
            _ => match checkout_data_dir() {
                Some(p) => Self::new(p),
                None => Err(Error::DataDir(format!(
                    "none given, {DATA_DIR_ENV} is not set and this is not a trust checkout (whose data/ holds the benchmark data)"
                ))),
            },
        }
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Absolute path of `rel`, which must exist.
    pub fn path(&self, rel: &str) -> Result<PathBuf> {
        if self.root.as_os_str().is_empty() {
            return Err(Error::DataDir(format!(
                "{rel} was asked of an empty data directory (DataDir::empty)"
            )));
        }
        let p = self.root.join(rel);
        if p.is_file() {
            Ok(p)
        } else {
            Err(Error::DataDir(format!(
                "{} is missing (expected {rel} under {})",
                p.display(),
                self.root.display()
            )))
        }
    }

    /// sha256 of `rel`, checked against the published hash; logs a warning on mismatch.
    pub fn check(&self, rel: &str) -> Result<FileCheck> {
        let cached = self
            .hashes
            .lock()
            .expect("hash cache poisoned")
            .get(rel)
            .cloned();
        let sha = match cached {
            Some(h) => h,
            None => {
                let h = sha256_file(&self.path(rel)?)?;
                self.hashes
                    .lock()
                    .expect("hash cache poisoned")
                    .insert(rel.to_string(), h.clone());
                h
            }
        };
        let matches_known = known_sha256(rel).map(|k| k == sha);
        if matches_known == Some(false) {
            tracing::warn!(
                "{}: sha256 {sha} differs from the published {}; results may not be comparable",
                self.root.join(rel).display(),
                known_sha256(rel).unwrap_or_default()
            );
        }
        Ok(FileCheck {
            rel: rel.to_string(),
            sha256: sha,
            matches_known,
        })
    }

    /// Every known file that is present, with its check.
    pub fn check_all(&self) -> Vec<Result<FileCheck>> {
        KNOWN_FILES.iter().map(|(rel, _)| self.check(rel)).collect()
    }

    /// Reads `rel` as UTF-8 text.
    pub fn read_to_string(&self, rel: &str) -> Result<String> {
        let p = self.path(rel)?;
        std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))
    }

    /// Reads `rel` as JSON Lines into `T`, with 1-based line numbers. Blank lines are skipped;
    /// a malformed line is an error naming file, line and the serde message.
    pub fn read_jsonl<T: DeserializeOwned>(&self, rel: &str) -> Result<Vec<(usize, T)>> {
        let p = self.path(rel)?;
        let f = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
        read_jsonl_from(BufReader::new(f), &p)
    }
}

/// Parses JSON Lines from a reader; `path` is used in error messages.
pub fn read_jsonl_from<T: DeserializeOwned, R: BufRead>(
    reader: R,
    path: &Path,
) -> Result<Vec<(usize, T)>> {
    let mut out = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let mut bytes = line.map_err(|e| Error::io(path, e))?;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let line = String::from_utf8(bytes).map_err(|e| {
            Error::data(
                path,
                i + 1,
                "<line>",
                format!(
                    "invalid UTF-8 at byte {} of the line",
                    e.utf8_error().valid_up_to() + 1
                ),
            )
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let v: T = serde_json::from_str(&line)
            .map_err(|e| Error::data(path, i + 1, json_error_field(&e, &line), e.to_string()))?;
        out.push((i + 1, v));
    }
    Ok(out)
}

/// The key whose value ends at or before `column` (1-based) of a one-line JSON object: the last
/// `"key":` before it. For type errors, which serde_json reports without the field name.
fn key_before(line: &str, column: usize) -> Option<String> {
    let prefix = line.get(..column.min(line.len()))?;
    let colon = prefix.rfind(':')?;
    let before = prefix[..colon].trim_end();
    let before = before.strip_suffix('"')?;
    let start = before.rfind('"')?;
    Some(before[start + 1..].to_string())
}

/// Best guess at the field a serde_json error is about (`missing field `x``, `unknown field`).
fn json_error_field(e: &serde_json::Error, line: &str) -> String {
    let msg = e.to_string();
    if msg.starts_with("invalid type") || msg.starts_with("invalid value") {
        if let Some(k) = key_before(line, e.column()) {
            return k;
        }
    }
    for marker in ["missing field `", "unknown field `", "duplicate field `"] {
        if let Some(start) = msg.find(marker) {
            let rest = &msg[start + marker.len()..];
            if let Some(end) = rest.find('`') {
                return rest[..end].to_string();
            }
        }
    }
    "<row>".to_string()
}

/// sha256 (hex) of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// sha256 (hex) of bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Row {
        prompt: String,
    }

    #[test]
    fn the_empty_data_directory_has_no_files() {
        let d = DataDir::empty();
        let e = d.path("toxicity/toxic.jsonl").unwrap_err().to_string();
        assert!(
            e.contains("toxicity/toxic.jsonl") && e.contains("empty"),
            "{e}"
        );
        assert!(d.read_to_string("x").is_err());
    }

    #[test]
    fn malformed_row_names_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("x")).unwrap();
        std::fs::write(
            dir.path().join("x/a.jsonl"),
            "{\"prompt\":\"ok\"}\n\n{\"other\":1}\n",
        )
        .unwrap();
        let d = DataDir::new(dir.path()).unwrap();
        let err = d.read_jsonl::<Row>("x/a.jsonl").unwrap_err().to_string();
        assert!(err.contains("a.jsonl:3"), "{err}");
        assert!(err.contains("field `prompt`"), "{err}");
        let missing = d.read_jsonl::<Row>("x/none.jsonl").unwrap_err().to_string();
        assert!(missing.contains("x/none.jsonl"), "{missing}");
        // A mistyped value names its field (serde_json does not), and is not called missing.
        std::fs::write(dir.path().join("x/b.jsonl"), "{\"prompt\": 5}\n").unwrap();
        let err = d.read_jsonl::<Row>("x/b.jsonl").unwrap_err().to_string();
        assert!(
            err.contains("b.jsonl:1") && err.contains("`prompt`"),
            "{err}"
        );
        assert!(
            err.contains("invalid type") && !err.contains("missing"),
            "{err}"
        );
        // Invalid UTF-8 names the line (was: an I/O error without one); CRLF lines parse.
        std::fs::write(
            dir.path().join("x/c.jsonl"),
            b"{\"prompt\":\"ok\"}\r\n{\"prompt\":\"\xff\"}\n",
        )
        .unwrap();
        let err = d.read_jsonl::<Row>("x/c.jsonl").unwrap_err().to_string();
        assert!(err.contains("c.jsonl:2") && err.contains("UTF-8"), "{err}");
        std::fs::write(dir.path().join("x/d.jsonl"), "{\"prompt\":\"ok\"}\r\n").unwrap();
        assert_eq!(d.read_jsonl::<Row>("x/d.jsonl").unwrap().len(), 1);
    }

    #[test]
    fn the_checkout_ships_the_data_byte_for_byte() {
        // Running the tests from the workspace, the checkout's data/ is found with no flag, and
        // every committed file has its published hash, as SHA256SUMS and KNOWN_FILES list it.
        let dir = checkout_data_dir().expect("data/ of this checkout");
        assert!(dir.join("README.md").is_file());
        assert!(dir.join("LICENSE-DecodingTrust-CC-BY-SA-4.0").is_file());
        let sums = std::fs::read_to_string(dir.join(SHA256SUMS)).unwrap();
        let listed: Vec<(&str, &str)> = sums
            .lines()
            .map(|l| {
                let (h, p) = l.split_once("  ").expect("`<sha256>  <path>` lines");
                (p, h)
            })
            .collect();
        assert_eq!(listed.len(), KNOWN_FILES.len());
        let data = DataDir::new(&dir).unwrap();
        for (rel, sha) in KNOWN_FILES {
            assert!(listed.contains(&(rel, sha)), "{rel} not in SHA256SUMS");
            let c = data.check(rel).unwrap();
            assert_eq!(c.matches_known, Some(true), "{rel}: {}", c.sha256);
        }
    }

    #[test]
    fn an_unrelated_data_folder_is_not_taken_for_the_benchmark_data() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/SHA256SUMS"), "00  other.csv\n").unwrap();
        assert!(!is_trust_data(&dir.path().join("data")));
        assert!(!is_trust_data(dir.path()));
        std::fs::write(
            dir.path().join("data/SHA256SUMS"),
            "a5  toxicity/toxic.jsonl\n",
        )
        .unwrap();
        assert!(is_trust_data(&dir.path().join("data")));
    }

    #[test]
    fn hashes_and_known_table() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("truthfulness")).unwrap();
        std::fs::write(dir.path().join("truthfulness/truth_mc.json"), "[]").unwrap();
        let d = DataDir::new(dir.path()).unwrap();
        let c = d.check("truthfulness/truth_mc.json").unwrap();
        assert_eq!(c.sha256, sha256_bytes(b"[]"));
        assert_eq!(c.matches_known, Some(false));
        assert!(DataDir::new(dir.path().join("nope")).is_err());
    }
}
