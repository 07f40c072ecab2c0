"""Rust decode + crop core (phenovec._core.decode_image / crop_site) against tifffile + numpy.

Real data: one 5-channel 1080x1080 uint16 LZW site with 109 CellProfiler nuclei
(../shared/data/deepprofiler-cpjump1-site). The numpy reference below re-derives the documented
geometry (rust/src/crop.rs): centre pixel = floor(v + 0.5); box top-left = centre - box // 2.
Outcome codes: 0 inside, 1 shifted, 2 padded, 3 dropped, 4 invalid.
"""
import math

import numpy as np
import pandas as pd
import pytest
import tifffile

from phenovec import _core

from conftest import shared

SITE = "deepprofiler-cpjump1-site"
CHANNELS = [f"r01c01f01p01-ch{i}sk1fk1fl1.tiff" for i in (5, 4, 3, 1, 2)]  # DNA, ER, RNA, AGP, Mito
INSIDE, SHIFTED, PADDED, DROPPED, INVALID = 0, 1, 2, 3, 4


@pytest.fixture(scope="module")
def site():
    paths = [str(shared(SITE, name)) for name in CHANNELS]
    ref = np.stack([tifffile.imread(p) for p in paths])
    nuc = pd.read_csv(shared(SITE, "Nuclei.csv"), usecols=["AreaShape_Center_X", "AreaShape_Center_Y"])
    return paths, ref, nuc["AreaShape_Center_X"].to_numpy(float), nuc["AreaShape_Center_Y"].to_numpy(float)


def reference_crop(ref, x, y, box, edge):
    """Independent numpy version of the documented crop semantics."""
    c, h, w = ref.shape
    if not (math.isfinite(x) and math.isfinite(y)):
        return np.zeros((c, box, box), ref.dtype), INVALID
    cx, cy = math.floor(x + 0.5), math.floor(y + 0.5)
    if not (0 <= cx < w and 0 <= cy < h):
        return np.zeros((c, box, box), ref.dtype), INVALID
    r0, c0 = cy - box // 2, cx - box // 2
    if r0 >= 0 and c0 >= 0 and r0 + box <= h and c0 + box <= w:
        return ref[:, r0:r0 + box, c0:c0 + box], INSIDE
    if edge == "drop" or (edge == "shift" and (box > h or box > w)):
        return np.zeros((c, box, box), ref.dtype), DROPPED
    if edge == "shift":
        r0, c0 = min(max(r0, 0), h - box), min(max(c0, 0), w - box)
        return ref[:, r0:r0 + box, c0:c0 + box], SHIFTED
    padded = np.pad(ref, ((0, 0), (box, box), (box, box)))
    return padded[:, r0 + box:r0 + 2 * box, c0 + box:c0 + 2 * box], PADDED


def test_decode_matches_tifffile_pixel_for_pixel(site):
    paths, ref, _, _ = site
    for p, r in zip(paths, ref):
        img = _core.decode_image(p)
        assert img.dtype == np.uint16 and img.shape == (1080, 1080)
        np.testing.assert_array_equal(img, r)


@pytest.mark.parametrize("edge", ["drop", "shift", "pad"])
@pytest.mark.parametrize("box", [128, 96, 33])
def test_crops_of_real_nuclei_match_numpy(site, edge, box):
    paths, ref, xs, ys = site
    crops, codes = _core.crop_site(paths, xs, ys, box, edge, False)
    assert crops.shape == (109, 5, box, box) and crops.dtype == np.uint16
    assert codes.shape == (109,) and codes.dtype == np.int8
    for i, (x, y) in enumerate(zip(xs, ys)):
        want, code = reference_crop(ref, x, y, box, edge)
        assert codes[i] == code, (i, x, y)
        np.testing.assert_array_equal(crops[i], want, err_msg=f"cell {i} at ({x}, {y})")
    if box == 128:
        # Nuclei lie within 17..1060 px of the origin: with 128-px boxes some are near the border.
        assert (codes == INSIDE).sum() > 50
        assert (codes != INSIDE).sum() > 5
        other = {"drop": DROPPED, "shift": SHIFTED, "pad": PADDED}[edge]
        assert set(codes.tolist()) == {INSIDE, other}


def test_inside_crops_equal_plain_slicing(site):
    paths, ref, xs, ys = site
    crops, codes = _core.crop_site(paths, xs, ys, 64, "drop", False)
    n_inside = 0
    for i in np.flatnonzero(codes == INSIDE):
        cx, cy = int(np.floor(xs[i] + 0.5)), int(np.floor(ys[i] + 0.5))
        np.testing.assert_array_equal(crops[i], ref[:, cy - 32:cy + 32, cx - 32:cx + 32])
        assert crops[i, 0, 32, 32] == ref[0, cy, cx]  # centre pixel at index box // 2
        n_inside += 1
    assert n_inside > 90


