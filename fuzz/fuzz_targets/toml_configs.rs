//! retrain.toml and study.toml (the first byte picks which).
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        let path = common::file("retrain.toml", body);
        let _ = slimformer_retrain::RetrainConfig::load(&path);
    } else {
        let path = common::file("study.toml", body);
        let _ = slimformer_study::study::StudyConfig::load(&path);
    }
});
