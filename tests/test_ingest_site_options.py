"""phenovec._core.crop_site options (frames, flat, intensity, dtype, compact) against numpy + tifffile.

Real data: the 5-channel 1080x1080 uint16 site with 109 CellProfiler nuclei
(../shared/data/deepprofiler-cpjump1-site) plus a few centres at the borders, NaN and outside.
The reference re-derives the documented pipeline (rust/src/site.rs) with numpy only: raw / flat in
float32; np.percentile (linear) of each corrected channel in float64 and clip((v - lo) / (hi - lo))
stored float32; crop geometry floor(c + 0.5) - box // 2 with the edge policy; per-crop min-max in
float32; uint8 = np.rint(v * 255), uint16 = np.rint(v * 65535) (float32 products), raw uint16 from
corrected values = clip(np.rint(v), 0, 65535); float16 = astype(np.float16).
"""
import math

import numpy as np
import pandas as pd
import pytest
import tifffile

from phenovec import _core

from conftest import shared

SITE = "deepprofiler-cpjump1-site"
CHANNELS = [f"r01c01f01p01-ch{i}sk1fk1fl1.tiff" for i in (5, 4, 3, 1, 2)]
BOX = 48


@pytest.fixture(scope="module")
def site():
    paths = [str(shared(SITE, name)) for name in CHANNELS]
    raw = np.stack([tifffile.imread(p) for p in paths])
    nuc = pd.read_csv(shared(SITE, "Nuclei.csv"), usecols=["AreaShape_Center_X", "AreaShape_Center_Y"])
    xs = np.concatenate([nuc["AreaShape_Center_X"].to_numpy(float), [3.2, 1079.4, 540.0, np.nan, 1200.0, -0.4]])
    ys = np.concatenate([nuc["AreaShape_Center_Y"].to_numpy(float), [5.0, 1070.6, 0.0, 10.0, 5.0, 1079.0]])
    c, h, w = raw.shape
    rr, cc = np.mgrid[0:h, 0:w].astype(np.float32)
    flat = np.stack([0.6 + 0.8 * np.exp(-(((rr - 500 - 20 * k) / 700) ** 2 + ((cc - 560) / 650) ** 2)) for k in range(c)])
    return paths, raw, xs, ys, flat.astype(np.float32)


def geometry(xs, ys, box, edge, h, w):
    """[(code, r0, c0)] per cell; r0, c0 None when no crop is cut."""
    out = []
    for x, y in zip(xs, ys):
        if not (math.isfinite(x) and math.isfinite(y)):
            out.append((4, None, None))
            continue
        cx, cy = math.floor(x + 0.5), math.floor(y + 0.5)
        if not (0 <= cx < w and 0 <= cy < h):
            out.append((4, None, None))
            continue
        r0, c0 = cy - box // 2, cx - box // 2
        if r0 >= 0 and c0 >= 0 and r0 + box <= h and c0 + box <= w:
            out.append((0, r0, c0))
        elif edge == "drop":
            out.append((3, None, None))
        elif edge == "shift":
            out.append((1, min(max(r0, 0), h - box), min(max(c0, 0), w - box)))
        else:
            out.append((2, r0, c0))
    return out


def crop_ref(stack, xs, ys, box, edge):
    c, h, w = stack.shape
    geo = geometry(xs, ys, box, edge, h, w)
    big = np.zeros((c, h + 2 * box, w + 2 * box), stack.dtype)
    big[:, box:box + h, box:box + w] = stack
    out = np.zeros((len(geo), c, box, box), stack.dtype)
    for i, (_, r0, c0) in enumerate(geo):
        if r0 is not None:
            out[i] = big[:, r0 + box:r0 + 2 * box, c0 + box:c0 + 2 * box]
    return out, np.array([g[0] for g in geo], np.int8)


def intensity_ref(x, mode, a, b):
    out = np.empty_like(x, dtype=np.float32)
    for c in range(x.shape[0]):
        v = x[c].astype(np.float64)
        lo, hi = np.percentile(v, [a, b]) if mode == "percentile" else (a, b)
        out[c] = np.clip((v - lo) / (hi - lo), 0, 1).astype(np.float32) if hi > lo else 0
    return out


