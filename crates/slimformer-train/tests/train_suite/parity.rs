//! Parity with Hugging Face transformers: every family and head, on the tiny
//! random checkpoints and reference outputs that `scripts/make_fixtures.py`
//! writes to tests/fixtures/. Max |difference| ≤ 1e-4.

use candle_core::{DType, Device, IndexOp, Tensor};
use slimformer::heads::{MaskedLmHead, SequenceClassifier, TokenClassifier};
use slimformer::pipeline::LengthLimit;
use slimformer::tokenize::{Encoded, TextInput};
use slimformer::Pipeline;
use std::collections::HashMap;
use std::path::PathBuf;

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

struct Case {
    name: String,
    pipeline: Pipeline,
    head: String,
    batches: Vec<(String, Vec<TextInput>)>,
    expected: HashMap<String, Tensor>,
}

fn load_case(name: &str) -> Case {
    let dir = fixtures().join(name);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let singles = meta["single"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| TextInput::Single(t.as_str().unwrap().to_string()))
        .collect();
    let pairs = meta["pair"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            TextInput::Pair(
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    Case {
        name: name.to_string(),
        pipeline: Pipeline::load(&dir, LengthLimit::default(), None)
            .unwrap_or_else(|e| panic!("{name}: load failed: {e}")),
        head: meta["head"].as_str().unwrap().to_string(),
        batches: vec![("single".into(), singles), ("pair".into(), pairs)],
        expected,
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Keeps the real-token rows of a [batch, len, ...] tensor (padding outputs mean nothing).
fn real_tokens(t: &Tensor, mask: &Tensor) -> Tensor {
    let mask = mask.to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
    let rows: Vec<Tensor> = mask
        .iter()
        .enumerate()
        .flat_map(|(b, row)| {
            row.iter()
                .enumerate()
                .filter(|(_, &m)| m == 1)
                .map(move |(i, _)| t.i((b, i)).unwrap().unsqueeze(0).unwrap())
        })
        .collect();
    Tensor::cat(&rows, 0).unwrap()
}

fn check_case(name: &str) {
    let case = load_case(name);
    let p = &case.pipeline;
    for (batch_name, inputs) in &case.batches {
        let key = |k: &str| format!("{batch_name}.{k}");
        let encoded: Vec<Encoded> = inputs
            .iter()
            .map(|i| p.tokenizer.encode(i).unwrap())
            .collect();
        let refs: Vec<&Encoded> = encoded.iter().collect();
        let batch = p.tokenizer.collate(&refs, &Device::Cpu).unwrap();
        for (ours, theirs) in [
            (&batch.input_ids, "input_ids"),
            (&batch.attention_mask, "attention_mask"),
            (&batch.token_type_ids, "token_type_ids"),
        ] {
            let expected = case.expected[&key(theirs)].to_dtype(DType::U32).unwrap();
            assert_eq!(
                ours.to_vec2::<u32>().unwrap(),
                expected.to_vec2::<u32>().unwrap(),
                "{}: {batch_name} {theirs} differ from the reference tokenizer",
                case.name
            );
        }
        let mask = &batch.attention_mask;
        let hidden = p.model.encoder.forward(&batch).unwrap();
        let diff = max_abs_diff(
            &real_tokens(&hidden, mask),
            &real_tokens(&case.expected[&key("last_hidden_state")], mask),
        );
        assert!(
            diff <= TOLERANCE,
            "{}: {batch_name} last_hidden_state differs by {diff}",
            case.name
        );

        let logits = match case.head.as_str() {
            "base" => None,
            "sequence_classification" => {
                let head = SequenceClassifier::load(&p.model).unwrap();
                Some(head.forward(&hidden).unwrap())
            }
            "token_classification" => {
                let head = TokenClassifier::load(&p.model).unwrap();
                Some(real_tokens(&head.forward(&hidden).unwrap(), mask))
            }
            "permutation_lm" => {
                let head = slimformer_train::pretrain_heads::PlmHead::load(&p.model).unwrap();
                let perm_mask = &case.expected[&key("perm_mask")];
                let target_mapping = &case.expected[&key("target_mapping")];
                Some(
                    head.forward_t(&batch, perm_mask, target_mapping, None)
                        .unwrap(),
                )
            }
            "masked_lm" => {
                let head = MaskedLmHead::load(&p.model).unwrap();
                Some(real_tokens(&head.forward(&hidden).unwrap(), mask))
            }
            other => panic!("{}: unknown head {other}", case.name),
        };
        if let Some(ours) = logits {
            let expected = &case.expected[&key("logits")];
            // Per-sequence ([B, labels]) and per-target ([B, M, V]) logits have no padding.
            let expected = if matches!(
                case.head.as_str(),
                "sequence_classification" | "permutation_lm"
            ) {
                expected.clone()
            } else {
                real_tokens(expected, mask)
            };
            let diff = max_abs_diff(&ours, &expected);
            assert!(
                diff <= TOLERANCE,
                "{}: {batch_name} {} logits differ by {diff}",
                case.name,
                case.head
            );
        }

        // A batched result equals the unbatched one.
        let batched = p.hidden_states(&refs).unwrap();
        for (text, together) in refs.iter().zip(&batched) {
            let alone = &p.hidden_states(&[*text]).unwrap()[0];
            let diff = max_abs_diff(alone, together);
            assert!(
                diff <= 1e-5,
                "{}: batched and unbatched outputs differ by {diff}",
                case.name
            );
        }
    }
}

macro_rules! parity_tests {
    ($($test:ident => $case:literal,)*) => {
        $(#[test] fn $test() { check_case($case); })*

        /// Every fixture folder has a test above.
        #[test]
        fn every_fixture_is_tested() {
            let tested = [$($case),*];
            for entry in std::fs::read_dir(fixtures()).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name().into_string().unwrap();
                if entry.path().join("cases.json").exists() {
                    assert!(tested.contains(&name.as_str()), "fixture {name} has no parity test");
                }
            }
        }
    };
}

parity_tests! {
    bert_base => "bert-base",
    bert_pth => "bert-pth",
    bert_sharded => "bert-sharded",
    bert_seqcls => "bert-seqcls",
    bert_multilabel => "bert-multilabel",
    bert_regression => "bert-regression",
    bert_tokcls => "bert-tokcls",
    bert_mlm => "bert-mlm",
    bert_act_gelu_pytorch_tanh => "bert-act-gelu_pytorch_tanh",
    bert_act_gelu_fast => "bert-act-gelu_fast",
    bert_act_quick_gelu => "bert-act-quick_gelu",
    bert_act_silu => "bert-act-silu",
    bert_act_tanh => "bert-act-tanh",
    roberta_seqcls => "roberta-seqcls",
    roberta_rerank => "roberta-rerank",
    roberta_tokcls => "roberta-tokcls",
    roberta_mlm => "roberta-mlm",
    distilbert_seqcls => "distilbert-seqcls",
    distilbert_tokcls => "distilbert-tokcls",
    distilbert_mlm => "distilbert-mlm",
    albert_shared => "albert-shared",
    albert_groups => "albert-groups",
    albert_inner => "albert-inner",
    albert_groups_inner => "albert-groups-inner",
    xlnet_base => "xlnet-base",
    xlnet_seqcls => "xlnet-seqcls",
    xlnet_tokcls => "xlnet-tokcls",
    xlnet_clamp => "xlnet-clamp",
    xlnet_plm => "xlnet-plm",
}
