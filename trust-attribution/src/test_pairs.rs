//! Test-side ("trustworthiness") pairs for attribution (PROTOCOLS A.8 §4), for all five verticals.
//!
//! A test pair is (prompt, new continuation, old continuation): the same prompt answered by the
//! aligned model (`new`) and by the earlier model (`old`). The test loss is the attributed stage's
//! own loss with the new continuation as the *preferred* side ([`stage_test_pair`]), so a training
//! pair with negative influence (lowering the test loss) is one that pushed the model towards what
//! it now generates on the vertical — it "explains" the observed change.
//!
//! Two input formats are read ([`read_generations`]):
//! - `samples.jsonl` written by `trust eval` / `trust demo` (`{"id", "seed", "responses", ...}`).
//!   New and old records are paired by sample id; request `j` of a sample pairs the first
//!   completion of response `j` of both runs. The prompt is rebuilt from the vertical's own data
//!   and requests (so a data directory is needed): for toxicity the RealToxicityPrompts text of
//!   the request (the paper's CSV `prompt` column), for the other verticals the rendered prompt of
//!   each generation request, built with the *new* record's seed. Log-likelihood requests (e.g.
//!   truthfulness `loglik`) have no continuation and are skipped.
//! - plain JSONL `{"prompt", "continuation"}` lines (the paper's CSV pairs), paired row by row.
//!
//! Options reproduce the paper's choices: `stride = 3` keeps every 3rd pair, and `max_pairs`
//! caps the count (the released code stops at as many pairs as there are generation files).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use trust_core::runner::SampleRecord;
use trust_core::{DataDir, Request, Vertical};
use trust_verticals::machine_ethics::MachineEthics;
use trust_verticals::privacy::Privacy;
use trust_verticals::stereotype::Stereotype;
use trust_verticals::toxicity::Toxicity;
use trust_verticals::truthfulness::Truthfulness;

use crate::gradients::{AttrStage, TestPair};
use trust_align::train::TrainError;

/// One prompt answered by the aligned (`new`) and the earlier (`old`) model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct RawTestPair {
    /// Sample id and request index (`id#j`), or `line N` for plain JSONL.
    pub id: String,
    /// The prompt text.
    pub prompt: String,
    /// The aligned model's continuation (preferred side of the test loss).
    pub new: String,
    /// The earlier model's continuation (dispreferred side; empty when not given).
    pub old: String,
}

/// How test pairs are selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestPairOptions {
    /// Keep pairs 0, stride, 2·stride, ... (the paper takes every 3rd row; default 1 = all).
    pub stride: usize,
    /// Keep at most this many pairs after striding (`None` = all).
    pub max_pairs: Option<usize>,
    /// Drop pairs whose new continuation is empty (default true).
    pub skip_empty: bool,
}

impl Default for TestPairOptions {
    fn default() -> Self {
        TestPairOptions {
            stride: 1,
            max_pairs: None,
            skip_empty: true,
        }
    }
}

/// The formatted test pair for `stage` (A.8 §4):
/// - SFT: whole-text cross-entropy on `"Human: {prompt}\nAssistant: {new}"` (old unused);
/// - RM: Bradley–Terry with preferred `"Human: {prompt}\nAssistant: {new}"` and dispreferred the
///   same with `old`;
/// - DPO: x = `"Human: {prompt}"`, y_w = `"Assistant: {new}"`, y_l = `"Assistant: {old}"`, joined
///   by plain concatenation as in the paper's code.
pub fn stage_test_pair(stage: AttrStage, raw: &RawTestPair) -> TestPair {
    match stage {
        AttrStage::Sft | AttrStage::Rm => TestPair {
            prompt: format!("Human: {}\nAssistant: ", raw.prompt),
            preferred: raw.new.clone(),
            dispreferred: raw.old.clone(),
        },
        AttrStage::Dpo => TestPair {
            prompt: format!("Human: {}", raw.prompt),
            preferred: format!("Assistant: {}", raw.new),
            dispreferred: format!("Assistant: {}", raw.old),
        },
    }
}

/// What a generations file holds.
#[derive(Debug, Clone)]
pub enum Generations {
    /// `samples.jsonl` records.
    Records(Vec<SampleRecord>),
    /// Plain `(prompt, continuation)` rows with their 1-based line numbers.
    Plain(Vec<(usize, String, String)>),
}

#[derive(Deserialize)]
struct PlainRow {
    prompt: String,
    continuation: String,
}

/// Reads a generations file, detecting its format from the first non-empty line (a
/// `continuation` field means plain JSONL). Errors name the file and line.
pub fn read_generations(path: &Path) -> Result<Generations, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let first = text.lines().find(|l| !l.trim().is_empty());
    let plain = first
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .is_some_and(|v| v.get("continuation").is_some());
    if plain {
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let r: PlainRow = serde_json::from_str(line).map_err(|e| {
                TrainError::Invalid(format!(
                    "{}: line {}: expected {{\"prompt\", \"continuation\"}}: {e}",
                    path.display(),
                    i + 1
                ))
            })?;
            rows.push((i + 1, r.prompt, r.continuation));
        }
        Ok(Generations::Plain(rows))
    } else {
        let recs = trust_core::runner::read_records_repairing(path)
            .map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))?;
        Ok(Generations::Records(recs))
    }
}

