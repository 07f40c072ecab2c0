"""annotate (vs pycytominer 1.7.1), recipes (YAML -> chained steps == the same pycytominer chain) and provenance."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pycytominer
import pytest

from phenovec.io.profiles import read_profile_metadata
from phenovec.process.annotate import annotate
from phenovec.process.recipe import Recipe, apply_recipe, input_sha256, packaged_recipes

from conftest import SHARED_DATA

PLATEMAP_DIR = SHARED_DATA / "lincs-cell-painting-metadata" / "platemaps_2016_04_01_a549_48hr_batch1" / "platemap"
DMSO = "Metadata_compound == 'DMSO'"


@pytest.fixture(scope="module")
def wells(lincs_plate):
    """The LINCS plate's wells with its platemap columns removed, to be put back by annotate."""
    keep = ["Metadata_Plate", "Metadata_Well"] + [c for c in lincs_plate.columns if not c.startswith("Metadata_")]
    return lincs_plate[keep].copy()


def test_annotate_equals_pycytominer(wells, tmp_path):
    pm_path = sorted(PLATEMAP_DIR.glob("*.txt"))[0]
    pm = pd.read_csv(pm_path, sep="\t")
    w = wells.copy()
    w["Metadata_Well"] = pm["well_position"].iloc[: len(w)].to_numpy()  # a well layout the platemap covers
    ext = pd.DataFrame({"broad_sample": pm["broad_sample"].dropna().unique()[:20]})
    ext["moa_note"] = "moa_" + ext.index.astype(str)
    for kw in ({}, {"external_metadata": ext, "external_join_on": ["Metadata_broad_sample"]}):
        ours = annotate(w, pm_path, join_on=["Metadata_well_position", "Metadata_Well"], **kw)
        peer = pycytominer.annotate(w, str(pm_path), join_on=["Metadata_well_position", "Metadata_Well"], **kw)
        pd.testing.assert_frame_equal(ours.reset_index(drop=True), peer.reset_index(drop=True))
    with pytest.raises(KeyError, match="Metadata_nope"):
        annotate(w, pm_path, join_on=["Metadata_nope", "Metadata_Well"])
    with pytest.raises(FileNotFoundError, match="platemap"):
        annotate(w, tmp_path / "missing.txt")
    w2 = w.copy()
    w2.loc[0, "Metadata_Well"] = "Z99"
    with pytest.warns(UserWarning, match="1 profile rows match no platemap row"):
        assert len(annotate(w2, pm_path)) == len(w2) - 1


def _bbbc_recipe():
    return {
        "name": "bbbc021-test",
        "steps": [
            {"normalize": {"method": "mad_robustize", "samples": DMSO, "by": "Metadata_Plate"}},
            {"feature_select": {"operation": ["variance_threshold", "correlation_threshold", "drop_na_columns"]}},
            {"spherize": {"method": "ZCA-cor", "samples": DMSO}},
            {"consensus": {"replicate_columns": ["Metadata_compound", "Metadata_concentration"], "operation": "median"}},
        ],
    }


def _pycytominer_chain(df):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        normed = pd.concat([pycytominer.normalize(g, samples=DMSO, method="mad_robustize")
                            for _, g in df.groupby("Metadata_Plate", sort=False)]).loc[df.index]
        sel = pycytominer.feature_select(normed, operation=["variance_threshold", "correlation_threshold",
                                                            "drop_na_columns"])
        sph = pycytominer.normalize(sel, samples=DMSO, method="spherize", spherize_method="ZCA-cor")
        return pycytominer.consensus(sph, replicate_columns=["Metadata_compound", "Metadata_concentration"],
                                     operation="median")


def test_recipe_equals_the_pycytominer_chain_and_records_provenance(bbbc021, tmp_path):
    import yaml

    df = bbbc021.reset_index(drop=True)
    src = tmp_path / "wells.parquet"
    df.to_parquet(src)
    rpath = tmp_path / "recipe.yaml"
    rpath.write_text(yaml.safe_dump(_bbbc_recipe()))
    out = tmp_path / "profiles.parquet"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = apply_recipe(rpath, src, out, progress=False)
    peer = _pycytominer_chain(df)
    assert list(ours.columns) == list(peer.columns)
    key = ["Metadata_compound", "Metadata_concentration"]
    a = ours.sort_values(key).reset_index(drop=True)
    b = peer.sort_values(key).reset_index(drop=True)
    feats = [c for c in a.columns if not c.startswith("Metadata_")]
    np.testing.assert_allclose(a[feats].to_numpy(), b[feats].to_numpy(), atol=1e-6, rtol=0)
    prov = read_profile_metadata(out)
    assert prov["recipe"] == Recipe.from_obj(_bbbc_recipe()).to_dict()
    assert prov["recipe_sha256"] == Recipe.load(rpath).sha256()
    assert prov["input_sha256"] == input_sha256(src)
    assert [s["step"] for s in prov["steps"]] == ["normalize", "feature_select", "spherize", "consensus"]
    assert prov["steps"][-1]["rows"] == len(peer)
    # the input hash follows the bytes
    df.iloc[:-1].to_parquet(tmp_path / "other.parquet")
    assert input_sha256(tmp_path / "other.parquet") != prov["input_sha256"]


