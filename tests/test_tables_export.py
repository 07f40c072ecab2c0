"""Table-trainer models export to ONNX (standardisation in the graph) with a parity check, and run on a new table."""
import numpy as np
import pandas as pd
import pytest

from phenovec.train.tables.loop import train_tables
from small_tables import small_config, write_small_tables


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    return write_small_tables(tmp_path_factory.mktemp("small"))


_cfg = small_config


@pytest.mark.parametrize("task, opset", [("clip", 17), ("bae", 18), ("simclr_profiles", 17), ("fnn", 17)])
def test_export_parity_and_inference_on_a_new_table(tables, tmp_path, task, opset):
    import torch

    from phenovec.train.tables.export import export_table_model, table_model_from_checkpoint
    from phenovec.train.tables.inference import embed_table, table_model_metadata

    r = train_tables(_cfg(tables, task, tmp_path / task, 2))
    onnx_path = tmp_path / f"{task}.onnx"
    cp = pd.read_parquet(tables["cp"])
    feats = [c for c in cp.columns if c.startswith("cp_")]
    rep = export_table_model(r.last, onnx_path, opset=opset, parity_profiles=cp[feats].to_numpy()[:20])
    assert rep.parity.passed and rep.max_abs_diff <= 1e-4 and rep.parity.reference_max_abs > 1e-3
    assert rep.exporter == ("dynamo" if opset >= 18 else "torchscript")
    meta = table_model_metadata(onnx_path)
    assert meta["task"] == task and meta["feature_columns"] == feats
    assert len(meta["standardization"]["mean"]) == len(feats)
    # a user's new table: columns in another order, extra metadata; the graph standardises as training did
    new = cp[["Metadata_pert_id"] + feats[::-1]].iloc[:9]
    out = embed_table(onnx_path, new)
    model, ck = table_model_from_checkpoint(r.last)
    s = ck["data_config"]["cp_standardization"]
    x = (torch.tensor(new[feats].to_numpy(np.float32)) - s["mean"]) / s["scale"]
    with torch.no_grad():
        ref = model.embed(x).numpy()
    cols = meta["output_columns"]
    assert list(out.columns) == ["Metadata_pert_id"] + cols
    assert np.allclose(out[cols].to_numpy(), ref, atol=1e-5)
    if task == "fnn":
        assert cols == ck["data_config"]["tasks"] and ((out[cols] >= 0) & (out[cols] <= 1)).all().all()
    else:
        assert len(cols) == 8  # embed_dim: the encoder alone, not the projection
    with pytest.raises(ValueError, match=r"needs feature column 'cp_3'"):
        embed_table(onnx_path, new.drop(columns=["cp_3"]))
    bad = new.copy()
    bad.iloc[4, bad.columns.get_loc("cp_5")] = np.nan
    with pytest.raises(ValueError, match=r"feature column 'cp_5' is not finite at row 4"):
        embed_table(onnx_path, bad)


def test_parity_failure_writes_nothing(tables, tmp_path):
    from phenovec.export.parity import ParityError
    from phenovec.train.tables.export import export_table_model

    r = train_tables(_cfg(tables, "simclr_profiles", tmp_path / "s", 1))
    with pytest.raises(ParityError, match="max abs difference"):
        export_table_model(r.last, tmp_path / "m.onnx", opset=17, atol=-1.0)
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.glob(".m.onnx.tmp*"))
