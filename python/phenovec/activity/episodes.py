"""Few-shot episodes (FSL-CP thesis ch. 2): per test task, a stratified support set of ``M`` compounds and a
stratified query set of (up to) 32 from the rest.

Every episode is a function of ``(seed, task name, M, episode number)`` alone: its generator is
``np.random.default_rng([seed, crc32(task), M, episode])``, so one episode can be redrawn without the others, and
adding tasks, support sizes or episodes changes none of the existing ones.

Stratification keeps the task's active ratio: ``round(M * p)`` actives (at least 1, and at least 1 of each class
left for the query); the query set takes the same ratio of what remains. When fewer than ``M + query_size``
compounds are labelled the query set is what is left after the support set.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from phenovec.activity.learner import TaskData

SUPPORT_SIZES = (8, 16, 32, 64, 96)
QUERY_SIZE = 32
EPISODES = 100


@dataclass(frozen=True)
class Episode:
    """Row indices into the task's ``x`` / ``y``: ``support`` (M) and ``query``."""

    task: str
    m: int
    episode: int
    support: np.ndarray
    query: np.ndarray


def episode_rng(seed: int, task: str, m: int, episode: int) -> np.random.Generator:
    """The generator of one episode (see the module docstring)."""
    return np.random.default_rng([int(seed), zlib.crc32(str(task).encode("utf-8")), int(m), int(episode)])


def _stratified(n_total: int, n_act: int, size: int) -> int:
    """Actives in a stratified draw of ``size`` from ``n_total`` of which ``n_act`` are active."""
    return int(round(size * n_act / n_total))


def check_sizes(task: TaskData, m: int, query_size: int = QUERY_SIZE) -> None:
    """``ValueError`` naming the task when it cannot give a support set of ``m`` with both classes and a query set
    with both classes."""
    y = np.asarray(task.y)
    n, n_act = len(y), int(y.sum())
    n_inact = n - n_act
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 2:
        raise ValueError(f"task {task.name!r}: support size M must be an integer >= 2, got {m!r}")
    if n_act == 0 or n_inact == 0:
        raise ValueError(f"task {task.name!r} has one class only ({n_act} actives, {n_inact} inactives)")
    if m > n:
        raise ValueError(f"task {task.name!r}: support size M = {m} is larger than its {n} labelled compounds")
    if m + 2 > n or n_act < 2 or n_inact < 2:
        raise ValueError(f"task {task.name!r}: support size M = {m} leaves no query set with both classes "
                         f"({n_act} actives, {n_inact} inactives)")
    if query_size < 2:
        raise ValueError(f"query size must be >= 2 (both classes), got {query_size}")


def episode(task: TaskData, m: int, number: int, *, seed: int = 0, query_size: int = QUERY_SIZE) -> Episode:
    """Episode ``number`` of ``task`` with support size ``m`` (see the module docstring)."""
    check_sizes(task, m, query_size)
    y = np.asarray(task.y)
    act, inact = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    n = len(y)
    rng = episode_rng(seed, task.name, m, number)
    act, inact = rng.permutation(act), rng.permutation(inact)
    s_act = min(max(_stratified(n, len(act), m), 1), len(act) - 1, m - 1)
    s_act = max(s_act, m - (len(inact) - 1))  # leave an inactive for the query
    s_inact = m - s_act
    rest_act, rest_inact = len(act) - s_act, len(inact) - s_inact
    q = min(query_size, rest_act + rest_inact)
    q_act = min(max(_stratified(rest_act + rest_inact, rest_act, q), 1), rest_act, q - 1)
    q_act = max(q_act, q - rest_inact)
    support = np.concatenate([act[:s_act], inact[:s_inact]])
    query = np.concatenate([act[s_act:s_act + q_act], inact[s_inact:s_inact + q - q_act]])
    return Episode(task.name, int(m), int(number), rng.permutation(support), rng.permutation(query))


def episodes(task: TaskData, m: int, n_episodes: int = EPISODES, *, seed: int = 0,
             query_size: int = QUERY_SIZE, start: int = 0) -> Iterator[Episode]:
    """Episodes ``start .. start + n_episodes - 1`` of ``task`` at support size ``m``."""
    check_sizes(task, m, query_size)
    for k in range(start, start + n_episodes):
        yield episode(task, m, k, seed=seed, query_size=query_size)


def usable_sizes(task: TaskData, sizes: Sequence[int], query_size: int = QUERY_SIZE) -> list[int]:
    """The support sizes of ``sizes`` that ``task`` can give (the thesis leaves small tasks out at M = 96)."""
    out = []
    for m in sizes:
        try:
            check_sizes(task, m, query_size)
        except ValueError:
            continue
        out.append(m)
    return out
