"""Multi-task assay prediction from crops (GapNet, Hofmarcher et al. 2019): one sigmoid output per assay, trained with
binary cross-entropy over the sparse label matrix, missing labels masked out.

**Labels** (``assays.labels``): a compound x assay table read by :func:`phenovec.io.assay_labels.read_assay_labels`
(wide CSV / Parquet, long, or GapNet's Matrix Market; 1 / 0 / empty or +1 / -1 / 0, ``assays.convention``). A task
with one class in the file is an error naming it. The labels are joined to the cell table by the compound column
(``assays.compound_column``; null = ``data.compound_column``, else ``Metadata_Compound``, else
``Metadata_Treatment`` -- the synthetic plate's) exactly or by InChIKey14 (``assays.match``); a label compound no
cell has is an error naming its label-file row unless ``assays.unknown_compounds`` is ``warn`` or ``ignore`` (a real
matrix such as GapNet's 10,574 compounds is larger than any image set: set ``ignore``). Over the compounds that
have cells, a task with fewer than ``min_actives`` actives or ``min_inactives`` inactives is dropped with one
warning naming it (GapNet: 10 and 10).

**Targets**: a float32 cells x tasks matrix (1 / 0 / NaN), ``usable`` = cells with at least one measured label (DMSO
and unlabelled compounds never train or validate); the checkpoint's ``data_config`` records ``tasks``,
``compound_column`` and the label file. No ``data.balance: sampler`` (there is no single class per cell);
``data.balance: loss`` weights each task's positives by its inactive / active ratio over the training cells
(``pos_weight`` of the masked BCE).

**Step**: augmentation once, logits, :func:`phenovec.train.masked_bce.masked_bce` (computed in float32 under
autocast). **Validation**: the masked BCE and the per-task ROC AUC over the validation cells
(:func:`phenovec.evaluate.assay_prediction.assay_metrics`), tasks with one class among those cells skipped;
``mean_auc`` (their mean) picks ``best.pt``.

**Presets** (:data:`PRESETS`: configuration overrides per network, merged under a user's configuration by whoever
offers ``preset: NAME``). The paper's optimisers (Doc A's table: SGD; lr, momentum, L2 weight decay, batch)::

    gapnet:      optim: {name: sgd, lr: 0.01,  momentum: 0.9, weight_decay: 1.0e-4}   data: {batch_size: 128}
    sc_cnn:      optim: {name: sgd, lr: 0.01,  momentum: 0.2, weight_decay: 1.0e-4}   data: {batch_size: 2048,
                 subsample: 0.2}   (the paper's text says momentum 0.2, the authors' code 0.9; the text is used)
    densenet121: optim: {name: sgd, lr: 0.01,  momentum: 0.9, weight_decay: 1.0e-4}   data: {batch_size: 12}
    resnet101:   optim: {name: sgd, lr: 0.001, momentum: 0.9, weight_decay: 1.0e-4}   data: {batch_size: 24}

each with ``data.split: compound`` and ``data.split_fractions: [0.7, 0.1, 0.2]`` (70 / 10 / 20 % of the compounds,
every crop of a compound in one fold), ``augment.enabled: false`` (the paper states no augmentation), a constant
learning rate, 100 epochs and gradient-norm clipping at 5 (these three are the authors' code's, digest appendix
X.1, not stated in the paper). ``data.compound_column`` and ``assays.labels`` are the user's.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from phenovec.io.config_schema import NONE_TYPE, ConfigError
from phenovec.train.objectives.base import Objective, Targets

def _preset(arch: str, lr: float, momentum: float, batch: int, **data) -> dict:
    return {"model": {"arch": arch},
            "optim": {"name": "sgd", "lr": lr, "momentum": momentum, "weight_decay": 1.0e-4, "schedule": "constant",
                      "warmup_epochs": 0, "clip_grad_norm": 5.0},
            "data": {"batch_size": batch, "split": "compound", "split_fractions": [0.7, 0.1, 0.2], **data},
            "augment": {"enabled": False},
            "train": {"task": "assays", "epochs": 100}}


#: GapNet's paper, per network: configuration overrides (module docstring)
PRESETS = {
    "gapnet": _preset("gapnet", 0.01, 0.9, 128),
    "sc_cnn": _preset("sc_cnn", 0.01, 0.2, 2048, subsample=0.2),
    "densenet121": _preset("densenet121", 0.01, 0.9, 12),
    "resnet101": _preset("resnet101", 0.001, 0.9, 24),
}

#: the cell-table compound columns tried, in order, when neither assays.compound_column nor data.compound_column is set
DEFAULT_COMPOUND_COLUMNS = ("Metadata_Compound", "Metadata_Treatment")


class Assays(Objective):
    task = "assays"
    score = "mean_auc"
    SCHEMA = {
        "assays": {
            "labels": (None, (str,), "path"),
            "compound_column": (None, (str, NONE_TYPE), None),
            "labels_compound_column": (None, (str, NONE_TYPE), None),
            "convention": ("auto", (str,), ("auto", "binary", "signed")),
            "match": ("exact", (str,), ("exact", "inchikey14")),
            "min_actives": (1, (int,), (0, 1 << 30)),
            "min_inactives": (1, (int,), (0, 1 << 30)),
            "unknown_compounds": ("error", (str,), ("error", "warn", "ignore")),
        }
    }
    COMMENTS = {
        "assays": "multi-task assay prediction (GapNet): the label table and how it meets the cells",
        "assays.labels": "the compound x assay label file (wide CSV / Parquet, long, or Matrix Market .mtx); required",
        "assays.compound_column": "null (data.compound_column, else Metadata_Compound, else Metadata_Treatment) or "
                                  "the cell-table column the labels are joined on",
        "assays.labels_compound_column": "null (compound, INCHIKEY, InChIKey, ... whichever the file has) or the "
                                         "label file's compound column",
        "assays.convention": "auto | binary (1 / 0 / empty) | signed (+1 / -1 / 0)",
        "assays.match": "exact | inchikey14 (the first 14 characters of an InChIKey on both sides)",
        "assays.min_actives": "a task with fewer measured actives among the imaged compounds is dropped (warned)",
        "assays.min_inactives": "a task with fewer measured inactives among the imaged compounds is dropped (warned)",
        "assays.unknown_compounds": "error | warn | ignore: label compounds that no cell has",
    }

    @classmethod
    def check_config(cls, cfg: dict, source: str, base) -> None:
        a, d = cfg["assays"], cfg["data"]
        if a["labels"] is None:
            raise ConfigError(f"{source}: assays.labels is required for train.task: assays (the compound x assay "
                              "label file)")
        p = Path(a["labels"])
        p = p if p.is_absolute() else Path(base) / p
        if not p.exists():
            raise ConfigError(f"{source}: assays.labels: {a['labels']!r} does not exist (looked at {p})")
        a["labels"] = str(p.resolve())
        if d["balance"] == "sampler":
            raise ConfigError(f"{source}: data.balance: sampler is not defined for train.task: assays (a cell has "
                              "many tasks); use none or loss (per-task positive weights)")

    # -- targets ---------------------------------------------------------------------------------------------
    def compound_column(self, cells: pd.DataFrame) -> str:
        a, d = self.cfg["assays"], self.cfg["data"]
        col = a["compound_column"] or d["compound_column"]
        if col is not None:
            if col not in cells.columns:
                key = "assays.compound_column" if a["compound_column"] else "data.compound_column"
                raise ConfigError(f"{key}: the cell table has no column {col!r} (columns: "
                                  f"{', '.join(map(str, cells.columns))})")
            return col
        for c in DEFAULT_COMPOUND_COLUMNS:
            if c in cells.columns:
                return c
        raise ConfigError(f"assays.compound_column: the cell table has none of {', '.join(DEFAULT_COMPOUND_COLUMNS)}; "
                          "name the compound column")

    def targets(self, cells: pd.DataFrame, is_train: np.ndarray) -> Targets:
        from phenovec.io.assay_labels import read_assay_labels

        a = self.cfg["assays"]
        col = self.compound_column(cells)
        labels = read_assay_labels(a["labels"], convention=a["convention"], compound_column=a["labels_compound_column"])
        joined = labels.join(cells, col, match=a["match"], table_name=f"cell table (column {col!r})")
        rep = joined.report
        if rep.labels_not_in_table and a["unknown_compounds"] != "ignore":
            first = rep.labels_not_in_table_examples[0]
            row = int(labels.compounds.get_loc(first)) + 1
            msg = (f"{a['labels']}: {rep.labels_not_in_table} label compound(s) have no cell in column {col!r}, e.g. "
                   f"{first!r} (label row {row}); set assays.unknown_compounds: warn or ignore to allow it")
            if a["unknown_compounds"] == "error":
                raise ConfigError(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)
        if rep.matched_compounds == 0:
            raise ConfigError(f"{a['labels']}: no compound of column {col!r} of the cell table has labels "
                              f"(label compounds e.g. {list(labels.compounds[:3])}, cell compounds e.g. "
                              f"{list(pd.unique(cells[col].astype(str))[:3])})")
        kept = joined.labels.select_tasks(a["min_actives"], a["min_inactives"])
        cols = [joined.tasks.index(t) for t in kept.tasks]
        values = np.ascontiguousarray(joined.values[:, cols], dtype=np.float32)
        usable = (~np.isnan(values)).any(axis=1)
        self.tasks = list(kept.tasks)
        meta = {"tasks": self.tasks, "classes": [], "compound_column": col, "label_file": a["labels"]}
        return Targets(values, len(self.tasks), meta, groups=None, usable=usable)

    # -- training --------------------------------------------------------------------------------------------
    def setup(self, model, train_targets: np.ndarray, device) -> None:
        import torch

        super().setup(model, train_targets, device)
        self.pos_weight = None
        if self.cfg["data"]["balance"] == "loss":
            act = np.sum(train_targets == 1, axis=0).astype(np.float64)
            inact = np.sum(train_targets == 0, axis=0).astype(np.float64)
            w = np.where(act > 0, inact / np.maximum(act, 1), 1.0)
            self.pos_weight = torch.tensor(w, dtype=torch.float32, device=device)

    def step(self, model, x, y, augment):
        from phenovec.train.masked_bce import masked_bce

        if augment is not None:
            x = augment(x)
        logits = model(x).float()
        return masked_bce(logits, y, pos_weight=self.pos_weight), {}

    def validate(self, model, batches) -> dict:
        import torch

        from phenovec.evaluate.assay_prediction import assay_metrics
        from phenovec.train.masked_bce import masked_bce

        probs, ys, loss_sum, measured = [], [], 0.0, 0
        for x, y in batches:
            logits = model(x).float()
            n = int((~torch.isnan(y)).sum())
            loss_sum += float(masked_bce(logits, y, pos_weight=self.pos_weight)) * n
            measured += n
            probs.append(torch.sigmoid(logits).cpu().numpy())
            ys.append(y.cpu().numpy())
        if not measured:
            return {"loss": None, "mean_auc": None, "tasks_scored": 0}
        per_task = assay_metrics(np.concatenate(probs), np.concatenate(ys), self.tasks, where="validation cells")
        auc = per_task["auc"].dropna()
        return {"loss": loss_sum / measured, "mean_auc": float(auc.mean()) if len(auc) else None,
                "tasks_scored": int(len(auc))}
