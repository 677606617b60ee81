//! Atomic file writes: a reader (or a process killed half-way) sees the old file or
//! the new one, never a part of one.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The temporary file beside `path` that [`replace_file`] writes first.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// `write` fills a temporary file in the same folder, which is synced to disk and
/// then renamed over `path`. On failure the temporary file is removed.
pub fn replace_file(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = temp_path(path);
    let result = write(&tmp).and_then(|()| {
        let finish = || -> std::io::Result<()> {
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        finish().map_err(|e| Error::file(path, format!("cannot write: {e}")))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A file written in place of `path` over time (a stream of results): it is
/// filled under a temporary name beside `path` and renamed over it by
/// [`PendingFile::commit`]; dropped without a commit, the temporary is removed
/// and `path` is left as it was.
pub struct PendingFile {
    path: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

impl PendingFile {
    /// Creates the temporary file; returns the guard and the file to write.
    pub fn create(path: &Path) -> Result<(PendingFile, std::fs::File)> {
        let tmp = temp_path(path);
        let file = std::fs::File::create(&tmp)
            .map_err(|e| Error::file(path, format!("cannot write: {e}")))?;
        let guard = PendingFile {
            path: path.to_path_buf(),
            tmp,
            committed: false,
        };
        Ok((guard, file))
    }

    /// Syncs `file` (the one [`PendingFile::create`] returned) and renames it over `path`.
    pub fn commit(mut self, file: std::fs::File) -> Result<()> {
        let finish = || -> std::io::Result<()> {
            file.sync_all()?;
            drop(file);
            std::fs::rename(&self.tmp, &self.path)
        };
        finish().map_err(|e| Error::file(&self.path, format!("cannot write: {e}")))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_file(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::file(path, format!("cannot write: {e}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old").unwrap();
        let err = replace_file(&path, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(Error::Input("disk full".into()))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_pending_file_replaces_the_old_one_only_when_committed() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        write_atomic(&path, b"old").unwrap();
        let (pending, mut file) = PendingFile::create(&path).unwrap();
        file.write_all(b"half").unwrap();
        drop((pending, file));
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let (pending, mut file) = PendingFile::create(&path).unwrap();
        file.write_all(b"new").unwrap();
        pending.commit(file).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