def test_recipe_streams_a_first_aggregate_step(tmp_path):
    rng = np.random.default_rng(0)
    n = 3000
    cells = pd.DataFrame({"Metadata_Plate": rng.choice(["p1", "p2"], n), "Metadata_Well": rng.choice(["A01", "A02", "B01"], n)})
    for i in range(6):
        cells[f"emb_{i}"] = rng.normal(size=n)
    cells.to_parquet(tmp_path / "cells.parquet")
    r = {"steps": [{"aggregate": {"strata": ["Metadata_Plate", "Metadata_Well"], "operation": "mean",
                                  "features": [f"emb_{i}" for i in range(6)]}}]}
    streamed = apply_recipe(r, tmp_path / "cells.parquet", tmp_path / "wells.csv", progress=False)
    peer = pycytominer.aggregate(cells, strata=["Metadata_Plate", "Metadata_Well"],
                                 features=[f"emb_{i}" for i in range(6)], operation="mean")
    pd.testing.assert_frame_equal(streamed.reset_index(drop=True), peer.reset_index(drop=True), rtol=1e-12)
    assert (tmp_path / "wells.csv").exists()


def test_packaged_recipes_parse():
    names = packaged_recipes()
    assert {"lincs-cellprofiler", "deepprofiler-embeddings"} <= set(names)
    for name in names:
        r = Recipe.load(name)
        assert r.steps and r.steps[0][0] == "aggregate"


@pytest.mark.parametrize("bad, msg", [
    ({"steps": []}, "non-empty"),
    ({"steps": [{"normalise": {}}]}, "step 1: unknown step 'normalise'"),
    ({"steps": [{"normalize": {"method": "standardize"}}, {"spherize": [1, 2]}]}, r"step 2 \(spherize\): arguments must be a mapping"),
    ({"steps": [{"normalize": {"output_file": "x.csv"}}]}, "set by the recipe runner"),
    ({"name": "x", "stpes": []}, "unknown key 'stpes'"),
])
def test_bad_recipes_name_the_step(bad, msg):
    with pytest.raises(ValueError, match=msg):
        Recipe.from_obj(bad)


