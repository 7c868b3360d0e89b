//! Loading the ONNX Runtime shared library and building sessions.
//!
//! `ort` is built with `load-dynamic`: nothing is linked or downloaded at build time, and the
//! library is opened at run time. Exactly one library and one ONNX Runtime environment can exist
//! per process, so both are process-global here.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ::ort::environment::Environment;
use ::ort::session::Session;
use ::ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

use crate::error::BackendError;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OrtDevice {
    /// ONNX Runtime's CPU execution provider.
    #[default]
    Cpu,
    /// The CUDA execution provider on this device ordinal. Needs the `ort-cuda` feature and an
    /// ONNX Runtime library built with CUDA (the `onnxruntime-gpu` wheel's, not the CPU one that
    /// `scripts/install-onnxruntime.sh` installs). Never falls back to the CPU silently: session
    /// creation fails instead.
    Cuda(i32),
}

/// Session settings shared by the ONNX backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// Sessions in the pool, i.e. how many batches run at once. `None`: the number of CPUs
    /// (`std::thread::available_parallelism`); 1 on CUDA.
    pub sessions: Option<usize>,
    /// ONNX Runtime intra-op threads per session (0 = ONNX Runtime's default, all cores).
    pub intra_threads: usize,
    /// Execution provider.
    pub device: OrtDevice,
    /// The ONNX Runtime shared library. `None`: the `ORT_DYLIB_PATH` environment variable
    /// (which `.cargo/config.toml` sets for cargo commands), else `.ort/lib/libonnxruntime.so`
    /// in the working directory or above the executable (where the install script puts it).
    pub dylib_path: Option<PathBuf>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            sessions: None,
            intra_threads: 1,
            device: OrtDevice::Cpu,
            dylib_path: None,
        }
    }
}

