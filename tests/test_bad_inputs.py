"""The reliability table: every stage, run from the CLI (``phenovec.cli.main``), on a bad input gives a clear error
(exit 2, ``phenovec: error: ...`` naming the file / row / column / key) and leaves no partial output behind.

Each row of ``CASES`` is one bad input: the stage, a name, how to build it (a function of the test's folder and
the shared small plate, returning the argv), the error the message must match, and what may remain in the
output afterwards: ``GONE`` (the output path does not exist) or the exact names a resume needs.
Concurrent runs into one folder, and read-only / full output folders, follow the table.
"""
from __future__ import annotations

import errno
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import yaml

from phenovec.cli import main
from test_kill_resume import start_slowed

CHANNELS = ["DNA", "ER", "RNA", "AGP", "Mito"]
BOX = 32
GONE: tuple = ()  # the output path must not exist
RESUME_CROP = ("cells", "crops.zarr", "manifest.json")  # a crop run stopped before its first site was done


@dataclass(frozen=True)
class Case:
    stage: str
    name: str
    make: Callable[["Path", "World"], list[str]]  # builds the bad input under the test's folder, returns the argv
    error: str  # regex the stderr message must match
    leaves: tuple = GONE  # what may remain in OUT afterwards: GONE, or the exact names a resume needs
    xfail: str | None = None  # strict xfail: the owner file and the change it needs


@dataclass
class World:
    """The small plate every case starts from (module scope; never modified by a case)."""
    plate: Path  # synth folder: index.csv, nuclei.csv, images/
    crops: Path  # a crop store of the plate
    model: Path  # a phenovec ONNX model of the plate's channels
    wells: Path  # a well profile table (Parquet): Metadata_* + 6 features


# ---- bad inputs -----------------------------------------------------------------------------------------

def _index_with(t: Path, w: World, first_dna: Path | None = None, drop: str | None = None, rows=None) -> Path:
    """A copy of the plate's index under ``t`` (absolute paths); its first DNA image replaced by ``first_dna``,
    the column ``drop`` removed, or only ``rows`` kept."""
    idx = pd.read_csv(w.plate / "index.csv")
    for c in CHANNELS:
        idx[f"FileName_{c}"] = [str(w.plate / p) for p in idx[f"FileName_{c}"]]
    if first_dna is not None:
        idx.loc[0, "FileName_DNA"] = str(first_dna)
    if drop:
        idx = idx.drop(columns=[drop])
    if rows is not None:
        idx = idx.iloc[rows]
    idx.to_csv(t / "index.csv", index=False)
    return t / "index.csv"


def _first_dna(w: World) -> Path:
    return w.plate / pd.read_csv(w.plate / "index.csv")["FileName_DNA"].iloc[0]


