//! GGUF files (llama.cpp's model format): a bounded reader of the header, the metadata and the
//! tensor index over a memory map, the model config and tokenizer in the metadata, and the weights
//! served under Hugging Face names.
//!
//! Every length in the header (strings, arrays, tensor counts, dimensions, data ranges) is checked
//! against the bytes left in the file before anything is allocated, so a truncated or corrupt file
//! fails with an error naming the file and the key or tensor, never with a panic or an allocation
//! abort.
//!
//! Reference for the layout: llama.cpp `ggml/include/gguf.h` and `gguf-py/gguf/gguf_reader.py`;
//! for the mapping to Hugging Face tensors (names and the q/k row permutation): transformers
//! `integrations/ggml.py` and `modeling_gguf_pytorch_utils.py` (`TensorProcessor`,
//! `LlamaConverter`'s `_reverse_permute_weights`), which is the ground truth trust is tested
//! against.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor, ggml_file::qtensor_from_ggml};
use candle_core::{DType, Device, Shape, Tensor};
use memmap2::Mmap;

use super::config::{Activation, Architecture, ModelConfig, RopeConfig, RopeScaling};
use crate::BackendError;

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `UINT8`.
    U8(u8),
    /// `INT8`.
    I8(i8),
    /// `UINT16`.
    U16(u16),
    /// `INT16`.
    I16(i16),
    /// `UINT32`.
    U32(u32),
    /// `INT32`.
    I32(i32),
    /// `FLOAT32`.
    F32(f32),
    /// `BOOL`.
    Bool(bool),
    /// `STRING` (UTF-8; invalid sequences replaced).
    String(String),
    /// `ARRAY`.
    Array(Vec<Value>),
    /// `UINT64`.
    U64(u64),
    /// `INT64`.
    I64(i64),
    /// `FLOAT64`.
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// The value as a float (any numeric type).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self
                .as_u64()
                .map(|v| v as f64)
                .or_else(|| self.as_i64().map(|v| v as f64)),
        }
    }
    fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v as i64),
            Value::I16(v) => Some(v as i64),
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }
    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor index.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Shape in row-major order (`[rows, cols]` for a matrix: GGUF's `ne` reversed).
    pub shape: Vec<usize>,
    /// Storage type.
    pub dtype: GgmlDType,
    /// Byte range in the file.
    pub start: usize,
    /// End of the byte range (exclusive).
    pub end: usize,
}

/// A memory-mapped GGUF file: metadata and tensor index, validated on open.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    metadata: BTreeMap<String, Value>,
    tensors: HashMap<String, TensorInfo>,
    order: Vec<String>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// The GGML type ids of GGUF (`ggml_type` in ggml.h) that candle can hold.