impl SessionOptions {
    /// The pool size these options give.
    pub fn pool_size(&self) -> usize {
        match (self.sessions, self.device) {
            (Some(n), _) => n.max(1),
            (None, OrtDevice::Cuda(_)) => 1,
            (None, OrtDevice::Cpu) => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

struct Loaded {
    path: PathBuf,
    env: Environment,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();
static INIT: Mutex<()> = Mutex::new(());

/// The library path to load: the explicit one, else `ORT_DYLIB_PATH`, else the first existing
/// `fallbacks` entry (the repository-local `.ort/lib/libonnxruntime.so`).
pub(crate) fn resolve_dylib_path(
    explicit: Option<&Path>,
    env_value: Option<OsString>,
    fallbacks: &[PathBuf],
) -> Result<PathBuf, BackendError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    match env_value {
        Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
        _ => fallbacks.iter().find(|p| p.is_file()).cloned().ok_or_else(|| BackendError::OrtLibrary {
            path: None,
            message: "no library configured (ORT_DYLIB_PATH is not set and no .ort/lib/libonnxruntime.so was found \
                      in the working directory or above the executable)"
                .into(),
        }),
    }
}

/// Where `scripts/install-onnxruntime.sh` puts the library, seen from the working directory and
/// from the executable's ancestors (`target/<profile>/trust` is three levels below the repository).
fn local_install_candidates() -> Vec<PathBuf> {
    let rel = Path::new(".ort").join("lib").join(format!(
        "{}onnxruntime{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    let mut out = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        out.push(cwd.join(&rel));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            out.push(dir.join(&rel));
        }
    }
    out
}

/// Loads the ONNX Runtime library (once per process) and returns the process environment.
///
/// `dylib`: the library to load; `None` reads `ORT_DYLIB_PATH`, else looks for the repository's
/// `.ort/lib/libonnxruntime.so` (working directory, then above the executable). Errors, never panics, when the
/// library is missing, is not an ONNX Runtime library, or is older than 1.31. Once a library is
/// loaded, asking for a different one is an error (a process can hold only one).
pub fn ort_environment(dylib: Option<&Path>) -> Result<Environment, BackendError> {
    let path = resolve_dylib_path(
        dylib,
        std::env::var_os("ORT_DYLIB_PATH"),
        &local_install_candidates(),
    )?;
    if !path.is_file() {
        return Err(BackendError::OrtLibrary {
            path: Some(path),
            message: "no such file".into(),
        });
    }
    let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(loaded) = LOADED.get() {
        if loaded.path != canonical {
            return Err(BackendError::OrtLibrary {
                path: Some(path),
                message: format!(
                    "this process already loaded ONNX Runtime from `{}`; only one library can be loaded per process",
                    loaded.path.display()
                ),
            });
        }
        return Ok(loaded.env.clone());
    }
    let builder = ::ort::init_from(&canonical).map_err(|e| BackendError::OrtLibrary {
        path: Some(path.clone()),
        message: e.to_string(),
    })?;
    let env = builder
        .with_name("trust")
        .build()
        .map_err(|e| BackendError::OrtLibrary {
            path: Some(path.clone()),
            message: e.to_string(),
        })?;
    let loaded = LOADED.get_or_init(|| Loaded {
        path: canonical,
        env,
    });
    tracing::debug!(path = %loaded.path.display(), "loaded ONNX Runtime");
    Ok(loaded.env.clone())
}

fn builder_err<R>(model: &Path, what: &str) -> impl FnOnce(::ort::Error<R>) -> BackendError {
    let model = model.to_path_buf();
    let what = what.to_string();
    move |e| BackendError::Runtime(format!("{}: {what}: {e}", model.display()))
}

fn configure(
    builder: SessionBuilder,
    model: &Path,
    opts: &SessionOptions,
) -> Result<SessionBuilder, BackendError> {
    let mut b = builder
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(builder_err(model, "setting the optimization level"))?;
    if opts.intra_threads > 0 {
        b = b
            .with_intra_threads(opts.intra_threads)
            .map_err(builder_err(model, "setting intra-op threads"))?;
    }
    match opts.device {
        OrtDevice::Cpu => Ok(b),
        OrtDevice::Cuda(id) => with_cuda(b, model, id),
    }
}

#[cfg(feature = "ort-cuda")]
fn with_cuda(
    b: SessionBuilder,
    model: &Path,
    device_id: i32,
) -> Result<SessionBuilder, BackendError> {
    use ::ort::ep::{CUDA, ExecutionProvider};
    let available = CUDA::is_available().map_err(|e| {
        BackendError::Device(format!(
            "cannot query ONNX Runtime's CUDA execution provider: {e}"
        ))
    })?;
    if !available {
        return Err(BackendError::Device(
            "the loaded ONNX Runtime library has no CUDA execution provider (the CPU-only build that \
             scripts/install-onnxruntime.sh installs never does); point ORT_DYLIB_PATH at the library \
             of an onnxruntime-gpu build, or run on the CPU"
                .into(),
        ));
    }
    let ep = CUDA::default()
        .with_device_id(device_id)
        .build()
        .error_on_failure();
    b.with_execution_providers([ep]).map_err(|e| {
        BackendError::Device(format!(
            "{}: registering the CUDA execution provider on device {device_id} failed (no silent CPU fallback): {e}",
            model.display()
        ))
    })
}

#[cfg(not(feature = "ort-cuda"))]
fn with_cuda(
    _b: SessionBuilder,
    _model: &Path,
    device_id: i32,
) -> Result<SessionBuilder, BackendError> {
    Err(BackendError::Device(format!(
        "CUDA device {device_id} requested, but trust-backends was built without the `ort-cuda` feature"
    )))
}

/// Opens `model` as one session.
pub(crate) fn open_session(
    env: &Environment,
    model: &Path,
    opts: &SessionOptions,
) -> Result<Session, BackendError> {
    if !model.is_file() {
        return Err(BackendError::Io {
            path: model.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "ONNX model file not found"),
        });
    }
    let builder = Session::builder(env).map_err(|e| {
        BackendError::Runtime(format!(
            "{}: creating a session builder: {e}",
            model.display()
        ))
    })?;
    let mut builder = configure(builder, model, opts)?;
    builder
        .commit_from_file(model)
        .map_err(|e| BackendError::Config {
            path: model.to_path_buf(),
            message: format!("ONNX Runtime cannot load this model: {e}"),
        })
}

/// sha256 (hex) over the model file and its external-data file (`<model>_data` / `<model>.data`)
/// when present.
pub(crate) fn model_sha256(model: &Path) -> Result<String, BackendError> {
    let mut files = vec![model.to_path_buf()];
    for ext in ["_data", ".data"] {
        let mut p = model.as_os_str().to_os_string();
        p.push(ext);
        let p = PathBuf::from(p);
        if p.is_file() {
            files.push(p);
        }
    }
    crate::sha256_files(&files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_env_var_names_the_install_script() {
        let err = resolve_dylib_path(
            None,
            None,
            &[PathBuf::from("/nonexistent/.ort/lib/libonnxruntime.so")],
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("ORT_DYLIB_PATH is not set"), "{msg}");
        assert!(msg.contains("scripts/install-onnxruntime.sh"), "{msg}");
        assert!(resolve_dylib_path(None, Some(OsString::new()), &[]).is_err());
    }

    #[test]
    fn explicit_path_wins_over_env_and_env_over_local_install() {
        let tmp = tempfile::tempdir().unwrap();
        let local = tmp.path().join("libonnxruntime.so");
        std::fs::write(&local, "").unwrap();
        let fallbacks = [tmp.path().join("missing.so"), local.clone()];
        let p = resolve_dylib_path(
            Some(Path::new("/x/lib.so")),
            Some("/y/lib.so".into()),
            &fallbacks,
        )
        .unwrap();
        assert_eq!(p, PathBuf::from("/x/lib.so"));
        let p = resolve_dylib_path(None, Some("/y/lib.so".into()), &fallbacks).unwrap();
        assert_eq!(p, PathBuf::from("/y/lib.so"));
        assert_eq!(resolve_dylib_path(None, None, &fallbacks).unwrap(), local);
    }

    #[test]
    fn pool_size_defaults() {
        assert_eq!(
            SessionOptions {
                sessions: Some(3),
                ..Default::default()
            }
            .pool_size(),
            3
        );
        assert_eq!(
            SessionOptions {
                sessions: Some(0),
                ..Default::default()
            }
            .pool_size(),
            1
        );
        assert_eq!(
            SessionOptions {
                device: OrtDevice::Cuda(0),
                ..Default::default()
            }
            .pool_size(),
            1
        );
        assert!(SessionOptions::default().pool_size() >= 1);
    }
}