def image(kind: str) -> Callable[[Path, World], Path]:
    """A bad image file of ``kind`` under the test's folder (named after the kind)."""
    def make(t: Path, w: World) -> Path:
        import tifffile

        p = t / f"{kind}.tif"
        good = tifffile.imread(_first_dna(w))
        if kind == "truncated":
            b = _first_dna(w).read_bytes()
            p.write_bytes(b[: len(b) // 2])
        elif kind == "zero-byte":
            p.write_bytes(b"")
        elif kind == "float32":
            tifffile.imwrite(p, good.astype(np.float32))
        elif kind == "1-bit":
            tifffile.imwrite(p, good > np.median(good), bitspersample=1)
        elif kind == "rgb":
            tifffile.imwrite(p, np.stack([good] * 3, -1), photometric="rgb")
        elif kind == "huge-header":  # an IFD claiming 100000 x 100000 16-bit pixels over 64 bytes of data
            tags = [(256, 4, 100000), (257, 4, 100000), (258, 3, 16), (259, 3, 1), (262, 3, 1), (273, 4, 200),
                    (277, 3, 1), (278, 4, 100000), (279, 4, 64)]
            ifd = struct.pack("<H", len(tags)) + b"".join(
                struct.pack("<HHII", tag, typ, 1, v) if typ == 4 else struct.pack("<HHIHH", tag, typ, 1, v, 0)
                for tag, typ, v in tags) + struct.pack("<I", 0)
            head = b"II*\x00" + struct.pack("<I", 8) + ifd
            p.write_bytes(head + b"\0" * (200 - len(head)) + b"\1" * 64)
        else:
            raise ValueError(kind)
        return p
    return make


def locations(edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path, World], Path]:
    """The plate's nuclei table with ``edit`` applied, under the test's folder."""
    def make(t: Path, w: World) -> Path:
        edit(pd.read_csv(w.plate / "nuclei.csv")).to_csv(t / "nuclei.csv", index=False)
        return t / "nuclei.csv"
    return make


def _set(df, col, v, row=1):
    df = df.copy()
    df.loc[row, col] = v
    return df


X, Y = "Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"
outside = locations(lambda d: _set(d, X, 5000.0))
nan_centre = locations(lambda d: _set(d, Y, np.nan))
dup_rows = locations(lambda d: pd.concat([d, d.iloc[[1]]], ignore_index=True))
no_centre = locations(lambda d: d.drop(columns=[X]))
no_rows = locations(lambda d: d.iloc[:0])
other_plate = locations(lambda d: d.assign(Metadata_Plate="P99"))


def crop(index_or_bad_image, locs=None, out="out", extra=()):
    """argv of ``phenovec crop`` with a bad image (replacing the first DNA file) or a given index, and locations."""
    def make(t: Path, w: World) -> list[str]:
        idx = index_or_bad_image(t, w) if callable(index_or_bad_image) else index_or_bad_image
        if idx.suffix == ".tif":
            idx = _index_with(t, w, first_dna=idx)
        loc = locs(t, w) if locs else w.plate / "nuclei.csv"
        return ["crop", str(idx), "--locations", str(loc), "--out", str(t / out), "--box-size", str(BOX),
                "--quiet", *extra]
    return make


def ingest(stage: str, bad_image, *extra):
    """argv of ``phenovec illum`` / ``tiles`` with a bad first DNA image."""
    def make(t: Path, w: World) -> list[str]:
        return [stage, str(_index_with(t, w, first_dna=bad_image(t, w))), "--out", str(t / "out"), "--quiet", *extra]
    return make


def last_site_bad(t: Path, w: World) -> Path:
    """The plate's index with its last site's DNA image truncated: the first sites are committed before it."""
    idx = _index_with(t, w)
    df = pd.read_csv(idx)
    b = Path(df["FileName_DNA"].iloc[-1]).read_bytes()
    (t / "truncated.tif").write_bytes(b[: len(b) // 2])
    df.loc[len(df) - 1, "FileName_DNA"] = str(t / "truncated.tif")
    df.to_csv(idx, index=False)
    return idx


def synth(*args):
    return lambda t, w: ["synth", "--out", str(t / "out"), "--quiet", *args]


def plate_index(t: Path, w: World) -> Path:
    return w.plate / "index.csv"


def index_only(**kw):
    return lambda t, w: _index_with(t, w, **kw)


# ---- train / export / profile ---------------------------------------------------------------------------

def train_cfg(crops=None, **over):
    """argv of ``phenovec train`` on a config with ``over`` (``"section.key": value``) applied."""
    def make(t: Path, w: World) -> list[str]:
        cfg = {"data": {"crops": str(crops(t, w) if crops else w.crops), "batch_size": 8, "workers": 0},
               "model": {"arch": "resnet_tiny"}, "optim": {"warmup_epochs": 0},
               "train": {"epochs": 1, "out": str(t / "out"), "threads": 1}}
        for k, v in over.items():
            sec, key = k.split(".")
            cfg.setdefault(sec, {})[key] = v
        (t / "train.yaml").write_text(yaml.safe_dump(cfg))
        return ["train", str(t / "train.yaml"), "--quiet"]
    return make


def empty_crop_store(t: Path, w: World) -> Path:
    """A finished crop store with no crop: every cell dropped (the box is larger than the fields)."""
    assert main(crop(plate_index, out="empty", extra=("--box-size", "128"))(t, w)) == 0
    return t / "empty"


def checkpoint(kind: str):
    def make(t: Path, w: World) -> list[str]:
        p = t / "model.pt"
        if kind == "text":
            p.write_text("not a checkpoint\n")
        elif kind == "zero-byte":
            p.write_bytes(b"")
        else:
            import torch

            torch.save({"state_dict": {"w": torch.zeros(2)}}, p)
        return ["export", str(p), "-o", str(t / "out" / "model.onnx")]
    return make


def foreign_onnx(t: Path, w: World) -> Path:
    """A valid ONNX model (identity on N x 5 x 16 x 16) with no phenovec metadata."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 5, BOX, BOX])
    y = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 5, BOX, BOX])
    g = helper.make_graph([helper.make_node("Identity", ["input"], ["features"])], "foreign", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), t / "foreign.onnx")
    return t / "foreign.onnx"


def profile(model=None, index=None, locs=None, bad_image=None):
    def make(t: Path, w: World) -> list[str]:
        m = model(t, w) if model else w.model
        idx = index(t, w) if index else _index_with(t, w, first_dna=bad_image(t, w) if bad_image else None)
        loc = locs(t, w) if locs else w.plate / "nuclei.csv"
        return ["profile", str(m), "--index", str(idx), "--locations", str(loc), "-o", str(t / "out"),
                "--no-progress", "--workers", "1"]
    return make


# ---- process / evaluate / run -----------------------------------------------------------------------------

def wells(edit: Callable[[pd.DataFrame], pd.DataFrame], name="wells.parquet"):
    def make(t: Path, w: World) -> Path:
        edit(pd.read_parquet(w.wells)).to_parquet(t / name)
        return t / name
    return make


nan_feature = wells(lambda d: _set(d, "f1", np.nan, row=2))
inf_feature = wells(lambda d: _set(d, "f2", np.inf, row=3))
const_feature = wells(lambda d: d.assign(f3=1.0))
empty_table = wells(lambda d: d.iloc[:0])
dup_wells = wells(lambda d: pd.concat([d, d.iloc[[0]]], ignore_index=True))
one_row = wells(lambda d: d.iloc[:1])
no_pairs = wells(lambda d: d.assign(Metadata_Treatment=[f"t{i}" for i in range(len(d))]))


def process(table, *args):
    return lambda t, w: ["process", *args[:1], str(table(t, w)), "-o", str(t / "out" / "p.parquet"), *args[1:]]


def evaluate(table, *args):
    return lambda t, w: ["evaluate", "map", str(table(t, w)), "--pos-sameby", "Metadata_Treatment",
                         "--neg-diffby", "Metadata_Treatment", "--out", str(t / "out" / "ap.parquet"),
                         "--null-size", "50", *args]


def run_cfg(**cfg):
    def make(t: Path, w: World) -> list[str]:
        (t / "run.yaml").write_text(yaml.safe_dump({"out": str(t / "out"), **cfg}))
        return ["run", str(t / "run.yaml")]
    return make


# ---- the table --------------------------------------------------------------------------------------------

CASES = [
    # stage      name                          bad input -> argv                 error (regex)                  leaves
    Case("synth", "size too small", synth("--size", "10"), r"size: expected an integer field side in 32\.\.4096 px"),
    Case("synth", "cells low > high", synth("--cells", "5", "2"), r"cells_per_site: .*got \(5, 2\)"),
    Case("crop", "truncated image", crop(image("truncated")), r"truncated\.tif: truncated or corrupt TIFF"),
    Case("crop", "zero-byte image", crop(image("zero-byte")), r"zero-byte\.tif is not a TIFF or PNG file"),
    Case("crop", "32-bit float image", crop(image("float32")), r"float32\.tif: unsupported TIFF image: sample format"),
    Case("crop", "1-bit image", crop(image("1-bit")), r"1-bit\.tif: unsupported TIFF image: colour type Gray\(1\)"),
    Case("crop", "RGB image", crop(image("rgb")), r"rgb\.tif: unsupported TIFF image: colour type RGB"),
    Case("crop", "header claims 100000^2 px", crop(image("huge-header")), r"huge-header\.tif: declared size 100000 x 100000"),
    Case("crop", "missing image", crop(lambda t, w: t / "absent.tif"), r"image file not found: .*absent\.tif"),
    Case("crop", "bad image after 2 good sites", crop(last_site_bad, extra=("--chunk-cells", "1")),
         r"truncated\.tif: truncated", leaves=RESUME_CROP),
    Case("crop", "centre outside the image", crop(plate_index, outside),
         r"nuclei\.csv: ObjectNumber 2 of site SYNTH-P01 A01 1 has its centre \(x=5000, .*outside the image"),
    Case("crop", "NaN centre", crop(plate_index, nan_centre), r"nuclei\.csv: row 1 column Nuclei_Location_Center_Y: nan"),
    Case("crop", "duplicated location row", crop(plate_index, dup_rows), r"nuclei\.csv: row \d+ repeats row 1 \("),
    Case("crop", "no centre column", crop(plate_index, no_centre), r"nuclei\.csv: no nucleus centre columns"),
    Case("crop", "empty locations", crop(plate_index, no_rows), r"nuclei\.csv: no located cell"),
    Case("crop", "locations of another plate", crop(plate_index, other_plate), r"nuclei\.csv: none of its \d+ rows belongs to a site"),
    Case("crop", "empty index", crop(index_only(rows=[])), r"index\.csv: the image index has no site"),
    Case("crop", "duplicated index row", crop(index_only(rows=[0, 1, 1])), r"index\.csv: row 2 repeats site"),
    Case("crop", "index without a channel", crop(index_only(drop="FileName_Mito")), r"index\.csv: no column for channel 'Mito'"),
    Case("illum", "truncated image", ingest("illum", image("truncated")), r"truncated\.tif: truncated or corrupt"),
    Case("illum", "RGB image", ingest("illum", image("rgb")), r"rgb\.tif: unsupported TIFF image"),
    Case("illum", "header claims 100000^2 px", ingest("illum", image("huge-header")), r"huge-header\.tif: declared size"),
    Case("illum", "empty index", lambda t, w: ["illum", str(index_only(rows=[])(t, w)), "--out", str(t / "out")],
         r"index\.csv: the image index has no site"),
    Case("tiles", "zero-byte image", ingest("tiles", image("zero-byte")), r"zero-byte\.tif is not a TIFF"),
    Case("tiles", "32-bit float image", ingest("tiles", image("float32")), r"float32\.tif: unsupported TIFF image"),
    Case("tiles", "truncated image", ingest("tiles", image("truncated")), r"truncated\.tif: truncated or corrupt"),
    Case("train", "epochs is a string", train_cfg(**{"train.epochs": "three"}), r"train\.yaml: train\.epochs must be int, got str"),
    Case("train", "unknown key", train_cfg(**{"optim.lrr": 0.1}), r"train\.yaml: unknown key 'optim\.lrr'"),
    Case("train", "crop store missing", train_cfg(crops=lambda t, w: t / "nowhere"), r"data\.crops: .*nowhere' does not exist"),
    Case("train", "empty crop store", train_cfg(crops=empty_crop_store), r"empty: the crop store is empty"),
    Case("export", "text file as checkpoint", checkpoint("text"), r"model\.pt: not a phenovec checkpoint: .*Unsupported operand"),
    Case("export", "zero-byte checkpoint", checkpoint("zero-byte"), r"model\.pt: not a phenovec checkpoint"),
    Case("export", "another torch checkpoint", checkpoint("foreign"), r"model\.pt: not a phenovec checkpoint \(no format"),
    Case("profile", "non-phenovec ONNX model", profile(model=foreign_onnx), r"foreign\.onnx: not a phenovec ONNX export"),
    Case("profile", "index misses a channel", profile(index=index_only(drop="FileName_Mito")), r"index\.csv: no column for channel 'Mito'"),
    Case("profile", "truncated image", profile(bad_image=image("truncated")), r"site 0 .*truncated\.tif: truncated or corrupt"),
    Case("profile", "NaN centre", profile(locs=nan_centre), r"nuclei\.csv: row 1 column Nuclei_Location_Center_Y"),
    Case("profile", "centre outside the image", profile(locs=outside),
         r"nuclei\.csv: ObjectNumber 2 of site SYNTH-P01 A01 1 has its centre \(x=5000, .*outside the image"),
    Case("process", "inf feature", process(inf_feature, "normalize"), r"feature column 'f2' holds inf at row 3"),
    Case("process", "constant feature (spherize)", process(const_feature, "spherize"), r"ZCA-cor: feature\(s\) constant .*'f3'"),
    Case("process", "empty table", process(empty_table, "normalize"), r"wells\.parquet.* no row"),
    Case("evaluate", "NaN feature", evaluate(nan_feature), r"non-finite value \(NaN\) at row 2, feature column 1"),
    Case("evaluate", "single row", evaluate(one_row), r"Unable to find positive pairs"),
    Case("evaluate", "no positive pairs", evaluate(no_pairs), r"Unable to find positive pairs"),
    Case("run", "synth.wells is a string", run_cfg(synth={"wells": "many"}), r"run\.yaml: synth\.wells must be int, got str"),
    Case("run", "train.epochs is a string", run_cfg(synth={}, train={"train": {"epochs": "three"}}), r"train\.epochs"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from phenovec.export import export_onnx
    from phenovec.ingest.synth import synth_plate
    from phenovec.train.models import build_model

    root = tmp_path_factory.mktemp("world")
    synth_plate(root / "plate", plates=1, wells=3, sites_per_well=1, size=96, cells_per_site=(3, 4),
                cell_radius=6.0, progress=False)
    w = World(root / "plate", root / "crops", root / "model.onnx", root / "wells.parquet")
    assert main(crop(plate_index, out="crops")(root, w)) == 0
    export_onnx(build_model("resnet_tiny", len(CHANNELS), 3, seed=0), root / "model.onnx", channels=CHANNELS,
                crop_size=BOX, intensity={"input_scaling": "minmax", "dtype_max": 65535.0}, parity=False)
    rng = np.random.default_rng(0)
    n = 12
    df = pd.DataFrame({"Metadata_Plate": ["P1"] * n, "Metadata_Well": [f"A{i:02d}" for i in range(n)],
                       "Metadata_Treatment": ["DMSO", "a", "b", "c"] * 3})
    for j in range(6):
        df[f"f{j}"] = rng.normal(size=n)
    df.to_parquet(root / "wells.parquet")
    return w


PARAMS = [pytest.param(c, id=f"{c.stage}-{c.name}",
                       marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
          for c in CASES]


@pytest.mark.parametrize("case", PARAMS)
def test_bad_input_is_a_clear_error_and_leaves_nothing(case: Case, world: World, tmp_path, capsys):
    t = tmp_path / "t"
    t.mkdir()
    argv = case.make(t, world)
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("phenovec: error: ") and "Traceback" not in err, (rc, err[-2000:])
    assert re.search(case.error, err, re.S), err
    out = t / "out"
    if case.leaves == GONE:
        assert not out.exists(), f"partial output left: {sorted(p.name for p in out.rglob('*'))}"
    else:
        assert sorted(p.name for p in out.iterdir()) == sorted(case.leaves)
        assert not list(out.rglob(".*tmp*")) and not (out / ".phenovec.lock").exists()


def _crop_outputs(out: Path):
    import zarr

    return zarr.open_array(str(out / "crops.zarr"), mode="r")[:], pd.read_parquet(out / "cells.parquet")


def _assert_same_crops(a: Path, b: Path) -> None:
    xa, ca = _crop_outputs(a)
    xb, cb = _crop_outputs(b)
    assert xa.dtype == xb.dtype and np.array_equal(xa, xb)
    pd.testing.assert_frame_equal(ca, cb)


# ---- read-only and full output folders ------------------------------------------------------------------

READ_ONLY = {"crop": crop(plate_index), "illum": lambda t, w: ["illum", str(w.plate / "index.csv"), "--out",
                                                               str(t / "out"), "--quiet"],
             "train": train_cfg(), "profile": profile()}


def refuse_writes_under(folder: Path, monkeypatch):
    """What the kernel does in a read-only folder for a user without CAP_DAC_OVERRIDE, for a root process (CI runs
    as root, where permission bits are not enforced): creating anything below ``folder`` is EACCES."""
    real_mkdir, real_open = os.mkdir, os.open

    def below(path) -> bool:
        return Path(os.path.abspath(os.fspath(path))).is_relative_to(folder) and Path(path) != folder

    def mkdir(path, *a, **k):
        if below(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_mkdir(path, *a, **k)

    def open_(path, flags, *a, **k):
        if below(path) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


@pytest.mark.parametrize("stage", sorted(READ_ONLY))
def test_read_only_output_folder_is_a_clear_error(stage, world, tmp_path, capsys, monkeypatch):
    """A read-only folder for the output: as a user, by its permission bits; as root (CI), by refusing creation
    below it the way the kernel would (root ignores the bits)."""
    t = tmp_path / "t"
    t.mkdir()
    argv = READ_ONLY[stage](t, world)
    t.chmod(0o555)
    try:
        if os.access(t, os.W_OK):
            refuse_writes_under(t, monkeypatch)
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("phenovec: error: ") and "Permission denied" in err and str(t / "out") in err, err
        assert not (t / "out").exists()
    finally:
        t.chmod(0o755)


def test_full_disk_during_crop_leaves_what_a_resume_needs(world, tmp_path, capsys, monkeypatch):
    """A write failing with ENOSPC is a clear error; before the first site is committed nothing remains, after
    it the folder holds exactly what a resume needs, and the resumed run equals an uninterrupted one."""
    import phenovec.io.atomic as atomic

    real = atomic.write_text_atomic

    def full_after(n: int):
        calls = []

        def write(path, text):
            calls.append(path)
            if len(calls) > n:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            return real(path, text)
        return write

    argv = crop(plate_index, out="out", extra=("--chunk-cells", "1"))(tmp_path, world)
    monkeypatch.setattr(atomic, "write_text_atomic", full_after(0))  # the first manifest write
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "manifest.json" in err, err
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(atomic, "write_text_atomic", full_after(2))  # manifest, site 0 committed, then full
    assert main(argv) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(RESUME_CROP)
    assert not list((tmp_path / "out").rglob(".*tmp*"))
    monkeypatch.setattr(atomic, "write_text_atomic", real)
    assert main(argv) == 0
    assert '"resumed_sites": 1' in capsys.readouterr().out
    assert main(crop(plate_index, out="whole", extra=("--chunk-cells", "1"))(tmp_path, world)) == 0
    _assert_same_crops(tmp_path / "out", tmp_path / "whole")


# ---- two runs writing one output folder at once ---------------------------------------------------------

@pytest.mark.parametrize("stage", ["crop", "profile"])
def test_second_run_into_a_busy_folder_is_refused(stage, world, tmp_path, capsys):
    make = crop(plate_index, extra=("--chunk-cells", "1")) if stage == "crop" else profile()
    argv = make(tmp_path, world)
    child = start_slowed(argv, seconds=1.0)  # the first run, still writing when the second starts
    lock = tmp_path / "out" / ".phenovec.lock"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None and not (lock.exists() and lock.read_text()):
        time.sleep(0.02)
    assert child.poll() is None, f"the first run ended early: {child.stderr.read().decode()[-2000:]}"
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"another phenovec run (pid {child.pid}) is writing this output folder" in err, err
    assert child.wait(timeout=120) == 0, child.stderr.read().decode()[-2000:]
    assert not lock.exists()
    ref = tmp_path / "ref"
    ref.mkdir()
    assert main(make(ref, world)) == 0
    if stage == "crop":
        _assert_same_crops(tmp_path / "out", ref / "out")
    else:
        from test_profile import assert_same_outputs

        assert_same_outputs(tmp_path / "out", ref / "out")
