//! Decoding microscopy images (one channel of one site) into a 16-bit grey pixel buffer.
//!
//! Formats are recognised by their magic bytes, not by the file name:
//! - TIFF (classic and BigTIFF, either byte order): one page, the first by default or page `frame`
//!   (0-based IFD index, e.g. CellProfiler's `Frame_<channel>` for one multi-page file per site);
//!   greyscale with 8 or 16 bits per sample, unsigned integer samples; uncompressed, LZW, deflate
//!   (inflated by zlib-rs through flate2) or PackBits, with or without the horizontal predictor
//!   (all via the `tiff` crate). A page past the last is an error naming the file and the page count.
//! - PNG: greyscale with 8 or 16 bits per sample (via the `png` crate); one page only (frame 0).
//!
//! **Label images** ([`decode_labels`], CellProfiler object masks saved as integer images): the
//! same formats plus 32-bit unsigned TIFF samples, returned as `u32` labels (0 = background).
//!
//! 8-bit images are widened to `u16` without scaling (value 200 stays 200); [`Image::bit_depth`]
//! records the stored depth. Width and height always come from the file. A file whose header
//! declares more than [`MAX_PIXELS`] pixels is refused before any pixel buffer is allocated.
//! Every error names the file.
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use thiserror::Error;

/// Largest accepted width x height (2^28 = 268,435,456 pixels, e.g. 16384 x 16384; 512 MiB as
/// `u16`). Larger declared sizes are refused as absurd before allocating.
pub const MAX_PIXELS: u64 = 1 << 28;

/// Errors of the ingest path (decode and crop). The bindings raise `FileNotFoundError` for
/// [`IngestError::NotFound`] and `ValueError` for every other variant.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum IngestError {
    #[error("image file not found: {path}")]
    NotFound { path: PathBuf },
    #[error("cannot read image file {path}: {msg}")]
    Io { path: PathBuf, msg: String },
    #[error("{path} is not a TIFF or PNG file (first bytes {magic:02x?})")]
    UnknownFormat { path: PathBuf, magic: Vec<u8> },
    #[error("{path}: truncated or corrupt {format} data: {msg}")]
    Corrupt { path: PathBuf, format: &'static str, msg: String },
    #[error("{path}: unsupported {format} image: {what} (supported: greyscale, 8 or 16 bits per sample)")]
    Unsupported { path: PathBuf, format: &'static str, what: String },
    #[error("{path}: declared size {width} x {height} exceeds the limit of {max} pixels; refused before allocating")]
    TooLarge { path: PathBuf, width: u64, height: u64, max: u64 },
    #[error("{path}: declared size {width} x {height} is empty")]
    Empty { path: PathBuf, width: u64, height: u64 },
    #[error("channels of one site differ in size: {first} is {first_w} x {first_h} (W x H) but {other} is {other_w} x {other_h}")]
    SizeMismatch { first: PathBuf, first_w: usize, first_h: usize, other: PathBuf, other_w: usize, other_h: usize },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, IngestError>;

/// One decoded single-channel image, row-major: pixel (row r, column c) is `data[r * width + c]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub width: usize,
    pub height: usize,
    /// Bits per sample as stored in the file (8 or 16); 8-bit values are widened unscaled.
    pub bit_depth: u8,
    pub data: Vec<u16>,
}

impl Image {
    /// Pixel at (row, column); panics out of range (internal use with checked indices only).
    #[inline]
    pub fn get(&self, row: usize, col: usize) -> u16 {
        self.data[row * self.width + col]
    }
}

fn check_size(path: &Path, w: u64, h: u64) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(IngestError::Empty { path: path.into(), width: w, height: h });
    }
    if w.saturating_mul(h) > MAX_PIXELS {
        return Err(IngestError::TooLarge { path: path.into(), width: w, height: h, max: MAX_PIXELS });
    }
    Ok(())
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => IngestError::NotFound { path: path.into() },
        _ => IngestError::Io { path: path.into(), msg: e.to_string() },
    })
}

/// Decode one image file (TIFF first page or PNG; see the module docs).
///
/// Decoder panics (malformed input hitting a bug in a decoder crate) are caught and reported as
/// [`IngestError::Corrupt`], so no panic escapes.
pub fn decode_path(path: impl AsRef<Path>) -> Result<Image> {
    decode_path_frame(path, 0)
}

