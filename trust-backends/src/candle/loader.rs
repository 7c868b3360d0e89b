//! Loading weights and tokenizers from a local Hugging Face model directory.
//!
//! Weights come from `model.safetensors` or from the shards listed in
//! `model.safetensors.index.json`; files are memory-mapped, every header is validated up front
//! (a truncated file fails here, naming the file), and tensors are served to the model builders
//! through a [`candle_nn::var_builder::SimpleBackend`] that records precise errors (file, tensor,
//! expected vs found shape) instead of panicking.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use memmap2::Mmap;
use sha2::{Digest, Sha256};

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
    first_error: Mutex<Option<BackendError>>,
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
            first_error: Mutex::new(None),
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
        let msg = e.to_string();
        let mut slot = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        candle_core::Error::Msg(msg)
    }

    /// The first structured error recorded while building a model, if any.
    pub fn take_error(&self) -> Option<BackendError> {
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn load(
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

    /// Streamed sha256 over the weight files (concatenated in [`Self::files`] order); for a single
    /// file it equals `sha256sum model.safetensors`.
    pub fn sha256(&self) -> Result<String, BackendError> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        for path in &self.files {
            let mut f = std::fs::File::open(path).map_err(|source| BackendError::Io {
                path: path.clone(),
                source,
            })?;
            loop {
                let n = f.read(&mut buf).map_err(|source| BackendError::Io {
                    path: path.clone(),
                    source,
                })?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
        Ok(hex::encode(h.finalize()))
    }
}

/// A [`candle_nn::var_builder::SimpleBackend`] over a shared [`SafetensorsStore`].
#[derive(Debug, Clone)]
pub struct StoreBackend(pub Arc<SafetensorsStore>);

impl candle_nn::var_builder::SimpleBackend for StoreBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.load(name, Some(&s), dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.load(name, None, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.tensors.contains_key(name)
    }
}

/// Loads `dir/tokenizer.json` and checks that every token id fits the embedding.
pub fn load_tokenizer(
    dir: &Path,
    vocab_size: usize,
) -> Result<tokenizers::Tokenizer, BackendError> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        return Err(BackendError::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
        });
    }
    let tok = tokenizers::Tokenizer::from_file(&path).map_err(|e| BackendError::Tokenizer {
        path: path.clone(),
        message: e.to_string(),
    })?;
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
            path,
            message: format!(
                "the tokenizer has {n} token ids but the model's embedding has only {vocab_size} rows (config.json vocab_size)"
            ),
        });
    }
    Ok(tok)
}
