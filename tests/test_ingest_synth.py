"""phenovec synth: determinism, file/index/locations consistency, and a real, MOA-specific signal."""
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from phenovec.ingest.synth import CHANNELS, synth_plate

SMALL = dict(plates=1, wells=["A01", "B02", "C03"], sites_per_well=1, size=96, cells_per_site=(4, 6), progress=False)


def _digest(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    """2 plates x 28 wells x 1 site, 128 px fields: 4 wells per treatment per plate."""
    out = tmp_path_factory.mktemp("synth")
    paths = synth_plate(out, plates=2, wells=28, sites_per_well=1, size=128, cells_per_site=(8, 12), seed=3,
                        progress=False)
    index = pd.read_csv(paths["index"])
    nuclei = pd.read_csv(paths["nuclei"])
    images = {}
    for r in index.itertuples():
        images[(r.Metadata_Plate, r.Metadata_Well, r.Metadata_Site)] = np.stack(
            [tifffile.imread(paths["index"].parent / getattr(r, f"FileName_{c}")) for c in CHANNELS])
    return paths, index, nuclei, images


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    synth_plate(a, seed=7, **SMALL)
    synth_plate(b, seed=7, **SMALL)
    synth_plate(c, seed=8, **SMALL)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert len(da) == 3 * len(CHANNELS) + 2
    assert da == db
    assert da.keys() == dc.keys()
    assert all(da[k] != dc[k] for k in da if k.endswith(".tif"))


def test_compression_choice_changes_encoding_not_pixels(tmp_path):
    synth_plate(tmp_path / "d", seed=1, compression="deflate", **SMALL)
    synth_plate(tmp_path / "n", seed=1, compression="none", **SMALL)
    rel = pd.read_csv(tmp_path / "d" / "index.csv")["FileName_Mito"].iloc[0]
    with tifffile.TiffFile(tmp_path / "d" / rel) as td, tifffile.TiffFile(tmp_path / "n" / rel) as tn:
        assert td.pages[0].compression == 8 and tn.pages[0].compression == 1  # ADOBE_DEFLATE, NONE
        assert np.array_equal(td.asarray(), tn.asarray())


def test_files_index_and_locations_are_consistent(plate):
    paths, index, nuclei, images = plate
    assert len(index) == 2 * 28
    assert index.groupby("Metadata_Plate")["Metadata_Well"].nunique().eq(28).all()
    assert set(index["Metadata_Treatment"]) == {"DMSO", "AKI-1", "AKI-2", "MST-1", "MST-2", "ACT-1", "ACT-2"}
    assert index.groupby(["Metadata_Plate", "Metadata_Treatment"]).size().eq(4).all()
    assert (index["Metadata_Control"] == (index["Metadata_Treatment"] == "DMSO")).all()
    assert index["Metadata_Control"].dtype == bool
    for c in CHANNELS:
        assert all((paths["index"].parent / p).is_file() for p in index[f"FileName_{c}"])
        assert not any(Path(p).is_absolute() for p in index[f"FileName_{c}"])
    for img in images.values():
        assert img.dtype == np.uint16 and img.shape == (5, 128, 128)
    key = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    counts = nuclei.groupby(key).size()
    assert len(counts) == len(index) and counts.between(8, 12).all()
    assert (nuclei.groupby(key)["ObjectNumber"].apply(lambda s: list(s) == list(range(1, len(s) + 1)))).all()
    x, y = nuclei["Nuclei_Location_Center_X"], nuclei["Nuclei_Location_Center_Y"]
    assert x.between(0, 127).all() and y.between(0, 127).all()
    # the centres are where the nuclei are: DNA at the centre pixel far above the site's background
    bright, dmso = [], set(map(tuple, index.loc[index["Metadata_Control"], key[:2]].to_numpy()))
    for k, g in nuclei.groupby(key):
        dna = images[k][0].astype(float)
        bg = np.median(dna)
        v = dna[np.rint(g["Nuclei_Location_Center_Y"]).astype(int), np.rint(g["Nuclei_Location_Center_X"]).astype(int)]
        bright.append(v > bg + 0.4 * (np.percentile(dna, 99.5) - bg))
        if k[:2] in dmso:  # DMSO nuclei (radius 6 px) do not overlap: centres >= 12 px apart
            xy = g[["Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"]].to_numpy()
            d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1)) + np.eye(len(xy)) * 1e9
            assert d.min() >= 12.0
    assert np.concatenate(bright).mean() > 0.95


def _cell_features(images, nuclei, half=9) -> pd.DataFrame:
    """Per cell: mean of each channel in a (2*half+1)^2 crop, and nucleus area (DNA above half max)."""
    rows = []
    for k, g in nuclei.groupby(["Metadata_Plate", "Metadata_Well", "Metadata_Site"]):
        img = images[k].astype(float)
        bg = np.median(img, axis=(1, 2))
        for x, y in zip(np.rint(g["Nuclei_Location_Center_X"]).astype(int),
                        np.rint(g["Nuclei_Location_Center_Y"]).astype(int)):
            crop = img[:, max(0, y - half):y + half + 1, max(0, x - half):x + half + 1] - bg[:, None, None]
            dna = crop[0]
            area = float((dna > 0.5 * dna.max()).sum())
            rows.append((k[0], k[1], *crop.mean(axis=(1, 2)), area))
    return pd.DataFrame(rows, columns=["plate", "well", *CHANNELS, "nuc_area"])


