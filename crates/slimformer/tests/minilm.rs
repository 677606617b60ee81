//! The real all-MiniLM-L6-v2 checkpoint (fetched by scripts/fetch-assets.sh)
//! against sentence-transformers' embeddings, computed by scripts/make_fixtures.py.

use slimformer::pipeline::{self, LengthLimit};
use slimformer::pooling::EmbeddingSettings;
use slimformer::tokenize::{Encoded, TextInput};
use slimformer::Pipeline;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn minilm_embeddings_match_sentence_transformers() {
    let dir = root().join("assets/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").exists(),
        "{} is missing: run scripts/fetch-assets.sh first",
        dir.display()
    );
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/minilm/expected.json")).unwrap(),
    )
    .unwrap();
    let settings = EmbeddingSettings::from_dir(&dir).unwrap();
    assert!(settings.normalize, "modules.json has a Normalize module");
    assert_eq!(settings.max_seq_length, Some(256));
    let p = Pipeline::load(&dir, LengthLimit::default(), settings.max_seq_length).unwrap();

    let sentences: Vec<TextInput> = expected["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| TextInput::Single(s.as_str().unwrap().to_string()))
        .collect();
    let encoded: Vec<Encoded> = sentences
        .iter()
        .map(|s| p.tokenizer.encode(s).unwrap())
        .collect();
    for (e, ids) in encoded
        .iter()
        .zip(expected["input_ids"].as_array().unwrap())
    {
        let ids: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(e.ids, ids);
    }
    let refs: Vec<&Encoded> = encoded.iter().collect();
    let ours = pipeline::embed(&settings, p.hidden_states(&refs).unwrap()).unwrap();
    let theirs = expected["embeddings"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(theirs) {
        let t: Vec<f64> = t
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(o.embedding.len(), 384);
        let diff = o
            .embedding
            .iter()
            .zip(&t)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(diff <= 1e-4, "embedding differs by {diff}");
    }
}
