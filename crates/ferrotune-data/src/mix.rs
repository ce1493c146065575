//! Several datasets into one training set: LLaMA-Factory's `mix_strategy` (`concat`,
//! `interleave_under`, `interleave_over`) with `interleave_probs`, and per-dataset sizes or
//! shares written after the name, so that "90% domain + 10% general" is one line:
//!
//! ```yaml
//! dataset: identity, alpaca_en_demo:10%   # alpaca makes up 10% of the mixture
//! dataset: identity, alpaca_en_demo:200   # 200 alpaca samples (LLaMA-Factory's num_samples)
//! ```
//!
//! Interleaving follows Hugging Face `datasets.interleave_datasets` (which LLaMA-Factory
//! calls): draw a source with the given probabilities (round-robin without them), take its
//! next example, and restart a source from its beginning when it runs out; `under` stops
//! as soon as one source has run out, `over` once every source has. All draws come from
//! [`SplitMix64`] seeded by `seed`, so a mixture is the same on every run and platform.

use crate::error::{DataError, Result};
use crate::rng::SplitMix64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MixStrategy {
    #[default]
    Concat,
    /// Stop when the first source is exhausted (undersampling the larger ones).
    InterleaveUnder,
    /// Go on until every source is exhausted (oversampling the smaller ones).
    InterleaveOver,
}

impl MixStrategy {
    /// The config's spellings.
    pub const CHOICES: &'static [(&'static str, MixStrategy)] = &[
        ("concat", MixStrategy::Concat),
        ("interleave_under", MixStrategy::InterleaveUnder),
        ("interleave_over", MixStrategy::InterleaveOver),
    ];

    pub fn name(self) -> &'static str {
        match self {
            MixStrategy::Concat => "concat",
            MixStrategy::InterleaveUnder => "interleave_under",
            MixStrategy::InterleaveOver => "interleave_over",
        }
    }
}

/// How much of one dataset goes into the mixture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Share {
    /// Everything (after `max_samples`).
    All,
    /// This many samples (a seeded subset, or repeats when more than the dataset holds).
    Samples(usize),
    /// This fraction of the whole realised mixture.
    Fraction(f64),
}

/// Splits `name:200` / `name:10%` into the name and its share. A suffix that is not a
/// number stays part of the name (paths may hold colons).
pub fn parse_share(entry: &str) -> Result<(String, Share)> {
    let entry = entry.trim();
    let Some((name, suffix)) = entry.rsplit_once(':') else {
        return Ok((entry.to_string(), Share::All));
    };
    let suffix = suffix.trim();
    if let Some(percent) = suffix.strip_suffix('%') {
        let p: f64 = percent.trim().parse().map_err(|_| {
            DataError::config(format!("dataset {entry:?}: {suffix:?} is not a percentage"))
        })?;
        if !(p > 0.0 && p < 100.0) {
            return Err(DataError::config(format!(
                "dataset {entry:?}: a share must be between 0% and 100% (exclusive)"
            )));
        }
        return Ok((name.trim().to_string(), Share::Fraction(p / 100.0)));
    }
    match suffix.parse::<usize>() {
        Ok(0) => Err(DataError::config(format!(
            "dataset {entry:?}: a sample count must be positive"
        ))),
        Ok(n) => Ok((name.trim().to_string(), Share::Samples(n))),
        Err(_) => Ok((entry.to_string(), Share::All)),
    }
}

/// `interleave_probs` as LLaMA-Factory writes it: "0.9, 0.1" or a YAML list.
pub fn parse_probs(value: &serde_json::Value, datasets: usize) -> Result<Vec<f64>> {
    let numbers: Vec<f64> = match value {
        serde_json::Value::String(s) => s
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                DataError::config(format!("interleave_probs {s:?} is not a list of numbers"))
            })?,
        serde_json::Value::Array(a) => a
            .iter()
            .map(|v| v.as_f64())
            .collect::<Option<_>>()
            .ok_or_else(|| DataError::config("interleave_probs must be numbers"))?,
        serde_json::Value::Number(n) => vec![n.as_f64().unwrap_or(f64::NAN)],
        other => {
            return Err(DataError::config(format!(
                "interleave_probs must be a list of numbers, not {other}"
            )))
        }
    };
    if numbers.len() != datasets {
        return Err(DataError::config(format!(
            "interleave_probs has {} values for {datasets} datasets",
            numbers.len()
        )));
    }
    if numbers.iter().any(|p| !p.is_finite() || *p < 0.0) || numbers.iter().sum::<f64>() <= 0.0 {
        return Err(DataError::config(
            "interleave_probs must be non-negative numbers with a positive sum",
        ));
    }
    let total: f64 = numbers.iter().sum();
    Ok(numbers.into_iter().map(|p| p / total).collect())
}

/// The realised mixture as (source, index within source) pairs, in training order before
/// the trainer's shuffle. `sizes` are the sources' example counts.
pub fn interleave(
    sizes: &[usize],
    strategy: MixStrategy,
    probs: Option<&[f64]>,
    seed: u64,
) -> Vec<(usize, usize)> {
    if strategy == MixStrategy::Concat {
        return sizes
            .iter()
            .enumerate()
            .flat_map(|(s, &n)| (0..n).map(move |i| (s, i)))
            .collect();
    }
    let Some(probs) = probs else {
        return round_robin(sizes, strategy);
    };
    // An empty source is exhausted from the start: `under` yields nothing, as in datasets.
    let mut exhausted: Vec<bool> = sizes.iter().map(|&n| n == 0).collect();
    let mut next = vec![0usize; sizes.len()];
    let mut rng = SplitMix64(seed);
    let mut out = Vec::new();
    loop {
        let done = match strategy {
            MixStrategy::InterleaveUnder => exhausted.iter().any(|&e| e),
            _ => exhausted.iter().all(|&e| e),
        };
        if done || sizes.iter().all(|&n| n == 0) {
            break;
        }
        let source = draw(probs, rng.next_f64());
        if sizes[source] == 0 {
            continue;
        }
        out.push((source, next[source]));
        next[source] += 1;
        if next[source] >= sizes[source] {
            exhausted[source] = true;
            next[source] = 0;
        }
    }
    out
}

