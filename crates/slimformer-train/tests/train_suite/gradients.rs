//! Gradients of the pretraining objectives on tiny random models of every family:
//! every trainable parameter on the objective's path gets a non-zero gradient, and
//! backprop agrees with central finite differences in f64.

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use candle_nn::VarMap;
use slimformer::heads::MaskedLmHead;
use slimformer::models::{Batch, Family};
use slimformer::rng::Rng;
use slimformer::{Model, Result};
use slimformer_train::init::{init_trainable, initialize, tiny_config};
use slimformer_train::objectives::mlm::{mask_example, MaskingMode, MlmConfig};
use slimformer_train::objectives::plm::{plm_targets, PlmConfig};
use slimformer_train::objectives::{mlm_loss, plm_loss, sentence_pair_loss};
use slimformer_train::pretrain_heads::{PlmHead, SentencePairHead};

const VOCAB: usize = 60;
const LEN: usize = 10;

/// A model, its vars, and the loss of its objective on a fixed batch.
struct Case {
    name: &'static str,
    varmap: VarMap,
    loss: Box<dyn Fn() -> Result<Tensor>>,
}

fn u32s(rows: &[Vec<u32>]) -> Result<Tensor> {
    Ok(Tensor::new(rows.to_vec(), &Device::Cpu)?)
}

fn case(name: &'static str, family: Family, pair: bool) -> Result<Case> {
    let config = tiny_config(family, VOCAB);
    let (model, varmap) = init_trainable(config.clone(), DType::F64, 1)?;
    let mut rng = Rng::new(2);
    let ids: Vec<Vec<u32>> = (0..2)
        .map(|_| (0..LEN).map(|_| 6 + rng.below(VOCAB - 6) as u32).collect())
        .collect();
    if family == Family::XLNet {
        return xlnet_case(name, model, varmap, config, ids, rng);
    }
    let mlm = MaskedLmHead::load(&model)?;
    let pair_head = if pair {
        Some(SentencePairHead::load(&model)?)
    } else {
        None
    };
    // Head variables were created with candle's generator: re-seed everything.
    initialize(&varmap, &config, 1, |_| true)?;
    // Example 1 padded on the right; [CLS]=2 first, [SEP]=3 at the end of A and B.
    let (cls, sep, mask_id, pad) = (2u32, 3u32, 4u32, 0u32);
    let mut ids = ids;
    let mut attention = vec![vec![1u32; LEN]; 2];
    for (e, row) in ids.iter_mut().enumerate() {
        row[0] = cls;
        row[4] = sep;
        let end = if e == 1 { LEN - 3 } else { LEN - 1 };
        row[end] = sep;
        for j in end + 1..LEN {
            row[j] = pad;
            attention[e][j] = 0;
        }
    }
    let special: Vec<Vec<bool>> = ids
        .iter()
        .map(|r| r.iter().map(|&t| t < 6).collect())
        .collect();
    let cfg = MlmConfig {
        select_prob: 0.4,
        mode: MaskingMode::Static { seed: 3 },
        ..MlmConfig::new(mask_id, (6..VOCAB as u32).collect())
    };
    let masked: Vec<_> = (0..2)
        .map(|e| mask_example(&cfg, &ids[e], &special[e], None, e as u64, &mut rng))
        .collect();
    let input: Vec<Vec<u32>> = masked.iter().map(|m| m.input_ids.clone()).collect();
    let labels: Vec<Vec<i64>> = masked.iter().map(|m| m.labels.clone()).collect();
    assert!(labels.iter().flatten().any(|l| *l >= 0), "no MLM targets");
    let types: Vec<Vec<u32>> = (0..2)
        .map(|_| (0..LEN).map(|j| (j > 4) as u32).collect())
        .collect();
    let batch = Batch {
        input_ids: u32s(&input)?,
        attention_mask: u32s(&attention)?,
        token_type_ids: u32s(&types)?,
    };
    let labels = Tensor::new(labels, &Device::Cpu)?;
    let pair_labels = Tensor::new(&[0i64, 1], &Device::Cpu)?;
    let loss = move || -> Result<Tensor> {
        let hidden = model.encoder.forward_t(&batch, None)?;
        let mut loss = mlm_loss(&mlm.forward(&hidden)?, &labels)?;
        if let Some(head) = &pair_head {
            let logits = head.forward_t(&hidden, None)?;
            loss = (loss + sentence_pair_loss(&logits, &pair_labels)?)?;
        }
        Ok(loss)
    };
    Ok(Case {
        name,
        varmap,
        loss: Box::new(loss),
    })
}

