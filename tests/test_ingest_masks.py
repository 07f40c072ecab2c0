"""Label images and masked crops (_core.decode_labels, object_labels, crop_site(labels=, label_ids=, mask=)).

Real data: the NF1 Schwann-cell fields (../shared/data/cytodataframe-nf1-3ch-masks): 3-channel
uint16 images and CellProfiler masks saved as 0/255 uint8 TIFFs. Connected components of the cell
masks (scipy.ndimage.label) give real-shaped label images, written with tifffile as 16- and 32-bit.
Reference rules in numpy (rust/src/labels.rs): DeepProfiler's cell label
int(np.median(labels[max(y-5,0):y+5, max(x-5,0):x+5])) with x, y = int(centre) (boxes.py,
mask_objects); "neighbors" zeroes pixels whose label is nonzero and not the cell's, "object" every
pixel whose label is not the cell's.
"""
import math

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage

from phenovec import _core

from conftest import shared

NF1 = "cytodataframe-nf1-3ch-masks"
BOX = 64


def dp_label(lab, x, y):
    h, w = lab.shape
    if not (math.isfinite(x) and math.isfinite(y)):
        return 0
    if not (0 <= math.floor(x + 0.5) < w and 0 <= math.floor(y + 0.5) < h):
        return 0
    xi, yi = int(x), int(y)
    patch = lab[max(yi - 5, 0):yi + 5, max(xi - 5, 0):xi + 5]
    return int(np.median(patch)) if patch.size else 0


def masked_ref(stack, lab, xs, ys, cell_labels, box, mode):
    """Pad-policy crops of stack with the mask rule applied (numpy)."""
    c, h, w = stack.shape
    big = np.zeros((c, h + 2 * box, w + 2 * box), stack.dtype)
    big[:, box:box + h, box:box + w] = stack
    bl = np.zeros((h + 2 * box, w + 2 * box), lab.dtype)
    bl[box:box + h, box:box + w] = lab
    out = np.zeros((len(xs), c, box, box), stack.dtype)
    for i, (x, y) in enumerate(zip(xs, ys)):
        r0, c0 = math.floor(y + 0.5) - box // 2, math.floor(x + 0.5) - box // 2
        crop = big[:, r0 + box:r0 + 2 * box, c0 + box:c0 + 2 * box].copy()
        lc = bl[r0 + box:r0 + 2 * box, c0 + box:c0 + 2 * box]
        drop = (lc != cell_labels[i]) if mode == "object" else ((lc != 0) & (lc != cell_labels[i]))
        crop[:, drop] = 0
        out[i] = crop
    return out


@pytest.fixture(scope="module")
def nf1():
    root = shared(NF1)
    df = pd.read_parquet(root / "Plate_2_with_image_data_shrunken.parquet")
    return root, df


def field_files(root, well_site_prefix):
    imgs = sorted((root / "Plate_2_images").glob(f"{well_site_prefix}_*.tif"))
    masks = {k: next((root / "Plate_2_masks").glob(f"{well_site_prefix}_*_Mask{k}.tiff")) for k in ("Nuclei", "Cells")}
    return imgs, masks


def test_binary_masks_match_the_nuclei_of_their_field(nf1):
    root, df = nf1
    name_col = next(c for c in df.columns if c.endswith("FileName_DAPI"))
    for _, row in df.iterrows():
        stem = row[name_col].rsplit("_", 3)[0]  # e.g. B7_01_1_3_DAPI_001.tif -> B7_01
        dapi = root / "Plate_2_images" / row[name_col]
        nmask = root / "Plate_2_masks" / (dapi.stem + "_MaskNuclei.tiff")
        x, y = float(row["Nuclei_AreaShape_Center_X"]), float(row["Nuclei_AreaShape_Center_Y"])
        got = _core.object_labels(str(nmask), np.array([x]), np.array([y]))
        ref = dp_label(tifffile.imread(nmask).astype(np.uint32), x, y)
        assert got[0] == ref == 255, (stem, x, y)
        np.testing.assert_array_equal(_core.decode_labels(str(nmask)), tifffile.imread(nmask).astype(np.uint32))


