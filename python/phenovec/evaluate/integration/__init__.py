"""Integration (batch-correction) metrics: scib's set on one shared exact kNN graph, plus label mAP.

Names, arguments and definitions follow scib-metrics 0.5.10 (the newest release on Python 3.11; 0.6.x needs
Python >= 3.12 and, by its release notes, changes no metric definition: 0.5.6 made BRAS the Benchmarker's
default batch silhouette and ``min_max_scale=False`` its default, 0.6.2 fixed ``get_results`` on pandas 3), so
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
from phenovec.evaluate.integration.score import min_max_scale, overall_scores
from phenovec.evaluate.integration.silhouette import bras, silhouette_batch, silhouette_label, silhouette_samples

__all__ = [
    "KnnGraph", "knn_graph", "knn_graph_and_silhouettes",
    "silhouette_samples", "silhouette_label", "silhouette_batch", "bras",
    "lisi_knn", "ilisi_knn", "clisi_knn",
    "kbet", "kbet_per_label",
    "graph_connectivity", "principal_component_regression", "pcr_comparison", "isolated_labels",
    "KMeans", "nmi_ari_cluster_labels_kmeans", "nmi_ari_cluster_labels_leiden",
    "label_map", "min_max_scale", "overall_scores",
    "METRIC_TYPES", "IntegrationResult", "integration_table", "integration_heatmap",
]
