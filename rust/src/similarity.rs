//! Blocked similarity between profiles.
//!
//! A feature matrix X (N x D) is first *prepared* once (rows normalised for cosine, centred and
//! normalised for Pearson, rank-transformed then centred and normalised for Spearman; squared norms
//! kept for Euclidean). Similarities are then produced one block of rows at a time, against all rows
//! or against given column rows, with the GEMM of [`crate::matmul`] (run-time SIMD dispatch), the
//! block's columns split across the rayon pool. No more than one block exists unless the caller asks
//! for all rows. A similarity's value does not depend on the block it was computed in (which rows,
//! which columns, how many): every block of the same prepared rows agrees bit for bit.
//!
//! Values: cosine and Pearson in [-1, 1]; Spearman is Pearson on per-row average ranks;
//! `Euclidean` returns the *negative* Euclidean distance, so larger is always more similar.
//!
//! Spearman is computed exactly up to one final scaling: a row is stored as its centred ranks doubled,
//! `2 r - (D + 1)` (integers, also for average ranks of ties), so each dot product of two rows is an
//! integer that every partial sum holds exactly (float64: D up to ~295,000 features; float32: D <= 369),
//! whatever the GEMM's summation order. The block then scales each dot by `inv_i * inv_j`, the rows'
//! inverse norms multiplied first (commutative, so the matrix is bit-symmetric). Pairs tied in real
//! arithmetic are therefore tied in the output on every CPU and GPU and in every block shape
//! ([`spearman_rows`] is the preparation other engines must reproduce).
use ndarray::parallel::prelude::*;
use ndarray::{s, Array1, Array2, ArrayView2, ArrayViewMut2, Axis};
use num_traits::{Float, FromPrimitive, ToPrimitive};

use crate::error::{EvalError, Result};
use crate::matmul::matmul_nt;

/// The floating types the engine runs in (f32 and f64).
pub trait Real:
    Float + FromPrimitive + ToPrimitive + ndarray::LinalgScalar + Send + Sync + std::fmt::Debug + 'static
{
}
impl Real for f32 {}
impl Real for f64 {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Cosine,
    Pearson,
    Spearman,
    Euclidean,
}

impl Metric {
    /// Parse a metric name. `correlation` is copairs' name for Pearson; `euclidean` gives the
    /// negative distance (copairs' 1/(1+d) is a monotone transform of it, so ranks agree).
    pub fn parse(name: &str) -> Result<Metric> {
        match name.to_ascii_lowercase().as_str() {
            "cosine" => Ok(Metric::Cosine),
            "pearson" | "correlation" => Ok(Metric::Pearson),
            "spearman" => Ok(Metric::Spearman),
            "euclidean" | "negative_euclidean" => Ok(Metric::Euclidean),
            _ => Err(EvalError::UnknownMetric(name.to_string())),
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::Pearson => "pearson",
            Metric::Spearman => "spearman",
            Metric::Euclidean => "euclidean",
        }
    }
}

/// A feature matrix made ready for repeated similarity blocks.
pub struct Prepared<T: Real> {
    metric: Metric,
    z: Array2<T>,
    sqnorm: Option<Array1<T>>,
    /// Spearman: each row's inverse norm (of its doubled centred ranks), the block's final scaling.
    inv: Option<Array1<T>>,
}

/// First non-finite value, scanning rows in parallel.
fn check_finite<T: Real>(x: &ArrayView2<T>) -> Result<()> {
    let bad = x
        .axis_iter(Axis(0))
        .into_par_iter()
        .enumerate()
        .filter_map(|(r, row)| row.iter().position(|v| !v.is_finite()).map(|c| (r, c)))
        .min();
    match bad {
        Some((row, col)) => Err(EvalError::NonFinite { row, col, value: x[[row, col]].to_f64().unwrap_or(f64::NAN) }),
        None => Ok(()),
    }
}

/// Average ranks (1-based, ties share their mean rank), as scipy.stats.rankdata(method="average").
pub fn average_ranks<T: Real>(row: &[T]) -> Vec<T> {
    let n = row.len();
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| row[a].partial_cmp(&row[b]).unwrap());
    let mut out = vec![T::zero(); n];
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && row[idx[j]] == row[idx[i]] {
            j += 1;
        }
        // ranks i+1 ..= j share their mean
        let r = T::from_f64((i + 1 + j) as f64 / 2.0).unwrap();
        for &k in &idx[i..j] {
            out[k] = r;
        }
        i = j;
    }
    out
}

