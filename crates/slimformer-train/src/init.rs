//! Models with fresh weights, for pretraining from scratch: every variable drawn from
//! the seeded [`Rng`] as transformers initialises them (normal(0, initializer_range)
//! weights and embeddings, zero biases, LayerNorm weight 1 and bias 0).

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use slimformer::checkpoint::{Checkpoint, CONFIG_FILE};
use slimformer::model::Model;
use slimformer::models::Family;
use slimformer::rng::Rng;
use slimformer::{Error, Result};
use std::collections::HashMap;
use std::path::PathBuf;

/// A model of the family named by `config["model_type"]`, with every encoder weight a
/// new variable of the returned VarMap initialised from `seed`. Heads loaded on it
/// afterwards create their own variables: call [`initialize`] again once they exist
/// (it is deterministic per name, so vars already set get the same values back).
pub fn init_trainable(
    config: serde_json::Value,
    dtype: DType,
    seed: u64,
) -> Result<(Model, VarMap)> {
    let family = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .and_then(Family::from_model_type)
        .ok_or_else(|| Error::file(CONFIG_FILE, "config.json needs a supported \"model_type\""))?;
    let checkpoint = Checkpoint {
        dir: PathBuf::from("."),
        family,
        config,
        tensors: HashMap::new(),
        weight_files: Vec::new(),
        quantization: None,
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu);
    let model = Model::build(checkpoint, vb)?;
    initialize(&varmap, &model.checkpoint.config, seed, |_| true)?;
    Ok((model, varmap))
}

/// (Re)initialises the variables whose names `select` accepts. Each variable draws
/// from its own generator seeded by `seed` and its name, so the result depends on
/// neither the order of creation nor the other variables.
pub fn initialize(
    varmap: &VarMap,
    config: &serde_json::Value,
    seed: u64,
    select: impl Fn(&str) -> bool,
) -> Result<()> {
    let std = config
        .get("initializer_range")
        .and_then(|v| v.as_f64())
        .unwrap_or(slimformer::layers::INIT_STD) as f32;
    let vars = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    for (name, var) in vars.iter().filter(|(n, _)| select(n)) {
        let n = var.elem_count();
        let lower = name.to_ascii_lowercase();
        let is_norm = lower.contains("layernorm") || lower.contains("layer_norm");
        let values: Vec<f32> = if name.ends_with(".bias") || name.ends_with("predictions.bias") {
            vec![0.0; n]
        } else if is_norm && name.ends_with(".weight") {
            vec![1.0; n]
        } else {
            let mut rng = Rng::new(seed ^ name_hash(name));
            (0..n).map(|_| rng.normal() * std).collect()
        };
        let t = Tensor::from_vec(values, var.shape(), var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

/// FNV-1a, stable across runs and platforms.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Tiny configs (`config.json` values) of each family, for tests and smoke runs.
pub fn tiny_config(family: Family, vocab_size: usize) -> serde_json::Value {
    match family {
        Family::Bert | Family::Roberta => serde_json::json!({
            "model_type": family.model_type(), "vocab_size": vocab_size, "hidden_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
            "max_position_embeddings": 64, "type_vocab_size": 2,
            "pad_token_id": 1, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        }),
        Family::DistilBert => serde_json::json!({
            "model_type": "distilbert", "vocab_size": vocab_size, "dim": 16, "n_layers": 2,
            "n_heads": 2, "hidden_dim": 32, "max_position_embeddings": 64, "pad_token_id": 0,
        }),
        Family::Albert => serde_json::json!({
            "model_type": "albert", "vocab_size": vocab_size, "embedding_size": 8,
            "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 32, "max_position_embeddings": 64, "pad_token_id": 0,
            "hidden_act": "gelu_new",
        }),
        Family::XLNet => serde_json::json!({
            "model_type": "xlnet", "vocab_size": vocab_size, "d_model": 16, "n_layer": 2,
            "n_head": 2, "d_inner": 32, "pad_token_id": 5,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initialisation_is_seeded_and_hf_like() -> Result<()> {
        for family in Family::ALL {
            let (_, a) = init_trainable(tiny_config(family, 40), DType::F32, 7)?;
            let (_, b) = init_trainable(tiny_config(family, 40), DType::F32, 7)?;
            let (a, b) = (a.data().lock().unwrap(), b.data().lock().unwrap());
            assert_eq!(a.len(), b.len());
            for (name, var) in a.iter() {
                let x: Vec<f32> = var.flatten_all()?.to_vec1()?;
                let y: Vec<f32> = b[name].flatten_all()?.to_vec1()?;
                assert_eq!(x, y, "{family} {name} differs between equal seeds");
                let lower = name.to_lowercase();
                if (lower.contains("layernorm") || lower.contains("layer_norm"))
                    && name.ends_with(".weight")
                {
                    assert!(x.iter().all(|v| *v == 1.0), "{name}");
                } else if name.ends_with(".bias") {
                    assert!(x.iter().all(|v| *v == 0.0), "{name}");
                } else {
                    let sd = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
                    assert!(sd > 0.005 && sd < 0.05, "{family} {name}: std {sd}");
                }
            }
        }
        Ok(())
    }
}