def minmax_ref(crops):
    crops = crops.astype(np.float32)
    mn = crops.min(axis=(2, 3), keepdims=True)
    mx = crops.max(axis=(2, 3), keepdims=True)
    rng = mx - mn
    return np.where(rng > 0, (crops - mn) / np.where(rng > 0, rng, 1), np.float32(0)).astype(np.float32)


def test_positional_call_unchanged(site):
    paths, raw, xs, ys, _ = site
    for edge in ("drop", "shift", "pad"):
        crops, codes = _core.crop_site(paths, xs, ys, BOX, edge, False)
        ref, rcodes = crop_ref(raw, xs, ys, BOX, edge)
        assert crops.dtype == np.uint16
        np.testing.assert_array_equal(codes, rcodes)
        np.testing.assert_array_equal(crops, ref)
    crops, codes = _core.crop_site(paths, xs, ys, BOX, "pad", True)
    ref, _ = crop_ref(raw, xs, ys, BOX, "pad")
    assert crops.dtype == np.float32
    np.testing.assert_allclose(crops, minmax_ref(ref), rtol=0, atol=1e-6)


def test_flat_field_float32_and_uint16(site):
    paths, raw, xs, ys, flat = site
    corr = raw.astype(np.float32) / flat
    ref, rcodes = crop_ref(corr, xs, ys, BOX, "pad")
    crops, codes = _core.crop_site(paths, xs, ys, BOX, "pad", False, flat=flat)
    assert crops.dtype == np.float32  # dtype None after a float step
    np.testing.assert_array_equal(codes, rcodes)
    np.testing.assert_allclose(crops, ref, rtol=0, atol=1e-6)
    crops, _ = _core.crop_site(paths, xs, ys, BOX, "pad", False, flat=flat, dtype="uint16")
    np.testing.assert_array_equal(crops, np.clip(np.rint(ref), 0, 65535).astype(np.uint16))


@pytest.mark.parametrize("mode,a,b", [("percentile", 0.1, 99.9), ("range", 100.0, 3000.0)])
def test_intensity_then_dtypes(site, mode, a, b):
    paths, raw, xs, ys, flat = site
    scaled = intensity_ref(raw.astype(np.float32) / flat, mode, a, b)
    ref, rcodes = crop_ref(scaled, xs, ys, BOX, "shift")
    got = {d: _core.crop_site(paths, xs, ys, BOX, "shift", False, flat=flat, intensity=(mode, a, b), dtype=d)
           for d in (None, "float32", "float16", "uint16", "uint8")}
    for d, (crops, codes) in got.items():
        np.testing.assert_array_equal(codes, rcodes)
    np.testing.assert_allclose(got[None][0], ref, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["float32"][0], ref, rtol=0, atol=1e-6)
    assert got["float16"][0].dtype == np.float16
    np.testing.assert_array_equal(got["float16"][0], ref.astype(np.float16))
    np.testing.assert_array_equal(got["uint16"][0], np.rint(ref * np.float32(65535)).astype(np.uint16))
    np.testing.assert_array_equal(got["uint8"][0], np.rint(ref * np.float32(255)).astype(np.uint8))


def test_percentile_without_flat(site):
    paths, raw, xs, ys, _ = site
    ref, _ = crop_ref(intensity_ref(raw.astype(np.float32), "percentile", 1.0, 99.0), xs, ys, BOX, "pad")
    crops, _ = _core.crop_site(paths, xs, ys, BOX, "pad", False, intensity=("percentile", 1.0, 99.0))
    np.testing.assert_allclose(crops, ref, rtol=0, atol=1e-6)


def test_rescale_to_uint8_and_float16_of_raw(site):
    paths, raw, xs, ys, _ = site
    ref, _ = crop_ref(raw, xs, ys, BOX, "pad")
    crops, _ = _core.crop_site(paths, xs, ys, BOX, "pad", True, dtype="uint8")
    np.testing.assert_array_equal(crops, np.rint(minmax_ref(ref) * np.float32(255)).astype(np.uint8))
    crops, _ = _core.crop_site(paths, xs, ys, BOX, "pad", False, dtype="float16")
    assert raw.max() <= 65504
    np.testing.assert_array_equal(crops, ref.astype(np.float16))
    crops, _ = _core.crop_site(paths, xs, ys, BOX, "pad", False, dtype="float32")
    np.testing.assert_array_equal(crops, ref.astype(np.float32))