/// Spearman's rows: the average ranks of each row centred and doubled, `2 r - (D + 1)` (integers, exact in T), and
/// each row's inverse norm `1 / sqrt(sum z^2)` (the sum exact in float64, the root and quotient rounded once in
/// float64, then to T). A constant row (all ranks equal) has no variance: its index is the error.
pub fn spearman_rows<T: Real>(z: &mut Array2<T>) -> std::result::Result<Array1<T>, usize> {
    let d1 = T::from_usize(z.ncols() + 1).unwrap();
    let two = T::one() + T::one();
    let mut inv = Array1::<T>::zeros(z.nrows());
    let bad = z
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .zip(inv.axis_iter_mut(Axis(0)).into_par_iter())
        .enumerate()
        .filter_map(|(r, (mut row, mut out))| {
            let ranks = average_ranks(row.as_slice().unwrap());
            row.iter_mut().zip(ranks).for_each(|(a, b)| *a = two * b - d1);
            let ss = row.iter().fold(0.0f64, |a, &v| {
                let f = v.to_f64().unwrap();
                a + f * f
            });
            if ss <= 0.0 {
                return Some(r);
            }
            out[()] = T::from_f64(1.0 / ss.sqrt()).unwrap();
            None
        })
        .min();
    match bad {
        Some(r) => Err(r),
        None => Ok(inv),
    }
}

fn normalise_rows<T: Real>(z: &mut Array2<T>, center: bool, metric: Metric) -> Result<()> {
    let bad: Option<usize> = z
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .filter_map(|(r, mut row)| {
            if center {
                // constant row: no variance, whatever the rounding of its mean
                let first = row[0];
                if row.iter().all(|&v| v == first) {
                    return Some(r);
                }
                let mean = row.iter().fold(0.0f64, |a, &v| a + v.to_f64().unwrap()) / row.len() as f64;
                let m = T::from_f64(mean).unwrap();
                row.mapv_inplace(|v| v - m);
            }
            let ss = row.iter().fold(0.0f64, |a, &v| {
                let f = v.to_f64().unwrap();
                a + f * f
            });
            if ss <= 0.0 || !ss.is_finite() {
                return Some(r);
            }
            let inv = T::from_f64(1.0 / ss.sqrt()).unwrap();
            row.mapv_inplace(|v| v * inv);
            None
        })
        .min();
    match (bad, metric) {
        (None, _) => Ok(()),
        (Some(row), Metric::Cosine) => Err(EvalError::ZeroNorm { row }),
        (Some(row), Metric::Spearman) => Err(EvalError::ZeroVariance { row, metric: "spearman" }),
        (Some(row), _) => Err(EvalError::ZeroVariance { row, metric: "pearson" }),
    }
}

impl<T: Real> Prepared<T> {
    /// Validate (finite values; non-zero norm or variance as the metric needs) and prepare `x`.
    pub fn new(x: ArrayView2<T>, metric: Metric) -> Result<Prepared<T>> {
        if x.ncols() == 0 {
            return Err(EvalError::Invalid("feature matrix has no feature columns".into()));
        }
        check_finite(&x)?;
        let mut z = x.as_standard_layout().into_owned();
        let (mut sqnorm, mut inv) = (None, None);
        match metric {
            Metric::Cosine => normalise_rows(&mut z, false, metric)?,
            Metric::Pearson => normalise_rows(&mut z, true, metric)?,
            Metric::Spearman => {
                inv = Some(spearman_rows(&mut z).map_err(|row| EvalError::ZeroVariance { row, metric: "spearman" })?);
            }
            Metric::Euclidean => {
                sqnorm = Some(z.map_axis(Axis(1), |r| r.iter().fold(T::zero(), |a, &v| a + v * v)));
            }
        }
        Ok(Prepared { metric, z, sqnorm, inv })
    }

    pub fn n(&self) -> usize {
        self.z.nrows()
    }
    pub fn dim(&self) -> usize {
        self.z.ncols()
    }
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// Similarities of the given rows against all N rows, written into `out` (rows.len() x N).
    pub fn block_into(&self, rows: &[usize], out: ArrayViewMut2<T>) {
        self.block_cols_into(rows, None, out)
    }

