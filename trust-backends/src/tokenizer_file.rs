//! Reading Hugging Face `tokenizer.json` files with errors that say what is wrong.

use std::path::Path;

use crate::error::BackendError;

/// Reads a Hugging Face `tokenizer.json`, telling a file that is not JSON (with its line and
/// column) from valid JSON that is not a tokenizer (the `tokenizers` crate reports both as a
/// syntax error) and from a directory.
pub(crate) fn tokenizer_from_file(path: &Path) -> Result<tokenizers::Tokenizer, BackendError> {
    let tok_err = |message: String| BackendError::Tokenizer {
        path: path.to_path_buf(),
        message,
    };
    if path.is_dir() {
        return Err(tok_err(
            "is a directory; expected a tokenizer.json file".into(),
        ));
    }
    let bytes = std::fs::read(path).map_err(|source| BackendError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let v: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| tok_err(format!("not valid JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(tok_err(
            "not a tokenizers file: expected a JSON object with a `model` field".into(),
        ));
    };
    if !obj.get("model").is_some_and(|m| m.is_object()) {
        let keys: Vec<&str> = obj.keys().map(String::as_str).take(8).collect();
        return Err(tok_err(format!(
            "not a tokenizers file: no `model` object (top-level keys: {})",
            if keys.is_empty() {
                "none".to_string()
            } else {
                keys.join(", ")
            }
        )));
    }
    tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| tok_err(e.to_string()))
}
