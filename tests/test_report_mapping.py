"""The report's mapping section (phenovec.report.mapping): wells mapped onto a Harmony fit with the harmony step's
mapping_confidence, read within their plate."""
import numpy as np
import pandas as pd
import pytest

from phenovec.report import build_report
from phenovec.report.mapping import COLUMN, TOP
from test_report import NULL, _strict_json, synthetic


def _mapped(seed=0):
    """The synthetic report table with a mapping distance: plate P2 offset (all its wells x 5, so its ordinary
    wells are further than P1's far ones), one treatment far from the reference (x 4 its plate's controls)."""
    df = synthetic(seed=seed)
    rng = np.random.default_rng(seed)
    dist = rng.uniform(2.0, 3.0, len(df)) * np.where(df["Metadata_Plate"] == "P2", 5.0, 1.0)
    far = (df["Metadata_Treatment"] == "moa1-t0").to_numpy()
    dist[far] *= 4.0
    df.insert(4, COLUMN, dist)
    return df, far


def test_section_reads_distances_within_each_plate(tmp_path):
    df, far = _mapped()
    paths = build_report(df, tmp_path / "rep", null_size=NULL, batch_effects=False)
    doc = _strict_json(paths.json)
    sec = doc["mapping"]
    assert sec["column"] == COLUMN
    plates = {r["plate"]: r for r in sec["per_plate"]}
    for p in ("P1", "P2"):
        g = df[df["Metadata_Plate"] == p]
        base = g.loc[g["Metadata_Control"], COLUMN].median()
        assert plates[p]["baseline_distance"] == pytest.approx(base, rel=1e-12)
        assert plates[p]["controls"] == 4 and plates[p]["wells"] == len(g)
        treated = g.loc[~g["Metadata_Control"], COLUMN]
        assert plates[p]["treated_over_2x"] == int((treated > 2 * base).sum())
    # the far treatment's wells lead the list on both plates, although P2's offset raises every P2 distance
    top = sec["top"]
    assert len(top) == TOP
    assert {r["treatment"] for r in top[:int(far.sum())]} == {"moa1-t0"}
    assert {r["plate"] for r in top[:int(far.sum())]} == {"P1", "P2"}
    for r in top:
        g = df[df["Metadata_Plate"] == r["plate"]]
        assert r["ratio"] == pytest.approx(r["distance"] / g.loc[g["Metadata_Control"], COLUMN].median(), rel=1e-12)
    page = paths.html.read_text()
    assert "Mapping onto the reference" in page and "mapping_distance" in doc["figures"]
    # the distance is metadata: the profiles' features (and so every other metric) are unchanged
    plain = _strict_json(build_report(df.drop(columns=COLUMN), tmp_path / "plain", null_size=NULL,
                                      batch_effects=False).json)
    assert plain["mapping"] is None and "mapping_distance" not in plain["figures"]
    assert plain["replicate_map"] == doc["replicate_map"]


def test_plate_without_controls_and_bad_distances(tmp_path):
    df, _ = _mapped(seed=1)
    df = df[~((df["Metadata_Plate"] == "P2") & df["Metadata_Control"])].reset_index(drop=True)
    sec = _strict_json(build_report(df, tmp_path / "rep", null_size=NULL, batch_effects=False).json)["mapping"]
    p2 = {r["plate"]: r for r in sec["per_plate"]}["P2"]
    assert p2["controls"] == 0 and p2["baseline"] == "all wells' median (no controls)"
    assert p2["baseline_distance"] == pytest.approx(df.loc[df["Metadata_Plate"] == "P2", COLUMN].median())
    bad = df.astype({COLUMN: object})
    bad.loc[7, COLUMN] = "n/a"
    with pytest.raises(ValueError, match=f"{COLUMN} is 'n/a' at row 7"):
        build_report(bad, tmp_path / "bad", null_size=NULL, batch_effects=False)
    negative = df.copy()
    negative.loc[3, COLUMN] = -0.5
    with pytest.raises(ValueError, match=f"{COLUMN} is -0.5 at row 3: .* finite number >= 0"):
        build_report(negative, tmp_path / "neg", null_size=NULL, batch_effects=False)



def test_zero_control_median_numeric_plates_and_missing_plate_labels(tmp_path):
    """Controls whose median distance is 0 (the plate's wells had no ratio and vanished from the figure and the
    list): the plate's own median instead; plates 1, 2, 10 in numeric order (they sorted as 1, 10, 2); a well
    without a plate label left out, noted (it was a plate called 'nan')."""
    df, far = _mapped(seed=2)
    plates = df["Metadata_Plate"].map({"P1": 10, "P2": 2}).astype(object)
    plates.iloc[::7] = 1  # a third plate, labelled 1
    df["Metadata_Plate"] = plates
    two = (df["Metadata_Plate"] == 2) & df["Metadata_Control"]
    df.loc[two, COLUMN] = 0.0
    df.loc[df.index[3], "Metadata_Plate"] = None
    doc = _strict_json(build_report(df, tmp_path / "rep", null_size=NULL, batch_effects=False).json)
    sec = doc["mapping"]
    assert [r["plate"] for r in sec["per_plate"]] == ["1", "2", "10"]
    p2 = {r["plate"]: r for r in sec["per_plate"]}["2"]
    g = df[df["Metadata_Plate"] == 2]
    assert p2["baseline"] == "all wells' median (control median 0)"
    assert p2["baseline_distance"] == pytest.approx(g[COLUMN].median(), rel=1e-12) and p2["baseline_distance"] > 0
    assert any(r["plate"] == "2" for r in sec["top"])  # its far wells are listed
    assert sum(r["wells"] for r in sec["per_plate"]) == len(df) - 1
    assert any("1 well(s) without a plate label" in n for n in doc["notes"])


def test_aggregate_keeps_the_mapping_distance_per_well(tmp_path):
    """Cells mapped before they are aggregated (a run's recipe): the distance survives, aggregated as the features
    are (each well's median or mean), in memory and streamed from a file (the first step of a recipe), so the
    report's section still appears (aggregate dropped it with the other per-cell metadata)."""
    from phenovec.process.aggregate import aggregate, aggregate_stream
    from phenovec.process.recipe import apply_recipe

    rng = np.random.default_rng(0)
    cells = pd.DataFrame({"Metadata_Plate": np.repeat(["P1", "P2"], 30), "Metadata_Well": np.tile(np.repeat(
        ["A01", "A02", "A03"], 10), 2), COLUMN: rng.uniform(1, 5, 60), "Cells_a": rng.normal(size=60)})
    shuffled = cells.sample(frac=1.0, random_state=1)  # groups not contiguous: the median spills to buckets
    shuffled.to_parquet(tmp_path / "cells.parquet")
    for operation in ("median", "mean"):
        want = cells.groupby(["Metadata_Plate", "Metadata_Well"])[COLUMN].agg(operation).to_numpy()
        for wells in (aggregate(cells, operation=operation), aggregate_stream(cells, operation=operation),
                      aggregate_stream(tmp_path / "cells.parquet", operation=operation, batch_rows=7),
                      apply_recipe([{"aggregate": {"operation": operation}}], tmp_path / "cells.parquet")):
            wells = wells.sort_values(["Metadata_Plate", "Metadata_Well"])
            np.testing.assert_allclose(wells[COLUMN].to_numpy(), want, rtol=1e-14)
            assert list(wells.columns) == ["Metadata_Plate", "Metadata_Well", COLUMN, "Cells_a"]
    assert COLUMN not in aggregate(cells.drop(columns=COLUMN)).columns
