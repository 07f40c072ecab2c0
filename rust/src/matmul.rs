//! The similarity GEMM: `out = A · Bᵀ` for row-major A (m x k) and B (n x k), f32 or f64.
//!
//! Computed by the `gemm` crate (pure Rust; AVX2/FMA or AVX-512 chosen at run time, so the library
//! runs on any x86-64 CPU), single-threaded per call: callers split their columns across the rayon
//! pool themselves.
//!
//! **Shape-independent values.** Every output element is the same float result whatever the shape
//! of the call it came from (which rows, which columns, how many): a block against all rows and a
//! block against a subset of columns agree bit for bit, as do blocks of any size. The `gemm` crate
//! alone does not promise this (it picks its depth blocking from the sizes, and 1-row or 1-column
//! products take a GEMV path with another summation order), so this module
//! - splits the depth k into fixed chunks of at most [`DEPTH_CHUNK`] that depend on k only (each
//!   chunk is one depth pass inside `gemm`, accumulated into `out` in chunk order), and
//! - never hands `gemm` a small product (one row or one column, which `gemm` computes as a GEMV, or
//!   at most 16 x 16 outputs, which it computes with horizontal dot products): such a product is
//!   padded to at least [`MIN_SIDE`] rows and columns (copies of its first row) and the extra
//!   output dropped.
use ndarray::{s, Array2, ArrayView2, ArrayViewMut2};

use crate::similarity::Real;

/// Depth per `gemm` call: at or below the smallest depth block `gemm` uses (512), so each call is a
/// single pass over its depth and the per-element summation order depends on k alone.
pub const DEPTH_CHUNK: usize = 512;

/// Rows and columns a small product is padded to (`gemm` takes its horizontal path at <= 256 outputs).
pub const MIN_SIDE: usize = 17;

fn pad_rows<T: Real>(x: ArrayView2<T>) -> Array2<T> {
    let mut out = Array2::from_elem((x.nrows().max(MIN_SIDE), x.ncols()), T::zero());
    for mut row in out.rows_mut() {
        row.assign(&x.row(0));
    }
    out.slice_mut(s![..x.nrows(), ..]).assign(&x);
    out
}

/// The chunks `[k0, k1)` the depth k is split into (equal sizes, each <= DEPTH_CHUNK).
pub fn depth_chunks(k: usize) -> Vec<(usize, usize)> {
    if k == 0 {
        return vec![];
    }
    let parts = k.div_ceil(DEPTH_CHUNK);
    let size = k.div_ceil(parts);
    (0..parts).map(|p| (p * size, ((p + 1) * size).min(k))).filter(|(a, b)| a < b).collect()
}

/// `out = a · bᵀ` (out: a.nrows() x b.nrows(); any strides), single-threaded.
pub fn matmul_nt<T: Real>(a: ArrayView2<T>, b: ArrayView2<T>, mut out: ArrayViewMut2<T>) {
    let (m, k) = a.dim();
    let n = b.nrows();
    assert_eq!(b.ncols(), k, "matmul_nt: depth mismatch");
    assert_eq!(out.dim(), (m, n), "matmul_nt: output shape");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(T::zero());
        return;
    }
    if m < 2 || n < 2 || m * n <= 256 {
        // the kernel path, not gemm's GEMV or horizontal path (see the module notes)
        let a2 = pad_rows(a);
        let b2 = pad_rows(b);
        let mut o2 = Array2::<T>::zeros((a2.nrows(), b2.nrows()));
        matmul_nt(a2.view(), b2.view(), o2.view_mut());
        out.assign(&o2.slice(s![..m, ..n]));
        return;
    }
    let (a_rs, a_cs) = (a.strides()[0], a.strides()[1]);
    let (b_rs, b_cs) = (b.strides()[0], b.strides()[1]);
    let (o_rs, o_cs) = (out.strides()[0], out.strides()[1]);
    let (pa, pb, po) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
    for (ci, (k0, k1)) in depth_chunks(k).into_iter().enumerate() {
        // SAFETY: the views give valid pointers and strides for the extents passed; out does not
        // alias a or b (it is borrowed mutably); the depth slice [k0, k1) lies inside k.
        unsafe {
            gemm::gemm(
                m,
                n,
                k1 - k0,
                po,
                o_cs,
                o_rs,
                ci > 0, // read (accumulate into) out after the first chunk
                pa.offset(k0 as isize * a_cs),
                a_cs,
                a_rs,
                // rhs = bᵀ (k x n): element (kk, j) is b[j, kk]
                pb.offset(k0 as isize * b_cs),
                b_rs,
                b_cs,
                T::one(),
                T::one(),
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, k: usize, seed: u64) -> Array2<f32> {
        let mut s = seed;
        Array2::from_shape_fn((n, k), |_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
    }

    #[test]
    fn chunks_cover_the_depth() {
        assert_eq!(depth_chunks(0), vec![]);
        assert_eq!(depth_chunks(3), vec![(0, 3)]);
        assert_eq!(depth_chunks(512), vec![(0, 512)]);
        assert_eq!(depth_chunks(1280), vec![(0, 427), (427, 854), (854, 1280)]);
    }

    #[test]
    fn close_to_f64_reference() {
        let a = data(70, 1100, 1);
        let b = data(90, 1100, 2);
        let mut o = Array2::<f32>::zeros((70, 90));
        matmul_nt(a.view(), b.view(), o.view_mut());
        let r = a.mapv(|v| v as f64).dot(&b.mapv(|v| v as f64).t());
        for (x, y) in o.iter().zip(r.iter()) {
            assert!((*x as f64 - y).abs() < 1e-4, "{x} vs {y}");
        }
    }

    #[test]
    fn values_do_not_depend_on_the_shape() {
        // the full product, then sub-products of many shapes (1 row, 1 column, small, odd, large), bit for bit
        for k in [1usize, 2, 3, 37, 513, 1280] {
            let a = data(150, k, 3);
            let mut full = Array2::<f32>::zeros((150, 150));
            matmul_nt(a.view(), a.view(), full.view_mut());
            for &(r0, r1, c0, c1) in &[(0, 1, 0, 150), (5, 6, 7, 8), (3, 70, 9, 10), (10, 11, 0, 65), (0, 150, 3, 140), (17, 100, 40, 111)] {
                let mut o = Array2::<f32>::zeros((r1 - r0, c1 - c0));
                matmul_nt(a.slice(s![r0..r1, ..]), a.slice(s![c0..c1, ..]), o.view_mut());
                assert_eq!(o, full.slice(s![r0..r1, c0..c1]), "k={k} rows {r0}..{r1} cols {c0}..{c1}");
            }
            // a strided output (a column chunk of a wider block)
            let mut wide = Array2::<f32>::zeros((20, 150));
            matmul_nt(a.slice(s![0..20, ..]), a.slice(s![100..150, ..]), wide.slice_mut(s![.., 100..150]));
            assert_eq!(wide.slice(s![.., 100..150]), full.slice(s![0..20, 100..150]), "k={k} strided out");
        }
    }
}
