//! Pixel intensities before cropping: illumination correction and intensity rescaling.
//!
//! Data layout: a *stack* of `C` planes of `H x W` values, channel-major then row, column
//! (`data[(c * H + r) * W + col]`); a single image is a stack of one plane. Every operation runs
//! in parallel over planes (rayon) and validates all of its input before writing anything, so an
//! error never leaves partial output.
//!
//! **Illumination correction** ([`correct_illumination`]): each channel is divided pixel by pixel
//! by its flat field (one `H x W` f32 plane per plate x channel, e.g. DeepProfiler's / CellProfiler's
//! illumination function). The flat field must have exactly the image's size, and every flat-field
//! value must be finite and > 0; otherwise the error names the sizes or the first bad position.
//! The result is f32 (`value as f32 / flat`).
//!
//! **Rescaling** ([`Rescale`]) maps each plane to [0, 1]:
//! - `Percentile { low, high }`: `p_lo, p_hi` = the plane's `low`-th and `high`-th percentiles
//!   (0 <= low < high <= 100) as numpy's default `np.percentile(x, q)` ("linear" method: virtual
//!   index `q/100 * (n - 1)` between exact order statistics, numpy's `_lerp` rule), then
//!   `clip((v - p_lo) / (p_hi - p_lo), 0, 1)`; a plane with `p_hi == p_lo` becomes all zeros.
//! - `Range { lo, hi }`: a fixed range, `clip((v - lo) / (hi - lo), 0, 1)`, finite `lo < hi`.
//! - `MinMax`: per-plane min-max as DeepProfiler (see [`crate::crop::rescale_min_max`]; meant for
//!   crops, where each crop's channel is a plane).
//!
//! The arithmetic is in f64 and the stored result is f32. Non-finite input values are errors
//! naming their channel, row and column (rescaling NaN would be silently wrong).
use rayon::prelude::*;

use crate::image::{IngestError, Result};

/// Shape of a stack of planes: channels x height x width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StackShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl StackShape {
    pub fn new(channels: usize, height: usize, width: usize) -> Self {
        Self { channels, height, width }
    }

    /// Values in one plane (H x W).
    pub fn plane(&self) -> usize {
        self.height * self.width
    }

    /// Total values, or an error if it overflows.
    pub fn len(&self) -> Result<usize> {
        self.channels
            .checked_mul(self.height)
            .and_then(|v| v.checked_mul(self.width))
            .ok_or_else(|| IngestError::Invalid(format!("stack shape {self} overflows")))
    }

    pub fn is_empty(&self) -> bool {
        self.channels == 0 || self.height == 0 || self.width == 0
    }

    /// (channel, row, column) of flat index `i`.
    fn position(&self, i: usize) -> (usize, usize, usize) {
        let plane = self.plane().max(1);
        let w = self.width.max(1);
        (i / plane, (i % plane) / w, i % w)
    }

    fn check_len(&self, got: usize, what: &str) -> Result<()> {
        let want = self.len()?;
        if got != want {
            return Err(IngestError::Invalid(format!("{what} has {got} values but its shape {self} needs {want}")));
        }
        Ok(())
    }
}

impl std::fmt::Display for StackShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} channel(s) x {} x {} (H x W)", self.channels, self.height, self.width)
    }
}

/// Error for the first non-finite value of `data` (in index order), if any.
fn check_finite(data: &[f32], shape: StackShape, what: &str) -> Result<()> {
    if let Some(i) = data.par_iter().position_first(|v| !v.is_finite()) {
        let (c, r, col) = shape.position(i);
        return Err(IngestError::Invalid(format!("{what} has a non-finite value ({}) at channel {c}, row {r}, column {col}", data[i])));
    }
    Ok(())
}

/// Divide each channel of `image` (shape `shape`) by the matching plane of `flat` (shape
/// `flat_shape`, which must equal `shape`). Returns the corrected stack as f32. See module docs.
pub fn correct_illumination<T>(image: &[T], shape: StackShape, flat: &[f32], flat_shape: StackShape) -> Result<Vec<f32>>
where
    T: Copy + Into<f32> + Sync,
{
    shape.check_len(image.len(), "image")?;
    flat_shape.check_len(flat.len(), "flat field")?;
    if shape != flat_shape {
        return Err(IngestError::Invalid(format!("flat field is {flat_shape} but the image is {shape}: they must match")));
    }
    if let Some(i) = flat.par_iter().position_first(|v| !(v.is_finite() && *v > 0.0)) {
        let (c, r, col) = shape.position(i);
        return Err(IngestError::Invalid(format!(
            "flat field has value {} at channel {c}, row {r}, column {col}: flat-field values must be finite and > 0",
            flat[i]
        )));
    }
    let plane = shape.plane();
    let mut out = vec![0f32; image.len()];
    if plane == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(plane).zip(image.par_chunks(plane).zip(flat.par_chunks(plane))).for_each(|(o, (x, f))| {
        for ((o, &x), &f) in o.iter_mut().zip(x).zip(f) {
            *o = x.into() / f;
        }
    });
    Ok(out)
}