/// Builds test pairs for `vertical` (protocol `protocol`) from the aligned model's generations
/// `new` and, when given, the earlier model's `old` (see the module docs). `data` is needed for
/// `samples.jsonl` input.
pub fn load_test_pairs(
    vertical: &str,
    protocol: &str,
    data: Option<&DataDir>,
    new: &Path,
    old: Option<&Path>,
    opts: &TestPairOptions,
) -> Result<Vec<RawTestPair>, TrainError> {
    if opts.stride == 0 {
        return Err(TrainError::Invalid("test-pair stride must be ≥ 1".into()));
    }
    let gen_new = read_generations(new)?;
    let gen_old = old.map(read_generations).transpose()?;
    let mut pairs = match (gen_new, gen_old) {
        (Generations::Plain(n), o) => {
            let o = match o {
                None => None,
                Some(Generations::Plain(o)) => Some(o),
                Some(Generations::Records(_)) => {
                    return Err(TrainError::Invalid(format!(
                        "{} is plain JSONL but the baseline generations are samples.jsonl records; give both in one format",
                        new.display()
                    )));
                }
            };
            plain_pairs(&n, o.as_deref(), new, old)?
        }
        (Generations::Records(n), o) => {
            let o = match o {
                None => None,
                Some(Generations::Records(o)) => Some(o),
                Some(Generations::Plain(_)) => {
                    return Err(TrainError::Invalid(format!(
                        "{} holds samples.jsonl records but the baseline generations are plain JSONL; give both in one format",
                        new.display()
                    )));
                }
            };
            let data = data.ok_or_else(|| {
                TrainError::Invalid(format!(
                    "{}: samples.jsonl input needs the data directory (--data-dir or TRUST_DATA_DIR) to rebuild the prompts",
                    new.display()
                ))
            })?;
            record_pairs(vertical, protocol, data, &n, o.as_deref())?
        }
    };
    if opts.skip_empty {
        pairs.retain(|p| !p.new.trim().is_empty());
    }
    let mut pairs: Vec<RawTestPair> = pairs.into_iter().step_by(opts.stride).collect();
    if let Some(m) = opts.max_pairs {
        pairs.truncate(m);
    }
    if pairs.is_empty() {
        return Err(TrainError::Invalid(format!(
            "{}: no test pair for vertical `{vertical}` (no generation matched{})",
            new.display(),
            if old.is_some() { " in both files" } else { "" }
        )));
    }
    Ok(pairs)
}

fn plain_pairs(
    new: &[(usize, String, String)],
    old: Option<&[(usize, String, String)]>,
    new_path: &Path,
    old_path: Option<&Path>,
) -> Result<Vec<RawTestPair>, TrainError> {
    if let Some(o) = old
        && o.len() != new.len()
    {
        return Err(TrainError::Invalid(format!(
            "{} has {} rows but {} has {}; plain generation files are paired row by row",
            new_path.display(),
            new.len(),
            old_path
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            o.len()
        )));
    }
    let mut out = Vec::new();
    for (k, (line, prompt, cont)) in new.iter().enumerate() {
        let old_cont = match old {
            Some(o) => {
                if o[k].1 != *prompt {
                    return Err(TrainError::Invalid(format!(
                        "{}: line {line}: prompt differs from the baseline's line {}",
                        new_path.display(),
                        o[k].0
                    )));
                }
                o[k].2.clone()
            }
            None => String::new(),
        };
        out.push(RawTestPair {
            id: format!("line {line}"),
            prompt: prompt.clone(),
            new: cont.clone(),
            old: old_cont,
        });
    }
    Ok(out)
}

/// First completion text of each response (None for log-likelihood responses).
fn first_texts(r: &SampleRecord) -> Vec<Option<String>> {
    r.responses
        .iter()
        .map(|x| x.texts().first().map(|t| t.to_string()))
        .collect()
}

