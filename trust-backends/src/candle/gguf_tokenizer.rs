//! A [`tokenizers::Tokenizer`] from a GGUF file's `tokenizer.ggml.*` metadata, built the way
//! transformers builds it (`integrations/gguf/gguf_tokenizer_mapping.py`, transformers 5.x):
//!
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE (`GPT2Tokenizer`: the GPT-2 split and
//!   `ByteLevel` pre-tokenizer, `ByteLevel` decoder, no post-processing) over the vocabulary in
//!   byte-alphabet spelling and the stored merges. When `tokenizer.ggml.pre` names a split that
//!   transformers knows (llama3, qwen2, tekken, gpt-4o, ...), that split regex runs first, then a
//!   regex-free `ByteLevel`. Other names (e.g. `smollm`) keep the GPT-2 split, as transformers
//!   does; for SmolLM2 this gives the ids of its own tokenizer.json, because its merges never join
//!   two digits.
//! - `tokenizer.ggml.model = "llama"`: SentencePiece-style BPE (`LlamaTokenizer`: `Metaspace`
//!   pre-tokenizer with prefix `▁` on the first word, byte fallback, the `<0xNN>` byte tokens),
//!   merges from the file or, when absent, rebuilt from the scores.
//!
//! Tokens typed CONTROL (3) become special added tokens (skipped when a byte-level vocabulary
//! spells them outside its alphabet, as transformers does), USER_DEFINED (4) plain added tokens.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Value as Json, json};

use super::gguf::{GgufFile, Value};
use crate::BackendError;

/// GPT-2's byte → unicode table (`bytes_to_unicode` in transformers / tokenizers).
pub(crate) fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            let c = char::from_u32(256 + n).unwrap();
            n += 1;
            c
        };
    }
    table
}

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// transformers' `GGUF_PRE_TOKENIZER_SPLITS`: `tokenizer.ggml.pre` → split regex.
fn pre_split(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// The special tokens a GGUF names (`tokenizer.ggml.{bos,eos,unknown,padding}_token_id`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    /// BOS id and text.
    pub bos: Option<(u32, String)>,
    /// EOS id and text.
    pub eos: Option<(u32, String)>,
    /// Unknown-token id and text.
    pub unk: Option<(u32, String)>,
    /// Padding id and text.
    pub pad: Option<(u32, String)>,
    /// `tokenizer.ggml.add_bos_token` (default false for gpt2, true for llama vocabularies).
    pub add_bos: bool,
}

fn key_err(path: &Path, key: &str, message: impl std::fmt::Display) -> BackendError {
    BackendError::Tokenizer {
        path: path.to_path_buf(),
        message: format!("metadata `{key}`: {message}"),
    }
}

fn strings<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, BackendError> {
    let v = g
        .get(key)
        .ok_or_else(|| key_err(g.path(), key, "missing"))?
        .as_array()
        .ok_or_else(|| key_err(g.path(), key, "must be an array"))?;
    v.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_str()
                .ok_or_else(|| key_err(g.path(), key, format!("item {i} is not a string")))
        })
        .collect()
}

