"""Object-store images fetched site by site, when (and where) each site is processed: ``crop_index`` and the
profiling workers copy a site's images into the image cache just before cutting it, reading an index copies
nothing, the output equals the eager path's bit for bit, and a missing remote image fails naming the URL and the
site. Images live in fsspec's ``memory://`` filesystem (per process: the profiling runs here use the threads
scheduler) and on disk as ``file://`` URLs.
"""
from __future__ import annotations

import threading
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest
import zarr

from phenovec.ingest import image_source
from phenovec.ingest.crop import crop_index
from phenovec.ingest.index import read_image_index
from phenovec.ingest.synth import CHANNELS, synth_plate

from test_profile import assert_same_outputs


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    """2 plates x 2 wells x 1 site of 96 px (5-8 cells) and a resnet_tiny model."""
    from phenovec.export import export_onnx
    from phenovec.train.models import build_model

    out = tmp_path_factory.mktemp("lazy")
    paths = synth_plate(out, plates=2, wells=2, sites_per_well=1, size=96, cells_per_site=(5, 8), seed=5,
                        progress=False)
    model = out / "model.onnx"
    export_onnx(build_model("resnet_tiny", 5, 7, seed=0), model, channels=list(CHANNELS), crop_size=32,
                intensity={"input_scaling": "minmax", "dtype_max": 65535.0}, parity=False)
    return {"dir": out, "index": paths["index"], "nuclei": paths["nuclei"], "table": pd.read_csv(paths["index"]),
            "model": model}


def _load_data(plate, where: str, rows=None) -> pd.DataFrame:
    """The plate's index as a Gallery LoadData table naming every image by URL: ``where`` "memory:<root>" (the
    images copied into fsspec's memory filesystem under ``<root>``) or "file" (``file://`` URLs)."""
    t = plate["table"] if rows is None else plate["table"].iloc[rows].reset_index(drop=True)
    df = pd.DataFrame({c: t[c] for c in t.columns if c.startswith("Metadata_")})
    for ch in CHANNELS:
        files = [(plate["dir"] / f).resolve() for f in t[f"FileName_{ch}"]]
        if where == "file":
            df[f"URL_Orig{ch}"] = [f.as_uri() for f in files]
        else:
            root = where.split(":", 1)[1]
            fs = fsspec.filesystem("memory")
            for f in files:
                fs.pipe(f"/{root}/images/{f.name}", f.read_bytes())
            df[f"URL_Orig{ch}"] = [f"memory://{root}/images/{f.name}" for f in files]
    return df


class Spy:
    """Records every ``image_source.fetch_all`` call (its URLs, where it says they come from, its thread) and
    every ``crop_site`` call (the paths it decodes), in order."""

    def __init__(self, monkeypatch):
        from phenovec import _core

        self.events: list = []
        real_fetch_all, real_crop = image_source.fetch_all, _core.crop_site

        def fetch_all(urls, cache=None, threads=8, where=None):
            self.events.append(("fetch", tuple(urls), where(0) if where else "", threading.current_thread().name))
            return real_fetch_all(urls, cache, threads, where)

        def crop_site(paths, *a, **k):
            self.events.append(("crop", tuple(paths)))
            return real_crop(paths, *a, **k)

        monkeypatch.setattr(image_source, "fetch_all", fetch_all)
        monkeypatch.setattr(_core, "crop_site", crop_site)

    def fetches(self) -> list:
        """The calls that copied (or found copied) object-store images (a local index checks its files with
        ``fetch_all`` too)."""
        return [e for e in self.events if e[0] == "fetch" and any(map(image_source.is_remote, e[1]))]


def _crops(out) -> np.ndarray:
    return zarr.open_array(str(Path(out) / "crops.zarr"), mode="r")[:]


@pytest.mark.parametrize("where", ["memory:lazy-crop", "file"])
def test_crop_fetches_each_site_just_before_cutting_it(plate, tmp_path, monkeypatch, where):
    df = _load_data(plate, where)
    cache = tmp_path / "cache"
    eager = read_image_index(df, CHANNELS, image_cache=cache)  # fetch=True: every image copied when read
    crop_index(eager, plate["nuclei"], tmp_path / "eager", box_size=24, progress=False)
    cache2 = tmp_path / "cache2"
    spy = Spy(monkeypatch)
    lazy = read_image_index(df, CHANNELS, image_cache=cache2, fetch=False)
    assert not spy.fetches() and not cache2.exists()  # reading the index copied nothing
    crop_index(lazy, plate["nuclei"], tmp_path / "lazy", box_size=24, chunk_cells=4, progress=False)
    np.testing.assert_array_equal(_crops(tmp_path / "lazy"), _crops(tmp_path / "eager"))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "lazy" / "cells.parquet"),
                                  pd.read_parquet(tmp_path / "eager" / "cells.parquet"))
    if where == "file":  # local files: nothing to copy, no cache
        assert not spy.fetches() and not cache2.exists()
        return
    # per site, in order: its images fetched (one call naming the site), then cut from the copies
    n = len(df)
    assert [e[0] for e in spy.events] == ["fetch", "crop"] * n  # no other fetch_all call
    for s in range(n):
        fetch, crop = spy.events[2 * s], spy.events[2 * s + 1]
        assert fetch[1] == tuple(lazy.paths[s]) and f"site {s} " in fetch[2]
        assert all(Path(p).is_relative_to(cache2) for p in crop[1])
    assert len(list(cache2.iterdir())) == n * len(CHANNELS)


