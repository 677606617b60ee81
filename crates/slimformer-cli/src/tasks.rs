//! One function per command: load, stream the inputs through the pipeline's
//! length-sorted batches, write the results in input order.

use crate::input::InputArgs;
use anyhow::Context;
use candle_core::Tensor;
use serde::Serialize;
use slimformer::batching::BatchLimits;
use slimformer::heads::{MaskedLmHead, ProblemType, SequenceClassifier, TokenClassifier};
use slimformer::pipeline::{self, LengthLimit, StreamItem};
use slimformer::pooling::{EmbeddingSettings, Pooling};
use slimformer::tagging::{EntitiesOutput, Tagger};
use slimformer::tokenize::Encoded;
use slimformer::{hub, params, Model, Pipeline};
use slimformer_corpus::{ColumnNames, Columnar, Shape, Writer};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct TaskArgs {
    /// A model folder (or a hub model id found in the local Hugging Face cache).
    pub model: String,
    #[command(flatten)]
    pub input: InputArgs,
    /// Truncate texts to this many tokens (default: the model's position limit).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Reject texts that are too long instead of truncating them.
    #[arg(long)]
    pub no_truncate: bool,
}

#[derive(clap::Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Pooling (default: the checkpoint's 1_Pooling/config.json, else mean).
    #[arg(long)]
    pub pooling: Option<Pooling>,
    /// L2-normalize (default: whether modules.json has a Normalize module).
    #[arg(long, overrides_with = "no_normalize")]
    pub normalize: bool,
    #[arg(long, overrides_with = "normalize")]
    pub no_normalize: bool,
    /// Keep the first D values of each embedding (Matryoshka models), then
    /// normalize if normalizing, as sentence-transformers' `truncate_dim`.
    #[arg(long, value_name = "D")]
    pub dimensions: Option<usize>,
    /// Put the model's prompt NAME (config_sentence_transformers.json's `prompts`,
    /// e.g. query) before each text.
    #[arg(long, value_name = "NAME", conflicts_with = "prompt")]
    pub prompt_name: Option<String>,
    /// Put this text before each text.
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
}

#[derive(clap::Args)]
pub struct TagArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Group tokens into entities as transformers' pipeline does (none, simple, first,
    /// average, max), giving {"entities": [...]} per text with character spans;
    /// without it every token is listed with its tag.
    #[arg(long)]
    pub aggregation: Option<slimformer::tagging::Aggregation>,
}

#[derive(clap::Args)]
pub struct FillMaskArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Predictions per mask.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub top_k: u64,
}

#[derive(clap::Args)]
pub struct InspectArgs {
    pub model: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    pub model: String,
    /// Timed runs per shape (the median and p95 are reported).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub runs: u64,
    /// Untimed runs first.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Shapes as BATCHxLEN, comma-separated.
    #[arg(long, default_value = "1x16,1x128,32x128", value_delimiter = ',', value_parser = parse_shape)]
    pub shapes: Vec<(usize, usize)>,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
    /// Time forward passes over this file's texts instead (.txt, .csv, .tsv,
    /// .jsonl or .parquet; the texts in `text`), tokenized, truncated and packed as
    /// `embed --input` packs them; one run is a pass over every batch.
    #[arg(long, value_name = "FILE", conflicts_with = "shapes")]
    pub input: Option<PathBuf>,
}

pub fn parse_shape(s: &str) -> Result<(usize, usize), String> {
    let (b, l) = s
        .split_once('x')
        .ok_or_else(|| format!("{s:?}: expected BATCHxLEN, e.g. 32x128"))?;
    let num = |v: &str| v.parse::<usize>().ok().filter(|&n| n > 0);
    match (num(b), num(l)) {
        (Some(b), Some(l)) => Ok((b, l)),
        _ => Err(format!("{s:?}: expected BATCHxLEN with positive numbers")),
    }
}

pub(crate) fn model_dir(spec: &str) -> anyhow::Result<PathBuf> {
    Ok(hub::resolve_model(spec)?)
}

pub(crate) fn limit(args: &TaskArgs) -> LengthLimit {
    LengthLimit {
        max_len: args.max_len,
        no_truncate: args.no_truncate,
    }
}

