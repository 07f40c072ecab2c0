"""Throwaway virtual environments holding old peer tools, for equivalence tests and benchmarks.

A peer that needs old numpy/pandas (cytominer-eval 0.1 uses ``np.float``) is installed once into a
cached venv under ``~/.cache/phenovec/peer-venvs/<name>`` (``PHENOVEC_PEER_VENVS`` overrides the
folder) and run as a subprocess; data go through files. The venvs the tests use (:data:`TEST_PEERS`) are built by
``.ci/setup`` (``python tests/peer_venv.py NAME ...``), never at test time: a test finding one missing fails with
:class:`PeerVenvError` saying to run the setup, so a machine with a warm cache runs the suite offline. Creation
holds an exclusive lock file and builds in a temporary folder renamed into place, so concurrent runs are safe;
failure to build raises :class:`PeerVenvError` with pip's output. The benchmarks (``bench/``) build theirs on first
use (``build=True``: DeepProfiler, whose TensorFlow pins exclude phenovec's Python stack).
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

PEERS = {
    "cytominer-eval-0.1": [
        "cytominer-eval==0.1",
        "numpy==1.23.5",
        "pandas==1.5.3",
        "scipy==1.10.1",
        "scikit-learn==1.2.2",
    ],
    # DeepProfiler 0.5.1 (PyPI; Python 3.10-3.11, TensorFlow < 2.16): the sequential peer of bench/profile_bench.py
    "deepprofiler-0.5.1": [
        "tensorflow-cpu==2.15.1",
        "numpy==1.26.4",
        "pandas==2.2.3",  # its MetadataColumnTarget sorts .unique() in place: a numpy array in pandas 2, not 3
        "scikit-image==0.24.0",
        "efficientnet==1.1.1",
        "click==8.5.1",
    ],
}
# installed afterwards with --no-deps: deepprofiler declares the `tensorflow` distribution, which PEERS supplies
# as `tensorflow-cpu` (the same TensorFlow built for CPUs only, a third of the download)
NO_DEPS = {"deepprofiler-0.5.1": ["deepprofiler==0.5.1"]}
MARKER = "phenovec-peer-venv.txt"
#: the peer venvs tests run (built by .ci/setup); the others are the benchmarks'
TEST_PEERS = ("cytominer-eval-0.1",)


class PeerVenvError(RuntimeError):
    pass


def cache_root() -> Path:
    root = os.environ.get("PHENOVEC_PEER_VENVS")
    return Path(root) if root else Path.home() / ".cache" / "phenovec" / "peer-venvs"


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _ready(venv: Path, spec: str) -> bool:
    marker = venv / MARKER
    return marker.is_file() and marker.read_text() == spec and _python(venv).exists()


def peer_python(name: str = "cytominer-eval-0.1", timeout: float = 900, build: bool = False) -> Path:
    """Path of the python executable of the cached peer venv ``name``; a missing one is built with ``build``, else
    :class:`PeerVenvError` (tests never install: ``.ci/setup`` builds :data:`TEST_PEERS`)."""
    if name not in PEERS:
        raise KeyError(f"unknown peer venv {name!r}: known are {sorted(PEERS)}")
    spec = "\n".join(PEERS[name]) + "\n" + "".join(f"--no-deps {p}\n" for p in NO_DEPS.get(name, []))
    root = cache_root()
    venv = root / name
    if _ready(venv, spec):
        return _python(venv)
    if not build:
        raise PeerVenvError(f"the peer venv {name!r} is not built (or its pins changed) under {root}: run "
                            f"`bash .ci/setup`, or `python tests/peer_venv.py {name}`, once with PyPI reachable")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if _ready(venv, spec):  # built by a concurrent run while we waited
            return _python(venv)
        tmp = root / f".{name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            steps = [
                [sys.executable, "-m", "venv", str(tmp)],
                [str(_python(tmp)), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *PEERS[name]],
            ]
            if NO_DEPS.get(name):
                steps.append([str(_python(tmp)), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                              "--no-deps", *NO_DEPS[name]])
            for cmd in steps:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                if r.returncode != 0:
                    raise PeerVenvError(
                        f"could not build the peer venv {name!r} ({' '.join(cmd[:4])} ... exited {r.returncode}); "
                        f"the equivalence tests need network access to PyPI once.\n"
                        f"--- stdout ---\n{r.stdout[-3000:]}\n--- stderr ---\n{r.stderr[-3000:]}"
                    )
            (tmp / MARKER).write_text(spec)
            if venv.exists():
                shutil.rmtree(venv)
            os.rename(tmp, venv)
        except subprocess.TimeoutExpired as e:
            raise PeerVenvError(f"building the peer venv {name!r} timed out after {timeout} s: {e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _python(venv)


def run_peer(python: Path, code: str, cwd: Path, timeout: float = 600) -> str:
    """Run the python ``code`` (dedented) with the peer venv's ``python`` in ``cwd``; return stdout.

    A non-zero exit raises :class:`PeerVenvError` with the peer's stderr.
    """
    script = Path(cwd) / "peer_script.py"
    script.write_text(textwrap.dedent(code))
    r = subprocess.run([str(python), str(script)], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise PeerVenvError(f"peer script failed (exit {r.returncode}):\n{r.stderr[-5000:]}")
    return r.stdout


if __name__ == "__main__":  # .ci/setup: python tests/peer_venv.py NAME ... (default: the tests' peers)
    for peer in sys.argv[1:] or TEST_PEERS:
        print(f"peer venv {peer}: {peer_python(peer, build=True)}")
