"""Evaluation: similarity, retrieval metrics and replicate statistics (Rust core).

Where a peer has the function, the name, arguments and output columns are the peer's (copairs for
``average_precision`` / ``mean_average_precision``; cytominer-eval for the others), so switching is a
change of import.
"""
from phenovec.evaluate.average_precision import (
    UnpairedError,
    average_precision,
    multilabel_average_precision,
    p_values,
)
from phenovec.evaluate.fdr import benjamini_hochberg
from phenovec.evaluate.map import mean_average_precision
from phenovec.evaluate.similarity import iter_similarity_blocks, similarity_matrix

__all__ = [
    "UnpairedError",
    "average_precision",
    "benjamini_hochberg",
    "mean_average_precision",
    "multilabel_average_precision",
    "p_values",
    "iter_similarity_blocks", "similarity_matrix"]
