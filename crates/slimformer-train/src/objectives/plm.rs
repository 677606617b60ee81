//! Permutation language modelling (XLNet, Yang et al. 2019, §2.2–2.3), with the
//! targets, the masked inputs and the factorization order built as transformers'
//! `DataCollatorForPermutationLanguageModeling` builds them (which follows the
//! original XLNet code's `_local_perm`):
//!
//! - **Targets** are spans: walking along the sequence, each window of `6·s` tokens
//!   (`s` drawn from 1..=5) holds one span of `s` predicted tokens at a random place in
//!   it, so about 1/6 of the tokens are predicted. Special tokens and padding never are.
//!   A target's input becomes the mask token.
//! - **Order**: the positions get a random factorization order; every token that is
//!   neither a target nor special (the context) is put before all of them. So the
//!   context sees the whole context and no target; a target sees the context and the
//!   targets before it in the order. transformers' order keeps the two halves of the
//!   sequence apart (a permutation of the first half, the same permutation shifted onto
//!   the second), a precaution for the memory it can reuse across segments.
//!
//! `perm_mask[i, j] = 1` means i may not attend to j. The model's content stream then
//! adds i itself back, as HF's `XLNetModel` treats `perm_mask`; a target hides itself
//! from its own query stream, which is what predicts it.

use super::IGNORE;
use candle_core::{Device, Tensor};
use slimformer::rng::Rng;
use slimformer::Result;

/// transformers' defaults: spans of 1 to 5 targets, one in every 6 tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlmConfig {
    pub mask_token_id: u32,
    /// The longest span of targets (`max_span_length`).
    pub max_span_length: usize,
    /// Tokens per predicted token (`1 / plm_probability`).
    pub tokens_per_target: usize,
}

impl PlmConfig {
    pub fn new(mask_token_id: u32) -> Self {
        Self {
            mask_token_id,
            max_span_length: 5,
            tokens_per_target: 6,
        }
    }
}

/// What [`slimformer::models::xlnet::XLNet::forward_two_stream`] and the PLM loss need.
#[derive(Debug, Clone)]
pub struct PlmTargets {
    /// The inputs with the targets replaced by the mask token, [batch][len].
    pub input_ids: Vec<Vec<u32>>,
    /// f32 [batch, len, len].
    pub perm_mask: Tensor,
    /// f32 [batch, num_predict, len]; rows past an example's targets are zero.
    pub target_mapping: Tensor,
    /// i64 [batch, num_predict]; [`IGNORE`] in padding rows.
    pub labels: Tensor,
    /// Each example's target positions, in place order.
    pub targets: Vec<Vec<usize>>,
}

/// Which of `len` positions are predicted: one span of 1..=`max_span_length` tokens in
/// each window of `tokens_per_target` times its length, at a random place in the window;
/// then special tokens and padding (`eligible[i] == false`) are left out.
pub fn sample_targets(eligible: &[bool], cfg: &PlmConfig, rng: &mut Rng) -> Vec<bool> {
    let len = eligible.len();
    let mut masked = vec![false; len];
    let mut done = 0;
    while done < len {
        let span = 1 + rng.below(cfg.max_span_length.max(1));
        let window = span * cfg.tokens_per_target.max(1);
        let start = done + rng.below(window - span + 1);
        for flag in masked.iter_mut().take((start + span).min(len)).skip(start) {
            *flag = true;
        }
        done += window;
    }
    masked.iter().zip(eligible).map(|(&m, &e)| m && e).collect()
}

/// transformers' factorization order over `len` positions: a random permutation of the
/// first half's positions, and the same one shifted onto the second half (an odd
/// length's last position comes last).
pub fn factorization_order(len: usize, rng: &mut Rng) -> Vec<i64> {
    let half = len / 2;
    let mut first: Vec<i64> = (0..half as i64).collect();
    rng.shuffle(&mut first);
    let mut order = first.clone();
    order.extend(first.iter().map(|p| p + half as i64));
    if len % 2 == 1 {
        order.push(len as i64 - 1);
    }
    order
}