/// The `k`-th smallest value of `buf` (reorders `buf`). `k < buf.len()`.
fn order_stat(buf: &mut [f32], k: usize) -> f64 {
    let (_, v, _) = buf.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
    *v as f64
}

/// numpy's linear interpolation `_lerp(a, b, t)` (numpy >= 1.22).
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let d = b - a;
    if t >= 0.5 {
        b - d * (1.0 - t)
    } else {
        a + d * t
    }
}

/// Percentiles `qs` (each in [0, 100]) of `values` as `np.percentile(values, qs)` (linear method).
/// `values` must be non-empty and finite (checked). Exact order statistics (selection, O(n) per q).
pub fn percentiles(values: &[f32], qs: &[f64]) -> Result<Vec<f64>> {
    if values.is_empty() {
        return Err(IngestError::Invalid("percentile of an empty plane".into()));
    }
    if let Some(q) = qs.iter().find(|q| !(q.is_finite() && (0.0..=100.0).contains(*q))) {
        return Err(IngestError::Invalid(format!("percentile {q} is outside [0, 100]")));
    }
    check_finite(values, StackShape::new(1, 1, values.len()), "plane")?;
    let n = values.len();
    let mut buf = values.to_vec();
    Ok(qs
        .iter()
        .map(|&q| {
            let vi = (q / 100.0) * (n - 1) as f64;
            let lo = (vi.floor() as usize).min(n - 1);
            let hi = (lo + 1).min(n - 1);
            let t = vi - lo as f64;
            let a = order_stat(&mut buf, lo);
            if hi == lo {
                return a;
            }
            let b = order_stat(&mut buf, hi);
            lerp(a, b, t)
        })
        .collect())
}

/// `clip((v - lo) / (hi - lo), 0, 1)` in f64, stored as f32; zeros when `hi <= lo`.
fn map_range(p: &mut [f32], lo: f64, hi: f64) {
    let range = hi - lo;
    if range > 0.0 && range.is_finite() {
        p.iter_mut().for_each(|v| *v = ((*v as f64 - lo) / range).clamp(0.0, 1.0) as f32);
    } else {
        p.fill(0.0);
    }
}

/// How to map intensities to [0, 1]; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rescale {
    Percentile { low: f64, high: f64 },
    Range { lo: f64, hi: f64 },
    MinMax,
}

