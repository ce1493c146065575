//! Python's string and float behaviour, where the reference metrics depend on it.
//!
//! The scores must agree with the Python packages to the last printed digit, so the
//! places where Rust's standard library differs from Python's (what counts as
//! whitespace, how `round` and `math.fsum` round) are reproduced here once.

/// `str.isspace()`: Unicode White_Space plus the ASCII separators U+001C..U+001F, which
/// Python treats as whitespace and Rust does not.
pub fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `text.split()`: the non-empty runs between whitespace.
pub fn split_whitespace(text: &str) -> impl Iterator<Item = &str> {
    text.split(is_space).filter(|s| !s.is_empty())
}

/// `text.rstrip()`.
pub fn rstrip(text: &str) -> &str {
    text.trim_end_matches(is_space)
}

/// `round(x, digits)`: to the nearest decimal of that many digits, ties to even on the
/// exact binary value. Rust's fixed-precision formatting rounds the same way (both
/// work from the exact decimal expansion), so formatting and parsing back is exact.
pub fn round(x: f64, digits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.digits$}").parse().unwrap_or(x)
}

/// `math.fsum`: the correctly rounded sum (Shewchuk's exact partials), which nltk uses
/// for the weighted log precisions; a naive sum can differ in the last bit.
pub fn fsum(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut partials: Vec<f64> = Vec::new();
    for mut x in values {
        let mut kept = 0;
        for i in 0..partials.len() {
            let mut y = partials[i];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        partials.truncate(kept);
        if x != 0.0 {
            partials.push(x);
        }
    }
    // Sum the partials from the top, then correct a half-way case as CPython does.
    let Some(mut hi) = partials.pop() else {
        return 0.0;
    };
    let mut lo = 0.0;
    while let Some(y) = partials.pop() {
        let x = hi;
        hi = x + y;
        let yr = hi - x;
        lo = y - yr;
        if lo != 0.0 {
            break;
        }
    }
    if let Some(&next) = partials.last() {
        if (lo < 0.0 && next < 0.0) || (lo > 0.0 && next > 0.0) {
            let y = lo * 2.0;
            let x = hi + y;
            if y == x - hi {
                hi = x;
            }
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_pythons() {
        let words: Vec<_> = split_whitespace(" a\u{3000}b\u{1f}c\u{a0}d\r\n").collect();
        assert_eq!(words, ["a", "b", "c", "d"]);
        assert_eq!(
            split_whitespace("\u{200b}").count(),
            1,
            "zero-width space is no space"
        );
        assert_eq!(rstrip("x \t\u{1c}"), "x");
    }

    #[test]
    fn round_is_half_even_on_the_exact_value() {
        assert_eq!(round(0.25, 1), 0.2);
        assert_eq!(round(0.35, 1), 0.3); // 0.35 is 0.34999... in binary
        assert_eq!(round(2.5, 0), 2.0);
        assert_eq!(round(87.27272727272727, 4), 87.2727);
        assert_eq!(round(-1.00005, 4), -1.0001); // -1.0000500000000001...
        assert_eq!(round(0.125, 2), 0.12); // exact ties go to even
        assert_eq!(round(0.375, 2), 0.38);
    }

    #[test]
    fn fsum_is_correctly_rounded() {
        assert_eq!(fsum([0.1; 10]), 1.0);
        assert_eq!(fsum([1e100, 1.0, -1e100, 1e-100]), 1.0);
        assert_eq!(fsum([]), 0.0);
        assert_eq!(fsum([1.0, 1e-16, 1e-16]), 1.0000000000000002);
        assert_eq!(fsum([1e-16, 1.0, 1e16]), 1.0000000000000002e16);
    }
}