/// Decode page `frame` (0-based) of a TIFF, or a PNG when `frame` is 0; 8/16-bit greyscale.
pub fn decode_path_frame(path: impl AsRef<Path>, frame: usize) -> Result<Image> {
    let path = path.as_ref();
    let (w, h, bit_depth, raw) = decode_raw(path, frame)?;
    let n = w * h;
    let data = match raw {
        Raw::U8(v) if bit_depth == 8 => v.into_iter().map(u16::from).collect(),
        Raw::U16(v) => v,
        _ => {
            return Err(IngestError::Unsupported { path: path.into(), format: "TIFF", what: format!("{bit_depth}-bit samples (images must be 8 or 16 bits; 32-bit is read for label images only)") })
        }
    };
    debug_assert_eq!(data.len(), n);
    Ok(Image { width: w, height: h, bit_depth, data })
}

/// A decoded label image (object masks): `data[r * width + c]` is the object label, 0 background.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u32>,
}

/// Decode a label image: TIFF (first page) or PNG with 8, 16 or 32-bit unsigned integer samples,
/// returned as `u32` values unchanged (CellProfiler writes object labels 1..n, 0 = background).
pub fn decode_labels(path: impl AsRef<Path>) -> Result<LabelImage> {
    let path = path.as_ref();
    let (w, h, _, raw) = decode_raw(path, 0)?;
    let data = match raw {
        Raw::U8(v) => v.into_iter().map(u32::from).collect(),
        Raw::U16(v) => v.into_iter().map(u32::from).collect(),
        Raw::U32(v) => v,
    };
    Ok(LabelImage { width: w, height: h, data })
}

/// Samples as stored (exactly width x height of them).
enum Raw {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
}

fn decode_raw(path: &Path, frame: usize) -> Result<(usize, usize, u8, Raw)> {
    let mut f = open(path)?;
    if f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(IngestError::Io { path: path.into(), msg: "is a directory".into() });
    }
    let mut magic = [0u8; 8];
    let mut got = 0;
    while got < magic.len() {
        match f.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) => return Err(IngestError::Io { path: path.into(), msg: e.to_string() }),
        }
    }
    let magic = &magic[..got];
    let is_tiff = magic.len() >= 4 && (magic[..4] == *b"II*\0" || magic[..4] == *b"MM\0*" || magic[..4] == *b"II+\0" || magic[..4] == *b"MM\0+");
    let is_png = magic == b"\x89PNG\r\n\x1a\n";
    if !is_tiff && !is_png {
        return Err(IngestError::UnknownFormat { path: path.into(), magic: magic.to_vec() });
    }
    drop(f);
    let file = open(path)?;
    let format = if is_tiff { "TIFF" } else { "PNG" };
    if is_png && frame != 0 {
        return Err(IngestError::Invalid(format!("{}: page {frame} requested but a PNG file has 1 page (page 0)", path.display())));
    }
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if is_tiff {
            decode_tiff(path, file, frame)
        } else {
            decode_png(path, file)
        }
    }));
    match run {
        Ok(r) => r,
        Err(_) => Err(IngestError::Corrupt { path: path.into(), format, msg: "the decoder failed on malformed data".into() }),
    }
}

fn tiff_err(path: &Path, e: tiff::TiffError) -> IngestError {
    use tiff::TiffError as T;
    match e {
        T::UnsupportedError(u) => IngestError::Unsupported { path: path.into(), format: "TIFF", what: u.to_string() },
        T::LimitsExceeded => IngestError::TooLarge { path: path.into(), width: 0, height: 0, max: MAX_PIXELS },
        T::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            IngestError::Corrupt { path: path.into(), format: "TIFF", msg: format!("file ends early ({io})") }
        }
        other => IngestError::Corrupt { path: path.into(), format: "TIFF", msg: other.to_string() },
    }
}

