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

/// Python 3's `repr()` of a `str`: single quotes unless the text holds `'` and no `"`;
/// backslash, the chosen quote, `\n`, `\r`, `\t` and other non-printable ASCII escaped. Used to
/// reproduce parsing on the serialised dict the paper's stereotype analysis reads.
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
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if (0x80..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
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
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| Error::data(path, 0, "<file>", e.to_string()))?;
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        // Line numbers are 1-based and the header is line 1 (records span one line in our data).
        let line = rec
            .as_ref()
            .ok()
            .and_then(|r| r.position())
            .map(|p| p.line() as usize)
            .unwrap_or(i + 2);
        let rec = rec.map_err(|e| Error::data(path, i + 2, "<row>", e.to_string()))?;
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
