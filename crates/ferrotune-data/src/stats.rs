//! Length statistics of a dataset's examples: the percentiles `data stats`, the quality
//! report and training's cutoff warning print.

use std::collections::BTreeMap;

/// Length percentiles (nearest rank) and the mean rounded to one decimal.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LengthStats {
    pub p50: usize,
    pub p90: usize,
    pub p99: usize,
    pub max: usize,
    pub mean: f64,
}

impl LengthStats {
    /// From a histogram (length -> count); equal to [`Self::of`] the lengths.
    pub fn of_counts(histogram: &BTreeMap<usize, usize>) -> Self {
        let total: usize = histogram.values().sum();
        let sum: usize = histogram.iter().map(|(v, n)| v * n).sum();
        let mean = if total == 0 {
            0.0
        } else {
            sum as f64 / total as f64
        };
        LengthStats {
            p50: percentile_of_counts(histogram, 50.0),
            p90: percentile_of_counts(histogram, 90.0),
            p99: percentile_of_counts(histogram, 99.0),
            max: histogram.keys().next_back().copied().unwrap_or(0),
            mean: (mean * 10.0).round() / 10.0,
        }
    }

    /// Counts the lengths instead of sorting a copy, so that the 10M-example report
    /// needs no second list of its lengths.
    pub fn of(lengths: &[usize]) -> Self {
        let mut histogram = BTreeMap::new();
        let max = lengths.iter().copied().max().unwrap_or(0);
        if max < 1 << 24 {
            let mut dense = vec![0usize; max + 1];
            for &l in lengths {
                dense[l] += 1;
            }
            histogram.extend(dense.into_iter().enumerate().filter(|(_, n)| *n > 0));
        } else {
            for &l in lengths {
                *histogram.entry(l).or_insert(0) += 1;
            }
        }
        Self::of_counts(&histogram)
    }
}

/// Nearest-rank percentile of values given as a histogram (value -> count), equal to
/// [`percentile`] of the sorted values.
pub fn percentile_of_counts(histogram: &BTreeMap<usize, usize>, p: f64) -> usize {
    let total: usize = histogram.values().sum();
    if total == 0 {
        return 0;
    }
    let rank = (((p / 100.0) * total as f64).ceil() as usize).clamp(1, total);
    let mut seen = 0;
    for (&value, &count) in histogram {
        seen += count;
        if seen >= rank {
            return value;
        }
    }
    0
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[usize], p: f64) -> usize {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_and_rounded_mean() {
        let lengths = [7, 1, 3, 10, 5, 2, 9, 4, 8, 6];
        let stats = LengthStats::of(&lengths);
        assert_eq!((stats.p50, stats.p90, stats.p99, stats.max), (5, 9, 10, 10));
        assert_eq!(stats.mean, 5.5);
        assert_eq!(LengthStats::of(&[1, 2, 2]).mean, 1.7);
        assert_eq!(percentile(&[], 50.0), 0);
        assert_eq!(percentile(&[4], 0.0), 4);
        let mut histogram = BTreeMap::new();
        for l in [7, 1, 3, 10, 5, 2, 9, 4, 8, 6, 5, 5] {
            *histogram.entry(l).or_insert(0) += 1;
        }
        let counted = LengthStats::of_counts(&histogram);
        let mut sorted = vec![7, 1, 3, 10, 5, 2, 9, 4, 8, 6, 5, 5];
        sorted.sort_unstable();
        for p in [0.0, 10.0, 50.0, 90.0, 99.0, 100.0] {
            assert_eq!(
                percentile_of_counts(&histogram, p),
                percentile(&sorted, p),
                "p{p}"
            );
        }
        assert_eq!(
            (counted.p50, counted.p90, counted.max, counted.mean),
            (5, 9, 10, 5.4)
        );
    }
}
