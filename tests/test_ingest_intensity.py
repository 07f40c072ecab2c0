"""Rust illumination correction, intensity rescaling and field tiles (phenovec._core) vs numpy.

Bindings under test: correct_illumination, rescale_percentile, rescale_range, field_tiles,
field_views (rust/src/intensity.rs, rust/src/tiles.rs). References are plain numpy:
image / flat, np.percentile (default linear method) + clip, block mean via reshape, slicing.
Real data: one 5-channel 1080x1080 uint16 LZW site (../shared/data/deepprofiler-cpjump1-site),
read for the reference with tifffile.
"""
import numpy as np
import pytest
import tifffile

from phenovec import _core

from conftest import shared

SITE = "deepprofiler-cpjump1-site"
CHANNELS = [f"r01c01f01p01-ch{i}sk1fk1fl1.tiff" for i in (5, 4, 3, 1, 2)]  # DNA, ER, RNA, AGP, Mito


@pytest.fixture(scope="module")
def site():
    paths = [str(shared(SITE, name)) for name in CHANNELS]
    ref = np.stack([tifffile.imread(p) for p in paths])
    assert ref.shape == (5, 1080, 1080) and ref.dtype == np.uint16
    return paths, ref


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable gaussian blur with reflected borders, numpy only."""
    r = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = img.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="reflect")
        out = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), axis, p)
    return out


def _deepprofiler_flat(channel: np.ndarray) -> np.ndarray:
    """DeepProfiler-style illumination function: smooth mean image, divided by its robust minimum
    (2nd percentile), values below 1 raised to 1. Computed on a 4x block-mean for speed, then
    expanded back to full size."""
    small = channel.astype(np.float64).reshape(270, 4, 270, 4).mean(axis=(1, 3))
    smooth = _gaussian_blur(small, sigma=10.0)
    smooth /= np.percentile(smooth, 2)
    smooth[smooth < 1] = 1
    return np.repeat(np.repeat(smooth, 4, axis=0), 4, axis=1).astype(np.float32)


def _ref_rescale(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float64)
    return np.clip((x.astype(np.float64) - lo) / (hi - lo), 0, 1)


# ---------------- illumination correction ----------------


def test_illumination_real_site_deepprofiler_flat(site):
    _, ref = site
    flats = np.stack([_deepprofiler_flat(c) for c in ref])
    assert flats.min() >= 1 and flats.max() > 1.05  # a real, non-trivial correction
    for c in range(5):
        got = _core.correct_illumination(ref[c], flats[c])
        assert got.dtype == np.float32 and got.shape == (1080, 1080)
        np.testing.assert_array_equal(got, ref[c].astype(np.float32) / flats[c])
    stack = _core.correct_illumination(ref, flats)  # C x H x W in one call
    np.testing.assert_array_equal(stack, ref.astype(np.float32) / flats)
    # correction flattens the background: the blurred corrected image varies less than the raw one
    raw = _gaussian_blur(ref[0].reshape(270, 4, 270, 4).mean(axis=(1, 3)), 10.0)
    cor = _gaussian_blur(stack[0].reshape(270, 4, 270, 4).mean(axis=(1, 3)), 10.0)
    assert cor.std() / cor.mean() < raw.std() / raw.mean()


def test_illumination_float_input_synthetic():
    rng = np.random.default_rng(0)
    x = rng.normal(100, 30, size=(7, 5)).astype(np.float32)
    flat = rng.uniform(0.5, 2.0, size=(7, 5)).astype(np.float32)
    np.testing.assert_array_equal(_core.correct_illumination(x, flat), x / flat)


def test_illumination_bad_flat_fields():
    x = np.ones((4, 6), np.uint16)
    with pytest.raises(ValueError, match=r"6 x 4.*4 x 6|4 x 6.*6 x 4"):
        _core.correct_illumination(x, np.ones((6, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        _core.correct_illumination(x, np.ones((1, 4, 6), np.float32))
    flat = np.ones((4, 6), np.float32)
    flat[2, 5] = 0
    with pytest.raises(ValueError, match=r"value 0 at channel 0, row 2, column 5"):
        _core.correct_illumination(x, flat)
    flat[2, 5] = np.nan
    with pytest.raises(ValueError, match=r"NaN at channel 0, row 2, column 5"):
        _core.correct_illumination(x, flat)
    flat[2, 5] = -3
    with pytest.raises(ValueError, match="finite and > 0"):
        _core.correct_illumination(x, flat)
    flat[2, 5] = np.inf
    with pytest.raises(ValueError, match="row 2, column 5"):
        _core.correct_illumination(x, flat)
    with pytest.raises(TypeError):  # float64 flat field is refused, not silently cast
        _core.correct_illumination(x, np.ones((4, 6)))


# ---------------- rescaling ----------------


def test_percentile_rescale_real_site(site):
    _, ref = site
    for c in range(5):
        got = _core.rescale_percentile(ref[c], 0.1, 99.9)
        lo, hi = np.percentile(ref[c].astype(np.float64), [0.1, 99.9])
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, _ref_rescale(ref[c], lo, hi), rtol=0, atol=1e-6)
        assert got.min() == 0 and got.max() == 1
    stack = _core.rescale_percentile(ref, 1.0, 99.0)  # per channel plane
    for c in range(5):
        lo, hi = np.percentile(ref[c].astype(np.float64), [1.0, 99.0])
        np.testing.assert_allclose(stack[c], _ref_rescale(ref[c], lo, hi), rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 100, 1001])
@pytest.mark.parametrize("q", [(0.0, 100.0), (0.1, 99.9), (12.5, 87.5), (33.3, 66.7), (49.0, 51.0)])
def test_percentile_rescale_synthetic_matches_numpy(n, q):
    rng = np.random.default_rng(n)
    x = rng.normal(0, 10, size=(1, n)).astype(np.float32)
    x[0, : n // 3] = np.round(x[0, : n // 3])  # ties
    got = _core.rescale_percentile(x, *q)
    lo, hi = np.percentile(x.astype(np.float64), q)
    np.testing.assert_allclose(got, _ref_rescale(x, lo, hi), rtol=0, atol=1e-6)


def test_percentile_rescale_constant_plane_is_zero():
    np.testing.assert_array_equal(_core.rescale_percentile(np.full((3, 3), 7, np.uint16), 1, 99), np.zeros((3, 3), np.float32))


def test_range_rescale(site):
    _, ref = site
    lo, hi = (float(v) for v in np.percentile(ref[0], [5, 95]).round())
    got = _core.rescale_range(ref[0], lo, hi)
    np.testing.assert_allclose(got, _ref_rescale(ref[0], lo, hi), rtol=0, atol=1e-6)
    assert (got == 0).any() and (got == 1).any()
    x = np.array([[-1.0, 0.0, 0.25], [0.5, 1.0, 9.0]], np.float32)
    np.testing.assert_array_equal(_core.rescale_range(x, 0.0, 1.0), np.clip(x, 0, 1))


def test_rescale_bad_input():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for low, high in [(99.9, 0.1), (5, 5), (-1, 50), (10, 101), (np.nan, 50)]:
        with pytest.raises(ValueError, match="percentile"):
            _core.rescale_percentile(x, low, high)
    for lo, hi in [(1.0, 0.0), (2.0, 2.0), (np.nan, 1.0), (0.0, np.inf)]:
        with pytest.raises(ValueError, match="range"):
            _core.rescale_range(x, lo, hi)
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="row 1, column 2"):
        _core.rescale_percentile(bad, 1, 99)
    with pytest.raises(ValueError, match="row 1, column 2"):
        _core.rescale_range(bad, 0, 1)
    with pytest.raises(ValueError, match="2-D"):
        _core.rescale_range(np.zeros(5, np.float32), 0, 1)


# ---------------- field tiles ----------------


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_field_tiles_block_mean(site, factor):
    paths, ref = site
    got = _core.field_tiles(paths, factor)
    s = 1080 // factor
    want = ref.astype(np.float64).reshape(5, s, factor, s, factor).mean(axis=(2, 4)).astype(np.float32)
    assert got.dtype == np.float32 and got.shape == (5, s, s)
    np.testing.assert_array_equal(got, want)


def test_field_views_grid(site):
    paths, ref = site
    th, tw, stride = 520, 692, 250
    got = _core.field_views(paths, th, tw, stride)
    want = np.stack([ref[:, r : r + th, c : c + tw] for r in range(0, 1080 - th + 1, stride) for c in range(0, 1080 - tw + 1, stride)])
    assert want.shape == (3 * 2, 5, th, tw)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, want)
    whole = _core.field_views(paths, 1080, 1080, 1)
    np.testing.assert_array_equal(whole, ref[None])


def test_field_tiles_bad_input(site, tmp_path):
    paths, _ = site
    with pytest.raises(ValueError, match=r"1080 x 1080.*factor 7") as e:
        _core.field_tiles(paths, 7)
    assert CHANNELS[0] in str(e.value)  # names the site
    with pytest.raises(ValueError, match="at least 1"):
        _core.field_tiles(paths, 0)
    with pytest.raises(ValueError, match="does not fit"):
        _core.field_views(paths, 1081, 10, 1)
    with pytest.raises(ValueError, match="at least 1"):
        _core.field_views(paths, 10, 10, 0)
    missing = str(tmp_path / "nope.tiff")
    with pytest.raises(FileNotFoundError, match="nope.tiff"):
        _core.field_tiles([paths[0], missing], 2)
    small = tmp_path / "small.tiff"
    tifffile.imwrite(small, np.zeros((540, 540), np.uint16))
    with pytest.raises(ValueError, match="small.tiff"):
        _core.field_views([paths[0], str(small)], 10, 10, 10)