/// TIFF tags that decide how the pixels are read; the first IFD may declare each at most once.
const LAYOUT_TAGS: [(u16, &str); 17] = [
    (256, "ImageWidth"),
    (257, "ImageLength"),
    (258, "BitsPerSample"),
    (259, "Compression"),
    (262, "PhotometricInterpretation"),
    (273, "StripOffsets"),
    (277, "SamplesPerPixel"),
    (278, "RowsPerStrip"),
    (279, "StripByteCounts"),
    (284, "PlanarConfiguration"),
    (317, "Predictor"),
    (322, "TileWidth"),
    (323, "TileLength"),
    (324, "TileOffsets"),
    (325, "TileByteCounts"),
    (338, "ExtraSamples"),
    (339, "SampleFormat"),
];

/// The first layout tag the first IFD declares twice, if any. The TIFF spec requires unique tags;
/// the `tiff` crate silently keeps the last copy, so a corrupted tag number (e.g. SamplesPerPixel
/// turned into a second ImageWidth) would decode to a wrong size without an error. An IFD that
/// cannot be read here is left to the decoder to report.
fn duplicate_layout_tag(file: &mut File) -> Option<(u16, &'static str)> {
    use std::io::{Seek, SeekFrom};
    let mut head = [0u8; 16];
    file.seek(SeekFrom::Start(0)).ok()?;
    let got = file.read(&mut head).ok()?;
    let le = head[0] == b'I';
    let u16_at = |b: &[u8]| if le { u16::from_le_bytes([b[0], b[1]]) } else { u16::from_be_bytes([b[0], b[1]]) };
    let u32_at = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) }
    };
    let u64_at = |b: &[u8]| {
        let a: [u8; 8] = b[..8].try_into().unwrap();
        if le { u64::from_le_bytes(a) } else { u64::from_be_bytes(a) }
    };
    let big = u16_at(&head[2..4]) == 43;
    let (ifd, entry_len, count_len) = if big {
        if got < 16 {
            return None;
        }
        (u64_at(&head[8..16]), 20usize, 8usize)
    } else {
        if got < 8 {
            return None;
        }
        (u32_at(&head[4..8]) as u64, 12usize, 2usize)
    };
    file.seek(SeekFrom::Start(ifd)).ok()?;
    let mut cnt = [0u8; 8];
    file.read_exact(&mut cnt[..count_len]).ok()?;
    // A corrupted count may claim more entries than the file holds: check those that are there.
    let n = if big { u64_at(&cnt) } else { u16_at(&cnt) as u64 }.min(65_535);
    let mut entries = Vec::new();
    (&mut *file).take(n * entry_len as u64).read_to_end(&mut entries).ok()?;
    let mut seen = [false; LAYOUT_TAGS.len()];
    for e in entries.chunks_exact(entry_len) {
        let tag = u16_at(&e[..2]);
        if let Some(k) = LAYOUT_TAGS.iter().position(|&(t, _)| t == tag) {
            if seen[k] {
                return Some(LAYOUT_TAGS[k]);
            }
            seen[k] = true;
        }
    }
    None
}

/// Number of pages (IFDs) of a TIFF, counting at most `limit + 1`; errors while walking stop the count.
fn tiff_page_count(path: &Path, limit: usize) -> usize {
    let Ok(file) = open(path) else { return 0 };
    let Ok(mut dec) = tiff::decoder::Decoder::new(BufReader::new(file)) else { return 0 };
    let mut n = 1;
    while n <= limit && dec.more_images() {
        if dec.next_image().is_err() {
            break;
        }
        n += 1;
    }
    n
}

