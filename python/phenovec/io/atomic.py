"""Atomic file writes: write to a temporary sibling, then ``os.replace`` it onto the target.

A crash or kill mid-write leaves either the old file or none, never a partial one, and no temporary file survives
a failed write. Every phenovec output that a rerun trusts (manifests, parts, checkpoints' metadata, reports,
tables) is written through ``atomic_path``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj) -> Path:
    """``obj`` as indented JSON with sorted keys (non-JSON values as ``str``)."""
    return write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True, default=str))


_TMP_NAME = re.compile(r"^\..+\.tmp(\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings (``.NAME.tmpPID`` files or folders, as ``atomic_path`` and the Zarr / Parquet
    writers of ``phenovec.io.embeddings`` make them) that a killed writer left in ``folder``; returns them.

    A temporary whose PID is a live process on this machine other than this one is kept (a writer may still be
    running); this process's own are kept too. ``folder`` need not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        m = _TMP_NAME.match(p.name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
        removed.append(p)
    return removed
