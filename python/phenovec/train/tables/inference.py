"""Run an exported table model (``phenovec.train.tables.export``) on a new profile table with onnxruntime.

``embed_table(model.onnx, table)`` takes the columns the model's metadata names (``feature_columns``, in that
order; the standardisation is inside the graph), runs the model and returns the table's other columns followed by
the output columns (``feature_<i>``, or the task names of an ``fnn``). A missing feature column, a NaN / infinite
value or a model that is not a phenovec table export is a ``ValueError`` naming the file, column and row.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd

__all__ = ["embed_table", "table_model_metadata"]


def table_model_metadata(onnx_path: str | os.PathLike) -> dict:
    """The model's ``metadata_props`` with JSON values decoded; an error when it is not a phenovec table export."""
    import onnx

    from phenovec.train.tables.export import FORMAT

    proto = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    if props.get("format") != FORMAT:
        raise ValueError(f"{onnx_path}: not a phenovec table model (metadata format = {props.get('format')!r}, "
                         f"expected {FORMAT!r})")
    for k in ("feature_columns", "standardization", "output_columns", "tasks", "keys", "model_config"):
        if k in props:
            props[k] = json.loads(props[k])
    return props


def embed_table(onnx_path: str | os.PathLike, table, batch_size: int = 4096,
                providers=("CPUExecutionProvider",)) -> pd.DataFrame:
    """The model's outputs for every row of ``table`` (a DataFrame or a path ``read_table`` reads)."""
    import onnxruntime as ort

    from phenovec.io.profiles import read_table

    source = str(table) if not isinstance(table, pd.DataFrame) else "table"
    df = read_table(table) if not isinstance(table, pd.DataFrame) else table
    meta = table_model_metadata(onnx_path)
    cols = meta["feature_columns"]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: the model {onnx_path} needs feature column {missing[0]!r}, which is not in the "
                         "table" + (f" ({len(missing)} missing in all)" if len(missing) > 1 else ""))
    x = df[cols].to_numpy(dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = (int(v[0]) for v in np.nonzero(bad))
        raise ValueError(f"{source}: feature column {cols[c]!r} is not finite at row {r} ({x[r, c]})")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=list(providers))
    name = sess.get_outputs()[0].name
    parts = [sess.run([name], {"profiles": x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    y = np.concatenate(parts) if parts else np.zeros((0, len(meta["output_columns"])), dtype=np.float32)
    rest = df[[c for c in df.columns if c not in set(cols)]].reset_index(drop=True)
    return pd.concat([rest, pd.DataFrame(y, columns=meta["output_columns"])], axis=1)