@pytest.mark.parametrize("edge", ["drop", "shift", "pad"])
def test_float32_min_max_is_bit_identical_to_numpy(site, edge):
    """Without a mask the per-crop min-max runs inside the cut (rust crop::cut_crops_min_max):
    every value, of whole, shifted, padded and dropped boxes, equals numpy's two-step result bit
    for bit, from raw pixels and from illumination-corrected float planes."""
    paths, raw, xs, ys, flat = site
    ref, codes = crop_ref(raw, xs, ys, BOX, edge)
    crops, got = _core.crop_site(paths, xs, ys, BOX, edge, True, dtype="float32")
    np.testing.assert_array_equal(got, codes)
    assert crops.dtype == np.float32
    np.testing.assert_array_equal(crops.view(np.uint32), minmax_ref(ref).view(np.uint32))
    assert set(np.unique(codes)) >= {0, 4}
    corrected = raw.astype(np.float32) / flat
    ref, _ = crop_ref(corrected, xs, ys, BOX, edge)
    crops, _ = _core.crop_site(paths, xs, ys, BOX, edge, True, flat=flat, dtype="float32", compact=True)
    keep = codes <= 2
    np.testing.assert_array_equal(crops.view(np.uint32), minmax_ref(ref)[keep].view(np.uint32))


@pytest.mark.parametrize("edge", ["drop", "shift", "pad"])
def test_compact_keeps_rows_of_codes_0_to_2(site, edge):
    paths, raw, xs, ys, flat = site
    full, codes = _core.crop_site(paths, xs, ys, BOX, edge, True, dtype="uint8")
    comp, ccodes = _core.crop_site(paths, xs, ys, BOX, edge, True, dtype="uint8", compact=True)
    np.testing.assert_array_equal(ccodes, codes)
    assert len(ccodes) == len(xs)
    keep = codes <= 2
    assert comp.shape == (int(keep.sum()), 5, BOX, BOX)
    np.testing.assert_array_equal(comp, full[keep])
    raw_c, _ = _core.crop_site(paths, xs, ys, BOX, edge, False, compact=True)
    np.testing.assert_array_equal(raw_c, crop_ref(raw, xs, ys, BOX, edge)[0][keep])


