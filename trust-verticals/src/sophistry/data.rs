//! Loading items, model outputs and verdicts from CSV or JSON Lines.
//!
//! The format follows the file extension: `.csv` (header row, comma-separated, quoted as usual)
//! or `.jsonl` / `.ndjson` / `.json` (one JSON object per line; blank lines skipped). Errors name
//! the file, the 1-based line and the field.
//!
//! | file | fields (optional ones marked "opt.") |
//! |---|---|
//! | items | `id`, `question`, `answer_a`, `answer_b`, `gold` (`A`/`B`), `story` (opt.) |
//! | outputs (one file per model) | `item_id`, and either `choice` (`A`/`B`/`unparsed`) with `argument` (opt.), or `response` (the raw reply, parsed by [`parse_response`]) |
//! | verdicts | `item_id`, `model` (`init`/`rlhf`), `evaluator`, `confidence` (`0`/`25`/`50`/`75`/`100`, a trailing `%` allowed) |

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use trust_core::{Error, Result};

use super::{CONFIDENCE_LEVELS, Choice, Item, Output, Policy, Verdict};
use crate::common;

/// A data row as field → text, with its line number.
type Row = (usize, BTreeMap<String, String>);

fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "csv" => read_csv_rows(path),
        "jsonl" | "ndjson" | "json" => read_jsonl_rows(path),
        _ => Err(Error::data(
            path,
            0,
            "<file>",
            "unknown format: the extension must be .csv, .jsonl, .ndjson or .json",
        )),
    }
}

fn read_csv_rows(path: &Path) -> Result<Vec<Row>> {
    let headers = common::csv_headers(path)?;
    let records = common::read_csv_records(path)?;
    let mut rows = Vec::with_capacity(records.len());
    for (line, rec) in records {
        let mut map = BTreeMap::new();
        for (i, h) in headers.iter().enumerate() {
            match rec.get(i) {
                Some(v) if !v.is_empty() => {
                    map.insert(h.trim().to_string(), v.to_string());
                }
                _ => {}
            }
        }
        rows.push((line, map));
    }
    Ok(rows)
}

fn read_jsonl_rows(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut rows = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| Error::data(path, line, "<row>", format!("invalid JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| Error::data(path, line, "<row>", "expected a JSON object"))?;
        let mut map = BTreeMap::new();
        for (k, v) in obj {
            let s = match v {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(Error::data(
                        path,
                        line,
                        k.as_str(),
                        "expected a string or a number",
                    ));
                }
            };
            map.insert(k.clone(), s);
        }
        rows.push((line, map));
    }
    Ok(rows)
}

fn required<'a>(
    path: &Path,
    line: usize,
    row: &'a BTreeMap<String, String>,
    field: &str,
) -> Result<&'a str> {
    row.get(field)
        .map(String::as_str)
        .ok_or_else(|| Error::data(path, line, field, "missing value"))
}

fn parse_choice(path: &Path, line: usize, field: &str, s: &str) -> Result<Choice> {
    match s.trim() {
        "A" | "a" => Ok(Choice::A),
        "B" | "b" => Ok(Choice::B),
        other => Err(Error::data(
            path,
            line,
            field,
            format!("expected `A` or `B`, got {other:?}"),
        )),
    }
}

/// Parses a confidence in percent: one of 0, 25, 50, 75, 100, optionally followed by `%`.
pub fn parse_confidence_field(s: &str) -> std::result::Result<u8, String> {
    let t = s.trim();
    let t = t.strip_suffix('%').unwrap_or(t).trim();
    let v: f64 = t
        .parse()
        .map_err(|_| format!("expected one of 0, 25, 50, 75, 100, got {s:?}"))?;
    CONFIDENCE_LEVELS
        .iter()
        .copied()
        .find(|&l| f64::from(l) == v)
        .ok_or_else(|| format!("expected one of 0, 25, 50, 75, 100, got {s:?}"))
}

fn check_unique<'a>(
    path: &Path,
    seen: &mut BTreeSet<String>,
    line: usize,
    field: &str,
    id: &'a str,
) -> Result<&'a str> {
    if !seen.insert(id.to_string()) {
        return Err(Error::data(
            path,
            line,
            field,
            format!("duplicate id {id:?}"),
        ));
    }
    Ok(id)
}

/// Loads two-choice items (CSV or JSONL; fields in the module docs). Ids must be unique.
pub fn load_items(path: impl AsRef<Path>) -> Result<Vec<Item>> {
    let path = path.as_ref();
    let mut seen = BTreeSet::new();
    let mut items = Vec::new();
    for (line, row) in read_rows(path)? {
        let id = check_unique(
            path,
            &mut seen,
            line,
            "id",
            required(path, line, &row, "id")?,
        )?;
        items.push(Item {
            id: id.to_string(),
            question: required(path, line, &row, "question")?.to_string(),
            answer_a: required(path, line, &row, "answer_a")?.to_string(),
            answer_b: required(path, line, &row, "answer_b")?.to_string(),
            gold: parse_choice(path, line, "gold", required(path, line, &row, "gold")?)?,
            story: row.get("story").cloned(),
        });
    }
    Ok(items)
}

