//! One site's single-cell crops end to end: decode -> illumination correction -> intensity
//! rescaling -> crop with the edge policy -> mask -> per-crop min-max -> output dtype.
//!
//! Steps (each optional except decode and crop; see [`SiteOptions`]):
//! 1. **Decode** every channel (page `frames[i]` of `paths[i]`, default 0) and the label image in
//!    parallel ([`crate::image`]); all must have one size (label image mismatch: error naming both
//!    files).
//! 2. **Illumination correction**: `raw as f32 / flat[c]` with a C x H x W f32 flat field
//!    ([`crate::intensity::correct_illumination`]); a shape mismatch is an error naming the expected
//!    and given shapes and the first channel's file.
//! 3. **Intensity**: per image per channel [`Rescale::Percentile`] (numpy's linear percentile of the
//!    corrected plane) or a fixed [`Rescale::Range`], mapped to [0, 1] and clipped.
//! 4. **Crop** ([`crate::crop`]): geometry, edge policy and outcome codes; with `compact` only the
//!    cells with codes 0-2 get a row (in cell order), the codes always cover every cell.
//! 5. **Mask** ([`crate::labels`]): the cell's label is `label_ids[i]`, or DeepProfiler's 10 x 10
//!    median rule at the centre when no ids are given.
//! 6. **Per-crop min-max** (`rescale`): each crop's each channel to [0, 1] as DeepProfiler
//!    ([`crate::crop::rescale_min_max`]; masked and padding zeros included). Without a mask it
//!    runs inside the cut ([`crate::crop::cut_crops_min_max`]: same values, one pass).
//! 7. **Output dtype** ([`OutDtype`]): values in [0, 1] (after step 3 or 6) become uint8
//!    `rint(v * 255)` or uint16 `rint(v * 65535)` (round half to even as numpy's `np.rint`, the
//!    product in f32), floats as they are. Without rescaling, uint16 holds the raw values, or the
//!    illumination-corrected ones as `clip(rint(v), 0, 65535)`; uint8 without rescaling is an error
//!    (it needs intensity rescaling); float16 of a value beyond +-65504 is an error naming the cell
//!    and channel. `None` gives uint16 for raw values and float32 once any float step ran
//!    (flat, intensity or rescale).
use std::path::{Path, PathBuf};

use half::f16;
use rayon::prelude::*;

use crate::buffer::zeroed;
use crate::crop::{cut_crops, cut_crops_min_max, place, rescale_min_max, EdgeOutcome, EdgePolicy, Placement, Plane};
use crate::image::{decode_labels, decode_site_frames, Image, IngestError, LabelImage, Result};
use crate::intensity::{correct_illumination, Rescale, StackShape};
use crate::labels::{deepprofiler_label, mask_crops, MaskMode};

/// Output element type of the crops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDtype {
    U8,
    U16,
    F16,
    F32,
}

impl OutDtype {
    /// Parse `"uint8"`, `"uint16"`, `"float16"` or `"float32"`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "uint8" => Ok(Self::U8),
            "uint16" => Ok(Self::U16),
            "float16" => Ok(Self::F16),
            "float32" => Ok(Self::F32),
            _ => Err(IngestError::Invalid(format!("unknown crop dtype {s:?}: use one of uint8, uint16, float16, float32"))),
        }
    }
}

/// A C x H x W f32 flat field (one illumination function per channel).
#[derive(Debug, Clone, Copy)]
pub struct Flat<'a> {
    pub data: &'a [f32],
    pub shape: StackShape,
}

/// Options of [`crop_site`]; `Default` = raw uint16 crops of page 0, no masking.
#[derive(Debug, Clone, Default)]
pub struct SiteOptions<'a> {
    pub frames: Option<&'a [usize]>,
    pub flat: Option<Flat<'a>>,
    /// `Percentile` or `Range` (per image, per channel); `MinMax` is refused here (use `rescale`).
    pub intensity: Option<Rescale>,
    pub labels: Option<PathBuf>,
    pub label_ids: Option<&'a [i64]>,
    pub mask: Option<MaskMode>,
    pub dtype: Option<OutDtype>,
    pub compact: bool,
    /// Per-crop per-channel min-max to [0, 1] (DeepProfiler).
    pub rescale: bool,
}

