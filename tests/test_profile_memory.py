"""phenovec.profile memory and schedulers: ``assemble`` holds no more for 80 sites than for 20 (tracemalloc, the
bound derived from what holding the cell tables would cost), its outputs equal pandas concatenations of the
parts built independently here, the streamed Parquet writer's casts and errors, the compact site centres equal
a pandas groupby of the locations, and ``scheduler="processes"`` gives the same outputs as ``"threads"``.
"""
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from phenovec.export import export_onnx
from phenovec.ingest.index import SITE_KEYS, read_image_index, read_locations, site_centres
from phenovec.ingest.synth import synth_plate
from phenovec.io.embeddings import EmbeddingStore, EmbeddingWriter, ParquetAppender
from phenovec.profile import profile_sites
from phenovec.profile.assemble import assemble, site_cell_table

torch.set_num_threads(1)
EDGES = np.array(["inside", "shifted", "padded", "dropped", "invalid"], dtype=object)
D = 8
NAMES = [f"feature_{i}" for i in range(D)]


def synthetic_site(s: int, cells: int):
    """(site metadata, locations, codes, features of the kept cells) of site ``s``, generated from ``s`` alone."""
    rng = np.random.default_rng(s)
    n = 0 if s % 11 == 5 else cells  # some sites without cells
    codes = rng.integers(0, 5, n).astype(np.int8)
    if s % 11 == 7:
        codes[:] = 3  # some sites without any kept cell
    meta = pd.Series({"Metadata_Plate": f"P{s // 40}", "Metadata_Well": f"W{(s // 4) % 10:02d}",
                      "Metadata_Site": s % 4 + 1, "Metadata_Dose": 0.5 * (s % 3), "Metadata_Treatment": f"t{s % 7}"},
                     dtype=object)
    loc = pd.DataFrame({"ObjectNumber": np.arange(1, n + 1), "x": rng.uniform(0, 500, n), "y": rng.uniform(0, 500, n)})
    feats = rng.standard_normal((int((codes <= 2).sum()), D)).astype(np.float32)
    return meta, loc, codes, feats


def run_assemble(out: Path, n_sites: int, cells: int, chunk_rows: int, **kw) -> dict:
    def read_part(s):
        _, _, codes, feats = synthetic_site(s, cells)
        return codes, feats

    def site_table(s, codes):
        meta, loc, _, _ = synthetic_site(s, cells)
        return site_cell_table(meta, loc, codes)

    def well_parts(op):
        return pd.DataFrame({"Metadata_Plate": ["P0"], "Metadata_Well": ["W00"], "Metadata_Object_Count": [1],
                             **{n: [0.0] for n in NAMES}})

    return assemble(out, n_sites, read_part, site_table, NAMES, "float32", {"test": 1}, well_parts,
                    chunk_rows=chunk_rows, **kw)


def test_assemble_memory_does_not_grow_with_sites(tmp_path):
    cells, chunk = 1500, 2048
    run_assemble(tmp_path / "warm", 3, cells, chunk)  # imports and first-use allocations out of the measure
    peaks = {}
    for n in (20, 80):
        tracemalloc.start()
        res = run_assemble(tmp_path / f"n{n}", n, cells, chunk)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert res["cells"] > 0.8 * n * cells
    # what the 60 extra sites' cell tables cost if held until the end, as pandas holds them (deep: the metadata
    # strings of every cell; the embedding metadata rows would add more). Streaming holds one Parquet row group
    # (16,384 rows) of cells and one embedding chunk whatever the run size: 20 sites (~27,000 cells) already fill
    # them, so 80 sites must not cost more than noise.
    meta, loc, codes, _ = synthetic_site(0, cells)
    t = site_cell_table(meta, loc, codes)
    per_site = int(t.memory_usage(deep=True).sum())
    held = 60 * per_site
    assert held > 20e6, held  # the test measures something
    growth = peaks[80] - peaks[20]
    assert growth < 0.1 * held, (growth, held, peaks)


