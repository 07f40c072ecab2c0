"""Ingest: image index + nucleus locations -> single-cell crops and field tiles; the synthetic plate generator.

``phenovec.ingest.synth.synth_plate`` writes deterministic Cell-Painting-like plates (TIFFs, index, nuclei);
``phenovec.ingest.command.add_synth_parser`` adds ``phenovec synth`` to the CLI. Submodules are imported
explicitly (this package imports nothing, so ``phenovec.ingest.crop`` does not pay for scipy / tifffile).
"""