fn decode_tiff(path: &Path, mut file: File, frame: usize) -> Result<(usize, usize, u8, Raw)> {
    use std::io::{Seek, SeekFrom};
    use tiff::decoder::{Decoder, DecodingResult, Limits};
    use tiff::ColorType;
    if let Some((tag, name)) = duplicate_layout_tag(&mut file) {
        return Err(IngestError::Corrupt { path: path.into(), format: "TIFF", msg: format!("the first IFD declares tag {name} ({tag}) more than once") });
    }
    file.seek(SeekFrom::Start(0)).map_err(|err| IngestError::Io { path: path.into(), msg: err.to_string() })?;
    let e = |err| tiff_err(path, err);
    let mut limits = Limits::default();
    limits.decoding_buffer_size = (MAX_PIXELS as usize).saturating_mul(4);
    let mut dec = Decoder::new(BufReader::new(file)).map_err(e)?.with_limits(limits);
    if frame > 0 {
        if let Err(err) = dec.seek_to_image(frame) {
            if matches!(err, tiff::TiffError::FormatError(tiff::TiffFormatError::ImageFileDirectoryNotFound)) {
                let pages = tiff_page_count(path, frame);
                return Err(IngestError::Invalid(format!(
                    "{}: page {frame} requested but the TIFF has {pages} page(s) (pages are numbered from 0)",
                    path.display()
                )));
            }
            return Err(e(err));
        }
    }
    let (w, h) = dec.dimensions().map_err(e)?;
    check_size(path, w as u64, h as u64)?;
    let bit_depth = match dec.colortype().map_err(e)? {
        ColorType::Gray(8) => 8u8,
        ColorType::Gray(16) => 16u8,
        ColorType::Gray(32) => 32u8,
        other => {
            return Err(IngestError::Unsupported { path: path.into(), format: "TIFF", what: format!("colour type {other:?}") })
        }
    };
    let (w, h) = (w as usize, h as usize);
    let n = w * h;
    let raw = match dec.read_image().map_err(e)? {
        DecodingResult::U8(mut v) if bit_depth == 8 && v.len() >= n => {
            v.truncate(n);
            Raw::U8(v)
        }
        DecodingResult::U16(mut v) if bit_depth == 16 && v.len() >= n => {
            v.truncate(n);
            Raw::U16(v)
        }
        DecodingResult::U32(mut v) if bit_depth == 32 && v.len() >= n => {
            v.truncate(n);
            Raw::U32(v)
        }
        DecodingResult::U8(v) => return Err(short(path, v.len(), n)),
        DecodingResult::U16(v) => return Err(short(path, v.len(), n)),
        DecodingResult::U32(v) => return Err(short(path, v.len(), n)),
        _ => {
            return Err(IngestError::Unsupported { path: path.into(), format: "TIFF", what: "sample format is not unsigned integer".into() })
        }
    };
    Ok((w, h, bit_depth, raw))
}

fn short(path: &Path, got: usize, want: usize) -> IngestError {
    IngestError::Corrupt { path: path.into(), format: "TIFF", msg: format!("decoded {got} samples, expected {want}") }
}

fn decode_png(path: &Path, file: File) -> Result<(usize, usize, u8, Raw)> {
    use png::{BitDepth, ColorType, Decoder, Transformations};
    let e = |err: png::DecodingError| match err {
        png::DecodingError::LimitsExceeded => IngestError::TooLarge { path: path.into(), width: 0, height: 0, max: MAX_PIXELS },
        png::DecodingError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            IngestError::Corrupt { path: path.into(), format: "PNG", msg: format!("file ends early ({io})") }
        }
        other => IngestError::Corrupt { path: path.into(), format: "PNG", msg: other.to_string() },
    };
    let mut dec = Decoder::new_with_limits(BufReader::new(file), png::Limits { bytes: (MAX_PIXELS as usize).saturating_mul(2) });
    dec.set_transformations(Transformations::IDENTITY);
    let mut reader = dec.read_info().map_err(e)?;
    let (w, h, ct, bd) = {
        let info = reader.info();
        (info.width, info.height, info.color_type, info.bit_depth)
    };
    check_size(path, w as u64, h as u64)?;
    let bit_depth = match (ct, bd) {
        (ColorType::Grayscale, BitDepth::Eight) => 8u8,
        (ColorType::Grayscale, BitDepth::Sixteen) => 16u8,
        (ct, bd) => {
            return Err(IngestError::Unsupported { path: path.into(), format: "PNG", what: format!("colour type {ct:?} with bit depth {bd:?}") })
        }
    };
    let size = reader.output_buffer_size().ok_or_else(|| IngestError::TooLarge {
        path: path.into(),
        width: w as u64,
        height: h as u64,
        max: MAX_PIXELS,
    })?;
    let mut buf = vec![0u8; size];
    let out = reader.next_frame(&mut buf).map_err(e)?;
    let (w, h) = (w as usize, h as usize);
    let line = out.line_size;
    if bit_depth == 8 {
        let mut data = Vec::with_capacity(w * h);
        for r in 0..h {
            data.extend_from_slice(&buf[r * line..r * line + w]);
        }
        return Ok((w, h, 8, Raw::U8(data)));
    }
    let mut data = Vec::with_capacity(w * h);
    for r in 0..h {
        let row = &buf[r * line..r * line + line];
        data.extend(row[..2 * w].chunks_exact(2).map(|b| u16::from_be_bytes([b[0], b[1]])));
    }
    Ok((w, h, 16, Raw::U16(data)))
}