fn ggml_type(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// Names of ggml types candle cannot hold, for error messages.
fn ggml_type_name(id: u32) -> String {
    let known = [
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
    ];
    known
        .iter()
        .find(|(k, _)| *k == id)
        .map(|(_, n)| format!("{n} (ggml type {id})"))
        .unwrap_or_else(|| format!("unknown ggml type {id}"))
}

struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    /// `what` names the header part, metadata key or tensor being read.
    fn err(&self, what: &str, message: impl std::fmt::Display) -> BackendError {
        BackendError::Config {
            path: self.path.to_path_buf(),
            message: format!("{what}: {message} (at byte {})", self.at),
        }
    }
    fn left(&self) -> usize {
        self.data.len() - self.at
    }
    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], BackendError> {
        if n > self.left() {
            return Err(self.err(
                what,
                format!("truncated file: needs {n} more bytes, {} left", self.left()),
            ));
        }
        let s = &self.data[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32, BackendError> {
        Ok(u32::from_le_bytes(self.bytes(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64, BackendError> {
        Ok(u64::from_le_bytes(self.bytes(8, what)?.try_into().unwrap()))
    }
    /// A length that must fit in the rest of the file at `min_each` bytes per item.
    fn count(&mut self, min_each: usize, what: &str) -> Result<usize, BackendError> {
        let n = self.u64(what)?;
        let fits = usize::try_from(n)
            .ok()
            .filter(|&n| n.checked_mul(min_each).is_some_and(|b| b <= self.left()));
        fits.ok_or_else(|| {
            self.err(
                what,
                format!(
                    "length {n} cannot fit in the {} bytes left in the file (truncated or corrupt file)",
                    self.left()
                ),
            )
        })
    }
    fn string(&mut self, what: &str) -> Result<String, BackendError> {
        let n = self.count(1, what)?;
        let b = self.bytes(n, what)?;
        Ok(String::from_utf8_lossy(b).into_owned())
    }
    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value, BackendError> {
        Ok(match ty {
            0 => Value::U8(self.bytes(1, what)?[0]),
            1 => Value::I8(self.bytes(1, what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.bytes(2, what)?.try_into().unwrap())),
            3 => Value::I16(i16::from_le_bytes(self.bytes(2, what)?.try_into().unwrap())),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => match self.bytes(1, what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(what, format!("invalid bool byte {b}"))),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 2 {
                    return Err(self.err(what, "arrays nested too deeply"));
                }
                let elem = self.u32(what)?;
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(self.err(what, format!("unknown array element type {t}"))),
                };
                let n = self.count(min, what)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, what, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            t => return Err(self.err(what, format!("unknown metadata value type {t}"))),
        })
    }
}

impl GgufFile {
    /// Maps and validates `path` (header, metadata, tensor index, data ranges).
    pub fn open(path: &Path) -> Result<Self, BackendError> {
        let io = |source| BackendError::Io {
            path: path.to_path_buf(),
            source,
        };
        let f = std::fs::File::open(path).map_err(io)?;
        if f.metadata().map_err(io)?.is_dir() {
            return Err(BackendError::Config {
                path: path.to_path_buf(),
                message: "is a directory, not a GGUF file".into(),
            });
        }
        // SAFETY: read-only map; modifying the file while it is mapped is undefined behaviour, as
        // for every mmap-based loader (documented in the crate README).
        let mmap = unsafe { Mmap::map(&f) }.map_err(io)?;
        let (version, metadata, tensors, order) = Self::parse(&mmap, path)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            version,
            metadata,
            tensors,
            order,
        })
    }

    #[allow(clippy::type_complexity)]
    fn parse(
        data: &[u8],
        path: &Path,
    ) -> Result<
        (
            u32,
            BTreeMap<String, Value>,
            HashMap<String, TensorInfo>,
            Vec<String>,
        ),
        BackendError,
    > {
        let mut c = Cursor { data, at: 0, path };
        let magic = c.bytes(4, "header")?;
        if magic != b"GGUF" {
            return Err(c.err(
                "header",
                format!("bad magic {magic:02x?} (expected \"GGUF\"): not a GGUF file"),
            ));
        }
        let version = c.u32("header")?;
        if !(2..=3).contains(&version) {
            return Err(c.err(
                "header",
                format!("unsupported GGUF version {version} (supported: 2, 3)"),
            ));
        }
        // A tensor-index entry is at least 8 (name length) + 4 + 8 + 4 + 8 bytes; a metadata entry
        // at least 8 + 4 + 1.
        let n_tensors = {
            let n = c.u64("header")?;
            usize::try_from(n)
                .ok()
                .filter(|&n| n.checked_mul(32).is_some_and(|b| b <= c.left()))
                .ok_or_else(|| {
                    c.err("header", format!("tensor count {n} cannot fit in the file"))
                })?
        };
        let n_kv = c.count(13, "header")?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let what = format!("metadata `{key}`");
            let ty = c.u32(&what)?;
            let v = c.value(ty, &what, 0)?;
            metadata.insert(key, v);
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
                _ => {
                    return Err(c.err(
                        "general.alignment",
                        format!("must be a power of two, got {v:?}"),
                    ));
                }
            },
        };
        let mut raw = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor #{i}"))?;
            let what = format!("tensor `{name}`");
            let nd = c.u32(&what)? as usize;
            if nd == 0 || nd > 4 {
                return Err(c.err(&what, format!("{nd} dimensions (GGML allows 1 to 4)")));
            }
            let mut ne = Vec::with_capacity(nd);
            for _ in 0..nd {
                let d = c.u64(&what)?;
                ne.push(usize::try_from(d).map_err(|_| c.err(&what, format!("dimension {d}")))?);
            }
            let ty = c.u32(&what)?;
            let offset = c.u64(&what)?;
            raw.push((name, ne, ty, offset));
        }
        let data_start = c.at.div_ceil(alignment) * alignment;
        let mut tensors = HashMap::with_capacity(raw.len());
        let mut order = Vec::with_capacity(raw.len());
        for (name, ne, ty, offset) in raw {
            let terr = |message: String| BackendError::Tensor {
                path: path.to_path_buf(),
                tensor: name.clone(),
                message,
            };
            let dtype = ggml_type(ty).ok_or_else(|| {
                terr(format!(
                    "unsupported tensor type {} (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K)",
                    ggml_type_name(ty)
                ))
            })?;
            let elems = ne
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| terr(format!("shape {ne:?} overflows")))?;
            let block = dtype.block_size();
            if ne[0] % block != 0 {
                return Err(terr(format!(
                    "row length {} is not a multiple of the {dtype:?} block size {block}",
                    ne[0]
                )));
            }
            let bytes = (elems / block)
                .checked_mul(dtype.type_size())
                .ok_or_else(|| terr(format!("shape {ne:?} overflows")))?;
            let start = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(data_start))
                .ok_or_else(|| terr(format!("data offset {offset} overflows")))?;
            let end = start
                .checked_add(bytes)
                .filter(|&e| e <= data.len())
                .ok_or_else(|| {
                    terr(format!(
                        "data [{start}, {start} + {bytes}) lies beyond the end of the file ({} bytes): truncated file?",
                        data.len()
                    ))
                })?;
            if start % alignment != 0 {
                return Err(terr(format!(
                    "data offset {offset} is not aligned to {alignment} bytes"
                )));
            }
            let mut shape = ne;
            shape.reverse();
            order.push(name.clone());
            if tensors
                .insert(
                    name.clone(),
                    TensorInfo {
                        shape,
                        dtype,
                        start,
                        end,
                    },
                )
                .is_some()
            {
                return Err(terr("appears twice in the tensor index".into()));
            }
        }
        Ok((version, metadata, tensors, order))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Tensor names in file order.
    pub fn tensor_names(&self) -> &[String] {
        &self.order
    }

    /// One tensor's index entry.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    fn key_err(&self, key: &str, message: impl std::fmt::Display) -> BackendError {
        BackendError::Config {
            path: self.path.clone(),
            message: format!("metadata `{key}`: {message}"),
        }
    }

    fn req_u64(&self, key: &str) -> Result<u64, BackendError> {
        let v = self.get(key).ok_or_else(|| self.key_err(key, "missing"))?;
        v.as_u64()
            .ok_or_else(|| self.key_err(key, format!("must be a non-negative integer, got {v:?}")))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, BackendError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.key_err(key, format!("must be a number, got {v:?}"))),
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str, BackendError> {
        let key = "general.architecture";
        self.get(key)
            .ok_or_else(|| self.key_err(key, "missing"))?
            .as_str()
            .ok_or_else(|| self.key_err(key, "must be a string"))
    }

    /// The model configuration in the metadata (`{arch}.block_count`, ...). Architectures:
    /// `llama` and `qwen2`; any other is refused naming `general.architecture`. Sizes are
    /// checked against the tensors in the file.
    pub fn model_config(&self) -> Result<ModelConfig, BackendError> {
        let name = self.architecture()?;
        let arch = match name {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(self.key_err(
                    "general.architecture",
                    format!("unsupported architecture `{other}` (supported: llama, qwen2)"),
                ));
            }
        };
        let k = |s: &str| format!("{name}.{s}");
        let as_usize = |key: &str| -> Result<usize, BackendError> {
            let v = self.req_u64(key)?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| self.key_err(key, format!("must be positive, got {v}")))
        };
        let hidden_size = as_usize(&k("embedding_length"))?;
        let num_hidden_layers = as_usize(&k("block_count"))?;
        let intermediate_size = as_usize(&k("feed_forward_length"))?;
        let num_attention_heads = as_usize(&k("attention.head_count"))?;
        let num_key_value_heads = match self.get(&k("attention.head_count_kv")) {
            None => num_attention_heads,
            Some(_) => as_usize(&k("attention.head_count_kv"))?,
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(self.key_err(
                &k("attention.head_count_kv"),
                format!(
                    "{num_key_value_heads} does not divide attention.head_count {num_attention_heads}"
                ),
            ));
        }
        let head_dim = match self.get(&k("attention.key_length")) {
            Some(_) => as_usize(&k("attention.key_length"))?,
            None => {
                if hidden_size % num_attention_heads != 0 {
                    return Err(self.key_err(
                        &k("embedding_length"),
                        format!(
                            "{hidden_size} is not divisible by attention.head_count {num_attention_heads}"
                        ),
                    ));
                }
                hidden_size / num_attention_heads
            }
        };
        let embd = self
            .tensor_info("token_embd.weight")
            .ok_or_else(|| BackendError::Tensor {
                path: self.path.clone(),
                tensor: "token_embd.weight".into(),
                message: "missing".into(),
            })?;
        let vocab_size = match self.get(&k("vocab_size")) {
            Some(_) => as_usize(&k("vocab_size"))?,
            None => embd.shape[0],
        };
        if embd.shape != [vocab_size, hidden_size] {
            return Err(BackendError::Tensor {
                path: self.path.clone(),
                tensor: "token_embd.weight".into(),
                message: format!(
                    "shape {:?} does not match vocab_size {vocab_size} x embedding_length {hidden_size}",
                    embd.shape
                ),
            });
        }
        // Every layer's tensors must be there: a block_count of 10^12 fails here, before any
        // allocation sized by it.
        for i in [0, num_hidden_layers - 1] {
            let t = format!("blk.{i}.attn_q.weight");
            if self.tensor_info(&t).is_none() {
                return Err(self.key_err(
                    &k("block_count"),
                    format!("{num_hidden_layers} layers, but tensor `{t}` is missing"),
                ));
            }
        }
        let context = as_usize(&k("context_length"))?;
        const MAX_CONTEXT: usize = 1 << 20;
        if context > MAX_CONTEXT {
            return Err(self.key_err(
                &k("context_length"),
                format!("{context} is beyond the supported {MAX_CONTEXT}"),
            ));
        }
        let norm_eps = self
            .opt_f64(&k("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-6);
        let theta = self.opt_f64(&k("rope.freq_base"))?.unwrap_or(10000.0);
        let rot = match self.get(&k("rope.dimension_count")) {
            Some(_) => as_usize(&k("rope.dimension_count"))?,
            None => head_dim,
        };
        if rot > head_dim {
            return Err(self.key_err(
                &k("rope.dimension_count"),
                format!("{rot} exceeds the head size {head_dim}"),
            ));
        }
        let scaling = match self.get(&k("rope.scaling.type")).and_then(Value::as_str) {
            None | Some("none") => RopeScaling::Default,
            Some("linear") => RopeScaling::Linear {
                factor: self
                    .opt_f64(&k("rope.scaling.factor"))?
                    .ok_or_else(|| self.key_err(&k("rope.scaling.factor"), "missing"))?,
            },
            Some(other) => {
                return Err(self.key_err(
                    &k("rope.scaling.type"),
                    format!("unsupported rope scaling `{other}` (supported: none, linear)"),
                ));
            }
        };
        if self.tensor_info("rope_freqs.weight").is_some() {
            return Err(BackendError::Tensor {
                path: self.path.clone(),
                tensor: "rope_freqs.weight".into(),
                message: "per-frequency rope factors (Llama 3 rope scaling) are not supported"
                    .into(),
            });
        }
        let has_bias = |t: &str| self.tensor_info(&format!("blk.0.{t}.bias")).is_some();
        let qkv_bias = arch == Architecture::Qwen2 || has_bias("attn_q");
        let o_bias = arch != Architecture::Qwen2 && has_bias("attn_output");
        let mlp_bias = arch != Architecture::Qwen2 && has_bias("ffn_up");
        let mut eos_token_ids = Vec::new();
        if let Some(v) = self.get("tokenizer.ggml.eos_token_id") {
            let id = v
                .as_u64()
                .ok_or_else(|| self.key_err("tokenizer.ggml.eos_token_id", "must be an integer"))?;
            eos_token_ids.push(id as u32);
        }
        let config = ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            intermediate_size,
            hidden_act: Activation::Silu,
            norm_eps,
            max_position_embeddings: context,
            tie_word_embeddings: self.tensor_info("output.weight").is_none(),
            rope: RopeConfig {
                theta,
                partial_rotary_factor: rot as f64 / head_dim as f64,
                scaling,
            },
            use_parallel_residual: false,
            qkv_bias,
            o_bias,
            mlp_bias,
            eos_token_ids,
            declared_dtype: Some(format!("gguf:{}", self.file_type_name())),
        };
        config.check_sizes().map_err(|m| BackendError::Config {
            path: self.path.clone(),
            message: m,
        })?;
        Ok(config)
    }

    /// `general.file_type` as llama.cpp names it (`Q4_1`, `F16`, ...).
    pub fn file_type_name(&self) -> String {
        let names = [
            (0, "F32"),
            (1, "F16"),
            (2, "Q4_0"),
            (3, "Q4_1"),
            (7, "Q8_0"),
            (8, "Q5_0"),
            (9, "Q5_1"),
            (10, "Q2_K"),
            (11, "Q3_K_S"),
            (12, "Q3_K_M"),
            (13, "Q3_K_L"),
            (14, "Q4_K_S"),
            (15, "Q4_K_M"),
            (16, "Q5_K_S"),
            (17, "Q5_K_M"),
            (18, "Q6_K"),
            (32, "BF16"),
        ];
        match self.get("general.file_type").and_then(Value::as_u64) {
            Some(t) => names
                .iter()
                .find(|(k, _)| *k == t)
                .map(|(_, n)| n.to_string())
                .unwrap_or_else(|| format!("file_type {t}")),
            None => "unknown".into(),
        }
    }

    /// The raw bytes of a tensor.
    pub fn tensor_bytes(&self, name: &str) -> Option<&[u8]> {
        self.tensors.get(name).map(|t| &self.mmap[t.start..t.end])
    }

    /// A tensor as a candle [`QTensor`] (its storage type kept), optionally with its rows
    /// reordered: row `r` of the result is row `rows[r]` of the stored tensor.
    pub fn qtensor(
        &self,
        name: &str,
        rows: Option<&[usize]>,
        device: &Device,
    ) -> Result<QTensor, BackendError> {
        let info = self.tensors.get(name).ok_or_else(|| BackendError::Tensor {
            path: self.path.clone(),
            tensor: name.into(),
            message: "missing".into(),
        })?;
        let data = &self.mmap[info.start..info.end];
        let terr = |message: String| BackendError::Tensor {
            path: self.path.clone(),
            tensor: name.into(),
            message,
        };
        let permuted;
        let bytes: &[u8] = match rows {
            None => data,
            Some(order) => {
                let n_rows = info.shape.first().copied().unwrap_or(1);
                if info.shape.len() > 2 || order.len() != n_rows {
                    return Err(terr(format!(
                        "cannot reorder {} rows of a tensor of shape {:?}",
                        order.len(),
                        info.shape
                    )));
                }
                let row = data.len() / n_rows.max(1);
                let mut v = Vec::with_capacity(data.len());
                for &r in order {
                    v.extend_from_slice(&data[r * row..(r + 1) * row]);
                }
                permuted = v;
                &permuted
            }
        };
        // qtensor_from_ggml reads the blocks straight out of the slice, so alignment matters for
        // the mapped case: tensor data offsets are multiples of general.alignment (checked on
        // open) from a page-aligned map; copy when they are not aligned enough anyway.
        let owned;
        let bytes = if (bytes.as_ptr() as usize) % 8 != 0 {
            owned = bytes.to_vec();
            &owned[..]
        } else {
            bytes
        };
        qtensor_from_ggml(info.dtype, bytes, info.shape.clone(), device)
            .map_err(|e| terr(e.to_string()))
    }
}