@pytest.fixture(scope="module")
def well_profiles(plate):
    """Per-well medians of the per-cell features, log-scaled and centred on the plate's DMSO median."""
    _, index, nuclei, images = plate
    cells = _cell_features(images, nuclei)
    feats = [*CHANNELS, "nuc_area"]
    wells = cells.groupby(["plate", "well"])[feats].median()
    wells = np.log(wells.clip(lower=1.0)).reset_index()
    meta = index.drop_duplicates(["Metadata_Plate", "Metadata_Well"]).rename(
        columns={"Metadata_Plate": "plate", "Metadata_Well": "well"})
    wells = wells.merge(meta[["plate", "well", "Metadata_Treatment", "Metadata_MOA", "Metadata_Control"]])
    for p, g in wells.groupby("plate"):
        ctrl = g.loc[g["Metadata_Control"], feats]
        wells.loc[g.index, feats] = (g[feats] - ctrl.median()) / g[feats].std()
    return wells, feats


def test_moas_separate_leave_one_compound_out(well_profiles):
    """Nearest MOA centroid, each compound's wells classified by centroids built from the OTHER compounds only
    (so compound-specific signatures cannot help): accuracy must be well above chance (1/3)."""
    wells, feats = well_profiles
    treated = wells[~wells["Metadata_Control"]]
    moas = sorted(treated["Metadata_MOA"].unique())
    assert len(moas) == 3
    correct = []
    for cpd in treated["Metadata_Treatment"].unique():
        tr, te = treated[treated["Metadata_Treatment"] != cpd], treated[treated["Metadata_Treatment"] == cpd]
        cent = np.stack([tr.loc[tr["Metadata_MOA"] == m, feats].mean().to_numpy() for m in moas])
        d = ((te[feats].to_numpy()[:, None, :] - cent[None]) ** 2).sum(-1)
        correct.extend(np.array(moas)[d.argmin(1)] == te["Metadata_MOA"].to_numpy())
    assert np.mean(correct) > 2 * (1 / 3), np.mean(correct)


def test_dmso_differs_from_treated_and_moa_marks_are_where_designed(well_profiles):
    wells, feats = well_profiles
    ctrl = wells[wells["Metadata_Control"]]
    # treated wells lie far from the DMSO centre; DMSO wells (scored leave-one-out) near it
    X, is_ctrl = wells[feats].to_numpy(), wells["Metadata_Control"].to_numpy()
    centre = X[is_ctrl].mean(0)
    d_treated = np.sqrt(((X[~is_ctrl] - centre) ** 2).sum(1))
    loo = [(X[is_ctrl].sum(0) - x) / (is_ctrl.sum() - 1) for x in X[is_ctrl]]
    d_ctrl = np.sqrt(((X[is_ctrl] - np.array(loo)) ** 2).sum(1))
    assert np.median(d_treated) > 2 * np.median(d_ctrl), (np.median(d_treated), np.median(d_ctrl))
    assert (d_treated > d_ctrl.max()).mean() >= 0.8
    for moa, feat in (("Aurora kinase inhibitor", "nuc_area"), ("Mitochondrial stressor", "Mito"),
                      ("Actin disruptor", "AGP")):
        assert wells.loc[wells["Metadata_MOA"] == moa, feat].min() > ctrl[feat].max(), (moa, feat)


def test_plate_effect_present(plate):
    """Per-plate background and DMSO intensity differ between plates by far more than between sites of a plate
    (largest difference over the 5 channels: the plate scale / offset are drawn per plate x channel)."""
    _, index, _, images = plate
    bg = pd.DataFrame([(k[0], *np.percentile(v, 5, axis=(1, 2))) for k, v in images.items()],
                      columns=["plate", *CHANNELS])  # background level of each site
    by = bg.groupby("plate")[list(CHANNELS)]
    between = (by.mean().iloc[0] - by.mean().iloc[1]).abs()
    assert (between > 5 * by.std().max(axis=0)).any(), (between, by.std())
    dmso = index[index["Metadata_Control"]]
    dna = pd.DataFrame([(r.Metadata_Plate, *images[(r.Metadata_Plate, r.Metadata_Well, 1)].mean(axis=(1, 2)))
                        for r in dmso.itertuples()], columns=["plate", *CHANNELS]).groupby("plate").mean()
    assert ((dna.iloc[0] - dna.iloc[1]).abs() / dna.mean() > 0.05).any(), dna


