//! Loading weights and tokenizers from a local Hugging Face model directory.
//!
//! Weights come from `model.safetensors` or from the shards listed in
//! `model.safetensors.index.json`; files are memory-mapped, every header is validated up front
//! (a truncated file fails here, naming the file), and tensors are served to the model builders
//! through a [`candle_nn::var_builder::SimpleBackend`] that records precise errors (file, tensor,
//! expected vs found shape) instead of panicking.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use memmap2::Mmap;

use crate::BackendError;

#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    /// `Err(name)` for dtypes candle cannot hold (e.g. the BOOL `attention.bias` buffers of Pythia
    /// checkpoints): an error only if the tensor is actually requested.
    dtype: Result<DType, String>,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// Memory-mapped safetensors files and the index of their tensors.
#[derive(Debug)]
pub struct SafetensorsStore {
    files: Vec<PathBuf>,
    mmaps: Vec<Mmap>,
    tensors: HashMap<String, Entry>,
    /// The file named in "missing tensor" errors (the single file or the index).
    missing_path: PathBuf,
    first_error: FirstError,
}

/// The first structured error recorded while a model is built through a
/// [`candle_nn::var_builder::SimpleBackend`] (which can only return candle's string errors).
#[derive(Debug, Default)]
pub(crate) struct FirstError(Mutex<Option<BackendError>>);

impl FirstError {
    /// Keeps `e` if it is the first, and returns it as a candle error.
    pub(crate) fn record(&self, e: BackendError) -> candle_core::Error {
        let msg = e.to_string();
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        candle_core::Error::Msg(msg)
    }

    /// The recorded error, if any.
    pub(crate) fn take(&self) -> Option<BackendError> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

fn st_dtype(d: safetensors::Dtype) -> Option<DType> {
    Some(match d {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        safetensors::Dtype::F64 => DType::F64,
        safetensors::Dtype::U8 => DType::U8,
        safetensors::Dtype::U32 => DType::U32,
        safetensors::Dtype::I64 => DType::I64,
        _ => return None,
    })
}

impl SafetensorsStore {
    /// Finds and maps the weight files of `dir`.
    pub fn open_dir(dir: &Path) -> Result<Self, BackendError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.exists() {
            Self::open(vec![single.clone()], single)
        } else if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|source| BackendError::Io {
                path: index.clone(),
                source,
            })?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| BackendError::Config {
                    path: index.clone(),
                    message: format!("invalid JSON: {e}"),
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| BackendError::Config {
                    path: index.clone(),
                    message: "missing `weight_map` object".into(),
                })?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            files.sort();
            files.dedup();
            // Shards live in the model directory: no absolute paths, no `..`, no subfolders
            // reached through the root (a crafted index must not read files elsewhere).
            if let Some(bad) = files.iter().find(|f| {
                let p = Path::new(f.as_str());
                f.is_empty()
                    || !p
                        .components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)))
            }) {
                return Err(BackendError::Config {
                    path: index,
                    message: format!(
                        "`weight_map` names {bad:?}: shard files must be relative paths inside \
                         the model directory (no `..`, no absolute paths)"
                    ),
                });
            }
            if files.is_empty() {
                return Err(BackendError::Config {
                    path: index,
                    message: "empty `weight_map`".into(),
                });
            }
            Self::open(files.iter().map(|f| dir.join(f)).collect(), index)
        } else {
            Err(BackendError::Io {
                path: single,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json in the model directory",
                ),
            })
        }
    }

    /// Maps the given files; `missing_path` is named when a requested tensor is absent.
    pub fn open(files: Vec<PathBuf>, missing_path: PathBuf) -> Result<Self, BackendError> {
        let mut mmaps = Vec::with_capacity(files.len());
        let mut tensors = HashMap::new();
        for (fi, path) in files.iter().enumerate() {
            if path.is_dir() {
                return Err(BackendError::Config {
                    path: path.clone(),
                    message: "is a directory; expected a safetensors file".into(),
                });
            }
            let f = std::fs::File::open(path).map_err(|source| BackendError::Io {
                path: path.clone(),
                source,
            })?;
            // SAFETY: the file is opened read-only; as with every mmap-based loader, modifying the
            // file while it is mapped is undefined behaviour, which we document and accept.
            let mmap = unsafe { Mmap::map(&f) }.map_err(|source| BackendError::Io {
                path: path.clone(),
                source,
            })?;
            let st =
                safetensors::SafeTensors::deserialize(&mmap).map_err(|e| BackendError::Tensor {
                    path: path.clone(),
                    tensor: "<header>".into(),
                    message: format!("invalid or truncated safetensors file: {e}"),
                })?;
            let base = mmap.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let dtype = st_dtype(view.dtype()).ok_or_else(|| format!("{:?}", view.dtype()));
                let start = view.data().as_ptr() as usize - base;
                let end = start + view.data().len();
                tensors.insert(
                    name,
                    Entry {
                        file: fi,
                        dtype,
                        shape: view.shape().to_vec(),
                        start,
                        end,
                    },
                );
            }
            mmaps.push(mmap);
        }
        Ok(SafetensorsStore {
            files,
            mmaps,
            tensors,
            missing_path,
            first_error: FirstError::default(),
        })
    }

    /// The weight files, in the order they are hashed.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Names of all stored tensors.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Shape of a stored tensor.
    pub fn shape_of(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.shape.as_slice())
    }

    fn record(&self, e: BackendError) -> candle_core::Error {
        self.first_error.record(e)
    }

    /// The first structured error recorded while building a model, if any.
    pub fn take_error(&self) -> Option<BackendError> {
        self.first_error.take()
    }

    /// Streamed sha256 over the weight files (concatenated in [`Self::files`] order); for a single
    /// file it equals `sha256sum model.safetensors`.
    pub fn sha256(&self) -> Result<String, BackendError> {
        sha256_files(&self.files)
    }
}

