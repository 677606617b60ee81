//! `slimformer rerank`: documents ranked against a query, best first.

use crate::tasks::{limit, model_dir, TaskArgs};
use anyhow::{bail, Context};
use slimformer::heads::SequenceClassifier;
use slimformer::pooling::EmbeddingSettings;
use slimformer::rerank::{self, Scorer};
use slimformer::tokenize::{Encoded, TextInput};
use slimformer::Pipeline;
use std::io::Write;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct RerankArgs {
    /// The documents: --text (repeatable), --input FILE or standard input.
    #[command(flatten)]
    pub task: TaskArgs,
    /// The text the documents are ranked against.
    #[arg(long)]
    pub query: String,
    /// Print only the best N.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub top_n: Option<u64>,
    /// A cross-encoder's raw logit instead of its probability.
    #[arg(long)]
    pub raw_scores: bool,
}

pub fn rerank(args: RerankArgs) -> anyhow::Result<ExitCode> {
    if args.query.trim().is_empty() {
        bail!("--query is empty: give the text to rank the documents against");
    }
    let documents = read_documents(&args.task)?;
    let dir = model_dir(&args.task.model)?;
    let settings = EmbeddingSettings::from_dir(&dir)?;
    let mut pipeline = Pipeline::load(&dir, limit(&args.task), None)?;
    let scorer = Scorer::new(SequenceClassifier::load(&pipeline.model).ok(), settings)?;
    let limits = args.task.input.stream_options(0).limits;
    let query = &args.query;
    let scores: Vec<std::result::Result<f32, String>> = match &scorer {
        Scorer::CrossEncoder(head) => {
            let pairs = encode_all(documents.iter().map(|d| {
                pipeline
                    .tokenizer
                    .encode_keeping_first(&TextInput::Pair(query.clone(), d.clone()))
            }))?;
            let refs: Vec<&Encoded> = pairs.iter().collect();
            pipeline.run_packed(&refs, limits, |_, hidden| {
                rerank::cross_scores(head, hidden, args.raw_scores)
            })
        }
        Scorer::Embedding(settings) => {
            // Embeddings truncate as `embed` does (sentence-transformers' max_seq_length).
            pipeline.tokenizer = Pipeline::tokenizer(
                &dir,
                &pipeline.model,
                limit(&args.task),
                settings.max_seq_length,
            )?;
            let texts = encode_all(
                std::iter::once(query)
                    .chain(&documents)
                    .map(|t| pipeline.tokenizer.encode(&TextInput::Single(t.clone()))),
            )?;
            let refs: Vec<&Encoded> = texts.iter().collect();
            let mut vectors = pipeline
                .run_packed(&refs, limits, |_, hidden| {
                    rerank::embeddings(settings, hidden)
                })
                .into_iter();
            let query_vector = vectors
                .next()
                .expect("the query was embedded")
                .map_err(|e| anyhow::anyhow!("the query: {e}"))?;
            vectors
                .map(|v| v.map(|v| rerank::cosine(&query_vector, &v)))
                .collect()
        }
    };
    let scores = scores
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.map_err(|e| anyhow::anyhow!("document {i}: {e}")))
        .collect::<anyhow::Result<Vec<f32>>>()?;
    let mut out = std::io::stdout().lock();
    for index in rerank::ranked(&scores, args.top_n.map(|n| n as usize)) {
        let line = serde_json::json!({
            "index": index,
            "score": scores[index],
            "text": documents[index],
        });
        writeln!(out, "{line}").context("standard output: cannot write")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Every document's text, in input order; a row that cannot be read is an error.
fn read_documents(task: &TaskArgs) -> anyhow::Result<Vec<String>> {
    if task.input.pairs || task.input.pair_col.is_some() {
        bail!("rerank takes single documents: the query is the pair's first text");
    }
    let mut documents = Vec::new();
    for (i, row) in task.input.rows()?.enumerate() {
        let row = row?;
        match row.input {
            Ok(TextInput::Single(text)) if !text.trim().is_empty() => documents.push(text),
            Ok(_) => bail!("document {i} is empty"),
            Err(e) => bail!("document {i}: {e}"),
        }
    }
    if documents.is_empty() {
        bail!("no documents: give --text, --input FILE or documents on standard input");
    }
    Ok(documents)
}

fn encode_all(
    texts: impl Iterator<Item = slimformer::Result<Encoded>>,
) -> anyhow::Result<Vec<Encoded>> {
    texts
        .enumerate()
        .map(|(i, e)| e.with_context(|| format!("input {i}")))
        .collect()
}
