"""Resumable per-site results of a profiling run: one part file per finished site, and the run's manifest.

Layout under ``OUT``:

- ``manifest.json``: ``{"config": {...}, "complete": bool}``; ``config`` = what determines the output (model
  weights hash and data contract, input kind and fingerprint, edge policy, dtype, batch size). A rerun whose
  config differs is refused (an error naming both configs), so parts of two models are never mixed.
- ``parts/site-NNNNNNN.npz``: one finished site: ``codes`` (int8 edge outcome per located cell) and
  ``features`` (kept cells x D in the output dtype). Written to a temporary sibling and ``os.replace``d, so a
  part either exists whole or not at all; its existence is the commit. A kill -9 loses only sites in flight.
- ``wells/well-NNNNNN.npz``: the mean and median profile of each finished well (``phenovec.profile.wells``; same
  commit rule).

Temporary files and folders a killed writer left (parts, well parts, an unfinished ``embeddings.zarr`` or Parquet
table) are removed when the store is opened (``phenovec.io.atomic.remove_stale_temporaries``).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from phenovec.io.atomic import remove_stale_temporaries, write_bytes_atomic, write_json_atomic


class PartStore:
    """The parts folder of one run (see the module docstring)."""

    def __init__(self, out: str | os.PathLike, config: dict):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.parts = self.out / "parts"
        self.parts.mkdir(exist_ok=True)
        self.manifest_path = self.out / "manifest.json"
        config = json.loads(json.dumps(config, sort_keys=True, default=str))
        if self.manifest_path.exists():
            manifest = json.loads(self.manifest_path.read_text())
            if manifest.get("config") != config:
                old = manifest.get("config", {})
                diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                raise ValueError(f"{self.out}: holds a profiling run with another configuration (differs in "
                                 f"{diff}: was {[old.get(k) for k in diff]}, asked {[config.get(k) for k in diff]}); "
                                 "use a new output folder")
            self.manifest = manifest
        else:
            self.manifest = {"config": config, "complete": False}
            write_json_atomic(self.manifest_path, self.manifest)
        for d in (self.parts, self.out / "wells", self.out):
            remove_stale_temporaries(d)

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def mark_complete(self, summary: dict) -> None:
        self.manifest.update(complete=True, summary=summary)
        write_json_atomic(self.manifest_path, self.manifest)

    def part_path(self, site: int) -> Path:
        return part_path(self.parts, site)

    def done_sites(self) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in self.parts.glob("site-*.npz")}

    def write(self, site: int, codes: np.ndarray, features: np.ndarray) -> None:
        write_part(self.parts, site, codes, features)

    def read(self, site: int) -> tuple[np.ndarray, np.ndarray]:
        with np.load(self.part_path(site)) as z:
            return z["codes"], z["features"]


def part_path(parts: str | os.PathLike, site: int) -> Path:
    """The part file of ``site`` in the ``parts`` folder of a run."""
    return Path(parts) / f"site-{site:07d}.npz"


def write_part(parts: str | os.PathLike, site: int, codes: np.ndarray, features: np.ndarray) -> None:
    """Commit one finished site (module docstring): written whole or not at all. Also called in the worker that
    embedded the site by a sharded run (``phenovec.profile.shards``), so its features never reach the driver."""
    buf = io.BytesIO()
    np.savez(buf, codes=np.asarray(codes, np.int8), features=features)
    write_bytes_atomic(part_path(parts, site), buf.getvalue())
