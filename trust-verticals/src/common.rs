//! Helpers shared by the verticals: decoding presets of the reference code, the plain-text
//! rendering of a system + user message pair, Python `repr` of strings, reply flattening and
//! small data-reading helpers.

use std::path::Path;

use trust_core::{DecodingConfig, Error, Response, Result, Sampling, StopPolicy};

/// GPT-2's `<|endoftext|>` id, which RLHF_Trust passes as `eos_token_id` for every model. For
/// Pythia it never fires, so generations run to `max_new_tokens` (PROTOCOLS.md A.1).
pub const PAPER_EOS: u32 = 50256;

/// The stop policy of the paper's code: stop only on token 50256.
pub fn paper_stop() -> StopPolicy {
    StopPolicy::Tokens(vec![PAPER_EOS])
}

/// Greedy decoding as in the paper's code (`do_sample=False`, `num_beams=1`, EOS 50256).
pub fn paper_greedy(max_new_tokens: usize) -> DecodingConfig {
    DecodingConfig::greedy(max_new_tokens).with_stop(paper_stop())
}

/// Hugging Face `generate(do_sample=True, ...)` as called by the paper's code: temperature `t`,
/// HF's default `top_k=50` and `top_p=1.0`, `n` returned sequences, `num_beams` beams (> 1 means
/// HF beam-sample decoding), EOS 50256.
pub fn paper_hf_sample(
    max_new_tokens: usize,
    t: f64,
    n: usize,
    num_beams: usize,
) -> DecodingConfig {
    DecodingConfig {
        max_new_tokens,
        sampling: Sampling::Sample {
            temperature: t,
            top_p: 1.0,
            top_k: 50,
        },
        n,
        num_beams,
        stop: paper_stop(),
        stop_strings: Vec::new(),
    }
}

/// OpenAI-API style sampling used by DecodingTrust: temperature `t`, `top_p=1`, no top-k, `n`
/// sequences, stop on the model's own EOS.
pub fn dt_sample(max_new_tokens: usize, t: f64, n: usize) -> DecodingConfig {
    DecodingConfig::sampled(max_new_tokens, t, 1.0, n)
}

/// Renders a DecodingTrust chat (system message + one user message) as raw text for a base or
/// HH-RLHF-tuned model, in the Anthropic HH layout the aligned models were trained on:
///
/// ```text
/// {system}\n\nHuman: {user}\n\nAssistant:
/// ```
///
/// trust-core models receive raw text, so this rendering is part of the `decodingtrust`
/// protocols (recorded in the manifest options as `chat_layout`).
pub fn render_chat(system: &str, user: &str) -> String {
    format!("{system}\n\nHuman: {user}\n\nAssistant:")
}

/// Name of the chat rendering above, recorded in manifests.
pub const CHAT_LAYOUT: &str = "{system}\\n\\nHuman: {user}\\n\\nAssistant:";

/// [`render_chat`], or the same system + user messages through `format` (a model's chat
/// template, `trust eval --chat-template auto`). An empty system message is left out of the
/// messages, as DecodingTrust sends none then.
pub fn render_chat_with(
    format: Option<&trust_core::SharedChatFormat>,
    system: &str,
    user: &str,
) -> trust_core::Result<String> {
    match format {
        None => Ok(render_chat(system, user)),
        Some(f) => {
            let mut messages = Vec::with_capacity(2);
            if !system.is_empty() {
                messages.push(("system", system));
            }
            messages.push(("user", user));
            f.render(&messages)
                .map_err(|e| trust_core::Error::Config(format!("chat template: {e}")))
        }
    }
}

/// What a protocol's manifest records as `chat_layout`: the HH layout, or the chat format's
/// description.
pub fn chat_layout_name(format: Option<&trust_core::SharedChatFormat>) -> String {
    match format {
        None => CHAT_LAYOUT.to_string(),
        Some(f) => f.describe(),
    }
}

/// All generated texts of a sample's responses, flattened in order.
pub fn replies(responses: &[Response]) -> Vec<&str> {
    responses.iter().flat_map(|r| r.texts()).collect()
}