/// Crops in their output type, rows x C x box x box.
#[derive(Debug, Clone, PartialEq)]
pub enum Crops {
    U8(Vec<u8>),
    U16(Vec<u16>),
    F16(Vec<f16>),
    F32(Vec<f32>),
}

/// Result of [`crop_site`].
#[derive(Debug, Clone, PartialEq)]
pub struct SiteCrops {
    pub crops: Crops,
    /// Number of crop rows: N, or the kept cells (codes 0-2) when compact.
    pub rows: usize,
    pub channels: usize,
    /// Edge outcome of every cell (all N).
    pub outcomes: Vec<EdgeOutcome>,
}

fn resolve_dtype(o: &SiteOptions<'_>) -> Result<(OutDtype, bool)> {
    let scaled = o.intensity.is_some() || o.rescale;
    let float_steps = scaled || o.flat.is_some();
    let dtype = o.dtype.unwrap_or(if float_steps { OutDtype::F32 } else { OutDtype::U16 });
    if dtype == OutDtype::U8 && !scaled {
        return Err(IngestError::Invalid(
            "dtype uint8 needs intensity rescaling (intensity=(\"percentile\", lo, hi) or (\"range\", lo, hi), or rescale=True); raw 16-bit values do not fit in 8 bits".into(),
        ));
    }
    Ok((dtype, scaled))
}

/// Check the options that do not need the images (before any decoding).
fn validate(paths: &[PathBuf], n: usize, box_size: usize, o: &SiteOptions<'_>) -> Result<(OutDtype, bool)> {
    if paths.is_empty() {
        return Err(IngestError::Invalid("a site needs at least one channel image path".into()));
    }
    if box_size == 0 {
        return Err(IngestError::Invalid("box size must be at least 1 pixel".into()));
    }
    if let Some(r) = o.intensity {
        if r == Rescale::MinMax {
            return Err(IngestError::Invalid("intensity must be percentile or range; per-crop min-max is rescale=True".into()));
        }
        r.validate()?;
    }
    if o.mask.is_some() && o.labels.is_none() {
        return Err(IngestError::Invalid(format!("mask needs a label image (labels=path) for the site of {}", paths[0].display())));
    }
    if let Some(ids) = o.label_ids {
        if o.labels.is_none() {
            return Err(IngestError::Invalid("label_ids given without a label image (labels=path)".into()));
        }
        if ids.len() != n {
            return Err(IngestError::Invalid(format!("label_ids has {} values but there are {n} cells", ids.len())));
        }
        if let Some((i, v)) = ids.iter().enumerate().find(|(_, v)| !(0..=u32::MAX as i64).contains(*v)) {
            return Err(IngestError::Invalid(format!("label_ids[{i}] = {v} is not a label (0 ..= {})", u32::MAX)));
        }
    }
    resolve_dtype(o)
}

/// Float planes after illumination correction and intensity rescaling (steps 2-3), per channel.
fn float_planes(images: &[Image], paths: &[PathBuf], o: &SiteOptions<'_>) -> Result<Vec<Vec<f32>>> {
    let (w, h) = (images[0].width, images[0].height);
    let one = StackShape::new(1, h, w);
    if let Some(f) = o.flat {
        let want = StackShape::new(images.len(), h, w);
        if f.shape != want || f.data.len() != want.len()? {
            return Err(IngestError::Invalid(format!(
                "flat field is {} but the site needs {want} (first channel {})",
                f.shape,
                paths[0].display()
            )));
        }
    }
    images
        .par_iter()
        .enumerate()
        .map(|(c, im)| {
            let mut v = match o.flat {
                Some(f) => correct_illumination(&im.data, one, &f.data[c * h * w..(c + 1) * h * w], one),
                None => Ok(im.data.iter().map(|&x| x as f32).collect()),
            }
            .map_err(|e| IngestError::Invalid(format!("{} (channel {c}, {}): {e}", paths[0].display(), paths[c].display())))?;
            if let Some(r) = o.intensity {
                r.apply(&mut v, one).map_err(|e| IngestError::Invalid(format!("{}: {e}", paths[c].display())))?;
            }
            Ok(v)
        })
        .collect()
}

