//! How long a model folder takes to become ready: `cargo run --release -p slimformer
//! --example load [MODEL_DIR]` prints the median of 10 loads, split into the
//! checkpoint (weights read), the model (layers built), the tokenizer and the first
//! forward pass of one short sentence (which packs the weights for the kernels).
use slimformer::pipeline::{LengthLimit, Pipeline};
use std::path::PathBuf;
use std::time::Instant;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> slimformer::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "assets/all-MiniLM-L6-v2".into()),
    );
    let (mut open, mut load, mut first) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..10 {
        let t = Instant::now();
        drop(slimformer::checkpoint::Checkpoint::open(&dir)?);
        open.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let pipeline = Pipeline::load(&dir, LengthLimit::default(), None)?;
        load.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let input = slimformer::tokenize::TextInput::Single("A short sentence to warm up.".into());
        let text = pipeline.tokenizer.encode(&input)?;
        pipeline.hidden_states(&[&text])?;
        first.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "checkpoint read {:.1} ms, model + tokenizer ready {:.1} ms, first forward {:.1} ms",
        median(open),
        median(load),
        median(first)
    );
    Ok(())
}
