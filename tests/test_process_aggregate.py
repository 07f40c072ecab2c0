"""``phenovec.process.aggregate`` against pycytominer 1.7.1 ``aggregate`` run on the same input.

Inputs: JUMP Target2 single cells (CellProfiler Cells/Cytoplasm/Nuclei CSVs of sites A01-1 and A02-1, merged as
pycytominer's SingleCells links compartments: Cytoplasm_Parent_Cells / Cytoplasm_Parent_Nuclei within an image,
columns prefixed by compartment) and DeepProfiler EfficientNet single-cell features of LINCS plate SQ00014812
(two sites, 6,400 features). Observed: medians identical to the peer (asserted exactly), means within 8e-14
relative (asserted 1e-12); streamed results identical bit for bit to the in-memory ones (asserted exactly).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pycytominer
import pytest

from conftest import shared
from phenovec.process.aggregate import aggregate, aggregate_stream

SITES = ("A01-1", "A02-1")


def _site(name: str) -> pd.DataFrame:
    d = shared("pycytominer-target2-single-cell", "analysis", "2021_04_20_Target2", "BR00121431", "analysis",
               f"BR00121431-{name}")
    cells = pd.read_csv(d / "Cells.csv").add_prefix("Cells_")
    cyto = pd.read_csv(d / "Cytoplasm.csv").add_prefix("Cytoplasm_")
    nuc = pd.read_csv(d / "Nuclei.csv").add_prefix("Nuclei_")
    m = cells.merge(cyto, left_on=["Cells_ImageNumber", "Cells_ObjectNumber"],
                    right_on=["Cytoplasm_ImageNumber", "Cytoplasm_Parent_Cells"])
    m = m.merge(nuc, left_on=["Cytoplasm_ImageNumber", "Cytoplasm_Parent_Nuclei"],
                right_on=["Nuclei_ImageNumber", "Nuclei_ObjectNumber"])
    assert len(m) == len(cells)
    well, site = name.split("-")
    meta = pd.DataFrame({
        "Metadata_Plate": "BR00121431", "Metadata_Well": well, "Metadata_Site": int(site),
        "Metadata_ImageNumber": m["Cells_ImageNumber"], "Metadata_ObjectNumber": m["Cells_ObjectNumber"],
    })
    return pd.concat([meta, m], axis=1)


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    df = pd.concat([_site(s) for s in SITES], ignore_index=True)
    assert df.shape == (125, 5803)
    return df


@pytest.fixture(scope="module")
def cells_small(cells) -> pd.DataFrame:
    """The single cells with their first 300 features (for the many small cases)."""
    return cells.iloc[:, : 5 + 300]


@pytest.fixture(scope="module")
def deepprofiler() -> pd.DataFrame:
    frames = []
    for site in ("SQ00014812_A01_5.npz", "SQ00014812_A01_8.npz"):
        z = np.load(shared("pycytominer-deepprofiler-lincs", site), allow_pickle=True)
        md = z["metadata"].item()
        x = z["features"]
        meta = pd.DataFrame({"Metadata_Plate": md["Metadata_Plate"], "Metadata_Well": md["Metadata_Well"],
                             "Metadata_Site": md["Metadata_Site"], "Location_Center_X": z["locations"][:, 0],
                             "Location_Center_Y": z["locations"][:, 1]}, index=range(len(x)))
        frames.append(pd.concat([meta, pd.DataFrame(x, columns=[f"efficientnet_{i}" for i in range(x.shape[1])])],
                                axis=1))
    df = pd.concat(frames, ignore_index=True)
    assert df.shape == (158 + 179, 5 + 6400)
    return df


def _peer(df, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pycytominer.aggregate(df, **kw)


def _same(peer: pd.DataFrame, ours: pd.DataFrame, operation: str) -> None:
    assert list(ours.columns) == list(peer.columns)
    if operation == "median":
        pd.testing.assert_frame_equal(ours, peer, check_exact=True)
    else:
        pd.testing.assert_frame_equal(ours, peer, check_exact=False, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize(("operation", "strata"), [
    ("median", ["Metadata_Plate", "Metadata_Well"]),
    ("mean", ["Metadata_Plate", "Metadata_Well"]),
    ("median", ["Metadata_Well", "Metadata_Site"]),
])
def test_single_cells_match_peer(cells, operation, strata):
    peer = _peer(cells, strata=strata, operation=operation, compute_object_count=True)
    ours = aggregate(cells, strata=strata, operation=operation, compute_object_count=True)
    assert ours["Metadata_Object_Count"].tolist() == [89, 36]
    _same(peer, ours, operation)
    # without the count the peer's table is the same minus that column
    _same(peer.drop(columns="Metadata_Object_Count"), aggregate(cells, strata=strata, operation=operation), operation)


@pytest.mark.parametrize("operation", ["median", "mean"])
@pytest.mark.parametrize("strata", [["Metadata_Plate", "Metadata_Well"], ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]])
def test_deepprofiler_cells_match_peer(deepprofiler, operation, strata):
    feats = [c for c in deepprofiler.columns if c.startswith("efficientnet_")]
    peer = _peer(deepprofiler, strata=strata, features=feats, operation=operation)
    _same(peer, aggregate(deepprofiler, strata=strata, features=feats, operation=operation), operation)
    # phenovec infers embedding features (numeric, non-Metadata_) without a list; Location_* are numeric too
    inferred = aggregate(deepprofiler, strata=strata, operation=operation)
    _same(peer, inferred[list(peer.columns)], operation)


def _with_missing(cells: pd.DataFrame) -> pd.DataFrame:
    """NaN/None group keys, NaN features (one feature all-NaN in a group), missing object numbers."""
    df = cells.copy()
    rng = np.random.default_rng(7)
    df["Metadata_Well"] = df["Metadata_Well"].astype(object)
    df.loc[[3, 50, 100], "Metadata_Well"] = np.nan
    df.loc[[4, 101], "Metadata_Well"] = None
    df.loc[[3, 5, 6, 102], "Metadata_Plate"] = np.nan
    df["Metadata_ObjectNumber"] = df["Metadata_ObjectNumber"].astype(float)
    df.loc[[0, 1, 90], "Metadata_ObjectNumber"] = np.nan
    feats = [c for c in df.columns if c.startswith(("Cells_", "Cytoplasm_", "Nuclei_"))]
    x = df[feats].to_numpy(dtype=float)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[df["Metadata_Well"].eq("A02").to_numpy(), 10] = np.nan
    df[feats] = x
    return df


@pytest.mark.parametrize("operation", ["median", "mean"])
def test_missing_keys_and_values_match_peer(cells_small, operation):
    df = _with_missing(cells_small)
    strata = ["Metadata_Plate", "Metadata_Well"]
    peer = _peer(df, strata=strata, operation=operation, compute_object_count=True)
    ours = aggregate(df, strata=strata, operation=operation, compute_object_count=True)
    # (BR, A01), (BR, A02), (BR, NaN), (NaN, A01), (NaN, A02), (NaN, NaN); NaN-key groups have no object count
    assert len(peer) == 6 and peer["Metadata_Well"].isna().sum() == 2
    assert peer["Metadata_Object_Count"].isna().sum() == 4 and peer["Metadata_Object_Count"].dtype == np.float64
    _same(peer, ours, operation)
    all_nan = [c for c in df.columns if c.startswith(("Cells_", "Cytoplasm_", "Nuclei_"))][10]
    assert ours.loc[ours["Metadata_Well"].eq("A02"), all_nan].isna().all()


def test_subset_data_df_matches_peer(cells_small):
    subset = pd.DataFrame({"Metadata_Site": [1], "Metadata_Well": ["A02"]})
    peer = _peer(cells_small, operation="median", subset_data_df=subset)
    ours = aggregate(cells_small, operation="median", subset_data_df=subset)
    assert len(ours) == 1
    _same(peer, ours, "median")


def test_output_file_written_as_peer(cells_small, tmp_path):
    out = aggregate(cells_small, operation="mean", output_file=tmp_path / "agg.csv.gz")
    assert out == str(tmp_path / "agg.csv.gz")
    back = pd.read_csv(out)
    peer = _peer(cells_small, operation="mean")
    np.testing.assert_allclose(back[peer.columns[2:]].to_numpy(), peer[peer.columns[2:]].to_numpy(), rtol=1e-12)


# ------------------------------------------------------------------------------------------------ streaming


def _shuffled(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    return df.iloc[np.random.default_rng(seed).permutation(len(df))].reset_index(drop=True)


@pytest.mark.parametrize("operation", ["mean", "median"])
@pytest.mark.parametrize("order", ["contiguous", "shuffled"])
def test_stream_equals_in_memory(cells_small, operation, order, tmp_path):
    strata = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    df = _with_missing(cells_small)
    df = _shuffled(df) if order == "shuffled" else df.sort_values(strata, kind="stable", ignore_index=True)
    expected = aggregate(df, strata=strata, operation=operation, compute_object_count=True)
    _same(_peer(df, strata=strata, operation=operation, compute_object_count=True), expected, operation)
    # several batches; shuffled: a tiny budget forces several spill buckets and column slices inside a bucket
    # (contiguous: the largest group, 89 cells x 300 features, fits 1 MiB, so no spill is needed)
    budget = 1 << 20 if order == "contiguous" else 1 << 15
    got = aggregate_stream(df, strata=strata, operation=operation, compute_object_count=True, batch_rows=16,
                           memory_budget_bytes=budget, spill_dir=tmp_path, progress=False)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    how = got.attrs["aggregate_stream"]
    if operation == "median":
        if order == "contiguous":
            assert how["method"] == "contiguous groups, one pass"
        else:
            assert how["method"] == "spilled to buckets" and how["buckets"] >= 8
    assert not list(tmp_path.iterdir())  # spill files removed
    one = aggregate_stream(df, strata=strata, operation=operation, compute_object_count=True, batch_rows=10_000,
                           progress=False)
    pd.testing.assert_frame_equal(one, expected, check_exact=True)


def test_stream_median_restarts_when_a_group_outgrows_the_budget(cells_small):
    # contiguous input, but one group is larger than the budget: falls back to spilling, still exact
    got = aggregate_stream(cells_small, operation="median", batch_rows=32, memory_budget_bytes=200_000,
                           progress=False)
    assert got.attrs["aggregate_stream"]["method"] == "spilled to buckets"
    pd.testing.assert_frame_equal(got, aggregate(cells_small, operation="median"), check_exact=True)


@pytest.mark.parametrize("kind", ["parquet", "csv", "zarr"])
@pytest.mark.parametrize("operation", ["mean", "median"])
def test_stream_from_files_equals_in_memory(deepprofiler, tmp_path, kind, operation):
    df = _shuffled(deepprofiler.iloc[:, :5 + 300], seed=1)  # 300 features keep the CSV small
    feats = [c for c in df.columns if c.startswith("efficientnet_")]
    strata = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    if kind == "parquet":
        path = tmp_path / "cells.parquet"
        df.to_parquet(path)
    elif kind == "csv":
        path = tmp_path / "cells.csv"
        df.to_csv(path, index=False)
        df = pd.read_csv(path)  # the in-memory reference reads the same text
    else:
        from phenovec.io.embeddings import write_embeddings

        path = tmp_path / "cells.zarr"
        write_embeddings(path, df[[c for c in df.columns if c not in feats]], df[feats].to_numpy(), features=feats,
                         chunk_rows=64)
    expected = aggregate(df, strata=strata, features=feats, operation=operation)
    _same(_peer(df, strata=strata, features=feats, operation=operation), expected, operation)
    got = aggregate_stream(path, strata=strata, features=feats, operation=operation, batch_rows=50,
                           memory_budget_bytes=1 << 19, spill_dir=tmp_path, progress=False)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


# ------------------------------------------------------------------------------------------------ bad input


def test_bad_input(cells):
    small = cells.iloc[:, :40]
    with pytest.raises(KeyError, match="Metadata_Nope"):
        aggregate(small, strata=["Metadata_Plate", "Metadata_Nope"])
    with pytest.raises(KeyError, match="Metadata_Nope"):
        aggregate_stream(small, strata=["Metadata_Nope"])
    with pytest.raises(ValueError, match="operation 'max' not supported"):
        aggregate(small, operation="max")
    with pytest.raises(ValueError, match="operation 'mode' not supported"):
        aggregate_stream(small, operation="mode")
    with pytest.raises(KeyError, match="Metadata_Count_Me"):
        aggregate(small, compute_object_count=True, object_feature="Metadata_Count_Me")
    bad = small.copy()
    bad["Cells_AreaShape_Area"] = bad["Cells_AreaShape_Area"].astype(object)
    bad.loc[7, "Cells_AreaShape_Area"] = "big"
    with pytest.raises(ValueError, match=r"'Cells_AreaShape_Area'.*row 7.*'big'"):
        aggregate(bad)
    with pytest.raises(ValueError, match=r"'Cells_AreaShape_Area'.*row 7.*'big'"):
        aggregate_stream(bad, batch_rows=5, progress=False)
    with pytest.raises(ValueError, match="both a stratum and a feature"):
        aggregate(small, strata=["Metadata_Plate", "Cells_AreaShape_Area"])
    # missing-value tokens in a numeric column are NaN, as the peer reads them
    tok = small.copy()
    tok["Cells_AreaShape_Area"] = tok["Cells_AreaShape_Area"].astype(object)
    tok.loc[[2, 3], "Cells_AreaShape_Area"] = "nan"
    _same(_peer(tok, operation="median"), aggregate(tok, operation="median"), "median")