def test_rescale_is_per_crop_per_channel_min_max(site):
    paths, ref, xs, ys = site
    crops, codes = _core.crop_site(paths, xs, ys, 128, "pad", True)
    raw, codes_raw = _core.crop_site(paths, xs, ys, 128, "pad", False)
    assert crops.dtype == np.float32
    np.testing.assert_array_equal(codes, codes_raw)
    r = raw.astype(np.float32)
    lo = r.min(axis=(2, 3), keepdims=True)
    hi = r.max(axis=(2, 3), keepdims=True)
    want = np.where(hi > lo, (r - lo) / np.where(hi > lo, hi - lo, 1), 0).astype(np.float32)
    np.testing.assert_allclose(crops, want, rtol=0, atol=1e-6)
    assert crops.min() == 0.0 and crops.max() == 1.0
    # Constant crops (dropped) become zeros.
    dropped, dc = _core.crop_site(paths, xs, ys, 128, "drop", True)
    assert (dc == DROPPED).any() and not dropped[dc == DROPPED].any()


def test_nan_and_outside_centres_are_invalid(site):
    paths, ref, _, _ = site
    xs = np.array([np.nan, 500.0, -5.0, 1080.0, np.inf, 500.0])
    ys = np.array([500.0, np.nan, 500.0, 500.0, 500.0, 500.0])
    for edge in ("drop", "shift", "pad"):
        crops, codes = _core.crop_site(paths, xs, ys, 16, edge, False)
        assert codes.tolist() == [INVALID] * 5 + [INSIDE]
        assert not crops[:5].any()
        np.testing.assert_array_equal(crops[5], ref[:, 492:508, 492:508])


@pytest.mark.parametrize("compression,predictor", [(None, None), ("lzw", True), ("zlib", None), ("packbits", None)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_decode_tifffile_written_images(tmp_path, compression, predictor, dtype):
    rng = np.random.default_rng(0)
    img = rng.integers(0, np.iinfo(dtype).max, size=(37, 53), dtype=dtype)
    p = tmp_path / "img.tiff"
    tifffile.imwrite(p, img, compression=compression, predictor=predictor)
    out = _core.decode_image(str(p))
    assert out.dtype == np.uint16 and out.shape == (37, 53)
    np.testing.assert_array_equal(out, img.astype(np.uint16))


def test_missing_file(site, tmp_path):
    missing = tmp_path / "missing-ch1.tiff"
    with pytest.raises(FileNotFoundError, match="missing-ch1.tiff"):
        _core.decode_image(str(missing))
    paths, _, xs, ys = site
    with pytest.raises(FileNotFoundError, match="missing-ch1.tiff"):
        _core.crop_site([paths[0], str(missing)], xs, ys, 32, "pad", False)


def test_truncated_tiff(site, tmp_path):
    paths = site[0]
    with open(paths[0], "rb") as f:
        head = f.read(1000)
    p = tmp_path / "truncated.tiff"
    p.write_bytes(head)
    with pytest.raises(ValueError, match="truncated.tiff"):
        _core.decode_image(str(p))
    with pytest.raises(ValueError, match="truncated.tiff"):
        _core.crop_site([paths[0], str(p)], np.array([500.0]), np.array([500.0]), 32, "pad", False)


def test_text_file_named_tiff(tmp_path):
    p = tmp_path / "notes.tiff"
    p.write_text("Metadata_Plate,Metadata_Well\nBR00116991,A01\n")
    with pytest.raises(ValueError, match="notes.tiff.*not a TIFF or PNG"):
        _core.decode_image(str(p))


def test_rgb_tiff_unsupported(tmp_path):
    p = tmp_path / "rgb.tiff"
    tifffile.imwrite(p, np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match="rgb.tiff.*unsupported"):
        _core.decode_image(str(p))


def test_channels_of_different_sizes(site, tmp_path):
    paths = site[0]
    small = tmp_path / "small.tiff"
    tifffile.imwrite(small, np.zeros((540, 540), np.uint16))
    with pytest.raises(ValueError, match=r"1080 x 1080.*small.tiff.*540 x 540"):
        _core.crop_site([paths[0], str(small)], np.array([10.0]), np.array([10.0]), 8, "pad", False)


def test_bad_arguments(site):
    paths = site[0]
    with pytest.raises(ValueError, match="edge policy"):
        _core.crop_site(paths[:1], np.array([1.0]), np.array([1.0]), 8, "mirror", False)
    with pytest.raises(ValueError, match="xs has 2 centres but ys has 1"):
        _core.crop_site(paths[:1], np.array([1.0, 2.0]), np.array([1.0]), 8, "pad", False)
    with pytest.raises(ValueError, match="box size"):
        _core.crop_site(paths[:1], np.array([1.0]), np.array([1.0]), 0, "pad", False)
    with pytest.raises(ValueError, match="at least one channel"):
        _core.crop_site([], np.array([1.0]), np.array([1.0]), 8, "pad", False)
