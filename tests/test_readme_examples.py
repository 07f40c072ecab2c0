"""The README's Python examples run as written (each `<!-- example: NAME -->` block, in a fresh folder)."""
import re
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"<!-- example: (\w+) -->\s*```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert BLOCKS, "README.md lost its <!-- example: ... --> blocks"


@pytest.mark.parametrize("name, code", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_readme_example_runs(name, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    runpy.run_path(str(script), run_name="__main__")
