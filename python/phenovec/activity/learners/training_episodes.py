"""Episodes drawn from the training tasks while a meta-learner pre-trains (prototypical network, MAML).

FSL-CP trains its meta-learners on episodes shaped like the test episodes: a training task drawn at random, a
stratified support set of M compounds and a query set of (up to) 32 from the rest. These episodes come from a NumPy
generator the learner seeds, so pre-training is reproducible; they are not the benchmark's test episodes (those are
reproducible per (seed, task, M, episode) in :mod:`phenovec.activity.episodes`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phenovec.activity.learner import TaskData


@dataclass(frozen=True)
class TrainingEpisode:
    """Support (``xs``, ``ys``) and query (``xq``, ``yq``) rows of one training task; labels 0 / 1 as float32."""

    task: str
    xs: np.ndarray
    ys: np.ndarray
    xq: np.ndarray
    yq: np.ndarray


def check_training_tasks(tasks: list[TaskData], where: str, min_per_class: int = 2) -> int:
    """The profile width shared by ``tasks`` after checking each has matching x / y / compounds lengths, finite
    profiles, 0 / 1 labels and at least ``min_per_class`` compounds of each class (2 for episodes: one for a support
    set, one for a query set); ``ValueError`` naming the task otherwise."""
    if not tasks:
        raise ValueError(f"{where}: no training tasks to pre-train on")
    width = None
    for task in tasks:
        x, y, ids = np.asarray(task.x), np.asarray(task.y), np.asarray(task.compounds)
        if x.ndim != 2 or y.ndim != 1 or not (len(x) == len(y) == len(ids)):
            raise ValueError(f"{where}: task {task.name!r}: expected x (n, d), y (n,) and compounds (n,), got "
                             f"{x.shape}, {y.shape}, {ids.shape}")
        if width is None:
            width = x.shape[1]
        elif x.shape[1] != width:
            raise ValueError(f"{where}: task {task.name!r} has {x.shape[1]} profile features, the first task {width}")
        if not np.isfinite(x).all():
            raise ValueError(f"{where}: task {task.name!r} has non-finite profile values")
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"{where}: task {task.name!r}: labels must be 0 / 1")
        n_pos = int(y.sum())
        if min(n_pos, len(y) - n_pos) < min_per_class:
            raise ValueError(f"{where}: task {task.name!r} has {n_pos} actives and {len(y) - n_pos} inactives; "
                             f"pre-training needs at least {min_per_class} of each")
    return int(width)


def sample_training_episode(task: TaskData, n_support: int, n_query: int,
                            rng: np.random.Generator) -> TrainingEpisode:
    """A stratified support set of ``n_support`` compounds (the task's active ratio, at least one of each class) and
    a query set of up to ``n_query`` of the others (stratified likewise, both classes kept), drawn with ``rng``.

    A task smaller than ``n_support + n_query`` gives a smaller query set; one smaller than ``n_support + 2`` a
    smaller support set too (every class keeps at least one query compound)."""
    y = np.asarray(task.y)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    rate = len(pos) / len(y)
    support = _stratified(pos, neg, n_support, rate, rng, leave=1)
    rest_pos, rest_neg = np.setdiff1d(pos, support), np.setdiff1d(neg, support)
    query = _stratified(rest_pos, rest_neg, n_query, rate, rng, leave=0)
    x = np.asarray(task.x, dtype=np.float32)
    ys = y.astype(np.float32)
    return TrainingEpisode(task.name, x[support], ys[support], x[query], ys[query])


def _stratified(pos: np.ndarray, neg: np.ndarray, n: int, rate: float, rng: np.random.Generator,
                leave: int) -> np.ndarray:
    """``n`` indices (fewer when the pools are short) with about ``rate`` of them from ``pos``, at least one from
    each pool and at most ``len(pool) - leave`` from each."""
    cap_pos, cap_neg = len(pos) - leave, len(neg) - leave
    n = min(n, cap_pos + cap_neg)
    n_pos = int(np.clip(round(n * rate), 1, cap_pos))
    n_neg = min(n - n_pos, cap_neg)
    n_pos = min(n - n_neg, cap_pos)
    idx = np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)])
    return rng.permutation(idx)
