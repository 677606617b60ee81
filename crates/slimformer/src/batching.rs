//! Length-bucketed batching, shared by every command that runs a model over many
//! texts, by evaluation inside training, and by the server: texts are sorted by
//! token count and packed into forward passes under a token budget, so a batch
//! pays for little padding, and results go back in the texts' order.

/// How large one forward pass may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Padded tokens in one pass: texts × the longest text's tokens.
    pub max_tokens: usize,
    /// Texts in one pass.
    pub max_rows: usize,
}

impl BatchLimits {
    /// The command line's defaults. 8192 padded tokens keep a pass's largest
    /// activation (the feed-forward's, 4× the hidden size) to a few tens of MB for
    /// base-sized models, and are enough rows for the products to run at full rate.
    pub const DEFAULT: BatchLimits = BatchLimits {
        max_tokens: 8192,
        max_rows: 256,
    };

    /// At most `rows` texts a pass, under the default token budget.
    pub fn rows(rows: usize) -> BatchLimits {
        BatchLimits {
            max_rows: rows.max(1),
            ..Self::DEFAULT
        }
    }
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Padding a batch may carry, in quarters of its real tokens. Sorted neighbours
/// are close in length, so this only splits a batch where lengths jump (a few
/// short texts among long ones in a small set, as the server sees).
const MAX_PADDING_QUARTERS: usize = 1;

/// Groups the texts of the given token counts into forward passes: each group
/// holds indices into `lengths`, shortest text first, and groups come in order
/// of length. Every index appears exactly once; a text longer than the budget
/// runs alone.
pub fn pack(lengths: &[usize], limits: BatchLimits) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut real = 0usize;
    for i in order {
        let len = lengths[i].max(1);
        // Ascending order: the new text is the batch's longest.
        let rows = current.len() + 1;
        let padded = rows * len;
        let fits = rows <= limits.max_rows.max(1)
            && padded <= limits.max_tokens
            && padded * 4 <= (real + len) * (4 + MAX_PADDING_QUARTERS);
        if !current.is_empty() && !fits {
            batches.push(std::mem::take(&mut current));
            real = 0;
        }
        current.push(i);
        real += len;
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// [`pack`] over `items` of `tokens(item)` tokens each: every batch as its
/// items' indices (for putting results back in order) and the items.
pub fn batches<T>(
    items: &[T],
    tokens: impl Fn(&T) -> usize,
    limits: BatchLimits,
) -> impl Iterator<Item = (Vec<usize>, Vec<&T>)> {
    let lengths: Vec<usize> = items.iter().map(tokens).collect();
    pack(&lengths, limits).into_iter().map(move |batch| {
        let group = batch.iter().map(|&i| &items[i]).collect();
        (batch, group)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_tokens: usize, max_rows: usize) -> BatchLimits {
        BatchLimits {
            max_tokens,
            max_rows,
        }
    }

    #[test]
    fn every_text_runs_once_in_batches_within_the_limits() {
        let lengths: Vec<usize> = (0..1000).map(|i| 1 + (i * 7919) % 300).collect();
        let l = limits(2048, 64);
        let batches = pack(&lengths, l);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        for b in &batches {
            let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
            let real: usize = b.iter().map(|&i| lengths[i]).sum();
            assert!(b.len() <= 64);
            assert!(b.len() == 1 || b.len() * longest <= 2048, "{b:?}");
            assert!(
                b.len() * longest * 4 <= real * 5,
                "padding over a quarter in {b:?}"
            );
        }
    }

    #[test]
    fn sorted_lengths_fill_batches_to_the_budget() {
        let lengths = vec![16; 100];
        let batches = pack(&lengths, limits(512, 256));
        assert_eq!(batches.len(), 4);
        assert!(batches[..3].iter().all(|b| b.len() == 32));
        assert_eq!(batches[3].len(), 4);
    }

    #[test]
    fn a_text_over_the_budget_runs_alone_and_lengths_that_jump_split() {
        let lengths = vec![10, 1000, 10, 40];
        let batches = pack(&lengths, limits(512, 256));
        assert_eq!(batches, vec![vec![0, 2], vec![3], vec![1]]);
        assert!(pack(&[], BatchLimits::DEFAULT).is_empty());
    }
}