@pytest.mark.parametrize("kwargs, match", [
    (dict(size=16), "size"),
    (dict(wells=500), "wells"),
    (dict(cells_per_site=(50, 40)), "cells_per_site"),
    (dict(channels=("DNA", "Actin")), "channels"),
    (dict(compression="lzw"), "compression"),
    (dict(treatments=[("DMSO", "control"), ("DMSO", "x")]), "duplicate"),
    (dict(size=64, cells_per_site=(200, 200)), "cannot place 200 cells"),
    (dict(treatments=[("DMSO", "control"), ("A", "x", -1.0)]), "strength"),
    (dict(treatments=[("DMSO", "control"), ("A", "x", "strong")]), "strength"),
    (dict(bad_wells=2), "fewer than two good wells"),
    (dict(control_wells=3), "control_wells = 3"),
])
def test_bad_arguments_raise_clear_errors(tmp_path, kwargs, match):
    args = {**SMALL, **kwargs}
    with pytest.raises(ValueError, match=match):
        synth_plate(tmp_path, **args)


def test_cli_synth(tmp_path, capsys):
    import argparse
    import json

    from phenovec.ingest.command import add_synth_parser

    ap = argparse.ArgumentParser()
    add_synth_parser(ap.add_subparsers(dest="stage", required=True))
    a = ap.parse_args(["synth", "--out", str(tmp_path), "--wells", "2", "--sites", "2", "--size", "64",
                       "--cells", "3", "5", "--seed", "4", "--quiet"])
    a.run(a)
    summary = json.loads(capsys.readouterr().out)
    assert summary["sites"] == 4 and 3 * 4 <= summary["nuclei_count"] <= 5 * 4
    assert len(pd.read_csv(tmp_path / "index.csv")) == 4


def test_strength_scales_the_effect_and_zero_is_inactive(tmp_path):
    """A treatment's strength multiplies its whole effect: strength 0 renders exactly the DMSO morphology draws (an
    inactive compound), 0.5 lies between DMSO and full strength on the MOA's designed feature."""
    from phenovec.ingest.synth import PARAMS, _treatments

    t = _treatments([("DMSO", "control"), ("AKI-1", "Aurora kinase inhibitor", 1.0),
                     ("AKI-H", "Aurora kinase inhibitor", 0.5), ("AKI-0", "Aurora kinase inhibitor", 0.0)], 0)
    full, half, zero = (x.effect[PARAMS.index("nucleus_size")] for x in t[1:])
    assert zero == 0.0 and 0 < half < full
    assert np.all(t[3].effect == 0) and not t[3].control


def test_bad_wells_are_empty_or_blurred_and_labelled(tmp_path):
    wells = 16
    paths = synth_plate(tmp_path, plates=1, wells=wells, sites_per_well=1, size=96, cells_per_site=(6, 8), seed=1,
                        treatments=[("DMSO", "control"), ("A", "Actin disruptor"), ("B", "Mitochondrial stressor")],
                        bad_wells=2, progress=False)
    index, nuclei = pd.read_csv(paths["index"]), pd.read_csv(paths["nuclei"])
    qc = index.set_index("Metadata_Well")["Metadata_WellQC"]
    assert sorted(qc[qc != "ok"]) == ["empty", "out_of_focus"]
    counts = nuclei.groupby("Metadata_Well").size()
    empty = qc.index[qc == "empty"][0]
    assert empty not in counts.index and (counts > 0).all() and len(counts) == wells - 1
    # every treatment keeps at least two good wells
    good = index[index["Metadata_WellQC"] == "ok"]
    assert good.groupby("Metadata_Treatment").size().min() >= 2

    def sharpness(well):  # mean squared Laplacian of the DNA channel
        from scipy import ndimage

        r = index[index["Metadata_Well"] == well].iloc[0]
        img = tifffile.imread(paths["index"].parent / r["FileName_DNA"]).astype(np.float64)
        return float((ndimage.laplace(ndimage.gaussian_filter(img, 1.0)) ** 2).mean())

    blurred = qc.index[qc == "out_of_focus"][0]
    ok = [w for w in qc.index if qc[w] == "ok"]
    assert sharpness(blurred) < 0.5 * min(sharpness(w) for w in ok)
    # control_wells: that many DMSO wells per plate, the rest shared by the other treatments
    cw = synth_plate(tmp_path / "cw", plates=1, wells=12, sites_per_well=1, size=96, cells_per_site=(4, 5),
                     treatments=[("DMSO", "control"), ("A", "x"), ("B", "y")], control_wells=6, progress=False)
    n = pd.read_csv(cw["index"]).groupby("Metadata_Treatment").size().to_dict()
    assert n == {"DMSO": 6, "A": 3, "B": 3}
    # without bad wells the index has no QC column (and the images are unchanged: see the byte-identity test)
    plain = synth_plate(tmp_path / "plain", plates=1, wells=6, sites_per_well=1, size=96, cells_per_site=(4, 5),
                        progress=False)
    assert "Metadata_WellQC" not in pd.read_csv(plain["index"]).columns
