//! The weight formats beside plain safetensors: `pytorch_model.bin` (a zip of pickles)
//! and slimformer's quantized safetensors (int8 rows with their scales, and the
//! metadata that flags them). The first byte picks which file the input replaces, in a
//! copy of the fixture BERT saved by PyTorch or in an int8 quantization of the fixture.
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The folders, made once per process, and the pristine bytes of the file each replaces.
struct Folders {
    pytorch: PathBuf,
    quantized: PathBuf,
}

fn folders() -> &'static Folders {
    static DIRS: OnceLock<Folders> = OnceLock::new();
    DIRS.get_or_init(|| {
        let pytorch = common::scratch().join("pytorch");
        std::fs::create_dir_all(&pytorch).unwrap();
        for f in ["config.json", "pytorch_model.bin", "tokenizer.json"] {
            std::fs::copy(common::fixture("bert-pth").join(f), pytorch.join(f)).unwrap();
        }
        let quantized = common::scratch().join("quantized");
        slimformer_train::shrink::quantize::quantize(
            &common::fixture("bert-base"),
            &quantized,
            slimformer_train::shrink::quantize::QuantMode::Int8,
        )
        .unwrap();
        Folders { pytorch, quantized }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let dirs = folders();
    let (dir, file) = if which % 2 == 0 {
        (&dirs.pytorch, "pytorch_model.bin")
    } else {
        (&dirs.quantized, "model.safetensors")
    };
    let path = dir.join(file);
    let original = std::fs::read(&path).unwrap();
    std::fs::write(&path, body).unwrap();
    let _ = slimformer::model::Model::load(dir);
    std::fs::write(&path, original).unwrap();
});
