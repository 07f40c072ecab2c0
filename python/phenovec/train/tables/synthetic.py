"""Synthetic paired profiles (Cell Painting + transcriptomics) with a shared latent, for tests and benchmarks.

No paired Cell Painting + L1000 set is reachable here, so the table trainer is tested on data built to have the
structure cross-modal learning exploits. Each compound has a latent ``z`` = its MOA's centre + a compound effect
(``compound_scale``), scaled by dose. Each replicate well of each modality is a fixed random linear map of ``z``
(one per modality) **plus a modality-specific nuisance**: a few random directions of large variance
(``nuisance_scale``: plate / cell-count / library-depth effects) drawn afresh per well, plus small isotropic noise.

Raw distances are dominated by the nuisance, so replicate and MOA retrieval on either raw modality is mediocre;
only ``z`` is shared between the modalities, so a CLIP-style model that aligns them learns to ignore the nuisance
and should beat both raw modalities on kNN accuracy (what ``tests/test_tables_clip.py`` checks).

:func:`synthetic_assay_labels` draws a sparse binary label matrix from the same latents (each task a random linear
rule on ``z``, with label noise and missing entries), for the multi-task ``fnn``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["SyntheticPairs", "synthetic_assay_labels", "synthetic_config", "synthetic_paired",
           "write_synthetic_tables"]

_RINGS = ("c1ccccc1", "c1ccncc1", "C1CCCCC1", "c1ccc2ccccc2c1", "C1CCNCC1", "c1ccsc1", "c1ccoc1", "C1CCOC1",
          "n1ccncc1", "c1ccc2[nH]ccc2c1", "C1CC1", "c1nc[nH]c1")


@dataclass
class SyntheticPairs:
    cp: pd.DataFrame  # Metadata_pert_id, Metadata_dose, Metadata_replicate, Metadata_moa, Metadata_smiles, cp_*
    tx: pd.DataFrame  # the same keys (or LINCS names), tx_*
    compounds: pd.DataFrame  # one row per compound: Metadata_pert_id, Metadata_moa, Metadata_smiles
    latent: np.ndarray  # compounds x latent_dim


def synthetic_paired(n_moa: int = 6, compounds_per_moa: int = 8, replicates: int = 4, cp_dim: int = 64,
                     tx_dim: int = 128, latent_dim: int = 8, nuisance_dim: int = 4, nuisance_scale: float = 3.0,
                     compound_scale: float = 0.6, noise: float = 0.3, doses=(10.0,), tx_replicates: bool = True,
                     lincs_names: bool = False, seed: int = 0) -> SyntheticPairs:
    """Paired synthetic tables (see the module docstring). ``tx_replicates=False`` gives one TX profile per
    compound and dose (a level-5 consensus, no replicate column); ``lincs_names`` names the TX keys ``pert_id`` /
    ``pert_dose`` as the public L1000 level-5 tables do."""
    if min(n_moa, compounds_per_moa, replicates, cp_dim, tx_dim, latent_dim) < 1 or nuisance_dim < 0:
        raise ValueError("synthetic_paired: every count and dimension must be >= 1 (nuisance_dim >= 0)")
    rng = np.random.default_rng(seed)
    n_cpd = n_moa * compounds_per_moa
    centres = rng.normal(size=(n_moa, latent_dim))
    moa = np.repeat(np.arange(n_moa), compounds_per_moa)
    latent = centres[moa] + compound_scale * rng.normal(size=(n_cpd, latent_dim))
    ids = [f"BRD-S{i:06d}" for i in range(n_cpd)]
    smiles = [f"{_RINGS[i % len(_RINGS)]}{'C' * (1 + i // len(_RINGS))}O" for i in range(n_cpd)]
    doses = [float(d) for d in doses]
    dose_factor = {d: 0.5 + 0.5 * (i + 1) / len(doses) for i, d in enumerate(sorted(doses))}

    def modality(dim: int, prefix: str, reps: int) -> tuple[np.ndarray, list]:
        a = rng.normal(size=(latent_dim, dim)) / np.sqrt(latent_dim)
        b = rng.normal(size=(max(nuisance_dim, 1), dim)) / np.sqrt(max(nuisance_dim, 1))
        rows, keys = [], []
        for c in range(n_cpd):
            for d in doses:
                for r in range(reps):
                    u = nuisance_scale * rng.normal(size=max(nuisance_dim, 1)) if nuisance_dim else np.zeros(1)
                    rows.append(dose_factor[d] * latent[c] @ a + u @ b + noise * rng.normal(size=dim))
                    keys.append((c, d, r))
        return np.asarray(rows, dtype=np.float32), keys

    x_cp, k_cp = modality(cp_dim, "cp", replicates)
    x_tx, k_tx = modality(tx_dim, "tx", replicates if tx_replicates else 1)
    moa_names = [f"MOA_{m}" for m in range(n_moa)]
    cp = pd.DataFrame({"Metadata_pert_id": [ids[c] for c, _, _ in k_cp],
                       "Metadata_dose": [d for _, d, _ in k_cp],
                       "Metadata_replicate": [r for _, _, r in k_cp],
                       "Metadata_moa": [moa_names[moa[c]] for c, _, _ in k_cp],
                       "Metadata_smiles": [smiles[c] for c, _, _ in k_cp]})
    cp = pd.concat([cp, pd.DataFrame(x_cp, columns=[f"cp_{i}" for i in range(cp_dim)])], axis=1)
    pid, dose = ("pert_id", "pert_dose") if lincs_names else ("Metadata_pert_id", "Metadata_dose")
    tx = pd.DataFrame({pid: [ids[c] for c, _, _ in k_tx], dose: [d for _, d, _ in k_tx]})
    if tx_replicates:
        tx["Metadata_replicate"] = [r for _, _, r in k_tx]
    tx = pd.concat([tx, pd.DataFrame(x_tx, columns=[f"tx_{i}" for i in range(tx_dim)])], axis=1)
    compounds = pd.DataFrame({"Metadata_pert_id": ids, "Metadata_moa": [moa_names[m] for m in moa],
                              "Metadata_smiles": smiles})
    return SyntheticPairs(cp, tx, compounds, latent)


def synthetic_assay_labels(data: SyntheticPairs, n_tasks: int = 12, missing: float = 0.5, flip: float = 0.05,
                           seed: int = 0) -> pd.DataFrame:
    """A long label table (``compound``, ``assay``, ``label``) over the compounds of ``data``: task ``t`` is active
    where a random linear score of the latent exceeds a random quantile (25-60 % actives), ``flip`` of the labels
    flipped, ``missing`` of the entries unmeasured (no row)."""
    if n_tasks < 1 or not (0 <= missing < 1) or not (0 <= flip < 0.5):
        raise ValueError("synthetic_assay_labels: n_tasks >= 1, 0 <= missing < 1 and 0 <= flip < 0.5")
    rng = np.random.default_rng(seed)
    z = data.latent
    w = rng.normal(size=(z.shape[1], n_tasks))
    score = z @ w
    active = rng.uniform(0.25, 0.6, size=n_tasks)
    cut = np.array([np.quantile(score[:, t], 1 - active[t]) for t in range(n_tasks)])
    y = (score > cut).astype(np.float64)
    flips = rng.random(y.shape) < flip
    y[flips] = 1 - y[flips]
    measured = rng.random(y.shape) >= missing
    ci, ti = np.nonzero(measured)
    ids = data.compounds["Metadata_pert_id"].to_numpy()
    return pd.DataFrame({"compound": ids[ci], "assay": [f"assay_{t}" for t in ti], "label": y[ci, ti].astype(int)})


def write_synthetic_tables(folder, *, n_tasks: int = 0, seed: int = 0, **kwargs) -> dict:
    """Write ``synthetic_paired(seed=seed, **kwargs)`` as ``cp.parquet`` / ``tx.parquet`` (and, with ``n_tasks``,
    ``labels.csv`` from :func:`synthetic_assay_labels`) into ``folder``; returns the paths and the data."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = synthetic_paired(seed=seed, **kwargs)
    paths = {"cp": str(folder / "cp.parquet"), "tx": str(folder / "tx.parquet"), "data": data}
    data.cp.to_parquet(paths["cp"], index=False)
    data.tx.to_parquet(paths["tx"], index=False)
    if n_tasks:
        paths["labels"] = str(folder / "labels.csv")
        synthetic_assay_labels(data, n_tasks=n_tasks, seed=seed).to_csv(paths["labels"], index=False)
    return paths