def test_bad_options_are_clear_errors(site, tmp_path):
    paths, raw, xs, ys, flat = site
    with pytest.raises(ValueError, match="uint8 needs intensity rescaling"):
        _core.crop_site(paths, xs, ys, BOX, "pad", False, dtype="uint8")
    with pytest.raises(ValueError, match=r"flat field is 5 channel\(s\) x 1080 x 1079.*needs 5 channel\(s\) x 1080 x 1080.*ch5sk1"):
        _core.crop_site(paths, xs, ys, BOX, "pad", False, flat=flat[:, :, :-1])
    with pytest.raises(ValueError, match="beyond float16's range"):
        _core.crop_site(paths, xs, ys, BOX, "pad", False, flat=np.full_like(flat, 0.01), dtype="float16")
    with pytest.raises(ValueError, match="mask needs a label image"):
        _core.crop_site(paths, xs, ys, BOX, "pad", False, mask="object")
    with pytest.raises(ValueError, match="unknown intensity mode"):
        _core.crop_site(paths, xs, ys, BOX, "pad", False, intensity=("zscore", 0.0, 1.0))
    with pytest.raises(ValueError, match="percentiles out of order"):
        _core.crop_site(paths, xs, ys, BOX, "pad", False, intensity=("percentile", 99.0, 1.0))
    with pytest.raises(ValueError, match="unknown crop dtype"):
        _core.crop_site(paths, xs, ys, BOX, "pad", False, dtype="int8")
    with pytest.raises(ValueError, match="page 1 requested.*1 page"):
        _core.crop_site(paths, xs, ys, BOX, "pad", False, frames=[0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="4 frame indices given for 5"):
        _core.crop_site(paths, xs, ys, BOX, "pad", False, frames=[0, 0, 0, 0])


def test_multipage_tiff_frames_match_tifffile(site, tmp_path):
    paths, raw, xs, ys, _ = site
    mp = tmp_path / "site_pages.tiff"
    tifffile.imwrite(mp, raw[::-1], compression="zlib", photometric="minisblack", metadata=None)  # page k = channel 4 - k
    assert len(tifffile.TiffFile(mp).pages) == 5
    for k in range(5):
        np.testing.assert_array_equal(_core.decode_image(str(mp), frame=k), tifffile.imread(mp, key=k))
    crops, codes = _core.crop_site([str(mp)] * 5, xs, ys, BOX, "pad", False, frames=[4, 3, 2, 1, 0])
    ref, rcodes = crop_ref(raw, xs, ys, BOX, "pad")
    np.testing.assert_array_equal(codes, rcodes)
    np.testing.assert_array_equal(crops, ref)
    with pytest.raises(ValueError, match=r"site_pages.tiff: page 5 requested but the TIFF has 5 page\(s\)"):
        _core.decode_image(str(mp), frame=5)
    with pytest.raises(ValueError, match="negative"):
        _core.crop_site([str(mp)] * 5, xs, ys, BOX, "pad", False, frames=[4, 3, 2, 1, -1])
    # Multi-page LZW 8-bit with a predictor-free layout, and a PNG asked for page 1.
    p8 = tmp_path / "p8.tif"
    a8 = (raw[:2, :100, :90] // 256).astype(np.uint8)
    tifffile.imwrite(p8, a8, compression="lzw", photometric="minisblack", metadata=None)
    np.testing.assert_array_equal(_core.decode_image(str(p8), frame=1), a8[1].astype(np.uint16))


@pytest.mark.parametrize("edge", ["drop", "shift", "pad"])
def test_crops_into_a_dirty_buffer_equal_fresh_crops(site, edge):
    """``out=``: float32 crops cut into the first rows of a caller's buffer (the profiling workers reuse one per
    thread) are the fresh crops bit for bit, whatever the buffer held (NaN here: padded and dropped rows are
    written, not assumed zero); the crops returned are a view of the buffer; values past them are untouched."""
    paths, raw, xs, ys, flat = site
    per_cell = 5 * BOX * BOX
    for compact in (True, False):
        for opts in ({}, {"flat": flat}, {"intensity": ("percentile", 1.0, 99.0)}):
            for rescale in (True, False):
                want, codes = _core.crop_site(paths, xs, ys, BOX, edge, rescale, dtype="float32", compact=compact,
                                              **opts)
                buf = np.full(len(xs) * per_cell + 7, np.nan, np.float32)
                got, got_codes = _core.crop_site(paths, xs, ys, BOX, edge, rescale, dtype="float32",
                                                 compact=compact, out=buf, **opts)
                np.testing.assert_array_equal(got_codes, codes)
                assert got.shape == want.shape and got.dtype == np.float32 and np.shares_memory(got, buf)
                np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
                assert np.isnan(buf[want.size:]).all()
    # a 2-D buffer is fine as long as it is C-contiguous; min-max rows from the raw pixels, cells kept only
    buf = np.full((len(xs), per_cell), np.nan, np.float32)
    got, codes = _core.crop_site(paths, xs, ys, BOX, edge, True, compact=True, out=buf)
    ref, ref_codes = crop_ref(raw, xs, ys, BOX, edge)
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(got.view(np.uint32), minmax_ref(ref)[codes <= 2].view(np.uint32))


def test_crops_into_a_buffer_refuses_what_it_cannot_fill(site):
    paths, raw, xs, ys, flat = site
    n = len(xs) * 5 * BOX * BOX
    with pytest.raises(ValueError, match=rf"output buffer has {n - 1} values, fewer than {len(xs)} cells x 5 "
                                         rf"channels x {BOX} x {BOX}.*ch5sk1"):
        _core.crop_site(paths, xs, ys, BOX, "pad", True, compact=True, out=np.empty(n - 1, np.float32))
    for opts in ({}, {"dtype": "uint16"}, {"dtype": "float16"}):  # not float32 crops: the buffer cannot take them
        rescale = opts.get("dtype") == "float16"
        with pytest.raises(ValueError, match="takes float32 crops"):
            _core.crop_site(paths, xs, ys, BOX, "pad", rescale, out=np.empty(n, np.float32), **opts)
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.crop_site(paths, xs, ys, BOX, "pad", True, out=np.empty(2 * n, np.float32)[::2])
    with pytest.raises(TypeError):
        _core.crop_site(paths, xs, ys, BOX, "pad", True, out=np.empty(n, np.float64))