/// The window a command reads ahead by default: `encode` keeps every token's
/// states until its window is written, so it reads fewer texts at a time.
const WINDOW: usize = 4096;
const ENCODE_WINDOW: usize = 256;
/// Truncated texts warned about one by one; the rest are counted.
const TRUNCATION_WARNINGS: usize = 5;

/// Streams the inputs through `task` ([`Pipeline::stream`]: read ahead, sorted by
/// length, batched under a token budget) and writes one result per input, in
/// input order. Per-text failures are written in place and make the exit code
/// non-zero; the other texts still run.
fn stream<T: Columnar + Send>(
    pipeline: &Pipeline,
    args: &TaskArgs,
    shape: Shape,
    window: usize,
    check: impl Fn(&Encoded) -> slimformer::Result<()> + Sync,
    task: impl Fn(&[&Encoded], Vec<Tensor>) -> slimformer::Result<Vec<T>>,
) -> anyhow::Result<ExitCode> {
    stream_prompted(pipeline, args, shape, window, None, check, task)
}

/// [`stream`], with `prompt` put before each input's (first) text; the output
/// shows the text as it was read.
fn stream_prompted<T: Columnar + Send>(
    pipeline: &Pipeline,
    args: &TaskArgs,
    shape: Shape,
    window: usize,
    prompt: Option<&str>,
    check: impl Fn(&Encoded) -> slimformer::Result<()> + Sync,
    task: impl Fn(&[&Encoded], Vec<Tensor>) -> slimformer::Result<Vec<T>>,
) -> anyhow::Result<ExitCode> {
    let input = &args.input;
    let mut writer = Writer::create(input.output.as_deref(), shape, input.id_col.is_some())?;
    let items = input.rows()?.map(|row| {
        row.map(|mut row| {
            let input = std::mem::replace(&mut row.input, Err(String::new()));
            StreamItem {
                payload: row,
                input: input.map(|text| match prompt {
                    Some(p) => text.with_prefix(p),
                    None => text,
                }),
            }
        })
    });
    let max_len = pipeline.tokenizer.max_len();
    let (mut seen, mut failed, mut truncated) = (0usize, 0usize, 0usize);
    pipeline.stream(
        items,
        input.stream_options(window),
        check,
        task,
        |row, result| {
            seen += 1;
            match result {
                Ok((output, truncated_from)) => {
                    if let Some(n) = truncated_from {
                        truncated += 1;
                        // The first few by line, then a count: a corpus can hold millions.
                        if truncated <= TRUNCATION_WARNINGS {
                            eprintln!(
                                "slimformer: warning: text {seen} has {n} tokens, truncated to {} \
                                 (--no-truncate makes this an error)",
                                max_len.unwrap_or(n)
                            );
                        }
                    }
                    writer.write(&row, Ok(&output))
                }
                Err(error) => {
                    failed += 1;
                    eprintln!("slimformer: error: text {seen}: {error}");
                    writer.write::<T>(&row, Err(&error))
                }
            }
        },
    )?;
    if seen == 0 {
        anyhow::bail!("no input texts");
    }
    if truncated > TRUNCATION_WARNINGS {
        eprintln!(
            "slimformer: warning: {truncated} of {seen} texts were truncated to {} tokens \
             (warnings for the first {TRUNCATION_WARNINGS} above)",
            max_len.unwrap_or(0)
        );
    }
    writer.finish()?;
    Ok(if failed > 0 {
        eprintln!("slimformer: {failed} of {seen} texts failed");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn no_check(_: &Encoded) -> slimformer::Result<()> {
    Ok(())
}

pub fn encode(args: TaskArgs) -> anyhow::Result<ExitCode> {
    let pipeline = Pipeline::load(&model_dir(&args.model)?, limit(&args), None)?;
    stream(
        &pipeline,
        &args,
        Shape::Records,
        ENCODE_WINDOW,
        no_check,
        pipeline::encode,
    )
}

pub fn embed(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    let dir = model_dir(&args.task.model)?;
    let mut settings = EmbeddingSettings::from_dir(&dir)?;
    if let Some(pooling) = args.pooling {
        settings.pooling = vec![pooling];
    }
    if args.normalize {
        settings.normalize = true;
    }
    if args.no_normalize {
        settings.normalize = false;
    }
    let pipeline = Pipeline::load(&dir, limit(&args.task), settings.max_seq_length)?;
    let full = settings.full_dimensions(pipeline.model.config.hidden_size());
    let settings = settings.truncated(args.dimensions, full)?;
    let prompt = settings
        .prompts
        .resolve(args.prompt_name.as_deref(), args.prompt.as_deref())?;
    let shape = Shape::Embedding {
        dim: settings.dimensions.unwrap_or(full),
    };
    stream_prompted(
        &pipeline,
        &args.task,
        shape,
        WINDOW,
        prompt.as_deref(),
        no_check,
        |_, hidden| pipeline::embed(&settings, hidden),
    )
}

pub fn classify(args: TaskArgs) -> anyhow::Result<ExitCode> {
    let pipeline = Pipeline::load(&model_dir(&args.model)?, limit(&args), None)?;
    let head = SequenceClassifier::load(&pipeline.model)?;
    let shape = match head.labels.problem_type {
        ProblemType::Regression => Shape::Score,
        _ => Shape::Labels {
            names: head.labels.names.clone(),
        },
    };
    stream(&pipeline, &args, shape, WINDOW, no_check, |_, hidden| {
        pipeline::classify(&head, hidden)
    })
}

pub fn tag(args: TagArgs) -> anyhow::Result<ExitCode> {
    let task = &args.task;
    let pipeline = Pipeline::load(&model_dir(&task.model)?, limit(task), None)?;
    let head = TokenClassifier::load(&pipeline.model)?;
    let Some(aggregation) = args.aggregation else {
        return stream(
            &pipeline,
            task,
            Shape::Records,
            WINDOW,
            no_check,
            |texts, hidden| pipeline::tag(&head, texts, hidden),
        );
    };
    let tagger = Tagger::new(&head, &pipeline.tokenizer);
    stream(
        &pipeline,
        task,
        Shape::Records,
        WINDOW,
        no_check,
        |texts, hidden| {
            let entities = tagger.entities(aggregation, texts, hidden)?;
            Ok(entities
                .into_iter()
                .map(|entities| EntitiesOutput { entities })
                .collect())
        },
    )
}

pub fn fill_mask(args: FillMaskArgs) -> anyhow::Result<ExitCode> {
    let pipeline = Pipeline::load(&model_dir(&args.task.model)?, limit(&args.task), None)?;
    let head = MaskedLmHead::load(&pipeline.model)?;
    let top_k = args.top_k as usize;
    stream(
        &pipeline,
        &args.task,
        Shape::Records,
        WINDOW,
        |text| pipeline::require_mask(&pipeline.tokenizer, text),
        |texts, hidden| pipeline::fill_mask(&head, &pipeline.tokenizer, top_k, texts, hidden),
    )
}

#[derive(Serialize)]
struct InspectReport<'a> {
    family: slimformer::models::Family,
    params: params::ParamCounts,
    size_bytes: u64,
    dtype: &'static str,
    /// How the stored weights are quantized (they load as f32).
    quantization: Option<String>,
    /// ALBERT's cross-layer sharing, in words.
    sharing: Option<String>,
    config: &'a serde_json::Value,
}

/// ALBERT's layer sharing in words, including slimformer's partial-sharing extension.
fn sharing_of(config: &serde_json::Value) -> Option<String> {
    if config.get("model_type")?.as_str()? != "albert" {
        return None;
    }
    let n = |k: &str, d: u64| config.get(k).and_then(|v| v.as_u64()).unwrap_or(d);
    let (layers, groups) = (n("num_hidden_layers", 12), n("num_hidden_groups", 1));
    let e = n("embedding_size", 128);
    Some(
        match config.get("slimformer_shared").and_then(|v| v.as_str()) {
            Some(block) => format!(
            "{layers} layers, the {block} block shared in {groups} group(s), the rest per layer; \
             E={e} (slimformer extension: transformers cannot load it)"
        ),
            None if groups == layers => format!("{layers} layers, none shared; E={e}"),
            None => format!("{layers} layers sharing {groups} distinct layer(s); E={e}"),
        },
    )
}

fn dtype_name(dtype: candle_core::DType) -> &'static str {
    use candle_core::DType::*;
    match dtype {
        F32 => "float32",
        F16 => "float16",
        BF16 => "bfloat16",
        F64 => "float64",
        U8 => "uint8",
        I64 => "int64",
        _ => "other",
    }
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let model = Model::load(model_dir(&args.model)?)?;
    let ckpt = &model.checkpoint;
    let report = InspectReport {
        family: ckpt.family,
        params: params::count_parameters(ckpt),
        size_bytes: ckpt.size_bytes(),
        dtype: dtype_name(ckpt.dtype()),
        quantization: ckpt.quantization.clone(),
        sharing: sharing_of(&ckpt.config),
        config: &ckpt.config,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let c = &model.config;
    let p = &report.params;
    let thousands = |n: usize| {
        let s = n.to_string();
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        out
    };
    println!("model        {}", ckpt.dir.display());
    println!("family       {}", report.family);
    println!("hidden size  {}", c.hidden_size());
    match c.max_input_len() {
        Some(n) => println!("max tokens   {n}"),
        None => println!("max tokens   unlimited (relative positions)"),
    }
    println!(
        "parameters   {} (embeddings {}, encoder {}, heads {})",
        thousands(p.total),
        thousands(p.embeddings),
        thousands(p.encoder),
        thousands(p.heads)
    );
    println!(
        "size         {:.1} MiB in {} file(s)",
        report.size_bytes as f64 / (1024.0 * 1024.0),
        ckpt.weight_files.len()
    );
    match &report.quantization {
        Some(q) => println!(
            "dtype        {q} weights, restored to {} on load",
            report.dtype
        ),
        None => println!("dtype        {}", report.dtype),
    }
    if let Some(sharing) = &report.sharing {
        println!("sharing      {sharing}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let dir = model_dir(&args.model)?;
    let threads = candle_core::utils::get_num_threads();
    if let Some(path) = &args.input {
        return bench_corpus(&dir, path, &args, threads);
    }
    let model = Model::load(&dir)?;
    let mut results = Vec::new();
    for &shape in &args.shapes {
        let r = slimformer::bench::bench_shape(
            &model,
            shape,
            args.warmup as usize,
            args.runs as usize,
            threads,
        )
        .with_context(|| format!("benchmark at {}x{}", shape.0, shape.1))?;
        if !args.json {
            println!(
                "{:>8}  {}  threads {}  median {:9.3} ms  p95 {:9.3} ms  ({} runs)",
                r.shape, r.precision, r.threads, r.median_ms, r.p95_ms, r.runs
            );
        }
        results.push(r);
    }
    if args.json {
        println!("{}", serde_json::to_string(&results)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// `bench --input`: the model stage of `embed --input FILE` alone.
fn bench_corpus(
    dir: &Path,
    path: &Path,
    args: &BenchArgs,
    threads: usize,
) -> anyhow::Result<ExitCode> {
    let settings = EmbeddingSettings::from_dir(dir)?;
    let pipeline = Pipeline::load(dir, LengthLimit::default(), settings.max_seq_length)?;
    let source = slimformer_corpus::Source::File(path.to_path_buf());
    let mut texts = Vec::new();
    for row in slimformer_corpus::input::open(&source, false, &ColumnNames::default())? {
        let row = row?;
        let input = row
            .input
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        texts.push(input);
    }
    if texts.is_empty() {
        anyhow::bail!("{}: no texts", path.display());
    }
    let encoded = texts
        .iter()
        .map(|t| pipeline.tokenizer.encode(t))
        .collect::<slimformer::Result<Vec<_>>>()?;
    let r = slimformer::bench::bench_packed(
        &pipeline,
        &encoded,
        BatchLimits::DEFAULT,
        args.warmup as usize,
        args.runs as usize,
        threads,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} texts, {} tokens ({} padded) in {} batches  {}  threads {}  median {:.3} s  p95 {:.3} s  \
             ({} runs)  {:.0} texts/s  {:.0} tokens/s",
            r.texts, r.tokens, r.padded_tokens, r.batches, r.precision, r.threads, r.median_s,
            r.p95_s, r.runs, r.texts_per_s, r.tokens_per_s
        );
    }
    Ok(ExitCode::SUCCESS)
}