fn ints(g: &GgufFile, key: &str, n: usize) -> Result<Option<Vec<i64>>, BackendError> {
    let Some(v) = g.get(key) else { return Ok(None) };
    let a = v
        .as_array()
        .ok_or_else(|| key_err(g.path(), key, "must be an array"))?;
    if a.len() != n {
        return Err(key_err(
            g.path(),
            key,
            format!("{} items for {n} tokens", a.len()),
        ));
    }
    a.iter()
        .enumerate()
        .map(|(i, x)| {
            x.as_f64()
                .map(|f| f as i64)
                .ok_or_else(|| key_err(g.path(), key, format!("item {i} is not a number")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The special tokens of `g`.
pub fn special_tokens(g: &GgufFile) -> Result<SpecialTokens, BackendError> {
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let id = |key: &str| -> Result<Option<(u32, String)>, BackendError> {
        let full = format!("tokenizer.ggml.{key}");
        match g.get(&full) {
            None => Ok(None),
            Some(v) => {
                let i = v.as_u64().ok_or_else(|| {
                    key_err(g.path(), &full, format!("must be an integer, got {v:?}"))
                })?;
                let t = tokens.get(i as usize).ok_or_else(|| {
                    key_err(
                        g.path(),
                        &full,
                        format!("id {i} is beyond the {} tokens", tokens.len()),
                    )
                })?;
                Ok(Some((i as u32, t.to_string())))
            }
        }
    };
    let model = g.get("tokenizer.ggml.model").and_then(Value::as_str);
    Ok(SpecialTokens {
        bos: id("bos_token_id")?,
        eos: id("eos_token_id")?,
        unk: id("unknown_token_id")?,
        pad: id("padding_token_id")?,
        add_bos: g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(model == Some("llama")),
    })
}

/// The chat template stored in the file (`tokenizer.chat_template`), if any.
pub fn chat_template(g: &GgufFile) -> Option<String> {
    g.get("tokenizer.chat_template")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Builds the tokenizer described by `g`'s metadata (see the module docs).
pub fn tokenizer(g: &GgufFile) -> Result<tokenizers::Tokenizer, BackendError> {
    let path = g.path();
    let model_key = "tokenizer.ggml.model";
    let model = g
        .get(model_key)
        .ok_or_else(|| key_err(path, model_key, "missing"))?
        .as_str()
        .ok_or_else(|| key_err(path, model_key, "must be a string"))?;
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    if tokens.is_empty() {
        return Err(key_err(path, "tokenizer.ggml.tokens", "empty"));
    }
    let types = ints(g, "tokenizer.ggml.token_type", tokens.len())?;
    let json = match model {
        "gpt2" => byte_level(g, &tokens, types.as_deref())?,
        "llama" => sentencepiece(g, &tokens, types.as_deref())?,
        other => {
            return Err(key_err(
                path,
                model_key,
                format!("unsupported tokenizer model `{other}` (supported: gpt2, llama)"),
            ));
        }
    };
    let text = serde_json::to_string(&json).map_err(|e| BackendError::Tokenizer {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.parse::<tokenizers::Tokenizer>()
        .map_err(|e| BackendError::Tokenizer {
            path: path.to_path_buf(),
            message: format!("cannot build the tokenizer from the metadata: {e}"),
        })
}

fn added(id: usize, content: &str, special: bool) -> Json {
    json!({
        "id": id, "content": content, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": special
    })
}

fn merges_of(g: &GgufFile) -> Result<Option<Vec<Json>>, BackendError> {
    if g.get("tokenizer.ggml.merges").is_none() {
        return Ok(None);
    }
    let merges = strings(g, "tokenizer.ggml.merges")?;
    merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            // transformers: tuple(merge.split(" ")); a merge must have exactly two parts.
            let parts: Vec<&str> = m.split(' ').collect();
            if parts.len() != 2 {
                return Err(key_err(
                    g.path(),
                    "tokenizer.ggml.merges",
                    format!("merge {i} ({m:?}) is not two space-separated tokens"),
                ));
            }
            Ok(json!([parts[0], parts[1]]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn byte_level(g: &GgufFile, tokens: &[&str], types: Option<&[i64]>) -> Result<Json, BackendError> {
    let table = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        let spelled = if t.chars().all(|c| alphabet.contains(&c)) {
            t.to_string()
        } else {
            t.bytes().map(|b| table[b as usize]).collect()
        };
        // Later duplicates win, as in a Python dict comprehension.
        vocab.insert(spelled, json!(i));
    }
    let merges = merges_of(g)?.ok_or_else(|| {
        key_err(
            g.path(),
            "tokenizer.ggml.merges",
            "missing (a gpt2 vocabulary needs its merges)",
        )
    })?;
    let mut added_tokens = Vec::new();
    if let Some(types) = types {
        for (i, (t, &ty)) in tokens.iter().zip(types).enumerate() {
            if ty == 3 && t.chars().all(|c| alphabet.contains(&c)) {
                added_tokens.push(added(i, t, true));
            }
        }
        for (i, (t, &ty)) in tokens.iter().zip(types).enumerate() {
            if ty == 4 && vocab.contains_key(*t) {
                added_tokens.push(added(i, t, false));
            }
        }
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre = g.get("tokenizer.ggml.pre").and_then(Value::as_str);
    let pre_tokenizer = match pre.and_then(pre_split) {
        Some(re) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]}),
        None => byte_level.clone(),
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges
        }
    }))
}

/// SentencePiece BPE as transformers' `LlamaTokenizer` builds it: `Metaspace` (prepend on the
/// first word), byte fallback, the decoder undoing both.
fn sentencepiece(
    g: &GgufFile,
    tokens: &[&str],
    types: Option<&[i64]>,
) -> Result<Json, BackendError> {
    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.to_string(), json!(i));
    }
    let merges = match merges_of(g)? {
        Some(m) => m,
        None => {
            let scores = g
                .get("tokenizer.ggml.scores")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    key_err(
                        g.path(),
                        "tokenizer.ggml.scores",
                        "missing (a llama vocabulary without merges needs its scores)",
                    )
                })?;
            if scores.len() != tokens.len() {
                return Err(key_err(
                    g.path(),
                    "tokenizer.ggml.scores",
                    format!("{} scores for {} tokens", scores.len(), tokens.len()),
                ));
            }
            let scores: Vec<f64> = scores.iter().map(|s| s.as_f64().unwrap_or(0.0)).collect();
            generate_merges(tokens, &scores)
        }
    };
    let unk = special_tokens(g)?.unk.map(|(_, t)| t);
    let mut added_tokens = Vec::new();
    if let Some(types) = types {
        for (i, (t, &ty)) in tokens.iter().zip(types).enumerate() {
            if ty == 3 {
                added_tokens.push(added(i, t, true));
            }
        }
        for (i, (t, &ty)) in tokens.iter().zip(types).enumerate() {
            if ty == 4 {
                added_tokens.push(added(i, t, false));
            }
        }
    }
    if let Some(u) = &unk {
        if !added_tokens.iter().any(|a| a["content"] == json!(u)) {
            if let Some(i) = tokens.iter().position(|t| t == u) {
                added_tokens.push(added(i, u, true));
            }
        }
    }
    added_tokens.sort_by_key(|a| a["id"].as_u64());
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": "first", "split": false},
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
            "ignore_merges": false, "vocab": vocab, "merges": merges
        }
    }))
}

