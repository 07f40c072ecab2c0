"""Formats that round-trip: every table phenovec writes, every reader reads back (values and metadata dtypes);
phenovec's own embeddings.zarr and DeepProfiler .npz are profiles wherever profiles are read; anything else is a
clear error naming the file and the formats accepted (never a pyarrow traceback)."""
from __future__ import annotations

import io
import json
import pickle
import zipfile

import numpy as np
import pandas as pd
import pytest

from phenovec.cli import main
from phenovec.io.embeddings import write_embeddings
from phenovec.io.profiles import (FEATURES_ATTR, READ_FORMATS, read_profile_metadata, read_table, split_profiles,
                                  write_profiles)
from phenovec.process.source import open_source

from conftest import SHARED_DATA

DP_DIR = SHARED_DATA / "pycytominer-deepprofiler-lincs"
WRITE_NAMES = ["p.csv", "p.csv.gz", "p.csv.bz2", "p.csv.xz", "p.tsv", "p.tsv.gz", "p.parquet", "p.h5ad", "p.zarr"]
# what a compressed text table must start with (it was written plain under a .xz / .bz2 name, unreadable)
TEXT_MAGIC = {".gz": b"\x1f\x8b", ".bz2": b"BZh", ".xz": b"\xfd7zXZ"}


def _table(n=24, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "Metadata_Plate": np.repeat(["P1", "P2"], n // 2),
        "Metadata_Well": [f"A{i % 6:02d}" for i in range(n)],
        "Metadata_Site": np.arange(n) % 3 + 1,
        "Metadata_dose": rng.choice([0.1, 1.0, np.nan], n),
        "Metadata_control": np.arange(n) % 4 == 0,
        "Metadata_note": [np.nan if i % 5 == 0 else f"n{i}" for i in range(n)],
        "ImageNumber": np.arange(n) // 4 + 1,
        "ObjectNumber": np.arange(n) % 4 + 1,
        "f_a": rng.normal(size=n),
        "f_b": rng.normal(size=n) * 1e-7,
        "f_c": rng.integers(0, 9, n).astype(np.float64),
    })


@pytest.mark.parametrize("name", WRITE_NAMES)
def test_every_writer_reads_back_equal(tmp_path, name):
    df = _table()
    path = write_profiles(df, tmp_path / name, metadata={"step": "test"})
    back = read_table(path)
    typed = not (".csv" in name or ".tsv" in name)  # text loses only what CSV cannot say
    for suffix, magic in TEXT_MAGIC.items():
        if name.endswith(suffix):
            assert path.read_bytes().startswith(magic), name
    pd.testing.assert_frame_equal(back, df, check_dtype=typed, check_exact=name.endswith((".parquet", ".h5ad", ".zarr")),
                                  rtol=1e-15)
    if typed:
        assert back.dtypes.to_dict() == df.dtypes.to_dict()
        assert read_profile_metadata(path) == {"step": "test"}
    # ImageNumber / ObjectNumber are metadata wherever profiles are split, whatever the format
    assert split_profiles(back).features == ["f_a", "f_b", "f_c"]
    # the streaming source reads every format too
    src = open_source(path)
    streamed = pd.concat(list(src.iter_batches(batch_rows=7)))
    pd.testing.assert_frame_equal(streamed.reset_index(drop=True), back)


@pytest.mark.parametrize("name", ["p.csv.zip", "p.csv.bak", "p.csv.gz.part"])
def test_text_names_that_cannot_be_read_back_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="output type|text table"):
        write_profiles(_table(), tmp_path / name)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["p.parquet", "p.h5ad", "p.zarr", "p.csv"])