    /// Similarities of the given rows against the rows `cols` (all N rows when None), written into
    /// `out` (rows.len() x cols.len()). Indices must be < N (checked by the caller; panics otherwise).
    pub fn block_cols_into(&self, rows: &[usize], cols: Option<&[usize]>, mut out: ArrayViewMut2<T>) {
        let n_cols = cols.map_or(self.n(), |c| c.len());
        assert_eq!(out.dim(), (rows.len(), n_cols));
        let a = self.z.select(Axis(0), rows);
        let picked = cols.map(|c| self.z.select(Axis(0), c));
        let b = picked.as_ref().map_or(self.z.view(), |p| p.view());
        let col_row = |c: usize| cols.map_or(c, |cs| cs[c]);
        let threads = rayon::current_num_threads().max(1);
        let chunk = ((n_cols + 4 * threads - 1) / (4 * threads)).max(256);
        out.axis_chunks_iter_mut(Axis(1), chunk)
            .into_par_iter()
            .enumerate()
            .for_each(|(ci, mut oc)| {
                let c0 = ci * chunk;
                let bt = b.slice(s![c0..c0 + oc.ncols(), ..]);
                matmul_nt(a.view(), bt, oc.view_mut());
                if let Some(inv) = &self.inv {
                    // Spearman: the exact integer dot times (inv_i * inv_j)
                    for (r, mut orow) in oc.axis_iter_mut(Axis(0)).enumerate() {
                        let ir = inv[rows[r]];
                        for (c, v) in orow.iter_mut().enumerate() {
                            *v = *v * (ir * inv[col_row(c0 + c)]);
                        }
                    }
                }
                if let (Metric::Euclidean, Some(sq)) = (self.metric, &self.sqnorm) {
                    let two = T::one() + T::one();
                    for (r, mut orow) in oc.axis_iter_mut(Axis(0)).enumerate() {
                        let si = sq[rows[r]];
                        for (c, v) in orow.iter_mut().enumerate() {
                            let d2 = si + sq[col_row(c0 + c)] - two * *v;
                            *v = -(if d2 > T::zero() { d2.sqrt() } else { T::zero() });
                        }
                    }
                }
            });
    }

    /// Similarities of the given rows against all rows, as a new array.
    pub fn block(&self, rows: &[usize]) -> Array2<T> {
        let mut out = Array2::<T>::zeros((rows.len(), self.n()));
        self.block_into(rows, out.view_mut());
        out
    }

    /// Similarities of the given rows against the rows `cols` (all rows when None), as a new array.
    pub fn block_cols(&self, rows: &[usize], cols: Option<&[usize]>) -> Array2<T> {
        let mut out = Array2::<T>::zeros((rows.len(), cols.map_or(self.n(), |c| c.len())));
        self.block_cols_into(rows, cols, out.view_mut());
        out
    }
}

