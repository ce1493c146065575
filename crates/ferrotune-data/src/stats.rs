//! Length statistics of a dataset's examples: the percentiles `data stats`, the quality
//! report and training's cutoff warning print.

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
    pub fn of(lengths: &[usize]) -> Self {
        let mut sorted = lengths.to_vec();
        sorted.sort_unstable();
        let mean = if sorted.is_empty() {
            0.0
        } else {
            sorted.iter().sum::<usize>() as f64 / sorted.len() as f64
        };
        LengthStats {
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            max: sorted.last().copied().unwrap_or(0),
            mean: (mean * 10.0).round() / 10.0,
        }
    }
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
    }
}
