"""Integration (batch-correction) metrics: scib's set on one shared exact kNN graph, plus label mAP.

Names, arguments and definitions follow scib-metrics 0.6.1 (it declares Python >= 3.12 but runs on 3.11, where the
tests run it: against 0.5.10 it adds ``sbee`` and refuses a single batch in ``kbet`` and a constant covariate in
``principal_component_regression``; 0.5.6 made BRAS the Benchmarker's default batch silhouette and
``min_max_scale=False`` its default), so
``scib_metrics.ilisi_knn(nn, batches)`` becomes ``phenovec.evaluate.integration.ilisi_knn(nn, batches)``; a
metric taking a kNN graph accepts phenovec's :class:`KnnGraph` or scib-metrics' ``NeighborsResults``.
:func:`integration_table` runs the whole set over several embeddings and ranks them (Arevalo et al. 2024).
"""
from phenovec.evaluate.integration.benchmark import (
    METRIC_TYPES,
    IntegrationResult,
    integration_heatmap,
    integration_table,
)
from phenovec.evaluate.integration.clustering import (
    KMeans,
    nmi_ari_cluster_labels_kmeans,
    nmi_ari_cluster_labels_leiden,
)
from phenovec.evaluate.integration.distance_pass import knn_graph_and_silhouettes
from phenovec.evaluate.integration.graph_connectivity import graph_connectivity
from phenovec.evaluate.integration.isolated_labels import isolated_labels
from phenovec.evaluate.integration.kbet import kbet, kbet_per_label
from phenovec.evaluate.integration.knn_graph import KnnGraph, knn_graph
from phenovec.evaluate.integration.lisi import clisi_knn, ilisi_knn, lisi_knn
from phenovec.evaluate.integration.pcr import pcr_comparison, principal_component_regression
from phenovec.evaluate.integration.retrieval import label_map
from phenovec.evaluate.integration.sbee import sbee
from phenovec.evaluate.integration.score import min_max_scale, overall_scores
from phenovec.evaluate.integration.silhouette import bras, silhouette_batch, silhouette_label, silhouette_samples

__all__ = [
    "KnnGraph", "knn_graph", "knn_graph_and_silhouettes",
    "silhouette_samples", "silhouette_label", "silhouette_batch", "bras",
    "lisi_knn", "ilisi_knn", "clisi_knn",
    "kbet", "kbet_per_label", "sbee",
    "graph_connectivity", "principal_component_regression", "pcr_comparison", "isolated_labels",
    "KMeans", "nmi_ari_cluster_labels_kmeans", "nmi_ari_cluster_labels_leiden",
    "label_map", "min_max_scale", "overall_scores",
    "METRIC_TYPES", "IntegrationResult", "integration_table", "integration_heatmap",
]
