"""Training data: leakage-free splits, deterministic window-shuffled epoch plans, chunk reads, input scaling."""
import json

import numpy as np
import pandas as pd
import pytest
import zarr

from phenovec.train.data import (
    ChunkReader,
    DataError,
    epoch_batches,
    input_scaling,
    make_splits,
    open_crops,
    scale_batch,
)


def _cells(n_wells=40, per=10, labels=5, plates=2):
    rows = []
    for p in range(plates):
        for w in range(n_wells):
            for _ in range(per):
                rows.append((f"P{p}", f"W{w:02d}", f"T{w % labels}"))
    return pd.DataFrame(rows, columns=["Metadata_Plate", "Metadata_Well", "Metadata_Treatment"])


def test_splits_keep_wells_whole_and_stratify():
    cells = _cells()
    split = make_splits(cells, "Metadata_Treatment", ["Metadata_Plate", "Metadata_Well"], 0.25, seed=3)
    per_well = cells.assign(s=split).groupby(["Metadata_Plate", "Metadata_Well"])["s"].nunique()
    assert (per_well == 1).all()  # no well in two splits
    wells = cells.assign(s=split).drop_duplicates(["Metadata_Plate", "Metadata_Well"])
    for t, g in wells.groupby("Metadata_Treatment"):
        assert (g["s"] == "val").sum() == round(0.25 * len(g))  # 16 wells per label -> 4 validation wells
    again = make_splits(cells, "Metadata_Treatment", ["Metadata_Plate", "Metadata_Well"], 0.25, seed=3)
    other = make_splits(cells, "Metadata_Treatment", ["Metadata_Plate", "Metadata_Well"], 0.25, seed=4)
    assert (split == again).all() and not (split == other).all()


def test_holdout_plates_and_single_group_labels():
    cells = _cells(n_wells=6, labels=6, plates=2)
    split = make_splits(cells, "Metadata_Treatment", ["Metadata_Plate", "Metadata_Well"], 0.5, ["P1"], seed=0)
    assert (split[cells["Metadata_Plate"] == "P1"] == "test").all()
    # on P0 each label has one well: it must stay in training (a label needs >= 2 groups to give one up)
    assert (split[cells["Metadata_Plate"] == "P0"] == "train").all()
    with pytest.raises(DataError, match=r"holdout_plates \['P9'\]"):
        make_splits(cells, "Metadata_Treatment", "Metadata_Well", 0.2, ["P9"])


def test_split_errors_name_the_problem():
    cells = _cells(n_wells=4, labels=2, plates=1)
    with pytest.raises(DataError, match="no column 'Metadata_MOA'"):
        make_splits(cells, "Metadata_MOA", "Metadata_Well", 0.2)
    mixed = cells.copy()
    mixed.loc[0, "Metadata_Treatment"] = "T1"  # W00 now holds T0 and T1 cells
    with pytest.raises(DataError, match="group 'P0/W00'.*2 labels"):
        make_splits(mixed, "Metadata_Treatment", ["Metadata_Plate", "Metadata_Well"], 0.2)
    nan = cells.copy()
    nan.loc[7, "Metadata_Treatment"] = None
    with pytest.raises(DataError, match="NaN.*row 7"):
        make_splits(nan, "Metadata_Treatment", "Metadata_Well", 0.2)


def test_epoch_plan_is_a_window_shuffled_permutation():
    rng = np.random.default_rng(0)
    rows = rng.permutation(5000)[:3000]  # positions -> array rows, not in order
    y = rng.integers(0, 4, len(rows))
    plan = epoch_batches(rows, y, chunk_cells=100, batch_size=64, seed=1, epoch=0, shuffle_chunks=4)
    flat = np.concatenate(plan)
    assert np.array_equal(np.sort(flat), np.arange(len(rows)))  # every cell exactly once
    assert all(len(b) == 64 for b in plan[:-1])
    assert max(len(np.unique(rows[b] // 100)) for b in plan) <= 2 * 4  # a batch spans <= 2 windows of 4 chunks
    assert not np.array_equal(flat, np.sort(flat))
    same = epoch_batches(rows, y, 100, 64, seed=1, epoch=0, shuffle_chunks=4)
    assert all(np.array_equal(a, b) for a, b in zip(plan, same))
    nxt = np.concatenate(epoch_batches(rows, y, 100, 64, seed=1, epoch=1, shuffle_chunks=4))
    assert not np.array_equal(flat, nxt)
    ordered = np.concatenate(epoch_batches(rows, y, 100, 64, seed=None, epoch=0))
    assert np.array_equal(rows[ordered], np.sort(rows))


def test_subsample_and_balance():
    rows = np.arange(2000)
    y = np.r_[np.zeros(1500, int), np.ones(400, int), np.full(100, 2)]
    sub = np.concatenate(epoch_batches(rows, y, 256, 50, seed=0, epoch=0, subsample=0.2))
    assert len(sub) == 400 and len(np.unique(sub)) == 400
    sub1 = np.concatenate(epoch_batches(rows, y, 256, 50, seed=0, epoch=1, subsample=0.2))
    assert len(np.intersect1d(sub, sub1)) < 200  # a fresh draw each epoch
    bal = np.concatenate(epoch_batches(rows, y, 256, 50, seed=0, epoch=0, balance=True))
    counts = np.bincount(y[bal], minlength=3)
    assert counts[0] == counts[1] == counts[2] == round(2000 / 3)


def test_open_crops_reader_and_scaling_match_rust_minmax(synth_crops, tmp_path):
    from phenovec import _core

    crops = open_crops(synth_crops)
    arr = zarr.open_array(str(synth_crops / "crops.zarr"), mode="r")
    assert crops.shape == arr.shape and crops.dtype == np.uint16 and crops.channels[0] == "DNA"
    rows = crops.cells["row"].to_numpy()
    pick = rows[[5, 900, 3, 2000, 901]]
    reader = ChunkReader(synth_crops, crops.chunk_cells, cache_chunks=2)
    assert np.array_equal(reader.read(pick), np.stack([arr[int(r)] for r in pick]))
    assert input_scaling(crops) == "minmax"  # raw uint16 crops: DeepProfiler's per-crop min-max at load time
    import torch

    x = scale_batch(torch.from_numpy(reader.read(pick).astype(np.int32)), "minmax", 65535.0).numpy()
    # the Rust crop path's DeepProfiler rescale of the same cells is the reference
    cells = crops.cells.iloc[[5, 900, 3, 2000, 901]]
    index = pd.read_csv(synth_crops.parent / "index.csv")
    for i, (_, c) in enumerate(cells.iterrows()):
        site = index[(index.Metadata_Plate == c.Metadata_Plate) & (index.Metadata_Well == c.Metadata_Well)
                     & (index.Metadata_Site == c.Metadata_Site)].iloc[0]
        paths = [str(synth_crops.parent / site[f"FileName_{ch}"]) for ch in crops.channels]
        ref, codes = _core.crop_site(paths, np.array([c.x]), np.array([c.y]), 48, "shift", True)
        np.testing.assert_allclose(x[i], ref[0], atol=1e-6)


def test_open_crops_errors(synth_crops, tmp_path):
    with pytest.raises(DataError, match="not a crops folder .crops.zarr is missing"):
        open_crops(tmp_path)
    import shutil

    broken = tmp_path / "c"
    shutil.copytree(synth_crops, broken)
    m = json.loads((broken / "manifest.json").read_text())
    m["complete"] = False
    (broken / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="not complete"):
        open_crops(broken)
