"""Evaluation: similarity, retrieval metrics and replicate statistics (Rust core).

Where a peer has the function, the name, arguments and output columns are the peer's (copairs for
``average_precision`` / ``mean_average_precision``; cytominer-eval for the others), so switching is a
change of import. Public names are bound on first use (``phenovec.lazy_exports``): importing one small submodule
(a CLI ``*_command`` module) imports no numeric library.
"""
from phenovec.lazy_exports import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["UnpairedError", "average_precision", "multilabel_average_precision", "p_values"],
                    "average_precision"),
    "benjamini_hochberg": "fdr",
    "mean_average_precision": "map",
    "evaluate_many": "evaluate_many",
    **dict.fromkeys(["hierarchical_fdr", "mean_average_precision_hierarchical"], "hierarchical_fdr"),
    **dict.fromkeys(["iter_similarity_blocks", "similarity_matrix"], "similarity"),
    "enrichment": "enrichment",
    **dict.fromkeys(["precision_at_r", "precision_recall"], "precision_recall"),
    **dict.fromkeys(["HitAtK", "hit_at_k"], "hit_at_k"),
    "replicate_reproducibility": "replicate_reproducibility",
    "grit": "grit",
    "mp_value": "mp_value",
    "knn_accuracy": "knn",
    # MOAProfiler protocol (Wong et al. 2023)
    "moa_test_wells": "moa_test_wells",
    "moa_similarity_delta": "moa_similarity_delta",
    "three_group_pcc": "three_group_pcc",
    "class_latent_assignment": "class_latent_assignment",
    "holdout_moa_identification": "holdout_moa_identification",
    "batch_diagnostic": "batch_diagnostic",
    "field_classification": "field_classification",
    # per-query ROC-AUC with Mann-Whitney p-values (copairs' development branch)
    **dict.fromkeys(["roc_auc", "mann_whitney_p_values"], "roc_auc"),
    # frozen-encoder probes (logistic regression / Random Forest on embeddings)
    **dict.fromkeys(["probe", "ProbeResult"], "probes"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
