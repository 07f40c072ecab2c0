"""Stage packages bind their public names on first use (phenovec.lazy_exports), and a public name that is also a
submodule's name stays the public object once the submodule is imported (pycytominer's phenovec.process.normalize
is the step function)."""
import subprocess
import sys

CODE = """
import sys
import phenovec.process, phenovec.activity
assert "pandas" not in sys.modules, "importing the packages imported pandas"
import phenovec.process.normalize, phenovec.process.aggregate, phenovec.activity.episodes  # the submodules
from phenovec.process.normalize import normalize_stream
import phenovec.process as pp, phenovec.activity as pa
assert callable(pp.normalize) and pp.normalize.__name__ == "normalize", pp.normalize
assert pp.aggregate.__name__ == "aggregate" and pp.spherize.__name__ == "spherize"
assert callable(pa.episodes) and pa.episodes.__name__ == "episodes", pa.episodes
assert sys.modules["phenovec.process.normalize"].normalize_stream is normalize_stream
from phenovec.process import normalize
assert normalize is pp.normalize
print("ok")
"""


def test_public_names_win_over_same_named_submodules():
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