impl Rescale {
    /// Check the parameters: `0 <= low < high <= 100`, or finite `lo < hi`.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Rescale::Percentile { low, high } => {
                for (name, q) in [("low", low), ("high", high)] {
                    if !(q.is_finite() && (0.0..=100.0).contains(&q)) {
                        return Err(IngestError::Invalid(format!("{name} percentile {q} is outside [0, 100]")));
                    }
                }
                if low >= high {
                    return Err(IngestError::Invalid(format!("percentiles out of order: low {low} must be < high {high}")));
                }
            }
            Rescale::Range { lo, hi } => {
                if !(lo.is_finite() && hi.is_finite()) || lo >= hi {
                    return Err(IngestError::Invalid(format!("rescale range [{lo}, {hi}] must be finite with lo < hi")));
                }
            }
            Rescale::MinMax => {}
        }
        Ok(())
    }

    /// Rescale every H x W plane of `data` (a stack of `shape`; for crops use N * C planes of
    /// box x box) in place, in parallel over planes. Validates the parameters, the length and that
    /// all values are finite (errors name plane, row, column) before changing anything.
    pub fn apply(&self, data: &mut [f32], shape: StackShape) -> Result<()> {
        self.validate()?;
        shape.check_len(data.len(), "image")?;
        let plane = shape.plane();
        if plane == 0 {
            return Ok(());
        }
        check_finite(data, shape, "image")?;
        match *self {
            Rescale::Percentile { low, high } => {
                data.par_chunks_mut(plane).try_for_each(|p| {
                    let q = percentiles(p, &[low, high])?;
                    map_range(p, q[0], q[1]);
                    Ok(())
                })?;
            }
            Rescale::Range { lo, hi } => data.par_chunks_mut(plane).for_each(|p| map_range(p, lo, hi)),
            Rescale::MinMax => crate::crop::rescale_min_max(data, plane)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn illumination_divides_per_channel() {
        let img: Vec<u16> = vec![10, 20, 30, 40, /* ch1 */ 5, 6, 7, 8];
        let flat = vec![2.0, 4.0, 0.5, 1.0, /* ch1 */ 1.0, 2.0, 4.0, 8.0];
        let s = StackShape::new(2, 2, 2);
        let out = correct_illumination(&img, s, &flat, s).unwrap();
        assert_eq!(out, vec![5.0, 5.0, 60.0, 40.0, 5.0, 3.0, 1.75, 1.0]);
    }

    #[test]
    fn illumination_errors_name_sizes_and_positions() {
        let img = vec![1f32; 6];
        let s = StackShape::new(1, 2, 3);
        let e = correct_illumination(&img, s, &[1.0; 6], StackShape::new(1, 3, 2)).unwrap_err().to_string();
        assert!(e.contains("3 x 2") && e.contains("2 x 3"), "{e}");
        let mut flat = vec![1f32; 6];
        flat[4] = 0.0;
        let e = correct_illumination(&img, s, &flat, s).unwrap_err().to_string();
        assert!(e.contains("row 1, column 1") && e.contains("value 0"), "{e}");
        flat[4] = 1.0;
        flat[2] = f32::NAN;
        let e = correct_illumination(&img, s, &flat, s).unwrap_err().to_string();
        assert!(e.contains("row 0, column 2") && e.contains("NaN"), "{e}");
        flat[2] = -1.0;
        assert!(correct_illumination(&img, s, &flat, s).is_err());
        assert!(correct_illumination(&img[..5], s, &[1.0; 6], s).is_err());
    }

    #[test]
    fn percentiles_match_numpy_linear_by_hand() {
        // sorted: 1 2 3 4 10; n - 1 = 4.
        let v = [4.0, 1.0, 10.0, 3.0, 2.0];
        // q=0 -> 1; q=100 -> 10; q=50 -> idx 2 -> 3; q=90 -> idx 3.6 -> 4 + 0.6*6 = 7.6;
        // q=10 -> idx 0.4 -> 1 + 0.4 = 1.4; q=87.5 -> idx 3.5 -> 4 + 3 = 7.
        let q = percentiles(&v, &[0.0, 100.0, 50.0, 90.0, 10.0, 87.5]).unwrap();
        let want = [1.0, 10.0, 3.0, 7.6, 1.4, 7.0];
        for (a, b) in q.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{q:?}");
        }
        assert_eq!(percentiles(&[7.0], &[0.0, 33.0, 100.0]).unwrap(), vec![7.0, 7.0, 7.0]);
        assert!(percentiles(&[], &[50.0]).is_err());
        assert!(percentiles(&v, &[101.0]).is_err());
        assert!(percentiles(&[1.0, f32::NAN], &[50.0]).is_err());
    }

    #[test]
    fn percentile_rescale_clips_per_plane() {
        // plane 0 sorted 0 1 2 ... 10 (11 values): p10 = 1, p90 = 9.
        let mut d: Vec<f32> = (0..11).rev().map(|v| v as f32).collect();
        d.extend(std::iter::repeat(3.0).take(11)); // constant plane -> zeros
        Rescale::Percentile { low: 10.0, high: 90.0 }.apply(&mut d, StackShape::new(2, 1, 11)).unwrap();
        let want: Vec<f32> = (0..11).rev().map(|v| ((v as f32 - 1.0) / 8.0).clamp(0.0, 1.0)).collect();
        assert_eq!(&d[..11], &want[..]);
        assert!(d[11..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn range_rescale_and_min_max() {
        let mut d = vec![-5.0, 100.0, 150.0, 200.0, 1000.0, 175.0];
        Rescale::Range { lo: 100.0, hi: 200.0 }.apply(&mut d, StackShape::new(2, 1, 3)).unwrap();
        assert_eq!(d, vec![0.0, 0.0, 0.5, 1.0, 1.0, 0.75]);
        let mut d = vec![2.0, 4.0, 6.0, 1.0, 1.0, 1.0];
        Rescale::MinMax.apply(&mut d, StackShape::new(2, 3, 1)).unwrap();
        assert_eq!(d, vec![0.0, 0.5, 1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn rescale_bad_parameters_and_input_leave_data_untouched() {
        let orig = vec![1.0, 2.0, 3.0, f32::INFINITY];
        for r in [
            Rescale::Percentile { low: 99.0, high: 1.0 },
            Rescale::Percentile { low: 5.0, high: 5.0 },
            Rescale::Percentile { low: -1.0, high: 50.0 },
            Rescale::Range { lo: 2.0, hi: 1.0 },
            Rescale::Range { lo: f64::NAN, hi: 1.0 },
        ] {
            let mut d = orig[..3].to_vec();
            assert!(r.apply(&mut d, StackShape::new(1, 1, 3)).is_err(), "{r:?}");
            assert_eq!(d, &orig[..3]);
        }
        let mut d = orig.clone();
        let e = Rescale::Range { lo: 0.0, hi: 1.0 }.apply(&mut d, StackShape::new(1, 2, 2)).unwrap_err().to_string();
        assert!(e.contains("channel 0, row 1, column 1"), "{e}");
        assert_eq!(d[..3], orig[..3]);
        assert!(Rescale::MinMax.apply(&mut d[..3], StackShape::new(1, 2, 2)).is_err());
    }
}
