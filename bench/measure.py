"""Measurement helpers shared by the benchmarks: peak RSS of this process, machine description, logging.

The code lives in the package (``phenovec.benchmark.measure``, also used by ``phenovec bench``); the scripts here
import it through this module (``from measure import ...``) so both measure the same way.
"""
from __future__ import annotations

from phenovec.benchmark.eval_data import make_profiles  # noqa: F401 - synthetic well profiles of eval benchmarks
from phenovec.benchmark.measure import (  # noqa: F401 - re-exported for the bench scripts
    emit_document,
    log,
    machine_info,
    peak_mb,
    rate,
    reset_peak,
    rss_mb,
    run_json_child,
    timed,
)
