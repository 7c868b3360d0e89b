//! An on-disk, resumable store of per-example gradients.
//!
//! A store is a directory holding two files:
//!
//! - `meta.json`: format name and version, `dtype` (`"f32-le"`), the caller's [`StoreKey`] (what
//!   model, LoRA configuration, loss and data produced the gradients) and its SHA-256, the record
//!   length and the per-layer names and flattened sizes.
//! - `gradients.f32`: the records, one per example in extraction order, each `record_len`
//!   little-endian `f32` (the layers one after the other, see [`LayerLayout`]), with no header or
//!   padding. The number of complete records *is* the number of examples done.
//!
//! **Resume.** [`GradientStoreWriter::open`] on an existing store checks that the metadata matches
//! the caller's key and layout (a mismatch is [`AttributionError::StoreMismatch`] naming the field),
//! truncates a torn last record (a crash in the middle of a write) and reports in [`ResumeInfo`] how
//! many examples are complete, so extraction continues with example `examples_done`. Records are
//! buffered: call [`GradientStoreWriter::sync`] at checkpoints (e.g. every few thousand examples);
//! after a power loss, records written after the last sync may be lost, and a file system may even
//! keep a zero-filled tail, which this format cannot tell from real zeros.
//!
//! **Reading.** [`GradientStoreReader`] memory-maps the data file and implements
//! [`GradientSource`], decoding one block at a time into a reusable buffer of at most
//! [`MAX_BLOCK_BYTES`] (or one record, if larger). The file must not be
//! truncated or rewritten by another process while a reader maps it (appending is fine: the reader
//! only sees the records present when it was opened). Only one writer may use a store at a time.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::source::{GradientBlock, GradientSource, LayerLayout};
use super::{AttributionError, Result};

/// Name of the metadata file inside a store directory.
pub const META_FILE: &str = "meta.json";
/// Name of the data file inside a store directory.
pub const DATA_FILE: &str = "gradients.f32";
const FORMAT: &str = "trust-gradient-store";
const VERSION: u32 = 1;
const DTYPE: &str = "f32-le";
/// Largest decoded block a [`GradientStoreReader`] hands out (fewer examples than asked for when
/// records are large; at least one record).
pub const MAX_BLOCK_BYTES: usize = 64 << 20;

/// What produced a store's gradients. Each field is free text chosen by the caller (typically ids
/// plus content hashes); the store keeps the fields and their SHA-256 and refuses to mix gradients
/// of different keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreKey {
    /// The model (id, revision, weights hash, and the reference model for DPO).
    pub model: String,
    /// The LoRA configuration (rank, alpha, attributed tensors, conversion).
    pub lora: String,
    /// The loss differentiated (`sft-ce`, `rm-bradley-terry`, `dpo beta=1`, ...).
    pub loss: String,
    /// The data (dataset id, split, hash, preprocessing, truncation).
    pub data: String,
}

impl StoreKey {
    /// Hex SHA-256 of the key: each field's name, byte length (u64 LE) and bytes, in order, after
    /// a version tag. Stable across versions of this crate.
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"trust-gradient-store-key/v1");
        for (name, value) in [
            ("model", &self.model),
            ("lora", &self.lora),
            ("loss", &self.loss),
            ("data", &self.data),
        ] {
            for part in [name.as_bytes(), value.as_bytes()] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part);
            }
        }
        hex::encode(h.finalize())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerMeta {
    name: String,
    dim: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    format: String,
    version: u32,
    dtype: String,
    key_sha256: String,
    key: StoreKey,
    record_len: usize,
    layers: Vec<LayerMeta>,
}