/// How many rows per block keep one block within `budget_bytes`.
pub fn rows_per_block(n: usize, elem_bytes: usize, budget_bytes: usize) -> usize {
    (budget_bytes / (n.max(1) * elem_bytes)).clamp(1, n.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::array;

    fn naive(x: &Array2<f64>, m: Metric) -> Array2<f64> {
        let n = x.nrows();
        let mut out = Array2::zeros((n, n));
        for i in 0..n {
            for j in 0..n {
                let a = x.row(i);
                let b = x.row(j);
                out[[i, j]] = match m {
                    Metric::Cosine => a.dot(&b) / (a.dot(&a).sqrt() * b.dot(&b).sqrt()),
                    Metric::Pearson => {
                        let ca = &a - a.mean().unwrap();
                        let cb = &b - b.mean().unwrap();
                        ca.dot(&cb) / (ca.dot(&ca).sqrt() * cb.dot(&cb).sqrt())
                    }
                    Metric::Euclidean => -(&a - &b).mapv(|v| v * v).sum().sqrt(),
                    Metric::Spearman => unreachable!(),
                };
            }
        }
        out
    }

    fn data() -> Array2<f64> {
        let mut x = Array2::zeros((37, 11));
        for ((i, j), v) in x.indexed_iter_mut() {
            *v = ((i * 31 + j * 17) % 23) as f64 / 7.0 - 1.3 + (i as f64).sin();
        }
        x
    }

    #[test]
    fn blocks_match_naive() {
        let x = data();
        for m in [Metric::Cosine, Metric::Pearson, Metric::Euclidean] {
            let p = Prepared::new(x.view(), m).unwrap();
            let rows: Vec<usize> = (5..20).collect();
            let b = p.block(&rows);
            let want = naive(&x, m);
            for (r, &i) in rows.iter().enumerate() {
                for j in 0..x.nrows() {
                    assert_abs_diff_eq!(b[[r, j]], want[[i, j]], epsilon = 1e-9);
                }
            }
        }
    }

    #[test]
    fn spearman_is_pearson_of_ranks() {
        let x = array![[1.0, 2.0, 2.0, 10.0], [4.0, 3.0, 2.0, 1.0], [0.5, 0.7, 0.9, 5.0]];
        let p = Prepared::new(x.view(), Metric::Spearman).unwrap();
        let b = p.block(&[0, 1, 2]);
        // ranks: [1, 2.5, 2.5, 4], [4,3,2,1], [1,2,3,4]
        let r = array![[1.0, 2.5, 2.5, 4.0], [4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]];
        let want = naive(&r, Metric::Pearson);
        for i in 0..3 {
            for j in 0..3 {
                assert_abs_diff_eq!(b[[i, j]], want[[i, j]], epsilon = 1e-12);
            }
        }
    }

    #[test]
    fn spearman_ties_are_exact_in_any_block_and_symmetric() {
        // rows built to tie: rows 1..=5 each swap one adjacent pair of row 0's ranks, so in real arithmetic each
        // correlates with row 0 at exactly 66 / 70 (normalised rows summed in order put one 1 ulp off)
        let x: Array2<f64> = array![
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            [2.0, 1.0, 3.0, 4.0, 5.0, 6.0],
            [1.0, 3.0, 2.0, 4.0, 5.0, 6.0],
            [1.0, 2.0, 4.0, 3.0, 5.0, 6.0],
            [1.0, 2.0, 3.0, 5.0, 4.0, 6.0],
            [1.0, 2.0, 3.0, 4.0, 6.0, 5.0],
            [6.0, 6.0, 1.0, 1.0, 3.5, 3.5]
        ];
        let p = Prepared::new(x.view(), Metric::Spearman).unwrap();
        let all: Vec<usize> = (0..7).collect();
        let b = p.block(&all);
        for j in 2..6 {
            assert_eq!(b[[0, 1]].to_bits(), b[[0, j]].to_bits(), "tie (0, {j})");
        }
        for i in 0..7 {
            for j in 0..7 {
                assert_eq!(b[[i, j]].to_bits(), b[[j, i]].to_bits(), "({i}, {j})");
            }
        }
        let xf = x.mapv(|v| v as f32);
        let pf = Prepared::new(xf.view(), Metric::Spearman).unwrap();
        let bf = pf.block(&all);
        // one swap of adjacent ranks in 6: 1 - 6 * 2 / (6 * 35) = 66 / 70, up to the final scaling's rounding
        assert_abs_diff_eq!(b[[0, 1]], 66.0 / 70.0, epsilon = 1e-15);
        assert_abs_diff_eq!(bf[[0, 1]] as f64, 66.0 / 70.0, epsilon = 1e-7);
        // the doubled centred ranks are integers, ties included (rank 1.5 -> 2 * 1.5 - 7 = -4)
        let mut z = x.slice(s![6..7, ..]).to_owned();
        let inv = spearman_rows(&mut z).unwrap();
        assert_eq!(z.row(0).to_vec(), vec![4.0, 4.0, -4.0, -4.0, 0.0, 0.0]);
        assert_eq!(inv[0], 1.0 / 64.0f64.sqrt());
    }

    #[test]
    fn bad_inputs_name_the_row() {
        let mut x = data();
        x[[4, 2]] = f64::NAN;
        assert!(matches!(
            Prepared::new(x.view(), Metric::Cosine).err(),
            Some(EvalError::NonFinite { row: 4, col: 2, .. })
        ));
        let mut y = data();
        y.row_mut(7).fill(0.3);
        assert_eq!(
            Prepared::new(y.view(), Metric::Pearson).err(),
            Some(EvalError::ZeroVariance { row: 7, metric: "pearson" })
        );
        assert_eq!(
            Prepared::new(y.view(), Metric::Spearman).err(),
            Some(EvalError::ZeroVariance { row: 7, metric: "spearman" })
        );
        y.row_mut(7).fill(0.0);
        assert_eq!(Prepared::new(y.view(), Metric::Cosine).err(), Some(EvalError::ZeroNorm { row: 7 }));
        assert!(Metric::parse("bogus").is_err());
    }

    #[test]
    fn column_blocks_equal_full_blocks_bit_for_bit() {
        let x = data().mapv(|v| v as f32);
        for m in [Metric::Cosine, Metric::Pearson, Metric::Spearman, Metric::Euclidean] {
            let p = Prepared::new(x.view(), m).unwrap();
            let all: Vec<usize> = (0..37).collect();
            let full = p.block(&all);
            for (rows, cols) in [(vec![3usize], vec![0usize, 5, 36]), (vec![1, 2, 30], vec![2]), (all.clone(), vec![7, 3, 9, 20, 21])] {
                let b = p.block_cols(&rows, Some(&cols));
                for (r, &i) in rows.iter().enumerate() {
                    for (c, &j) in cols.iter().enumerate() {
                        assert_eq!(b[[r, c]].to_bits(), full[[i, j]].to_bits(), "{m:?} ({i}, {j})");
                    }
                }
            }
            assert_eq!(p.block_cols(&[4, 8], None), p.block(&[4, 8]));
        }
    }

    #[test]
    fn f32_agrees_with_f64() {
        let x = data();
        let xf = x.mapv(|v| v as f32);
        let p64 = Prepared::new(x.view(), Metric::Pearson).unwrap();
        let p32 = Prepared::new(xf.view(), Metric::Pearson).unwrap();
        let rows: Vec<usize> = (0..37).collect();
        let a = p64.block(&rows);
        let b = p32.block(&rows);
        for (u, v) in a.iter().zip(b.iter()) {
            assert_abs_diff_eq!(*u, *v as f64, epsilon = 1e-5);
        }
    }
}