/// Targets for a padded batch: `ids`, `attention_mask` (1 real, 0 padding) and
/// `special` flags per example, all of one length.
pub fn plm_targets(
    ids: &[Vec<u32>],
    attention_mask: &[Vec<u32>],
    special: &[Vec<bool>],
    cfg: &PlmConfig,
    rng: &mut Rng,
    device: &Device,
) -> Result<PlmTargets> {
    let b = ids.len();
    let l = ids.first().map_or(0, |r| r.len());
    let mut perm = vec![0f32; b * l * l];
    let mut targets: Vec<Vec<usize>> = Vec::with_capacity(b);
    let mut input_ids = ids.to_vec();
    for e in 0..b {
        let context: Vec<bool> = (0..l)
            .map(|i| attention_mask[e][i] != 0 && !special[e][i])
            .collect();
        let masked = sample_targets(&context, cfg, rng);
        let mut order = factorization_order(l, rng);
        for i in 0..l {
            if context[i] && !masked[i] {
                // The context comes before every target: it is seen by all, and sees none.
                order[i] = -1;
            }
        }
        for i in 0..l {
            for j in 0..l {
                let hidden = masked[j] && order[i] <= order[j];
                perm[(e * l + i) * l + j] = hidden as u8 as f32;
            }
        }
        let positions: Vec<usize> = (0..l).filter(|&i| masked[i]).collect();
        for &p in &positions {
            input_ids[e][p] = cfg.mask_token_id;
        }
        targets.push(positions);
    }
    let m = targets.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
    let mut mapping = vec![0f32; b * m * l];
    let mut labels = vec![IGNORE; b * m];
    for (e, t) in targets.iter().enumerate() {
        for (k, &p) in t.iter().enumerate() {
            mapping[(e * m + k) * l + p] = 1.0;
            labels[e * m + k] = ids[e][p] as i64;
        }
    }
    Ok(PlmTargets {
        input_ids,
        perm_mask: Tensor::from_vec(perm, (b, l, l), device)?,
        target_mapping: Tensor::from_vec(mapping, (b, m, l), device)?,
        labels: Tensor::from_vec(labels, (b, m), device)?,
        targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use slimformer::models::xlnet::two_stream_masks;

    const MASK: u32 = 6;

    #[test]
    fn masks_give_the_context_the_collator_gives() -> Result<()> {
        let mut rng = Rng::new(11);
        // XLNet layout: left padding, then text, <sep>, <cls>; 24 and 25 tokens.
        let mut ids: Vec<Vec<u32>> = vec![(0..25).map(|i| 20 + i).collect(); 2];
        ids[0][..3].fill(5);
        for row in &mut ids {
            row[23] = 4;
            row[24] = 3;
        }
        let mask: Vec<Vec<u32>> = ids
            .iter()
            .map(|r| r.iter().map(|&t| (t != 5) as u32).collect())
            .collect();
        let special: Vec<Vec<bool>> = ids
            .iter()
            .map(|r| r.iter().map(|&t| t < 6).collect())
            .collect();
        let t = plm_targets(
            &ids,
            &mask,
            &special,
            &PlmConfig::new(MASK),
            &mut rng,
            &Device::Cpu,
        )?;
        let am = Tensor::new(mask.clone(), &Device::Cpu)?;
        let (content, query) = two_stream_masks(&am, &t.perm_mask)?;
        type Grid = Vec<Vec<Vec<f32>>>;
        let (content, query): (Grid, Grid) = (content.to_vec3()?, query.to_vec3()?);
        let perm: Grid = t.perm_mask.to_vec3()?;
        let mapping: Grid = t.target_mapping.to_vec3()?;
        let labels: Vec<Vec<i64>> = t.labels.to_vec2()?;
        for e in 0..2 {
            let target = |i: usize| t.targets[e].contains(&i);
            assert!(!t.targets[e].is_empty(), "every 25 tokens hold a span");
            for i in 0..25 {
                let real_i = mask[e][i] == 1;
                if !real_i {
                    continue;
                }
                for j in 0..25 {
                    let real_j = mask[e][j] == 1;
                    let context_j = real_j && !target(j);
                    // The context is seen by every token. The content stream also sees
                    // the token itself; the query stream sees a target only through
                    // the targets before it (and itself not).
                    if context_j {
                        assert_eq!(perm[e][i][j], 0.0, "{e}: {i} sees context {j}");
                    }
                    if !special[e][i] && !target(i) && target(j) {
                        assert_eq!(perm[e][i][j], 1.0, "{e}: context {i} sees no target {j}");
                    }
                    if target(i) && target(j) && i != j {
                        // Targets see each other one way only: by their order.
                        assert_ne!(perm[e][i][j], perm[e][j][i], "{e}: targets {i} {j}");
                    }
                    assert_eq!(
                        content[e][i][j] == 0.0,
                        real_j && (perm[e][i][j] == 0.0 || i == j)
                    );
                    assert_eq!(query[e][i][j] == 0.0, real_j && perm[e][i][j] == 0.0);
                }
            }
            for (k, &p) in t.targets[e].iter().enumerate() {
                assert!(
                    !special[e][p] && mask[e][p] == 1,
                    "{e}: {p} is not predictable"
                );
                assert_eq!(
                    t.input_ids[e][p], MASK,
                    "a target's input is the mask token"
                );
                assert_eq!(mapping[e][k][p], 1.0);
                assert_eq!(mapping[e][k].iter().sum::<f32>(), 1.0);
                assert_eq!(labels[e][k], ids[e][p] as i64);
            }
            for k in t.targets[e].len()..mapping[e].len() {
                assert_eq!(labels[e][k], IGNORE);
                assert!(mapping[e][k].iter().all(|v| *v == 0.0));
            }
            let untouched = (0..25)
                .filter(|p| !target(*p))
                .all(|p| t.input_ids[e][p] == ids[e][p]);
            assert!(untouched, "only targets are masked");
        }
        Ok(())
    }

    #[test]
    fn spans_predict_about_one_token_in_six() {
        let eligible = vec![true; 6000];
        let masked = sample_targets(&eligible, &PlmConfig::new(MASK), &mut Rng::new(3));
        let share = masked.iter().filter(|m| **m).count() as f64 / 6000.0;
        assert!((share - 1.0 / 6.0).abs() < 0.01, "{share}");
        // Spans are 1 to 5 long.
        let mut run = 0;
        for &m in masked.iter().chain([false].iter()) {
            if m {
                run += 1;
            } else {
                assert!(run <= 5, "a span of {run}");
                run = 0;
            }
        }
        let not_eligible = vec![false; 50];
        assert!(
            !sample_targets(&not_eligible, &PlmConfig::new(MASK), &mut Rng::new(3)).contains(&true)
        );
    }

    #[test]
    fn orders_keep_the_halves_apart_and_are_seeded() {
        let a = factorization_order(10, &mut Rng::new(1));
        assert_eq!(a, factorization_order(10, &mut Rng::new(1)));
        assert_ne!(a, factorization_order(10, &mut Rng::new(2)));
        for j in 0..5 {
            assert!(a[j] < 5 && a[j + 5] == a[j] + 5, "{a:?}");
        }
        let odd = factorization_order(7, &mut Rng::new(1));
        assert_eq!(odd[6], 6);
        let mut sorted = odd.clone();
        sorted.sort();
        assert_eq!(sorted, (0..7).collect::<Vec<_>>());
    }
}
