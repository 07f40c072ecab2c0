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
from phenovec.evaluate.enrichment import enrichment
from phenovec.evaluate.precision_recall import precision_at_r, precision_recall
from phenovec.evaluate.hit_at_k import HitAtK, hit_at_k
from phenovec.evaluate.replicate_reproducibility import replicate_reproducibility
from phenovec.evaluate.grit import grit
from phenovec.evaluate.mp_value import mp_value
from phenovec.evaluate.knn import knn_accuracy
from phenovec.evaluate.moa_test_wells import moa_test_wells
from phenovec.evaluate.moa_similarity_delta import moa_similarity_delta
from phenovec.evaluate.three_group_pcc import three_group_pcc
from phenovec.evaluate.class_latent_assignment import class_latent_assignment
from phenovec.evaluate.holdout_moa_identification import holdout_moa_identification
from phenovec.evaluate.batch_diagnostic import batch_diagnostic

__all__ = [
    "UnpairedError",
    "average_precision",
    "benjamini_hochberg",
    "mean_average_precision",
    "multilabel_average_precision",
    "p_values",
    "iter_similarity_blocks", "similarity_matrix",
    "enrichment", "precision_recall", "precision_at_r", "hit_at_k", "HitAtK", "replicate_reproducibility",
    "grit", "mp_value", "knn_accuracy",
    # MOAProfiler protocol (Wong et al. 2023)
    "moa_test_wells", "moa_similarity_delta", "three_group_pcc", "class_latent_assignment",
    "holdout_moa_identification", "batch_diagnostic"]
