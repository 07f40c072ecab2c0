"""phenovec.train.augment: DeepProfiler's crop / flip / rot90 / brightness / contrast on batched tensors.

References: numpy (np.rot90, np.flip) for the geometric ops, torch.nn.functional.interpolate on the cropped
patch for crop-and-resize (tf.image.resize bilinear = half-pixel centres, no antialias), per-channel
statistics for the illumination ops.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from phenovec.train.augment import Augment

torch.set_num_threads(1)

ONLY = dict(crop=False, flip=False, rot90=False, brightness=False, contrast=False)


def _only(op, seed=0, **kw):
    return Augment(seed, **{**ONLY, op: True}, **kw)


def test_shapes_dtype_and_full_recipe_runs():
    x = torch.rand(16, 5, 24, 24)
    y = Augment(0)(x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert not torch.equal(y, x)
    assert torch.equal(x, x.clone())  # input untouched
    x64 = x.double()
    assert Augment(0)(x64).dtype == torch.float64


def test_identity_in_eval_and_when_disabled():
    x = torch.rand(8, 3, 20, 20)
    a = Augment(0).eval()
    assert a(x) is x
    assert torch.equal(Augment(0, **ONLY)(x), x)
    # explicit no-op parameters also give the identity
    same = Augment(0, crop_p=0.0, flip=False, rot90=False, brightness_delta=0.0, contrast_range=(1.0, 1.0))
    torch.testing.assert_close(same(x), x, rtol=0, atol=1e-6)


def test_seed_reproduces_batch_and_state_resumes():
    x = torch.rand(12, 4, 20, 20)
    a, b = Augment(42), Augment(42)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert not torch.equal(Augment(43)(x), Augment(42)(x))
    # stream continues: second batch differs from the first draw, and a restored state reproduces it
    a = Augment(5)
    a(x)
    state = a.state_dict()
    y_next = a(x)
    c = Augment(999)
    c.load_state_dict(state)
    torch.testing.assert_close(c(x), y_next, rtol=0, atol=0)
    # reseeding
    assert torch.equal(Augment(1).manual_seed(42)(x), Augment(42)(x))


def test_disabling_one_op_keeps_the_others_draws():
    x = torch.rand(10, 2, 16, 16)
    flips = _only("flip", seed=3)(x)
    flip_bright = Augment(3, crop=False, rot90=False, contrast=False)(x)
    offsets = _only("brightness", seed=3)(x) - x
    torch.testing.assert_close(flip_bright, flips + offsets)
    both = Augment(3, crop=False, brightness=False, contrast=False)(x)  # flip then rot90
    for i in range(len(x)):  # the flip decision inside 'both' equals the one of the flip-only module
        candidates = [np.rot90(flips[i].numpy(), k, axes=(1, 2)) for k in range(4)]
        assert any(np.array_equal(both[i].numpy(), c) for c in candidates)


def test_flip_fraction_and_exactness():
    n = 2000
    x = torch.rand(n, 2, 8, 8)
    y = _only("flip", seed=1)(x)
    xn, yn = x.numpy(), y.numpy()
    same = np.array([np.array_equal(yn[i], xn[i]) for i in range(n)])
    flipped = np.array([np.array_equal(yn[i], np.flip(xn[i], axis=-1)) for i in range(n)])
    assert (same ^ flipped).all()  # each sample is exactly one of the two
    assert 0.45 < flipped.mean() < 0.55  # p = 0.5, sd 0.011


def test_rot90_exact_permutations_uniform_k():
    n = 2000
    x = torch.rand(n, 3, 6, 6)
    y = _only("rot90", seed=2)(x)
    xn, yn = x.numpy(), y.numpy()
    ks = []
    for i in range(n):
        match = [k for k in range(4) if np.array_equal(yn[i], np.rot90(xn[i], k, axes=(1, 2)))]
        assert len(match) == 1
        ks.append(match[0])
        assert np.array_equal(np.sort(yn[i], axis=None), np.sort(xn[i], axis=None))  # a pixel permutation
    counts = np.bincount(ks, minlength=4) / n
    assert np.all(np.abs(counts - 0.25) < 0.04), counts
    with pytest.raises(ValueError, match="square"):
        _only("rot90")(torch.rand(2, 1, 8, 10))
    assert _only("flip")(torch.rand(2, 1, 8, 10)).shape == (2, 1, 8, 10)


def test_brightness_is_additive_per_channel_within_10_percent():
    n, c = 1000, 5
    x = torch.rand(n, c, 8, 8, dtype=torch.float64)
    y = _only("brightness", seed=3)(x)
    d = (y - x).numpy().reshape(n, c, -1)
    np.testing.assert_allclose(d, d[:, :, :1].repeat(d.shape[2], axis=2), atol=1e-12)  # constant offset
    off = d[:, :, 0]
    assert off.min() >= -0.1 and off.max() <= 0.1
    assert off.min() < -0.09 and off.max() > 0.09
    assert abs(off.mean()) < 0.01
    assert np.std(off[:, 0] - off[:, 1]) > 0.05  # channels get independent offsets


def test_contrast_scales_around_channel_mean():
    n, c = 1000, 3
    x = torch.rand(n, c, 8, 8, dtype=torch.float64)
    y = _only("contrast", seed=4)(x)
    xm = x.mean(dim=(-2, -1), keepdim=True)
    ym = y.mean(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(ym, xm)  # mean kept
    ratio = ((y - ym) / (x - xm)).numpy().reshape(n, c, -1)
    f = ratio[:, :, 0]
    np.testing.assert_allclose(ratio, f[:, :, None].repeat(ratio.shape[2], axis=2), rtol=1e-9)
    assert f.min() >= 0.8 and f.max() <= 1.2
    assert f.min() < 0.82 and f.max() > 1.18
    assert abs(f.mean() - 1.0) < 0.01


def test_brightness_then_contrast_order():
    """Contrast acts around the mean of the brightened crop (DeepProfiler's order), so the final channel mean
    equals the original mean plus the brightness offset."""
    x = torch.rand(50, 2, 8, 8, dtype=torch.float64)
    y = Augment(9, crop=False, flip=False, rot90=False)(x)
    b = _only("brightness", seed=9)(x) - x  # the same brightness draws
    torch.testing.assert_close(y.mean(dim=(-2, -1)), (x + b).mean(dim=(-2, -1)))


def _crop_reference(img, side, oy, ox):
    h, w = img.shape[-2:]
    patch = img[None, :, oy:oy + side, ox:ox + side]
    return F.interpolate(patch, size=(h, w), mode="bilinear", align_corners=False, antialias=False)[0]


def test_crop_is_crop_then_bilinear_resize_brute_force():
    """Every cropped sample equals F.interpolate of some square crop with side in [int(0.8 S), S - 1]."""
    S = 16
    x = torch.rand(24, 2, S, S, dtype=torch.float64)
    y = _only("crop", seed=5)(x)
    changed = 0
    sides = set()
    for i in range(len(x)):
        if torch.equal(y[i], x[i]):
            continue
        changed += 1
        found = [(s, oy, ox) for s in range(int(0.8 * S), S) for oy in range(S - s + 1) for ox in range(S - s + 1)
                 if torch.allclose(y[i], _crop_reference(x[i], s, oy, ox), rtol=0, atol=1e-9)]
        assert len(found) == 1, (i, found)
        sides.add(found[0][0])
    assert 5 <= changed <= 19  # p = 0.5 of 24
    assert len(sides) >= 2


def test_crop_statistics_many_samples():
    n, S = 4000, 20
    x = torch.rand(n, 1, S, S)
    aug = _only("crop", seed=6)
    gen_state = aug.generator.get_state()
    y = aug(x)
    aug.generator.set_state(gen_state)
    r = aug._draw(n, 1, S, S)
    changed = ~torch.all((y == x).reshape(n, -1), dim=1)
    assert torch.equal(changed, r["do_crop"])
    assert 0.47 < changed.float().mean().item() < 0.53
    s = r["side"][r["do_crop"]]
    assert s.min().item() == int(0.8 * S) and s.max().item() == S - 1
    assert set(torch.unique(s).tolist()) == set(range(16, 20))
    oy, ox = r["off_y"][r["do_crop"]], r["off_x"][r["do_crop"]]
    assert (oy >= 0).all() and (ox >= 0).all() and (oy + s <= S).all() and (ox + s <= S).all()
    assert (oy == 0).any() and (oy + s == S).any()  # both borders reachable
    # spot-check against the reference for a few drawn crops
    for i in torch.nonzero(r["do_crop"]).flatten()[:20].tolist():
        ref = _crop_reference(x[i], int(r["side"][i]), int(r["off_y"][i]), int(r["off_x"][i]))
        torch.testing.assert_close(y[i], ref, rtol=0, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="crop_p"):
        Augment(0, crop_p=1.5)
    with pytest.raises(ValueError, match="contrast_range"):
        Augment(0, contrast_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="N x C x H x W"):
        Augment(0)(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="floating-point"):
        Augment(0)(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
