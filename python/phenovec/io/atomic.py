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


class FolderBusyError(ValueError):
    """Another live process holds the output folder's lock; the message names the folder and that process."""


LOCK_NAME = ".phenovec.lock"


class OutputRun:
    """What :func:`output_folder` yields: the folder, and ``resumable``, which the stage sets once the folder holds
    work a rerun resumes from (a committed part); until then an error removes what this run created."""

    def __init__(self, path: Path):
        self.path = path
        self.resumable = False


def _lock(folder: Path) -> int:
    """An open descriptor of ``folder/.phenovec.lock`` holding an exclusive ``flock`` (released by the kernel when
    the process ends, a kill -9 included); a :class:`FolderBusyError` when a live process holds it."""
    import fcntl

    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderBusyError(f"{folder}: another phenovec run (pid {holder}) is writing this output folder; "
                                  "wait for it to finish (then rerun to reuse its output) or use another folder") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # the holder removed it as we took it: take the new one
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


@contextmanager
def output_folder(folder: str | os.PathLike) -> Iterator[OutputRun]:
    """Create ``folder`` (parents too) and hold it for one run: a second run into it meanwhile (another process,
    or this one) gets a :class:`FolderBusyError` before touching anything. If the run raises before it set
    ``resumable``, what it created is removed (the folder itself when this run created it), so a failed run leaves
    no partial output; once ``resumable`` is set the folder is left as the rerun needs it. The lock file is
    removed when the run ends (a killed run's is taken over by the next)."""
    folder = Path(folder)
    existed = folder.exists()
    if existed and not folder.is_dir():
        raise ValueError(f"{folder}: the output exists and is not a folder")
    before = {p.name for p in folder.iterdir()} if existed else set()
    folder.mkdir(parents=True, exist_ok=True)
    fd = _lock(folder)
    run = OutputRun(folder)
    failed = False
    try:
        yield run
    except BaseException:
        failed = True
        if not run.resumable:
            for p in list(folder.iterdir()):
                if p.name in before or p.name == LOCK_NAME:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
        raise
    finally:
        try:
            os.unlink(folder / LOCK_NAME)
        except FileNotFoundError:
            pass
        os.close(fd)
        if failed and not existed and not run.resumable and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
