//! Ranks sentences by cosine similarity to a query with sentence embeddings.
//!
//!     cargo run --release --example rank -- MODEL_DIR "query" "sentence" "sentence" ...

use slimformer::batching::BatchLimits;
use slimformer::pipeline::{self, LengthLimit};
use slimformer::pooling::EmbeddingSettings;
use slimformer::tokenize::TextInput;
use slimformer::Pipeline;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: rank MODEL_DIR QUERY SENTENCE...";
    let dir = PathBuf::from(args.next().ok_or(usage)?);
    let query = args.next().ok_or(usage)?;
    let sentences: Vec<String> = args.collect();
    if sentences.is_empty() {
        return Err(usage.into());
    }
    let mut settings = EmbeddingSettings::from_dir(&dir)?;
    // Unit vectors: cosine similarity is then a dot product.
    settings.normalize = true;
    let p = Pipeline::load(&dir, LengthLimit::default(), settings.max_seq_length)?;
    let inputs: Vec<TextInput> = std::iter::once(&query)
        .chain(&sentences)
        .map(|t| TextInput::Single(t.clone()))
        .collect();
    let encoded = inputs
        .iter()
        .map(|input| p.tokenizer.encode(input))
        .collect::<Result<Vec<_>, _>>()?;
    let texts: Vec<_> = encoded.iter().collect();
    let embeddings = p
        .run_packed(&texts, BatchLimits::DEFAULT, |_, hidden| {
            pipeline::embed(&settings, hidden)
        })
        .into_iter()
        .map(|r| r.map(|e| e.embedding))
        .collect::<Result<Vec<_>, _>>()?;
    let (q, rest) = embeddings.split_first().ok_or("no embeddings")?;
    let mut ranked: Vec<(f32, &String)> = rest
        .iter()
        .map(|e| e.iter().zip(q).map(|(a, b)| a * b).sum())
        .zip(&sentences)
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!("query: {query}");
    for (score, sentence) in ranked {
        println!("  {score:.4}  {sentence}");
    }
    Ok(())
}
