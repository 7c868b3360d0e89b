//! `trust classify`: per-label probabilities of texts from a text scorer: an ONNX classifier
//! directory (`--model DIR`) or any `--scorer` spec (`jigsaw`, `onnx:models/hatesonar`, ...).
//!
//! Input: JSON Lines, one `{"text": "..."}` object per line (other fields such as `id` are
//! copied). Output: one JSON object per input line, in order:
//! `{"line": 1, "id": ..., "scores": {"toxicity": 0.01, ...}}`, or `{"line": n, "error": "..."}`
//! for a text that cannot be scored (the command then exits with status 1 after writing all lines).

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Map, Value};
use trust_core::TextScorer;

use crate::scorer_arg::{OnnxSpec, load_onnx, load_scorer};

/// Arguments of `trust classify`.
#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// ONNX model directory: model.onnx + tokenizer.json + config.json (an `optimum-cli export
    /// onnx --task text-classification` output), or a raw-text classifier (hatesonar).
    #[arg(long, required_unless_present = "scorer", conflicts_with = "scorer")]
    pub model: Option<PathBuf>,
    /// A scorer spec instead of --model: `jigsaw`, `jigsaw:DIR`, `onnx:DIR[,...]`, `mock`.
    #[arg(long)]
    pub scorer: Option<String>,
    /// JSON Lines input with a `text` field per line (`-` = stdin).
    #[arg(long)]
    pub input: PathBuf,
    /// Output file (default: stdout).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Texts per ONNX Runtime call.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Override the activation: sigmoid, softmax or identity (default: from config.json).
    #[arg(long)]
    pub activation: Option<String>,
    /// Parallel ONNX Runtime sessions (default: number of CPUs).
    #[arg(long)]
    pub sessions: Option<usize>,
    /// Intra-op threads per session.
    #[arg(long)]
    pub threads: Option<usize>,
    /// The .onnx file inside the model directory (default: model.onnx).
    #[arg(long)]
    pub model_file: Option<String>,
}

struct Row {
    line: usize,
    extra: Map<String, Value>,
    text: String,
}

fn read_rows(path: &PathBuf) -> anyhow::Result<Vec<Row>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        ))
    };
    let mut rows = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{}:{n}: reading", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{n}: invalid JSON", path.display()))?;
        let Value::Object(mut obj) = v else {
            bail!("{}:{n}: expected a JSON object", path.display())
        };
        let text = match obj.remove("text") {
            Some(Value::String(s)) => s,
            Some(_) => bail!("{}:{n}: field `text` must be a string", path.display()),
            None => bail!("{}:{n}: missing field `text`", path.display()),
        };
        rows.push(Row {
            line: n,
            extra: obj,
            text,
        });
    }
    Ok(rows)
}