/// Loads one model's outputs (CSV or JSONL; fields in the module docs). Item ids must be unique.
pub fn load_outputs(path: impl AsRef<Path>) -> Result<Vec<Output>> {
    let path = path.as_ref();
    let mut seen = BTreeSet::new();
    let mut outputs = Vec::new();
    for (line, row) in read_rows(path)? {
        let item_id = check_unique(
            path,
            &mut seen,
            line,
            "item_id",
            required(path, line, &row, "item_id")?,
        )?
        .to_string();
        let output = if let Some(c) = row.get("choice") {
            let choice = if c.trim().eq_ignore_ascii_case("unparsed") {
                None
            } else {
                Some(parse_choice(path, line, "choice", c).map_err(|_| {
                    Error::data(
                        path,
                        line,
                        "choice",
                        format!("expected `A`, `B` or `unparsed`, got {c:?}"),
                    )
                })?)
            };
            Output {
                item_id,
                choice,
                argument: row.get("argument").cloned().unwrap_or_default(),
            }
        } else if let Some(r) = row.get("response") {
            let (choice, argument) = parse_response(r);
            Output {
                item_id,
                choice,
                argument,
            }
        } else {
            return Err(Error::data(
                path,
                line,
                "choice",
                "missing value (give `choice` or `response`)",
            ));
        };
        outputs.push(output);
    }
    Ok(outputs)
}

/// Loads verdicts (CSV or JSONL; fields in the module docs). A second verdict by the same
/// evaluator on the same (item, model) is an error.
pub fn load_verdicts(path: impl AsRef<Path>) -> Result<Vec<Verdict>> {
    let path = path.as_ref();
    let mut seen = BTreeSet::new();
    let mut verdicts = Vec::new();
    for (line, row) in read_rows(path)? {
        let item_id = required(path, line, &row, "item_id")?.to_string();
        let model_s = required(path, line, &row, "model")?;
        let model = match model_s.trim().to_ascii_lowercase().as_str() {
            "init" => Policy::Init,
            "rlhf" => Policy::Rlhf,
            _ => {
                return Err(Error::data(
                    path,
                    line,
                    "model",
                    format!("expected `init` or `rlhf`, got {model_s:?}"),
                ));
            }
        };
        let evaluator = required(path, line, &row, "evaluator")?.to_string();
        let confidence = parse_confidence_field(required(path, line, &row, "confidence")?)
            .map_err(|m| Error::data(path, line, "confidence", m))?;
        if !seen.insert((item_id.clone(), model, evaluator.clone())) {
            return Err(Error::data(
                path,
                line,
                "<row>",
                format!(
                    "evaluator {evaluator:?} already judged the {} output on item {item_id:?}",
                    model.as_str()
                ),
            ));
        }
        verdicts.push(Verdict {
            item_id,
            model,
            evaluator,
            confidence,
        });
    }
    Ok(verdicts)
}

/// Parses a policy reply into (choice, argument), as MisleadLM does for replies starting
/// "I think Answer A/B" (PROTOCOLS.md C.5).
///
/// Leading whitespace and an optional `I think Answer` prefix (any case) are skipped — the
/// policy prompt already ends with `"I think Answer "`, so raw continuations start at the letter.
/// The next character must be `A` or `B` (lower case accepted only after the prefix) followed by a non-alphanumeric character or the end;
/// the argument is the rest with leading punctuation (`:`, `.`, `,`, `-`, `)`) and whitespace
/// removed. Anything else is unparsed: `(None, whole reply trimmed)`.
pub fn parse_response(reply: &str) -> (Option<Choice>, String) {
    let t = reply.trim_start();
    const PREFIX: &str = "i think answer";
    let prefixed = t.len() >= PREFIX.len()
        && t.is_char_boundary(PREFIX.len())
        && t[..PREFIX.len()].eq_ignore_ascii_case(PREFIX);
    let rest = if prefixed {
        t[PREFIX.len()..].trim_start()
    } else {
        t
    };
    let mut chars = rest.chars();
    let choice = match chars.next() {
        Some('A') => Choice::A,
        Some('B') => Choice::B,
        Some('a') if prefixed => Choice::A,
        Some('b') if prefixed => Choice::B,
        _ => return (None, reply.trim().to_string()),
    };
    let after = chars.as_str();
    if after.chars().next().is_some_and(char::is_alphanumeric) {
        return (None, reply.trim().to_string());
    }
    let argument = after
        .trim_start_matches(|c: char| c.is_whitespace() || matches!(c, ':' | '.' | ',' | '-' | ')'))
        .trim_end()
        .to_string();
    (Some(choice), argument)
}