@pytest.mark.parametrize("bits", [16, 32])
def test_real_cell_labels_masked_crops(nf1, tmp_path, bits):
    root, _ = nf1
    imgs, masks = field_files(root, "D6_01")
    assert len(imgs) == 3
    stack = np.stack([tifffile.imread(p) for p in imgs])
    cells = tifffile.imread(masks["Cells"]) > 0
    lab, n = ndimage.label(cells)
    assert n > 5
    if bits == 32:
        lab = lab.astype(np.uint32) + np.uint32(100_000) * (lab > 0)  # labels beyond 16 bits
    else:
        lab = lab.astype(np.uint16)
    lp = tmp_path / f"cells{bits}.tiff"
    tifffile.imwrite(lp, lab, compression="zlib", photometric="minisblack", metadata=None)
    np.testing.assert_array_equal(_core.decode_labels(str(lp)), lab.astype(np.uint32))
    # Nuclei centres = centroids of the nucleus mask's components; a few extra near the borders.
    nl, nn = ndimage.label(tifffile.imread(masks["Nuclei"]) > 0)
    cy, cx = np.array(ndimage.center_of_mass(nl > 0, nl, range(1, nn + 1))).T
    xs = np.concatenate([cx, [2.0, stack.shape[2] - 3.0]])
    ys = np.concatenate([cy, [3.0, stack.shape[1] - 2.0]])
    ref_labels = np.array([dp_label(lab, x, y) for x, y in zip(xs, ys)], np.int64)
    np.testing.assert_array_equal(_core.object_labels(str(lp), xs, ys), ref_labels)
    assert (ref_labels > 0).sum() > 5
    paths = [str(p) for p in imgs]
    for mode in ("neighbors", "object"):
        crops, codes = _core.crop_site(paths, xs, ys, BOX, "pad", False, labels=str(lp), mask=mode)
        np.testing.assert_array_equal(crops, masked_ref(stack, lab, xs, ys, ref_labels, BOX, mode))
        # Given object numbers override the median rule.
        ids = np.roll(ref_labels, 1)
        crops, _ = _core.crop_site(paths, xs, ys, BOX, "pad", False, labels=str(lp), label_ids=ids, mask=mode)
        np.testing.assert_array_equal(crops, masked_ref(stack, lab, xs, ys, ids, BOX, mode))
    # Mask before the per-crop min-max, then uint8.
    crops, _ = _core.crop_site(paths, xs, ys, BOX, "pad", True, labels=str(lp), mask="object", dtype="uint8", compact=True)
    m = masked_ref(stack, lab, xs, ys, ref_labels, BOX, "object").astype(np.float32)
    mn, mx = m.min(axis=(2, 3), keepdims=True), m.max(axis=(2, 3), keepdims=True)
    rng = mx - mn
    mm = np.where(rng > 0, (m - mn) / np.where(rng > 0, rng, 1), np.float32(0)).astype(np.float32)
    np.testing.assert_array_equal(crops, np.rint(mm * np.float32(255)).astype(np.uint8))


def test_synthetic_edge_cases(tmp_path):
    img = np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) + 1
    ip = tmp_path / "ch.tif"
    tifffile.imwrite(ip, img)
    lab = np.zeros((30, 40), np.uint8)
    lab[5:25, 2:20] = 3  # cell 3
    lab[5:25, 20:38] = 7  # touching neighbour 7
    lp = tmp_path / "lab.png"
    import zlib, struct

    def png8(path, a):
        raw = b"".join(b"\x00" + a[r].tobytes() for r in range(a.shape[0]))
        chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", a.shape[1], a.shape[0], 8, 0, 0, 0, 0))
                         + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))

    png8(lp, lab)
    np.testing.assert_array_equal(_core.decode_labels(str(lp)), lab.astype(np.uint32))
    xs, ys = np.array([17.0, 29.6, 0.0, 39.0]), np.array([6.0, 15.0, 0.0, 29.0])
    ref_labels = [dp_label(lab.astype(np.uint32), x, y) for x, y in zip(xs, ys)]
    assert ref_labels[:2] == [3, 7]
    np.testing.assert_array_equal(_core.object_labels(str(lp), xs, ys), ref_labels)
    for mode in ("neighbors", "object"):
        crops, codes = _core.crop_site([str(ip)], xs, ys, 9, "pad", False, labels=str(lp), mask=mode)
        np.testing.assert_array_equal(codes, [0, 0, 2, 2])
        np.testing.assert_array_equal(crops, masked_ref(img[None], lab, xs, ys, ref_labels, 9, mode))
    # The touching neighbour is removed for cell 3 under both modes; background only under "object".
    crops, _ = _core.crop_site([str(ip)], xs[:1], ys[:1], 9, "pad", False, labels=str(lp), mask="neighbors")
    assert (crops[0, 0][3:, 7:] == 0).all() and crops[0, 0][0, 0] == img[2, 13] and crops[0, 0][3, 6] == img[5, 19]
    crops, _ = _core.crop_site([str(ip)], xs[:1], ys[:1], 9, "pad", False, labels=str(lp), mask="object")
    assert (crops[0, 0][:3] == 0).all() and (crops[0, 0][3:, 7:] == 0).all() and crops[0, 0][3, 6] == img[5, 19]
    # Errors: size mismatch names both files; mask without labels; label ids out of range / wrong length.
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, lab[:-1])
    with pytest.raises(ValueError, match=r"ch.tif.*small.tif"):
        _core.crop_site([str(ip)], xs, ys, 5, "pad", False, labels=str(small), mask="object")
    with pytest.raises(ValueError, match="mask needs a label image"):
        _core.crop_site([str(ip)], xs, ys, 5, "pad", False, mask="neighbors")
    with pytest.raises(ValueError, match=r"label_ids\[1\] = -2"):
        _core.crop_site([str(ip)], xs, ys, 5, "pad", False, labels=str(lp), label_ids=np.array([1, -2, 0, 0]), mask="object")
    with pytest.raises(ValueError, match="label_ids has 2 values but there are 4 cells"):
        _core.crop_site([str(ip)], xs, ys, 5, "pad", False, labels=str(lp), label_ids=np.array([1, 2]), mask="object")
    with pytest.raises(ValueError, match="unknown mask mode"):
        _core.crop_site([str(ip)], xs, ys, 5, "pad", False, labels=str(lp), mask="cells")
    with pytest.raises(FileNotFoundError, match="nolabels.tif"):
        _core.crop_site([str(ip)], xs, ys, 5, "pad", False, labels=str(tmp_path / "nolabels.tif"), mask="object")
    with pytest.raises(ValueError, match="page 1 requested but a PNG file has 1 page"):
        _core.decode_image(str(lp), frame=1)