/// The index of the first NaN or infinite element of little-endian float data (all exponent
/// bits set), `None` for finite data and non-float dtypes.
pub(crate) fn first_non_finite(data: &[u8], dtype: DType) -> Option<usize> {
    fn scan<const N: usize>(data: &[u8], mask: u64) -> Option<usize> {
        data.chunks_exact(N).position(|c| {
            let mut b = [0u8; 8];
            b[..N].copy_from_slice(c);
            u64::from_le_bytes(b) & mask == mask
        })
    }
    match dtype {
        DType::F32 => scan::<4>(data, 0x7f80_0000),
        DType::F16 => scan::<2>(data, 0x7c00),
        DType::BF16 => scan::<2>(data, 0x7f80),
        DType::F64 => scan::<8>(data, 0x7ff0_0000_0000_0000),
        _ => None,
    }
}

/// A store of named weights that model builders read through a [`candle_nn::VarBuilder`]
/// ([`SafetensorsStore`], [`super::gguf::GgufWeights`]).
pub trait WeightSource: Send + Sync + std::fmt::Debug + 'static {
    /// The tensor `name` (checked against `expect` when given) as `dtype` on `dev`; failures are
    /// recorded so the loader can report them with file and tensor.
    fn load_tensor(
        &self,
        name: &str,
        expect: Option<&Shape>,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor>;
    /// Whether the store holds `name`.
    fn has_tensor(&self, name: &str) -> bool;
}

impl WeightSource for SafetensorsStore {
    fn load_tensor(
        &self,
        name: &str,
        expect: Option<&Shape>,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let Some(e) = self.tensors.get(name) else {
            return Err(self.record(BackendError::Tensor {
                path: self.missing_path.clone(),
                tensor: name.into(),
                message: "missing".into(),
            }));
        };
        if let Some(s) = expect {
            if s.dims() != e.shape.as_slice() {
                return Err(self.record(BackendError::Tensor {
                    path: self.files[e.file].clone(),
                    tensor: name.into(),
                    message: format!("expected shape {:?}, found {:?}", s.dims(), e.shape),
                }));
            }
        }
        let stored = match &e.dtype {
            Ok(d) => *d,
            Err(dtype_name) => {
                return Err(self.record(BackendError::Tensor {
                    path: self.files[e.file].clone(),
                    tensor: name.into(),
                    message: format!("unsupported dtype {dtype_name}"),
                }));
            }
        };
        let data = &self.mmaps[e.file][e.start..e.end];
        if let Some(at) = first_non_finite(data, stored) {
            return Err(self.record(BackendError::Tensor {
                path: self.files[e.file].clone(),
                tensor: name.into(),
                message: format!(
                    "element {at} is NaN or infinite: the file is corrupt or the training that \
                     wrote it diverged; refusing to load it"
                ),
            }));
        }
        let t = Tensor::from_raw_buffer(data, stored, &e.shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .and_then(|t| t.to_device(dev));
        t.map_err(|err| {
            self.record(BackendError::Tensor {
                path: self.files[e.file].clone(),
                tensor: name.into(),
                message: err.to_string(),
            })
        })
    }
    fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// A [`candle_nn::var_builder::SimpleBackend`] over a shared [`WeightSource`].
#[derive(Debug)]
pub struct SourceBackend<S>(pub Arc<S>);

impl<S> Clone for SourceBackend<S> {
    fn clone(&self) -> Self {
        SourceBackend(self.0.clone())
    }
}

impl<S: WeightSource> candle_nn::var_builder::SimpleBackend for SourceBackend<S> {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.load_tensor(name, Some(&s), dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.load_tensor(name, None, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.has_tensor(name)
    }
}

/// The backend over a [`SafetensorsStore`].
pub type StoreBackend = SourceBackend<SafetensorsStore>;

/// What a model path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFormat {
    /// A Hugging Face directory (`config.json`, `tokenizer.json`, safetensors).
    HfDir(PathBuf),
    /// A GGUF file.
    Gguf(PathBuf),
}

impl ModelFormat {
    /// Resolves a model path: a `.gguf` file, a directory holding exactly one `.gguf` and no
    /// `config.json`, or a Hugging Face directory. A path that does not exist is an error naming
    /// it (not a missing `config.json`).
    pub fn resolve(path: &Path) -> Result<Self, BackendError> {
        if !path.exists() {
            return Err(BackendError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such model file or directory",
                ),
            });
        }
        if let Some(g) = super::gguf::find_gguf(path)? {
            return Ok(ModelFormat::Gguf(g));
        }
        if path.is_file() {
            return Err(BackendError::Config {
                path: path.to_path_buf(),
                message: "a model path must be a directory (Hugging Face layout) or a .gguf file"
                    .into(),
            });
        }
        Ok(ModelFormat::HfDir(path.to_path_buf()))
    }