def test_crop_resumed_fetches_only_the_sites_it_processes(plate, tmp_path, monkeypatch):
    from phenovec import _core

    df = _load_data(plate, "memory:lazy-resume")
    lazy = read_image_index(df, CHANNELS, image_cache=tmp_path / "cache", fetch=False)
    real = _core.crop_site
    seen = []

    def crop_then_stop(paths, *a, **k):
        seen.append(paths)
        if len(seen) == 3:
            raise KeyboardInterrupt  # killed while cutting the third site
        return real(paths, *a, **k)

    monkeypatch.setattr(_core, "crop_site", crop_then_stop)
    with pytest.raises(KeyboardInterrupt):
        crop_index(lazy, plate["nuclei"], tmp_path / "out", box_size=24, chunk_cells=1, progress=False)
    monkeypatch.setattr(_core, "crop_site", real)
    spy = Spy(monkeypatch)
    crop_index(lazy, plate["nuclei"], tmp_path / "out", box_size=24, chunk_cells=1, progress=False)
    assert [e[2].split(": ")[-1] for e in spy.fetches()] == [f"site {s} channel DNA" for s in (2, 3)]
    crop_index(read_image_index(df, CHANNELS, image_cache=tmp_path / "cache"), plate["nuclei"], tmp_path / "eager",
               box_size=24, chunk_cells=1, progress=False)
    np.testing.assert_array_equal(_crops(tmp_path / "out"), _crops(tmp_path / "eager"))


def test_sharded_profile_fetches_on_the_workers_and_names_a_missing_url(plate, tmp_path, monkeypatch):
    """Two plates as LoadData CSVs in memory:// (by URL), profiled as shards (threads scheduler: the memory filesystem is
    this process's): each site's images are fetched by the task that embeds it, into --image-cache, once; the
    outputs equal per-plate runs on the local files; a missing image fails its shard naming the URL and site,
    and the rerun fetches only that shard's sites."""
    from phenovec.profile import profile_sites
    from phenovec.profile.shards import profile_shards

    plates = sorted(plate["table"]["Metadata_Plate"].unique())
    csvs = []
    for p in plates:
        rows = np.flatnonzero(plate["table"]["Metadata_Plate"] == p)
        df = _load_data(plate, f"memory:lazy-shards/{p}", rows)
        if p == plates[1]:
            good = df.loc[1, "URL_OrigER"]
            df.loc[1, "URL_OrigER"] = f"memory://lazy-shards/{p}/images/missing.tif"
        with fsspec.open(f"memory://lazy-shards/{p}/load_data.csv", "w") as f:  # the CSVs by URL too
            df.to_csv(f, index=False)
        csvs.append(f"memory://lazy-shards/{p}/load_data.csv")
        (tmp_path / p).mkdir()
        ip = tmp_path / p / "index.csv"
        plate["table"].iloc[rows].assign(**{f"FileName_{c}": [str((plate["dir"] / f).resolve()) for f in
                                            plate["table"].iloc[rows][f"FileName_{c}"]] for c in CHANNELS}
                                         ).to_csv(ip, index=False)
        profile_sites(plate["model"], ip, plate["nuclei"], tmp_path / "ref" / p, batch_size=4, scheduler="threads",
                      workers=1, progress=False)
    cache = tmp_path / "cache"
    spy = Spy(monkeypatch)
    kw = dict(locations=plate["nuclei"], batch_size=4, scheduler="threads", workers=2, image_cache=cache,
              progress=False)
    res = profile_shards(plate["model"], csvs, tmp_path / "out", **kw)
    key = f"{plates[1]}/load_data.csv"
    assert list(res.failed) == [key]
    assert "site 1 image 2 of 5" in res.failed[key] and "missing.tif: not found" in res.failed[key]
    assert f"memory://lazy-shards/{plates[1]}/images/missing.tif" in res.failed[key]
    assert_same_outputs(tmp_path / "out" / "shards" / res.shards[f"{plates[0]}/load_data.csv"]["dir"].split("/")[-1],
                        tmp_path / "ref" / plates[0])
    fetched = spy.fetches()
    assert fetched and all(e[3] != "MainThread" for e in fetched)  # on the workers, not in the driver
    assert all(e[2].startswith("site ") and len(e[1]) == len(CHANNELS) for e in fetched)  # one site per call
    first = [e for e in fetched if e[1][0].startswith(f"memory://lazy-shards/{plates[0]}/")]
    assert sorted(e[2] for e in first) == [f"site {s} image 1 of 5" for s in range(2)]
    assert {p.parent.parent for p in cache.glob("*/*")} == {cache}  # copies in --image-cache
    # the image put in place (the index unchanged: its run's configuration holds its URLs), the rerun processes
    # (and fetches) only the failed shard's sites
    fsspec.filesystem("memory").pipe(f"/lazy-shards/{plates[1]}/images/missing.tif",
                                     fsspec.filesystem("memory").cat_file(good))
    spy.events.clear()
    again = profile_shards(plate["model"], csvs, tmp_path / "out", **kw)
    assert not again.failed
    assert {e[1][0].split("/")[3] for e in spy.fetches()} == {plates[1]}
    assert_same_outputs(tmp_path / "out" / "shards" / res.shards[key]["dir"].split("/")[-1],
                        tmp_path / "ref" / plates[1])


