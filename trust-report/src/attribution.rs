//! Attributed training pairs for the report, read leniently from the files attribution writes:
//!
//! - JSON (a `trust demo` `report.json` with `attribution.most_helpful` / `most_harmful`, or a
//!   `trust attribute` `<out>.top.json`): every list of objects that have a numeric
//!   `train_index` and `score` becomes a group named by its key; `prompt`, `chosen` and
//!   `rejected` texts are kept when present;
//! - JSON Lines (`scores.jsonl`: `{"train_index", "score", ...}` per line): the
//!   [`MAX_PAIRS`] highest and lowest scores become the groups `highest` and `lowest`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// Pairs shown per group.
pub const MAX_PAIRS: usize = 10;

/// One attributed training pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributedPair {
    /// Index in the training data.
    pub train_index: u64,
    /// Attribution score (sign convention of the file it came from).
    pub score: f64,
    /// The pair's prompt, when the file has it.
    pub prompt: Option<String>,
    /// Chosen response, when the file has it.
    pub chosen: Option<String>,
    /// Rejected response, when the file has it.
    pub rejected: Option<String>,
}

/// A named list of pairs (`most_helpful`, `most_harmful`, `highest`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairGroup {
    /// Group name (the JSON key path it was found under).
    pub name: String,
    /// At most [`MAX_PAIRS`] pairs, in file order.
    pub pairs: Vec<AttributedPair>,
}

/// The attribution section of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attribution {
    /// The file read.
    pub source: String,
    /// Groups in file order.
    pub groups: Vec<PairGroup>,
}

fn pair_of(v: &Value) -> Option<AttributedPair> {
    let o = v.as_object()?;
    let text = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_string);
    Some(AttributedPair {
        train_index: o.get("train_index")?.as_u64()?,
        score: o.get("score")?.as_f64()?,
        prompt: text("prompt"),
        chosen: text("chosen"),
        rejected: text("rejected"),
    })
}

fn walk(v: &Value, path: &str, out: &mut Vec<PairGroup>) {
    match v {
        Value::Array(items) => {
            let pairs: Vec<AttributedPair> = items.iter().filter_map(pair_of).collect();
            if !pairs.is_empty() && pairs.len() == items.len() {
                out.push(PairGroup {
                    name: if path.is_empty() {
                        "pairs".into()
                    } else {
                        path.to_string()
                    },
                    pairs: pairs.into_iter().take(MAX_PAIRS).collect(),
                });
            }
        }
        Value::Object(map) => {
            for (k, child) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(child, &p, out);
            }
        }
        _ => {}
    }
}

impl Attribution {
    /// Reads `path` (JSON or JSON Lines, see the module docs). A file without any attributed
    /// pair is an error naming it; a bad JSON Lines line is an error naming the line.
    pub fn load(path: &Path) -> Result<Attribution, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mut groups = Vec::new();
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => walk(&v, "", &mut groups),
            Err(_) => {
                let mut all = Vec::new();
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let bad = |m: String| Error::Format {
                        path: PathBuf::from(path),
                        line: Some(i + 1),
                        message: m,
                    };
                    let v: Value =
                        serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
                    all.push(pair_of(&v).ok_or_else(|| {
                        bad("expected numeric fields `train_index` and `score`".into())
                    })?);
                }
                all.sort_by(|a, b| b.score.total_cmp(&a.score));
                let lowest: Vec<AttributedPair> =
                    all.iter().rev().take(MAX_PAIRS).cloned().collect();
                all.truncate(MAX_PAIRS);
                if !all.is_empty() {
                    groups.push(PairGroup {
                        name: "highest".into(),
                        pairs: all,
                    });
                    groups.push(PairGroup {
                        name: "lowest".into(),
                        pairs: lowest,
                    });
                }
            }
        }
        if groups.is_empty() {
            return Err(Error::Format {
                path: path.to_path_buf(),
                line: None,
                message: "no attributed pairs (lists of objects with `train_index` and `score`)"
                    .into(),
            });
        }
        Ok(Attribution {
            source: path.display().to_string(),
            groups,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_summary_and_jsonl_scores_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("report.json");
        std::fs::write(
            &p,
            r#"{"attribution": {"most_helpful": [{"train_index": 3, "score": 0.9, "prompt": "p", "chosen": "c", "rejected": "r"}],
                "most_harmful": [{"train_index": 7, "score": -1.0, "prompt": "q", "chosen": "c2", "rejected": "r2"}]}, "other": [1, 2]}"#,
        )
        .unwrap();
        let a = Attribution::load(&p).unwrap();
        let names: Vec<&str> = a.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(
            names,
            ["attribution.most_helpful", "attribution.most_harmful"]
        );
        assert_eq!(a.groups[1].pairs[0].train_index, 7);
        assert_eq!(a.groups[0].pairs[0].chosen.as_deref(), Some("c"));

        let j = dir.path().join("scores.jsonl");
        let lines: String = (0..30)
            .map(|i| format!("{{\"train_index\": {i}, \"score\": {}}}\n", i as f64 - 10.0))
            .collect();
        std::fs::write(&j, lines).unwrap();
        let a = Attribution::load(&j).unwrap();
        assert_eq!(a.groups[0].pairs[0].train_index, 29);
        assert_eq!(a.groups[1].pairs[0].train_index, 0);
        assert_eq!(a.groups[0].pairs.len(), MAX_PAIRS);

        std::fs::write(&j, "{\"train_index\": 1, \"score\": 2}\n{\"score\": 1}\n").unwrap();
        let e = Attribution::load(&j).unwrap_err().to_string();
        assert!(
            e.contains("scores.jsonl:2") && e.contains("train_index"),
            "{e}"
        );
    }
}
