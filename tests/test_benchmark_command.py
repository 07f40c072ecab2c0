"""``phenovec bench`` (phenovec.benchmark): one --quick run on the synthetic plate gives a record with every stage's
rate, median and repeats and a PNG; --compare puts two records side by side; bad records are named errors."""
from __future__ import annotations

import argparse
import copy
import json
import statistics

import pytest

from phenovec.benchmark.command import add_parser
from phenovec.benchmark.record import read_record


def _args(*argv):
    ap = argparse.ArgumentParser()
    add_parser(ap.add_subparsers())
    return ap.parse_args(["bench", *argv])


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "a.json"
    a = _args("--quick", "--out", str(out), "--name", "machine A", "--quiet")
    res = a.run(a)
    return out, res


def test_quick_record_has_every_stage_with_median_and_repeats(quick):
    out, res = quick
    record = read_record(out)
    assert record == json.loads(out.read_text())
    stages = record["stages"]
    for name in ("decode", "crop", "model[cpu fp32]", "pipeline", "eval_gemm_bound", "eval_map"):
        st = stages[name]
        assert st["repeats"] == len(st["times_s"]) == 2, name
        assert st["median_s"] == pytest.approx(statistics.median(st["times_s"])), name
        assert st["rate"] == pytest.approx(st["work"] / st["median_s"]), name
        assert st["rate"] > 0
    cfg = record["config"]
    assert stages["decode"]["work"] == cfg["sites"] * len(cfg["channels"])
    assert stages["crop"]["work"] == cfg["cells"]
    assert stages["pipeline"]["work"] <= cfg["cells"] and stages["pipeline"]["sites"] == cfg["sites"]
    assert stages["eval_map"]["map_over_bound"] == pytest.approx(stages["eval_map"]["median_s"]
                                                                 / stages["eval_gemm_bound"]["median_s"])
    assert all(k.startswith("model[") for k in record["skipped"])
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert record["name"] == "machine A" and record["machine"]["cores"] >= 1


def test_compare_two_records(quick, tmp_path, capsys):
    out, _ = quick
    b = copy.deepcopy(json.loads(out.read_text()))
    b["name"] = "machine B"
    for st in b["stages"].values():
        st["rate"] /= 2
    del b["stages"]["decode"]
    (tmp_path / "b.json").write_text(json.dumps(b))
    a = _args("--compare", str(out), str(tmp_path / "b.json"), "--out", str(tmp_path / "cmp.json"))
    res = a.run(a)
    rows = {r["stage"]: r for r in res["compare"]["stages"]}
    assert rows["crop"]["b_over_a"] == pytest.approx(0.5)
    assert rows["decode"]["rate_b"] is None and rows["decode"]["b_over_a"] is None
    assert json.loads((tmp_path / "cmp.json").read_text())["b"]["name"] == "machine B"
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "A: machine A" in text and "B: machine B" in text and "0.50" in text


def test_measure_then_compare_with_one_record(quick, tmp_path):
    out, _ = quick
    a = _args("--quick", "--stages", "eval", "--compare", str(out), "--out", str(tmp_path / "new.json"), "--quiet")
    res = a.run(a)
    assert set(res["record"]["stages"]) == {"eval_gemm_bound", "eval_map"}
    cmp = json.loads((tmp_path / "new-compare.json").read_text())
    rows = {r["stage"]: r for r in cmp["stages"]}
    assert rows["eval_map"]["b_over_a"] == pytest.approx(res["record"]["stages"]["eval_map"]["rate"]
                                                         / rows["eval_map"]["rate_a"])
    assert rows["crop"]["rate_b"] is None


@pytest.mark.parametrize("content, match", [
    (None, r"nope.json: no such bench record"),
    ("{not json", r"bad.json: not a JSON bench record"),
    (json.dumps({"kind": "something else"}), r"bad.json: not a phenovec bench record"),
    ("STAGE_NO_MEDIAN", r"bad.json: stage 'crop' has no 'median_s'"),
    ("STAGE_BAD_TIMES", r"bad.json: stage 'crop': 2 repeats but times_s"),
])
def test_bad_compare_file_is_a_named_error(quick, tmp_path, content, match):
    out, _ = quick
    path = tmp_path / ("nope.json" if content is None else "bad.json")
    if content in ("STAGE_NO_MEDIAN", "STAGE_BAD_TIMES"):
        rec = json.loads(out.read_text())
        if content == "STAGE_NO_MEDIAN":
            del rec["stages"]["crop"]["median_s"]
        else:
            rec["stages"]["crop"]["times_s"] = [1.0]
        content = json.dumps(rec)
    if content is not None:
        path.write_text(content)
    a = _args("--compare", str(out), str(path))
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        a.run(a)


def test_bad_arguments(tmp_path):
    a = _args("--quick", "--stages", "eval", "--profiles", str(tmp_path / "w.parquet"))
    with pytest.raises(ValueError, match="--profiles needs --sameby"):
        a.run(a)
    a = _args("--compare", "a.json", "b.json", "c.json")
    with pytest.raises(ValueError, match="--compare takes one record"):
        a.run(a)


def test_user_index_and_profiles(tmp_path):
    """Your data: an image index (here a Gallery LoadData CSV of a synthetic plate) and a well table."""
    import pandas as pd

    from phenovec.benchmark.eval_data import make_profiles
    from phenovec.ingest.synth import CHANNELS, synth_plate

    plate = synth_plate(tmp_path / "plate", plates=1, wells=3, sites_per_well=1, size=128, cells_per_site=(5, 9),
                        seed=1, progress=False)
    index = pd.read_csv(plate["index"])
    ld = index[[c for c in index.columns if c.startswith("Metadata_")]].copy()
    for c in CHANNELS:
        ld[f"URL_Orig{c}"] = [(tmp_path / "plate" / f).resolve().as_uri() for f in index[f"FileName_{c}"]]
    ld.to_csv(tmp_path / "load_data.csv", index=False)
    meta, x, _ = make_profiles(300, 16, seed=2)
    wells = pd.concat([meta, pd.DataFrame(x, columns=[f"f{i}" for i in range(16)])], axis=1)
    wells.to_parquet(tmp_path / "wells.parquet")
    a = _args("--stages", "decode", "crop", "eval", "--index", str(tmp_path / "load_data.csv"), "--locations",
              str(plate["nuclei"]), "--sites", "2", "--profiles", str(tmp_path / "wells.parquet"), "--sameby",
              "Metadata_MOA", "--repeats", "1", "--out", str(tmp_path / "r.json"), "--quiet")
    rec = a.run(a)["record"]
    nuclei = pd.read_csv(plate["nuclei"])
    first = set(map(tuple, index[["Metadata_Well", "Metadata_Site"]].iloc[:2].astype(str).values))
    cells = sum(tuple(map(str, r)) in first for r in nuclei[["Metadata_Well", "Metadata_Site"]].values)
    assert rec["stages"]["crop"]["work"] == cells and rec["stages"]["decode"]["work"] == 2 * len(CHANNELS)
    assert rec["stages"]["eval_map"]["n"] == 300 and rec["stages"]["eval_map"]["sameby"] == "Metadata_MOA"
    assert rec["config"]["index"].endswith("load_data.csv") and not any(k.startswith("model[") for k in rec["stages"])