impl Meta {
    fn new(key: &StoreKey, layout: &LayerLayout) -> Self {
        Meta {
            format: FORMAT.into(),
            version: VERSION,
            dtype: DTYPE.into(),
            key_sha256: key.sha256(),
            key: key.clone(),
            record_len: layout.record_len(),
            layers: layout
                .names()
                .iter()
                .zip(layout.dims())
                .map(|(name, &dim)| LayerMeta {
                    name: name.clone(),
                    dim,
                })
                .collect(),
        }
    }

    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| AttributionError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| AttributionError::CorruptStore {
            path: path.to_path_buf(),
            message: format!("unreadable metadata: {e}"),
        })
    }

    /// The first differing field as (name, on disk, requested).
    fn first_difference(&self, want: &Meta) -> Option<(String, String, String)> {
        let mut fields: Vec<(String, String, String)> = vec![
            ("format".into(), self.format.clone(), want.format.clone()),
            (
                "version".into(),
                self.version.to_string(),
                want.version.to_string(),
            ),
            ("dtype".into(), self.dtype.clone(), want.dtype.clone()),
            (
                "key.model".into(),
                self.key.model.clone(),
                want.key.model.clone(),
            ),
            (
                "key.lora".into(),
                self.key.lora.clone(),
                want.key.lora.clone(),
            ),
            (
                "key.loss".into(),
                self.key.loss.clone(),
                want.key.loss.clone(),
            ),
            (
                "key.data".into(),
                self.key.data.clone(),
                want.key.data.clone(),
            ),
            (
                "key_sha256".into(),
                self.key_sha256.clone(),
                want.key_sha256.clone(),
            ),
            (
                "layers.len".into(),
                self.layers.len().to_string(),
                want.layers.len().to_string(),
            ),
        ];
        for (i, (a, b)) in self.layers.iter().zip(&want.layers).enumerate() {
            fields.push((format!("layers[{i}].name"), a.name.clone(), b.name.clone()));
            fields.push((
                format!("layers[{i}].dim"),
                a.dim.to_string(),
                b.dim.to_string(),
            ));
        }
        fields.push((
            "record_len".into(),
            self.record_len.to_string(),
            want.record_len.to_string(),
        ));
        fields.into_iter().find(|(_, a, b)| a != b)
    }

    fn layout(&self, path: &Path) -> Result<LayerLayout> {
        let corrupt = |message: String| AttributionError::CorruptStore {
            path: path.to_path_buf(),
            message,
        };
        if self.format != FORMAT || self.version != VERSION || self.dtype != DTYPE {
            return Err(corrupt(format!(
                "unsupported format {} v{} dtype {} (expected {FORMAT} v{VERSION} {DTYPE})",
                self.format, self.version, self.dtype
            )));
        }
        let layout = LayerLayout::new(self.layers.iter().map(|l| (l.name.clone(), l.dim)))
            .map_err(|e| corrupt(e.to_string()))?;
        if layout.record_len() != self.record_len {
            return Err(corrupt(format!(
                "record_len {} is not the sum of the layer sizes ({})",
                self.record_len,
                layout.record_len()
            )));
        }
        if self.key.sha256() != self.key_sha256 {
            return Err(corrupt("key_sha256 does not match the stored key".into()));
        }
        record_bytes(&layout).map_err(|e| corrupt(e.to_string()))?;
        Ok(layout)
    }
}

fn record_bytes(layout: &LayerLayout) -> Result<u64> {
    (layout.record_len() as u64)
        .checked_mul(4)
        .ok_or_else(|| AttributionError::Shape("record size overflows u64".into()))
}

/// What [`GradientStoreWriter::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeInfo {
    /// Complete records already in the store: extraction continues with this example index.
    pub examples_done: usize,
    /// Bytes of a torn last record that were cut off (0 after a clean stop).
    pub truncated_bytes: u64,
    /// Whether the store was created by this call.
    pub created: bool,
}

/// Appends gradient records to a store, one example at a time (see the module docs).
#[derive(Debug)]
pub struct GradientStoreWriter {
    dir: PathBuf,
    data_path: PathBuf,
    layout: LayerLayout,
    out: BufWriter<File>,
    len: usize,
    resume: ResumeInfo,
    bytes: Vec<u8>,
}