    /// The weight files, in hashing order.
    pub fn weight_files(&self) -> Result<Vec<PathBuf>, BackendError> {
        match self {
            ModelFormat::Gguf(f) => Ok(vec![f.clone()]),
            ModelFormat::HfDir(d) => Ok(SafetensorsStore::open_dir(d)?.files().to_vec()),
        }
    }
}

/// Loads the tokenizer of a model path: `dir/tokenizer.json`, or the one in a GGUF file's
/// metadata (see [`super::gguf_tokenizer`]); checks that every token id fits the embedding.
pub fn load_tokenizer(
    dir: &Path,
    vocab_size: usize,
) -> Result<tokenizers::Tokenizer, BackendError> {
    if let ModelFormat::Gguf(file) = ModelFormat::resolve(dir)? {
        let g = super::gguf::GgufFile::open(&file)?;
        let tok = super::gguf_tokenizer::tokenizer(&g)?;
        check_tokenizer_fits(&tok, vocab_size, &file)?;
        return Ok(tok);
    }
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        return Err(BackendError::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
        });
    }
    let tok = crate::tokenizer_file::tokenizer_from_file(&path)?;
    check_tokenizer_fits(&tok, vocab_size, &path)?;
    Ok(tok)
}

/// Fails when `tok` has more ids than the embedding has rows.
pub(crate) fn check_tokenizer_fits(
    tok: &tokenizers::Tokenizer,
    vocab_size: usize,
    path: &Path,
) -> Result<(), BackendError> {
    let max_id = tok
        .get_vocab(true)
        .values()
        .copied()
        .max()
        .map(|m| m as usize + 1)
        .unwrap_or(0);
    let n = tok.get_vocab_size(true).max(max_id);
    if n > vocab_size {
        return Err(BackendError::Tokenizer {
            path: path.to_path_buf(),
            message: format!(
                "the tokenizer has {n} token ids but the model's embedding has only {vocab_size} rows (vocab_size)"
            ),
        });
    }
    Ok(())
}

/// The chat template of a Hugging Face directory: `chat_template.jinja`, else `chat_template`
/// in `tokenizer_config.json` (a string, or a list of `{name, template}` whose `default` is
/// taken). For a GGUF path, the one in its metadata. `Ok(None)` when there is none.
pub fn load_chat_template(dir: &Path) -> Result<Option<super::ChatTemplate>, BackendError> {
    if let ModelFormat::Gguf(file) = ModelFormat::resolve(dir)? {
        let g = super::gguf::GgufFile::open(&file)?;
        let special = super::gguf_tokenizer::special_tokens(&g)?;
        return super::gguf_tokenizer::chat_template(&g)
            .map(|t| super::ChatTemplate::new(t, &special, &file))
            .transpose();
    }
    let cfg_path = dir.join("tokenizer_config.json");
    let cfg: Option<serde_json::Value> = match std::fs::read_to_string(&cfg_path) {
        Ok(text) => Some(
            serde_json::from_str(&text).map_err(|e| BackendError::Config {
                path: cfg_path.clone(),
                message: format!("invalid JSON: {e}"),
            })?,
        ),
        Err(_) => None,
    };
    let token = |key: &str| -> Option<String> {
        let v = cfg.as_ref()?.get(key)?;
        v.as_str().map(str::to_string).or_else(|| {
            v.get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string)
        })
    };
    let special = super::gguf_tokenizer::SpecialTokens {
        bos: token("bos_token").map(|t| (0, t)),
        eos: token("eos_token").map(|t| (0, t)),
        unk: token("unk_token").map(|t| (0, t)),
        pad: token("pad_token").map(|t| (0, t)),
        add_bos: false,
    };
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        let text = std::fs::read_to_string(&jinja).map_err(|source| BackendError::Io {
            path: jinja.clone(),
            source,
        })?;
        return super::ChatTemplate::new(text, &special, &jinja).map(Some);
    }
    let template = match cfg.as_ref().and_then(|c| c.get("chat_template")) {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(list)) => {
            let found = list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"));
            match found
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
            {
                Some(t) => t.to_string(),
                None => return Ok(None),
            }
        }
        Some(v) => {
            return Err(BackendError::Config {
                path: cfg_path,
                message: format!("`chat_template` must be a string or a list, got {v}"),
            });
        }
    };
    super::ChatTemplate::new(template, &special, &cfg_path).map(Some)
}

