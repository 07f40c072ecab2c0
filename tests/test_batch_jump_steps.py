"""The JUMP profiling recipe's corrections as profile-table steps, each against a brute-force reference."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm, rankdata

from phenovec.batch import (
    arm_correction, pca, rank_int, regress_cell_count, remove_outliers, sphere_by_map, subtract_well_mean,
)
from phenovec.batch.sphering_search import epsilon_grid, map_scores


def _plates(n_plates=3, seed=0, d=5):
    rng = np.random.default_rng(seed)
    wells = [f"{r}{c:02d}" for r in "AB" for c in range(1, 7)]
    rows = []
    for p in range(n_plates):
        for i, w in enumerate(wells):
            pert = "DMSO" if i % 3 == 0 else f"cmp{i % 4}"
            rows.append({"Metadata_Plate": f"P{p}", "Metadata_Well": w, "Metadata_JCP2022": pert,
                         "Cells_Count_Count": int(rng.integers(200, 2000))})
    df = pd.DataFrame(rows)
    x = rng.normal(size=(len(df), d)) * np.array([1, 5, 20, 0.1, 300])
    x[:, 0] += df["Cells_Count_Count"].to_numpy() * 0.01
    for j in range(d):
        df[f"Cells_f{j}"] = x[:, j]
    return df


FEATS = [f"Cells_f{j}" for j in range(5)]


def test_subtract_well_mean_and_reapply(tmp_path):
    df = _plates()
    df.loc[4, "Cells_f1"] = np.nan
    out, fit = subtract_well_mean(df, features=FEATS, return_fit=True)
    ref = df[FEATS] - df.groupby("Metadata_Well")[FEATS].transform("mean")
    np.testing.assert_allclose(out[FEATS].to_numpy(), ref.to_numpy(), atol=1e-12)
    assert np.isnan(out.loc[4, "Cells_f1"])
    fit.save(tmp_path / "w.npz")
    again = subtract_well_mean(df, fit=tmp_path / "w.npz")
    np.testing.assert_array_equal(again[FEATS].to_numpy(), out[FEATS].to_numpy())
    bad = df.copy()
    bad.loc[0, "Metadata_Well"] = "Z99"
    with pytest.raises(KeyError, match="'Z99'"):
        subtract_well_mean(bad, fit=fit)


def test_regress_cell_count_against_least_squares():
    df = _plates(n_plates=10)
    df.loc[7, "Cells_f2"] = np.nan
    out = regress_cell_count(df, features=FEATS, min_unique=50)
    c = df["Cells_Count_Count"].to_numpy(float)
    for f in FEATS:
        y = df[f].to_numpy()
        ok = np.isfinite(y)
        b, a = np.polyfit(c[ok], y[ok], 1)
        ref = np.where(ok, y - (a + b * c), y)
        np.testing.assert_allclose(out[f].to_numpy(), ref, atol=1e-9 * np.nanmax(np.abs(y)))
    assert "Cells_Count_Count" in out.columns and out["Cells_Count_Count"].equals(df["Cells_Count_Count"])
    few = regress_cell_count(df, features=FEATS, min_unique=10**6)  # no feature has that many values: untouched
    np.testing.assert_array_equal(few[FEATS].to_numpy(), df[FEATS].to_numpy())


def test_remove_outliers_drops_and_clips():
    df = _plates(n_plates=30)
    df.loc[0, "Cells_f2"] = 1e4  # one large value: 99th percentile still small for f2
    out, fit = remove_outliers(df, features=FEATS, return_fit=True)
    q = df[FEATS].abs().quantile(0.99)
    kept = [f for f in FEATS if q[f] <= 100]
    assert fit.params["kept"] == kept and "Cells_f4" not in out.columns
    np.testing.assert_array_equal(out[kept].to_numpy(), df[kept].clip(-100, 100).to_numpy())
    assert out["Cells_f2"].max() == 100
    raw = remove_outliers(df, features=FEATS, clip=False)
    assert raw["Cells_f2"].max() == 1e4


@pytest.mark.parametrize("ties", ["average", "stochastic"])
def test_blom_against_norm_ppf(ties):
    df = _plates()
    df["Cells_f3"] = np.round(df["Cells_f3"], 1)  # ties
    out = rank_int(df, features=FEATS, ties=ties)
    n = len(df)
    for f in FEATS:
        v = df[f].to_numpy()
        if ties == "average":
            r = rankdata(v, method="average")
        else:
            perm = np.random.default_rng(0).permutation(n)
            r = rankdata(v[perm], method="ordinal")[np.argsort(perm)]
        np.testing.assert_allclose(out[f].to_numpy(), norm.ppf((r - 3 / 8) / (n + 1 / 4)), atol=1e-12)
    bad = df.copy()
    bad.loc[2, "Cells_f0"] = np.nan
    with pytest.raises(ValueError, match="row 2, column 'Cells_f0'"):
        rank_int(bad, features=FEATS)


def test_pca_98_percent_variance():
    df = _plates(n_plates=8)
    out, fit = pca(df, features=FEATS, return_fit=True)
    x = df[FEATS].to_numpy()
    xc = x - x.mean(axis=0)
    lam, v = np.linalg.eigh(np.cov(xc, rowvar=False))
    lam, v = lam[::-1], v[:, ::-1]
    k = int(np.searchsorted(np.cumsum(lam) / lam.sum(), 0.98, side="right") + 1)
    pcs = [c for c in out.columns if c.startswith("PC")]
    assert len(pcs) == k == fit.params["n_components"]
    np.testing.assert_allclose(np.abs(out[pcs].to_numpy()), np.abs(xc @ v[:, :k]), atol=1e-8 * np.abs(x).max())


def test_sphere_by_map_picks_the_best_epsilon():
    df = _plates(n_plates=4, d=5)
    df[FEATS] = df[FEATS] / df[FEATS].std()
    grid = [1e-4, 1e-1, 10.0]
    out, fit = sphere_by_map(df, negcon="Metadata_JCP2022 == 'DMSO'", features=FEATS, epsilons=grid, return_fit=True)
    scores = pd.DataFrame(fit.params["scores"])
    assert list(scores["epsilon"]) == grid
    assert fit.params["epsilon"] == scores.sort_values(by="score").iloc[-1]["epsilon"]
    # each candidate's score by brute force: sphere on DMSO rows, mAP as the recipe's two mAPs
    from phenovec.process.spherize import Spherizer

    neg = (df["Metadata_JCP2022"] == "DMSO").to_numpy()
    for eps, score in zip(grid, scores["score"]):
        z = Spherizer(method="ZCA", epsilon=eps).fit(df.loc[neg, FEATS]).transform(df[FEATS]).to_numpy()
        s = map_scores(z, df["Metadata_JCP2022"], df["Metadata_Plate"], neg)
        assert s["score"] == pytest.approx(score)
    assert len(epsilon_grid()) == 25 and 1e-5 <= epsilon_grid().min() and epsilon_grid().max() <= 1e3


def test_sphere_by_map_refuses_missing_labels_and_unscorable_tables():
    df = _plates(n_plates=2, d=5)
    kw = dict(negcon="Metadata_JCP2022 == 'DMSO'", features=FEATS, epsilons=[0.1, 1.0])
    for column in ("Metadata_JCP2022", "Metadata_Plate"):
        bad = df.copy()
        bad.loc[4, column] = None  # read as the text 'nan': one more perturbation / plate, another epsilon chosen
        with pytest.raises(ValueError, match=f"column '{column}' is missing .* in row 4"):
            sphere_by_map(bad, **kw)
    single = df.assign(Metadata_JCP2022=[("DMSO" if p == "DMSO" else f"c{i}")
                                          for i, p in enumerate(df["Metadata_JCP2022"])])
    with pytest.raises(ValueError, match="sphere_by_map: no perturbation in 'Metadata_JCP2022' .* 2 or more"):
        sphere_by_map(single, **kw)


def test_constant_feature_is_named_by_sphering_and_normalize():
    """A constant feature under a -cor whitening is refused naming it (the epsilon search and normalize's spherize
    called it 'column 4')."""
    from phenovec.process.normalize import normalize

    df = _plates(n_plates=2, d=5)
    df["Cells_f3"] = 5.0
    with pytest.raises(ValueError, match="constant over the .* fit rows: 'Cells_f3'"):
        sphere_by_map(df, negcon="Metadata_JCP2022 == 'DMSO'", features=FEATS, method="ZCA-cor", epsilons=[0.1])
    with pytest.raises(ValueError, match="constant over the .* fit rows: 'Cells_f3'"):
        normalize(df, features=FEATS, method="spherize", spherize_method="ZCA-cor")
    with pytest.raises(ValueError, match="group Metadata_Plate='P0'.*: 'Cells_f3'"):
        normalize(df, features=FEATS, method="spherize", spherize_method="PCA-cor", by="Metadata_Plate")


def test_arm_correction_subtracts_background_mean():
    rng = np.random.default_rng(3)
    n = 200
    df = pd.DataFrame({"Metadata_arm": rng.choice(["1p", "1q", "2p"], n).astype(object),
                       "Metadata_Symbol": [f"g{i % 60}" for i in range(n)],
                       "Metadata_unexpressed": rng.random(n) < 0.6})
    df.loc[:4, "Metadata_arm"] = None
    for f in FEATS:
        df[f] = rng.normal(size=n)
    out = arm_correction(df, background="Metadata_unexpressed == True", features=FEATS, min_genes=10)
    ref = df[FEATS].to_numpy().copy()
    bg = df["Metadata_unexpressed"].to_numpy()
    for arm in ("1p", "1q", "2p"):
        on = (df["Metadata_arm"] == arm).to_numpy()
        if df.loc[on & bg, "Metadata_Symbol"].nunique() > 10:
            ref[on] -= df.loc[on & bg, FEATS].mean().to_numpy()
    np.testing.assert_allclose(out[FEATS].to_numpy(), ref, atol=1e-12)
    np.testing.assert_array_equal(out.loc[:4, FEATS].to_numpy(), df.loc[:4, FEATS].to_numpy())
    inf = df.copy()
    first_bg = int(np.flatnonzero(bg & (df["Metadata_arm"] == "1p").to_numpy())[0])
    inf.loc[first_bg, "Cells_f2"] = np.inf  # it made every 1p row -1.8e308 (nan_to_num), silently
    with pytest.raises(ValueError, match=f"value inf in background row {first_bg}, feature 'Cells_f2'"):
        arm_correction(inf, background="Metadata_unexpressed == True", features=FEATS, min_genes=10)
    none = arm_correction(df, background="Metadata_unexpressed == True", features=FEATS, min_genes=1000)
    np.testing.assert_array_equal(none[FEATS].to_numpy(), df[FEATS].to_numpy())


def test_batch_steps_run_in_a_recipe_and_bad_filters_are_refused_when_read(tmp_path):
    """The batch steps are recipe steps (phenovec process): tvn with its controls filter runs from a recipe, and a
    malformed filter in any filter argument is refused when the recipe is read."""
    import numpy as np
    import pandas as pd
    import pytest

    from phenovec.process.recipe import Recipe, apply_recipe

    rng = np.random.default_rng(0)
    n = 60
    df = pd.DataFrame({"Metadata_Plate": np.repeat(["P1", "P2", "P3"], n // 3),
                       "Metadata_pert_type": np.tile(["negcon", "trt", "trt", "trt"], n // 4)})
    for j in range(6):
        df[f"f{j}"] = rng.normal(size=n) + (df["Metadata_Plate"] == "P2") * 2.0
    out = apply_recipe({"name": "t", "steps": [{"tvn": {"controls": "Metadata_pert_type == 'negcon'",
                                                         "batch": "Metadata_Plate"}}]}, df)
    assert len(out) == n and np.isfinite(out.filter(regex="^(?!Metadata_)").to_numpy(dtype=float)).all()
    with pytest.raises(ValueError, match=r"recipe step 1 \(tvn\) controls"):
        Recipe.from_obj([{"tvn": {"controls": "Metadata_pert_type === 'negcon'"}}])


@pytest.mark.parametrize("hop", ["memory", "parquet", "zarr", "cli-zarr"])
def test_steps_after_a_pca_take_its_components_not_the_kept_columns(tmp_path, hop):
    """After a step that outputs PC1.., the table's other columns (a numeric class code, CellProfiler columns the
    step was not given) are kept; the next step's inference took them for its features and rank-transformed the class
    code. The PCs are now declared (in memory, and in Parquet / AnnData files)."""
    from phenovec.cli import main
    from phenovec.io.profiles import read_table, write_profiles

    df = _plates(n_plates=4, d=5)
    df["injury_code"] = np.arange(len(df)) % 3  # an annotation without the Metadata_ prefix
    df["Cells_extra"] = np.linspace(0, 1, len(df))  # a feature the pca below is not given
    feats = FEATS[:4]
    if hop == "cli-zarr":
        write_profiles(df, tmp_path / "in.parquet")
        assert main(["process", "batch", "pca", str(tmp_path / "in.parquet"), "-o", str(tmp_path / "pcs.zarr"),
                     "--set", f"features={feats}", "--quiet"]) in (0, None)
        pcs = read_table(tmp_path / "pcs.zarr")
    else:
        pcs = pca(df, features=feats)
        if hop != "memory":
            pcs = read_table(write_profiles(pcs, tmp_path / f"pcs.{hop}"))
    names = [c for c in pcs.columns if c.startswith("PC")]
    pcs = subtract_well_mean(pcs)  # a step that keeps its names carries the declaration on (pd.concat dropped it)
    if hop in ("parquet", "zarr"):
        pcs = read_table(write_profiles(pcs, tmp_path / f"swm.{hop}"))
    out = rank_int(pcs)
    np.testing.assert_array_equal(out["injury_code"].to_numpy(), df["injury_code"].to_numpy())
    np.testing.assert_array_equal(out["Cells_extra"].to_numpy(), df["Cells_extra"].to_numpy())
    assert not np.array_equal(out[names].to_numpy(), pcs[names].to_numpy())  # the PCs were transformed


def test_a_declaration_is_stale_once_a_column_is_added(tmp_path):
    """A PCA output read back, a new feature column added, written again (by pandas, which keeps attrs too): the
    declaration no longer says which columns are features, so it is not used (the new column was ignored)."""
    from phenovec.io.profiles import declared_features, read_table, write_profiles

    pcs = read_table(write_profiles(pca(_plates(n_plates=4, d=5), features=FEATS[:4]), tmp_path / "p.parquet"))
    assert declared_features(pcs) == [c for c in pcs.columns if c.startswith("PC")]
    assert declared_features(pcs.assign(Metadata_note="x")) is not None  # metadata may be added
    grown = pcs.assign(Cells_new=1.0)
    assert declared_features(grown) is None
    grown.to_parquet(tmp_path / "g.parquet")
    assert declared_features(read_table(tmp_path / "g.parquet")) is None
    write_profiles(grown, tmp_path / "g2.parquet")
    assert declared_features(read_table(tmp_path / "g2.parquet")) is None


def test_anndata_output_keeps_annotations_out_of_x(tmp_path):
    """A same-name step's AnnData output from the CLI put every numeric non-Metadata column (a class code) into X,
    so the next step read it as a feature; X now holds the features the steps infer (the API wrote it so)."""
    import anndata as ad

    from phenovec.cli import main
    from phenovec.io.profiles import write_profiles

    df = _plates(n_plates=3, d=5)
    df["injury_code"] = np.arange(len(df)) % 3
    write_profiles(df, tmp_path / "in.parquet")
    assert main(["process", "batch", "rank_int", str(tmp_path / "in.parquet"), "-o", str(tmp_path / "o.zarr"),
                 "--quiet"]) in (0, None)
    adata = ad.read_zarr(tmp_path / "o.zarr")
    assert "injury_code" in adata.obs.columns and "injury_code" not in adata.var_names
    assert set(adata.var_names) == set(FEATS) | {"Cells_Count_Count"}


def test_steps_keep_a_float32_table_float32():
    """Steps compute in float64; a float32 table's features come back float32 (they were upcast, doubling memory
    and file size), equal to the float64 computation rounded once."""
    df = _plates(n_plates=3, d=5)
    df32 = df.astype({f: np.float32 for f in FEATS})
    for step in (subtract_well_mean, rank_int):
        got = step(df32, features=FEATS)
        want = step(df32.astype({f: np.float64 for f in FEATS}), features=FEATS)
        assert all(got[f].dtype == np.float32 for f in FEATS)
        np.testing.assert_array_equal(got[FEATS].to_numpy(), want[FEATS].to_numpy().astype(np.float32))


def test_pca_of_a_float32_table_projects_straight_to_float32():
    """The float32 scores come slab by slab (no float64 scores table), equal to the float64 scores rounded once."""
    import importlib

    bp = importlib.import_module("phenovec.batch.pca")  # the module (phenovec.batch.pca is also the step)

    df = _plates(n_plates=8, d=5)
    df32 = df.astype({f: np.float32 for f in FEATS})
    old = bp._SLAB_ROWS
    bp._SLAB_ROWS = 7  # several slabs, a ragged last one
    try:
        got, fit = pca(df32, features=FEATS, return_fit=True)
    finally:
        bp._SLAB_ROWS = old
    pcs = [c for c in got.columns if c.startswith("PC")]
    assert all(got[c].dtype == np.float32 for c in pcs)
    x = df32[FEATS].to_numpy(np.float64)
    want = ((x - fit.arrays["mean"]) @ fit.arrays["components"].T).astype(np.float32)
    np.testing.assert_array_equal(got[pcs].to_numpy(), want)
