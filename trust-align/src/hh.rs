//! Anthropic HH-RLHF preference pairs.
//!
//! Each line of `hh-rlhf/*.jsonl(.gz)` holds `chosen` and `rejected`, two full dialogues
//! (`"\n\nHuman: ...\n\nAssistant: ..."`) that share everything up to the last assistant turn.
//! A pair is split at the **last** `"\n\nAssistant:"`: the prompt is everything up to and including
//! that marker, the responses are what follows it (with their leading space), as in the
//! `Dahoas/rm-static` format used by trlX and by the paper's attribution code.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};
use trust_core::Error;

/// The marker of an assistant turn.
pub const ASSISTANT: &str = "\n\nAssistant:";

/// One preference pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferencePair {
    /// 0-based index of the pair in its file (stable id for attribution).
    pub index: usize,
    /// Dialogue up to and including the last `"\n\nAssistant:"`.
    pub prompt: String,
    /// The preferred final response.
    pub chosen: String,
    /// The dispreferred final response.
    pub rejected: String,
}

/// Pairs read from a file, plus the rows that could not be split (line, reason).
#[derive(Debug, Clone, Default)]
pub struct PreferenceData {
    /// Usable pairs in file order.
    pub pairs: Vec<PreferencePair>,
    /// Rows skipped: (1-based line, why).
    pub skipped: Vec<(usize, String)>,
}

#[derive(Deserialize)]
struct Row {
    chosen: String,
    rejected: String,
}

/// Splits a dialogue at its last assistant turn: (prompt, response).
pub fn split_last_turn(dialogue: &str) -> Option<(&str, &str)> {
    let at = dialogue.rfind(ASSISTANT)?;
    let cut = at + ASSISTANT.len();
    Some((&dialogue[..cut], &dialogue[cut..]))
}

/// Reads a `.jsonl` or `.jsonl.gz` file of HH-RLHF rows (or of `{"prompt","chosen","rejected"}`
/// rows, taken as they are).
///
/// A line that is not JSON or lacks a field is an error naming file, line and field. A row whose
/// two dialogues do not share the prompt, or that has no assistant turn, is skipped and listed.
pub fn load(path: &Path) -> Result<PreferenceData, Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut data = PreferenceData::default();
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| Error::data(path, line_no, "<row>", e.to_string()))?;
        let field = |name: &str| -> Result<String, Error> {
            value
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| Error::data(path, line_no, name, "missing or not a string"))
        };
        let index = data.pairs.len() + data.skipped.len();
        if value.get("prompt").is_some() {
            data.pairs.push(PreferencePair {
                index,
                prompt: field("prompt")?,
                chosen: field("chosen")?,
                rejected: field("rejected")?,
            });
            continue;
        }
        let row = Row {
            chosen: field("chosen")?,
            rejected: field("rejected")?,
        };
        match (split_last_turn(&row.chosen), split_last_turn(&row.rejected)) {
            (Some((pc, c)), Some((pr, r))) if pc == pr => data.pairs.push(PreferencePair {
                index,
                prompt: pc.to_string(),
                chosen: c.to_string(),
                rejected: r.to_string(),
            }),
            (Some(_), Some(_)) => data
                .skipped
                .push((line_no, "chosen and rejected prompts differ".into())),
            _ => data
                .skipped
                .push((line_no, "no \"\\n\\nAssistant:\" turn".into())),
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_the_last_assistant_turn() {
        let d = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this";
        let (p, r) = split_last_turn(d).unwrap();
        assert_eq!(
            p,
            "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:"
        );
        assert_eq!(r, " like this");
        assert!(split_last_turn("\n\nHuman: no answer").is_none());
    }

    #[test]
    fn loads_rows_skips_mismatches_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(
            &p,
            concat!(
                r#"{"chosen":"\n\nHuman: a\n\nAssistant: good","rejected":"\n\nHuman: a\n\nAssistant: bad"}"#,
                "\n",
                r#"{"chosen":"\n\nHuman: a\n\nAssistant: x","rejected":"\n\nHuman: b\n\nAssistant: y"}"#,
                "\n"
            ),
        )
        .unwrap();
        let d = load(&p).unwrap();
        assert_eq!(d.pairs.len(), 1);
        assert_eq!(d.pairs[0].chosen, " good");
        assert_eq!(d.pairs[0].rejected, " bad");
        assert_eq!(
            d.skipped,
            vec![(2, "chosen and rejected prompts differ".to_string())]
        );
        std::fs::write(&p, "{\"chosen\": \"x\"}\n").unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("a.jsonl:1") && e.contains("`rejected`"), "{e}");
    }

    #[test]
    fn reads_the_real_gzipped_test_split() {
        let Some(p) = trust_core::testing::repo_path(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../data/hh-rlhf/harmless-base-test.jsonl.gz"),
        ) else {
            return;
        };
        let d = load(&p).unwrap();
        assert_eq!(d.pairs.len() + d.skipped.len(), 2312);
        assert!(d.pairs.len() > 2200, "{} pairs", d.pairs.len());
        assert!(d.pairs.iter().all(|p| p.prompt.ends_with(ASSISTANT)));
    }
}