/// Decode the channels of one site in parallel (rayon) and check they all have the first
/// channel's size. Returns the images in the order of `paths`.
pub fn decode_site<P: AsRef<Path> + Sync>(paths: &[P]) -> Result<Vec<Image>> {
    decode_site_frames(paths, None)
}

/// [`decode_site`] with one page index per path (`frames[i]` for `paths[i]`; `None` = page 0).
pub fn decode_site_frames<P: AsRef<Path> + Sync>(paths: &[P], frames: Option<&[usize]>) -> Result<Vec<Image>> {
    if paths.is_empty() {
        return Err(IngestError::Invalid("a site needs at least one channel image path".into()));
    }
    if let Some(f) = frames {
        if f.len() != paths.len() {
            return Err(IngestError::Invalid(format!("{} frame indices given for {} channel paths (first {}): give one per path", f.len(), paths.len(), paths[0].as_ref().display())));
        }
    }
    let images: Vec<Result<Image>> = paths.par_iter().enumerate().map(|(i, p)| decode_path_frame(p, frames.map_or(0, |f| f[i]))).collect();
    // Report the first failing channel in path order (deterministic messages).
    let images: Vec<Image> = images.into_iter().collect::<Result<_>>()?;
    let (w0, h0) = (images[0].width, images[0].height);
    for (p, im) in paths.iter().zip(&images).skip(1) {
        if im.width != w0 || im.height != h0 {
            return Err(IngestError::SizeMismatch {
                first: paths[0].as_ref().into(),
                first_w: w0,
                first_h: h0,
                other: p.as_ref().into(),
                other_w: im.width,
                other_h: im.height,
            });
        }
    }
    Ok(images)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};
    use tiff::encoder::{colortype, Compression, DeflateLevel, TiffEncoder};

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("phenovec-image-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn pattern16(w: usize, h: usize) -> Vec<u16> {
        (0..w * h).map(|i| ((i * 2654435761usize) % 65536) as u16).collect()
    }

    fn write_tiff16(path: &Path, w: usize, h: usize, data: &[u16], c: Compression) {
        let mut buf = Cursor::new(Vec::new());
        let mut enc = TiffEncoder::new(&mut buf).unwrap().with_compression(c);
        enc.write_image::<colortype::Gray16>(w as u32, h as u32, data).unwrap();
        std::fs::write(path, buf.into_inner()).unwrap();
    }

    #[test]
    fn tiff16_round_trip_all_compressions() {
        let d = tmpdir("t16");
        let (w, h) = (37, 23); // not square: width and height must not be swapped
        let data = pattern16(w, h);
        let comps = [
            ("none", Compression::Uncompressed),
            ("lzw", Compression::Lzw),
            ("deflate", Compression::Deflate(DeflateLevel::Balanced)),
            ("packbits", Compression::Packbits),
        ];
        for (name, c) in comps {
            let p = d.join(format!("{name}.tiff"));
            write_tiff16(&p, w, h, &data, c);
            let im = decode_path(&p).unwrap();
            assert_eq!((im.width, im.height, im.bit_depth), (w, h, 16), "{name}");
            assert_eq!(im.data, data, "{name}");
        }
    }

    #[test]
    fn tiff8_widened_unscaled_and_first_page_only() {
        let d = tmpdir("t8");
        let (w, h) = (5, 3);
        let a: Vec<u8> = (0..15).map(|i| (i * 17) as u8).collect();
        let b: Vec<u8> = vec![9; 15 * 4];
        let mut buf = Cursor::new(Vec::new());
        let mut enc = TiffEncoder::new(&mut buf).unwrap().with_compression(Compression::Lzw);
        enc.write_image::<colortype::Gray8>(w, h, &a).unwrap();
        enc.write_image::<colortype::Gray8>(10, 6, &b).unwrap();
        let p = d.join("two_pages.tif");
        std::fs::write(&p, buf.into_inner()).unwrap();
        let im = decode_path(&p).unwrap();
        assert_eq!((im.width, im.height, im.bit_depth), (5, 3, 8));
        assert_eq!(im.data, a.iter().map(|&x| x as u16).collect::<Vec<_>>());
    }

    #[test]
    fn tiff_pages_by_frame_and_page_count_error() {
        let d = tmpdir("pages");
        let (w, h) = (6u32, 4u32);
        let pages: Vec<Vec<u16>> = (0..3).map(|k| (0..24).map(|i| (1000 * k + i) as u16).collect()).collect();
        let mut buf = Cursor::new(Vec::new());
        let mut enc = TiffEncoder::new(&mut buf).unwrap().with_compression(Compression::Deflate(DeflateLevel::Fast));
        for p in &pages {
            enc.write_image::<colortype::Gray16>(w, h, p).unwrap();
        }
        let p = d.join("three_pages.tif");
        std::fs::write(&p, buf.into_inner()).unwrap();
        for (k, want) in pages.iter().enumerate() {
            assert_eq!(&decode_path_frame(&p, k).unwrap().data, want);
        }
        let e = decode_path_frame(&p, 3).unwrap_err().to_string();
        assert!(e.contains("three_pages.tif") && e.contains("page 3") && e.contains("has 3 page(s)"), "{e}");
        let ims = decode_site_frames(&[&p, &p], Some(&[2, 0])).unwrap();
        assert_eq!((&ims[0].data, &ims[1].data), (&pages[2], &pages[0]));
        assert!(decode_site_frames(&[&p, &p], Some(&[0])).is_err());
    }

    #[test]
    fn labels_decode_8_16_32_bit() {
        let d = tmpdir("labels");
        let lab: Vec<u32> = (0..12).map(|i| if i % 3 == 0 { 0 } else { 70_000 + i }).collect();
        let mut buf = Cursor::new(Vec::new());
        TiffEncoder::new(&mut buf).unwrap().write_image::<colortype::Gray32>(4, 3, &lab).unwrap();
        let p = d.join("l32.tif");
        std::fs::write(&p, buf.into_inner()).unwrap();
        let l = decode_labels(&p).unwrap();
        assert_eq!((l.width, l.height, &l.data), (4, 3, &lab));
        // 32-bit is for labels only: as an image channel it is refused, naming the file.
        let e = decode_path(&p).unwrap_err().to_string();
        assert!(e.contains("l32.tif") && e.contains("32-bit"), "{e}");
        let l16: Vec<u16> = lab.iter().map(|&v| (v % 65536) as u16).collect();
        let p16 = d.join("l16.tif");
        write_tiff16(&p16, 4, 3, &l16, Compression::Lzw);
        assert_eq!(decode_labels(&p16).unwrap().data, l16.iter().map(|&v| v as u32).collect::<Vec<_>>());
    }

    fn write_png(path: &Path, w: u32, h: u32, ct: png::ColorType, bd: png::BitDepth, bytes: &[u8]) {
        let f = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
        enc.set_color(ct);
        enc.set_depth(bd);
        let mut wr = enc.write_header().unwrap();
        wr.write_image_data(bytes).unwrap();
    }

    #[test]
    fn png_round_trips() {
        let d = tmpdir("png");
        let (w, h) = (7usize, 4usize);
        let data = pattern16(w, h);
        let be: Vec<u8> = data.iter().flat_map(|v| v.to_be_bytes()).collect();
        let p16 = d.join("g16.png");
        write_png(&p16, w as u32, h as u32, png::ColorType::Grayscale, png::BitDepth::Sixteen, &be);
        let im = decode_path(&p16).unwrap();
        assert_eq!((im.width, im.height, im.bit_depth), (w, h, 16));
        assert_eq!(im.data, data);

        let d8: Vec<u8> = (0..w * h).map(|i| (i * 9 % 256) as u8).collect();
        let p8 = d.join("g8.png");
        write_png(&p8, w as u32, h as u32, png::ColorType::Grayscale, png::BitDepth::Eight, &d8);
        let im = decode_path(&p8).unwrap();
        assert_eq!(im.bit_depth, 8);
        assert_eq!(im.data, d8.iter().map(|&x| x as u16).collect::<Vec<_>>());

        let rgb = d.join("rgb.png");
        write_png(&rgb, 2, 2, png::ColorType::Rgb, png::BitDepth::Eight, &[0u8; 12]);
        let err = decode_path(&rgb).unwrap_err();
        assert!(matches!(err, IngestError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("rgb.png"));
    }

    #[test]
    fn rgb_tiff_is_unsupported() {
        let d = tmpdir("rgbt");
        let p = d.join("rgb.tiff");
        let mut buf = Cursor::new(Vec::new());
        TiffEncoder::new(&mut buf).unwrap().write_image::<colortype::RGB8>(2, 2, &[1u8; 12]).unwrap();
        std::fs::write(&p, buf.into_inner()).unwrap();
        let err = decode_path(&p).unwrap_err();
        assert!(matches!(err, IngestError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("rgb.tiff"));
    }

    #[test]
    fn bad_files_give_errors_naming_the_file() {
        let d = tmpdir("bad");
        let missing = d.join("nope.tiff");
        assert!(matches!(decode_path(&missing), Err(IngestError::NotFound { .. })));

        let txt = d.join("text.tiff");
        std::fs::write(&txt, "hello, not an image").unwrap();
        let e = decode_path(&txt).unwrap_err();
        assert!(matches!(e, IngestError::UnknownFormat { .. }) && e.to_string().contains("text.tiff"), "{e}");

        let empty = d.join("empty.png");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(decode_path(&empty), Err(IngestError::UnknownFormat { .. })));

        // Truncated: a valid LZW TIFF cut in the pixel data.
        let (w, h) = (64, 64);
        let full = d.join("full.tiff");
        write_tiff16(&full, w, h, &pattern16(w, h), Compression::Uncompressed);
        let bytes = std::fs::read(&full).unwrap();
        for cut in [10usize, 100, 1000, bytes.len() - 10] {
            let t = d.join(format!("cut{cut}.tiff"));
            std::fs::write(&t, &bytes[..cut]).unwrap();
            let e = decode_path(&t).unwrap_err();
            assert!(e.to_string().contains(&format!("cut{cut}.tiff")), "{e}");
        }
        let png16 = d.join("full.png");
        let be: Vec<u8> = pattern16(w, h).iter().flat_map(|v| v.to_be_bytes()).collect();
        write_png(&png16, w as u32, h as u32, png::ColorType::Grayscale, png::BitDepth::Sixteen, &be);
        let pb = std::fs::read(&png16).unwrap();
        let t = d.join("cut.png");
        std::fs::write(&t, &pb[..pb.len() / 2]).unwrap();
        let e = decode_path(&t).unwrap_err();
        assert!(matches!(e, IngestError::Corrupt { .. }) && e.to_string().contains("cut.png"), "{e}");
    }

    /// A hand-made TIFF header declaring 100000 x 100000 pixels with 4 bytes of data.
    #[test]
    fn absurd_dimensions_refused_before_allocating() {
        let d = tmpdir("huge");
        let mut b: Vec<u8> = b"II*\0".to_vec();
        b.extend(8u32.to_le_bytes());
        let entries: [(u16, u16, u32, u32); 8] = [
            (256, 4, 1, 100_000), // ImageWidth LONG
            (257, 4, 1, 100_000), // ImageLength
            (258, 3, 1, 16),      // BitsPerSample
            (259, 3, 1, 1),       // Compression none
            (262, 3, 1, 1),       // Photometric BlackIsZero
            (273, 4, 1, 200),     // StripOffsets
            (278, 4, 1, 100_000), // RowsPerStrip
            (279, 4, 1, 4),       // StripByteCounts
        ];
        b.extend((entries.len() as u16).to_le_bytes());
        for (tag, ty, count, val) in entries {
            b.extend(tag.to_le_bytes());
            b.extend(ty.to_le_bytes());
            b.extend(count.to_le_bytes());
            if ty == 3 {
                b.extend((val as u16).to_le_bytes());
                b.extend([0u8, 0]);
            } else {
                b.extend(val.to_le_bytes());
            }
        }
        b.extend(0u32.to_le_bytes());
        b.resize(204, 0);
        let p = d.join("huge.tiff");
        std::fs::File::create(&p).unwrap().write_all(&b).unwrap();
        let e = decode_path(&p).unwrap_err();
        assert!(matches!(e, IngestError::TooLarge { width: 100_000, height: 100_000, .. }), "{e}");
        assert!(e.to_string().contains("huge.tiff"));
    }

    /// Fuzz finding (tests/test_ingest_fuzz.py seed 2 case 5924): one byte turned the
    /// SamplesPerPixel tag into a second ImageWidth (= 1); the decoder kept the last copy and
    /// returned a 23 x 1 image. Duplicated layout tags are refused, naming the tag and the file.
    #[test]
    fn duplicate_layout_tag_is_refused() {
        let d = tmpdir("dup");
        let (w, h) = (37, 23);
        for (name, le) in [("dup_le.tiff", true), ("dup_be.tiff", false)] {
            let mut b: Vec<u8> = if le { b"II*\0".to_vec() } else { b"MM\0*".to_vec() };
            let u16b = |v: u16| if le { v.to_le_bytes() } else { v.to_be_bytes() };
            let u32b = |v: u32| if le { v.to_le_bytes() } else { v.to_be_bytes() };
            b.extend(u32b(8));
            let entries: [(u16, u16, u32); 9] = [
                (256, 4, w as u32),
                (257, 4, h as u32),
                (258, 3, 16),
                (259, 3, 1),
                (262, 3, 1),
                (273, 4, 200),
                (256, 3, 1), // the corrupted SamplesPerPixel entry
                (278, 4, h as u32),
                (279, 4, (w * h * 2) as u32),
            ];
            b.extend(u16b(entries.len() as u16));
            for (tag, ty, val) in entries {
                b.extend(u16b(tag));
                b.extend(u16b(ty));
                b.extend(u32b(1));
                if ty == 3 {
                    b.extend(u16b(val as u16));
                    b.extend([0u8, 0]);
                } else {
                    b.extend(u32b(val));
                }
            }
            b.extend(u32b(0));
            b.resize(200 + w * h * 2, 7);
            let p = d.join(name);
            std::fs::write(&p, &b).unwrap();
            let e = decode_path(&p).unwrap_err();
            let s = e.to_string();
            assert!(matches!(e, IngestError::Corrupt { .. }) && s.contains(name) && s.contains("ImageWidth (256)"), "{s}");
            // the same file with the entry restored to SamplesPerPixel = 1 decodes at the declared size
            let at = 8 + 2 + 6 * 12;
            b[at..at + 2].copy_from_slice(&u16b(277));
            std::fs::write(&p, &b).unwrap();
            let im = decode_path(&p).unwrap();
            assert_eq!((im.width, im.height), (w, h));
        }
    }

    #[test]
    fn site_checks_sizes_and_keeps_order() {
        let d = tmpdir("site");
        let a = d.join("a.tiff");
        let b = d.join("b.tiff");
        let c = d.join("c.tiff");
        write_tiff16(&a, 4, 3, &[1; 12], Compression::Lzw);
        write_tiff16(&b, 4, 3, &[2; 12], Compression::Uncompressed);
        write_tiff16(&c, 3, 4, &[3; 12], Compression::Uncompressed);
        let ims = decode_site(&[&a, &b]).unwrap();
        assert_eq!(ims[0].data[0], 1);
        assert_eq!(ims[1].data[0], 2);
        let e = decode_site(&[&a, &c]).unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, IngestError::SizeMismatch { .. }) && s.contains("a.tiff") && s.contains("c.tiff") && s.contains("4 x 3") && s.contains("3 x 4"), "{s}");
        let e = decode_site(&[&a, &d.join("missing.tiff")]).unwrap_err();
        assert!(matches!(e, IngestError::NotFound { .. }) && e.to_string().contains("missing.tiff"));
    }
}
