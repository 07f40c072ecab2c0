//! Whole-field tiles for field-level models (MOAProfiler-style whole fields, GapNet-style views).
//!
//! A [`FieldTile`] is one site's channels stacked as `C x H x W` (channel-major, then row,
//! column), as `u16` straight from the decoded images or `f32` after downsampling.
//!
//! - **Downsampling** ([`FieldTile::downsample`]) by an integer factor `f` replaces each `f x f`
//!   block by its mean (sum in f64 / `f * f`, stored f32): `C x H/f x W/f`, the numpy
//!   `x.reshape(C, H//f, f, W//f, f).mean(axis=(2, 4))`. `H` and `W` must both be divisible by
//!   `f` (else an error naming the sizes); `f = 1` is the identity (as f32).
//! - **Views** ([`FieldTile::views`]) are fixed-size `tile_h x tile_w` windows on a regular grid:
//!   top-left corners at rows `0, stride, 2 * stride, ...` while `r + tile_h <= H`, and likewise
//!   for columns with `tile_w` and `W`; ordered row of corners first, then column. Output
//!   `V x C x tile_h x tile_w`, view `v` being `x[:, r:r + tile_h, c:c + tile_w]`. Pixels beyond the
//!   last whole window are not covered (no padding); a window larger than the field is an error.
use std::path::Path;

use rayon::prelude::*;

use crate::image::{decode_site, Image, IngestError, Result};

/// One site's channels as `C x H x W`, row-major per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldTile<T> {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<T>,
}

impl FieldTile<u16> {
    /// Stack decoded channel images (all of one size, checked) into a `C x H x W` tile.
    pub fn from_images(images: &[Image]) -> Result<Self> {
        let Some(first) = images.first() else {
            return Err(IngestError::Invalid("a field tile needs at least one channel".into()));
        };
        let (w, h) = (first.width, first.height);
        if let Some((i, im)) = images.iter().enumerate().find(|(_, im)| im.width != w || im.height != h) {
            return Err(IngestError::Invalid(format!("channel {i} is {} x {} (W x H) but channel 0 is {w} x {h}", im.width, im.height)));
        }
        let mut data = Vec::with_capacity(images.len() * w * h);
        for im in images {
            data.extend_from_slice(&im.data);
        }
        Ok(Self { channels: images.len(), height: h, width: w, data })
    }
}

impl<T: Copy + Into<f64> + Send + Sync> FieldTile<T> {
    /// Block-mean downsampling by `factor` (see module docs); parallel over channels.
    pub fn downsample(&self, factor: usize) -> Result<FieldTile<f32>> {
        if factor == 0 {
            return Err(IngestError::Invalid("downsampling factor must be at least 1".into()));
        }
        let (h, w) = (self.height, self.width);
        if h % factor != 0 || w % factor != 0 {
            return Err(IngestError::Invalid(format!(
                "field of {h} x {w} (H x W) is not divisible by the downsampling factor {factor}"
            )));
        }
        let (oh, ow) = (h / factor, w / factor);
        let mut out = vec![0f32; self.channels * oh * ow];
        let area = (factor * factor) as f64;
        if !out.is_empty() {
            out.par_chunks_mut(oh * ow).zip(self.data.par_chunks(h * w)).for_each(|(o, src)| {
                let mut sums = vec![0f64; ow];
                for (orow, o_row) in o.chunks_mut(ow).enumerate() {
                    sums.fill(0.0);
                    for r in orow * factor..(orow + 1) * factor {
                        let row = &src[r * w..(r + 1) * w];
                        for (s, blk) in sums.iter_mut().zip(row.chunks_exact(factor)) {
                            *s += blk.iter().map(|&v| v.into()).sum::<f64>();
                        }
                    }
                    for (d, s) in o_row.iter_mut().zip(&sums) {
                        *d = (s / area) as f32;
                    }
                }
            });
        }
        Ok(FieldTile { channels: self.channels, height: oh, width: ow, data: out })
    }
}

impl<T: Copy + Send + Sync> FieldTile<T> {
    /// Top-left corners (row, column) of the view grid (see module docs).
    pub fn view_origins(&self, tile_h: usize, tile_w: usize, stride: usize) -> Result<Vec<(usize, usize)>> {
        if tile_h == 0 || tile_w == 0 || stride == 0 {
            return Err(IngestError::Invalid(format!(
                "view size {tile_h} x {tile_w} and stride {stride} must all be at least 1"
            )));
        }
        if tile_h > self.height || tile_w > self.width {
            return Err(IngestError::Invalid(format!(
                "view of {tile_h} x {tile_w} (H x W) does not fit in the field of {} x {}",
                self.height, self.width
            )));
        }
        let rows = (0..=self.height - tile_h).step_by(stride);
        let cols: Vec<usize> = (0..=self.width - tile_w).step_by(stride).collect();
        Ok(rows.flat_map(|r| cols.iter().map(move |&c| (r, c))).collect())
    }

