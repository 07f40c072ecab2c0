"""Seeded synthetic embeddings with label and batch structure for the integration-metric tests, and ``scib``: the
scib-metrics peer, imported at its first use. scib-metrics imports JAX, and JAX warns that ``os.fork()`` after it is
loaded may deadlock; the Dask and DataLoader tests fork, so JAX must not be loaded while the test modules are
collected (tests/conftest.py also runs the scib comparisons last)."""
import importlib

import numpy as np


class _Peer:
    """``scib.NAME`` imports scib_metrics on first use (a missing peer fails there, as a plain import would)."""

    def __getattr__(self, name):
        return getattr(importlib.import_module("scib_metrics"), name)


scib = _Peer()


def synthetic(n=600, d=12, n_labels=5, n_batches=3, label_shift=1.2, batch_shift=0.6, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels, n)
    batches = rng.integers(0, n_batches, n)
    centres = rng.normal(size=(n_labels, d)) * label_shift
    offsets = rng.normal(size=(n_batches, d)) * batch_shift
    X = rng.normal(size=(n, d)) + centres[labels] + offsets[batches]
    return X.astype(dtype), np.array([f"moa{v}" for v in labels]), np.array([f"plate{v}" for v in batches])


def scib_neighbors(graph):
    from scib_metrics.nearest_neighbors import NeighborsResults

    return NeighborsResults(indices=graph.indices, distances=graph.distances)


def synthetic_with_graph(k, **kwargs):
    """``(X, labels, batches, exact k-NN graph)`` of :func:`synthetic`."""
    from phenovec.evaluate.integration import knn_graph

    X, labels, batches = synthetic(**kwargs)
    return X, labels, batches, knn_graph(X, k)
