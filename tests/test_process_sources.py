"""Row sources (DataFrame, Parquet, CSV, Zarr embedding store) and profile outputs (CSV, Parquet, AnnData)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from phenovec.io.embeddings import EmbeddingStore, EmbeddingWriter, cast_features, write_embeddings
from phenovec.io.profiles import read_profile_metadata, write_profiles
from phenovec.process.columns import numeric_features, resolve_columns, select_samples
from phenovec.process.source import open_source


@pytest.fixture
def table():
    rng = np.random.default_rng(3)
    n = 103
    meta = pd.DataFrame({"Metadata_Plate": np.repeat(["p1", "p2"], [50, 53]), "Metadata_Well": np.arange(n) % 7})
    x = rng.normal(size=(n, 5)).astype(np.float32)
    return meta, x


def _concat(src, **kw):
    return pd.concat(list(src.iter_batches(**kw)))


@pytest.mark.parametrize("kind", ["frame", "parquet", "csv", "zarr"])
def test_every_source_yields_the_rows_in_order(tmp_path, table, kind):
    meta, x = table
    names = [f"emb_{i}" for i in range(x.shape[1])]
    df = pd.concat([meta, pd.DataFrame(x, columns=names)], axis=1)
    if kind == "frame":
        src = open_source(df)
    elif kind == "parquet":
        df.to_parquet(tmp_path / "t.parquet")
        src = open_source(tmp_path / "t.parquet")
    elif kind == "csv":
        df.to_csv(tmp_path / "t.csv", index=False)
        src = open_source(tmp_path / "t.csv")
    else:
        write_embeddings(tmp_path / "t.zarr", meta, x, features=names, chunk_rows=16)
        src = open_source(tmp_path / "t.zarr")
    assert src.num_rows == len(df)
    assert src.columns == list(df.columns)
    batches = list(src.iter_batches(batch_rows=20))
    assert all(len(b) <= 20 for b in batches) and len(batches) >= 6
    got = pd.concat(batches)
    assert (got.index == np.arange(len(df))).all()
    np.testing.assert_allclose(got[names].to_numpy(dtype=np.float32), x, rtol=1e-6 if kind == "csv" else 0)
    assert (got["Metadata_Plate"].to_numpy() == meta["Metadata_Plate"].to_numpy()).all()
    sub = _concat(src, columns=["emb_3", "Metadata_Well", "emb_1"], batch_rows=40)
    assert list(sub.columns) == ["emb_3", "Metadata_Well", "emb_1"]
    np.testing.assert_allclose(sub["emb_3"].to_numpy(dtype=np.float32), x[:, 3], rtol=1e-6 if kind == "csv" else 0)
    only = _concat(src, columns=["emb_2"], batch_rows=25)
    assert list(only.columns) == ["emb_2"] and len(only) == len(df)
    np.testing.assert_allclose(only["emb_2"].to_numpy(dtype=np.float32), x[:, 2], rtol=1e-6 if kind == "csv" else 0)
    with pytest.raises(KeyError, match="nope"):
        next(src.iter_batches(columns=["nope"]))


def test_embedding_writer_publishes_only_on_success(tmp_path, table):
    meta, x = table
    path = tmp_path / "e.zarr"
    with pytest.raises(RuntimeError):
        with EmbeddingWriter(path, ["a", "b", "c", "d", "e"], chunk_rows=8) as w:
            w.append(meta.iloc[:10], x[:10])
            raise RuntimeError("crash mid-write")
    assert not path.exists() and not list(tmp_path.iterdir())
    with EmbeddingWriter(path, ["a", "b", "c", "d", "e"], chunk_rows=8) as w:
        w.append(meta.iloc[:10], x[:10])
        w.append(meta.iloc[10:], x[10:])
        with pytest.raises(ValueError, match="3 rows but the feature block has 2"):
            w.append(meta.iloc[:3], x[:2])
    store = EmbeddingStore(path)
    assert store.num_rows == len(meta) and store.features == ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(store.array[:], x)
    with pytest.raises(FileExistsError):
        EmbeddingWriter(path, ["a"])


def test_embedding_writer_sizes_chunks_to_a_small_store(tmp_path, table):
    import zarr

    meta, x = table
    n = len(meta)
    for expected, chunk in ((None, 16384), (n, n), (0, 1), (n + 5, n + 5), (10 ** 6, 16384)):
        path = tmp_path / f"e{expected}.zarr"
        with EmbeddingWriter(path, list("abcde"), expected_rows=expected) as w:
            w.append(meta, x)
        assert zarr.open_group(str(path), mode="r")["features"].chunks == (chunk, 5)
        np.testing.assert_array_equal(EmbeddingStore(path).array[:], x)
        pd.testing.assert_frame_equal(EmbeddingStore(path).meta.reset_index(drop=True), meta.reset_index(drop=True))
    # more rows than expected are still all written (in more chunks), in order
    path = tmp_path / "more.zarr"
    with EmbeddingWriter(path, list("abcde"), expected_rows=7) as w:
        w.append(meta.iloc[:10], x[:10])
        w.append(meta.iloc[10:], x[10:])
    np.testing.assert_array_equal(EmbeddingStore(path).array[:], x)
    with pytest.raises(ValueError, match="chunk_rows must be >= 1"):
        EmbeddingWriter(tmp_path / "bad.zarr", ["a"], chunk_rows=0)


@pytest.mark.parametrize("name", ["p.csv", "p.csv.gz", "p.parquet", "p.h5ad", "p.zarr"])
def test_write_profiles_formats_round_trip(tmp_path, name):
    import anndata as ad

    df = pd.DataFrame({"Metadata_Plate": ["a", "b", "c"], "Metadata_Dose": [1.0, 2.0, 3.0],
                       "Cells_x": [0.5, -1.0, 2.0], "Nuclei_y": [3.0, 4.0, np.nan]})
    out = write_profiles(df, tmp_path / name, metadata={"recipe_sha256": "abc"})
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left behind
    if name.endswith((".h5ad", ".zarr")):
        a = ad.read_h5ad(out) if name.endswith(".h5ad") else ad.read_zarr(out)
        assert list(a.var_names) == ["Cells_x", "Nuclei_y"]
        assert list(a.obs.columns) == ["Metadata_Plate", "Metadata_Dose"]  # numeric metadata stays metadata
        np.testing.assert_array_equal(a.X, df[["Cells_x", "Nuclei_y"]].to_numpy())
        assert "abc" in a.uns["phenovec"]
    else:
        back = pd.read_parquet(out) if name.endswith(".parquet") else pd.read_csv(out)
        pd.testing.assert_frame_equal(back, df)
        if name.endswith(".parquet"):
            assert read_profile_metadata(out) == {"recipe_sha256": "abc"}


def test_columns_resolution_and_errors():
    df = pd.DataFrame({"Metadata_Plate": ["a", "b", "b"], "Cells_a": [1.0, 2.0, 3.0],
                       "Nuclei_b": [1.5, "nan", "None"], "Other": [1, 2, 3]})
    feats, meta = resolve_columns(df)
    assert feats == ["Cells_a", "Nuclei_b"] and meta == ["Metadata_Plate"]
    x = numeric_features(df, feats)
    np.testing.assert_array_equal(np.isnan(x[:, 1]), [False, True, True])
    assert x[0, 1] == 1.5
    emb = pd.DataFrame({"Metadata_Plate": ["a"], "efficientnet_0": [1.0], "efficientnet_1": [2.0]})
    assert resolve_columns(emb)[0] == ["efficientnet_0", "efficientnet_1"]
    bad = df.assign(Cells_a=[1.0, "x", 3.0])
    with pytest.raises(ValueError, match=r"'Cells_a' is not numeric: row 1 holds 'x'"):
        numeric_features(bad, ["Cells_a"])
    # numeric strings are numbers, as pycytominer's astype(float) reads them; the bad value is the one named
    text = df.assign(Cells_a=["1.5", " 2.5 ", "oops"])
    with pytest.raises(ValueError, match=r"'Cells_a' is not numeric: row 2 holds 'oops'"):
        numeric_features(text, ["Cells_a"])
    np.testing.assert_array_equal(numeric_features(df.assign(Cells_a=["1.5", "2.5", "3.5"]), ["Cells_a"])[:, 0],
                                  [1.5, 2.5, 3.5])
    with pytest.raises(KeyError, match="Cells_zz"):
        resolve_columns(df, features=["Cells_zz"])
    with pytest.raises(ValueError, match="matches no row"):
        select_samples(df, "Metadata_Plate == 'zzz'")
    assert select_samples(df, "Metadata_Plate == 'b'").tolist() == [False, True, True]


def test_cast_features_to_float16_is_numpys_cast_bit_for_bit():
    """float32 -> float16 through Rust (F16C where the CPU has it): every value numpy's astype gives, ties to even,
    subnormals, infinities, signed zeros, NaN; any shape and memory layout; a finite value float16 cannot hold is
    an error naming row and column (numpy gives inf); other dtypes through astype."""
    rng = np.random.default_rng(3)
    mags = 10.0 ** rng.uniform(-30, 4.8, 20_000)  # up to ~63,000: all within float16
    x = (mags * rng.choice([-1.0, 1.0], mags.size)).astype(np.float32)
    ulp = np.float32(2.0 ** -24)  # float16's smallest subnormal: exact multiples and halfway points
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.99, 1e-8, ulp, ulp / 2, ulp * 1.5,
                         ulp * 2.5, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 6.1035e-5, 6.1e-5], np.float32)
    x = np.concatenate([x, specials, -specials])
    m = x[:x.size // 7 * 7].reshape(-1, 7)
    for a in (x, m, m.T, m[::3, 1:], x[:0].reshape(0, 4)):
        got = cast_features(a, "float16")
        assert got.dtype == np.float16 and got.shape == a.shape
        np.testing.assert_array_equal(got.view(np.uint16), a.astype(np.float16).view(np.uint16))
    with pytest.raises(ValueError, match=r"feature value 65520 at row 1, column 2 is beyond float16's range.*float32"):
        cast_features(np.array([[0, 1, 2], [3, 4, 65520]], np.float32), "float16")  # numpy: inf and a warning
    nan = cast_features(np.array([[np.nan, 1.0]], np.float32), np.float16)
    assert np.isnan(nan[0, 0]) and nan[0, 1] == 1.0
    same = np.ones((2, 3), np.float32)
    assert cast_features(same, "float32") is same  # already in the store dtype: no copy
    np.testing.assert_array_equal(cast_features(np.ones(3, np.float64), "float16"), np.ones(3, np.float16))


@pytest.mark.parametrize("order", ["C", "F"])
def test_numeric_features_in_row_slabs_equals_per_column(order):
    """The feature block is converted a slab of rows at a time into one preallocated matrix (mixed float32 / int /
    bool / float64 blocks, a column order unlike the table's, more rows than a slab); the same values as each column
    converted alone, in the order asked for."""
    import phenovec.process.columns as pc

    n = pc._SLAB_ROWS * 2 + 123
    rng = np.random.default_rng(4)
    df = pd.DataFrame({"Metadata_Plate": ["P"] * n, "Cells_a": rng.normal(size=n).astype(np.float32),
                       "Cells_b": rng.integers(0, 9, n), "Cells_c": rng.random(n) < 0.5, "Cells_d": rng.normal(size=n)})
    df.loc[7, "Cells_d"] = np.nan
    feats = ["Cells_d", "Cells_b", "Cells_a", "Cells_c"]
    for dtype in (np.float64, np.float32):
        x = numeric_features(df, feats, dtype, order=order)
        want = np.column_stack([df[c].to_numpy(dtype=dtype) for c in feats])
        np.testing.assert_array_equal(x, want)
        assert x.dtype == dtype and (x.flags.c_contiguous if order == "C" else x.flags.f_contiguous)


def test_streamed_csv_keeps_a_metadata_column_one_type(tmp_path):
    """A chunk of digit-only plate names was read as numbers and one beside '1001a' as text: aggregate_stream gave
    plate 1001 twice, with two wrong medians. The metadata columns' types come from the whole file."""
    from phenovec.process.aggregate import aggregate, aggregate_stream

    n = 70_000
    df = pd.DataFrame({"Metadata_Plate": ["1001"] * n, "Metadata_Well": ["A01"] * n,
                       "Cells_x": np.arange(n, dtype=float)})
    df.loc[n - 1, "Metadata_Plate"] = "1001a"
    df.to_csv(tmp_path / "plates.csv", index=False)
    want = aggregate(str(tmp_path / "plates.csv"))
    got = aggregate_stream(str(tmp_path / "plates.csv"), batch_rows=20_000)
    assert len(got) == 2
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))