    /// Cut the views: returns (V, data of V x C x tile_h x tile_w). Parallel over views.
    pub fn views(&self, tile_h: usize, tile_w: usize, stride: usize) -> Result<(usize, Vec<T>)> {
        let origins = self.view_origins(tile_h, tile_w, stride)?;
        let per_view = self.channels * tile_h * tile_w;
        let Some(&fill) = self.data.first() else {
            return Ok((origins.len(), Vec::new()));
        };
        let mut out = vec![fill; origins.len() * per_view];
        let (h, w) = (self.height, self.width);
        out.par_chunks_mut(per_view).zip(origins.par_iter()).for_each(|(dst, &(r0, c0))| {
            for (c, dplane) in dst.chunks_mut(tile_h * tile_w).enumerate() {
                let src = &self.data[c * h * w..(c + 1) * h * w];
                for (i, drow) in dplane.chunks_mut(tile_w).enumerate() {
                    let s = (r0 + i) * w + c0;
                    drow.copy_from_slice(&src[s..s + tile_w]);
                }
            }
        });
        Ok((origins.len(), out))
    }
}

/// Prefix an error with the site it belongs to (its first channel path).
fn for_site<P: AsRef<Path>>(paths: &[P], e: IngestError) -> IngestError {
    match (e, paths.first()) {
        (IngestError::Invalid(msg), Some(p)) => IngestError::Invalid(format!("site {}: {msg}", p.as_ref().display())),
        (e, _) => e,
    }
}

/// Decode a site's channels (parallel) and downsample by `factor`: `C x H/f x W/f` f32.
/// Errors name the file (decode) or the site's first channel path (geometry).
pub fn site_tile<P: AsRef<Path> + Sync>(paths: &[P], factor: usize) -> Result<FieldTile<f32>> {
    let tile = FieldTile::from_images(&decode_site(paths)?).map_err(|e| for_site(paths, e))?;
    tile.downsample(factor).map_err(|e| for_site(paths, e))
}

/// Decode a site's channels (parallel) and cut `tile_h x tile_w` views every `stride` pixels:
/// (V, V x C x tile_h x tile_w u16). Errors name the file or the site.
pub fn site_views<P: AsRef<Path> + Sync>(paths: &[P], tile_h: usize, tile_w: usize, stride: usize) -> Result<(usize, usize, Vec<u16>)> {
    let tile = FieldTile::from_images(&decode_site(paths)?).map_err(|e| for_site(paths, e))?;
    let (v, data) = tile.views(tile_h, tile_w, stride).map_err(|e| for_site(paths, e))?;
    Ok((v, tile.channels, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// value = 1000 * channel + 10 * row + col
    fn tile(c: usize, h: usize, w: usize) -> FieldTile<u16> {
        let ims: Vec<Image> = (0..c)
            .map(|ch| Image {
                width: w,
                height: h,
                bit_depth: 16,
                data: (0..h).flat_map(|r| (0..w).map(move |x| (1000 * ch + 10 * r + x) as u16)).collect(),
            })
            .collect();
        FieldTile::from_images(&ims).unwrap()
    }

    #[test]
    fn downsample_block_mean() {
        let t = tile(2, 4, 6);
        let d = t.downsample(2).unwrap();
        assert_eq!((d.channels, d.height, d.width), (2, 2, 3));
        // block (0,0) of ch0: 0, 1, 10, 11 -> 5.5; block (1,2): 24,25,34,35 -> 29.5
        assert_eq!(d.data[..6], [5.5, 7.5, 9.5, 25.5, 27.5, 29.5]);
        assert_eq!(d.data[6], 1005.5);
        let id = t.downsample(1).unwrap();
        assert_eq!(id.data, t.data.iter().map(|&v| v as f32).collect::<Vec<_>>());
        let e = t.downsample(4).unwrap_err().to_string();
        assert!(e.contains("4 x 6") && e.contains("factor 4"), "{e}");
        assert!(t.downsample(0).is_err());
        assert_eq!(t.downsample(3).unwrap_err().to_string().contains("4 x 6"), true);
    }

    #[test]
    fn views_on_grid() {
        let t = tile(2, 5, 7);
        // 3 x 4 views, stride 2: rows 0, 2; cols 0, 2 (col 4 + 4 = 8 > 7).
        assert_eq!(t.view_origins(3, 4, 2).unwrap(), vec![(0, 0), (0, 2), (2, 0), (2, 2)]);
        let (v, d) = t.views(3, 4, 2).unwrap();
        assert_eq!(v, 4);
        assert_eq!(d.len(), 4 * 2 * 12);
        // view 3 (origin 2,2), channel 1, first row: 1000 + 20 + 2..6
        let off = 3 * 24 + 12;
        assert_eq!(d[off..off + 4], [1022, 1023, 1024, 1025]);
        assert_eq!(d[off + 8..off + 12], [1042, 1043, 1044, 1045]);
        // whole field as one view
        let (v, d) = t.views(5, 7, 100).unwrap();
        assert_eq!((v, d), (1, t.data.clone()));
        assert!(t.views(6, 7, 1).unwrap_err().to_string().contains("does not fit"));
        assert!(t.views(2, 2, 0).is_err());
        let f = t.downsample(1).unwrap();
        assert_eq!(f.views(1, 1, 3).unwrap().0, 2 * 3);
    }

    #[test]
    fn mismatched_channels_are_errors() {
        let a = Image { width: 2, height: 2, bit_depth: 16, data: vec![0; 4] };
        let b = Image { width: 2, height: 3, bit_depth: 16, data: vec![0; 6] };
        assert!(FieldTile::from_images(&[a, b]).is_err());
        assert!(FieldTile::from_images(&[]).is_err());
    }
}