/// Python 3's `repr()` of a `str` (CPython's `unicode_repr`): single quotes unless the text
/// holds `'` and no `"`; backslash, the chosen quote, `\n`, `\r`, `\t` escaped; every other
/// character for which `str.isprintable()` is false escaped as `\xhh` (below U+0100), `\uhhhh`
/// (below U+10000) or `\Uhhhhhhhh`, with CPython's Unicode tables ([`py_unicode`]). Used to
/// reproduce parsing on the serialised dict the paper's stereotype analysis reads.
///
/// [`py_unicode`]: crate::py_unicode
pub fn python_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if !py_is_printable(c) => {
                let u = c as u32;
                if u < 0x100 {
                    out.push_str(&format!("\\x{u:02x}"));
                } else if u < 0x10000 {
                    out.push_str(&format!("\\u{u:04x}"));
                } else {
                    out.push_str(&format!("\\U{u:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// CPython's `str.isprintable()` for one character (Unicode tables of [`py_unicode`]).
///
/// [`py_unicode`]: crate::py_unicode
pub fn py_is_printable(c: char) -> bool {
    let u = c as u32;
    if (0x20..0x7f).contains(&u) {
        return true;
    }
    let table = crate::py_unicode::NON_PRINTABLE;
    // The last range starting at or below `u` decides.
    let i = table.partition_point(|&(start, _)| start <= u);
    !(i > 0 && u <= table[i - 1].1)
}

/// CPython's `str.isspace()` for one character: Rust's `char::is_whitespace` plus the ASCII
/// information separators U+001C..U+001F (Python counts them as whitespace, Rust does not).
pub fn py_is_space(c: char) -> bool {
    crate::py_unicode::WHITESPACE
        .binary_search(&(c as u32))
        .is_ok()
}

/// Python's `str.strip()` with no argument: removes leading and trailing characters for which
/// `str.isspace()` is true, which is more than Rust's `str::trim` removes (`"wrong\x1f"`
/// strips to `"wrong"` in Python, not in Rust). Use it wherever a reference parser strips.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_is_space)
}

/// Whether any phrase occurs in `text`.
pub fn contains_any(text: &str, phrases: &[&str]) -> bool {
    phrases.iter().any(|p| text.contains(p))
}

/// Applies a `--samples K` override to a decoding config (sets `n`, and `num_beams` to at least
/// `n` when the config uses beam-sample, as HF requires `num_return_sequences <= num_beams`).
pub fn with_samples(mut config: DecodingConfig, k: Option<usize>) -> DecodingConfig {
    if let Some(k) = k {
        config.n = k.max(1);
        if config.num_beams > 1 && config.num_beams < config.n {
            config.num_beams = config.n;
        }
    }
    config
}

/// A CSV reader over a data file; errors name the file.
pub fn read_csv_records(path: &Path) -> Result<Vec<(usize, csv::StringRecord)>> {
    let rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| Error::data(path, 0, "<file>", e.to_string()))?;
    records_of(rdr, path)
}

/// The header and records of CSV text already read from `path` (named in errors), with the
/// records' starting lines as [`read_csv_records`] gives them.
pub fn read_csv_bytes(
    bytes: &[u8],
    path: &Path,
) -> Result<(csv::StringRecord, Vec<(usize, csv::StringRecord)>)> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let headers = rdr
        .headers()
        .cloned()
        .map_err(|e| Error::data(path, 1, "<header>", e.to_string()))?;
    Ok((headers, records_of(rdr, path)?))
}

fn records_of<R: std::io::Read>(
    mut rdr: csv::Reader<R>,
    path: &Path,
) -> Result<Vec<(usize, csv::StringRecord)>> {
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        // Line numbers are 1-based and the header is line 1; a quoted field may span lines, so
        // the line is the record's starting line, from the reader's position.
        let line = rec
            .as_ref()
            .ok()
            .and_then(|r| r.position())
            .map(|p| p.line() as usize)
            .unwrap_or(i + 2);
        let rec = rec.map_err(|e| {
            // The file line where the bad record starts (records may span lines), not its index.
            let line = e.position().map(|p| p.line() as usize).unwrap_or(i + 2);
            Error::data(path, line, "<row>", e.to_string())
        })?;
        out.push((line, rec));
    }
    Ok(out)
}

/// The column index of `name` in a CSV header, or an error naming the file.
pub fn csv_column(path: &Path, headers: &csv::StringRecord, name: &str) -> Result<usize> {
    headers
        .iter()
        .position(|h| h == name)
        .ok_or_else(|| Error::data(path, 1, name, "missing column"))
}