def test_recipe_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="packaged recipes"):
        Recipe.load(tmp_path / "nope.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("steps: [normalize: {method: [}")
    with pytest.raises(ValueError, match="not valid YAML"):
        Recipe.load(p)


def test_cli_process_run_and_single_steps(bbbc021, tmp_path, capsys):
    import yaml

    from phenovec.cli import main

    src = tmp_path / "wells.parquet"
    bbbc021.to_parquet(src)
    rpath = tmp_path / "r.yaml"
    rpath.write_text(yaml.safe_dump({"steps": [{"normalize": {"method": "standardize", "samples": DMSO}}]}))
    assert main(["process", "run", str(rpath), str(src), "-o", str(tmp_path / "o.h5ad")]) == 0
    prov = json.loads(capsys.readouterr().out)
    assert prov["recipe_sha256"] == Recipe.load(rpath).sha256()
    import anndata as ad

    a = ad.read_h5ad(tmp_path / "o.h5ad")
    assert a.n_obs == len(bbbc021) and "Metadata_moa" in a.obs.columns
    # normalize with a saved fit, then re-applied to the same input: identical output
    assert main(["process", "normalize", str(src), "-o", str(tmp_path / "n1.parquet"), "--method", "mad_robustize",
                 "--samples", DMSO, "--by", "Metadata_Plate", "--save-fit", str(tmp_path / "fit.npz")]) == 0
    assert main(["process", "normalize", str(src), "-o", str(tmp_path / "n2.parquet"), "--method", "mad_robustize",
                 "--fit", str(tmp_path / "fit.npz")]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "n1.parquet"), pd.read_parquet(tmp_path / "n2.parquet"))
    assert main(["process", "normalize", str(src), "-o", str(tmp_path / "n3.parquet"), "--samples", "Metadata_moa == 'nope'"]) == 2
    assert "matches no row" in capsys.readouterr().err


def test_cli_every_step_equals_the_python_call(bbbc021, tmp_path, capsys):
    """Each `phenovec process` subcommand writes what the function of the same name returns."""
    from phenovec.cli import main
    from phenovec.process import aggregate, consensus, feature_select, normalize, spherize

    df = bbbc021[bbbc021["Metadata_Plate"].isin(sorted(bbbc021["Metadata_Plate"].unique())[:12])].reset_index(drop=True)
    src = tmp_path / "wells.parquet"
    df.to_parquet(src)
    feats = [c for c in df.columns if not c.startswith("Metadata_")][:60]
    sel = df[[c for c in df.columns if c.startswith("Metadata_")] + feats]
    sel_src = tmp_path / "sel.parquet"
    sel.to_parquet(sel_src)

    def run(*args):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}.parquet"
        assert main(["process", *args[:1], str(args[1]), "-o", str(out), *args[2:]]) == 0, capsys.readouterr().err
        return pd.read_parquet(out)

    got = run("aggregate", src, "--strata", "Metadata_compound", "--operation", "mean", "--features", *feats)
    pd.testing.assert_frame_equal(got, aggregate(df, strata=["Metadata_compound"], features=feats, operation="mean"))
    got = run("feature-select", sel_src, "--operation", "variance_threshold", "correlation_threshold")
    pd.testing.assert_frame_equal(got, feature_select(sel, operation=["variance_threshold", "correlation_threshold"]))
    got = run("spherize", sel_src, "--samples", DMSO, "--method", "ZCA")
    pd.testing.assert_frame_equal(got, spherize(sel, samples=DMSO, method="ZCA"))
    got = run("consensus", sel_src, "--replicate-columns", "Metadata_compound", "Metadata_concentration",
              "--operation", "modz")
    pd.testing.assert_frame_equal(got, consensus(sel, replicate_columns=["Metadata_compound", "Metadata_concentration"],
                                                 operation="modz"))
    got = run("normalize", sel_src, "--method", "robustize", "--samples", DMSO, "--by", "Metadata_Plate", "--stream")
    pd.testing.assert_frame_equal(got, normalize(sel, method="robustize", samples=DMSO, by="Metadata_Plate")
                                  .reset_index(drop=True))


# ---- the recipe CLI: recipes / show / run --set / --platemap --------------------------------------------------

def _cells_and_platemap(tmp_path, seed=0):
    rng = np.random.default_rng(seed)
    wells = [f"{r}{c:02d}" for r in "AB" for c in range(1, 13)]
    pm = pd.DataFrame({"well_position": wells,
                       "broad_sample": ["DMSO" if i % 2 == 0 else f"BRD-{i % 6}" for i in range(len(wells))],
                       "mmoles_per_liter": [0.0 if i % 2 == 0 else 10.0 for i in range(len(wells))]})
    rows = []
    for plate in ("P1", "P2"):
        for w in wells:
            for cell in range(3):
                rows.append({"Metadata_Plate": plate, "Metadata_Well": w, "Metadata_ObjectNumber": cell + 1,
                             **{f"Cells_F{j}": rng.normal(j, 1 + j / 3) for j in range(5)}})
    cells = pd.DataFrame(rows)
    cells_path = tmp_path / "cells.parquet"
    cells.to_parquet(cells_path, index=False)
    pm_path = tmp_path / "maps" / "plate-map.txt"
    pm_path.parent.mkdir()
    pm.to_csv(pm_path, sep="\t", index=False)
    return cells_path, pm_path


def test_cli_recipes_and_show(capsys):
    from phenovec.cli import main

    assert main(["process", "recipes"]) in (0, None)
    listing = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in listing]
    assert names == sorted(packaged_recipes())
    assert all(len(line.split(None, 1)) == 2 for line in listing)  # every recipe has a one-line description
    for name, path in packaged_recipes().items():
        assert main(["process", "show", name]) in (0, None)
        assert capsys.readouterr().out == path.read_text()
        assert Recipe.load(name).description
    assert main(["process", "show", "no-such-recipe"]) == 2
    assert "lincs-cellprofiler" in capsys.readouterr().err


