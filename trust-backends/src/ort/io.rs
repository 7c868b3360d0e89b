//! Helpers shared by the ONNX models: signature checks, integer input tensors, tokenizer and
//! config loading.

use std::path::{Path, PathBuf};

use ::ort::session::Session;
use ::ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use tokenizers::Tokenizer;

use crate::error::BackendError;

/// Element type of an integer model input (HF exports use int64; some use int32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IntType {
    I64,
    I32,
}

/// The value type of the input (or output) called `name`.
fn outlet_type<'s>(session: &'s Session, name: &str, input: bool) -> Option<&'s ValueType> {
    let outlets = if input {
        session.inputs()
    } else {
        session.outputs()
    };
    outlets.iter().find(|o| o.name() == name).map(|o| o.dtype())
}

/// The element type of a tensor input or output, if it is a tensor.
pub(crate) fn tensor_type(session: &Session, name: &str, input: bool) -> Option<TensorElementType> {
    outlet_type(session, name, input).and_then(|t| t.tensor_type())
}

/// The static shape of a tensor input or output (`-1` for symbolic dimensions).
pub(crate) fn tensor_shape(session: &Session, name: &str, input: bool) -> Option<Vec<i64>> {
    outlet_type(session, name, input)
        .and_then(|t| t.tensor_shape())
        .map(|s| s.to_vec())
}

pub(crate) fn input_names(session: &Session) -> Vec<String> {
    session
        .inputs()
        .iter()
        .map(|o| o.name().to_string())
        .collect()
}

pub(crate) fn output_names(session: &Session) -> Vec<String> {
    session
        .outputs()
        .iter()
        .map(|o| o.name().to_string())
        .collect()
}

/// Checks that `name` is an integer input and returns its type.
pub(crate) fn int_input(
    session: &Session,
    model: &Path,
    name: &str,
) -> Result<IntType, BackendError> {
    match tensor_type(session, name, true) {
        Some(TensorElementType::Int64) => Ok(IntType::I64),
        Some(TensorElementType::Int32) => Ok(IntType::I32),
        Some(other) => Err(BackendError::ModelSignature {
            path: model.to_path_buf(),
            message: format!("input `{name}` has element type {other}; expected int64 or int32"),
        }),
        None => Err(BackendError::ModelSignature {
            path: model.to_path_buf(),
            message: format!("input `{name}` is not a tensor"),
        }),
    }
}

/// A `[rows, cols]` integer tensor of the given type.
pub(crate) fn int_tensor(
    ty: IntType,
    rows: usize,
    cols: usize,
    data: Vec<i64>,
) -> Result<DynValue, BackendError> {
    debug_assert_eq!(data.len(), rows * cols);
    let shape = vec![rows as i64, cols as i64];
    let v = match ty {
        IntType::I64 => Tensor::from_array((shape, data)).map(|t| t.into_dyn()),
        IntType::I32 => Tensor::from_array((
            shape,
            data.into_iter().map(|x| x as i32).collect::<Vec<_>>(),
        ))
        .map(|t| t.into_dyn()),
    };
    v.map_err(|e| BackendError::Runtime(format!("creating an input tensor: {e}")))
}

/// Loads `tokenizer.json`.
pub(crate) fn load_tokenizer(path: &Path) -> Result<Tokenizer, BackendError> {
    if !path.is_file() {
        return Err(BackendError::Tokenizer {
            path: path.to_path_buf(),
            message: "file not found".into(),
        });
    }
    crate::tokenizer_file::tokenizer_from_file(path)
}

/// Reads `config.json` (an empty object when the file is absent and `required` is false).
pub(crate) fn load_config(path: &Path, required: bool) -> Result<serde_json::Value, BackendError> {
    if !path.is_file() {
        if required {
            return Err(BackendError::Config {
                path: path.to_path_buf(),
                message: "file not found".into(),
            });
        }
        return Ok(serde_json::Value::Object(Default::default()));
    }
    let text = std::fs::read_to_string(path).map_err(|source| BackendError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| BackendError::Config {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })?;
    if !v.is_object() {
        return Err(BackendError::Config {
            path: path.to_path_buf(),
            message: "expected a JSON object".into(),
        });
    }
    Ok(v)
}

/// The model file in `dir`: `file` if given, else `model.onnx`, else `onnx/model.onnx`.
pub(crate) fn model_path(dir: &Path, file: Option<&str>) -> Result<PathBuf, BackendError> {
    if !dir.is_dir() {
        return Err(BackendError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
        });
    }
    if let Some(f) = file {
        return Ok(dir.join(f));
    }
    let candidates = [dir.join("model.onnx"), dir.join("onnx").join("model.onnx")];
    Ok(candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| candidates[0].clone()))
}

/// A JSON integer or list of integers (HF `eos_token_id` may be either).
pub(crate) fn u32_list(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}
