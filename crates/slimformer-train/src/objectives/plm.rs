//! Permutation language modelling (XLNet, Yang et al. 2019, §2.2–2.3).
//!
//! Per example a random factorization order over its real tokens: special tokens
//! (`<sep>`, `<cls>`) first (always context, never predicted), then the other tokens
//! shuffled by the seeded [`Rng`]. The last 1/K of the order (K = 6, at least one
//! token) are the targets (partial prediction). `perm_mask[i, j] = 1` means i may not
//! attend to j: j comes at or after i in the order. The model's content stream then
//! adds i itself back (it sees j with rank(j) ≤ rank(i)); the query stream does not
//! (rank(j) < rank(i)), exactly as HF's `XLNetModel` treats `perm_mask`.

use super::IGNORE;
use candle_core::{Device, Tensor};
use slimformer::rng::Rng;
use slimformer::Result;

/// K of partial prediction: the last `1/K` of each order is predicted.
pub const DEFAULT_PREDICT_DIVISOR: usize = 6;

/// What [`slimformer::models::xlnet::XLNet::forward_two_stream`] and the PLM loss need.
#[derive(Debug, Clone)]
pub struct PlmTargets {
    /// f32 [batch, len, len].
    pub perm_mask: Tensor,
    /// f32 [batch, num_predict, len]; rows past an example's targets are zero.
    pub target_mapping: Tensor,
    /// i64 [batch, num_predict]; [`IGNORE`] in padding rows.
    pub labels: Tensor,
    /// Each example's factorization order (positions), for inspection.
    pub orders: Vec<Vec<usize>>,
}

/// A factorization order over the real positions: specials first (in place order),
/// then the rest shuffled. Padding (`real[i] == false`) is left out.
pub fn sample_order(real: &[bool], special: &[bool], rng: &mut Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..real.len()).filter(|&i| real[i] && special[i]).collect();
    let mut rest: Vec<usize> = (0..real.len())
        .filter(|&i| real[i] && !special[i])
        .collect();
    rng.shuffle(&mut rest);
    order.extend(rest);
    order
}

/// How many of `candidates` non-special tokens are predicted: 1/K of them, at least 1.
pub fn num_predict(candidates: usize, divisor: usize) -> usize {
    if candidates == 0 {
        0
    } else {
        (candidates / divisor.max(1)).max(1)
    }
}

/// Targets for a padded batch: `ids`, `attention_mask` (1 real, 0 padding) and
/// `special` flags per example, all of one length.
pub fn plm_targets(
    ids: &[Vec<u32>],
    attention_mask: &[Vec<u32>],
    special: &[Vec<bool>],
    divisor: usize,
    rng: &mut Rng,
    device: &Device,
) -> Result<PlmTargets> {
    let b = ids.len();
    let l = ids.first().map_or(0, |r| r.len());
    let mut orders = Vec::with_capacity(b);
    let mut targets: Vec<Vec<usize>> = Vec::with_capacity(b);
    let mut perm = vec![0f32; b * l * l];
    for e in 0..b {
        let real: Vec<bool> = attention_mask[e].iter().map(|m| *m != 0).collect();
        let order = sample_order(&real, &special[e], rng);
        let candidates = (0..l).filter(|&i| real[i] && !special[e][i]).count();
        let n = num_predict(candidates, divisor);
        targets.push(order[order.len() - n..].to_vec());
        let mut rank = vec![usize::MAX; l];
        for (r, &p) in order.iter().enumerate() {
            rank[p] = r;
        }
        for i in 0..l {
            for j in 0..l {
                // Padding rows hide everything; padding columns are masked by the model.
                let hidden = rank[i] == usize::MAX || rank[j] >= rank[i];
                perm[(e * l + i) * l + j] = hidden as u8 as f32;
            }
        }
        orders.push(order);
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
        perm_mask: Tensor::from_vec(perm, (b, l, l), device)?,
        target_mapping: Tensor::from_vec(mapping, (b, m, l), device)?,
        labels: Tensor::from_vec(labels, (b, m), device)?,
        orders,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use slimformer::models::xlnet::two_stream_masks;

    #[test]
    fn masks_give_the_context_the_paper_allows() -> Result<()> {
        let mut rng = Rng::new(11);
        // XLNet layout: left padding, then text, <sep>, <cls>.
        let ids = vec![
            vec![5, 5, 5, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 4, 3],
            vec![30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 4, 3],
        ];
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
            DEFAULT_PREDICT_DIVISOR,
            &mut rng,
            &Device::Cpu,
        )?;
        let am = Tensor::new(mask.clone(), &Device::Cpu)?;
        let (content, query) = two_stream_masks(&am, &t.perm_mask)?;
        type Grid = Vec<Vec<Vec<f32>>>;
        let (content, query): (Grid, Grid) = (content.to_vec3()?, query.to_vec3()?);
        let mapping: Vec<Vec<Vec<f32>>> = t.target_mapping.to_vec3()?;
        let labels: Vec<Vec<i64>> = t.labels.to_vec2()?;
        for e in 0..2 {
            let order = &t.orders[e];
            let real = mask[e].iter().filter(|m| **m == 1).count();
            assert_eq!(order.len(), real);
            let mut rank = [usize::MAX; 15];
            order.iter().enumerate().for_each(|(r, &p)| rank[p] = r);
            for i in order.iter().copied() {
                for j in 0..15 {
                    let real_j = mask[e][j] == 1;
                    let sees_c = content[e][i][j] == 0.0;
                    let sees_q = query[e][i][j] == 0.0;
                    assert_eq!(sees_c, real_j && rank[j] <= rank[i], "content {e} {i} {j}");
                    assert_eq!(sees_q, real_j && rank[j] < rank[i], "query {e} {i} {j}");
                }
            }
            // 10 or 12 candidates: 10/6 → 1, 12/6 → 2 targets, the order's last ones.
            let candidates = (0..15)
                .filter(|&i| mask[e][i] == 1 && !special[e][i])
                .count();
            let n = num_predict(candidates, 6);
            assert_eq!(n, [1, 2][e]);
            for (k, &p) in order[order.len() - n..].iter().enumerate() {
                assert!(!special[e][p], "special token predicted");
                assert_eq!(mapping[e][k][p], 1.0);
                assert_eq!(mapping[e][k].iter().sum::<f32>(), 1.0);
                assert_eq!(labels[e][k], ids[e][p] as i64);
            }
            for k in n..mapping[e].len() {
                assert_eq!(labels[e][k], IGNORE);
                assert!(mapping[e][k].iter().all(|v| *v == 0.0));
            }
        }
        assert_eq!(t.orders[0][..2], [13, 14], "specials come first");
        Ok(())
    }

    #[test]
    fn orders_are_seeded_and_random() {
        let real = vec![true; 30];
        let special = vec![false; 30];
        let a = sample_order(&real, &special, &mut Rng::new(1));
        assert_eq!(a, sample_order(&real, &special, &mut Rng::new(1)));
        assert_ne!(a, sample_order(&real, &special, &mut Rng::new(2)));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..30).collect::<Vec<_>>());
        assert_eq!(num_predict(1, 6), 1);
        assert_eq!(num_predict(13, 6), 2);
    }
}
