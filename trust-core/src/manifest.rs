//! The run manifest: everything a score depends on, so every score is reproducible from it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::ModelInfo;
use crate::scorer::ScorerInfo;

/// Written as `manifest.json` beside the per-sample results of a vertical run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    /// Version of trust-core that ran it.
    pub trust_version: String,
    /// Vertical name.
    pub vertical: String,
    /// Vertical implementation version.
    pub vertical_version: String,
    /// Protocol variant.
    pub protocol: String,
    /// Protocol options the vertical reports.
    pub options: serde_json::Value,
    /// sha256 of each data file read.
    pub data_files: BTreeMap<String, String>,
    /// The model.
    pub model: ModelInfo,
    /// The scorer, if any.
    pub scorer: Option<ScorerInfo>,
    /// Run seed (sample seeds derive from it and the sample id).
    pub seed: u64,
    /// Number of samples selected (`--limit`), `None` = all.
    pub limit: Option<usize>,
    /// Size of the seeded stratified subset (`--sample`), drawn before `limit` applies; absent
    /// when all samples are used. The subset depends only on this, the run seed and the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<usize>,
    /// Batch size. Recorded, but not compared on resume: it never changes results.
    pub batch_size: usize,
    /// Later invocations that resumed this run with another batch size or trust version, in
    /// order (the fields above describe the first one), so the manifest records what ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resumed_with: Vec<ResumedWith>,
}

/// A resuming invocation's settings that may differ from the first run's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumedWith {
    /// Its trust-core version.
    pub trust_version: String,
    /// Its batch size.
    pub batch_size: usize,
}

/// Fields that do not change results and may differ on resume.
const RESUME_IGNORED: &[&str] = &["batch_size", "trust_version", "resumed_with"];

impl RunManifest {
    /// Reads a manifest file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::json(path.display().to_string(), e))
    }

    /// Writes it as pretty JSON, atomically ([`crate::fsutil::write_atomic`]: a kill during the
    /// write leaves the previous manifest, never an empty one).
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::json("manifest", e))?;
        crate::fsutil::write_atomic(path, text + "\n").map_err(|e| Error::io(path, e))
    }

    /// The first result-affecting field that differs, as (dotted path, on disk, this run).
    pub fn first_difference(&self, this_run: &RunManifest) -> Option<(String, String, String)> {
        let a = serde_json::to_value(self).expect("manifest serialises");
        let b = serde_json::to_value(this_run).expect("manifest serialises");
        diff_values("", &a, &b)
    }

    /// `self` (the manifest on disk) with `this_run`'s batch size and version appended to
    /// [`RunManifest::resumed_with`] when they differ from the last ones recorded; `None` when
    /// nothing changed.
    pub fn with_resumption(&self, this_run: &RunManifest) -> Option<RunManifest> {
        let now = ResumedWith {
            trust_version: this_run.trust_version.clone(),
            batch_size: this_run.batch_size,
        };
        let last = self.resumed_with.last().cloned().unwrap_or(ResumedWith {
            trust_version: self.trust_version.clone(),
            batch_size: self.batch_size,
        });
        (last != now).then(|| {
            let mut m = self.clone();
            m.resumed_with.push(now);
            m
        })
    }

    /// Errors if `this_run` cannot resume the run recorded in `self` (read from `path`).
    pub fn check_resumable(&self, this_run: &RunManifest, path: &Path) -> Result<()> {
        match self.first_difference(this_run) {
            None => Ok(()),
            Some((field, on_disk, this_run)) => Err(Error::ManifestMismatch {
                path: path.to_path_buf(),
                field,
                on_disk,
                this_run,
            }),
        }
    }
}

fn diff_values(
    prefix: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
) -> Option<(String, String, String)> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(ma), Value::Object(mb)) => {
            let mut keys: Vec<&String> = ma.keys().chain(mb.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if prefix.is_empty() && RESUME_IGNORED.contains(&k.as_str()) {
                    continue;
                }
                let (va, vb) = (
                    ma.get(k).unwrap_or(&Value::Null),
                    mb.get(k).unwrap_or(&Value::Null),
                );
                if let Some(d) = diff_values(&path, va, vb) {
                    return Some(d);
                }
            }
            None
        }
        _ if a == b => None,
        _ => Some((prefix.to_string(), a.to_string(), b.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> RunManifest {
        RunManifest {
            trust_version: "0.1.0".into(),
            vertical: "v".into(),
            vertical_version: "1".into(),
            protocol: "paper".into(),
            options: serde_json::json!({"k": 5}),
            data_files: BTreeMap::from([("a".to_string(), "h".to_string())]),
            model: ModelInfo {
                id: "m".into(),
                backend: "mock".into(),
                weights_sha256: None,
                details: String::new(),
            },
            scorer: None,
            seed: 1,
            limit: None,
            sample: None,
            batch_size: 8,
            resumed_with: Vec::new(),
        }
    }

    #[test]
    fn resumptions_with_other_settings_are_recorded_once_each() {
        let a = m();
        assert!(a.with_resumption(&m()).is_none(), "nothing changed");
        let mut b = m();
        b.batch_size = 32;
        let a2 = a.with_resumption(&b).unwrap();
        assert_eq!(a2.batch_size, 8);
        assert_eq!(a2.resumed_with.len(), 1);
        assert_eq!(a2.resumed_with[0].batch_size, 32);
        assert!(
            a2.with_resumption(&b).is_none(),
            "the same again is not repeated"
        );
        assert_eq!(a2.first_difference(&b), None);
        let back = a2.with_resumption(&m()).unwrap();
        assert_eq!(
            back.resumed_with
                .iter()
                .map(|r| r.batch_size)
                .collect::<Vec<_>>(),
            vec![32, 8]
        );
    }

    #[test]
    fn difference_names_the_nested_field() {
        let a = m();
        let mut b = m();
        b.batch_size = 1;
        assert_eq!(
            a.first_difference(&b),
            None,
            "batch size never changes results"
        );
        b.options = serde_json::json!({"k": 25});
        let (field, on_disk, this_run) = a.first_difference(&b).unwrap();
        assert_eq!(
            (field.as_str(), on_disk.as_str(), this_run.as_str()),
            ("options.k", "5", "25")
        );
        let err = a
            .check_resumable(&b, Path::new("x/manifest.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("options.k") && err.contains("x/manifest.json"),
            "{err}"
        );
    }
}
