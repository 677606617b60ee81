//! The compute backend: one loaded model version with its tokenizers and heads,
//! and the task outputs (the same objects the command line prints).

use slimformer::heads::{MaskedLmHead, SequenceClassifier, TokenClassifier};
use slimformer::layers::Precision;
use slimformer::memory::MemoryShape;
use slimformer::params::{count_parameters, ParamCounts};
use slimformer::pipeline::{self, LengthLimit, Pipeline};
use slimformer::pooling::{EmbeddingSettings, Pooling};
use slimformer::rerank::{self, Scorer};
use slimformer::tagging::{Aggregation, EntitiesOutput, Tagger};
use slimformer::tokenize::{Encoded, TextInput, TextTokenizer, Truncation};
use slimformer::Result;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

/// A task the batching queue runs.
#[derive(Debug, Clone)]
pub enum Task {
    Classify,
    Embed {
        pooling: Vec<Pooling>,
        normalize: bool,
        /// Keep the first this many values (checked against the model's size).
        dimensions: Option<usize>,
    },
    /// Every token's last hidden state (TEI's `/embed_all`).
    EmbedAll,
    FillMask {
        top_k: usize,
    },
    /// A cross-encoder's score of each (query, document) pair.
    Rerank {
        raw: bool,
    },
    /// A token classifier's entities.
    Tag {
        aggregation: Aggregation,
    },
}

/// One input's result.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(untagged)]
pub enum TaskOutput {
    Classify(pipeline::ClassifyOutput),
    Embed(pipeline::EmbedOutput),
    FillMask(pipeline::FillMaskOutput),
    Score(f32),
    /// One vector per token.
    Tokens(Vec<Vec<f32>>),
    Entities(EntitiesOutput),
}

pub struct Engine {
    /// The model's name (its folder's).
    pub name: String,
    /// The registry version, or "local" for a plain folder.
    pub version: String,
    pub dir: PathBuf,
    pub pipeline: Pipeline,
    /// Truncates to sentence-transformers' `max_seq_length` too.
    pub embed_tokenizer: TextTokenizer,
    pub embed_settings: EmbeddingSettings,
    pub classifier: Option<SequenceClassifier>,
    pub mlm: Option<MaskedLmHead>,
    pub tagger: Option<TokenClassifier>,
    /// How `/rerank` scores pairs, or why this model cannot.
    pub reranker: std::result::Result<Scorer, String>,
    pub params: ParamCounts,
    pub quantization: Option<String>,
    /// What its forward passes and answers cost in memory.
    pub memory: MemoryShape,
    /// Last, so that it drops after the weights.
    _returns_freed_memory: ReturnsFreedMemory,
}

/// Counts an engine in memory, and gives freed memory back to the system once it is
/// gone (a version replaced by a reload, its last request answered): see
/// [`crate::memory::return_freed_memory`].
struct ReturnsFreedMemory;

impl ReturnsFreedMemory {
    fn new() -> Self {
        crate::metrics::VERSIONS_IN_MEMORY.fetch_add(1, Ordering::Relaxed);
        ReturnsFreedMemory
    }
}

impl Drop for ReturnsFreedMemory {
    fn drop(&mut self) {
        crate::metrics::VERSIONS_IN_MEMORY.fetch_sub(1, Ordering::Relaxed);
        crate::memory::return_freed_memory();
        let resident_mb = crate::memory::resident_bytes().map(|b| b >> 20);
        tracing::info!(?resident_mb, "a replaced version's memory is released");
    }
}

impl Engine {
    pub fn load(dir: &Path, version: &str, limit: LengthLimit) -> Result<Engine> {
        let embed_settings = EmbeddingSettings::from_dir(dir)?;
        let pipeline = Pipeline::load(dir, limit, None)?;
        let model_limit = pipeline.model.config.max_input_len();
        let embed_len = [limit.max_len, model_limit, embed_settings.max_seq_length]
            .into_iter()
            .flatten()
            .min();
        let embed_tokenizer = TextTokenizer::load(
            dir,
            pipeline.model.config.padding(),
            embed_len,
            !limit.no_truncate,
        )?;
        let classifier = SequenceClassifier::load(&pipeline.model).ok();
        let mlm = MaskedLmHead::load(&pipeline.model).ok();
        let tagger = TokenClassifier::load(&pipeline.model).ok();
        let reranker =
            Scorer::new(classifier.clone(), embed_settings.clone()).map_err(|e| e.to_string());
        let params = count_parameters(&pipeline.model.checkpoint);
        let quantization = pipeline.model.checkpoint.quantization.clone();
        // int8 and bf16 arithmetic packs a copy of each matrix, 1 or 2 bytes a weight.
        let packed = match slimformer::layers::precision() {
            Precision::Fp32 => 0,
            Precision::Int8 => 1,
            Precision::Bf16 => 2,
        };
        let memory = MemoryShape::of(&pipeline.model, params.total, packed);
        let name = dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        Ok(Engine {
            name,
            version: version.to_string(),
            dir: dir.to_path_buf(),
            pipeline,
            embed_tokenizer,
            embed_settings,
            classifier,
            mlm,
            tagger,
            reranker,
            params,
            quantization,
            memory,
            _returns_freed_memory: ReturnsFreedMemory::new(),
        })
    }