/// The GGUF name of a Hugging Face tensor of the Llama family (transformers
/// `GGUF_TENSOR_MAPPING` / llama.cpp `tensor_mapping.py`), e.g. `model.layers.3.self_attn.q_proj.weight`
/// → `blk.3.attn_q.weight`.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// The row order that undoes llama.cpp's q/k permutation (`convert_hf_to_gguf.py`
/// `LlamaModel.permute`; undone by transformers' `_reverse_permute_weights`): a stored tensor of
/// `n_head` heads of `2 * d` rows holds HF row `h*2d + a*d + j` at row `h*2d + 2j + a`.
pub(crate) fn unpermute_rows(n_rows: usize, n_head: usize) -> Option<Vec<usize>> {
    if n_head == 0 || n_rows % (2 * n_head) != 0 {
        return None;
    }
    let d = n_rows / n_head / 2;
    let mut order = Vec::with_capacity(n_rows);
    for h in 0..n_head {
        for a in 0..2 {
            for j in 0..d {
                order.push(h * 2 * d + 2 * j + a);
            }
        }
    }
    Some(order)
}

/// A GGUF model's weights served to the model builders under Hugging Face names, dequantised to
/// the requested dtype (or, through [`GgufWeights::quantized`], kept in their storage type).
#[derive(Debug)]
pub struct GgufWeights {
    file: Arc<GgufFile>,
    config: ModelConfig,
    first_error: super::loader::FirstError,
}

