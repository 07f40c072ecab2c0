"""Self-supervised SimCLR on single-cell crops (Chen et al. 2020; the RxRx2 deck's recipe; the thesis' proposal).

Each training batch is augmented twice with the trainer's own augmentation (``augment``: DeepProfiler's crop /
flip / rot90 / brightness / contrast, drawn independently for the two views), both views go through the encoder
(``ProfileNet.embed``: the pooled penultimate features, what ``phenovec export`` keeps and ``phenovec profile``
runs) in one pass, then through a projection head, and the loss is NT-Xent (``phenovec.train.nt_xent``) over the
2N views with ``simclr.temperature`` (0.5, the deck's value).

**Projection head** (``extra_modules()``: trained, checkpointed as ``objective_state`` and restored on resume by
the loop, *not* exported): ``Linear(D, hidden) -> BatchNorm1d -> ReLU -> Dropout -> Linear(hidden, out)`` with
``simclr.projection_hidden`` = 512, ``projection_dim`` = 128, ``projection_dropout`` = 0 (the deck: "two dense
layers + batch normalisation + dropout", sizes not given; 512 / 128 are SimCLR's CIFAR sizes scaled down).
The model's own classification head is unused: the network is built with one output (``Targets.outputs = 1``) so
it costs ``D + 1`` parameters, receives no gradient, and export (features only by default) ignores it.

**Positives** (``simclr.positives``): ``views`` = the two augmentations of one crop (plain SimCLR); ``replicates``
= also every crop of the batch whose ``simclr.replicate_column`` (default ``data.label``, e.g. a compound column)
has the same value, in both views (NT-Xent with several positives per anchor, Khosla et al.'s L_out), the
thesis' "positive pairs from the same compound (different views or replicates)".

**Targets**: an N x 2 int64 matrix per cell: the ``data.label`` code (the kNN label of validation) and the
``replicate_column`` code (the replicate positives). No label is learned from unless ``positives: replicates``.

**Validation** (``best.pt``): ``score = knn_accuracy``, higher is better: the kNN monitor of Wu et al. 2018
(InstDisc) and MoCo. During the epoch the encoder embeddings of the first view of the last ``simclr.knn_cells``
(10,000, rounded up to whole batches) training crops are kept with their ``data.label``; each validation cell (no
augmentation, eval mode) is given the majority ``data.label`` of its ``simclr.knn_k`` (5, the thesis' k) most
cosine-similar kept training crops (a tie goes to the tied class of the nearest neighbour). Validation wells are never training wells (the split keeps
``data.split_by`` groups whole), so the score measures how well the space generalises to unseen wells, not how a
well resembles itself. ``val_loss`` is NT-Xent on the validation cells with two views drawn by a fixed-seed
augmentation (the same views every epoch, so comparable across epochs); it is reported, not used to pick. A
label-free alternative would be to pick by ``val_loss``; kNN accuracy was chosen because it measures what the
profile is for (the thesis' clustering metric).

**Batch of one**: NT-Xent needs a negative, so a batch of one crop has no loss. The loop cuts batches without
dropping the last, so when the last batch of an epoch would hold one crop, ``targets()`` leaves one training cell
out (the last in table order, with a warning) and the last batch is empty instead; ``step`` refuses a batch of
one with a clear error should one still arrive. Fewer than 2 training cells is a ``ConfigError``.

**Optimiser: the RxRx2 recipe** is Adam with learning rate 4e-4 for 20 epochs. The trainer's optimisers are
SGD and AdamW, and AdamW with zero weight decay *is* Adam, so the recipe is::

    train: {task: simclr, epochs: 20}
    optim: {name: adamw, lr: 4.0e-4, weight_decay: 0.0, schedule: constant, warmup_epochs: 0}
    simclr: {temperature: 0.5}

(``optim.*`` keeps the trainer's defaults unless set: SGD 0.02 with cosine decay also trains; the values above
are the deck's.) ``optim.label_smoothing`` does not apply. ``augment.enabled: false`` (or every augmentation off),
``data.balance: loss`` and ``data.batch_size`` < 2 are refused by ``check_config``.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from phenovec.io.config_schema import NONE_TYPE, ConfigError
from phenovec.train.objectives.base import Objective, Targets

_VAL_AUGMENT_EPOCH = 1 << 40  # the fixed-seed augmentation of val_loss: an "epoch" no run reaches


class SimCLR(Objective):
    task = "simclr"
    score = "knn_accuracy"
    higher_is_better = True
    SCHEMA = {
        "simclr": {
            "temperature": (0.5, (float, int), (1e-4, 100.0)),
            "projection_hidden": (512, (int,), (1, 1 << 16)),
            "projection_dim": (128, (int,), (1, 1 << 16)),
            "projection_dropout": (0.0, (float, int), (0.0, 0.99)),
            "positives": ("views", (str,), ("views", "replicates")),
            "replicate_column": (None, (str, NONE_TYPE), None),
            "knn_k": (5, (int,), (1, 1000)),
            "knn_cells": (10000, (int,), (2, 1 << 24)),
        }
    }
    COMMENTS = {
        "simclr": "SimCLR on crops (train.task: simclr); the RxRx2 recipe also sets optim: {name: adamw, "
                  "lr: 4.0e-4, weight_decay: 0.0, schedule: constant, warmup_epochs: 0} (AdamW with no decay = Adam)",
        "simclr.temperature": "NT-Xent temperature (RxRx2: 0.5)",
        "simclr.projection_hidden": "projection head hidden width (Linear -> BatchNorm -> ReLU -> Dropout -> Linear)",
        "simclr.projection_dim": "projection head output width (the head is trained, not exported)",
        "simclr.projection_dropout": "dropout in the projection head",
        "simclr.positives": "views (two augmentations of a crop) | replicates (also every crop of the batch sharing "
                            "simclr.replicate_column)",
        "simclr.replicate_column": "null (= data.label) or the cell-table column whose equal values are replicate "
                                   "positives (e.g. the compound)",
        "simclr.knn_k": "k of the validation kNN accuracy that picks best.pt (each validation cell takes the majority "
                        "data.label of its k nearest training crops)",
        "simclr.knn_cells": "the kNN reference: the embeddings of the epoch's last this many training crops",
    }

    @classmethod
    def check_config(cls, cfg: dict, source: str, base) -> None:
        a, d = cfg["augment"], cfg["data"]
        if not a["enabled"]:
            raise ConfigError(f"{source}: augment.enabled: false, but train.task: simclr learns by telling two "
                              "augmented views of each crop apart from the others; turn augmentation on")
        lo, hi = a["contrast"]
        if a["crop"] == 0 and not a["flip"] and not a["rotate"] and a["brightness"] == 0 and lo == hi == 1:
            raise ConfigError(f"{source}: augment: every augmentation is off (crop 0, flip and rotate false, "
                              "brightness 0, contrast [1, 1]), so SimCLR's two views would be identical; turn one on")
        if d["balance"] == "loss":
            raise ConfigError(f"{source}: data.balance: loss (class weights) has no meaning for train.task: simclr "
                              "(use none or sampler)")
        if d["batch_size"] < 2:
            raise ConfigError(f"{source}: data.batch_size = {d['batch_size']}: train.task: simclr needs at least 2 "
                              "crops per batch (NT-Xent's negatives are the other crops)")

    # -- targets ------------------------------------------------------------------------------------------------
    def targets(self, cells: pd.DataFrame, is_train: np.ndarray) -> Targets:
        from phenovec.train.data import DataError, class_index

        d, s = self.cfg["data"], self.cfg["simclr"]
        label = d["label"]
        replicate = s["replicate_column"] or label
        crops = d.get("crops", "<crops>")
        for col in dict.fromkeys([label, replicate]):
            if col not in cells.columns:
                raise DataError(f"{crops}: the cell table has no column {col!r} (simclr needs data.label and "
                                f"simclr.replicate_column; columns: {', '.join(map(str, cells.columns))})")
            if cells[col].isna().any():
                i = int(np.flatnonzero(cells[col].isna().to_numpy())[0])
                raise DataError(f"{crops}: cell table column {col!r} is missing (NaN) at row {i}")
        classes, label_code = class_index(cells[label])
        _, replicate_code = class_index(cells[replicate])
        values = np.stack([label_code, replicate_code], axis=1).astype(np.int64)
        usable = self._drop_single_last_batch(cells, is_train, label_code)
        self.classes = [str(c) for c in classes]
        meta = {"knn_label_column": label, "replicate_column": replicate, "positives": s["positives"]}
        return Targets(values, 1, meta, groups=label_code, usable=usable)

    def _drop_single_last_batch(self, cells: pd.DataFrame, is_train: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """All True, except the training cells left out so that no epoch ends with a batch of one (module doc)."""
        from phenovec.train.data import epoch_batches

        d, t = self.cfg["data"], self.cfg["train"]
        where, size, sub = d.get("crops", "<crops>"), d["batch_size"], d["subsample"]
        usable = np.ones(len(cells), dtype=bool)
        train_pos = np.flatnonzero(is_train)
        n = len(train_pos)
        if n < 2:
            raise ConfigError(f"{where}: train.task: simclr needs at least 2 training cells, the split left {n}")
        sampler = d["balance"] == "sampler"
        n_cls = len(np.unique(groups[train_pos])) if sampler else 1

        def drawn(m: int) -> int:  # the cells phenovec.train.data.epoch_batches draws per epoch from m
            if sampler:
                return max(int(round(sub * m / n_cls)), 1) * n_cls
            return m if sub >= 1.0 else max(1, int(round(sub * m)))

        drop = 0
        while drawn(n - drop) % size == 1 and n - drop > 2:
            drop += 1
        if drop:  # spread over the training cells, not one well's
            usable[train_pos[np.unique(np.linspace(0, n - 1, drop).round().astype(np.int64))]] = False
        keep = train_pos[usable[train_pos]]
        rows = cells["row"].to_numpy(dtype=np.int64)
        plan = epoch_batches(rows[keep], groups[keep], 1 << 40, size, t["seed"], 0, sub, sampler, d["shuffle_chunks"])
        if len(plan[-1]) < 2:
            raise ConfigError(f"{where}: the last training batch holds one crop with data.batch_size = {size}; "
                              "NT-Xent needs 2 (change data.batch_size)")
        if drop:
            warnings.warn(f"train.task: simclr: {drop} of {n} training cell(s) left out so that no batch holds a "
                          f"single crop (data.batch_size = {size}, {drawn(n)} crops drawn per epoch)", UserWarning,
                          stacklevel=3)
        return usable

    # -- model --------------------------------------------------------------------------------------------------
    def setup(self, model, train_targets: np.ndarray, device) -> None:
        from torch import nn

        from phenovec.train.loop import _augmenter

        super().setup(model, train_targets, device)
        s = self.cfg["simclr"]
        self.temperature = float(s["temperature"])
        self.head = nn.Sequential(nn.Linear(model.feature_dim, s["projection_hidden"]),
                                  nn.BatchNorm1d(s["projection_hidden"]), nn.ReLU(inplace=True),
                                  nn.Dropout(float(s["projection_dropout"])),
                                  nn.Linear(s["projection_hidden"], s["projection_dim"]))
        self.val_augment = _augmenter(self.cfg, self.cfg["train"]["seed"], _VAL_AUGMENT_EPOCH)
        self._val_state = self.val_augment.generator.get_state()  # restored before every validation
        self._bank: list = []  # (embeddings, labels) of this epoch's training crops, for the kNN monitor

    def extra_modules(self):
        return self.head

    def _loss(self, model, x, y, augment, keep: bool = False):
        """(NT-Xent, view accuracy sum): both views encoded in one pass; ``keep`` banks the first views'
        embeddings for the kNN monitor."""
        import torch

        from phenovec.train.nt_xent import nt_xent

        n = x.shape[0]
        if n < 2:
            raise ValueError(f"train.task: simclr got a batch of {n} crop(s); NT-Xent needs at least 2 (its negatives "
                             "are the other crops of the batch)")
        h = model.embed(torch.cat([augment(x), augment(x)]))
        if keep:
            self._keep(h[:n].detach().float().cpu(), y[:, 0].cpu())
        z = self.head(h)
        groups = y[:, 1] if self.cfg["simclr"]["positives"] == "replicates" else None
        loss = nt_xent(z[:n], z[n:], self.temperature, groups)
        with torch.no_grad():  # share of views whose most similar other view is their own partner
            zn = torch.nn.functional.normalize(z.detach().float(), dim=1)
            sim = (zn @ zn.T).fill_diagonal_(float("-inf"))
            partner = torch.arange(2 * n, device=z.device).roll(n)
            hits = float((sim.argmax(1) == partner).sum())
        return loss, hits

    def step(self, model, x, y, augment):
        if augment is None:
            raise ValueError("train.task: simclr needs augmentation (augment.enabled: true) for its two views")
        loss, hits = self._loss(model, x, y, augment, keep=True)
        return loss, {"view_accuracy": (hits, 2 * x.shape[0])}

    def _keep(self, emb, labels) -> None:
        """Bank the newest training embeddings: the last ``simclr.knn_cells``, rounded up to whole batches."""
        self._bank.append((emb, labels))
        cap, total = self.cfg["simclr"]["knn_cells"], sum(len(e) for e, _ in self._bank)
        while total - len(self._bank[0][0]) >= cap:
            total -= len(self._bank.pop(0)[0])

    def validate(self, model, batches) -> dict:
        import torch

        self.val_augment.generator.set_state(self._val_state)
        bank, self._bank = self._bank, []  # the next epoch banks afresh
        embs, ys, loss_sum, seen = [], [], 0.0, 0
        for x, y in batches:
            embs.append(model.embed(x).float().cpu())
            ys.append(y.cpu())
            if len(x) >= 2:
                loss, _ = self._loss(model, x, y, self.val_augment)
                loss_sum += float(loss) * len(x)
                seen += len(x)
        if not embs or not bank:
            return {"loss": loss_sum / seen if seen else None, "knn_accuracy": None}
        y = torch.cat(ys)
        acc = knn_monitor_accuracy(torch.cat(embs), y[:, 0], torch.cat([e for e, _ in bank]), torch.cat([l for _, l in bank]),
                           self.cfg["simclr"]["knn_k"])
        return {"loss": loss_sum / seen if seen else None, "knn_accuracy": acc}


def knn_monitor_accuracy(query, query_labels, reference, reference_labels, k: int = 5, block: int = 1024) -> float:
    """Share of ``query`` rows whose majority label among their ``k`` most cosine-similar ``reference`` rows is
    their own (torch tensors: N x D, N, M x D, M); a tie goes to the tied class of the nearest neighbour."""
    import torch

    q = torch.nn.functional.normalize(query.float(), dim=1)
    r = torch.nn.functional.normalize(reference.float(), dim=1)
    query_labels, reference_labels = query_labels.long(), reference_labels.long()
    n_cls = int(max(query_labels.max(), reference_labels.max())) + 1
    kk = min(k, len(r))
    ranks = torch.arange(kk).expand(min(block, len(q)), kk)
    correct = 0
    for i in range(0, len(q), block):
        lab = reference_labels[(q[i:i + block] @ r.T).topk(kk, dim=1).indices]
        rk = ranks[: len(lab)]
        counts = torch.zeros(len(lab), n_cls, dtype=torch.long).scatter_add_(1, lab, torch.ones_like(lab))
        nearest = torch.full((len(lab), n_cls), kk, dtype=torch.long).scatter_reduce_(1, lab, rk, reduce="amin")
        # most votes; among tied classes, the one with the nearest vote
        correct += int(((counts * (kk + 1) + (kk - nearest)).argmax(1) == query_labels[i:i + block]).sum())
    return correct / len(q)
