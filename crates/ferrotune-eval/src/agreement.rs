//! Inter-rater agreement: Krippendorff's alpha with the interval metric.
//!
//! Chosen over Cohen's weighted kappa because it takes any number of raters, tolerates
//! items that not every rater rated, and needs no pairing of raters. The interval
//! metric suits a 1-5 scale whose steps are meant to be equal: disagreeing by 2 costs
//! four times as much as disagreeing by 1.
//!
//! With units u (items) holding m_u >= 2 ratings each (units with fewer are not
//! pairable and left out) and n = sum of m_u:
//!
//! ```text
//! D_o = 1/n * sum_u 1/(m_u - 1) * sum_{i != j in u} (x_ui - x_uj)^2   observed
//! D_e = 1/(n (n - 1)) * sum_{k != l over all n values} (x_k - x_l)^2  expected
//! alpha = 1 - D_o / D_e
//! ```
//!
//! alpha is 1 for perfect agreement, 0 when raters agree no better than chance, and
//! negative below that. It is undefined when there are no pairable units or every
//! rating is the same (D_e = 0).

/// Sum over ordered pairs i != j of (x_i - x_j)^2, which is 2 (m sum x^2 - (sum x)^2).
fn pair_sum(values: &[f64]) -> f64 {
    let m = values.len() as f64;
    let sum: f64 = values.iter().sum();
    let squares: f64 = values.iter().map(|v| v * v).sum();
    2.0 * (m * squares - sum * sum)
}

/// Krippendorff's alpha (interval) and what it was computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Alpha {
    /// `None` when undefined (nothing pairable, or no variation at all).
    pub alpha: Option<f64>,
    /// Units rated at least twice.
    pub units: usize,
    /// Ratings in those units (n).
    pub values: usize,
}

/// Alpha over units given as the ratings each received.
pub fn krippendorff_interval<'a>(units: impl IntoIterator<Item = &'a [f64]>) -> Alpha {
    let pairable: Vec<&[f64]> = units.into_iter().filter(|u| u.len() >= 2).collect();
    let n: usize = pairable.iter().map(|u| u.len()).sum();
    let all: Vec<f64> = pairable.iter().flat_map(|u| u.iter().copied()).collect();
    let alpha = if n < 2 {
        None
    } else {
        let n_f = n as f64;
        let observed = pairable
            .iter()
            .map(|u| pair_sum(u) / (u.len() - 1) as f64)
            .sum::<f64>()
            / n_f;
        let expected = pair_sum(&all) / (n_f * (n_f - 1.0));
        (expected > 0.0).then(|| 1.0 - observed / expected)
    };
    Alpha {
        alpha,
        units: pairable.len(),
        values: n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alpha(units: &[Vec<f64>]) -> Option<f64> {
        krippendorff_interval(units.iter().map(Vec::as_slice)).alpha
    }

    #[test]
    fn hand_computed_example() {
        // Two raters, three items: (1, 2), (3, 3), (5, 4). n = 6.
        // Observed: the first and last items each give 2 * 1^2 / (2 - 1) = 2, so
        //   D_o = (2 + 0 + 2) / 6 = 2/3.
        // Expected: sum x = 18, sum x^2 = 64, so the ordered pair sum is
        //   2 * (6 * 64 - 18^2) = 120 and D_e = 120 / (6 * 5) = 4.
        // alpha = 1 - (2/3) / 4 = 5/6.
        let a = alpha(&[vec![1.0, 2.0], vec![3.0, 3.0], vec![5.0, 4.0]]).unwrap();
        assert!((a - 5.0 / 6.0).abs() < 1e-12, "{a}");
    }

    #[test]
    fn krippendorffs_own_example() {
        // Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": four
        // observers, twelve units, some missing; interval alpha = 0.849.
        let by_unit = [
            vec![1.0, 1.0, 1.0],
            vec![2.0, 2.0, 3.0, 2.0],
            vec![3.0, 3.0, 3.0, 3.0],
            vec![3.0, 3.0, 3.0, 3.0],
            vec![2.0, 2.0, 2.0, 2.0],
            vec![1.0, 2.0, 3.0, 4.0],
            vec![4.0, 4.0, 4.0, 4.0],
            vec![1.0, 1.0, 2.0, 1.0],
            vec![2.0, 2.0, 2.0, 2.0],
            vec![5.0, 5.0, 5.0],
            vec![1.0, 1.0],
            vec![3.0],
        ];
        let a = krippendorff_interval(by_unit.iter().map(Vec::as_slice));
        assert!(
            (a.alpha.unwrap() - 0.8491071428571428).abs() < 1e-12,
            "{a:?}"
        );
        assert_eq!((a.units, a.values), (11, 40));
    }

    #[test]
    fn undefined_cases() {
        assert_eq!(alpha(&[vec![3.0]]), None);
        assert_eq!(alpha(&[vec![4.0, 4.0], vec![4.0, 4.0]]), None);
        let a = alpha(&[vec![1.0, 5.0], vec![5.0, 1.0]]).unwrap();
        assert!(a < 0.0, "systematic disagreement is below chance: {a}");
    }
}