@pytest.mark.parametrize("own_cache", [False, True])
def test_one_profiling_run_fetches_site_by_site(plate, tmp_path, monkeypatch, own_cache):
    """``profile_sites`` on an index read with ``fetch=False``: the workers copy each site's images into the index's
    ``image_cache`` (its site jobs carry it) or, without one, into the default cache (``$PHENOVEC_IMAGE_CACHE``),
    nothing into the other, and the outputs equal those of the local files."""
    from phenovec.profile import profile_sites

    default = tmp_path / "default-cache"
    monkeypatch.setenv("PHENOVEC_IMAGE_CACHE", str(default))
    cache = tmp_path / "run-cache" if own_cache else None
    lazy = read_image_index(_load_data(plate, f"memory:lazy-one-{own_cache}"), CHANNELS, image_cache=cache,
                            fetch=False)
    assert all(p.startswith("memory://") for r in lazy.paths for p in r)
    spy = Spy(monkeypatch)
    profile_sites(plate["model"], lazy, plate["nuclei"], tmp_path / "lazy", batch_size=4, scheduler="threads",
                  workers=2, progress=False)
    profile_sites(plate["model"], plate["index"], plate["nuclei"], tmp_path / "local", batch_size=4,
                  scheduler="threads", workers=2, progress=False)
    assert_same_outputs(tmp_path / "lazy", tmp_path / "local")
    assert sorted(e[2] for e in spy.fetches()) == [f"site {s} image 1 of 5" for s in range(len(lazy))]
    used, unused = (cache, default) if own_cache else (default, tmp_path / "run-cache")
    assert len(list(used.iterdir())) == len(lazy) * len(CHANNELS)
    assert not unused.exists() or not any(unused.iterdir())


@pytest.mark.parametrize("where", ["local", "memory"])
def test_ome_zarr_fields_are_written_site_by_site(plate, tmp_path, monkeypatch, where):
    """An OME-Zarr plate read with ``fetch=False``: nothing but its metadata is read; crop writes each site's
    channels into the cache just before cutting it, and the crops equal those of the eager index."""
    from test_ingest_ome_zarr import write_hcs

    one = read_image_index(plate["index"], CHANNELS)
    first = one.sites["Metadata_Plate"] == one.sites["Metadata_Plate"].iloc[0]
    rows = np.flatnonzero(first.to_numpy())
    one.sites, one.paths = one.sites.iloc[rows].reset_index(drop=True), [one.paths[i] for i in rows]
    store = write_hcs(str(tmp_path / "plate.ome.zarr") if where == "local" else "memory://omz/plate.ome.zarr",
                      one, "0.5")
    eager = read_image_index(store, CHANNELS, image_cache=tmp_path / "eager-cache")
    b = crop_index(eager, plate["nuclei"], tmp_path / "eager", box_size=24, progress=False)
    spy = Spy(monkeypatch)
    lazy = read_image_index(store, CHANNELS, image_cache=tmp_path / "cache", fetch=False)
    assert not spy.fetches() and not (tmp_path / "cache").exists()
    a = crop_index(lazy, plate["nuclei"], tmp_path / "lazy", box_size=24, progress=False)
    assert a.crops == b.crops > 0
    np.testing.assert_array_equal(_crops(a.out), _crops(b.out))
    assert [e[0] for e in spy.events] == ["fetch", "crop"] * len(lazy)
    assert [e[2].split(": ")[-1] for e in spy.fetches()] == [f"site {s} channel DNA" for s in range(len(lazy))]
    assert sorted(p.name for p in (tmp_path / "cache").glob("*/*")) == sorted(f"{c}.tif" for c in CHANNELS
                                                                             for _ in range(len(lazy)))
    bad = lazy.paths[0][1].replace("/ER.tif", "/Brightfield.tif")
    lazy.paths[0] = [lazy.paths[0][0], bad]
    with pytest.raises(OSError, match=r"site 0 channel ER: omezarr://.*Brightfield.tif: .*no channel 'Brightfield'"):
        lazy.site_paths(0)
