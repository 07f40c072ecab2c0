"""Multitask FNN (FSL-CP's ``multitask cp``): pre-trained on all training tasks at once, then per episode a fresh
one-output head fine-tuned on the support set.

Pre-training: one FNN with an output per training task, on every compound labelled by at least one task; the
label matrix is mostly missing (-1), and the loss is the thesis' masked BCE on logits (missing pairs contribute
nothing; the sum over labelled pairs is divided by their count). FSL-CP's settings: SGD with momentum 0.9, learning
rate 1e-2 divided by 10 every 20 epochs, weight decay 1e-4, gradient-norm clipping at 5, batches of 256, 50 epochs.

Per episode (:meth:`fit`): the thesis freezes the pre-trained body, replaces the multitask head with a new
one-output head and fine-tunes only that layer on the support set, evaluates, and reverts the weights. Here the
pre-trained weights are never written: :meth:`fit` builds the episode's model from them (a new head, initialised
from ``seed``; with ``finetune_body=True`` a copy of the body is fine-tuned as well, as FSL-CP's code did), so the
next episode starts from exactly the pre-trained state. FSL-CP fine-tuned 50 epochs of SGD (learning rate 1e-3,
momentum 0.9); with a frozen body and a few support compounds that barely moves a fresh head, so the defaults here
are 100 full-batch Adam steps at 1e-2 (options ``head_steps``, ``head_lr``).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from phenovec.activity.learner import Learner, TaskData, check_support
from phenovec.activity.learners.backbone import (SMALL_FNN, FNN, as_tensor, check_query, init_linear, resolve_device,
                                                 seeded)
from phenovec.activity.learners.training_episodes import check_training_tasks


def masked_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The thesis' multitask BCE on logits: pairs whose target is -1 (missing) are left out, the loss is the sum
    over labelled pairs divided by their number (plus 1e-7)."""
    mask = target != -1
    bce = logits.clamp(min=0) - logits * target + torch.log1p(torch.exp(-logits.abs()))
    return torch.where(mask, bce, torch.zeros_like(bce)).sum() / (mask.sum() + 1e-7)


