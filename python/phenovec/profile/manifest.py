"""The manifest of a sharded profiling run (``phenovec.profile.shards``): ``OUT/manifest.json``.

    {"kind": "phenovec-profile-shards",
     "config": {...},                       what every shard shares (model weights hash, dtype, batch size, ...)
     "shards": {"<key>": {"dir": "shards/<name>", "input": "...", "state": "pending|running|done|failed",
                          "error": "...",  (failed: the exception, naming the file / site it came from)
                          "sites": N, "cells": N, "embedded": N,
                          "assembly_seconds": S}}}    (the shard's assembly task, on a worker)

It is a summary for people and scripts: the truth of a shard is its own folder (its ``manifest.json`` says
``complete``, ``phenovec.profile.parts``), so a run killed between two writes of this file loses nothing; a rerun
marks the complete shards ``done`` and runs the others (``failed`` ones included). A rerun into the same ``OUT``
with another ``config`` is refused (an error naming the keys that differ). The file is replaced atomically, at
most once per :data:`FLUSH_SECONDS` while the run goes (and at its end), so its cost does not grow with the
number of state changes of a many-shard run.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from phenovec.io.atomic import write_json_atomic

KIND = "phenovec-profile-shards"
STATES = ("pending", "running", "done", "failed")
FLUSH_SECONDS = 1.0


class ShardManifest:
    """``OUT/manifest.json`` of a sharded run (module docstring). ``shards``: ``{key: {"dir": ..., "input": ...}}``
    in run order."""

    def __init__(self, out: str | Path, config: dict, shards: dict[str, dict]):
        self.path = Path(out) / "manifest.json"
        config = json.loads(json.dumps(config, sort_keys=True, default=str))
        old = None
        if self.path.exists():
            try:
                old = json.loads(self.path.read_text())
            except ValueError as e:
                raise ValueError(f"{self.path}: not a JSON manifest ({e})") from None
            if old.get("kind") != KIND:
                raise ValueError(f"{self.path}: not the manifest of a sharded profiling run (kind "
                                 f"{old.get('kind')!r}); use a new output folder")
            if old.get("config") != config:
                was = old.get("config", {})
                diff = sorted(k for k in set(was) | set(config) if was.get(k) != config.get(k))
                raise ValueError(f"{Path(out)}: holds a sharded profiling run with another configuration (differs "
                                 f"in {diff}: was {[was.get(k) for k in diff]}, asked "
                                 f"{[config.get(k) for k in diff]}); use a new output folder")
        before = (old or {}).get("shards", {})
        self.data = {"kind": KIND, "config": config, "shards": {}}
        for key, info in shards.items():  # every shard pending until the run looks at its folder
            old_entry = {k: v for k, v in before.get(key, {}).items() if k not in ("error", "state")}
            self.data["shards"][key] = {**old_entry, **info, "state": "pending"}
        self._last = 0.0
        self.flush(force=True)

    @property
    def shards(self) -> dict:
        return self.data["shards"]

    def set(self, key: str, state: str, **info) -> None:
        """Record ``state`` (one of :data:`STATES`) and ``info`` for shard ``key``; written within
        :data:`FLUSH_SECONDS` (:meth:`flush`)."""
        if state not in STATES:
            raise ValueError(f"shard state must be one of {STATES}, got {state!r}")
        entry = self.data["shards"][key]
        if state != "failed":
            entry.pop("error", None)
        entry.update(state=state, **info)
        self.flush()

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= FLUSH_SECONDS:
            write_json_atomic(self.path, self.data)
            self._last = now

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for e in self.shards.values():
            out[e["state"]] += 1
        return out
