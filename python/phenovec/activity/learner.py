"""The one interface every activity learner implements (FSL-CP thesis ch. 2): optionally learn from the training
tasks once (``pretrain``), then per episode ``fit`` on the support set and ``predict_proba`` on the query set.

An episode never leaks into the next: ``fit`` starts from the state ``pretrain`` left (a fine-tuned head is
restored afterwards, a single-task model is fitted afresh). Inputs are float32 arrays (rows = compounds, columns =
profile features); labels are 0 / 1 (1 = active). Every learner takes ``seed`` and is deterministic given it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TaskData:
    """One task's labelled compounds: ``x`` (n x d float32 profiles), ``y`` (n, 0 / 1), ``compounds`` (n ids)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    compounds: np.ndarray


class Learner(ABC):
    """A few-shot activity learner. Subclasses set :attr:`name` (the results table's ``learner`` column)."""

    name: str = "learner"
    #: True when :meth:`pretrain` takes ``validation=`` tasks apart from the training tasks (to choose settings on);
    #: the benchmark then pre-trains on the training tasks alone. Otherwise it gets training + validation tasks.
    uses_validation: bool = False

    def pretrain(self, tasks: list[TaskData], *, seed: int = 0) -> "Learner":
        """Learn from the training tasks (meta-learners, multitask pre-training); single-task learners keep this
        no-op. Returns ``self``."""
        return self

    @abstractmethod
    def fit(self, x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> "Learner":
        """Adapt to one episode's support set (``x``: M x d, ``y``: M labels with both classes)."""

    @abstractmethod
    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """P(active) for each query row (float64, in [0, 1]), from the state the last :meth:`fit` left."""


def check_support(x: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` as float32 / int8 after checking shapes, finiteness and that both classes are present;
    ``ValueError`` naming ``where`` (the task and episode) otherwise."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{where}: expected x of shape (n, d) and y of shape (n,), got {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{where}: non-finite profile values")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{where}: labels must be 0 / 1, got {sorted(set(np.unique(y).tolist()))}")
    if len(np.unique(y)) < 2:
        raise ValueError(f"{where}: the support set holds one class only ({int(y[0])})")
    return x, y.astype(np.int8)