def label_matrix(tasks: list[TaskData], where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(compounds, x, labels)``: every compound labelled by some task once, its profile, and a compound x task
    matrix of 1 / 0 / -1 (missing). ``ValueError`` naming the task (and compound) when a compound's profile
    differs between tasks, a compound is listed twice in a task, or a task fails
    :func:`~phenovec.activity.learners.training_episodes.check_training_tasks` (one-class tasks are allowed: they
    still label compounds)."""
    check_training_tasks(tasks, where, min_per_class=0)
    row: dict[object, int] = {}
    profiles: list[np.ndarray] = []
    entries: list[tuple[int, int, int]] = []
    for j, task in enumerate(tasks):
        x, y, ids = np.asarray(task.x, dtype=np.float32), np.asarray(task.y), np.asarray(task.compounds)
        seen = set()
        for i, compound in enumerate(ids.tolist()):
            if compound in seen:
                raise ValueError(f"{where}: task {task.name!r} lists compound {compound!r} twice")
            seen.add(compound)
            if compound not in row:
                row[compound] = len(profiles)
                profiles.append(x[i])
            elif not np.array_equal(profiles[row[compound]], x[i]):
                raise ValueError(f"{where}: compound {compound!r} has a different profile in task {task.name!r} "
                                 "than in an earlier task")
            entries.append((row[compound], j, int(y[i])))
    if not entries:
        raise ValueError(f"{where}: the training tasks label no compounds")
    labels = np.full((len(profiles), len(tasks)), -1, dtype=np.float32)
    r, c, v = (np.array(a) for a in zip(*entries))
    labels[r, c] = v
    return np.array(list(row), dtype=object), np.stack(profiles), labels


class MultitaskLearner(Learner):
    """Multitask FNN pre-trained with masked BCE; a fresh one-output head fine-tuned per episode.

    Options: ``hidden``, ``input_dropout``, ``dropout`` (the FNN), ``epochs``, ``batch_size``, ``lr``,
    ``momentum``, ``weight_decay``, ``lr_step`` / ``lr_gamma`` (step schedule), ``clip`` (gradient norm) for
    pre-training; ``head_steps`` / ``head_lr`` (Adam, full batch) and ``finetune_body`` per episode; ``device``.
    """

    name = "multitask"

    def __init__(self, *, hidden: Sequence[int] = SMALL_FNN["hidden"],
                 input_dropout: float = SMALL_FNN["input_dropout"], dropout: float = SMALL_FNN["dropout"],
                 epochs: int = 50, batch_size: int = 256, lr: float = 1e-2,
                 momentum: float = 0.9, weight_decay: float = 1e-4, lr_step: int = 20, lr_gamma: float = 0.1,
                 clip: float = 5.0, head_steps: int = 100, head_lr: float = 1e-2, finetune_body: bool = False,
                 device: str = "cpu"):
        if epochs < 1 or batch_size < 1 or head_steps < 1 or lr_step < 1:
            raise ValueError(f"multitask: epochs, batch_size, head_steps and lr_step must be >= 1, got {epochs}, "
                             f"{batch_size}, {head_steps}, {lr_step}")
        if lr <= 0 or head_lr <= 0 or clip <= 0:
            raise ValueError(f"multitask: lr, head_lr and clip must be > 0, got {lr}, {head_lr}, {clip}")
        self.fnn = {"hidden": tuple(hidden), "input_dropout": input_dropout, "dropout": dropout}
        self.epochs, self.batch_size, self.lr, self.momentum = int(epochs), int(batch_size), float(lr), float(momentum)
        self.weight_decay, self.lr_step, self.lr_gamma, self.clip = float(weight_decay), int(lr_step), lr_gamma, clip
        self.head_steps, self.head_lr, self.finetune_body = int(head_steps), float(head_lr), bool(finetune_body)
        self.device = resolve_device(device)
        self._pretrained: FNN | None = None
        self._episode: nn.Module | None = None
        self.n_features: int | None = None
        #: the training tasks' names, in the order of the pre-trained head's outputs
        self.task_names: list[str] = []
        #: mean masked BCE per pre-training epoch (the last :meth:`pretrain`)
        self.losses: list[float] = []

    def pretrain(self, tasks: list[TaskData], *, seed: int = 0) -> "MultitaskLearner":
        """Train the multitask FNN (one output per task) on the union of the tasks' labelled compounds."""
        _, x, labels = label_matrix(tasks, "multitask pretrain")
        self.n_features, self.task_names = x.shape[1], [t.name for t in tasks]
        self._episode = None
        order = np.random.default_rng(seed)
        xt, lt = as_tensor(x, self.device), as_tensor(labels, self.device)
        with seeded(seed, self.device):
            model = FNN(self.n_features, len(tasks), **self.fnn).to(self.device).train()
            opt = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum,
                                  weight_decay=self.weight_decay)
            schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=self.lr_step, gamma=self.lr_gamma)
            self.losses = []
            for _ in range(self.epochs):
                total = 0.0
                perm = torch.as_tensor(order.permutation(len(x)), device=self.device)
                for start in range(0, len(x), self.batch_size):
                    idx = perm[start:start + self.batch_size]
                    loss = masked_bce(model(xt[idx]), lt[idx])
                    opt.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(model.parameters(), self.clip)
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                schedule.step()
                self.losses.append(total / len(x))
        for p in model.parameters():
            p.requires_grad_(False)
        self._pretrained = model.eval()
        return self

    def fit(self, x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> "MultitaskLearner":
        """A new one-output head (initialised from ``seed``) on the pre-trained body, fine-tuned on the support set;
        the body stays frozen unless ``finetune_body``, and the pre-trained weights are never changed."""
        x, y = check_support(x, y, "multitask fit")
        if self._pretrained is None:
            raise RuntimeError("multitask: call pretrain(training tasks) before fit")
        check_query(x, self.n_features, "multitask fit")
        xs = as_tensor(x, self.device)
        ys = torch.as_tensor(y, dtype=torch.float32, device=self.device)
        with seeded(seed, self.device):
            head = init_linear(nn.Linear(self._pretrained.width, 1)).to(self.device)
            if self.finetune_body:
                body = copy.deepcopy(self._pretrained.body).train()
                for p in body.parameters():
                    p.requires_grad_(True)
                params = [*body.parameters(), *head.parameters()]
            else:
                body = self._pretrained.body
                with torch.no_grad():
                    xs = body(xs)  # the frozen body's features, computed once
                params = list(head.parameters())
            opt = torch.optim.Adam(params, lr=self.head_lr)
            for _ in range(self.head_steps):
                logits = head(body(xs) if self.finetune_body else xs)[:, 0]
                loss = nn.functional.binary_cross_entropy_with_logits(logits, ys)
                opt.zero_grad()
                loss.backward()
                if self.finetune_body:  # a lone linear head needs no clipping (and it costs a third of a step)
                    nn.utils.clip_grad_norm_(params, self.clip)
                opt.step()
        self._episode = nn.Sequential(body, head).eval()
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """sigmoid of the episode model's logit."""
        if self._episode is None:
            raise RuntimeError("multitask: call fit(support) before predict_proba")
        x = check_query(x, self.n_features, "multitask predict_proba")
        with torch.no_grad():
            return torch.sigmoid(self._episode(as_tensor(x, self.device))[:, 0].double()).cpu().numpy()