/// Round half to even of `v * scale` in f32 (numpy's `np.rint`).
#[inline]
fn rint_scaled(v: f32, scale: f32) -> f32 {
    (v * scale).round_ties_even()
}

/// `f` of every value, in parallel, into a fresh [`zeroed`] buffer (huge pages).
fn map_into<T: Copy + Default + Send>(buf: &[f32], f: impl Fn(f32) -> T + Sync) -> Vec<T> {
    let mut out: Vec<T> = zeroed(buf.len());
    out.par_iter_mut().zip(buf.par_iter()).for_each(|(o, &v)| *o = f(v));
    out
}

fn convert(buf: Vec<f32>, dtype: OutDtype, scaled: bool, per_cell: usize, plane: usize) -> Result<Crops> {
    Ok(match dtype {
        OutDtype::F32 => Crops::F32(buf),
        OutDtype::U8 => Crops::U8(map_into(&buf, |v| rint_scaled(v, 255.0) as u8)),
        OutDtype::U16 if scaled => Crops::U16(map_into(&buf, |v| rint_scaled(v, 65535.0) as u16)),
        OutDtype::U16 => Crops::U16(map_into(&buf, |v| v.round_ties_even().clamp(0.0, 65535.0) as u16)),
        OutDtype::F16 => {
            let max = f16::MAX.to_f32();
            if let Some(i) = buf.par_iter().position_first(|v| v.abs() > max) {
                return Err(IngestError::Invalid(format!(
                    "value {} of cell row {}, channel {} is beyond float16's range (+-{max}); use float32 or rescale intensities",
                    buf[i],
                    i / per_cell,
                    (i % per_cell) / plane
                )));
            }
            Crops::F16(map_into(&buf, f16::from_f32))
        }
    })
}

/// Crop one site (see the module docs). `centers` are (x, y) in pixels, one per cell.
pub fn crop_site(paths: &[PathBuf], centers: &[(f64, f64)], box_size: usize, edge: EdgePolicy, o: &SiteOptions<'_>) -> Result<SiteCrops> {
    let (crops, rows) = crop_site_to(paths, centers, box_size, edge, o, None)?;
    let crops = crops.expect("crop_site_to without `out` returns the crops");
    Ok(SiteCrops { crops, rows: rows.rows, channels: rows.channels, outcomes: rows.outcomes })
}

/// Result of [`crop_site_into`]: what [`SiteCrops`] says but the crops, which are in the caller's buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteRows {
    /// Crop rows written at the start of `out`: N, or the kept cells (codes 0-2) when compact.
    pub rows: usize,
    pub channels: usize,
    /// Edge outcome of every cell (all N).
    pub outcomes: Vec<EdgeOutcome>,
}

/// [`crop_site`] with float32 crops written into the first rows of `out` instead of a fresh buffer:
/// a caller that crops site after site into one buffer (the profiling workers) skips allocating and
/// page-faulting tens of MB per site, whose kernel zeroing cost more CPU than the crop itself.
/// `out` must hold N x C x box x box values (C = `paths.len()`, whatever `compact` keeps) and the
/// options must give float32 crops (`dtype` float32, or None with a float step); both are checked
/// before decoding. Every value of the rows written is overwritten (stale contents never leak into
/// a crop); values past them are left as they were.
pub fn crop_site_into(paths: &[PathBuf], centers: &[(f64, f64)], box_size: usize, edge: EdgePolicy, o: &SiteOptions<'_>, out: &mut [f32]) -> Result<SiteRows> {
    crop_site_to(paths, centers, box_size, edge, o, Some(out)).map(|(_, rows)| rows)
}