def test_lincs_recipe_needs_a_platemap_option(tmp_path, capsys, monkeypatch):
    from phenovec.cli import main

    cells, pm = _cells_and_platemap(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "platemap.txt").write_text("well_position\tbroad_sample\n")  # never read: nothing is assumed
    out = tmp_path / "profiles.parquet"
    assert main(["process", "run", "lincs-cellprofiler", str(cells), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--platemap" in err and "annotate.platemap" in err
    assert not out.exists()
    with pytest.raises(ValueError, match="annotate.platemap"):
        apply_recipe("lincs-cellprofiler", cells)
    # --platemap and --set annotate.platemap are the same thing; both equal the Python chain
    assert main(["process", "run", "lincs-cellprofiler", str(cells), "-o", str(out), "--platemap", str(pm),
                 "--set", "normalize.samples=Metadata_broad_sample == 'DMSO'", "--quiet"]) in (0, None)
    a = pd.read_parquet(out)
    out2 = tmp_path / "profiles2.parquet"
    assert main(["process", "run", "lincs-cellprofiler", str(cells), "-o", str(out2), "--quiet",
                 "--set", f"annotate.platemap={pm}"]) in (0, None)
    pd.testing.assert_frame_equal(pd.read_parquet(out2), a)
    r = Recipe.load("lincs-cellprofiler", overrides=[("annotate.platemap", str(pm))])
    pd.testing.assert_frame_equal(apply_recipe(r, cells, progress=False).reset_index(drop=True), a)
    assert set(a["Metadata_broad_sample"]) == {"DMSO", "BRD-1", "BRD-3", "BRD-5"}
    prov = read_profile_metadata(out)
    assert prov["recipe"]["steps"][1]["annotate"]["platemap"] == str(pm)


def test_set_overrides_and_unknown_keys():
    r = Recipe.load("lincs-cellprofiler", overrides=[
        "normalize.method=robustize", "steps.6.operation=median", "feature_select.corr_threshold=0.8",
        "aggregate.strata=[Metadata_Plate, Metadata_Well, Metadata_Site]", "consensus.modz_args.method=spearman",
        "name=mine", "spherize.epsilon=1e-5"])
    steps = dict(r.steps)
    assert steps["normalize"]["method"] == "robustize"
    assert steps["consensus"]["operation"] == "median" and steps["consensus"]["modz_args"] == {"method": "spearman"}
    assert steps["feature_select"]["corr_threshold"] == 0.8 and isinstance(steps["spherize"]["epsilon"], float)
    assert steps["aggregate"]["strata"] == ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    assert r.name == "mine"
    assert dict(Recipe.load("lincs-cellprofiler").steps)["normalize"]["method"] == "mad_robustize"  # a copy
    for bad, match in [("normalize.metod=x", r"normalize\.metod.*no argument 'metod'"),
                       ("normalise.method=x", r"unknown key 'normalise'"),
                       ("annotate=x", r"name an argument"),
                       ("steps.9.method=x", r"steps\.9"),
                       ("normalize.method", r"KEY=VALUE"),
                       ("normalize.method.deeper=x", r"normalize\.method\.deeper.*not a mapping")]:
        with pytest.raises(ValueError, match=match):
            Recipe.load("lincs-cellprofiler", overrides=[bad])


def test_a_steps_error_names_the_step_and_unknown_arguments_are_refused_when_read():
    import numpy as np
    import pandas as pd
    import pytest

    from phenovec.process.recipe import Recipe, apply_recipe

    df = pd.DataFrame({"Metadata_Plate": ["P1", "P2"] * 10, "Cells_a": np.arange(20.0), "Cells_b": np.ones(20)})
    with pytest.raises(KeyError, match=r"recipe 't', step 2 \(harmony\): vars_use: unknown column 'Metadata_Batch'"):
        apply_recipe({"name": "t", "steps": [{"rank_int": {}}, {"harmony": {"vars_use": "Metadata_Batch"}}]}, df)
    with pytest.raises(ValueError, match=r"recipe step 1 \(remove_outliers\): unknown argument 'treshold'"):
        Recipe.from_obj([{"remove_outliers": {"treshold": 5}}])
    # aggregate's streaming arguments (it runs as aggregate_stream first on a file) are arguments of the step
    Recipe.from_obj([{"aggregate": {"batch_rows": 1000, "memory_budget_bytes": 1 << 20}}])
    # ... and an aggregate that runs in memory (not first, or on a DataFrame) ignores them instead of failing
    cells = pd.DataFrame({"Metadata_Plate": ["P"] * 4, "Metadata_Well": ["A", "A", "B", "B"], "Cells_a": np.arange(4.0)})
    for steps in ([{"aggregate": {"batch_rows": 100}}], [{"rank_int": {}}, {"aggregate": {"batch_rows": 100}}]):
        assert len(apply_recipe(steps, cells)) == 2
