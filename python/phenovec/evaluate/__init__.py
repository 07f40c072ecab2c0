"""Evaluation: similarity, retrieval metrics and replicate statistics (Rust core).

Where a peer has the function, the name, arguments and output columns are the peer's (copairs for
``average_precision`` / ``mean_average_precision``; cytominer-eval for the others), so switching is a
change of import.
"""
from phenovec.evaluate.similarity import iter_similarity_blocks, similarity_matrix

__all__ = ["iter_similarity_blocks", "similarity_matrix"]
