//! Crash-safe file replacement.
//!
//! [`write_atomic`] writes a temporary file beside the target, flushes it to disk, and renames it
//! over the target (then, on Unix, syncs the directory), so a reader — or a `--resume` after a
//! kill — sees either the old file or the new one, never an empty or torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary name used for `path`: `.NAME.tmp-PID` in the same directory (same file system,
/// so the rename is atomic).
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Replaces `path` with `bytes` atomically: temporary file, `fsync`, rename, directory `fsync`.
/// On error the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: impl AsRef<[u8]>) -> std::io::Result<()> {
    replace_via(path, |tmp| {
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes.as_ref())?;
        Ok(())
    })
}

/// Replaces `path` atomically with what `write` puts in the temporary file it is given (for
/// writers that take a path, such as `candle_core::safetensors::save`): the file is synced to
/// disk, renamed over `path`, and the directory synced. On error the temporary file is removed
/// and `path` is untouched.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// let target = dir.path().join("weights.bin");
/// trust_core::fsutil::replace_via(&target, |tmp| std::fs::write(tmp, b"new weights")).unwrap();
/// assert_eq!(std::fs::read(&target).unwrap(), b"new weights");
/// ```
pub fn replace_via<E: From<std::io::Error>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temp_path(path);
    let result = write(&tmp).and_then(|()| {
        (|| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&tmp)?
                .sync_all()?;
            std::fs::rename(&tmp, path)?;
            #[cfg(unix)]
            if let Some(dir) = path.parent() {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                // Best effort: some file systems refuse to open directories for syncing.
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
            }
            Ok::<(), std::io::Error>(())
        })()
        .map_err(E::from)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("report.json");
        std::fs::write(&p, "old").unwrap();
        write_atomic(&p, "new contents").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new contents");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join("x.json");
        assert!(write_atomic(&p, "x").is_err());
        assert!(!p.exists());
        // A target that is a directory cannot be replaced; the directory stays.
        let d = dir.path().join("adir");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("inside"), "keep").unwrap();
        assert!(write_atomic(&d, "x").is_err());
        assert_eq!(std::fs::read_to_string(d.join("inside")).unwrap(), "keep");
        let stray = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp-")
            })
            .count();
        assert_eq!(stray, 0);
    }

    #[test]
    fn a_failing_writer_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.safetensors");
        std::fs::write(&p, "old").unwrap();
        let r = replace_via(&p, |tmp| {
            std::fs::write(tmp, "half")?;
            Err(std::io::Error::other("killed mid-write"))
        });
        assert_eq!(r.unwrap_err().to_string(), "killed mid-write");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        replace_via(&p, |tmp| std::fs::write(tmp, "new")).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