pub use crate::sha256_files;

/// Writes the files that make `out` a Hugging Face model directory next to its
/// `model.safetensors`, for a model trained from `model` (a directory or a GGUF file): a
/// directory's `config.json`, `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`
/// and `chat_template.jinja` are copied; for a GGUF they are written from its metadata
/// ([`super::ModelConfig::to_hf_json`], the tokenizer built from `tokenizer.ggml.*`, the chat template
/// and special tokens), so transformers loads the result.
pub fn write_hf_companions(model: &Path, out: &Path) -> Result<(), BackendError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BackendError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    match ModelFormat::resolve(model)? {
        ModelFormat::HfDir(dir) => {
            for f in [
                "config.json",
                "tokenizer.json",
                "tokenizer_config.json",
                "generation_config.json",
                "chat_template.jinja",
            ] {
                let src = dir.join(f);
                if src.exists() {
                    std::fs::copy(&src, out.join(f)).map_err(io(&src))?;
                }
            }
        }
        ModelFormat::Gguf(file) => {
            let g = super::gguf::GgufFile::open(&file)?;
            let cfg = g.model_config()?;
            let json = cfg.to_hf_json().ok_or_else(|| BackendError::Config {
                path: file.clone(),
                message: "this model's settings have no transformers config.json equivalent".into(),
            })?;
            let special = super::gguf_tokenizer::special_tokens(&g)?;
            let mut config = json;
            if let Some((id, _)) = &special.bos {
                config["bos_token_id"] = (*id).into();
            }
            if let Some((id, _)) = &special.pad {
                config["pad_token_id"] = (*id).into();
            }
            let write = |name: &str, v: &serde_json::Value| -> Result<(), BackendError> {
                let p = out.join(name);
                let text = serde_json::to_string_pretty(v).expect("json");
                trust_core::fsutil::write_atomic(&p, text + "\n").map_err(io(&p))
            };
            write("config.json", &config)?;
            let mut gen_cfg = serde_json::json!({});
            if let Some(e) = config.get("eos_token_id") {
                gen_cfg["eos_token_id"] = e.clone();
            }
            if let Some((id, _)) = &special.bos {
                gen_cfg["bos_token_id"] = (*id).into();
            }
            write("generation_config.json", &gen_cfg)?;
            let tok = super::gguf_tokenizer::tokenizer(&g)?;
            let tok_path = out.join("tokenizer.json");
            tok.save(&tok_path, false)
                .map_err(|e| BackendError::Tokenizer {
                    path: tok_path.clone(),
                    message: e.to_string(),
                })?;
            let mut tc = serde_json::json!({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "add_bos_token": special.add_bos,
                "clean_up_tokenization_spaces": false,
            });
            for (key, t) in [
                ("bos_token", &special.bos),
                ("eos_token", &special.eos),
                ("unk_token", &special.unk),
                ("pad_token", &special.pad),
            ] {
                if let Some((_, text)) = t {
                    tc[key] = text.clone().into();
                }
            }
            if let Some(t) = super::gguf_tokenizer::chat_template(&g) {
                tc["chat_template"] = t.into();
            }
            write("tokenizer_config.json", &tc)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_floats_are_found_in_every_float_dtype() {
        let f32s: Vec<u8> = [1.0f32, -2.5, f32::NAN]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(first_non_finite(&f32s, DType::F32), Some(2));
        assert_eq!(first_non_finite(&f32s[..8], DType::F32), None);
        let inf: Vec<u8> = [0.0f64, f64::NEG_INFINITY]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(first_non_finite(&inf, DType::F64), Some(1));
        let h: Vec<u8> = [half::f16::from_f32(65504.0), half::f16::INFINITY]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(first_non_finite(&h, DType::F16), Some(1));
        let b: Vec<u8> = [half::bf16::from_f32(3.0e38), half::bf16::NAN]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(first_non_finite(&b, DType::BF16), Some(1));
        assert_eq!(first_non_finite(&[0xff; 8], DType::U32), None);
    }
}
