"""The CLI starts without the optional packages: building the parser imports no stage's heavy dependency, and with
torch / onnxruntime / matplotlib unimportable ``--help``, ``evaluate`` and ``process`` still run while a command
that needs one of them fails with one line naming the package and the extra to install."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import phenovec

HEAVY = ["torch", "torchvision", "onnx", "onnxruntime", "sklearn", "matplotlib", "dask", "zarr", "scipy"]
OPTIONAL = ["torch", "torchvision", "onnx", "onnxruntime", "matplotlib"]

# `python -c BLOCKED_CLI ARGS...`: phenovec.cli.main(ARGS) in an interpreter where OPTIONAL cannot be imported
BLOCKED_CLI = f"""
import importlib.abc, sys
BLOCKED = set({OPTIONAL!r})
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, Blocker())
from phenovec.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _python(code: str, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def _blocked(*args, cwd=None) -> subprocess.CompletedProcess:
    return _python(BLOCKED_CLI, *args, cwd=cwd)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """4 compounds + DMSO x 4 replicates, 12 features: compounds shifted from DMSO, replicates alike."""
    rng = np.random.default_rng(0)
    cpds = ["DMSO", "a", "b", "c", "d"]
    centres = {c: rng.normal(0, 0 if c == "DMSO" else 3, 12) for c in cpds}
    rows = [{"Metadata_cpd": c, "Metadata_Plate": f"P{r % 2}",
             **{f"f{i}": v for i, v in enumerate(centres[c] + rng.normal(0, 0.5, 12))}}
            for c in cpds for r in range(4)]
    path = tmp_path_factory.mktemp("table") / "profiles.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_building_the_parser_imports_no_heavy_dependency():
    r = _python("import json, sys\nfrom phenovec.cli import build_parser\nbuild_parser()\n"
                f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_the_import_check_can_fail():
    """The same probe sees a heavy module once something imports it (so the test above can fail)."""
    r = _python("import json, sys\nimport phenovec.evaluate.similarity, scipy\n"
                f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert "scipy" in json.loads(r.stdout)


def test_help_and_version_without_optional_packages():
    r = _blocked("--help")
    assert r.returncode == 0, r.stderr
    for stage in ("evaluate", "process", "train", "export", "profile", "report", "run", "demo"):
        assert stage in r.stdout
    r = _blocked("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"phenovec {phenovec.__version__}"
    for stage in (["evaluate", "map"], ["train"], ["export"], ["profile"], ["report"], ["process", "normalize"]):
        r = _blocked(*stage, "--help")
        assert r.returncode == 0 and "usage: phenovec" in r.stdout, (stage, r.stderr)


def test_evaluate_map_without_optional_packages(table, tmp_path):
    out = tmp_path / "ap.csv"
    r = _blocked("evaluate", "map", table, "--pos-sameby", "Metadata_cpd", "--neg-diffby", "Metadata_cpd",
                 "--reference", "Metadata_cpd == 'DMSO'", "--query", "Metadata_Plate in ['P0', 'P1']",
                 "--null-size", "50", "-o", out)
    assert r.returncode == 0, r.stderr
    ap = pd.read_csv(out)
    assert len(ap) == 20 and ap.loc[ap["Metadata_cpd"] != "DMSO", "average_precision"].notna().all()
    summary = json.loads((tmp_path / "ap.json").read_text())
    # replicates vs DMSO: the 4 compounds (far from DMSO) are groups, each clearly active
    assert summary["n_groups"] == 4 and summary["mean_average_precision"] > 0.9


def test_process_normalize_without_optional_packages(table, tmp_path):
    out = tmp_path / "norm.csv"
    r = _blocked("process", "normalize", table, "-o", out, "--method", "standardize",
                 "--samples", "Metadata_cpd == 'DMSO'")
    assert r.returncode == 0, r.stderr
    norm = pd.read_csv(out)
    dmso = norm[norm["Metadata_cpd"] == "DMSO"].filter(like="f")
    assert np.allclose(dmso.mean(), 0, atol=1e-9)


@pytest.mark.parametrize("args, package, extra", [
    (["train", "train.yaml"], "torch", "train"),
    (["export", "best.pt", "-o", "model.onnx"], "torch", "export"),
    (["profile", "model.onnx", "--crops", "crops", "-o", "prof"], "onnxruntime", "profile"),
])
def test_a_command_needing_a_missing_package_says_which_extra(tmp_path, args, package, extra):
    r = _blocked(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert package in lines[0] and f"pip install phenovec[{extra}]" in lines[0]


@pytest.mark.parametrize("case", ["missing input", "output under a file", "bad filter"])
def test_user_errors_are_one_line_with_status_2(table, tmp_path, case):
    (tmp_path / "file").write_text("not a folder")
    args = {"missing input": [tmp_path / "absent.csv", "-o", tmp_path / "x.csv"],
            "output under a file": [table, "-o", tmp_path / "file" / "x.csv"],
            "bad filter": [table, "-o", tmp_path / "x.csv", "--query", "__import__('os').system('true')"]}[case]
    r = subprocess.run([sys.executable, "-m", "phenovec.cli", "evaluate", "map", *map(str, args), "--pos-sameby",
                        "Metadata_cpd", "--neg-diffby", "Metadata_cpd", "--null-size", "20"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("phenovec: error: ")
