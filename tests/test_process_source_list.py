"""A list of inputs as one row source (``phenovec.process.source.ConcatSource``: e.g. the embedding stores of a
sharded profiling run) and a folder of per-plate Parquet files (a sharded run's ``wells_mean/``): the streamed
steps (aggregate_stream, normalize_stream) give what the in-memory steps give on the concatenated table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from phenovec.io.embeddings import write_embeddings
from phenovec.process.aggregate import aggregate, aggregate_stream
from phenovec.process.normalize import normalize, normalize_stream
from phenovec.process.source import ConcatSource, open_source

FEATS = [f"emb_{i}" for i in range(6)]


@pytest.fixture
def stores(tmp_path):
    """Three embedding stores (one per plate, 40-70 cells, wells split across batches) and their concatenation."""
    rng = np.random.default_rng(5)
    paths, frames = [], []
    for i, n in enumerate([41, 70, 55]):
        meta = pd.DataFrame({"Metadata_Plate": f"P{i}", "Metadata_Well": rng.choice(["A01", "A02", "B01"], n),
                             "ObjectNumber": np.arange(1, n + 1)})
        x = rng.normal(size=(n, len(FEATS))).astype(np.float32)
        p = tmp_path / f"P{i}" / "embeddings.zarr"
        write_embeddings(p, meta, x, features=FEATS, chunk_rows=16)
        paths.append(p)
        frames.append(pd.concat([meta, pd.DataFrame(x, columns=FEATS)], axis=1))
    return paths, pd.concat(frames, ignore_index=True)


def test_list_of_stores_streams_as_one_table(stores):
    paths, whole = stores
    src = open_source(paths)
    assert isinstance(src, ConcatSource) and src.num_rows == len(whole) and src.declared_features == FEATS
    got = pd.concat(list(src.iter_batches(batch_rows=32)))
    assert got.index.equals(pd.RangeIndex(len(whole)))
    pd.testing.assert_frame_equal(got[whole.columns], whole, check_dtype=False)
    metas, xs = zip(*src.iter_arrays(["Metadata_Plate"], FEATS, batch_rows=25))
    np.testing.assert_array_equal(np.concatenate(xs), whole[FEATS].to_numpy(np.float64))
    assert max(len(x) for x in xs) <= 25  # batches stay bounded: no source is read whole
    assert pd.concat(metas).index.equals(pd.RangeIndex(len(whole)))


@pytest.mark.parametrize("operation", ["mean", "median"])
def test_aggregate_over_stores_equals_in_memory(stores, operation):
    paths, whole = stores
    got = aggregate_stream(paths, operation=operation, features=FEATS, batch_rows=20)
    want = aggregate(whole, operation=operation, features=FEATS)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False)


def test_normalize_over_per_plate_folder_equals_in_memory(stores, tmp_path):
    """A folder of one Parquet file per plate (a sharded run's well dataset layout) is one streamed table."""
    _, whole = stores
    folder = tmp_path / "wells_mean"
    for plate, rows in whole.groupby("Metadata_Plate"):
        (folder / plate).mkdir(parents=True)
        rows.reset_index(drop=True).to_parquet(folder / plate / "shard.parquet", index=False)
    assert pd.read_parquet(folder).shape == whole.shape  # no partition column added from the folder names
    out = normalize_stream(folder, tmp_path / "n.parquet", features=FEATS, method="mad_robustize",
                           by="Metadata_Plate", batch_rows=17)
    want = normalize(whole, features=FEATS, method="mad_robustize", by="Metadata_Plate")
    pd.testing.assert_frame_equal(pd.read_parquet(out), want.reset_index(drop=True), check_dtype=False)


def test_list_with_other_columns_is_refused(stores, tmp_path):
    paths, whole = stores
    other = tmp_path / "other.parquet"
    whole.drop(columns=["ObjectNumber"]).to_parquet(other)
    with pytest.raises(KeyError, match="other.parquet.*ObjectNumber"):
        open_source([paths[0], other])
    with pytest.raises(ValueError, match="empty list"):
        ConcatSource([])
