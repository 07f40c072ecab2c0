"""Ingest: image index + nucleus locations -> single-cell crops and field tiles; the synthetic plate generator.

Modules (imported explicitly; this package imports nothing, so ``phenovec.ingest.crop`` does not pay for scipy):

- ``index``: ``read_image_index`` (``FileName_<ch>``, ``Frame_<ch>`` pages, label-image column) and
  ``read_locations`` (CellProfiler nuclei as CSV, Parquet or SQLite);
- ``illumination``: DeepProfiler's per plate x channel flat fields (``compute_illumination``, ``load_illumination``);
- ``crop``: ``crop_index``, resumable single-cell crops to Zarr (Rust per-site pipeline ``_core.crop_site``);
- ``fields``: ``tile_index``, whole fields (MOAProfiler) or views (GapNet) to Zarr, resumable;
- ``synth``: ``synth_plate``, deterministic Cell-Painting-like plates (TIFFs, index, nuclei);
- ``command``: the ``phenovec synth / illum / crop / tiles`` subcommands.
"""
