"""``phenovec explain gradcam``: Grad-CAM PNGs (a heat map per stain channel) for chosen crops of a training
checkpoint (see :mod:`phenovec.train.gradcam`).

    phenovec explain gradcam CHECKPOINT --crops CROPS --rows 12 40 41 -o gradcam/ [--target CLASS] [--layer NAME]
    phenovec explain gradcam CHECKPOINT --crops CROPS --query "Metadata_Treatment == 'AKI-1'" --max-crops 8 -o gc/

Crops are chosen by their ``row`` (the index in ``crops.zarr``, the cell table's ``row`` column) or by a filter on
the cell table (``phenovec.io.row_filter``: columns, literals, comparisons, and / or / not, in [...]), the first
``--max-crops`` matches. ``--target``: a class name or index for a classifier (default: each crop's predicted
class); for a SimCLR checkpoint a ``data.label`` value whose mean embedding is the reference (default: the mean
embedding of the chosen crops). Writes ``gradcam_row<row>.png`` per crop and ``channel_share.csv``; prints a JSON
summary. ``add_explain_parser(stages)`` adds the ``explain`` stage; building it imports nothing heavy.
"""
from __future__ import annotations

import argparse
import json

from phenovec.cli_options import add_out, add_quiet


def _run_gradcam(args) -> dict:
    import numpy as np

    from phenovec.train.data import open_crops
    from phenovec.train.gradcam import gradcam_pngs

    if (args.rows is None) == (args.query is None):
        raise ValueError("phenovec explain gradcam needs --rows or --query (one of them)")
    rows = args.rows
    if args.query is not None:
        from phenovec.io.row_filter import filter_mask

        cells = open_crops(args.crops).cells
        picked = cells.loc[filter_mask(cells, args.query, key="--query"), "row"].to_numpy(dtype=np.int64)
        if not len(picked):
            raise ValueError(f"--query {args.query!r} selects no crop of {args.crops}")
        rows = picked[: args.max_crops].tolist()
    paths = gradcam_pngs(args.checkpoint, args.crops, rows, args.out, target=args.target, layer=args.layer)
    summary = {"checkpoint": args.checkpoint, "crops": args.crops, "rows": [int(r) for r in rows],
               "target": args.target, "pngs": [str(p) for p in paths],
               "channel_share": str(paths[0].parent / "channel_share.csv")}
    print(json.dumps(summary, indent=2))
    return summary


def add_explain_parser(stages) -> argparse.ArgumentParser:
    """Add ``explain`` (with ``gradcam``) to the CLI's top-level subparsers; handlers are ``args.run``."""
    p = stages.add_parser("explain", help="explain a trained image model (Grad-CAM per stain channel)")
    sub = p.add_subparsers(dest="explainer", required=True, metavar="METHOD")
    g = sub.add_parser("gradcam", help="Grad-CAM PNGs with a heat map per channel for chosen crops (PyTorch)")
    g.add_argument("checkpoint", help="training checkpoint (best.pt / last.pt of phenovec train)")
    g.add_argument("--crops", required=True, help="crops folder (phenovec crop output) holding the chosen crops")
    g.add_argument("--rows", type=int, nargs="+", help="crops by their row in crops.zarr (cells.parquet 'row')")
    g.add_argument("--query", help="or: a filter on the cell table choosing crops, e.g. \"Metadata_Well == 'B02'\"")
    g.add_argument("--max-crops", type=int, default=8, help="with --query: the first this many matching crops")
    g.add_argument("--target", help="classifier: class name or index (default: predicted class); SimCLR: a "
                                    "data.label value whose mean embedding is the reference (default: the mean of "
                                    "the chosen crops)")
    g.add_argument("--layer", help="module name of the target layer (default: the backbone's last conv block, "
                                   "e.g. backbone.layer4); e.g. backbone.layer3 for a finer map")
    add_out(g, "output folder for the PNGs and channel_share.csv")
    add_quiet(g)
    g.set_defaults(run=_run_gradcam)
    return p
