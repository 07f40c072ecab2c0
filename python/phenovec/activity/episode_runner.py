"""Running a pre-trained learner on the benchmark's test episodes, in this process or in worker processes.

Every episode is a function of ``(seed, task, M, episode)`` (:mod:`phenovec.activity.episodes`), and so is the seed
its ``fit`` gets (:func:`fit_seed`); a learner's ``fit`` starts from the state ``pretrain`` left. So the episodes of
a (task, M) pair can be cut into chunks and run anywhere in any order, and the rows are those of the sequential run.
With ``workers > 1`` (:class:`EpisodeRunner`) one pool of ``workers`` processes (``spawn``: no PyTorch / OpenMP
state is forked) serves every learner of a benchmark; each pre-trained learner and the test tasks reach each worker
once. The chunks go out in the sequential order, and their rows come back in that order. Only the ``seconds`` column
(each episode's fit + predict time) differs between runs.
"""
from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass

import numpy as np


def fit_seed(seed: int, task: str, m: int, episode: int) -> int:
    """The seed a learner's ``fit`` gets for one episode: a function of the episode's identity alone."""
    rng = np.random.default_rng([int(seed), zlib.crc32(str(task).encode("utf-8")), int(m), int(episode), 1])
    return int(rng.integers(2 ** 31 - 1))


@dataclass(frozen=True)
class Chunk:
    """Episodes ``start .. start + count - 1`` of test task number ``task`` at support size ``m``."""

    task: int
    m: int
    start: int
    count: int


def chunks(plan: list[tuple[int, int]], n_episodes: int, pieces: int) -> list[Chunk]:
    """The (task index, M) pairs of ``plan``, each cut into about ``pieces`` chunks of consecutive episodes."""
    size = max(1, math.ceil(n_episodes / max(1, pieces)))
    return [Chunk(t, m, s, min(size, n_episodes - s)) for t, m in plan for s in range(0, n_episodes, size)]


def run_chunk(learner, name: str, tasks: list, chunk: Chunk, seed: int, query_size: int) -> list[dict]:
    """The result rows of the episodes of ``chunk`` (every metric of :mod:`~phenovec.activity.metrics`)."""
    from phenovec.activity.episodes import episodes
    from phenovec.activity.metrics import score

    task, m, rows = tasks[chunk.task], chunk.m, []
    for e in episodes(task, m, chunk.count, seed=seed, query_size=query_size, start=chunk.start):
        s = time.perf_counter()
        learner.fit(task.x[e.support], task.y[e.support], seed=fit_seed(seed, task.name, m, e.episode))
        p = learner.predict_proba(task.x[e.query])
        secs = time.perf_counter() - s
        where = f"learner {name!r}, task {task.name!r}, M = {m}, episode {e.episode}"
        rows.append({"learner": name, "task": task.name, "M": m, "episode": e.episode,
                     "support_actives": int(task.y[e.support].sum()), "query_size": len(e.query),
                     "query_actives": int(task.y[e.query].sum()),
                     **score(task.y[e.query], p, where=where), "seconds": secs})
    return rows


_WORKER: dict = {}


def _init_worker(threads: int | None) -> None:
    """A worker's PyTorch thread count (when a learner has imported torch; set again as payloads arrive)."""
    _WORKER["threads"] = threads


def _worker_chunk(key: int, payload: bytes, seed: int, query_size: int, chunk: Chunk) -> list[dict]:
    """Run ``chunk`` with the learner and tasks of ``payload``, unpickled once per worker and learner (``key``)."""
    import pickle
    import sys

    if _WORKER.get("key") != key:
        learner, name, tasks = pickle.loads(payload)
        torch = sys.modules.get("torch")
        if torch is not None and _WORKER.get("threads") is not None:
            torch.set_num_threads(int(_WORKER["threads"]))
        _WORKER.update(key=key, learner=learner, name=name, tasks=tasks)
    return run_chunk(_WORKER["learner"], _WORKER["name"], _WORKER["tasks"], chunk, seed, query_size)


class EpisodeRunner:
    """Runs learners' test episodes in this process (``workers == 1``) or in one pool of ``workers`` spawned
    processes kept for every learner of a benchmark (a context manager: the pool starts on entry, stops on exit).

    The pre-trained learner and the test tasks travel pickled with each chunk (between this process and its own
    workers only), and each worker unpickles them once per learner."""

    def __init__(self, workers: int = 1, threads: int | None = 1):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        self.workers, self.threads = workers, threads
        self._pool = None
        self._key = 0

    def __enter__(self) -> "EpisodeRunner":
        if self.workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(max_workers=self.workers,
                                             mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.threads,))
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run(self, learner, name: str, tasks: list, plan: list[tuple[int, int]], *, n_episodes: int, seed: int,
            query_size: int, bar=lambda n: None) -> list[dict]:
        """Rows of every episode of ``plan`` (pairs of a test task index into ``tasks`` and M), in the sequential
        order; ``bar(n)`` is called as episodes finish."""
        if self._pool is None:
            if self.workers > 1:
                raise RuntimeError("EpisodeRunner: enter the runner (with ...) before running on workers")
            rows = []
            for c in chunks(plan, n_episodes, 1):
                rows += run_chunk(learner, name, tasks, c, seed, query_size)
                bar(c.count)
            return rows
        import pickle

        self._key += 1
        payload = pickle.dumps((learner, name, tasks), protocol=pickle.HIGHEST_PROTOCOL)
        # about 4 chunks per worker over the plan: small enough to balance, large enough to amortise the calls
        todo = chunks(plan, n_episodes, max(1, math.ceil(4 * self.workers / max(1, len(plan)))))
        futures = [self._pool.submit(_worker_chunk, self._key, payload, seed, query_size, c) for c in todo]
        rows = []
        for c, f in zip(todo, futures):
            rows += f.result()
            bar(c.count)
        return rows
