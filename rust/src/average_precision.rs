//! Average precision from positive ranks (non-interpolated, as copairs):
//! AP = (1/M) * sum_k k / rank_k over the M positives, ranks 1-based, ties by [`crate::ranking`].
use crate::pairs::PairRule;
use crate::ranking::{rank_units, Units};
use crate::similarity::{Prepared, Real};

/// AP of one ranked list given the 0-based ranks of its positives (ascending). NaN when M = 0.
pub fn ap_from_ranks(ranks: &[u64]) -> f64 {
    if ranks.is_empty() {
        return f64::NAN;
    }
    let s: f64 = ranks.iter().enumerate().map(|(k, &r)| (k + 1) as f64 / (r + 1) as f64).sum();
    s / ranks.len() as f64
}

/// Per-unit AP with its configuration (M positives, L candidates).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ap {
    pub ap: f64,
    pub n_pos: u64,
    pub n_total: u64,
}

/// AP of every unit, streamed: no rank list outlives its unit.
pub fn average_precision<T: Real>(p: &Prepared<T>, units: &Units, pos: &PairRule, neg: &PairRule, block_rows: usize, f32_keys: bool) -> Vec<Ap> {
    rank_units(p, units, pos, neg, block_rows, f32_keys, |_, r| Ap { ap: ap_from_ranks(r.ranks), n_pos: r.n_pos(), n_total: r.n_total })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ap_values() {
        assert_eq!(ap_from_ranks(&[0, 1]), 1.0);
        // positives at ranks 1 and 3 (1-based): (1/1 + 2/3)/2
        assert!((ap_from_ranks(&[0, 2]) - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-15);
        assert!(ap_from_ranks(&[]).is_nan());
    }
}