def test_process_reads_and_writes_each_format(tmp_path, name):
    """phenovec process normalize: INPUT in each format -> each output format; what it wrote reads back."""
    df = _table(seed=1)
    src = write_profiles(df, tmp_path / f"in-{name}")
    outs = {}
    for out_name in ("o.parquet", "o.h5ad", "o.zarr"):
        out = tmp_path / out_name
        assert main(["process", "normalize", str(src), "-o", str(out), "--method", "standardize", "--quiet"]) in (0, None)
        outs[out_name] = read_table(out)
    ref = outs["o.parquet"]
    for k, v in outs.items():
        pd.testing.assert_frame_equal(v, ref, obj=k)
    x = df[["f_a", "f_b", "f_c"]].to_numpy()
    np.testing.assert_allclose(ref[["f_a", "f_b", "f_c"]].to_numpy(), (x - x.mean(0)) / x.std(0), rtol=1e-9,
                               atol=1e-12)


def test_normalize_keeps_cellprofiler_ids_as_metadata(tmp_path):
    df = _table(seed=1)
    out = tmp_path / "o.parquet"
    assert main(["process", "normalize", str(write_profiles(df, tmp_path / "in.parquet")), "-o", str(out),
                 "--quiet"]) in (0, None)
    assert list(read_table(out)["ObjectNumber"]) == list(df["ObjectNumber"])  # carried as metadata, not normalized