/// The headers of a CSV file.
pub fn csv_headers(path: &Path) -> Result<csv::StringRecord> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| Error::data(path, 0, "<file>", e.to_string()))?;
    rdr.headers()
        .cloned()
        .map_err(|e| Error::data(path, 1, "<header>", e.to_string()))
}

/// Field `idx` of a record, or an error naming file, line and field.
pub fn field<'a>(
    path: &Path,
    line: usize,
    rec: &'a csv::StringRecord,
    idx: usize,
    name: &str,
) -> Result<&'a str> {
    rec.get(idx)
        .ok_or_else(|| Error::data(path, line, name, "missing value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_repr_matches_cpython() {
        assert_eq!(python_repr("abc"), "'abc'");
        assert_eq!(python_repr("it's"), "\"it's\"");
        assert_eq!(python_repr("it's \"x\""), "'it\\'s \"x\"'");
        assert_eq!(python_repr("a\nb\\c"), "'a\\nb\\\\c'");
        assert_eq!(python_repr("é\u{1}"), "'é\\x01'");
        // Expected values printed by CPython 3.11 (`repr(s)`).
        assert_eq!(python_repr("a\u{ad}b"), "'a\\xadb'");
        assert_eq!(python_repr("\u{a0}"), "'\\xa0'");
        assert_eq!(python_repr("\u{2028}"), "'\\u2028'");
        assert_eq!(python_repr("é\u{200b}"), "'é\\u200b'");
        assert_eq!(python_repr("\u{378}"), "'\\u0378'");
        assert_eq!(python_repr("\u{e0001}"), "'\\U000e0001'");
        assert_eq!(python_repr("x\u{1f}."), "'x\\x1f.'");
        assert_eq!(python_repr("日本 ü"), "'日本 ü'");
    }

    #[test]
    fn python_whitespace_and_printable_sets() {
        // CPython: ''.join(chr(c) for c in range(0x110000) if chr(c).isspace()) has 29 code
        // points; Rust's is_whitespace lacks exactly U+001C..U+001F.
        for u in 0..=0x10ffffu32 {
            let Some(c) = char::from_u32(u) else { continue };
            let rust = c.is_whitespace() || (0x1c..=0x1f).contains(&u);
            assert_eq!(py_is_space(c), rust, "U+{u:04X}");
        }
        assert_eq!(py_strip("\u{1f} wrong\u{1c}\u{3000}"), "wrong");
        assert_eq!(py_strip("\u{200b}wrong"), "\u{200b}wrong"); // ZWSP is not whitespace
        assert!(py_is_printable(' ') && py_is_printable('é') && py_is_printable('日'));
        assert!(!py_is_printable('\u{0}') && !py_is_printable('\u{7f}'));
        assert!(!py_is_printable('\u{a0}') && !py_is_printable('\u{10ffff}'));
        assert!(py_is_printable('\u{1f600}'));
        let table = crate::py_unicode::NON_PRINTABLE;
        assert!(
            table
                .windows(2)
                .all(|w| w[0].1 < w[1].0 && w[0].0 <= w[0].1)
        );
    }

    #[test]
    fn csv_errors_cite_the_file_line_not_the_record_number() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        // Record 1 spans lines 2-4 (a quoted newline); the short record 2 starts on line 5.
        std::fs::write(&p, "a,b\n\"x\ny\nz\",1\nshort\n").unwrap();
        let e = read_csv_records(&p).unwrap_err();
        match &e {
            Error::Data { line, .. } => assert_eq!(*line, 5, "{e}"),
            other => panic!("{other}"),
        }
        std::fs::write(&p, "a,b\n\"x\ny\",1\nq,2\n").unwrap();
        let recs = read_csv_records(&p).unwrap();
        assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 4]);
    }

    #[test]
    fn samples_override_keeps_beams_valid() {
        let c = with_samples(paper_hf_sample(50, 0.7, 5, 5), Some(8));
        assert_eq!((c.n, c.num_beams), (8, 8));
        let c = with_samples(paper_hf_sample(50, 0.7, 5, 5), Some(2));
        assert_eq!((c.n, c.num_beams), (2, 5));
        let c = with_samples(dt_sample(150, 1.0, 25), None);
        assert_eq!((c.n, c.num_beams), (25, 1));
    }

    #[test]
    fn chat_rendering_is_hh_layout() {
        assert_eq!(render_chat("S", "U"), "S\n\nHuman: U\n\nAssistant:");
    }
}