    /// The tasks this model can do.
    pub fn tasks(&self) -> Vec<&'static str> {
        let mut tasks = vec!["embed", "tokenize"];
        if self.classifier.is_some() {
            tasks.push("classify");
        }
        if self.mlm.is_some() {
            tasks.push("fill-mask");
        }
        if self.tagger.is_some() {
            tasks.push("tag");
        }
        if self.reranker.is_ok() {
            tasks.push("rerank");
        }
        tasks
    }

    /// The length of this model's embeddings with `pooling`, before truncation.
    pub fn embedding_size(&self, pooling: &[Pooling]) -> usize {
        self.pipeline.model.config.hidden_size() * pooling.len()
    }

    /// The tokenizer a task uses (embeddings have their own length limit).
    pub fn tokenizer_for(&self, task: &Task) -> &TextTokenizer {
        match task {
            Task::Embed { .. } | Task::EmbedAll => &self.embed_tokenizer,
            _ => &self.pipeline.tokenizer,
        }
    }

    /// Tokenizes one input for `task`, a too-long one handled as `truncation` asks.
    pub fn encode(
        &self,
        task: &Task,
        input: &TextInput,
        truncation: Truncation,
    ) -> Result<Encoded> {
        // A reranked document is cut to fit beside its query, never the query.
        let truncation = Truncation {
            keep_first: matches!(task, Task::Rerank { .. }),
            ..truncation
        };
        let encoded = self
            .tokenizer_for(task)
            .encode_truncating(input, truncation)?;
        if let Task::FillMask { .. } = task {
            pipeline::require_mask(&self.pipeline.tokenizer, &encoded)?;
        }
        Ok(encoded)
    }

    /// One task's outputs from its texts' hidden states.
    pub fn finish(
        &self,
        task: &Task,
        texts: &[&Encoded],
        hidden: Vec<candle_core::Tensor>,
    ) -> Result<Vec<TaskOutput>> {
        Ok(match task {
            Task::Classify => {
                let head = self.classifier.as_ref().ok_or_else(|| {
                    slimformer::Error::Input("the model has no classification head".into())
                })?;
                pipeline::classify(head, hidden)?
                    .into_iter()
                    .map(TaskOutput::Classify)
                    .collect()
            }
            Task::Embed {
                pooling,
                normalize,
                dimensions,
            } => {
                let settings = EmbeddingSettings {
                    pooling: pooling.clone(),
                    normalize: *normalize,
                    dimensions: *dimensions,
                    ..self.embed_settings.clone()
                };
                pipeline::embed(&settings, hidden)?
                    .into_iter()
                    .map(TaskOutput::Embed)
                    .collect()
            }
            Task::EmbedAll => hidden
                .iter()
                .map(|h| Ok(TaskOutput::Tokens(h.to_vec2::<f32>()?)))
                .collect::<Result<Vec<_>>>()?,
            Task::Rerank { raw } => {
                let Ok(Scorer::CrossEncoder(head)) = &self.reranker else {
                    return Err(slimformer::Error::Input(
                        "the model is no cross-encoder".into(),
                    ));
                };
                rerank::cross_scores(head, hidden, *raw)?
                    .into_iter()
                    .map(TaskOutput::Score)
                    .collect()
            }
            Task::Tag { aggregation } => {
                let head = self.tagger.as_ref().ok_or_else(|| {
                    slimformer::Error::Input("the model has no token-classification head".into())
                })?;
                Tagger::new(head, &self.pipeline.tokenizer)
                    .entities(*aggregation, texts, hidden)?
                    .into_iter()
                    .map(|entities| TaskOutput::Entities(EntitiesOutput { entities }))
                    .collect()
            }
            Task::FillMask { top_k } => {
                let head = self.mlm.as_ref().ok_or_else(|| {
                    slimformer::Error::Input("the model has no masked-LM head".into())
                })?;
                pipeline::fill_mask(head, &self.pipeline.tokenizer, *top_k, texts, hidden)?
                    .into_iter()
                    .map(TaskOutput::FillMask)
                    .collect()
            }
        })
    }

    /// Runs every task the model has on a short text: a version that fails this is
    /// never switched to.
    pub fn smoke_test(&self) -> Result<()> {
        let input = TextInput::Single("hello".into());
        let mut tasks = vec![Task::Embed {
            pooling: self.embed_settings.pooling.clone(),
            normalize: self.embed_settings.normalize,
            dimensions: None,
        }];
        if self.classifier.is_some() {
            tasks.push(Task::Classify);
        }
        if self.tagger.is_some() {
            tasks.push(Task::Tag {
                aggregation: Aggregation::Simple,
            });
        }
        for task in tasks {
            let encoded = self.encode(&task, &input, Truncation::default())?;
            let hidden = self.pipeline.hidden_states(&[&encoded])?;
            let out = self.finish(&task, &[&encoded], hidden)?;
            let json = serde_json::to_value(&out)
                .map_err(|e| slimformer::Error::Input(format!("smoke test output: {e}")))?;
            if json.to_string().contains("null") {
                return Err(slimformer::Error::Input(
                    "smoke test: the model produced non-finite outputs".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The engine being served, swapped whole.
#[derive(Default)]
pub struct EngineSlot {
    current: RwLock<Option<Arc<Engine>>>,
    /// Serializes reloads.
    pub(crate) reloading: tokio::sync::Mutex<()>,
}

impl EngineSlot {
    pub fn current(&self) -> Option<Arc<Engine>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set(&self, engine: Arc<Engine>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(engine);
    }
}
