"""Re-applying a batch step's saved fit: the columns it recorded, the arguments only fitting needs, the -cor
sphering's standardisation, and fits that are damaged, edited or not fits at all, each refused naming the file."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from phenovec.batch import (
    BatchFit, arm_correction, pca, regress_cell_count, remove_outliers, sphere_by_map, subtract_well_mean, tvn,
)

FEATS = [f"Cells_f{j}" for j in range(5)]


def _table(n=96, seed=0):
    """Two batch columns that disagree (``Metadata_Batch`` and ``Metadata_Plate``), a renamed count column, an arm
    column under another name and a second arm column that would give other means."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "Metadata_Batch": np.repeat(["B0", "B1"], n // 2),
        "Metadata_Plate": np.tile(["P0", "P1", "P2"], n // 3),
        "Metadata_Position": np.tile([f"A{c:02d}" for c in range(1, 9)], n // 8),
        "Metadata_Well": np.tile([f"H{c:02d}" for c in range(1, 5)], n // 4),
        "Metadata_JCP2022": np.tile(["DMSO", "c1", "c2", "c3"], n // 4),
        "Metadata_Count_Cells": rng.integers(100, 3000, n),
        "Metadata_Arm2": rng.choice(["1p", "1q", "2p"], n),
        "Metadata_arm": rng.choice(["3p", "3q"], n),
        "Metadata_Symbol": [f"g{i % 40}" for i in range(n)],
        "Metadata_bg": rng.random(n) < 0.7,
        "Metadata_crispr": np.arange(n) % 5 != 0,
    })
    x = rng.normal(size=(n, 5)) * np.array([1.0, 4.0, 0.5, 9.0, 2.0])
    x[:, 0] += 0.01 * df["Metadata_Count_Cells"].to_numpy()
    x += (df["Metadata_Batch"] == "B1").to_numpy()[:, None] * np.array([1.0, -2.0, 0.3, 5.0, 0.0])
    for j, f in enumerate(FEATS):
        df[f] = x[:, j]
    return df


def _same(a, b):
    np.testing.assert_array_equal(a[FEATS if FEATS[0] in a else [c for c in a if c.startswith("PC")]].to_numpy(),
                                  b[FEATS if FEATS[0] in b else [c for c in b if c.startswith("PC")]].to_numpy())


FITS = {  # step: (function, fitting arguments naming non-default columns)
    "tvn": (tvn, {"controls": "Metadata_JCP2022 == 'DMSO'", "batch": "Metadata_Batch"}),
    "subtract_well_mean": (subtract_well_mean, {"well": "Metadata_Position"}),
    "regress_cell_count": (regress_cell_count, {"cell_count": "Metadata_Count_Cells", "min_unique": 10}),
    "arm_correction": (arm_correction, {"background": "Metadata_bg == True", "arm": "Metadata_Arm2",
                                        "rows": "Metadata_crispr == True", "min_genes": 5}),
}


@pytest.mark.parametrize("step", sorted(FITS))
def test_reapplied_fit_uses_the_columns_it_recorded(step, tmp_path):
    """With ``fit=`` alone, each step reads the columns (and row filter) the fit recorded, not the step's default
    names, and needs none of the fitting-only arguments; naming another column still overrides the fit's."""
    func, kwargs = FITS[step]
    df = _table()
    out, fit = func(df, features=FEATS, return_fit=True, **kwargs)
    fit.save(tmp_path / "fit.npz")
    again = func(df, fit=tmp_path / "fit.npz")
    _same(again, out)
    if step == "arm_correction":  # the recorded row filter: rows outside it are left as they were
        outside = ~df["Metadata_crispr"].to_numpy()
        np.testing.assert_array_equal(again.loc[outside, FEATS].to_numpy(), df.loc[outside, FEATS].to_numpy())
        assert not np.array_equal(again.loc[~outside, FEATS].to_numpy(), df.loc[~outside, FEATS].to_numpy())
    # an explicit other column is the caller's choice: the result differs (or is refused for unknown labels)
    other = {"tvn": ("batch", "Metadata_Plate"), "subtract_well_mean": ("well", "Metadata_Well"),
             "regress_cell_count": ("cell_count", "Cells_f1"), "arm_correction": ("arm", "Metadata_arm")}[step]
    try:
        changed = func(df, fit=tmp_path / "fit.npz", **{other[0]: other[1]})
    except (KeyError, ValueError) as e:
        assert "P0" in str(e) or "H01" in str(e)
    else:
        assert not np.array_equal(changed[FEATS].to_numpy(), out[FEATS].to_numpy())


def test_tvn_fit_without_batches_reapplies_without_the_default_batch_column(tmp_path):
    df = _table().drop(columns=["Metadata_Plate"])
    out, fit = tvn(df, controls="Metadata_JCP2022 == 'DMSO'", batch=None, features=FEATS, return_fit=True)
    fit.save(tmp_path / "t.npz")
    _same(tvn(df, fit=tmp_path / "t.npz"), out)


def test_fitting_without_a_needed_filter_says_how_to_give_it():
    df = _table()
    for func, name in ((tvn, "controls"), (sphere_by_map, "negcon"), (arm_correction, "background")):
        with pytest.raises(ValueError, match=rf"{func.__name__} needs {name} to fit: a row filter"):
            func(df, features=FEATS)


@pytest.mark.parametrize("method", ["ZCA", "ZCA-cor", "PCA", "PCA-cor"])
def test_sphere_by_map_output_is_the_spherizers(method, tmp_path):
    """Fitted and re-applied, the output is the Spherizer's transform of the chosen epsilon; with a tiny epsilon the
    negcon rows come out white (covariance ~I) whether or not the method standardises first. The -cor methods lost
    their standardisation before (negcon variances of 10^2-10^4 here)."""
    from phenovec.process.spherize import Spherizer

    df = _table(n=384, seed=1)
    out, fit = sphere_by_map(df, negcon="Metadata_JCP2022 == 'DMSO'", perturbation="Metadata_JCP2022",
                             method=method, epsilons=[1e-9], features=FEATS, return_fit=True)
    neg = (df["Metadata_JCP2022"] == "DMSO").to_numpy()
    ref = Spherizer(method=method, epsilon=1e-9).fit(df.loc[neg, FEATS]).transform(df[FEATS]).to_numpy()
    cols = [c for c in out.columns if c.startswith("PC")] if method.startswith("PCA") else FEATS
    np.testing.assert_allclose(out[cols].to_numpy(), ref, rtol=1e-9, atol=1e-9)
    cov = np.cov(out.loc[neg, cols].to_numpy(), rowvar=False)
    np.testing.assert_allclose(cov, np.eye(5), atol=1e-6)
    assert ("scale" in fit.arrays) == method.endswith("-cor")
    fit.save(tmp_path / "s.npz")
    np.testing.assert_array_equal(sphere_by_map(df, fit=tmp_path / "s.npz")[cols].to_numpy(), out[cols].to_numpy())
    if method.endswith("-cor"):  # a fit saved before the scale was kept cannot whiten: refused, not wrong
        old = BatchFit(fit.step, fit.params, {k: v for k, v in fit.arrays.items() if k != "scale"})
        old.save(tmp_path / "old.npz")
        with pytest.raises(ValueError, match=r"old\.npz: this .*-cor sphere_by_map fit has no 'scale'"):
            sphere_by_map(df, fit=tmp_path / "old.npz")


def _edited(tmp_path, fit, name, params=None, arrays=None, drop=()):
    spec = {"format": "phenovec.batch.fit", "version": 1, "step": fit.step, "params": {**fit.params, **(params or {})}}
    for key in drop:
        spec["params"].pop(key, None)
    stored = {k: v for k, v in {**fit.arrays, **(arrays or {})}.items() if k not in drop}
    np.savez(tmp_path / name, **stored, spec=np.array(json.dumps(spec)))
    return tmp_path / name


def test_damaged_or_edited_fits_are_refused_naming_the_file(tmp_path):
    df = _table()
    _, well = subtract_well_mean(df, well="Metadata_Position", features=FEATS, return_fit=True)
    _, count = regress_cell_count(df, cell_count="Metadata_Count_Cells", features=FEATS, min_unique=10,
                                  return_fit=True)
    _, pcs = pca(df, features=FEATS, return_fit=True)
    _, outl = remove_outliers(df, features=FEATS, threshold=5.0, return_fit=True)
    cases = [
        (subtract_well_mean, _edited(tmp_path, well, "w1.npz", drop=("features",)), r"w1\.npz: this "
         r"subtract_well_mean fit records no 'features'"),
        (subtract_well_mean, _edited(tmp_path, well, "w2.npz", params={"wells": well.params["wells"][:-1]}),
         r"w2\.npz: the subtract_well_mean fit's 'means' has shape \(8, 5\), expected \(7, 5\)"),
        (subtract_well_mean, _edited(tmp_path, well, "w3.npz", drop=("means",)), r"w3\.npz: .* no array 'means'"),
        (regress_cell_count, _edited(tmp_path, count, "c1.npz", arrays={"regressed": np.ones(3, bool)}),
         r"c1\.npz: the regress_cell_count fit's 'regressed' has shape \(3,\), expected \(5,\)"),
        (pca, _edited(tmp_path, pcs, "p1.npz", arrays={"components": pcs.arrays["components"][:, :4]}),
         r"p1\.npz: the pca fit's 'components' has shape"),
        (remove_outliers, _edited(tmp_path, outl, "o1.npz", params={"threshold": "5"}),
         r"o1\.npz: remove_outliers: threshold must be a finite number > 0, got '5'"),
        (remove_outliers, _edited(tmp_path, outl, "o2.npz", params={"kept": ["Metadata_Batch"]}),
         r"o2\.npz: the remove_outliers fit keeps 'Metadata_Batch'"),
    ]
    for func, path, message in cases:
        with pytest.raises(ValueError, match=message):
            func(df, fit=path)
    # a pickled object array is never loaded (nothing in it runs), a CSV or a truncated file is not a fit
    np.savez(tmp_path / "pickled.npz", means=np.array([object()], dtype=object),
             spec=np.array(json.dumps({"format": "phenovec.batch.fit", "version": 1, "step": "subtract_well_mean",
                                       "params": well.params})))
    with pytest.raises(ValueError, match=r"pickled\.npz: the batch-correction fit's 'means' is a pickled object"):
        subtract_well_mean(df, fit=tmp_path / "pickled.npz")
    df.to_csv(tmp_path / "table.csv")
    good = tmp_path / "w.npz"
    well.save(good)
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for name in ("table.csv", "cut.npz"):
        with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')} is not a phenovec batch-correction fit "
                                             r"\(not an \.npz archive\)"):
            subtract_well_mean(df, fit=tmp_path / name)
    np.savez(tmp_path / "json.npz", spec=np.array("{not json"))
    with pytest.raises(ValueError, match=r"json\.npz: the batch-correction fit's 'spec' is not JSON"):
        subtract_well_mean(df, fit=tmp_path / "json.npz")


def test_harmony_fit_arrays_checked_against_its_features(tmp_path):
    """A harmony fit whose Symphony reference or spread is of another size than its features: refused naming the
    file (it was blamed on the query: "the query must be n x ...")."""
    from phenovec.batch import harmony

    df = _table(n=240)
    _, fit = harmony(df, features=FEATS, vars_use="Metadata_Batch", nclust=4, mapping_confidence=True,
                     return_fit=True)
    bad_sums = _edited(tmp_path, fit, "h1.npz", arrays={"cluster_sums": fit.arrays["cluster_sums"][:, :4]})
    with pytest.raises(ValueError, match=r"h1\.npz: the harmony fit's 'cluster_sums' has shape \(4, 4\), "
                                         r"expected \(any, 5\)"):
        harmony(df, fit=bad_sums)
    bad_spread = _edited(tmp_path, fit, "h2.npz", arrays={"spread_covariances": fit.arrays["spread_covariances"][:3]})
    with pytest.raises(ValueError, match=r"h2\.npz: the harmony fit's 'spread_covariances' has shape \(3, 5, 5\)"):
        harmony(df, fit=bad_spread)


def test_input_checks_of_the_steps():
    df = _table()
    for bad in (-5, 0, float("nan"), float("inf"), "100", True, np.bool_(True), np.float32(-1)):
        with pytest.raises(ValueError, match="threshold must be a finite number > 0"):
            remove_outliers(df, features=FEATS, threshold=bad)
    plain = remove_outliers(df, features=FEATS, threshold=5)
    for scalar in (np.int64(5), np.float32(5.0)):  # numpy numbers are numbers
        pd.testing.assert_frame_equal(remove_outliers(df, features=FEATS, threshold=scalar), plain)
    inf = df.set_index(pd.Index([f"r{i}" for i in range(len(df))]))
    inf.loc["r9", "Cells_f3"] = np.inf
    with pytest.raises(ValueError, match=r"value inf in row 'r9', feature 'Cells_f3'"):
        subtract_well_mean(inf, features=FEATS)
    inf.loc["r9", "Cells_f3"] = 0.0
    inf.loc["r7", "Metadata_Well"] = None
    with pytest.raises(ValueError, match=r"well position missing in row 'r7'"):
        subtract_well_mean(inf, features=FEATS)
    # an output column that is also a kept input column would leave the table with two of that name
    clash = df.assign(PC1=1.0)
    with pytest.raises(ValueError, match=r"the output column 'PC1' is also a column of the input"):
        pca(clash, features=FEATS)


def test_cli_reapplies_without_the_fitting_filters(tmp_path, capsys):
    """``phenovec process batch tvn|sphere_by_map|arm_correction --fit F`` needs no controls / negcon / background
    (they were required positional arguments: a TypeError traceback)."""
    from phenovec.cli import main

    df = _table(n=240)
    src = tmp_path / "in.csv"
    df.to_csv(src, index=False)
    runs = {
        "tvn": ["controls=Metadata_JCP2022 == 'DMSO'", "batch=Metadata_Batch"],
        "sphere_by_map": ["negcon=Metadata_JCP2022 == 'DMSO'", "method=ZCA-cor", "epsilons=[0.001]"],
        "arm_correction": ["background=Metadata_bg == True", "arm=Metadata_Arm2", "min_genes=5"],
    }
    for step, sets in runs.items():
        fitted, again = tmp_path / f"{step}.csv", tmp_path / f"{step}_again.csv"
        assert main(["process", "batch", step, str(src), "-o", str(fitted), "--save-fit", str(tmp_path / f"{step}.npz"),
                     "--set", f"features={FEATS}", *[a for s in sets for a in ("--set", s)]]) == 0
        assert main(["process", "batch", step, str(src), "-o", str(again), "--fit", str(tmp_path / f"{step}.npz")]) == 0
        pd.testing.assert_frame_equal(pd.read_csv(again), pd.read_csv(fitted))
    capsys.readouterr()
    assert main(["process", "batch", "tvn", str(src), "-o", str(tmp_path / "x.csv")]) != 0
    err = capsys.readouterr().err
    assert "tvn needs controls to fit" in err and "Traceback" not in err


def test_harmony_step_pca_is_exact_and_the_same_each_run():
    """The harmony step's ``n_components`` PCA is a full SVD: sklearn's default took a randomized, unseeded SVD from
    500 rows, so the same table gave another Harmony run each time (seen on the cell-injury plates: coordinates
    differing by up to 82 between two runs)."""
    from sklearn.decomposition import PCA

    from phenovec.batch import harmony

    rng = np.random.default_rng(0)
    n, d = 600, 100
    df = pd.DataFrame({"Metadata_Plate": np.repeat(["P0", "P1", "P2"], n // 3)})
    x = rng.normal(size=(n, d))  # a flat spectrum: a randomized SVD's components vary from run to run
    for j in range(d):
        df[f"Cells_f{j}"] = x[:, j]
    runs = [harmony(df, n_components=5, nclust=6, return_fit=True) for _ in range(2)]
    cols = [f"PC{i}" for i in range(1, 6)]
    pd.testing.assert_frame_equal(runs[0][0][cols], runs[1][0][cols])
    full = PCA(n_components=5, svd_solver="full").fit(x)
    np.testing.assert_allclose(runs[0][1].arrays["pca_components"], full.components_, atol=1e-8)


def test_cli_never_loses_an_input_or_an_output(tmp_path, capsys):
    """--save-fit at the input's or the output's path (the input was overwritten by the fit, and the recorded input
    hash was the fit's; the output then overwrote the fit), a folder at the output path (it was deleted with its
    files), a bad output name (refused only after the work, leaving a fit without its table): refused first."""
    from phenovec.cli import main

    df = _table()
    src = tmp_path / "in.csv"
    df.to_csv(src, index=False)
    before = src.read_bytes()
    for save_fit, out in ((src, tmp_path / "o.csv"), (tmp_path / "x.csv", tmp_path / "x.csv")):
        assert main(["process", "batch", "pca", str(src), "-o", str(out), "--save-fit", str(save_fit),
                     "--set", f"features={FEATS}"]) == 2
        assert "--save-fit" in capsys.readouterr().err and src.read_bytes() == before
    folder = tmp_path / "kept.csv"
    folder.mkdir()
    (folder / "notes.txt").write_text("important")
    assert main(["process", "batch", "pca", str(src), "-o", str(folder), "--set", f"features={FEATS}"]) == 2
    assert (folder / "notes.txt").read_text() == "important" and "is a folder" in capsys.readouterr().err
    assert main(["process", "batch", "pca", str(src), "-o", str(tmp_path / "x.txt"), "--save-fit",
                 str(tmp_path / "p.npz"), "--set", f"features={FEATS}"]) == 2
    assert not (tmp_path / "p.npz").exists() and "cannot tell the output type" in capsys.readouterr().err


def test_cli_argument_checks(tmp_path, capsys):
    from phenovec.cli import main

    df = _table()
    src = tmp_path / "in.csv"
    df.to_csv(src, index=False)
    for sets, message in (
        (["controls=Metadata_note == 'ctl: a'"], "a row filter must be text, got dict"),  # YAML read a mapping
        (["controls=1"], "a row filter must be text, got int"),
    ):
        assert main(["process", "batch", "tvn", str(src), "-o", str(tmp_path / "t.csv"),
                     *[a for s in sets for a in ("--set", s)]]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    with pytest.raises(ValueError, match="no epsilon to try"):
        sphere_by_map(df, negcon="Metadata_JCP2022 == 'DMSO'", epsilons=[], features=FEATS)
    with pytest.raises(ValueError, match="n_epsilons must be a whole number >= 1"):
        sphere_by_map(df, negcon="Metadata_JCP2022 == 'DMSO'", n_epsilons=0, features=FEATS)
    from phenovec.batch import harmony

    for bad in (2.5, True, 0):
        with pytest.raises(ValueError, match="n_components must be a positive whole number"):
            harmony(df, features=FEATS, vars_use="Metadata_Batch", n_components=bad)
