"""Assay predictions of a trained ``train.task: assays`` model (GapNet, SC-CNN, ...), averaged over the views of a
sample (the PyTorch path; ``phenovec profile`` runs exported ONNX models at scale).

:func:`predict_assays` runs the checkpoint's model over every crop of a crops folder (``embed_crops``: the same
input scaling as training), turns the task head's logits into probabilities (sigmoid) and averages them per
``by``: ``"compound"`` (the checkpoint's compound column: GapNet's "network outputs for a sample are combined by
averaging predictions"), ``"well"`` (plate + well: the crops of a well, SC-CNN's aggregation) or ``"cell"`` (no
averaging). The table has the key column(s), ``n_views`` (crops averaged) and one probability column per task (the
task names of the checkpoint), ready for :func:`phenovec.evaluate.assay_prediction.evaluate_assay_predictions`.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd

BY = ("compound", "well", "cell")
WELL_COLUMNS = ("Metadata_Plate", "Metadata_Well")


def predict_assays(checkpoint, crops_path: str | os.PathLike, *, by: str = "compound",
                   rows: Sequence[int] | None = None, batch_size: int = 256, device: str = "auto",
                   progress: bool | None = None) -> pd.DataFrame:
    """Per-``by`` mean task probabilities of ``checkpoint`` (a path or loaded checkpoint dict of an assays run) over
    the crops of ``crops_path``; ``rows`` limits the crops (values of the cell table's ``row`` column, e.g. the
    test cells of the run's ``split.parquet``). See the module docstring."""
    import torch

    from phenovec.train.checkpoint import load_checkpoint, model_from_checkpoint
    from phenovec.train.config import ConfigError
    from phenovec.train.loop import embed_crops

    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}, got {by!r}")
    ck = load_checkpoint(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    dc = ck["data_config"]
    if dc.get("task") != "assays" or not dc.get("tasks"):
        raise ConfigError(f"{checkpoint if not isinstance(checkpoint, dict) else 'checkpoint'}: not an assays run "
                          f"(data_config task = {dc.get('task')!r}); predict_assays needs train.task: assays")
    tasks = [str(t) for t in dc["tasks"]]
    model, _ = model_from_checkpoint(ck)
    cells, features = embed_crops(ck, crops_path, batch_size=batch_size, device=device, progress=progress)
    if rows is not None:
        keep = cells["row"].isin(np.asarray(list(rows), dtype=np.int64)).to_numpy()
        if not keep.any():
            raise ValueError(f"{crops_path}: none of the {len(rows)} requested rows has a crop")
        cells, features = cells.loc[keep].reset_index(drop=True), features[keep]
    with torch.no_grad():  # the head of ProfileNet: features -> logits (dropout is off in eval mode)
        probs = torch.sigmoid(model.eval().head(torch.from_numpy(features))).numpy().astype(np.float64)
    table = pd.concat([cells.reset_index(drop=True), pd.DataFrame(probs, columns=tasks)], axis=1)
    if by == "cell":
        return table
    keys = [dc["compound_column"]] if by == "compound" else list(WELL_COLUMNS)
    missing = [k for k in keys if k not in cells.columns]
    if missing:
        raise ValueError(f"{crops_path}: the cell table has no column {missing[0]!r} to average by {by}")
    grouped = table.groupby(keys, sort=True, dropna=False)
    out = grouped[tasks].mean()
    out.insert(0, "n_views", grouped.size())
    return out.reset_index()