def _embedding_store(tmp_path, n_sites=6, cells=5, d=128):
    rng = np.random.default_rng(3)
    n = n_sites * cells
    meta = pd.DataFrame({
        "Metadata_Plate": "P1",
        "Metadata_Well": np.repeat([f"W{i // 2}" for i in range(n_sites)], cells),
        "Metadata_Site": np.repeat(np.arange(n_sites) % 2 + 1, cells),
        "Metadata_Treatment": np.repeat([["DMSO", "a", "b"][(i // 2) % 3] for i in range(n_sites)], cells),
        "ObjectNumber": np.tile(np.arange(1, cells + 1), n_sites),
        "x": rng.uniform(0, 100, n), "y": rng.uniform(0, 100, n), "edge": False,
    })
    x = rng.normal(size=(n, d)).astype(np.float32)
    return write_embeddings(tmp_path / "embeddings.zarr", meta, x), meta, x


def test_embedding_store_is_a_profile_table(tmp_path):
    store, meta, x = _embedding_store(tmp_path)
    df = read_table(store)
    prof = split_profiles(df)
    assert prof.features == [f"feature_{i}" for i in range(128)]
    assert list(prof.meta.columns) == list(meta.columns)  # ObjectNumber, x, y, edge: metadata
    np.testing.assert_array_equal(prof.feats, x)
    # survives the row selection / reset the evaluate and report loaders do
    assert split_profiles(df[df["Metadata_Well"] != "W0"].reset_index(drop=True)).features == prof.features


def test_process_aggregate_reads_embedding_store(tmp_path):
    """No feature list needed; --compute-object-count counts ObjectNumber; same numbers as pandas."""
    store, meta, x = _embedding_store(tmp_path)
    out = tmp_path / "wells.parquet"
    assert main(["process", "aggregate", str(store), "-o", str(out), "--operation", "mean",
                 "--compute-object-count", "--quiet"]) in (0, None)
    wells = read_table(out)
    feats = [f"feature_{i}" for i in range(128)]
    assert list(wells.columns) == ["Metadata_Plate", "Metadata_Well", "Metadata_Object_Count"] + feats
    ref = pd.concat([meta, pd.DataFrame(x.astype(np.float64), columns=feats)], axis=1).groupby(
        ["Metadata_Plate", "Metadata_Well"])[feats].mean()
    np.testing.assert_allclose(wells[feats].to_numpy(), ref.to_numpy(), rtol=1e-12)
    assert list(wells["Metadata_Object_Count"]) == list(meta.groupby("Metadata_Well").size())


def test_evaluate_reads_embedding_store(tmp_path, capsys):
    store, meta, x = _embedding_store(tmp_path)
    out = tmp_path / "ap.csv"
    rc = main(["evaluate", "map", str(store), "--pos-sameby", "Metadata_Treatment", "--neg-diffby",
               "Metadata_Treatment", "--out", str(out)])
    assert rc in (0, None)
    ap = read_table(out)
    assert len(ap) == len(meta) and "average_precision" in ap.columns


def test_report_input_reads_anndata(tmp_path):
    from phenovec.report.inputs import load_input

    df = _table(seed=2)
    df["Metadata_moa"] = np.where(df["Metadata_control"], "control", "m" + (df.index % 3).astype(str))
    df["Metadata_Treatment"] = np.where(df["Metadata_control"], "DMSO", "t" + (df.index % 5).astype(str))
    df = df.drop(columns=["Metadata_dose", "Metadata_note"])
    for name in ("w.h5ad", "w.zarr"):
        path = write_profiles(df, tmp_path / name)
        inp = load_input(path, moa_column="Metadata_moa", treatment_column="Metadata_Treatment",
                         control_query="DMSO", plate_column="Metadata_Plate")
        assert inp.features == ["f_a", "f_b", "f_c"]
        np.testing.assert_array_equal(inp.x, df[["f_a", "f_b", "f_c"]].to_numpy())
        assert inp.control.sum() == df["Metadata_control"].sum()


# ---- refusals ------------------------------------------------------------------------------------------------

def test_unknown_and_unreadable_formats_name_the_file(tmp_path):
    cases = {
        "bad.parquet": b"hello, not parquet",
        "data.foo": b"whatever",
        "empty.parquet": b"",
        "bad.h5ad": b"PAR1 not hdf5",
        "bad.npz": b"not a zip",
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ValueError) as e:
            read_table(p)
        msg = str(e.value)
        assert str(p) in msg, msg
        assert "Traceback" not in msg and "magic bytes" not in msg.lower(), msg
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.txt").write_text("a")
    with pytest.raises(ValueError, match=r"folder.*phenovec reads"):
        read_table(tmp_path / "folder")
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        read_table(tmp_path / "missing.parquet")
    with pytest.raises(ValueError, match="bad.parquet"):
        open_source(tmp_path / "bad.parquet")
    assert "DeepProfiler" in READ_FORMATS


def test_cli_unreadable_input_is_one_line(tmp_path, capsys):
    bad = tmp_path / "embeddings.parquet"
    bad.write_bytes(b"\x00" * 64)
    rc = main(["evaluate", "map", str(bad), "--pos-sameby", "Metadata_x", "--neg-diffby", "Metadata_x",
               "--out", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad) in err and "Traceback" not in err
    rc = main(["process", "aggregate", str(bad), "-o", str(tmp_path / "o.parquet")])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad) in err and "Traceback" not in err


# ---- DeepProfiler .npz -------------------------------------------------------------------------------------

def _npz(path, features, metadata=None, locations=None):
    arrays = {"features": features}
    if metadata is not None:
        arrays["metadata"] = np.array(metadata, dtype=object)  # what DeepProfiler saves: a pickled dict
    if locations is not None:
        arrays["locations"] = locations
    np.savez(path, **arrays)
    return path


def test_deepprofiler_npz_equals_pycytominer_real():
    from pycytominer.cyto_utils.load import load_npz_features

    files = sorted(DP_DIR.glob("*.npz"))
    assert files, f"no DeepProfiler .npz files in {DP_DIR} (the repo expects ../shared/data beside it)"
    for f in files:
        ours = read_table(f)
        peer = load_npz_features(str(f))
        # column by column assert_frame_equal takes a minute at 6,400 columns: metadata as frames, features as arrays
        assert list(ours.columns) == list(peer.columns)
        meta = [c for c in peer.columns if c.startswith("Metadata_")]
        pd.testing.assert_frame_equal(ours[meta], peer[meta])
        feats = [c for c in peer.columns if c not in set(meta)]
        a, b = ours[feats].to_numpy(), peer[feats].to_numpy()
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b)
        assert list(ours.attrs[FEATURES_ATTR]) == [c for c in peer.columns if not c.startswith("Metadata_")]
        assert split_profiles(ours).features == list(ours.attrs[FEATURES_ATTR])


def test_deepprofiler_folder_and_generated(tmp_path):
    from pycytominer.cyto_utils.load import load_npz_features

    rng = np.random.default_rng(5)
    d = tmp_path / "features" / "PLATE1"
    d.mkdir(parents=True)
    frames = []
    for well, site in [("A01", 1), ("A01", 2), ("B03", 1)]:
        f = _npz(d / f"{well}_{site}.npz", rng.normal(size=(4 + site, 6)).astype(np.float32),
                 {"Metadata_Plate": "PLATE1", "Metadata_Well": well, "Metadata_Site": site, "Compound": None,
                  "dose": 0.5, "ok": True, "Metadata_Model": "effnet"}, rng.uniform(0, 99, (4 + site, 2)))
        frames.append(load_npz_features(str(f)))
    both = read_table(tmp_path / "features")
    pd.testing.assert_frame_equal(both, pd.concat(frames, ignore_index=True))
    assert list(both.attrs[FEATURES_ATTR]) == [f"effnet_{i}" for i in range(6)]
    # no metadata array: pycytominer's fallback prefix
    f = _npz(tmp_path / "plain.npz", rng.normal(size=(3, 4)))
    pd.testing.assert_frame_equal(read_table(f), load_npz_features(str(f)))
    # process aggregate reads a DeepProfiler folder
    out = tmp_path / "wells.parquet"
    assert main(["process", "aggregate", str(tmp_path / "features"), "-o", str(out), "--operation", "mean",
                 "--quiet"]) in (0, None)
    wells = read_table(out)
    feats = [f"effnet_{i}" for i in range(6)]
    np.testing.assert_allclose(wells[feats].to_numpy(),
                               both.astype({f: np.float64 for f in feats}).groupby(
                                   ["Metadata_Plate", "Metadata_Well"])[feats].mean().to_numpy(), rtol=1e-12)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("payload", ["reduce", "global", "nested"])
def test_deepprofiler_npz_never_unpickles(tmp_path, payload):
    """A metadata pickle that would run code is refused, and nothing runs."""
    marker = tmp_path / "pwned"
    evil = _Evil(marker)
    obj = {"reduce": {"Metadata_Plate": evil}, "global": {"Metadata_Plate": len},
           "nested": {"Metadata_Plate": ["a", evil]}}[payload]
    buf = io.BytesIO()
    np.save(buf, np.array(obj, dtype=object), allow_pickle=True)
    path = tmp_path / "evil.npz"
    with zipfile.ZipFile(path, "w") as z:
        feats = io.BytesIO()
        np.save(feats, np.zeros((2, 3), np.float32))
        z.writestr("features.npy", feats.getvalue())
        z.writestr("metadata.npy", buf.getvalue())
    with pytest.raises(ValueError, match=r"evil\.npz.*(never unpickles|not a plain value|holds a reference)"):
        read_table(path)
    assert not marker.exists()
    # and the pickle module would have run it: the test's payload is real
    assert pickle.loads(pickle.dumps(0)) == 0


@pytest.mark.parametrize("name, options", [("p.csv.gz", "infer"), ("p.csv.gz", {"method": "infer"}),
                                           ("p.csv.xz", {"method": "infer", "preset": 1}),
                                           ("p.csv.gz", {"method": "gzip", "mtime": 1})])
def test_compression_options_follow_the_name(tmp_path, name, options):
    """compression_options='infer' inferred from the temporary name (no suffix): plain text under .csv.gz."""
    path = write_profiles(_table(), tmp_path / name, compression_options=options)
    assert path.read_bytes().startswith(TEXT_MAGIC[path.suffix])
    pd.testing.assert_frame_equal(read_table(path), read_table(write_profiles(_table(), tmp_path / "plain.csv")))


def test_compression_that_contradicts_the_name_is_refused(tmp_path):
    with pytest.raises(ValueError, match="compression 'gzip' does not match the name"):
        write_profiles(_table(), tmp_path / "p.csv", compression_options={"method": "gzip"})
    assert not list(tmp_path.iterdir())