/// Runs `trust classify`.
pub fn run(a: ClassifyArgs) -> anyhow::Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    let clf: Box<dyn TextScorer> = match (&a.model, &a.scorer) {
        (Some(model), _) => load_onnx(&OnnxSpec {
            dir: model.display().to_string(),
            activation: a.activation.clone(),
            batch: Some(a.batch_size),
            sessions: a.sessions,
            threads: a.threads,
            file: a.model_file.clone(),
            ..Default::default()
        })?,
        (None, Some(spec)) => {
            load_scorer(spec)?.with_context(|| format!("--scorer {spec}: no scorer"))?
        }
        (None, None) => bail!("give --model DIR or --scorer SPEC"),
    };
    let rows = read_rows(&a.input)?;
    let labels = clf.info().labels;
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("starting the async runtime")?;
    let mut failed = 0usize;
    // Hand the scorer a few batches at a time so its session pool can run them in parallel.
    let chunk = a.batch_size
        * a.sessions
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
    for group in rows.chunks(chunk) {
        let texts: Vec<String> = group.iter().map(|r| r.text.clone()).collect();
        let scores = rt.block_on(clf.score(&texts));
        for (row, res) in group.iter().zip(scores) {
            let mut obj = Map::new();
            obj.insert("line".into(), Value::from(row.line));
            for (k, v) in &row.extra {
                obj.insert(k.clone(), v.clone());
            }
            match res {
                Ok(s) => {
                    let m: Map<String, Value> = labels
                        .iter()
                        .cloned()
                        .zip(s.values.iter().map(|&v| Value::from(v)))
                        .collect();
                    obj.insert("scores".into(), Value::Object(m));
                }
                Err(e) => {
                    failed += 1;
                    obj.insert("error".into(), Value::from(e.to_string()));
                }
            }
            serde_json::to_writer(&mut out, &Value::Object(obj))?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    if failed > 0 {
        bail!(
            "{failed} of {} lines could not be scored (see their `error` fields)",
            rows.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../trust-backends/tests/fixtures/onnx/tiny-classifier"
        ))
    }

    #[test]
    fn classifies_jsonl_in_order_and_matches_the_reference() {
        let tmp = tempfile::tempdir().unwrap();
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture().join("expected.json")).unwrap(),
        )
        .unwrap();
        let cases = expected["cases"].as_array().unwrap();
        let input = tmp.path().join("in.jsonl");
        let mut text = String::new();
        for (i, c) in cases.iter().enumerate() {
            text.push_str(
                &serde_json::json!({"id": format!("r{i}"), "text": c["text"]}).to_string(),
            );
            text.push('\n');
        }
        std::fs::write(&input, text).unwrap();
        let output = tmp.path().join("out.jsonl");
        run(ClassifyArgs {
            model: Some(fixture()),
            scorer: None,
            input,
            output: Some(output.clone()),
            batch_size: 2,
            activation: None,
            sessions: Some(2),
            threads: None,
            model_file: None,
        })
        .unwrap();
        let lines: Vec<Value> = std::fs::read_to_string(&output)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), cases.len());
        for (i, (l, c)) in lines.iter().zip(cases).enumerate() {
            assert_eq!(l["line"], i + 1);
            assert_eq!(l["id"], format!("r{i}"));
            let want = c["sigmoid"].as_array().unwrap();
            for (label, w) in expected["labels"].as_array().unwrap().iter().zip(want) {
                let g = l["scores"][label.as_str().unwrap()].as_f64().unwrap();
                assert!(
                    (g - w.as_f64().unwrap()).abs() < 1e-5,
                    "line {i} {label}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn bad_input_lines_are_located() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in.jsonl");
        std::fs::write(&input, "{\"text\": \"ok\"}\n{\"txt\": \"no\"}\n").unwrap();
        let err = read_rows(&input).err().unwrap().to_string();
        assert!(err.contains("in.jsonl:2") && err.contains("text"), "{err}");
        std::fs::write(&input, "{\"text\": \"ok\"}\n\nnot json\n").unwrap();
        let err = read_rows(&input).err().unwrap().to_string();
        assert!(err.contains("in.jsonl:3"), "{err}");
    }

    #[test]
    fn unscorable_lines_are_reported_and_fail_the_command() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in.jsonl");
        std::fs::write(&input, "{\"text\": \"fine\"}\n{\"text\": \"\"}\n").unwrap();
        let output = tmp.path().join("out.jsonl");
        let err = run(ClassifyArgs {
            model: Some(fixture()),
            scorer: None,
            input,
            output: Some(output.clone()),
            batch_size: 32,
            activation: Some("softmax".into()),
            sessions: Some(1),
            threads: None,
            model_file: None,
        })
        .unwrap_err();
        assert!(err.to_string().contains("1 of 2"), "{err}");
        let lines: Vec<Value> = std::fs::read_to_string(&output)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let sum: f64 = lines[0]["scores"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-9, "softmax scores sum to 1");
        assert!(
            lines[1]["error"]
                .as_str()
                .unwrap()
                .contains("invalid input"),
            "{}",
            lines[1]
        );
    }
}
