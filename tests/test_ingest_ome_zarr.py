"""OME-Zarr HCS plates (phenovec.ingest.ome_zarr): written here with zarr from a ``phenovec synth`` plate in the NGFF
layout (v0.4 on Zarr v2 with t, c, z, y, x axes; v0.5 on Zarr v3 with c, y, x), read back site by site and
compared pixel for pixel with the TIFF source, then cropped like the TIFF index."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

from phenovec import _core
from phenovec.ingest.crop import crop_index
from phenovec.ingest.index import read_image_index
from phenovec.ingest.ome_zarr import OmeZarrPlate
from phenovec.ingest.synth import CHANNELS, synth_plate


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    paths = synth_plate(out, plates=1, wells=3, sites_per_well=2, size=80, cells_per_site=(4, 7), seed=5,
                        progress=False)
    return {"index": read_image_index(paths["index"], CHANNELS), "nuclei": paths["nuclei"]}


def write_hcs(store, index, version: str, stored_channels=CHANNELS, z_planes: int = 1):
    """The index's sites as an NGFF HCS plate (channels stored in ``stored_channels`` order)."""
    fmt = 2 if version == "0.4" else 3
    root = zarr.open_group(str(store), mode="w", zarr_format=fmt)
    sites = index.sites
    wells = list(dict.fromkeys(sites["Metadata_Well"]))
    rows = sorted({w[0] for w in wells})
    cols = sorted({str(int(w[1:])) for w in wells}, key=int)
    plate = {"name": str(sites["Metadata_Plate"].iloc[0]), "rows": [{"name": r} for r in rows],
             "columns": [{"name": c} for c in cols], "field_count": 2,
             "wells": [{"path": f"{w[0]}/{int(w[1:])}", "rowIndex": rows.index(w[0]),
                        "columnIndex": cols.index(str(int(w[1:])))} for w in wells]}
    five_d = version == "0.4"
    axes = ([{"name": "t", "type": "time"}] if five_d else []) + [{"name": "c", "type": "channel"}] + (
        [{"name": "z", "type": "space"}] if five_d else []) + [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]

    def ome(meta):
        return {"ome": {"version": version, **meta}} if version == "0.5" else {**meta, "version": version}

    root.attrs.update(ome({"plate": plate}))
    pos = [index.channels.index(c) for c in stored_channels]
    for w in wells:
        wg = root.require_group(f"{w[0]}/{int(w[1:])}")
        rows_w = np.flatnonzero(sites["Metadata_Well"].to_numpy() == w)
        wg.attrs.update(ome({"well": {"images": [{"path": str(k)} for k in range(len(rows_w))]}}))
        for k, s in enumerate(rows_w):
            stack = np.stack([_core.decode_image(index.paths[s][i]) for i in pos])
            data = stack[None, :, None] if five_d else stack
            if z_planes > 1:
                data = np.concatenate([data] * z_planes, axis=2)
            img = wg.create_group(str(k))
            scale = [1.0] * data.ndim
            img.attrs.update(ome({
                "multiscales": [{"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [
                    {"type": "scale", "scale": scale}]}]}],
                "omero": {"channels": [{"label": c} for c in stored_channels]}}))
            arr = img.create_array("0", shape=data.shape, dtype=data.dtype, chunks=data.shape)
            arr[...] = data
    return store


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_sites_equal_the_tiff_source(plate, tmp_path, version):
    index = plate["index"]
    stored = list(reversed(CHANNELS))
    p = OmeZarrPlate(write_hcs(tmp_path / "plate.ome.zarr", index, version, stored_channels=stored))
    assert p.channels == stored
    assert p.sites[["Metadata_Plate", "Metadata_Well", "Metadata_Site"]].astype(str).values.tolist() == \
        index.sites[["Metadata_Plate", "Metadata_Well", "Metadata_Site"]].astype(str).values.tolist()
    for s in range(len(index)):
        tiff = np.stack([_core.decode_image(f) for f in index.paths[s]])
        got = p.read_site(s, CHANNELS)
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, tiff)


def test_crop_of_an_ome_zarr_plate_equals_the_tiff_crop(plate, tmp_path, monkeypatch):
    import zarr as z

    monkeypatch.setenv("PHENOVEC_IMAGE_CACHE", str(tmp_path / "cache"))
    store = write_hcs(tmp_path / "plate.ome.zarr", plate["index"], "0.5")
    zi = read_image_index(store, CHANNELS)  # the image-index reader takes the store
    assert len(zi) == len(plate["index"])
    a = crop_index(zi, plate["nuclei"], tmp_path / "a", box_size=20, progress=False)
    b = crop_index(plate["index"], plate["nuclei"], tmp_path / "b", box_size=20, progress=False)
    assert a.crops == b.crops > 0
    np.testing.assert_array_equal(z.open_array(str(a.out / "crops.zarr"))[:], z.open_array(str(b.out / "crops.zarr"))[:])
    assert all(str(f).startswith(str(tmp_path / "cache")) for r in zi.paths for f in r)
    ca, cb = pd.read_parquet(a.out / "cells.parquet"), pd.read_parquet(b.out / "cells.parquet")
    np.testing.assert_array_equal(ca[["x", "y", "row"]].to_numpy(), cb[["x", "y", "row"]].to_numpy())


def test_bad_plates_are_named(plate, tmp_path):
    store = write_hcs(tmp_path / "z.ome.zarr", plate["index"], "0.4", z_planes=2)
    p = OmeZarrPlate(store)
    with pytest.raises(ValueError, match=r"z.ome.zarr/A/1/0: axis 'z' has 2 planes"):
        p.read_site(0)
    with pytest.raises(KeyError, match=r"no channel 'Brightfield' \(the plate's omero labels are"):
        p.read_site(0, ["DNA", "Brightfield"])
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    with pytest.raises(ValueError, match=r"empty.zarr: no NGFF 'plate' metadata"):
        OmeZarrPlate(tmp_path / "empty.zarr")


def test_a_plate_in_an_fsspec_store(plate, tmp_path, monkeypatch):
    """A store given by URL (fsspec's memory://) is read the same way."""
    monkeypatch.setenv("PHENOVEC_IMAGE_CACHE", str(tmp_path / "cache"))
    write_hcs("memory://plates/p1.ome.zarr", plate["index"], "0.5")
    zi = read_image_index("memory://plates/p1.ome.zarr", CHANNELS)
    for s in range(len(zi)):
        np.testing.assert_array_equal(np.stack([_core.decode_image(f) for f in zi.paths[s]]),
                                      np.stack([_core.decode_image(f) for f in plate["index"].paths[s]]))