fn record_pairs(
    vertical: &str,
    protocol: &str,
    data: &DataDir,
    new: &[SampleRecord],
    old: Option<&[SampleRecord]>,
) -> Result<Vec<RawTestPair>, TrainError> {
    let seeds: BTreeMap<String, u64> = new.iter().map(|r| (r.id.clone(), r.seed)).collect();
    let unknown = || {
        TrainError::Invalid(format!(
            "vertical `{vertical}` has no protocol `{protocol}` (see `trust list` / PROTOCOLS.md)"
        ))
    };
    let prompts = match vertical {
        "toxicity" => {
            let v = Toxicity::by_name(protocol).ok_or_else(unknown)?;
            // The RealToxicityPrompts text of request j (the paper's CSV `prompt` column).
            prompts_by_id(&v, data, &seeds, |s, j, _| s.texts.get(j).cloned())?
        }
        "stereotype" => prompts_by_id(
            &Stereotype::by_name(protocol).ok_or_else(unknown)?,
            data,
            &seeds,
            |_, _, rendered| Some(rendered.to_string()),
        )?,
        "machine_ethics" => prompts_by_id(
            &MachineEthics::by_name(protocol).ok_or_else(unknown)?,
            data,
            &seeds,
            |_, _, rendered| Some(rendered.to_string()),
        )?,
        "truthfulness" => prompts_by_id(
            &Truthfulness::by_name(protocol).ok_or_else(unknown)?,
            data,
            &seeds,
            |_, _, rendered| Some(rendered.to_string()),
        )?,
        "privacy" => prompts_by_id(
            &Privacy::by_name(protocol).ok_or_else(unknown)?,
            data,
            &seeds,
            |_, _, rendered| Some(rendered.to_string()),
        )?,
        other => {
            return Err(TrainError::Invalid(format!(
                "unknown vertical `{other}` (known: {})",
                trust_verticals::registry::VERTICALS.join(", ")
            )));
        }
    };
    let old_by_id: Option<HashMap<&str, &SampleRecord>> =
        old.map(|o| o.iter().map(|r| (r.id.as_str(), r)).collect());
    let mut out = Vec::new();
    for r in new {
        let Some(ps) = prompts.get(&r.id) else {
            return Err(TrainError::Invalid(format!(
                "sample id `{}` is not a `{vertical}` sample under protocol `{protocol}`",
                r.id
            )));
        };
        let o = match &old_by_id {
            Some(m) => match m.get(r.id.as_str()) {
                Some(o) => Some(first_texts(o)),
                None => continue,
            },
            None => None,
        };
        for (j, n) in first_texts(r).into_iter().enumerate() {
            let (Some(n), Some(Some(p))) = (n, ps.get(j)) else {
                continue;
            };
            let old_text = match &o {
                Some(o) => match o.get(j) {
                    Some(Some(t)) => t.clone(),
                    _ => continue,
                },
                None => String::new(),
            };
            out.push(RawTestPair {
                id: format!("{}#{j}", r.id),
                prompt: p.clone(),
                new: n,
                old: old_text,
            });
        }
    }
    Ok(out)
}

/// Per sample id (of those in `seeds`), the prompt of each request (None for non-generation
/// requests). `pick(sample, j, rendered)` chooses the text.
fn prompts_by_id<V: Vertical>(
    v: &V,
    data: &DataDir,
    seeds: &BTreeMap<String, u64>,
    pick: impl Fn(&V::Sample, usize, &str) -> Option<String>,
) -> Result<HashMap<String, Vec<Option<String>>>, TrainError> {
    let samples = v
        .load(data)
        .map_err(|e| TrainError::Invalid(format!("loading vertical `{}`: {e}", v.name())))?;
    let mut out = HashMap::new();
    for s in &samples {
        let id = v.sample_id(s);
        let Some(&seed) = seeds.get(&id) else {
            continue;
        };
        let ps = v
            .requests(s, seed)
            .iter()
            .enumerate()
            .map(|(j, r)| match r {
                Request::Generate(g) => pick(s, j, &g.prompt),
                Request::LogLikelihood(_) => None,
            })
            .collect();
        out.insert(id, ps);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawTestPair {
        RawTestPair {
            id: "x".into(),
            prompt: "Say hi".into(),
            new: "Hello!".into(),
            old: "Go away.".into(),
        }
    }

    #[test]
    fn stage_formats_follow_the_paper() {
        let d = stage_test_pair(AttrStage::Dpo, &raw());
        assert_eq!(d.prompt, "Human: Say hi");
        assert_eq!(d.preferred, "Assistant: Hello!");
        assert_eq!(d.dispreferred, "Assistant: Go away.");
        let s = stage_test_pair(AttrStage::Sft, &raw());
        assert_eq!(
            format!("{}{}", s.prompt, s.preferred),
            "Human: Say hi\nAssistant: Hello!"
        );
        let r = stage_test_pair(AttrStage::Rm, &raw());
        assert_eq!(
            format!("{}{}", r.prompt, r.dispreferred),
            "Human: Say hi\nAssistant: Go away."
        );
    }

    #[test]
    fn plain_files_pair_row_by_row_with_stride_and_cap() {
        let dir = tempfile::tempdir().unwrap();
        let (n, o) = (dir.path().join("new.jsonl"), dir.path().join("old.jsonl"));
        let rows = |tag: &str| {
            (0..7)
                .map(|i| format!(r#"{{"prompt": "p{i}", "continuation": "{tag}{i}"}}"#))
                .collect::<Vec<_>>()
                .join("\n")
        };
        std::fs::write(&n, rows("new")).unwrap();
        std::fs::write(&o, rows("old")).unwrap();
        let opts = TestPairOptions {
            stride: 3,
            max_pairs: Some(2),
            skip_empty: true,
        };
        let p = load_test_pairs("toxicity", "paper", None, &n, Some(&o), &opts).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[1].prompt.as_str(), p[1].new.as_str(), p[1].old.as_str()),
            ("p3", "new3", "old3")
        );
        std::fs::write(&o, "{\"prompt\": \"p0\", \"continuation\": 5}\n").unwrap();
        let e = load_test_pairs("toxicity", "paper", None, &n, Some(&o), &opts).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}