impl GradientStoreWriter {
    /// Creates the store in `dir` (created if missing), or reopens it for appending after checking
    /// that its metadata matches `key` and `layout` and cutting off a torn last record.
    pub fn open(dir: impl AsRef<Path>, key: &StoreKey, layout: &LayerLayout) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| AttributionError::io(&dir, e))?;
        let meta_path = dir.join(META_FILE);
        let data_path = dir.join(DATA_FILE);
        let want = Meta::new(key, layout);
        let rec_bytes = record_bytes(layout)?;
        let created = !meta_path.exists();
        if created {
            if std::fs::metadata(&data_path).is_ok_and(|m| m.len() > 0) {
                return Err(AttributionError::CorruptStore {
                    path: data_path,
                    message: format!(
                        "gradient data without {META_FILE}; refusing to guess what it holds"
                    ),
                });
            }
            let tmp = dir.join(format!("{META_FILE}.tmp"));
            let text = serde_json::to_string_pretty(&want).map_err(|e| {
                AttributionError::CorruptStore {
                    path: meta_path.clone(),
                    message: e.to_string(),
                }
            })?;
            let write = || -> std::io::Result<()> {
                let mut f = File::create(&tmp)?;
                f.write_all(text.as_bytes())?;
                f.write_all(b"\n")?;
                f.sync_all()?;
                std::fs::rename(&tmp, &meta_path)
            };
            write().map_err(|e| AttributionError::io(&meta_path, e))?;
        } else {
            let disk = Meta::read(&meta_path)?;
            if let Some((field, on_disk, requested)) = disk.first_difference(&want) {
                return Err(AttributionError::StoreMismatch {
                    path: meta_path,
                    field,
                    on_disk,
                    requested,
                });
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&data_path)
            .map_err(|e| AttributionError::io(&data_path, e))?;
        let size = file
            .metadata()
            .map_err(|e| AttributionError::io(&data_path, e))?
            .len();
        let torn = size % rec_bytes;
        if torn > 0 {
            file.set_len(size - torn)
                .map_err(|e| AttributionError::io(&data_path, e))?;
            file.sync_all()
                .map_err(|e| AttributionError::io(&data_path, e))?;
        }
        let len =
            usize::try_from(size / rec_bytes).map_err(|_| AttributionError::CorruptStore {
                path: data_path.clone(),
                message: "more records than fit in usize".into(),
            })?;
        Ok(GradientStoreWriter {
            dir,
            data_path,
            layout: layout.clone(),
            out: BufWriter::with_capacity(1 << 20, file),
            len,
            resume: ResumeInfo {
                examples_done: len,
                truncated_bytes: torn,
                created,
            },
            bytes: Vec::new(),
        })
    }

    /// What opening found (examples already done, bytes cut off, whether the store is new).
    pub fn resume_info(&self) -> ResumeInfo {
        self.resume
    }

    /// Number of examples in the store, including buffered ones; the next example's index.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the store holds no example.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The store's layout.
    pub fn layout(&self) -> &LayerLayout {
        &self.layout
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends the next example, one gradient slice per layer; returns its index.
    ///
    /// Errors on a shape mismatch or a NaN / infinity (the record is then not written).
    pub fn append(&mut self, layers: &[&[f32]]) -> Result<usize> {
        self.layout.check_layers(layers)?;
        self.bytes.clear();
        for (l, g) in layers.iter().enumerate() {
            if let Some(p) = g.iter().position(|x| !x.is_finite()) {
                return Err(AttributionError::NonFinite(format!(
                    "example {}, layer `{}`, entry {p}: {}",
                    self.len,
                    self.layout.names()[l],
                    g[p]
                )));
            }
            for x in *g {
                self.bytes.extend_from_slice(&x.to_le_bytes());
            }
        }
        self.out
            .write_all(&self.bytes)
            .map_err(|e| AttributionError::io(&self.data_path, e))?;
        self.len += 1;
        Ok(self.len - 1)
    }

    /// Appends the next example given as one full record; returns its index.
    pub fn append_record(&mut self, record: &[f32]) -> Result<usize> {
        if record.len() != self.layout.record_len() {
            return Err(AttributionError::Shape(format!(
                "record has {} values, expected {}",
                record.len(),
                self.layout.record_len()
            )));
        }
        let layers: Vec<&[f32]> = (0..self.layout.num_layers())
            .map(|l| self.layout.layer(record, l))
            .collect();
        self.append(&layers)
    }

    /// Writes buffered records to the file.
    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .map_err(|e| AttributionError::io(&self.data_path, e))
    }

    /// Writes buffered records and asks the OS to put them on disk (a checkpoint).
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.out
            .get_ref()
            .sync_data()
            .map_err(|e| AttributionError::io(&self.data_path, e))
    }

    /// Syncs and closes the store.
    pub fn finish(mut self) -> Result<()> {
        self.sync()
    }

    /// Flushes and opens a reader of the records written so far.
    pub fn reader(&mut self) -> Result<GradientStoreReader> {
        self.flush()?;
        GradientStoreReader::open(&self.dir)
    }
}

/// Reads a store through a memory map; a [`GradientSource`].
#[derive(Debug)]
pub struct GradientStoreReader {
    data_path: PathBuf,
    key: StoreKey,
    layout: LayerLayout,
    map: Option<memmap2::Mmap>,
    len: usize,
    torn_bytes: u64,
}

