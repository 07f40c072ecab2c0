//! Single-cell crops: C x box x box windows cut around nucleus centres, with an explicit edge
//! policy and a recorded outcome per cell.
//!
//! **Geometry.** A centre is `(x, y)` in pixels with x = column and y = row (CellProfiler's
//! `Location_Center_X/Y`). It is rounded to a pixel by round-half-up, `cx = floor(x + 0.5)`,
//! `cy = floor(y + 0.5)`, and the box's top-left pixel is `(cy - box/2, cx - box/2)` (integer
//! division), so the box covers rows `cy - box/2 .. cy - box/2 + box` (end exclusive): the centre
//! pixel sits at index `box/2` of the crop (64 for box 128; the middle for odd boxes). In numpy
//! terms a crop is `img[cy - box//2 : cy - box//2 + box, cx - box//2 : cx - box//2 + box]`.
//! DeepProfiler instead resamples a box of the same size around the unrounded centre with
//! `tf.image.crop_and_resize` (bilinear, zero outside); we cut whole pixels, so no pixel is
//! interpolated.
//!
//! **Outcomes** ([`EdgeOutcome`], code in parentheses): a box wholly inside the image is
//! `Inside` (0) whatever the policy. Otherwise the policy decides: [`EdgePolicy::Drop`] leaves the
//! crop all zeros (`Dropped`, 3); [`EdgePolicy::Shift`] moves the box the least distance that puts it
//! inside the image (`Shifted`, 1; when the box is larger than the image it cannot fit and the
//! cell is `Dropped`); [`EdgePolicy::Pad`] keeps the box where it is and fills pixels outside the
//! image with 0 (`Padded`, 2). A centre that is NaN or infinite, or whose rounded pixel lies
//! outside the image, is `Invalid` (4) under every policy and its crop is all zeros.
//!
//! **Rescaling.** [`rescale_min_max`] maps each crop's each channel to [0, 1] as DeepProfiler
//! does: `(v - min) / (max - min)` over that channel's box x box values (padding zeros included);
//! a constant channel becomes all zeros.
use rayon::prelude::*;

use crate::image::{Image, IngestError, Result};

/// What to do with a box that does not lie wholly inside the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgePolicy {
    Drop,
    Shift,
    Pad,
}

impl EdgePolicy {
    /// Parse `"drop"`, `"shift"` or `"pad"`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "drop" => Ok(Self::Drop),
            "shift" => Ok(Self::Shift),
            "pad" => Ok(Self::Pad),
            _ => Err(IngestError::Invalid(format!("unknown edge policy {s:?}: use one of drop, shift, pad"))),
        }
    }
}

/// What happened to one cell's crop; `code()` is the stored int8 code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum EdgeOutcome {
    Inside = 0,
    Shifted = 1,
    Padded = 2,
    Dropped = 3,
    Invalid = 4,
}

impl EdgeOutcome {
    pub fn code(self) -> i8 {
        self as i8
    }
}

/// Top-left (row, column) of the box around `(x, y)` before any edge policy, or `None` when the
/// centre is non-finite or its rounded pixel lies outside a `width` x `height` image.
pub fn box_origin(x: f64, y: f64, box_size: usize, width: usize, height: usize) -> Option<(i64, i64)> {
    if !x.is_finite() || !y.is_finite() {
        return None;
    }
    let (cx, cy) = ((x + 0.5).floor(), (y + 0.5).floor());
    if cx < 0.0 || cy < 0.0 || cx >= width as f64 || cy >= height as f64 {
        return None;
    }
    let half = (box_size / 2) as i64;
    Some((cy as i64 - half, cx as i64 - half))
}

/// Where one cell's box goes: its outcome and, when a crop is cut (outcomes 0-2), the box's
/// top-left (row, column) after the edge policy (may be negative or run past the image for `Padded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub outcome: EdgeOutcome,
    pub origin: Option<(i64, i64)>,
}

impl Placement {
    /// True when a crop is cut (inside, shifted or padded; codes 0-2).
    pub fn kept(&self) -> bool {
        self.origin.is_some()
    }
}