/// [`crop_site`] (`out` None: the crops in a fresh buffer) or [`crop_site_into`] (`out`: float32
/// rows written there, no crops returned).
fn crop_site_to(paths: &[PathBuf], centers: &[(f64, f64)], box_size: usize, edge: EdgePolicy, o: &SiteOptions<'_>, out: Option<&mut [f32]>) -> Result<(Option<Crops>, SiteRows)> {
    let n = centers.len();
    let (dtype, scaled) = validate(paths, n, box_size, o)?;
    if let Some(buf) = &out {
        if dtype != OutDtype::F32 {
            return Err(IngestError::Invalid(format!(
                "an output buffer takes float32 crops, but the options for the site of {} give {dtype:?}: pass dtype=\"float32\"",
                paths[0].display()
            )));
        }
        let want = n.checked_mul(paths.len()).and_then(|v| v.checked_mul(box_size)).and_then(|v| v.checked_mul(box_size));
        if want.is_none_or(|want| buf.len() < want) {
            return Err(IngestError::Invalid(format!(
                "output buffer has {} values, fewer than {n} cells x {} channels x {box_size} x {box_size} (the site of {})",
                buf.len(),
                paths.len(),
                paths[0].display()
            )));
        }
    }
    let (images, labels) = rayon::join(
        || decode_site_frames(paths, o.frames),
        || o.labels.as_deref().map(decode_labels).transpose(),
    );
    let (images, labels): (Vec<Image>, Option<LabelImage>) = (images?, labels?);
    let (w, h) = (images[0].width, images[0].height);
    if let (Some(l), Some(lp)) = (&labels, &o.labels) {
        if (l.width, l.height) != (w, h) {
            return Err(IngestError::SizeMismatch { first: paths[0].clone(), first_w: w, first_h: h, other: lp.clone(), other_w: l.width, other_h: l.height });
        }
    }
    let nc = images.len();
    let plane = box_size * box_size;
    let per_cell = nc.checked_mul(plane).ok_or_else(|| IngestError::Invalid("crop size overflows".into()))?;
    let all: Vec<Placement> = centers.iter().map(|&(x, y)| place(x, y, box_size, w, h, edge)).collect();
    let outcomes: Vec<EdgeOutcome> = all.iter().map(|p| p.outcome).collect();
    let row_cells: Vec<usize> = if o.compact { (0..n).filter(|&i| all[i].kept()).collect() } else { (0..n).collect() };
    let rows: Vec<Placement> = row_cells.iter().map(|&i| all[i]).collect();
    let len = rows.len().checked_mul(per_cell).ok_or_else(|| IngestError::Invalid("crop output size overflows".into()))?;
    let cell_labels: Option<Vec<u32>> = labels.as_ref().filter(|_| o.mask.is_some()).map(|l| {
        row_cells
            .iter()
            .map(|&i| match o.label_ids {
                Some(ids) => ids[i] as u32,
                None => deepprofiler_label(l, centers[i].0, centers[i].1),
            })
            .collect()
    });
    let float_path = o.flat.is_some() || o.intensity.is_some() || o.rescale || dtype != OutDtype::U16;
    let crops = if !float_path {
        debug_assert!(out.is_none(), "checked above: an output buffer takes float32 crops");
        // Raw values straight into uint16 rows.
        let planes: Vec<Plane<'_, u16>> = images.iter().map(Plane::of).collect();
        let mut buf: Vec<u16> = zeroed(len);
        cut_crops(&planes, &rows, box_size, &mut buf)?;
        if let (Some(l), Some(m), Some(cl)) = (&labels, o.mask, &cell_labels) {
            mask_crops(&mut buf, nc, box_size, &rows, cl, l, m)?;
        }
        Some(Crops::U16(buf))
    } else {
        let into_out = out.is_some();
        let mut owned: Vec<f32> = Vec::new();
        let buf: &mut [f32] = match out {
            Some(o) => &mut o[..len],
            None => {
                owned = zeroed(len);
                &mut owned
            }
        };
        // Without a mask the per-crop min-max is fused into the cut (same values, one pass).
        let fused = o.rescale && o.mask.is_none();
        fn cut<S: Copy + Into<f32> + Sync>(planes: &[Plane<'_, S>], rows: &[Placement], box_size: usize, fused: bool, buf: &mut [f32]) -> Result<()> {
            if fused {
                cut_crops_min_max(planes, rows, box_size, buf)
            } else {
                cut_crops(planes, rows, box_size, buf)
            }
        }
        if o.flat.is_some() || o.intensity.is_some() {
            let fl = float_planes(&images, paths, o)?;
            drop(images);
            let planes: Vec<Plane<'_, f32>> = fl.iter().map(|d| Plane { width: w, height: h, data: d }).collect();
            cut(&planes, &rows, box_size, fused, buf)?;
        } else {
            let planes: Vec<Plane<'_, u16>> = images.iter().map(Plane::of).collect();
            cut(&planes, &rows, box_size, fused, buf)?;
        }
        if let (Some(l), Some(m), Some(cl)) = (&labels, o.mask, &cell_labels) {
            mask_crops(buf, nc, box_size, &rows, cl, l, m)?;
        }
        if o.rescale && !fused {
            rescale_min_max(buf, plane)?;
        }
        if into_out {
            None
        } else {
            Some(convert(owned, dtype, scaled, per_cell, plane)?)
        }
    };
    Ok((crops, SiteRows { rows: rows.len(), channels: nc, outcomes }))
}

/// Each cell's label in a label image by DeepProfiler's rule ([`deepprofiler_label`]).
pub fn object_labels(path: &Path, centers: &[(f64, f64)]) -> Result<Vec<u32>> {
    let l = decode_labels(path)?;
    Ok(centers.par_iter().map(|&(x, y)| deepprofiler_label(&l, x, y)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_half_to_even_like_np_rint() {
        assert_eq!(rint_scaled(0.5, 255.0), 128.0); // 127.5 -> 128 (even)
        assert_eq!(rint_scaled(0.5, 65535.0), 32768.0); // 32767.5 -> 32768
        assert_eq!(rint_scaled(1.0, 255.0), 255.0);
        assert_eq!(2.5f32.round_ties_even(), 2.0);
    }

    #[test]
    fn dtype_rules() {
        let o = SiteOptions { dtype: Some(OutDtype::U8), ..Default::default() };
        assert!(resolve_dtype(&o).unwrap_err().to_string().contains("needs intensity rescaling"));
        let o = SiteOptions { dtype: Some(OutDtype::U8), rescale: true, ..Default::default() };
        assert_eq!(resolve_dtype(&o).unwrap(), (OutDtype::U8, true));
        assert_eq!(resolve_dtype(&SiteOptions::default()).unwrap(), (OutDtype::U16, false));
        let o = SiteOptions { intensity: Some(Rescale::Range { lo: 0.0, hi: 1.0 }), ..Default::default() };
        assert_eq!(resolve_dtype(&o).unwrap(), (OutDtype::F32, true));
        assert!(OutDtype::parse("int8").is_err());
        let c = convert(vec![0.0, 0.5, 1.0, 70000.0], OutDtype::U16, false, 2, 1).unwrap();
        assert_eq!(c, Crops::U16(vec![0, 0, 1, 65535]));
        let e = convert(vec![0.0, 1.0, 2.0, 70000.0], OutDtype::F16, false, 2, 1).unwrap_err().to_string();
        assert!(e.contains("cell row 1, channel 1"), "{e}");
        let c = convert(vec![0.0, 0.25, 1.0], OutDtype::U8, true, 3, 3).unwrap();
        assert_eq!(c, Crops::U8(vec![0, 64, 255]));
    }

    #[test]
    fn option_errors_before_decoding() {
        let p = vec![PathBuf::from("missing-channel.tiff")];
        let o = SiteOptions { mask: Some(MaskMode::Object), ..Default::default() };
        let e = crop_site(&p, &[(1.0, 1.0)], 3, EdgePolicy::Pad, &o).unwrap_err().to_string();
        assert!(e.contains("mask needs a label image"), "{e}");
        let ids = [1i64, 2];
        let o = SiteOptions { labels: Some("l.tiff".into()), label_ids: Some(&ids), ..Default::default() };
        let e = crop_site(&p, &[(1.0, 1.0)], 3, EdgePolicy::Pad, &o).unwrap_err().to_string();
        assert!(e.contains("2 values but there are 1 cells"), "{e}");
        let ids = [-1i64];
        let o = SiteOptions { labels: Some("l.tiff".into()), label_ids: Some(&ids), ..Default::default() };
        assert!(crop_site(&p, &[(1.0, 1.0)], 3, EdgePolicy::Pad, &o).is_err());
        let e = crop_site(&p, &[(1.0, 1.0)], 3, EdgePolicy::Pad, &SiteOptions::default()).unwrap_err();
        assert!(matches!(e, IngestError::NotFound { .. }));
    }

    fn write_site(name: &str, w: usize, h: usize, channels: usize) -> Vec<PathBuf> {
        use tiff::encoder::{colortype, TiffEncoder};
        let d = std::env::temp_dir().join(format!("phenovec-site-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        (0..channels)
            .map(|c| {
                let data: Vec<u16> = (0..w * h).map(|i| ((i * 2654435761usize + c * 7919) % 65536) as u16).collect();
                let path = d.join(format!("ch{c}.tiff"));
                let mut buf = std::io::Cursor::new(Vec::new());
                TiffEncoder::new(&mut buf).unwrap().write_image::<colortype::Gray16>(w as u32, h as u32, &data).unwrap();
                std::fs::write(&path, buf.into_inner()).unwrap();
                path
            })
            .collect()
    }

    #[test]
    fn crops_into_a_dirty_buffer_equal_fresh_crops() {
        let paths = write_site("into", 40, 30, 3);
        // inside, padded at each edge, beyond the image (dropped or invalid), NaN: every kind of row
        let centers = [(20.0, 15.0), (1.0, 1.0), (38.5, 28.0), (200.0, 5.0), (f64::NAN, 3.0), (10.0, 29.0), (5.0, 14.0)];
        let label_free = [
            SiteOptions { rescale: true, compact: true, ..Default::default() },
            SiteOptions { rescale: true, compact: false, ..Default::default() },
            SiteOptions { dtype: Some(OutDtype::F32), compact: true, ..Default::default() },
            SiteOptions { intensity: Some(Rescale::Range { lo: 100.0, hi: 60000.0 }), rescale: true, compact: true, ..Default::default() },
        ];
        for edge in [EdgePolicy::Pad, EdgePolicy::Shift, EdgePolicy::Drop] {
            for o in &label_free {
                let fresh = crop_site(&paths, &centers, 8, edge, o).unwrap();
                let Crops::F32(want) = &fresh.crops else { panic!("float32 crops expected") };
                let per_cell = 3 * 8 * 8;
                let mut buf = vec![f32::NAN; centers.len() * per_cell + 5];
                let done = crop_site_into(&paths, &centers, 8, edge, o, &mut buf).unwrap();
                assert_eq!((done.rows, done.channels, &done.outcomes), (fresh.rows, fresh.channels, &fresh.outcomes));
                let n = done.rows * per_cell;
                assert!(buf[..n].iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()), "{edge:?} {o:?}");
                assert!(buf[n..].iter().all(|v| v.is_nan()), "values past the rows are left as they were");
            }
        }
    }

    #[test]
    fn crops_into_a_buffer_check_dtype_and_size_before_decoding() {
        let p = vec![PathBuf::from("missing-a.tiff"), PathBuf::from("missing-b.tiff")];
        let centers = [(1.0, 1.0), (2.0, 2.0)];
        let mut small = vec![0f32; 2 * 2 * 4 * 4 - 1];
        let o = SiteOptions { rescale: true, ..Default::default() };
        let e = crop_site_into(&p, &centers, 4, EdgePolicy::Pad, &o, &mut small).unwrap_err().to_string();
        assert!(e.contains("output buffer has 63 values, fewer than 2 cells x 2 channels x 4 x 4") && e.contains("missing-a.tiff"), "{e}");
        let mut big = vec![0f32; 64];
        for o in [SiteOptions::default(), SiteOptions { rescale: true, dtype: Some(OutDtype::F16), ..Default::default() }] {
            let e = crop_site_into(&p, &centers, 4, EdgePolicy::Pad, &o, &mut big).unwrap_err().to_string();
            assert!(e.contains("takes float32 crops"), "{e}");
        }
        let e = crop_site_into(&p, &centers, 4, EdgePolicy::Pad, &o, &mut big).unwrap_err();
        assert!(matches!(e, IngestError::NotFound { .. }), "{e}");
    }
}
