//! Token-labelled data: CoNLL, CoNLL-U and JSON Lines (the first byte picks the format).
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;
use slimformer_train::tagged;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let ext = ["conll", "conllu", "jsonl"][which as usize % 3];
    let path = common::file(&format!("data.{ext}"), body);
    if let Ok(sentences) = tagged::read_tagged(&path) {
        let names = tagged::tag_names(&sentences, None);
        let ids = tagged::tag_ids(&path, &sentences, &names).expect("every tag is in the tag set");
        assert_eq!(ids.len(), sentences.len());
        for (s, i) in sentences.iter().zip(&ids) {
            assert_eq!(s.words.len(), i.len());
            assert_eq!(s.words.len(), s.tags.len());
        }
    }
});