impl GgufWeights {
    /// Weights of `file` for the model `config` (from [`GgufFile::model_config`]).
    pub fn new(file: Arc<GgufFile>, config: ModelConfig) -> Self {
        GgufWeights {
            file,
            config,
            first_error: Default::default(),
        }
    }

    /// The file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    fn record(&self, e: BackendError) -> candle_core::Error {
        self.first_error.record(e)
    }

    /// The first structured error recorded while building a model, if any.
    pub fn take_error(&self) -> Option<BackendError> {
        self.first_error.take()
    }

    /// The rows reorder for an HF tensor (q/k of llama checkpoints), if any.
    fn rows_for(&self, hf: &str, shape: &[usize]) -> Result<Option<Vec<usize>>, BackendError> {
        if self.config.arch != Architecture::Llama {
            return Ok(None);
        }
        let heads = if hf.ends_with("self_attn.q_proj.weight")
            || hf.ends_with("self_attn.q_proj.bias")
        {
            self.config.num_attention_heads
        } else if hf.ends_with("self_attn.k_proj.weight") || hf.ends_with("self_attn.k_proj.bias") {
            self.config.num_key_value_heads
        } else {
            return Ok(None);
        };
        let n_rows = shape.first().copied().unwrap_or(0);
        unpermute_rows(n_rows, heads)
            .map(Some)
            .ok_or_else(|| BackendError::Tensor {
                path: self.file.path.clone(),
                tensor: gguf_name(hf).unwrap_or_default(),
                message: format!("{n_rows} rows cannot be split into {heads} rope heads"),
            })
    }

    /// The stored tensor for HF name `hf`, rows in HF order, storage type kept. `expect` checks
    /// the shape.
    pub fn quantized(
        &self,
        hf: &str,
        expect: Option<&[usize]>,
        device: &Device,
    ) -> Result<QTensor, BackendError> {
        let name = gguf_name(hf).ok_or_else(|| BackendError::Tensor {
            path: self.file.path.clone(),
            tensor: hf.into(),
            message: "no GGUF counterpart for this tensor".into(),
        })?;
        let info = self
            .file
            .tensor_info(&name)
            .ok_or_else(|| BackendError::Tensor {
                path: self.file.path.clone(),
                tensor: name.clone(),
                message: format!("missing (needed for {hf})"),
            })?;
        if let Some(s) = expect {
            if s != info.shape.as_slice() {
                return Err(BackendError::Tensor {
                    path: self.file.path.clone(),
                    tensor: name,
                    message: format!("expected shape {s:?}, found {:?}", info.shape),
                });
            }
        }
        let rows = self.rows_for(hf, &info.shape)?;
        self.file.qtensor(&name, rows.as_deref(), device)
    }

    /// Whether the file holds the HF tensor `hf`.
    pub fn contains(&self, hf: &str) -> bool {
        gguf_name(hf).is_some_and(|g| self.file.tensor_info(&g).is_some())
    }

    /// Every weight of the model, dequantised to f32 on `device`, under HF names.
    pub fn all_f32(&self, device: &Device) -> Result<HashMap<String, Tensor>, BackendError> {
        let mut out = HashMap::new();
        for g in self.file.tensor_names() {
            let Some(hf) = hf_name(g) else { continue };
            let t = super::loader::WeightSource::load_tensor(self, &hf, None, DType::F32, device)
                .map_err(|e| {
                self.take_error()
                    .unwrap_or(BackendError::Runtime(e.to_string()))
            })?;
            out.insert(hf, t);
        }
        Ok(out)
    }
}