def synthetic_config(paths: dict, task: str, out, *, epochs: int = 20, batch_size: int = 64, width: int = 64,
                     embed_dim: int = 32, proj_dim: int = 16, lr: float = 1e-3, threads: int | None = 1,
                     map_null_size: int = 0, **model) -> dict:
    """A table-trainer configuration for the tables of :func:`write_synthetic_tables` with small networks (every
    hidden width ``width``, two layers for the encoders, one for the BAE parts); ``model`` overrides model keys."""
    data = {"cp": paths["cp"], "moa": "Metadata_moa", "replicate": "Metadata_replicate", "batch_size": batch_size}
    if task in ("clip", "bae"):
        data["tx"] = paths["tx"]
    if task == "fnn":
        data.update(labels=paths["labels"], label_compound_column="compound", min_per_class=1)
    nets = {"cp_hidden": [width, width], "tx_hidden": [width, width], "embed_dim": embed_dim, "proj_dim": proj_dim,
            "bae_encoder": [width], "bae_cp_decoder": [width], "bae_tx_decoder": [width], "fnn_hidden": [width, width]}
    return {"data": data, "model": {**nets, **model}, "optim": {"lr": lr},
            "train": {"task": task, "out": str(out), "epochs": epochs, "device": "cpu", "threads": threads},
            "eval": {"map_null_size": map_null_size}}
