//! float32 -> float16 (IEEE binary16) casts of feature rows, the storage type of embeddings.
//!
//! Round to nearest, ties to even; values below float16's normal range go to its subnormals or
//! zero: numpy's `astype(np.float16)` bit for bit (NaN stays NaN, +-inf stays +-inf). A finite
//! value that float16 cannot hold (|v| >= 65520, which numpy turns into inf with a warning) is an
//! error naming its row and column: stored features are never silently infinite. Through the `half` crate's slice conversion, which uses the CPU's F16C instructions when
//! it has them (runtime detection). numpy's own cast raises the floating-point underflow flag with
//! a libm call per value that lands below the normal range, which made casting the features of an
//! untrained EfficientNet-B0 (all around 1e-15) 27x slower than casting ordinary values; here the
//! cost does not depend on the values.
use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::error::{EvalError, Result};

/// `src` cast to float16, element by element.
pub fn to_f16(src: &[f32]) -> Vec<f16> {
    let mut out = vec![f16::ZERO; src.len()];
    out.convert_from_f32_slice(src);
    out
}

/// [`to_f16`] of rows of `row_len` values (a row-major matrix), or an error naming the first finite
/// value beyond float16's range by row and column.
pub fn features_to_f16(src: &[f32], row_len: usize) -> Result<Vec<f16>> {
    let out = to_f16(src);
    if let Some(i) = out.iter().zip(src).position(|(h, v)| h.is_infinite() && v.is_finite()) {
        let cols = row_len.max(1);
        return Err(EvalError::Invalid(format!(
            "feature value {} at row {}, column {} is beyond float16's range (+-65504): store the features as float32",
            src[i],
            i / cols,
            i % cols
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_range_and_specials() {
        let tiny = f16::from_bits(1).to_f32(); // smallest subnormal, 2^-24
        let cases: [(f32, u16); 12] = [
            (0.0, 0x0000),
            (-0.0, 0x8000),
            (1.0, 0x3c00),
            (65504.0, 0x7bff),
            (65520.0, 0x7c00),       // halfway to the next binade rounds up to inf
            (1e6, 0x7c00),
            (-1e6, 0xfc00),
            (f32::INFINITY, 0x7c00),
            (tiny, 0x0001),
            (tiny * 0.5, 0x0000),    // tie between 0 and the smallest subnormal: to even (0)
            (tiny * 1.5, 0x0002),    // tie between 1 and 2 ulps: to even (2)
            (1.0 + 1.0 / 2048.0, 0x3c00), // tie between 1 and 1 + 2^-10: to even
        ];
        let src: Vec<f32> = cases.iter().map(|c| c.0).collect();
        let got: Vec<u16> = to_f16(&src).iter().map(|h| h.to_bits()).collect();
        let want: Vec<u16> = cases.iter().map(|c| c.1).collect();
        assert_eq!(got, want);
        assert!(to_f16(&[f32::NAN])[0].is_nan());
        assert!(to_f16(&[]).is_empty());
    }

    #[test]
    fn out_of_range_features_are_an_error_naming_row_and_column() {
        let x = [1.0f32, 2.0, f32::INFINITY, 4.0, 65519.0, -70000.0];
        let e = features_to_f16(&x, 3).unwrap_err().to_string();
        assert!(e.contains("-70000 at row 1, column 2"), "{e}");
        let ok = features_to_f16(&x[..5], 3).unwrap(); // inf itself and 65519 (rounds to 65504) are fine
        assert_eq!(ok[2], f16::INFINITY);
        assert_eq!(ok[4], f16::MAX);
    }

    #[test]
    fn odd_lengths_match_the_scalar_cast() {
        // the slice path works in chunks of 8 with a scalar tail: every length up to 3 chunks
        for n in 0..27usize {
            let src: Vec<f32> = (0..n).map(|i| (i as f32 - 13.0) * 0.37e-5 * (1 + i % 5) as f32).collect();
            let got = to_f16(&src);
            assert!(got.iter().zip(&src).all(|(h, &v)| h.to_bits() == f16::from_f32(v).to_bits()), "n = {n}");
        }
    }
}