impl super::layers::QuantSource for GgufWeights {
    fn get(&self, name: &str, shape: &[usize]) -> Option<candle_core::Result<QTensor>> {
        if !self.contains(name) {
            return None;
        }
        Some(
            self.quantized(name, Some(shape), &Device::Cpu)
                .map_err(|e| self.record(e)),
        )
    }
}

/// The inverse of [`gguf_name`].
pub fn hf_name(g: &str) -> Option<String> {
    let fixed = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
    ];
    if let Some((_, h)) = fixed.iter().find(|(k, _)| *k == g) {
        return Some(h.to_string());
    }
    let rest = g.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let h = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{h}.{kind}"))
}

impl super::loader::WeightSource for GgufWeights {
    fn load_tensor(
        &self,
        hf: &str,
        expect: Option<&Shape>,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let q = self
            .quantized(hf, expect.map(|s| s.dims()), &Device::Cpu)
            .map_err(|e| self.record(e))?;
        q.dequantize(&Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .and_then(|t| t.to_device(dev))
            .map_err(|e| {
                self.record(BackendError::Tensor {
                    path: self.file.path.clone(),
                    tensor: gguf_name(hf).unwrap_or_default(),
                    message: e.to_string(),
                })
            })
    }
    fn has_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

/// The backend over [`GgufWeights`].
pub type GgufBackend = super::loader::SourceBackend<GgufWeights>;

/// Finds the GGUF file a model path names: the path itself when it is a file ending in `.gguf`,
/// or the single `.gguf` file in a directory without `config.json`. `Ok(None)` when the path is a
/// Hugging Face directory (has `config.json`) or names no GGUF.
pub fn find_gguf(path: &Path) -> Result<Option<PathBuf>, BackendError> {
    if path.is_file() {
        let is_gguf = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        return Ok(is_gguf.then(|| path.to_path_buf()));
    }
    if !path.is_dir() || path.join("config.json").exists() {
        return Ok(None);
    }
    let entries = std::fs::read_dir(path).map_err(|source| BackendError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        })
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(BackendError::Config {
            path: path.to_path_buf(),
            message: format!(
                "{} GGUF files in the directory ({}); name one",
                found.len(),
                found
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, d, ...).swapaxes(1, 2).reshape(...), i.e. stored row
        // h*2d + 2j + a holds HF row h*2d + a*d + j.
        let (n_head, d) = (3, 4);
        let n = n_head * 2 * d;
        let mut stored = vec![0usize; n];
        for h in 0..n_head {
            for a in 0..2 {
                for j in 0..d {
                    stored[h * 2 * d + 2 * j + a] = h * 2 * d + a * d + j;
                }
            }
        }
        let order = unpermute_rows(n, n_head).unwrap();
        let hf: Vec<usize> = order.iter().map(|&r| stored[r]).collect();
        assert_eq!(hf, (0..n).collect::<Vec<_>>());
        assert!(unpermute_rows(10, 3).is_none());
    }

    #[test]
    fn names_round_trip() {
        for g in [
            "token_embd.weight",
            "output.weight",
            "output_norm.weight",
            "blk.12.attn_q.weight",
            "blk.3.attn_k.bias",
            "blk.0.ffn_down.weight",
            "blk.29.ffn_norm.weight",
        ] {
            let h = hf_name(g).unwrap();
            assert_eq!(gguf_name(&h).as_deref(), Some(g), "{h}");
        }
        assert!(hf_name("rope_freqs.weight").is_none());
    }
}
