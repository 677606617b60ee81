//! What every embedding route shares: its options (pooling, normalization,
//! Matryoshka dimensions, prompts) checked against the model, as one plan.

use super::validate_inputs;
use crate::engine::{Task, TaskOutput};
use crate::errors::{ApiError, ApiResult, ErrorType};
use crate::state::{AppState, ServedModel};
use slimformer::pooling::{self, Pooling};
use slimformer::tokenize::TextInput;

/// What an embedding request may ask, on every embedding route.
#[derive(Default)]
pub(super) struct EmbedOptions {
    pub pooling: Option<String>,
    pub normalize: Option<bool>,
    /// Matryoshka truncation: the first D values (then normalized if asked).
    pub dimensions: Option<usize>,
    /// One of the model's `prompts`, put before each text.
    pub prompt_name: Option<String>,
    /// A text put before each text (wins over `prompt_name`).
    pub prompt: Option<String>,
}

/// An embedding request's task, and the prompt to put before each input.
pub(super) struct EmbedPlan {
    pub task: Task,
    pub prompt: Option<String>,
}

impl EmbedPlan {
    /// The inputs as the model sees them: the prompt before each (first) text.
    /// They are checked as the client sent them (an empty text stays an error).
    pub fn inputs(&self, state: &AppState, inputs: &[TextInput]) -> ApiResult<Vec<TextInput>> {
        validate_inputs(state, inputs)?;
        Ok(inputs
            .iter()
            .map(|input| match &self.prompt {
                Some(prompt) => input.clone().with_prefix(prompt),
                None => input.clone(),
            })
            .collect())
    }
}

/// The plan of an embedding request for `model`. The server's default prompt
/// (`--default-prompt-name`, `--default-prompt`) is the default model's.
pub(super) fn embed_plan(
    state: &AppState,
    model: &ServedModel,
    options: EmbedOptions,
) -> ApiResult<EmbedPlan> {
    let engine = model.current()?;
    let settings = &engine.embed_settings;
    let invalid = |e: slimformer::Error| ApiError::new(ErrorType::InvalidInput, e.to_string());
    let pooling = match options.pooling.as_deref() {
        Some(p) => vec![p
            .parse::<Pooling>()
            .map_err(|e| ApiError::new(ErrorType::InvalidInput, e))?],
        None => settings.pooling.clone(),
    };
    let normalize = options.normalize.unwrap_or(settings.normalize);
    let full = engine.embedding_size(&pooling);
    let dimensions = pooling::checked_dimensions(options.dimensions, full).map_err(invalid)?;
    let is_default = std::ptr::eq(model, &*state.models[0]);
    let config = &state.config;
    let (default_prompt, default_name) = if is_default {
        (
            config.default_prompt.clone(),
            config.default_prompt_name.clone(),
        )
    } else {
        (None, None)
    };
    // The request's prompt, else its prompt name, else the server's defaults, else
    // the model's default prompt name.
    let prompt = options.prompt.or_else(|| {
        options
            .prompt_name
            .is_none()
            .then_some(default_prompt)
            .flatten()
    });
    // A prompt name must be the model's even beside a prompt text, which wins.
    if let Some(name) = options.prompt_name.as_deref() {
        settings
            .prompts
            .resolve(Some(name), None)
            .map_err(invalid)?;
    }
    let name = options.prompt_name.or(default_name);
    let prompt = settings
        .prompts
        .resolve(name.as_deref(), prompt.as_deref())
        .map_err(invalid)?;
    Ok(EmbedPlan {
        task: Task::Embed {
            pooling,
            normalize,
            dimensions,
        },
        prompt,
    })
}

pub(super) fn embeddings_of(outputs: Vec<TaskOutput>) -> Vec<Vec<f32>> {
    outputs
        .into_iter()
        .map(|o| match o {
            TaskOutput::Embed(e) => e.embedding,
            _ => Vec::new(),
        })
        .collect()
}