fn xlnet_case(
    name: &'static str,
    model: Model,
    varmap: VarMap,
    config: serde_json::Value,
    mut ids: Vec<Vec<u32>>,
    mut rng: Rng,
) -> Result<Case> {
    let head = PlmHead::load(&model)?;
    initialize(&varmap, &config, 1, |_| true)?;
    // XLNet: left padding (id 5, type 3) in example 0, text, <sep>=4, <cls>=3 (type 2).
    let mut attention = vec![vec![1u32; LEN]; 2];
    let mut types = vec![vec![0u32; LEN]; 2];
    for e in 0..2 {
        ids[e][LEN - 2] = 4;
        ids[e][LEN - 1] = 3;
        types[e][LEN - 1] = 2;
        (5..LEN - 1).for_each(|j| types[e][j] = 1);
    }
    for j in 0..2 {
        ids[0][j] = 5;
        attention[0][j] = 0;
        types[0][j] = 3;
    }
    let special: Vec<Vec<bool>> = ids
        .iter()
        .map(|r| r.iter().map(|&t| t < 6).collect())
        .collect();
    // One target in 3 tokens, so that every example predicts a few.
    let cfg = PlmConfig {
        tokens_per_target: 3,
        ..PlmConfig::new(4)
    };
    let t = plm_targets(&ids, &attention, &special, &cfg, &mut rng, &Device::Cpu)?;
    let batch = Batch {
        input_ids: u32s(&t.input_ids)?,
        attention_mask: u32s(&attention)?,
        token_type_ids: u32s(&types)?,
    };
    let loss = move || -> Result<Tensor> {
        let logits = head.forward_t(&batch, &t.perm_mask, &t.target_mapping, None)?;
        plm_loss(&logits, &t.labels)
    };
    Ok(Case {
        name,
        varmap,
        loss: Box::new(loss),
    })
}

fn cases() -> Result<Vec<Case>> {
    Ok(vec![
        case("bert mlm+nsp", Family::Bert, true)?,
        case("roberta mlm", Family::Roberta, false)?,
        case("albert mlm+sop", Family::Albert, true)?,
        case("distilbert mlm", Family::DistilBert, false)?,
        case("xlnet plm", Family::XLNet, false)?,
    ])
}

fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let mut vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

fn grads(case: &Case) -> Result<GradStore> {
    Ok((case.loss)()?.backward()?)
}

#[test]
fn every_parameter_on_the_path_gets_a_gradient() -> Result<()> {
    for case in cases()? {
        let grads = grads(&case)?;
        let vars = sorted_vars(&case.varmap);
        assert!(vars.len() > 10, "{}: only {} vars", case.name, vars.len());
        for (name, var) in vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{}: no gradient for {name}", case.name));
            let norm = g.abs()?.sum_all()?.to_scalar::<f64>()?;
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{}: {name} gradient {norm}",
                case.name
            );
        }
    }
    Ok(())
}

#[test]
fn gradients_match_finite_differences() -> Result<()> {
    let eps = 1e-5;
    let mut worst = 0f64;
    for case in cases()? {
        let grads = grads(&case)?;
        let mut rng = Rng::new(9);
        let mut case_worst = 0f64;
        for (name, var) in sorted_vars(&case.varmap) {
            let g: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()?
                .to_vec1()?;
            let base: Vec<f64> = var.flatten_all()?.to_vec1()?;
            // The entry with the largest gradient, and a random one.
            let argmax = (0..g.len())
                .max_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()))
                .unwrap();
            for k in [argmax, rng.below(g.len())] {
                let at = |delta: f64| -> Result<f64> {
                    let mut v = base.clone();
                    v[k] += delta;
                    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu)?)?;
                    Ok((case.loss)()?.to_scalar::<f64>()?)
                };
                let fd = (at(eps)? - at(-eps)?) / (2.0 * eps);
                var.set(&Tensor::from_vec(base.clone(), var.shape(), &Device::Cpu)?)?;
                let scale = fd.abs().max(g[k].abs());
                if scale < 1e-6 {
                    continue; // both ~0: nothing to compare
                }
                let rel = (fd - g[k]).abs() / scale;
                assert!(
                    rel < 1e-3,
                    "{}: {name}[{k}] backprop {} vs fd {fd}",
                    case.name,
                    g[k]
                );
                case_worst = case_worst.max(rel);
            }
        }
        eprintln!("{}: max relative error {case_worst:.2e}", case.name);
        worst = worst.max(case_worst);
    }
    eprintln!("finite differences: max relative error {worst:.2e}");
    Ok(())
}
