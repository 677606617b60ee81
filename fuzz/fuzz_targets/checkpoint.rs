//! A model folder's config.json and safetensors file (header and data): the first byte picks
//! which of the two the input replaces in a copy of the fixture BERT.
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn folder() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = common::scratch().join("model");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(common::fixture("bert-base").join(f), dir.join(f)).unwrap();
        }
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let dir = folder();
    let (replaced, original) = if which % 2 == 0 {
        ("config.json", "config.json")
    } else {
        ("model.safetensors", "model.safetensors")
    };
    std::fs::write(dir.join(replaced), body).unwrap();
    let _ = slimformer::model::Model::load(dir);
    std::fs::copy(
        common::fixture("bert-base").join(original),
        dir.join(original),
    )
    .unwrap();
});