/// Without probabilities `datasets` takes whole rounds, one example of each source per
/// round: as many rounds as the shortest source has examples (`under`) or the longest
/// (`over`, the shorter ones starting again from their beginning).
fn round_robin(sizes: &[usize], strategy: MixStrategy) -> Vec<(usize, usize)> {
    let rounds = match strategy {
        MixStrategy::InterleaveUnder => sizes.iter().copied().min().unwrap_or(0),
        _ => sizes.iter().copied().max().unwrap_or(0),
    };
    (0..rounds)
        .flat_map(|r| {
            sizes
                .iter()
                .enumerate()
                .filter(|(_, &n)| n > 0)
                .map(move |(s, &n)| (s, r % n))
        })
        .collect()
}

/// The index whose cumulative probability first exceeds `u`.
fn draw(probs: &[f64], u: f64) -> usize {
    let mut acc = 0.0;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if u < acc {
            return i;
        }
    }
    probs.iter().rposition(|&p| p > 0.0).unwrap_or(0)
}

/// How many samples each `Fraction` source contributes so that it makes up its share of
/// the final mixture, given how many the other sources contribute.
pub fn fraction_counts(shares: &[Share], counts_without_fractions: usize) -> Result<Vec<usize>> {
    let total_fraction: f64 = shares
        .iter()
        .map(|s| match s {
            Share::Fraction(f) => *f,
            _ => 0.0,
        })
        .sum();
    if total_fraction >= 1.0 {
        return Err(DataError::config(format!(
            "the dataset shares add up to {:.0}%: they must leave room for the other datasets",
            total_fraction * 100.0
        )));
    }
    let whole = counts_without_fractions as f64 / (1.0 - total_fraction);
    Ok(shares
        .iter()
        .map(|s| match s {
            Share::Fraction(f) => (f * whole).round() as usize,
            _ => 0,
        })
        .collect())
}

/// `n` picks out of `len` items: a seeded permutation, cycled (then random) when `n` is
/// larger, as LLaMA-Factory's `num_samples` does.
pub fn pick(len: usize, n: usize, seed: u64) -> Vec<usize> {
    if len == 0 {
        return Vec::new();
    }
    let mut rng = SplitMix64(seed);
    let order = rng.permutation(len);
    let mut picked: Vec<usize> = order.into_iter().take(n.min(len)).collect();
    while picked.len() < n {
        picked.push((rng.next_u64() % len as u64) as usize);
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_parse_and_bad_ones_are_errors() {
        assert_eq!(parse_share("a").unwrap(), ("a".into(), Share::All));
        assert_eq!(
            parse_share("a:200").unwrap(),
            ("a".into(), Share::Samples(200))
        );
        assert_eq!(
            parse_share(" a : 10% ").unwrap(),
            ("a".into(), Share::Fraction(0.1))
        );
        assert_eq!(parse_share("c:/x.json").unwrap().1, Share::All);
        assert!(parse_share("a:0").is_err());
        assert!(parse_share("a:150%").is_err());
        assert!(parse_share("a:x%").is_err());
    }

    #[test]
    fn interleave_probabilities_are_realised_within_two_percent() {
        let probs = parse_probs(&serde_json::json!("0.7, 0.2, 0.1"), 3).unwrap();
        let mix = interleave(
            &[10_000, 10_000, 10_000],
            MixStrategy::InterleaveOver,
            Some(&probs),
            7,
        );
        let first: Vec<_> = mix.iter().take(10_000).collect();
        for (s, p) in probs.iter().enumerate() {
            let share = first.iter().filter(|(src, _)| *src == s).count() as f64 / 10_000.0;
            assert!((share - p).abs() < 0.02, "source {s}: {share} vs {p}");
        }
    }

    #[test]
    fn under_stops_at_the_first_exhausted_and_over_at_the_last() {
        let under = interleave(&[3, 10], MixStrategy::InterleaveUnder, None, 0);
        assert_eq!(under, vec![(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]);
        let over = interleave(&[3, 10], MixStrategy::InterleaveOver, None, 0);
        assert_eq!(over.len(), 20);
        assert_eq!(over.iter().filter(|(s, _)| *s == 1).count(), 10);
        // The small source restarts from its beginning.
        assert_eq!(over[6], (0, 0));
        let seeded = interleave(
            &[50, 50],
            MixStrategy::InterleaveUnder,
            Some(&[0.5, 0.5]),
            3,
        );
        assert_eq!(
            seeded,
            interleave(
                &[50, 50],
                MixStrategy::InterleaveUnder,
                Some(&[0.5, 0.5]),
                3
            )
        );
    }

    #[test]
    fn fractions_make_up_their_share_of_the_mixture() {
        let counts = fraction_counts(&[Share::All, Share::Fraction(0.1)], 900).unwrap();
        assert_eq!(counts, vec![0, 100]);
        assert!(fraction_counts(&[Share::Fraction(0.6), Share::Fraction(0.5)], 10).is_err());
        let p = pick(5, 12, 1);
        assert_eq!(p.len(), 12);
        let mut first: Vec<_> = p[..5].to_vec();
        first.sort();
        assert_eq!(first, vec![0, 1, 2, 3, 4]);
    }
}