/// transformers' `generate_merges(vocab, vocab_scores)`: for every token, each split into two
/// tokens of the vocabulary is a merge, ranked by the token's score (best first), then by the
/// pieces' ids.
fn generate_merges(tokens: &[&str], scores: &[f64]) -> Vec<Json> {
    // {token: index}: a repeated token maps to its last index.
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let last_score: HashMap<&str, f64> =
        tokens.iter().copied().zip(scores.iter().copied()).collect();
    let mut merges: Vec<(f64, &str, &str)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, t) in tokens.iter().enumerate() {
        // Python's dict(zip(tokens, scores)): a repeated token keeps its first place and its
        // last score.
        if !seen.insert(*t) {
            continue;
        }
        let score = last_score.get(t).copied().unwrap_or(scores[i]);
        let cuts: Vec<usize> = t.char_indices().map(|(b, _)| b).skip(1).collect();
        let mut local = Vec::new();
        for c in cuts {
            let (l, r) = t.split_at(c);
            if let (Some(&a), Some(&b)) = (ids.get(l), ids.get(r)) {
                local.push((a, b, l, r));
            }
        }
        // transformers sorts each token's pieces by (vocab[left], vocab[right]).
        local.sort_by_key(|&(a, b, _, _)| (a, b));
        merges.extend(local.into_iter().map(|(_, _, l, r)| (score, l, r)));
    }
    // sorted(key=(score, len(left), len(right)), reverse=True): descending, stable.
    let key = |m: &(f64, &str, &str)| (m.0, m.1.chars().count(), m.2.chars().count());
    merges.sort_by(|x, y| {
        let (a, b) = (key(x), key(y));
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.1.cmp(&a.1))
            .then(b.2.cmp(&a.2))
    });
    merges.into_iter().map(|(_, l, r)| json!([l, r])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        let distinct: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }
}
