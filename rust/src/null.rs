//! Null distributions of AP under random ranking, sampled fast.
//!
//! For a configuration (M positives among L candidates) a random ranking places the M positives
//! on M distinct positions drawn uniformly from 0..L. copairs draws them by permuting all L
//! positions (O(L) per sample); here Floyd's algorithm draws the M positions directly (O(M log M)),
//! which is the same distribution with a different random stream: p-values from this sampler are
//! statistically equivalent to copairs', not identical. Samples are split in fixed chunks, each with
//! its own PCG stream keyed by (seed, M, L, chunk), so results do not depend on thread count or on
//! the order configurations are asked for.
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64;
use rayon::prelude::*;

use crate::average_precision::ap_from_ranks;
use crate::error::{EvalError, Result};

const CHUNK: usize = 1024;

fn stream_key(seed: u64, m: u64, l: u64, chunk: u64) -> u64 {
    // splitmix64 over the tuple
    let mut z = seed ^ m.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ l.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ chunk.wrapping_mul(0x1656_67B1_9E37_79F9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// M distinct sorted positions from 0..L (Floyd's algorithm).
fn sample_positions(rng: &mut Pcg64, m: u64, l: u64, out: &mut Vec<u64>) {
    out.clear();
    let mut set = std::collections::HashSet::with_capacity(m as usize * 2);
    for j in (l - m)..l {
        let t = rng.gen_range(0..=j);
        if !set.insert(t) {
            set.insert(j);
        }
    }
    out.extend(set);
    out.sort_unstable();
}

/// `null_size` AP values of random rankings with M positives among L candidates.
pub fn random_ap(m: u64, l: u64, null_size: usize, seed: u64) -> Result<Vec<f64>> {
    if m == 0 || m > l {
        return Err(EvalError::Invalid(format!("null configuration needs 0 < n_pos_pairs <= n_total_pairs, got M={m}, L={l}")));
    }
    let chunks = (null_size + CHUNK - 1) / CHUNK;
    let parts: Vec<Vec<f64>> = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let mut rng = Pcg64::seed_from_u64(stream_key(seed, m, l, c as u64));
            let len = CHUNK.min(null_size - c * CHUNK);
            let mut pos = Vec::with_capacity(m as usize);
            (0..len)
                .map(|_| {
                    if m == l {
                        1.0
                    } else {
                        sample_positions(&mut rng, m, l, &mut pos);
                        ap_from_ranks(&pos)
                    }
                })
                .collect()
        })
        .collect();
    Ok(parts.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_unbiased() {
        let a = random_ap(3, 50, 5000, 7).unwrap();
        let b = random_ap(3, 50, 5000, 7).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, random_ap(3, 50, 5000, 8).unwrap());
        // exact expectation of AP under random ranking (copairs normalization.expected_ap)
        let (m, l) = (3.0f64, 50.0f64);
        let h: f64 = (1..=50).map(|k| 1.0 / k as f64).sum();
        let mu = ((m - 1.0) / (l - 1.0) * (l - h) + h) / l;
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        assert!((mean - mu).abs() < 0.01, "mean {mean} vs expected {mu}");
        assert!(random_ap(0, 5, 10, 1).is_err());
        assert_eq!(random_ap(4, 4, 3, 1).unwrap(), vec![1.0; 3]);
    }

    #[test]
    fn positions_distinct_in_range() {
        let mut rng = Pcg64::seed_from_u64(1);
        let mut out = vec![];
        for _ in 0..200 {
            sample_positions(&mut rng, 7, 9, &mut out);
            assert_eq!(out.len(), 7);
            assert!(out.windows(2).all(|w| w[0] < w[1]) && *out.last().unwrap() < 9);
        }
    }
}
