"""collate: CellProfiler Image + Cells/Cytoplasm/Nuclei tables -> single cells, equal to pycytominer 1.7.1's
SingleCells.merge_single_cells (on a SQLite file in cytominer-database's layout) on real JUMP Target2 tables."""
from __future__ import annotations

import sqlite3
import warnings

import numpy as np
import pandas as pd
import pytest

from phenovec.cli import main
from phenovec.io.profiles import read_table
from phenovec.process.collate import collate, read_compartment_tables

from conftest import SHARED_DATA

TARGET2 = SHARED_DATA / "pycytominer-target2-single-cell" / "analysis"


def _sqlite(tables: dict, path):
    con = sqlite3.connect(path)
    for k, t in tables.items():
        t.to_sql("Image" if k == "image" else k.capitalize(), con, index=False)
    con.close()
    return path


def _peer(db) -> pd.DataFrame:
    from pycytominer.cyto_utils.cells import SingleCells

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        sc = SingleCells(f"sqlite:///{db}")
        try:
            return sc.merge_single_cells()
        finally:
            sc.conn.close()
            sc.engine.dispose()


def _assert_equal_to_peer(ours: pd.DataFrame, peer: pd.DataFrame):
    assert list(ours.columns) == list(peer.columns)
    assert len(ours) == len(peer) > 0
    num = [c for c in ours.columns if pd.api.types.is_numeric_dtype(ours[c])]
    np.testing.assert_allclose(ours[num].to_numpy(np.float64), peer[num].to_numpy(np.float64), rtol=1e-9, atol=0,
                               equal_nan=True)
    other = [c for c in ours.columns if c not in set(num)]
    assert (ours[other].astype(str).to_numpy() == peer[other].astype(str).to_numpy()).all()


@pytest.fixture(scope="module")
def target2_tables():
    assert TARGET2.is_dir(), f"no JUMP Target2 CellProfiler tables in {TARGET2} (../shared/data beside the repo)"
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        tables = read_compartment_tables(TARGET2)
    skipped = [str(x.message) for x in w if "collate:" in str(x.message)]
    assert len(skipped) == 2 and all("A01-2" in m or "A02-2" in m for m in skipped)  # sites with Image.csv only
    return tables


def test_collate_equals_pycytominer_on_real_tables(target2_tables, tmp_path):
    db = _sqlite(target2_tables, tmp_path / "plate.sqlite")
    peer = _peer(db)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = collate(TARGET2)
    _assert_equal_to_peer(ours, peer)
    assert ours.shape == (89 + 36, peer.shape[1])
    assert {"Metadata_ObjectNumber_cells", "Metadata_ObjectNumber_cytoplasm", "Metadata_Cytoplasm_Parent_Nuclei",
            "Metadata_TableNumber", "Metadata_ImageNumber"} <= set(ours.columns)
    # the SQLite input gives the same table
    pd.testing.assert_frame_equal(collate(db), ours, check_dtype=False)


def _generated(seed=0, sites=3):
    """Cells, nuclei and cytoplasm numbered differently per site, parents shuffled, one cytoplasm without a nucleus."""
    rng = np.random.default_rng(seed)
    tables = {"image": [], "cells": [], "cytoplasm": [], "nuclei": []}
    for s in range(sites):
        n = 4 + s
        img = pd.DataFrame({"ImageNumber": [1], "Metadata_Plate": ["P"], "Metadata_Well": [f"W{s % 2}"],
                            "Metadata_Site": [s + 1], "Count_Cells": [n]})
        cells = pd.DataFrame({"ImageNumber": 1, "ObjectNumber": np.arange(1, n + 1),
                              "AreaShape_Area": rng.normal(size=n), "Parent_Nuclei": rng.permutation(n) + 1})
        nuclei = pd.DataFrame({"ImageNumber": 1, "ObjectNumber": np.arange(1, n + 1),
                               "Intensity_Mean_DNA": rng.normal(size=n)})
        cyto = pd.DataFrame({"ImageNumber": 1, "ObjectNumber": np.arange(1, n + 1),
                             "Parent_Cells": rng.permutation(n) + 1, "Parent_Nuclei": rng.permutation(n) + 1,
                             "Texture_x": rng.normal(size=n)})
        cyto.loc[0, "Parent_Nuclei"] = n + 7  # links to nothing: dropped by the inner merge, as the peer
        for k, t in (("image", img), ("cells", cells), ("nuclei", nuclei), ("cytoplasm", cyto)):
            tables[k].append(t)
    return tables


def _write_folders(tables, root):
    for s in range(len(tables["image"])):
        d = root / f"site{s}"
        d.mkdir(parents=True)
        for k, ts in tables.items():
            ts[s].to_csv(d / f"{'Image' if k == 'image' else k.capitalize()}.csv", index=False)
    return root


def test_collate_generated_and_cli(tmp_path):
    root = _write_folders(_generated(), tmp_path / "analysis")
    tables = read_compartment_tables(root)
    peer = _peer(_sqlite(tables, tmp_path / "g.sqlite"))
    ours = collate(root)
    _assert_equal_to_peer(ours, peer)
    assert len(ours) == 4 + 5 + 6 - 3
    out = tmp_path / "cells.parquet"
    assert main(["process", "collate", str(root), "-o", str(out), "--quiet"]) in (0, None)
    pd.testing.assert_frame_equal(read_table(out), ours)


def test_collate_refusals(tmp_path):
    root = _write_folders(_generated(sites=1), tmp_path / "a")
    (root / "site0" / "Nuclei.csv").unlink()
    with pytest.warns(UserWarning, match="site0.*Nuclei.csv"), pytest.raises(ValueError, match="no site folder"):
        collate(root)
    root = _write_folders(_generated(sites=1), tmp_path / "b")
    cy = pd.read_csv(root / "site0" / "Cytoplasm.csv").drop(columns="Parent_Cells")
    cy.to_csv(root / "site0" / "Cytoplasm.csv", index=False)
    with pytest.raises(KeyError, match="Cytoplasm_Parent_Cells"):
        collate(root)
    with pytest.raises(KeyError, match="Metadata_Nope"):
        collate(_write_folders(_generated(sites=1), tmp_path / "c"), strata=["Metadata_Nope"])
    bad = tmp_path / "x.sqlite"
    bad.write_bytes(b"not sqlite at all")
    with pytest.raises(ValueError, match=r"x\.sqlite.*neither"):
        collate(bad)
    with pytest.raises(ValueError, match="compartments"):
        collate(root, compartments=["cells", "golgi"])
