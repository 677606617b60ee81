//! Tokenization of arbitrary UTF-8 (text, pair, pre-split words, truncation both ways) and
//! decoding of arbitrary ids, with the fixture BERT's WordPiece and RoBERTa's byte-level BPE.
#![no_main]
mod common;
use libfuzzer_sys::fuzz_target;
use slimformer::tokenize::{Padding, TextInput, TextTokenizer, Truncation, TruncationSide};
use std::sync::OnceLock;

fn tokenizers() -> &'static [TextTokenizer; 2] {
    static T: OnceLock<[TextTokenizer; 2]> = OnceLock::new();
    T.get_or_init(|| {
        let padding = Padding {
            id: 0,
            type_id: 0,
            left: false,
        };
        let load =
            |name| TextTokenizer::load(&common::fixture(name), padding, Some(16), true).unwrap();
        [load("bert-base"), load("roberta-mlm")]
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for tokenizer in tokenizers() {
        let input = match text.split_once('\t') {
            Some((a, b)) => TextInput::Pair(a.into(), b.into()),
            None => TextInput::Single(text.into()),
        };
        for side in [TruncationSide::Right, TruncationSide::Left] {
            let truncation = Truncation {
                enabled: Some(true),
                side,
                keep_first: true,
            };
            if let Ok(e) = tokenizer.encode_truncating(&input, truncation) {
                assert!(e.ids.len() <= 16, "truncated to the limit");
                assert_eq!(e.ids.len(), e.offsets.len());
                let _ = tokenizer.decode(&e.ids, true);
            }
        }
        let words: Vec<String> = text.split_whitespace().map(String::from).collect();
        if !words.is_empty() {
            if let Ok(e) = tokenizer.encode_words(&words) {
                assert!(e
                    .word_ids
                    .iter()
                    .flatten()
                    .all(|&w| (w as usize) < words.len()));
            }
        }
        let ids: Vec<u32> = data
            .chunks(2)
            .map(|c| c[0] as u32 * 256 + *c.get(1).unwrap_or(&0) as u32)
            .collect();
        let _ = tokenizer.decode(&ids, false);
    }
});
