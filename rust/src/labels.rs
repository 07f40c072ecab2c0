//! Object label images (segmentation masks) and masking of single-cell crops.
//!
//! A label image ([`crate::image::LabelImage`], decoded by [`crate::image::decode_labels`]) gives
//! each pixel the label of the object covering it (CellProfiler's `ObjectNumber`), 0 = background.
//!
//! **Which label is the cell's** ([`deepprofiler_label`]) when no label is given per cell:
//! DeepProfiler's rule (cytomining/DeepProfiler, `deepprofiler/imaging/boxes.py`,
//! `get_cropping_regions` / older `prepare_boxes`, under `mask_objects`):
//! ```text
//! y = int(Nuclei_Location_Center_Y); x = int(Nuclei_Location_Center_X)
//! patch = labels[max(y-5,0):y+5, max(x-5,0):x+5]
//! mask = int(np.median(patch)) if patch.size > 0 else 0
//! ```
//! i.e. the 10 x 10 patch of rows `y-5 .. y+4` and columns `x-5 .. x+4` around the truncated centre
//! (clipped to the image), its median (the mean of the two middle values for an even count) and
//! `int()` truncation. Centres that are NaN / infinite or whose rounded pixel lies outside the image
//! (edge outcome `Invalid`) get label 0; DeepProfiler has no such cells (its negative slice ends
//! would wrap around in numpy).
//!
//! **Masking** ([`MaskMode`], applied by [`mask_crops`] to every channel of a crop, pixels
//! compared at the same image position as the crop pixel):
//! - `Neighbors`: zero every pixel whose label is nonzero and differs from the cell's label
//!   (neighbouring objects removed, background kept).
//! - `Object`: DeepProfiler's `mask_objects` (`crop_graph` in `deepprofiler/imaging/cropping.py`:
//!   `crops * (label_crop == mask_ind)`): zero every pixel whose label differs from the cell's
//!   label (only the cell's own object kept). A cell whose label is 0 keeps the background only.
//! Padding pixels of a padded box are zero already and stay zero.
use rayon::prelude::*;

use crate::crop::Placement;
use crate::image::{IngestError, LabelImage, Result};

/// How to mask a crop with the label image; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskMode {
    Neighbors,
    Object,
}

impl MaskMode {
    /// Parse `"neighbors"` or `"object"`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "neighbors" => Ok(Self::Neighbors),
            "object" => Ok(Self::Object),
            _ => Err(IngestError::Invalid(format!("unknown mask mode {s:?}: use one of neighbors, object"))),
        }
    }

    /// True when a pixel of label `pixel` is zeroed in the crop of a cell of label `cell`.
    #[inline]
    pub fn removes(self, pixel: u32, cell: u32) -> bool {
        match self {
            MaskMode::Neighbors => pixel != 0 && pixel != cell,
            MaskMode::Object => pixel != cell,
        }
    }
}

/// The cell's label by DeepProfiler's 10 x 10 median rule (see the module docs), for a centre
/// `(x, y)` in pixels. Non-finite centres or centres outside the image give 0.
pub fn deepprofiler_label(labels: &LabelImage, x: f64, y: f64) -> u32 {
    if !x.is_finite() || !y.is_finite() {
        return 0;
    }
    let (w, h) = (labels.width as f64, labels.height as f64);
    // The rounded centre must lie in the image (crop::box_origin's rule), so trunc(y) >= 0.
    let (cx, cy) = ((x + 0.5).floor(), (y + 0.5).floor());
    if cx < 0.0 || cy < 0.0 || cx >= w || cy >= h {
        return 0;
    }
    let (xi, yi) = (x.trunc() as i64, y.trunc() as i64);
    let (r0, r1) = ((yi - 5).max(0) as usize, ((yi + 5).max(0) as usize).min(labels.height));
    let (c0, c1) = ((xi - 5).max(0) as usize, ((xi + 5).max(0) as usize).min(labels.width));
    if r0 >= r1 || c0 >= c1 {
        return 0;
    }
    let mut patch: Vec<u32> = (r0..r1).flat_map(|r| labels.data[r * labels.width + c0..r * labels.width + c1].iter().copied()).collect();
    median_trunc(&mut patch)
}

/// `int(np.median(v))` for non-empty unsigned values: the middle value, or the truncated mean of
/// the two middle values for an even count (reorders `v`).
pub fn median_trunc(v: &mut [u32]) -> u32 {
    let n = v.len();
    debug_assert!(n > 0);
    v.sort_unstable();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        ((v[n / 2 - 1] as u64 + v[n / 2] as u64) / 2) as u32
    }
}

