"""phenovec.profile.shards: a sharded run (one index split by plate, or a list of indexes) on a multi-process
LocalCluster equals per-plate ``profile_sites`` runs bit for bit; the manifest; the plate-partitioned well
datasets; a corrupt shard fails alone (named file, non-zero exit) and a rerun resumes only it; a worker process
SIGKILLed mid-task loses only that task and the output equals an uninterrupted run's.
"""
import json
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from phenovec.cli import main
from phenovec.profile import profile_sites
from phenovec.profile.shards import profile_shards, shard_name
from test_profile import assert_same_outputs

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
PLATES = ["SYNTH-P01", "SYNTH-P02", "SYNTH-P03"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 plates x 4 wells x 1 site of 96 px (4-6 cells), a resnet_tiny model, and per-plate profile_sites runs."""
    from phenovec.export import export_onnx
    from phenovec.ingest.synth import synth_plate
    from phenovec.train.models import build_model

    root = tmp_path_factory.mktemp("shards")
    plate = synth_plate(root / "plate", plates=3, wells=4, sites_per_well=1, size=96, cells_per_site=(4, 6),
                        cell_radius=6.0, progress=False)
    model = root / "model.onnx"
    export_onnx(build_model("resnet_tiny", 5, 7, seed=0), model, channels=CHANNELS, crop_size=32,
                intensity={"input_scaling": "minmax", "dtype_max": 65535.0}, parity=False)
    index = pd.read_csv(plate["index"])
    nuclei = pd.read_csv(plate["nuclei"])
    per_plate = {}
    for p in PLATES:  # per-plate index files beside the index (relative image paths stay valid)
        ip = Path(plate["index"]).parent / f"index_{p}.csv"
        index[index["Metadata_Plate"] == p].to_csv(ip, index=False)
        profile_sites(model, ip, plate["nuclei"], root / "ref" / p, batch_size=8, workers=1, progress=False)
        per_plate[p] = ip
    assert set(index["Metadata_Plate"]) == set(PLATES) and len(nuclei) > 40
    return {"root": root, "plate": plate, "model": model, "per_plate": per_plate}


@pytest.fixture(scope="module")
def cluster():
    """A 2-process LocalCluster shared by the tests that pass its address (``--scheduler ADDRESS``)."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


def _assert_equals_reference(out: Path, data, names: dict) -> None:
    for p, name in names.items():
        assert_same_outputs(out / "shards" / name, data["root"] / "ref" / p)
    for op in ("mean", "median"):
        got = pd.read_parquet(out / f"wells_{op}")
        want = pd.concat([pd.read_parquet(data["root"] / "ref" / p / f"wells_{op}.parquet") for p in names],
                         ignore_index=True)
        keys = ["Metadata_Plate", "Metadata_Well"]
        pd.testing.assert_frame_equal(got.sort_values(keys).reset_index(drop=True),
                                      want.sort_values(keys).reset_index(drop=True))
        for p in names:
            assert (out / f"wells_{op}" / p / f"{names[p]}.parquet").exists()


def test_sharded_by_plate_equals_per_plate_runs(data, tmp_path):
    out = tmp_path / "out"
    res = profile_shards(data["model"], data["plate"]["index"], out, locations=data["plate"]["nuclei"],
                         batch_size=8, scheduler="processes", workers=2, progress=False)
    assert not res.failed and set(res.shards) == set(PLATES)
    _assert_equals_reference(out, data, {p: p for p in PLATES})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "phenovec-profile-shards"
    assert {k: e["state"] for k, e in manifest["shards"].items()} == dict.fromkeys(PLATES, "done")
    total = sum(len(pd.read_parquet(data["root"] / "ref" / p / "cells.parquet")) for p in PLATES)
    assert res.cells == total == sum(e["cells"] for e in manifest["shards"].values())
    # a rerun finds every shard complete: nothing is redone (no cluster), the outputs stay
    stamp = {p: (out / "shards" / p / "cells.parquet").stat().st_mtime_ns for p in PLATES}
    again = profile_shards(data["model"], data["plate"]["index"], out, locations=data["plate"]["nuclei"],
                           batch_size=8, progress=False)
    assert not again.failed and again.cells == res.cells
    assert stamp == {p: (out / "shards" / p / "cells.parquet").stat().st_mtime_ns for p in PLATES}
    # another configuration into the same folder is refused, naming what differs
    with pytest.raises(ValueError, match="batch_size"):
        profile_shards(data["model"], data["plate"]["index"], out, locations=data["plate"]["nuclei"],
                       batch_size=4, progress=False)


def test_cli_list_of_indexes_and_a_corrupt_shard(data, cluster, tmp_path, capsys):
    """Per-plate indexes on the command line; plate 2's first image is corrupt: its shard fails naming the file,
    the others finish, the exit status is non-zero; repaired, a rerun profiles only that shard."""
    import shutil

    plate_dir = tmp_path / "plate"
    shutil.copytree(Path(data["plate"]["index"]).parent, plate_dir)
    idx = [plate_dir / f"index_{p}.csv" for p in PLATES]
    bad_row = pd.read_csv(idx[1]).iloc[0]
    bad = plate_dir / bad_row["FileName_DNA"]
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[:200])
    out = tmp_path / "out"
    argv = ["profile", str(data["model"]), "--index", *map(str, idx), "--locations", str(plate_dir / "nuclei.csv"),
            "-o", str(out), "--batch-size", "8", "--scheduler", cluster.scheduler_address, "--quiet"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    key = f"index_{PLATES[1]}.csv"
    assert list(summary["failed"]) == [key] and bad.name in summary["failed"][key]
    assert "1 of 3 shards failed" in captured.err and bad.name in captured.err
    manifest = json.loads((out / "manifest.json").read_text())
    states = {k: e["state"] for k, e in manifest["shards"].items()}
    assert states == {f"index_{p}.csv": ("failed" if p == PLATES[1] else "done") for p in PLATES}
    assert bad.name in manifest["shards"][key]["error"]
    names = {p: shard_name(f"index_{p}.csv") for p in PLATES}
    assert_same_outputs(out / "shards" / names[PLATES[0]], data["root"] / "ref" / PLATES[0])
    stamp = (out / "shards" / names[PLATES[0]] / "cells.parquet").stat().st_mtime_ns
    bad.write_bytes(good_bytes)
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["failed"] == {} and summary["shards"] == 3
    assert (out / "shards" / names[PLATES[0]] / "cells.parquet").stat().st_mtime_ns == stamp
    _assert_equals_reference(out, data, names)


def test_cli_shard_by_threads_and_refusals(data, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["profile", str(data["model"]), "--index", str(data["plate"]["index"]), "--locations",
            str(data["plate"]["nuclei"]), "-o", str(out), "--batch-size", "8", "--scheduler", "threads",
            "--workers", "2", "--shard-by", "--quiet"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shards"] == 3 and summary["states"] == {"done": 3} and summary["failed"] == {}
    _assert_equals_reference(out, data, {p: p for p in PLATES})
    both = ["profile", str(data["model"]), "--index", *map(str, data["per_plate"].values()), "--shard-by",
            "-o", str(tmp_path / "x")]
    assert main(both) == 2 and "not both" in capsys.readouterr().err
    assert main([*argv[:-2], "--shard-by", "Metadata_Nope", "-o", str(tmp_path / "y")]) == 2
    assert "no column 'Metadata_Nope' to shard by" in capsys.readouterr().err
    # tasks of ~20 cells (several sites) inferred in batches of 8: the same numbers (CPU features do not depend
    # on the batch), recorded in the configuration (a rerun with other tasks is refused)
    res = profile_shards(data["model"], data["plate"]["index"], tmp_path / "t", locations=data["plate"]["nuclei"],
                         batch_size=8, task_cells=20, scheduler="threads", workers=2, progress=False)
    assert not res.failed
    _assert_equals_reference(tmp_path / "t", data, {p: p for p in PLATES})
    with pytest.raises(ValueError, match="task_cells"):
        profile_shards(data["model"], data["plate"]["index"], tmp_path / "t", locations=data["plate"]["nuclei"],
                       batch_size=8, scheduler="threads", progress=False)


def test_run_killed_then_rerun_resumes_unfinished_shards(data, tmp_path, capsys):
    """The whole run (driver and its threads) SIGKILLed after a few committed sites; the rerun keeps every
    committed part, finishes, and equals the per-plate runs."""
    from test_kill_resume import _kill_when, start_slowed

    out = tmp_path / "out"
    argv = ["profile", str(data["model"]), "--index", str(data["plate"]["index"]), "--locations",
            str(data["plate"]["nuclei"]), "-o", str(out), "--batch-size", "8", "--scheduler", "threads",
            "--workers", "2", "--shard-by", "--quiet"]
    proc = start_slowed(argv, 0.3)
    _kill_when(proc, lambda: len(list(out.glob("shards/*/parts/site-*.npz"))) >= 3)
    before = {p: p.stat().st_mtime_ns for p in out.glob("shards/*/parts/site-*.npz")}
    assert 3 <= len(before) < 12
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["states"] == {"done": 3}
    assert {p: p.stat().st_mtime_ns for p in before} == before
    _assert_equals_reference(out, data, {p: p for p in PLATES})


def test_shard_and_plate_folder_names():
    from phenovec.profile.shards import plate_folder

    assert shard_name("SYNTH-P01") == "SYNTH-P01"
    a, b = shard_name("a/b"), shard_name("a_b")
    assert a != b and "/" not in a and a.startswith("a_b-")
    assert shard_name("..") not in ("..", ".") and "/" not in shard_name("../x")
    assert plate_folder("P/1=2") == "P%2F1%3D2" and plate_folder("..") == "%2E%2E"


# run in each worker process (as source: a function of this module would make the workers import it, and torch
# with it): every site's decode + crop slowed by SECONDS
SLOW_CUT_SITE = """
import time
import phenovec.profile.sites as sites
real = sites.cut_site
def slowed(*a, **k):
    time.sleep(SECONDS)
    return real(*a, **k)
sites.cut_site = slowed
"""


def test_worker_killed_mid_task_loses_only_that_task(data, cluster, tmp_path):
    """(Last in the file: it slows the shared cluster's workers.)"""
    from distributed import Client

    out = tmp_path / "out"
    parts = out / "shards"
    killed = {}
    with Client(cluster.scheduler_address) as client:  # closed before the run: the run opens its own client
        client.run(exec, SLOW_CUT_SITE, {"SECONDS": 0.25})
        pids = list(client.run(os.getpid).values())

    def killer():  # both workers are busy while tasks are left (window 2 x 2 + 1): kill one mid-task
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(list(parts.glob("*/parts/site-*.npz"))) >= 2:
                killed["before"] = {p: p.stat().st_mtime_ns for p in parts.glob("*/parts/site-*.npz")}
                os.kill(pids[0], signal.SIGKILL)
                killed["pid"] = pids[0]
                return
            time.sleep(0.02)

    t = threading.Thread(target=killer)
    t.start()
    res = profile_shards(data["model"], data["plate"]["index"], out, locations=data["plate"]["nuclei"],
                         batch_size=8, scheduler=cluster.scheduler_address, progress=False)
    t.join()
    assert "pid" in killed, "the run ended before a worker could be killed"
    assert not res.failed
    before = killed["before"]
    assert 2 <= len(before) < 12
    assert {p: p.stat().st_mtime_ns for p in before} == before  # committed sites were not redone
    _assert_equals_reference(out, data, {p: p for p in PLATES})


def test_a_client_of_a_running_scheduler_keeps_a_short_message_log(cluster):
    """The driver's comm to a scheduler given by address logs LOG_EVENTS messages, not Dask's 1,000 (each an
    update-graph of a few KB: bench/driver_memory.py --scheduler external traced that growth per task)."""
    import dask

    from phenovec.profile.scheduler import LOG_EVENTS, open_client

    assert dask.config.get("distributed.admin.low-level-log-length") > LOG_EVENTS  # the default, outside
    with open_client(cluster.scheduler_address, None) as (client, slots, _, _):
        assert slots == 2 and client.scheduler_comm.recent_message_log.maxlen == LOG_EVENTS
        assert client.submit(sum, [1, 2], pure=False).result() == 3


def test_illumination_index_takes_each_shards_load_data_flat_fields(data, cluster, tmp_path):
    """``illumination="index"`` (``--illumination index``): each shard's Gallery load_data_with_illum CSV names its
    plate's Illum<Ch>.npy files; the embeddings equal those of the same flat fields given as a folder."""
    from phenovec.export import export_onnx
    from phenovec.ingest.illumination import compute_illumination
    from phenovec.ingest.index import read_image_index
    from phenovec.train.models import build_model

    compute_illumination(read_image_index(data["plate"]["index"], CHANNELS), tmp_path / "illum", progress=False)
    model = tmp_path / "corrected.onnx"
    export_onnx(build_model("resnet_tiny", 5, 7, seed=0), model, channels=CHANNELS, crop_size=32, parity=False,
                intensity={"input_scaling": "minmax", "dtype_max": 65535.0, "crop_illumination": True})
    csvs = []
    for p in PLATES[:2]:
        t = pd.read_csv(data["per_plate"][p])
        ld = t[[c for c in t.columns if c.startswith("Metadata_")]].copy()
        for ch in CHANNELS:
            folder = Path(data["per_plate"][p]).parent
            ld[f"URL_Orig{ch}"] = [(folder / f).resolve().as_uri() for f in t[f"FileName_{ch}"]]
            ld[f"FileName_Illum{ch}"] = f"{p}_{ch}.npy"
            ld[f"PathName_Illum{ch}"] = str(tmp_path / "illum" / p)
        (tmp_path / p).mkdir()
        ld.to_csv(tmp_path / p / "load_data_with_illum.csv", index=False)
        csvs.append(str(tmp_path / p / "load_data_with_illum.csv"))
    kw = dict(locations=data["plate"]["nuclei"], batch_size=8, scheduler=cluster.scheduler_address, progress=False)
    a = profile_shards(model, csvs, tmp_path / "index", illumination="index", **kw)
    b = profile_shards(model, [str(data["per_plate"][p]) for p in PLATES[:2]], tmp_path / "folder",
                       illumination=str(tmp_path / "illum"), **kw)
    assert not a.failed and not b.failed and a.embedded == b.embedded > 0
    for name_a, name_b in zip(sorted(a.shards), sorted(b.shards)):
        assert_same_outputs(tmp_path / "index" / a.shards[name_a]["dir"], tmp_path / "folder" / b.shards[name_b]["dir"])
    c = profile_shards(model, [str(data["per_plate"][p]) for p in PLATES[:2]], tmp_path / "none",
                       illumination="index", **kw)
    assert len(c.failed) == 2 and all("--illumination index: " in e and "names no flat fields" in e
                                      for e in c.failed.values())
