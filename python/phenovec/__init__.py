"""phenovec: high-performance image-based profiling.

The Python API mirrors the CLI, one stage per name (imported on first use, so ``import phenovec`` stays light
and never imports torch)::

    phenovec.synth_plate(...)     # phenovec synth      (phenovec.ingest.synth)
    phenovec.crop(...)            # phenovec crop       (phenovec.ingest.crop.crop_index)
    phenovec.train.train(...)     # phenovec train
    phenovec.export.export_onnx(...)  # phenovec export
    phenovec.profile.profile_sites(...)  # phenovec profile
    phenovec.process.*            # phenovec process    (pycytominer's names)
    phenovec.evaluate.*           # phenovec evaluate   (copairs / cytominer-eval names)
    phenovec.report.build_report(...)  # phenovec report
    phenovec.run(config)          # phenovec run        (phenovec.pipeline.run)
"""
from phenovec._core import __version__

__all__ = ["__version__", "crop", "run", "synth_plate"]

_LAZY = {"crop": ("phenovec.ingest.crop", "crop_index"), "run": ("phenovec.pipeline", "run"),
         "synth_plate": ("phenovec.ingest.synth", "synth_plate")}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'phenovec' has no attribute {name!r}")
