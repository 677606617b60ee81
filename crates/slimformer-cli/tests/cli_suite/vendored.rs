//! vendor/candle-core is candle-core's crates.io release with its two patches
//! applied, and nothing else: the release (fetched by scripts/fetch-assets.sh,
//! sha256-checked) is unpacked, patched, and compared file by file.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir`, relative to it.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn vendored_candle_core_is_the_release_with_its_patches() {
    let vendored = root().join("vendor/candle-core");
    let release = root().join("assets/downloads/candle-core-0.11.1.crate");
    assert!(
        release.exists(),
        "{} is missing: run scripts/fetch-assets.sh first",
        release.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    run(Command::new("tar")
        .arg("xzf")
        .arg(&release)
        .arg("-C")
        .arg(tmp.path()));
    let unpacked = tmp.path().join("candle-core-0.11.1");
    for patch in ["backprop.patch", "manifest.patch"] {
        run(Command::new("patch")
            .args(["-p1", "--quiet", "--no-backup-if-mismatch", "-i"])
            .arg(vendored.join(patch))
            .current_dir(&unpacked));
    }
    let ours: Vec<PathBuf> = files(&vendored)
        .into_iter()
        .filter(|f| {
            !matches!(
                f.to_str(),
                Some("PATCH.md" | "backprop.patch" | "manifest.patch")
            )
        })
        .collect();
    assert!(ours.iter().any(|f| f.ends_with("backprop.rs")), "{ours:?}");
    let theirs = files(&unpacked.join("src"));
    for file in &theirs {
        assert!(
            ours.contains(&Path::new("src").join(file)),
            "vendor/candle-core lacks src/{}",
            file.display()
        );
    }
    for file in &ours {
        let (a, b) = (vendored.join(file), unpacked.join(file));
        assert!(
            b.exists(),
            "vendor/candle-core/{} is not in the release",
            file.display()
        );
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "vendor/candle-core/{} differs from the patched release",
            file.display()
        );
    }
}