/// Apply the geometry and the edge policy to one centre (see the module docs).
pub fn place(x: f64, y: f64, box_size: usize, width: usize, height: usize, edge: EdgePolicy) -> Placement {
    let none = |outcome| Placement { outcome, origin: None };
    let Some((r0, c0)) = box_origin(x, y, box_size, width, height) else {
        return none(EdgeOutcome::Invalid);
    };
    let (b, wi, hi) = (box_size as i64, width as i64, height as i64);
    if r0 >= 0 && c0 >= 0 && r0 + b <= hi && c0 + b <= wi {
        return Placement { outcome: EdgeOutcome::Inside, origin: Some((r0, c0)) };
    }
    match edge {
        EdgePolicy::Drop => none(EdgeOutcome::Dropped),
        EdgePolicy::Shift if b > hi || b > wi => none(EdgeOutcome::Dropped),
        EdgePolicy::Shift => Placement { outcome: EdgeOutcome::Shifted, origin: Some((r0.clamp(0, hi - b), c0.clamp(0, wi - b))) },
        EdgePolicy::Pad => Placement { outcome: EdgeOutcome::Padded, origin: Some((r0, c0)) },
    }
}

/// A borrowed single-channel `height x width` plane, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Plane<'a, S> {
    pub width: usize,
    pub height: usize,
    pub data: &'a [S],
}

impl<'a> Plane<'a, u16> {
    pub fn of(im: &'a Image) -> Self {
        Plane { width: im.width, height: im.height, data: &im.data }
    }
}

