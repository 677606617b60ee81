//! The model registry's layout: immutable version folders and a pointer to the
//! production one.
//!
//! ```text
//! REGISTRY/
//!   versions/<version>/   one model folder per version, never changed once written
//!   PRODUCTION            the production version's name (one line)
//! ```
//!
//! The pointer is replaced atomically (written to a temporary file, synced,
//! renamed), so a reader sees the old version or the new one, never a mix.
//! Scheduled retraining keeps its metadata beside this layout (`db`).

use slimformer::io::write_atomic;
use slimformer::{Error, Result};
use std::path::{Path, PathBuf};

pub const VERSIONS_DIR: &str = "versions";
pub const PRODUCTION_FILE: &str = "PRODUCTION";

/// A version's name: letters, digits, `.`, `_` and `-` (it becomes a folder name).
pub fn check_version_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Input(format!(
            "invalid version name {name:?}: use letters, digits, '.', '_' and '-'"
        )))
    }
}

/// The folder of `version`.
pub fn version_dir(registry: &Path, version: &str) -> PathBuf {
    registry.join(VERSIONS_DIR).join(version)
}

/// The production version's name and folder.
pub fn production(registry: &Path) -> Result<(String, PathBuf)> {
    let pointer = registry.join(PRODUCTION_FILE);
    let text = std::fs::read_to_string(&pointer).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::file(
            &pointer,
            "missing: the registry has no production version yet",
        ),
        _ => Error::file(&pointer, e),
    })?;
    let version = text.trim().to_string();
    check_version_name(&version).map_err(|e| Error::file(&pointer, e))?;
    let dir = version_dir(registry, &version);
    if !dir.is_dir() {
        return Err(Error::file(
            &pointer,
            format!(
                "names version {version:?}, which has no folder {}",
                dir.display()
            ),
        ));
    }
    check_inside(registry, &dir)?;
    Ok((version, dir))
}

/// A version folder that is a symbolic link out of the registry's `versions/` is
/// refused: whoever can write the registry must not make the server read elsewhere.
fn check_inside(registry: &Path, dir: &Path) -> Result<()> {
    let versions = registry
        .join(VERSIONS_DIR)
        .canonicalize()
        .map_err(|e| Error::file(registry.join(VERSIONS_DIR), e))?;
    let real = dir.canonicalize().map_err(|e| Error::file(dir, e))?;
    if real.parent() != Some(versions.as_path()) {
        return Err(Error::file(
            dir,
            format!(
                "leads outside the registry's versions/ (to {}): a version must be a folder in it",
                real.display()
            ),
        ));
    }
    Ok(())
}

/// Makes `version` (which must exist) the production one, atomically.
pub fn set_production(registry: &Path, version: &str) -> Result<()> {
    check_version_name(version)?;
    let dir = version_dir(registry, version);
    if !dir.is_dir() {
        return Err(Error::file(&dir, "no such version"));
    }
    write_atomic(
        &registry.join(PRODUCTION_FILE),
        format!("{version}\n").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_pointer_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(production(dir.path()).is_err());
        std::fs::create_dir_all(version_dir(dir.path(), "v1")).unwrap();
        assert!(set_production(dir.path(), "v2").is_err());
        assert!(set_production(dir.path(), "../x").is_err());
        #[cfg(unix)]
        {
            // A version that is a link out of the registry is refused.
            let outside = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join(VERSIONS_DIR)).unwrap();
            std::os::unix::fs::symlink(outside.path(), version_dir(dir.path(), "escape")).unwrap();
            std::fs::write(dir.path().join(PRODUCTION_FILE), "escape\n").unwrap();
            let e = production(dir.path()).unwrap_err().to_string();
            assert!(e.contains("outside the registry"), "{e}");
        }
        set_production(dir.path(), "v1").unwrap();
        let (v, path) = production(dir.path()).unwrap();
        assert_eq!(v, "v1");
        assert!(path.ends_with("versions/v1"));
    }
}

mod db;

/// A crash test hook: when `SLIMFORMER_FAULT` names this step, the process aborts
/// here (as a kill -9 would stop it), so tests can check what each step leaves.
pub fn fault_point(step: &str) {
    if std::env::var("SLIMFORMER_FAULT").is_ok_and(|f| f == step) {
        std::process::abort();
    }
}
pub use db::{copy_dir, db_file, now, Registry, RunRecord, VersionRow, VersionStatus};