impl GradientStoreReader {
    /// Opens the store in `dir` whatever its key. A torn last record is ignored (not removed; see
    /// [`Self::torn_bytes`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let meta_path = dir.join(META_FILE);
        let data_path = dir.join(DATA_FILE);
        let meta = Meta::read(&meta_path)?;
        let layout = meta.layout(&meta_path)?;
        let rec_bytes = record_bytes(&layout)?;
        let file = File::open(&data_path).map_err(|e| AttributionError::io(&data_path, e))?;
        let size = file
            .metadata()
            .map_err(|e| AttributionError::io(&data_path, e))?
            .len();
        let map = if size == 0 {
            None
        } else {
            // SAFETY: the map is read-only; the store protocol only ever appends to the data file
            // while a reader is open (truncation happens in `GradientStoreWriter::open` only), so
            // the mapped range stays valid. A foreign process truncating the file would break this,
            // as documented on the module.
            Some(
                unsafe { memmap2::Mmap::map(&file) }
                    .map_err(|e| AttributionError::io(&data_path, e))?,
            )
        };
        let mapped = map.as_ref().map_or(0, |m| m.len() as u64);
        let len =
            usize::try_from(mapped / rec_bytes).map_err(|_| AttributionError::CorruptStore {
                path: data_path.clone(),
                message: "more records than fit in usize".into(),
            })?;
        Ok(GradientStoreReader {
            data_path,
            key: meta.key,
            layout,
            map,
            len,
            torn_bytes: mapped % rec_bytes,
        })
    }

    /// Opens the store in `dir` after checking that it was made for `key` with `layout`.
    pub fn open_checked(
        dir: impl AsRef<Path>,
        key: &StoreKey,
        layout: &LayerLayout,
    ) -> Result<Self> {
        let meta_path = dir.as_ref().join(META_FILE);
        let disk = Meta::read(&meta_path)?;
        if let Some((field, on_disk, requested)) = disk.first_difference(&Meta::new(key, layout)) {
            return Err(AttributionError::StoreMismatch {
                path: meta_path,
                field,
                on_disk,
                requested,
            });
        }
        Self::open(dir)
    }

    /// The key the store was made for.
    pub fn key(&self) -> &StoreKey {
        &self.key
    }

    /// Bytes after the last complete record (a torn write not yet cut off by a writer).
    pub fn torn_bytes(&self) -> u64 {
        self.torn_bytes
    }

    /// The data file.
    pub fn data_path(&self) -> &Path {
        &self.data_path
    }

    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Decoded record of example `i`, or `None` past the end.
    pub fn record(&self, i: usize) -> Option<Vec<f32>> {
        let r = self.layout.record_len() * 4;
        let b = self
            .bytes()
            .get(i.checked_mul(r)?..i.checked_add(1)?.checked_mul(r)?)?;
        Some(decode(b))
    }
}

fn decode(bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(bytes.len() / 4);
    decode_into(bytes, &mut out);
    out
}

fn decode_into(bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
}

impl GradientSource for GradientStoreReader {
    fn layout(&self) -> &LayerLayout {
        &self.layout
    }

    fn len(&self) -> usize {
        self.len
    }

    fn for_each_block(
        &self,
        max_block: usize,
        f: &mut dyn FnMut(GradientBlock<'_>) -> Result<()>,
    ) -> Result<()> {
        let rec = self.layout.record_len() * 4;
        // bound the decode buffer whatever the caller asks for
        let max_block = max_block.clamp(1, (MAX_BLOCK_BYTES / rec).max(1));
        let bytes = &self.bytes()[..self.len * rec];
        let mut buf = Vec::new();
        for (b, chunk) in bytes.chunks(max_block * rec).enumerate() {
            decode_into(chunk, &mut buf);
            f(GradientBlock::new(b * max_block, &buf, &self.layout)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_stable_and_field_sensitive() {
        let k = StoreKey {
            model: "m".into(),
            lora: "r4".into(),
            loss: "sft".into(),
            data: "d".into(),
        };
        assert_eq!(k.sha256(), k.clone().sha256());
        assert_eq!(k.sha256().len(), 64);
        // moving a character between fields changes the hash (fields are length-prefixed)
        let k2 = StoreKey {
            model: "mr".into(),
            lora: "4".into(),
            ..k.clone()
        };
        assert_ne!(k.sha256(), k2.sha256());
    }

    #[test]
    fn data_without_metadata_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DATA_FILE), [0u8; 8]).unwrap();
        let k = StoreKey {
            model: "m".into(),
            lora: "l".into(),
            loss: "x".into(),
            data: "d".into(),
        };
        let layout = LayerLayout::from_dims(&[2]).unwrap();
        let err = GradientStoreWriter::open(dir.path(), &k, &layout).unwrap_err();
        assert!(
            matches!(err, AttributionError::CorruptStore { .. }),
            "{err}"
        );
    }
}
