//! Finding a model: a local folder first, then the Hugging Face cache, then the hub.

use crate::{Error, Result};
use hf_hub::Cache;
use std::path::{Path, PathBuf};

/// Files a model folder may need; only config.json and weights are required.
#[cfg(feature = "download")]
const MODEL_FILES: [&str; 8] = [
    "config.json",
    "tokenizer.json",
    "model.safetensors",
    "pytorch_model.bin",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
    "model.safetensors.index.json",
];

/// Resolves `spec` to a model folder: an existing folder as is; otherwise a hub
/// model id (`org/name`) looked up in the local HF cache (`HF_HOME`), and
/// downloaded into it unless `HF_HUB_OFFLINE` is set.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    resolve_model_in(spec, &Cache::from_env())
}

pub fn resolve_model_in(spec: &str, cache: &Cache) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let looks_like_id =
        spec.split('/').count() == 2 && !spec.starts_with('.') && !spec.ends_with('/');
    if !looks_like_id {
        return Err(Error::file(path, "not a model folder (no such directory)"));
    }
    if let Some(config) = cache.model(spec.to_string()).get("config.json") {
        if let Some(dir) = config.parent() {
            return Ok(dir.to_path_buf());
        }
    }
    let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v != "0" && !v.is_empty());
    if offline {
        return Err(Error::file(
            path,
            format!(
                "not a folder, and not in the Hugging Face cache {} (HF_HUB_OFFLINE is set)",
                cache.path().display()
            ),
        ));
    }
    download(spec, cache).map_err(|e| {
        Error::file(
            path,
            format!("not a folder nor in the Hugging Face cache, and the download failed: {e}"),
        )
    })
}

#[cfg(not(feature = "download"))]
fn download(_: &str, _: &Cache) -> std::result::Result<PathBuf, String> {
    Err("this build of slimformer does not download (its `download` feature is off)".into())
}

#[cfg(feature = "download")]
fn download(model_id: &str, cache: &Cache) -> std::result::Result<PathBuf, String> {
    use hf_hub::Repo;
    let api = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone())
        .with_progress(false)
        .build()
        .map_err(|e| e.to_string())?;
    let repo = api.repo(Repo::model(model_id.to_string()));
    let config = repo.get("config.json").map_err(|e| e.to_string())?;
    for file in &MODEL_FILES[1..] {
        // Optional files: a model has only some of them.
        let _ = repo.get(file);
    }
    config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "the cache returned no folder".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cache layout hf-hub and huggingface_hub share:
    /// models--org--name/{refs/main, snapshots/<commit>/<files>}.
    #[test]
    fn finds_a_model_in_the_local_cache_layout() {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path().join("models--acme--tiny-bert");
        let snapshot = repo.join("snapshots").join("0123abcd");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
        std::fs::write(snapshot.join("config.json"), "{}").unwrap();
        let cache = Cache::new(root.path().to_path_buf());
        assert_eq!(
            resolve_model_in("acme/tiny-bert", &cache).unwrap(),
            snapshot
        );
    }

    #[test]
    fn a_missing_folder_that_is_no_model_id_is_an_error() {
        let cache = Cache::new(tempfile::tempdir().unwrap().path().to_path_buf());
        let err = resolve_model_in("./no/such/dir", &cache).unwrap_err();
        assert!(err.to_string().contains("no such directory"), "{err}");
    }
}