/// Check the planes (at least one, all one size, data of that size) and the box; returns (W, H).
fn check_planes<S>(planes: &[Plane<'_, S>], box_size: usize) -> Result<(usize, usize)> {
    let Some(first) = planes.first() else {
        return Err(IngestError::Invalid("cropping needs at least one channel".into()));
    };
    let (w, h) = (first.width, first.height);
    if let Some((i, c)) = planes.iter().enumerate().find(|(_, c)| c.width != w || c.height != h || c.data.len() != w * h) {
        return Err(IngestError::Invalid(format!("channel {i} is {} x {} (W x H) but channel 0 is {w} x {h}", c.width, c.height)));
    }
    if box_size == 0 {
        return Err(IngestError::Invalid("box size must be at least 1 pixel".into()));
    }
    Ok((w, h))
}

/// Check `out` holds one C x box x box row per placement; returns (W, H, values per row).
fn check_out<S, T>(planes: &[Plane<'_, S>], placements: &[Placement], box_size: usize, out: &[T]) -> Result<(usize, usize, usize)> {
    let (w, h) = check_planes(planes, box_size)?;
    let nc = planes.len();
    let per_cell = nc * box_size * box_size;
    if placements.len().checked_mul(per_cell) != Some(out.len()) {
        return Err(IngestError::Invalid(format!(
            "crop output buffer has {} values, expected {} cells x {nc} channels x {box_size} x {box_size}",
            out.len(),
            placements.len()
        )));
    }
    Ok((w, h, per_cell))
}

/// The box of `origin` when it lies wholly inside a `w` x `h` image.
fn whole_box(origin: (i64, i64), box_size: usize, w: usize, h: usize) -> bool {
    let (r0, c0) = origin;
    let b = box_size as i64;
    r0 >= 0 && c0 >= 0 && r0 + b <= h as i64 && c0 + b <= w as i64
}

/// Cut one placement's crop into its row `dst` (see [`cut_crops`]).
fn cut_row<S, T>(planes: &[Plane<'_, S>], p: &Placement, box_size: usize, dst: &mut [T])
where
    S: Copy + Into<T>,
    T: Copy + Default,
{
    let Some((r0, c0)) = p.origin else {
        dst.fill(T::default());
        return;
    };
    let (w, h) = (planes[0].width, planes[0].height);
    let plane = box_size * box_size;
    let b = box_size as i64;
    // Intersection of the box with the image, in image and crop coordinates.
    let (ra, rb) = (r0.max(0), (r0 + b).min(h as i64));
    let (ca, cb) = (c0.max(0), (c0 + b).min(w as i64));
    if !whole_box((r0, c0), box_size, w, h) {
        dst.fill(T::default());
    }
    if ra < rb && ca < cb {
        let ncols = (cb - ca) as usize;
        for (ch, img) in planes.iter().enumerate() {
            let dplane = &mut dst[ch * plane..(ch + 1) * plane];
            for r in ra..rb {
                let src = &img.data[r as usize * w + ca as usize..][..ncols];
                let drow = (r - r0) as usize * box_size + (ca - c0) as usize;
                for (d, &s) in dplane[drow..drow + ncols].iter_mut().zip(src) {
                    *d = s.into();
                }
            }
        }
    }
}

/// Cut one C x box x box crop per placement into `out` (one row of C x box x box values per
/// placement, in order), converting each value with `Into`. A placement without an origin gives an
/// all-zero row; pixels of a padded box outside the image are zero. Rows whose box lies wholly
/// inside the image are written once (no zero fill first). Parallel over rows.
pub fn cut_crops<S, T>(planes: &[Plane<'_, S>], placements: &[Placement], box_size: usize, out: &mut [T]) -> Result<()>
where
    S: Copy + Into<T> + Sync,
    T: Copy + Default + Send,
{
    let (_, _, per_cell) = check_out(planes, placements, box_size, out)?;
    if per_cell == 0 {
        return Ok(());
    }
    out.par_chunks_mut(per_cell).zip(placements.par_iter()).for_each(|(dst, p)| cut_row(planes, p, box_size, dst));
    Ok(())
}

/// [`cut_crops`] followed by [`rescale_min_max`] of every plane, in one pass over each crop: the
/// same f32 values bit for bit. A box wholly inside the image takes its min and max from the
/// source rows and writes each value once as `(v - min) / (max - min)`; other rows (padded, or
/// without a crop) are cut and then rescaled (their zeros count). Parallel over rows.
pub fn cut_crops_min_max<S>(planes: &[Plane<'_, S>], placements: &[Placement], box_size: usize, out: &mut [f32]) -> Result<()>
where
    S: Copy + Into<f32> + Sync,
{
    let (w, h, per_cell) = check_out(planes, placements, box_size, out)?;
    if per_cell == 0 {
        return Ok(());
    }
    let plane = box_size * box_size;
    out.par_chunks_mut(per_cell).zip(placements.par_iter()).for_each(|(dst, p)| {
        let origin = p.origin.filter(|&o| whole_box(o, box_size, w, h));
        let Some((r0, c0)) = origin else {
            cut_row(planes, p, box_size, dst);
            dst.chunks_mut(plane).for_each(min_max_plane);
            return;
        };
        let (r0, c0) = (r0 as usize, c0 as usize);
        for (img, dplane) in planes.iter().zip(dst.chunks_mut(plane)) {
            let rows = || (r0..r0 + box_size).map(|r| &img.data[r * w + c0..][..box_size]);
            let (lo, hi) = rows().flatten().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                let v: f32 = v.into();
                (lo.min(v), hi.max(v))
            });
            let range = hi - lo;
            if range > 0.0 && range.is_finite() {
                for (drow, src) in dplane.chunks_mut(box_size).zip(rows()) {
                    for (d, &s) in drow.iter_mut().zip(src) {
                        let v: f32 = s.into();
                        *d = (v - lo) / range;
                    }
                }
            } else {
                dplane.fill(0.0);
            }
        }
    });
    Ok(())
}

/// Cut one C x box x box crop per centre into `out` (length N x C x box x box, cell-major then
/// channel, row, column) and return each cell's outcome. Runs in parallel over cells.
///
/// Errors (never partial output): no channels, channels of different sizes, `box_size` 0, or an
/// `out` of the wrong length. `out` is overwritten entirely (zeros where nothing is copied).
pub fn crop_cells<T>(channels: &[Image], centers: &[(f64, f64)], box_size: usize, edge: EdgePolicy, out: &mut [T]) -> Result<Vec<EdgeOutcome>>
where
    T: Copy + Default + From<u16> + Send,
{
    let planes: Vec<Plane<'_, u16>> = channels.iter().map(Plane::of).collect();
    let (w, h) = check_planes(&planes, box_size)?;
    let placements: Vec<Placement> = centers.iter().map(|&(x, y)| place(x, y, box_size, w, h, edge)).collect();
    cut_crops(&planes, &placements, box_size, out)?;
    Ok(placements.iter().map(|p| p.outcome).collect())
}

/// Per-crop per-channel min-max rescale to [0, 1] in place (DeepProfiler semantics; see the
/// module docs). `crops` holds whole planes of `plane` values (box x box); a constant plane
/// becomes zeros. Runs in parallel over planes.
pub fn rescale_min_max(crops: &mut [f32], plane: usize) -> Result<()> {
    if plane == 0 || crops.len() % plane != 0 {
        return Err(IngestError::Invalid(format!("{} values do not split into planes of {plane}", crops.len())));
    }
    crops.par_chunks_mut(plane).for_each(min_max_plane);
    Ok(())
}

/// One plane to [0, 1] by its min and max; a constant (or non-finite range) plane becomes zeros.
fn min_max_plane(p: &mut [f32]) {
    let (lo, hi) = p.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let range = hi - lo;
    if range > 0.0 && range.is_finite() {
        p.iter_mut().for_each(|v| *v = (*v - lo) / range);
    } else {
        p.fill(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pixel value encodes its position: v = 100 * row + col (+ 10000 * channel).
    fn img(w: usize, h: usize, ch: u16) -> Image {
        let data = (0..h).flat_map(|r| (0..w).map(move |c| (10000 * ch as usize + 100 * r + c) as u16)).collect();
        Image { width: w, height: h, bit_depth: 16, data }
    }

    fn run(ims: &[Image], centers: &[(f64, f64)], b: usize, e: EdgePolicy) -> (Vec<u16>, Vec<EdgeOutcome>) {
        let mut out = vec![7u16; centers.len() * ims.len() * b * b];
        let oc = crop_cells(ims, centers, b, e, &mut out).unwrap();
        (out, oc)
    }

    #[test]
    fn inside_crop_and_rounding() {
        let ims = [img(10, 8, 0), img(10, 8, 1)];
        // x = 4.5 rounds up to column 5; y = 3.49 rounds to row 3. Box 3: rows 2..5, cols 4..7.
        let (out, oc) = run(&ims, &[(4.5, 3.49)], 3, EdgePolicy::Drop);
        assert_eq!(oc, vec![EdgeOutcome::Inside]);
        assert_eq!(&out[..9], &[204, 205, 206, 304, 305, 306, 404, 405, 406]);
        assert_eq!(out[9], 10204); // channel 1 plane starts with its own top-left pixel
        // Even box 4 around (5, 4): rows 2..6, cols 3..7; the centre pixel sits at (2, 2).
        let (out, _) = run(&ims[..1], &[(5.0, 4.0)], 4, EdgePolicy::Drop);
        assert_eq!(out[0], 203);
        assert_eq!(out[2 * 4 + 2], 405);
        assert_eq!(out[15], 506);
        // Half-up rounding at negative halves: x = -0.5 -> column 0 (valid), x = -0.51 -> -1 (invalid).
        assert_eq!(box_origin(-0.5, 0.0, 1, 3, 3), Some((0, 0)));
        assert_eq!(box_origin(-0.51, 0.0, 1, 3, 3), None);
        assert_eq!(box_origin(2.49, 2.49, 1, 3, 3), Some((2, 2)));
        assert_eq!(box_origin(2.5, 0.0, 1, 3, 3), None);
    }

    #[test]
    fn edge_policies() {
        let ims = [img(6, 5, 0)];
        let c = [(0.0, 0.0)]; // box 3 at top-left corner: rows -1..2, cols -1..2
        let (out, oc) = run(&ims, &c, 3, EdgePolicy::Drop);
        assert_eq!(oc, vec![EdgeOutcome::Dropped]);
        assert!(out.iter().all(|&v| v == 0));

        let (out, oc) = run(&ims, &c, 3, EdgePolicy::Pad);
        assert_eq!(oc, vec![EdgeOutcome::Padded]);
        assert_eq!(out, vec![0, 0, 0, 0, 0, 1, 0, 100, 101]);

        let (out, oc) = run(&ims, &c, 3, EdgePolicy::Shift);
        assert_eq!(oc, vec![EdgeOutcome::Shifted]);
        assert_eq!(out, vec![0, 1, 2, 100, 101, 102, 200, 201, 202]);

        // Bottom-right corner (5, 4): shift moves the box to rows 2..5, cols 3..6.
        let (out, oc) = run(&ims, &[(5.0, 4.0)], 3, EdgePolicy::Shift);
        assert_eq!(oc, vec![EdgeOutcome::Shifted]);
        assert_eq!(out, vec![203, 204, 205, 303, 304, 305, 403, 404, 405]);
        let (out, oc) = run(&ims, &[(5.0, 4.0)], 3, EdgePolicy::Pad);
        assert_eq!(oc, vec![EdgeOutcome::Padded]);
        assert_eq!(out, vec![304, 305, 0, 404, 405, 0, 0, 0, 0]);

        // Box larger than the image: shift cannot fit it -> Dropped; pad still works.
        let (out, oc) = run(&ims, &[(2.0, 2.0)], 7, EdgePolicy::Shift);
        assert_eq!(oc, vec![EdgeOutcome::Dropped]);
        assert!(out.iter().all(|&v| v == 0));
        let (out, oc) = run(&ims, &[(2.0, 2.0)], 7, EdgePolicy::Pad);
        assert_eq!(oc, vec![EdgeOutcome::Padded]);
        // Box rows -1..6, cols -1..6: pixel (0, 0) lands at crop (1, 1).
        assert_eq!(out[7 + 1], 0 + 0);
        assert_eq!(out[7 + 2], 1);
        assert_eq!(out[5 * 7 + 6], 405);
        assert_eq!(out[6 * 7 + 6], 0);
    }

    #[test]
    fn invalid_centres_never_panic() {
        let ims = [img(6, 5, 0)];
        let c = [(f64::NAN, 1.0), (1.0, f64::INFINITY), (-3.0, 2.0), (6.0, 1.0), (1.0, 5.0), (1e300, -1e300), (2.0, 2.0)];
        for e in [EdgePolicy::Drop, EdgePolicy::Shift, EdgePolicy::Pad] {
            let (out, oc) = run(&ims, &c, 3, e);
            assert_eq!(&oc[..6], &[EdgeOutcome::Invalid; 6]);
            assert_eq!(oc[6], EdgeOutcome::Inside);
            assert!(out[..6 * 9].iter().all(|&v| v == 0));
            assert_eq!(out[6 * 9], 101);
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let ims = [img(6, 5, 0), img(5, 6, 1)];
        let mut out = vec![0u16; 18];
        assert!(crop_cells(&ims, &[(1.0, 1.0)], 3, EdgePolicy::Pad, &mut out).is_err());
        assert!(crop_cells(&ims[..1], &[(1.0, 1.0)], 3, EdgePolicy::Pad, &mut out).is_err()); // wrong out length
        assert!(crop_cells(&ims[..1], &[(1.0, 1.0)], 0, EdgePolicy::Pad, &mut out[..0]).is_err());
        assert!(crop_cells::<u16>(&[], &[], 3, EdgePolicy::Pad, &mut []).is_err());
        assert!(EdgePolicy::parse("zero").is_err());
        assert_eq!(EdgePolicy::parse("shift").unwrap(), EdgePolicy::Shift);
    }

    #[test]
    fn float_output_and_rescale() {
        let ims = [img(6, 5, 0), Image { width: 6, height: 5, bit_depth: 8, data: vec![9; 30] }];
        let mut out = vec![0f32; 2 * 4];
        let oc = crop_cells(&ims, &[(1.0, 1.0)], 2, EdgePolicy::Pad, &mut out).unwrap();
        assert_eq!(oc, vec![EdgeOutcome::Inside]);
        assert_eq!(out, vec![0.0, 1.0, 100.0, 101.0, 9.0, 9.0, 9.0, 9.0]);
        rescale_min_max(&mut out, 4).unwrap();
        assert_eq!(out, vec![0.0, 1.0 / 101.0, 100.0 / 101.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(rescale_min_max(&mut out, 3).is_err());
    }

    /// Cut + rescale in two passes, the reference for the fused path.
    fn two_pass<S: Copy + Into<f32> + Sync>(planes: &[Plane<'_, S>], pl: &[Placement], b: usize) -> Vec<f32> {
        let mut out = vec![0f32; pl.len() * planes.len() * b * b];
        cut_crops(planes, pl, b, &mut out).unwrap();
        rescale_min_max(&mut out, b * b).unwrap();
        out
    }

    #[test]
    fn fused_min_max_is_bit_identical_to_two_passes() {
        let (w, h, b) = (23usize, 17usize, 6usize);
        // Pseudo-random 16-bit pixels (LCG), a constant channel, and every edge outcome.
        let mut x = 12345u32;
        let mut noise = || {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            (x >> 16) as u16
        };
        let a: Vec<u16> = (0..w * h).map(|_| noise()).collect();
        let c: Vec<u16> = (0..w * h).map(|_| noise() % 7 + 100).collect();
        let k = vec![42u16; w * h];
        let planes = [Plane { width: w, height: h, data: &a[..] }, Plane { width: w, height: h, data: &c[..] }, Plane { width: w, height: h, data: &k[..] }];
        let centres = [(8.0, 8.0), (11.3, 9.6), (0.0, 0.0), (22.0, 16.0), (3.0, 14.0), (f64::NAN, 2.0), (30.0, 2.0)];
        for edge in [EdgePolicy::Drop, EdgePolicy::Shift, EdgePolicy::Pad] {
            let pl: Vec<Placement> = centres.iter().map(|&(cx, cy)| place(cx, cy, b, w, h, edge)).collect();
            let mut fused = vec![f32::NAN; pl.len() * 3 * b * b];
            cut_crops_min_max(&planes, &pl, b, &mut fused).unwrap();
            let want = two_pass(&planes, &pl, b);
            assert_eq!(fused.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{edge:?}");
            // The constant channel is zeros, the others span [0, 1] for whole boxes.
            let row = &fused[..3 * b * b];
            assert!(row[2 * b * b..].iter().all(|&v| v == 0.0));
            for p in [&row[..b * b], &row[b * b..2 * b * b]] {
                assert_eq!(p.iter().cloned().fold(f32::INFINITY, f32::min), 0.0);
                assert_eq!(p.iter().cloned().fold(f32::NEG_INFINITY, f32::max), 1.0);
            }
        }
        // Float sources with NaN and infinity behave as in two passes (NaN stays NaN; an infinite
        // range gives zeros).
        let mut f: Vec<f32> = a.iter().map(|&v| v as f32 / 7.0).collect();
        f[8 * w + 8] = f32::NAN;
        let mut g = f.clone();
        g[3 * w + 4] = f32::INFINITY;
        let fp = [Plane { width: w, height: h, data: &f[..] }, Plane { width: w, height: h, data: &g[..] }];
        let pl: Vec<Placement> = [(8.0, 8.0), (4.0, 3.0), (1.0, 1.0)].iter().map(|&(cx, cy)| place(cx, cy, b, w, h, EdgePolicy::Pad)).collect();
        let mut fused = vec![0f32; pl.len() * 2 * b * b];
        cut_crops_min_max(&fp, &pl, b, &mut fused).unwrap();
        let want = two_pass(&fp, &pl, b);
        assert_eq!(fused.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        assert!(fused[..b * b].iter().any(|v| v.is_nan()));
        assert!(fused[3 * b * b..4 * b * b].iter().all(|&v| v == 0.0)); // cell 1 channel 1: range inf
        let mut short = vec![0f32; 5];
        assert!(cut_crops_min_max(&fp, &pl, b, &mut short).is_err());
    }
}
