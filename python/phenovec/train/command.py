"""``phenovec train``: train a single-cell classifier on a crops folder (see ``phenovec.train.config``).

    phenovec train config.yaml [--set train.epochs=3 --set data.batch_size=32]
    phenovec train --print-config          # every key with its default

Resumes the run in ``train.out`` when it holds a checkpoint of the same configuration. Prints a JSON summary.
"""
from __future__ import annotations

import argparse
import json


def _parse_override(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise ValueError(f"--set {text!r}: use section.key=value, e.g. train.epochs=3")
    return key.strip(), yaml.safe_load(value)


def _run_train(a) -> dict:
    import yaml

    from phenovec.train.config import default_config

    if a.print_config:
        print(yaml.safe_dump(default_config(), sort_keys=False))
        return {}
    if not a.config:
        raise ValueError("phenovec train needs a configuration file (see --print-config)")
    from phenovec.train.loop import train

    overrides = dict(_parse_override(s) for s in a.set or [])
    res = train(a.config, overrides, progress=not a.quiet)
    last = res.metrics.to_dict(orient="records")[-1] if len(res.metrics) else {}
    summary = {"out": str(res.out), "epochs": res.epochs, "best_epoch": res.best_epoch,
               "best_val_accuracy": res.best_val_accuracy, "last": str(res.last),
               "best": str(res.best) if res.best else None, "stopped_early": res.stopped_early,
               "classes": res.classes, "last_epoch": last}
    print(json.dumps(summary, indent=2, default=float))
    return summary


def add_train_parser(stages) -> argparse.ArgumentParser:
    """Add ``train`` to the CLI's top-level subparsers; the handler is ``args.run``."""
    p = stages.add_parser("train", help="train a weakly supervised single-cell classifier on crops (PyTorch)")
    p.add_argument("config", nargs="?", help="training configuration (YAML)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a configuration value")
    p.add_argument("--print-config", action="store_true", help="print the full default configuration and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_train)
    return p