/// Zero the masked pixels of each crop row (C x box x box values per placement, as cut by
/// [`crate::crop::cut_crops`]): pixel (r, c) of a crop whose box origin is `(r0, c0)` is compared
/// with label `labels[r0 + r, c0 + c]` (outside the image: label 0) and `cell_labels[i]`.
/// Rows without an origin are left as they are (all zeros). Parallel over rows.
pub fn mask_crops<T: Copy + Default + Send>(
    crops: &mut [T],
    channels: usize,
    box_size: usize,
    placements: &[Placement],
    cell_labels: &[u32],
    labels: &LabelImage,
    mode: MaskMode,
) -> Result<()> {
    let plane = box_size * box_size;
    let per_cell = channels * plane;
    if placements.len() != cell_labels.len() || placements.len().checked_mul(per_cell) != Some(crops.len()) {
        return Err(IngestError::Invalid(format!(
            "mask_crops: {} crop values, {} placements and {} cell labels do not agree for {channels} channels of {box_size} x {box_size}",
            crops.len(),
            placements.len(),
            cell_labels.len()
        )));
    }
    if per_cell == 0 {
        return Ok(());
    }
    let (w, h) = (labels.width as i64, labels.height as i64);
    let b = box_size as i64;
    crops.par_chunks_mut(per_cell).zip(placements.par_iter().zip(cell_labels.par_iter())).for_each(|(dst, (p, &cell))| {
        let Some((r0, c0)) = p.origin else { return };
        for r in 0..b {
            let ir = r0 + r;
            for c in 0..b {
                let ic = c0 + c;
                let px = if ir >= 0 && ir < h && ic >= 0 && ic < w { labels.data[(ir * w + ic) as usize] } else { 0 };
                if mode.removes(px, cell) {
                    let k = (r * b + c) as usize;
                    for ch in 0..channels {
                        dst[ch * plane + k] = T::default();
                    }
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crop::{place, EdgePolicy};

    fn lab(w: usize, h: usize, f: impl Fn(usize, usize) -> u32) -> LabelImage {
        LabelImage { width: w, height: h, data: (0..h).flat_map(|r| (0..w).map(move |c| (r, c))).map(|(r, c)| f(r, c)).collect() }
    }

    #[test]
    fn median_matches_numpy_int_median() {
        assert_eq!(median_trunc(&mut [5]), 5);
        assert_eq!(median_trunc(&mut [3, 1, 2]), 2);
        assert_eq!(median_trunc(&mut [0, 0, 7, 7]), 3); // np.median = 3.5 -> int 3
        assert_eq!(median_trunc(&mut [u32::MAX, u32::MAX]), u32::MAX);
    }

    #[test]
    fn deepprofiler_patch_bounds() {
        // Label = column index: the patch at x = 12.9 (int 12) covers columns 7..17 -> median of
        // 7..=16 = (11 + 12) / 2 = 11.5 -> 11.
        let l = lab(30, 20, |_, c| c as u32);
        assert_eq!(deepprofiler_label(&l, 12.9, 10.0), 11);
        // At the left border x = 2: columns max(-3, 0) = 0 .. 7 -> median of 0..=6 = 3.
        assert_eq!(deepprofiler_label(&l, 2.0, 10.0), 3);
        // Right border x = 28: columns 23 .. min(33, 30) -> 23..=29 -> 26.
        assert_eq!(deepprofiler_label(&l, 28.0, 10.0), 26);
        // x = -0.4 rounds to column 0 (valid) and truncates to 0: columns 0..5 -> (2 + 2) / 2 = 2.
        assert_eq!(deepprofiler_label(&l, -0.4, 10.0), 2);
        assert_eq!(deepprofiler_label(&l, f64::NAN, 1.0), 0);
        assert_eq!(deepprofiler_label(&l, 30.0, 1.0), 0);
        // Rows use y the same way: label = row.
        let l = lab(30, 20, |r, _| r as u32);
        assert_eq!(deepprofiler_label(&l, 5.0, 19.4), 16); // rows 14..20 -> 14..=19 -> 16.5 -> 16
    }

    #[test]
    fn masks_neighbors_and_object() {
        // 6 x 4 image: label 1 in columns 0-1, label 2 in column 3, background elsewhere.
        let l = lab(6, 4, |_, c| match c {
            0 | 1 => 1,
            3 => 2,
            _ => 0,
        });
        let p = place(1.0, 1.0, 3, 6, 4, EdgePolicy::Pad); // rows 0..3, cols 0..3
        let q = place(0.0, 0.0, 3, 6, 4, EdgePolicy::Pad); // rows -1..2, cols -1..2 (padded)
        let mut crops = vec![9u16; 2 * 2 * 9];
        mask_crops(&mut crops, 2, 3, &[p, q], &[1, 1], &l, MaskMode::Neighbors).unwrap();
        assert!(crops.iter().all(|&v| v == 9)); // cols 0..3 hold labels 1, 1, 0 only
        let p2 = place(3.0, 1.0, 3, 6, 4, EdgePolicy::Pad); // cols 2..5: labels 0, 2, 0
        let mut crops = vec![9u16; 2 * 9];
        mask_crops(&mut crops, 2, 3, &[p2], &[1], &l, MaskMode::Neighbors).unwrap();
        assert_eq!(&crops[..9], &[9, 0, 9, 9, 0, 9, 9, 0, 9]);
        assert_eq!(&crops[9..], &crops[..9].to_vec()[..]);
        let mut crops = vec![9u16; 2 * 9];
        mask_crops(&mut crops, 2, 3, &[p2], &[2], &l, MaskMode::Object).unwrap();
        assert_eq!(&crops[..9], &[0, 9, 0, 0, 9, 0, 0, 9, 0]);
        // Padded pixels outside the image have label 0: removed by Object for a nonzero cell.
        let mut crops = vec![9u16; 9];
        mask_crops(&mut crops, 1, 3, &[q], &[1], &l, MaskMode::Object).unwrap();
        assert_eq!(crops, vec![0, 0, 0, 0, 9, 9, 0, 9, 9]);
        assert!(mask_crops(&mut crops, 1, 3, &[q], &[1, 2], &l, MaskMode::Object).is_err());
        assert!(MaskMode::parse("cells").is_err());
    }
}
