"""Single-label classification of crops: cross-entropy with label smoothing, optionally class-weighted.

The weakly supervised recipe of DeepProfiler and the thesis: the label is a cell-table column (treatment by default,
``data.label``); classes are the labels seen in training; validation cells of a class unseen in training are left
out of the validation metrics. ``best.pt`` is the epoch with the best validation accuracy.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from phenovec.train.objectives.base import Objective, Targets


class Classify(Objective):
    task = "classify"
    score = "accuracy"

    def targets(self, cells: pd.DataFrame, is_train: np.ndarray) -> Targets:
        from phenovec.train.data import class_index

        label = self.cfg["data"]["label"]
        classes, _ = class_index(cells.loc[is_train, label])
        self.classes = classes
        lookup = {c: i for i, c in enumerate(classes)}
        target = cells[label].map(lookup)
        usable = ~target.isna().to_numpy()
        values = target.fillna(-1).to_numpy(dtype=np.int64)
        return Targets(values, len(classes), {"label_column": label, "classes": [str(c) for c in classes]},
                       groups=values, usable=usable)

    def setup(self, model, train_targets: np.ndarray, device) -> None:
        import torch

        super().setup(model, train_targets, device)
        d, o = self.cfg["data"], self.cfg["optim"]
        weight = None
        if d["balance"] == "loss":
            n = len(self.classes)
            counts = np.bincount(train_targets, minlength=n).astype(np.float64)
            weight = torch.tensor(counts.sum() / (n * np.maximum(counts, 1)), dtype=torch.float32, device=device)
        self.loss_fn = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=o["label_smoothing"])

    def step(self, model, x, y, augment):
        if augment is not None:
            x = augment(x)
        logits = model(x)
        loss = self.loss_fn(logits, y)
        n = len(y)
        return loss, {"accuracy": (float((logits.detach().argmax(1) == y).sum()), n)}

    def validate(self, model, batches) -> dict:
        seen, loss_sum, correct = 0, 0.0, 0
        for x, y in batches:
            logits = model(x).float()
            loss_sum += float(self.loss_fn(logits, y)) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        if not seen:
            return {"loss": None, "accuracy": None}
        return {"loss": loss_sum / seen, "accuracy": correct / seen}