def test_assemble_outputs_equal_pandas_concat(tmp_path):
    n_sites, cells = 30, 97
    res = run_assemble(tmp_path / "o", n_sites, cells, chunk_rows=200, row_group_rows=150)
    tables, kept_meta, feats = [], [], []
    for s in range(n_sites):
        meta, loc, codes, f = synthetic_site(s, cells)
        n = len(loc)
        t = pd.DataFrame({k: [v] * n for k, v in meta.items()})
        t["Metadata_Site"] = t["Metadata_Site"].astype(np.int64)
        t["Metadata_Dose"] = t["Metadata_Dose"].astype(np.float64)
        t["ObjectNumber"] = np.arange(1, n + 1)
        t["x"], t["y"], t["edge"] = loc["x"].to_numpy(), loc["y"].to_numpy(), EDGES[codes.astype(int)]
        tables.append(t)
        kept_meta.append(t[codes <= 2])
        feats.append(f)
    cells_ref = pd.concat(tables, ignore_index=True)
    kept = cells_ref["edge"].isin(["inside", "shifted", "padded"]).to_numpy()
    meta_ref = cells_ref[kept].reset_index(drop=True)
    cells_ref["row"] = np.where(kept, np.cumsum(kept) - 1, -1)
    got = pd.read_parquet(tmp_path / "o" / "cells.parquet")
    pd.testing.assert_frame_equal(got, cells_ref)
    store = EmbeddingStore(tmp_path / "o" / "embeddings.zarr")
    pd.testing.assert_frame_equal(store.meta, meta_ref)
    np.testing.assert_array_equal(store.array[:], np.concatenate(feats))
    assert res == {"cells": len(cells_ref), "embedded": int(kept.sum())}
    assert dict(store.group.attrs)["test"] == 1
    import pyarrow.parquet as pq

    assert pq.ParquetFile(tmp_path / "o" / "cells.parquet").metadata.num_row_groups > 5  # streamed
    assert [p.name for p in (tmp_path / "o").iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_assemble_empty_outputs(tmp_path):
    """No embedded cell: an empty store whose metadata keeps the cell-table columns; no site: no columns."""
    def read_part(s):
        return np.array([3, 4], np.int8), np.empty((0, D), np.float32)

    meta = pd.Series({"Metadata_Plate": "P", "Metadata_Well": "A01", "Metadata_Site": 1}, dtype=object)
    loc = pd.DataFrame({"ObjectNumber": [1, 2], "x": [1.0, 2.0], "y": [3.0, 4.0]})
    empty_wells = lambda op: [pd.DataFrame(columns=["Metadata_Plate", "Metadata_Well", *NAMES])]  # noqa: E731
    assemble(tmp_path / "a", 2, read_part, lambda s, c: site_cell_table(meta, loc, c), NAMES, "float16", {},
             empty_wells)
    st = EmbeddingStore(tmp_path / "a" / "embeddings.zarr")
    ref = site_cell_table(meta, loc, np.array([3, 4]))
    assert st.num_rows == 0 and list(st.meta.columns) == list(ref.columns)
    assert len(pd.read_parquet(tmp_path / "a" / "cells.parquet")) == 4
    assert list(pd.read_parquet(tmp_path / "a" / "wells_mean.parquet").columns) == ["Metadata_Plate",
                                                                                   "Metadata_Well", *NAMES]
    assemble(tmp_path / "b", 0, None, None, NAMES, "float32", {}, empty_wells)
    assert EmbeddingStore(tmp_path / "b" / "embeddings.zarr").meta.shape == (0, 0)
    assert pd.read_parquet(tmp_path / "b" / "cells.parquet").shape == (0, 0)


def test_parquet_appender_casts_and_names_bad_columns(tmp_path):
    a = ParquetAppender(tmp_path / "t.parquet", row_group_rows=2)
    a.append(pd.DataFrame({"k": ["a", "b"], "v": [1.0, 2.0], "n": [None, None]}))
    a.append(pd.DataFrame({"k": ["c", "d"], "v": [3, 4], "n": [None, None]}))  # int64 -> double
    a.close()
    got = pd.read_parquet(tmp_path / "t.parquet")
    pd.testing.assert_frame_equal(got, pd.DataFrame({"k": list("abcd"), "v": [1.0, 2.0, 3.0, 4.0],
                                                     "n": [None] * 4}))
    b = ParquetAppender(tmp_path / "u.parquet", row_group_rows=1)
    b.append(pd.DataFrame({"k": ["a"], "v": [1]}))
    with pytest.raises(ValueError, match=r"u\.parquet: column 'v' is string .* int64 in the first row group"):
        b.append(pd.DataFrame({"k": ["b"], "v": ["not a number"]}))
    b.abort()
    c = ParquetAppender(tmp_path / "w.parquet", row_group_rows=2)
    c.append(pd.DataFrame({"k": ["a", "b"]}))
    c.append(pd.DataFrame({"j": ["b"]}))
    with pytest.raises(ValueError, match=r"missing \['k'\], extra \['j'\]"):
        c.close()  # the rest is written on close
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.parquet"]  # failed files are neither published nor left
    with EmbeddingWriter(tmp_path / "e.zarr", ["a"]) as w:  # zero-row append fixes the columns of an empty store
        w.append(pd.DataFrame({"Metadata_Well": pd.Series([], dtype=object), "n": pd.Series([], dtype="int64")}),
                 np.empty((0, 1)))
    m = EmbeddingStore(tmp_path / "e.zarr").meta
    assert list(m.columns) == ["Metadata_Well", "n"] and m["n"].dtype == np.int64


def reference_locations(index, locations) -> list[pd.DataFrame]:
    """Per site its location rows, by a pandas groupby on the str of the site keys (table order in a group)."""
    if locations is None:
        return [read_locations(p) for p in index.sites["Metadata_Locations"]]
    table = locations if isinstance(locations, pd.DataFrame) else read_locations(locations)
    groups = {k: g for k, g in table.astype({k: str for k in SITE_KEYS}).groupby(SITE_KEYS, sort=False)}
    return [groups.get(tuple(str(v) for v in row), table.iloc[:0])
            for row in index.sites[SITE_KEYS].itertuples(index=False)]


def test_site_centres_equal_a_pandas_groupby(tmp_path):
    plate = synth_plate(tmp_path / "plate", plates=1, wells=3, sites_per_well=2, size=64, cells_per_site=(1, 6),
                        progress=False)
    idx = read_image_index(plate["index"], channels=["DNA"])
    nuclei = pd.read_csv(plate["nuclei"]).sample(frac=1.0, random_state=0)  # sites interleaved in the table
    first = idx.sites.iloc[1]
    nuclei = nuclei[~((nuclei["Metadata_Well"] == first["Metadata_Well"])  # a site without cells
                      & (nuclei["Metadata_Site"] == first["Metadata_Site"]))]
    stray = nuclei.iloc[:3].assign(Metadata_Well="Z99")  # cells of a site not in the index: not used
    nuclei.to_csv(tmp_path / "nuclei.csv", index=False)
    loc_table = nuclei.rename(columns={"Nuclei_Location_Center_X": "x", "Nuclei_Location_Center_Y": "y"})
    # per-site files: the index's Metadata_Locations column
    files = []
    for s, row in idx.sites.iterrows():
        sel = (nuclei[["Metadata_Plate", "Metadata_Well", "Metadata_Site"]].astype(str)
               == row[["Metadata_Plate", "Metadata_Well", "Metadata_Site"]].astype(str).to_numpy()).all(axis=1)
        p = tmp_path / f"site{s}.csv"
        nuclei[sel].to_csv(p, index=False)
        files.append(str(p))
    idx_files = read_image_index(pd.read_csv(plate["index"]).assign(Metadata_Locations=files), channels=["DNA"],
                                 root=Path(plate["index"]).parent)
    loc_table = pd.concat([loc_table, stray.rename(columns={"Nuclei_Location_Center_X": "x",
                                                            "Nuclei_Location_Center_Y": "y"})])
    for ix, locations in ((idx, loc_table), (idx, tmp_path / "nuclei.csv"), (idx_files, None)):
        ref = reference_locations(ix, locations)
        got = site_centres(ix, locations)
        assert list(got.counts) == [len(r) for r in ref] and sum(got.counts) == len(nuclei)
        for s in range(len(ix)):
            pd.testing.assert_frame_equal(got.table(s), ref[s][["ObjectNumber", "x", "y"]].reset_index(drop=True),
                                          check_dtype=True)
            x, y = got.xy(s)
            np.testing.assert_array_equal(x, ref[s]["x"].to_numpy(np.float64))
            np.testing.assert_array_equal(y, ref[s]["y"].to_numpy(np.float64))
        if locations is None:
            assert got.nbytes == 0  # only counts and paths held
        else:  # x, y float64 + int64 ObjectNumber per cell, two offsets per site
            assert got.nbytes == 24 * len(nuclei) + 16 * len(ix)


class TinyNet(torch.nn.Module):
    """A strided conv and a global mean: a model small enough for a test (features vary with the crop)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(5, 12, 4, stride=4)

    def forward_features(self, x):
        return torch.relu(self.conv(x))

    def embed(self, x):
        return self.forward_features(x).mean(dim=(2, 3))

    def forward(self, x):
        return self.embed(x)


def test_processes_scheduler_equals_threads(tmp_path):
    plate = synth_plate(tmp_path / "plate", plates=1, wells=4, sites_per_well=2, size=96, cells_per_site=(6, 10),
                        progress=False)
    torch.manual_seed(0)
    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(TinyNet().eval(), onnx_path, channels=["DNA", "ER", "RNA", "AGP", "Mito"], crop_size=32,
                intensity={"input_scaling": "minmax", "dtype_max": 65535.0})
    outs = {}
    for sch in ("threads", "processes"):
        outs[sch] = tmp_path / sch
        res = profile_sites(onnx_path, plate["index"], plate["nuclei"], outs[sch], scheduler=sch, workers=2,
                            batch_size=16, dtype="float32", progress=False)
        assert res.embedded > 0
    a, b = EmbeddingStore(outs["threads"] / "embeddings.zarr"), EmbeddingStore(outs["processes"] / "embeddings.zarr")
    xa, xb = np.asarray(a.array[:]), np.asarray(b.array[:])
    assert np.abs(xa).max() > 1e-3 and np.unique(xa[:, 0]).size > 1  # features are not degenerate
    np.testing.assert_array_equal(xa, xb)
    pd.testing.assert_frame_equal(a.meta, b.meta)
    for name in ("cells.parquet", "wells_mean.parquet", "wells_median.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(outs["threads"] / name),
                                      pd.read_parquet(outs["processes"] / name))


def test_local_clusters_run_quiet_background_chores():
    """The clusters open_client makes run dask.distributed's pollers at profiling rates (scheduler module docs):
    no statistical profiler, a 1 s event-loop tick, no work stealing and a 1 s memory monitor for the in-process
    worker; the settings hold inside tasks and end with the cluster."""
    import dask

    from phenovec.profile.scheduler import LOCAL_CLUSTER_CONFIG, open_client

    with open_client("threads", 2) as (client, slots, thr, per_thread):
        assert (slots, per_thread) == (2, True)
        (worker,) = client.cluster.workers.values()
        assert "profile" not in worker.periodic_callbacks and "profile-cycle" not in worker.periodic_callbacks
        assert worker.periodic_callbacks["tick"].callback_time == 1000
        assert "stealing" not in client.cluster.scheduler.extensions
        assert worker.memory_manager.memory_monitor_interval == 1.0
        assert client.submit(dask.config.get, "distributed.admin.low-level-log-length", pure=False).result() == \
            LOCAL_CLUSTER_CONFIG["distributed.admin.low-level-log-length"]
    assert dask.config.get("distributed.worker.profile.enabled") is True
    assert dask.config.get("distributed.scheduler.work-stealing") is True
