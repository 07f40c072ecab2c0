"""``phenovec process STEP A B ...``: several inputs (e.g. a sharded run's per-plate tables) read one after another
equal the step on the one concatenated table, streamed or in memory."""
import numpy as np
import pandas as pd
import pytest

from phenovec.cli import main


def _tables(tmp_path):
    rng = np.random.default_rng(0)
    parts = []
    for plate in ("P1", "P2"):
        n = 24
        df = pd.DataFrame({"Metadata_Plate": plate, "Metadata_Well": [f"W{i % 6}" for i in range(n)],
                           "Metadata_Treatment": ["DMSO" if i % 6 < 2 else f"T{i % 6}" for i in range(n)]})
        feats = pd.DataFrame(rng.normal(size=(n, 4)) + (plate == "P2"), columns=[f"f{i}" for i in range(4)])
        parts.append(pd.concat([df, feats], axis=1))
    paths = []
    for i, p in enumerate(parts):
        paths.append(tmp_path / f"part{i}.parquet")
        p.to_parquet(paths[-1])
    whole = tmp_path / "whole.parquet"
    pd.concat(parts, ignore_index=True).to_parquet(whole)
    return [str(p) for p in paths], str(whole)


@pytest.mark.parametrize("step,extra", [
    ("aggregate", ["--strata", "Metadata_Plate", "Metadata_Well", "--operation", "median"]),
    ("normalize", ["--method", "standardize", "--samples", "Metadata_Treatment == 'DMSO'"]),
    ("normalize", ["--method", "standardize", "--stream"]),
])
def test_several_inputs_equal_the_concatenated_table(tmp_path, step, extra):
    parts, whole = _tables(tmp_path)
    assert main(["process", step, *parts, "-o", str(tmp_path / "many.parquet"), *extra, "--quiet"]) == 0
    assert main(["process", step, whole, "-o", str(tmp_path / "one.parquet"), *extra, "--quiet"]) == 0
    many = pd.read_parquet(tmp_path / "many.parquet")
    one = pd.read_parquet(tmp_path / "one.parquet")
    pd.testing.assert_frame_equal(many.reset_index(drop=True), one.reset_index(drop=True), check_exact=False,
                                  rtol=1e-12, atol=1e-12)


def test_process_run_recipe_on_several_inputs(tmp_path):
    parts, whole = _tables(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nsteps:\n  - normalize: {method: standardize, samples: \"Metadata_Treatment == 'DMSO'\","
                      " features: [f0, f1, f2, f3]}\n  - aggregate: {strata: [Metadata_Plate, Metadata_Well],"
                      " features: [f0, f1, f2, f3]}\n")
    assert main(["process", "run", str(recipe), *parts, "-o", str(tmp_path / "many.parquet"), "--quiet"]) == 0
    assert main(["process", "run", str(recipe), whole, "-o", str(tmp_path / "one.parquet"), "--quiet"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "many.parquet"), pd.read_parquet(tmp_path / "one.parquet"))
