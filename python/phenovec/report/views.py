"""Two-dimensional views of every well profile for the report: PCA (scikit-learn) and UMAP (umap-learn).

The views are computed on *all* wells (training and held-out, every plate), because their job is the
technical-artifact check (Bornholdt 2021: wells that group by plate or batch rather than by MOA), and they are
drawn coloured by MOA and by plate, controls on top. UMAP is seeded (``random_state``, one thread) and needs at
least 4 wells; its ``n_neighbors`` is min(15, wells - 1).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from phenovec.report.inputs import ReportInput


def embedding_views(inp: ReportInput, *, umap: bool = False, seed: int = 0,
                    split_column: str | None = None) -> tuple[pd.DataFrame, list[float]]:
    """(one row per well: plate, treatment, MOA, control, split, PC1, PC2[, UMAP1, UMAP2]; PCA explained variance)."""
    from sklearn.decomposition import PCA

    t, m, p = inp.treatment_column, inp.moa_column, inp.plate_column
    views = pd.DataFrame({c: inp.meta[c].to_numpy() for c in dict.fromkeys([p, t, m])})
    views["control"] = inp.control
    if split_column and split_column in inp.meta.columns:
        views["split"] = inp.meta[split_column].astype(str).to_numpy()
    n_comp = min(2, *inp.x.shape)
    pca = PCA(n_components=n_comp, svd_solver="full")
    z = pca.fit_transform(inp.x)
    for i in range(n_comp):
        views[f"PC{i + 1}"] = z[:, i]
    if umap and len(inp.x) >= 4:
        import umap as umap_learn

        u = umap_learn.UMAP(n_neighbors=min(15, len(inp.x) - 1), random_state=seed, n_jobs=1).fit_transform(inp.x)
        views["UMAP1"], views["UMAP2"] = u[:, 0], u[:, 1]
    return views, [float(v) for v in pca.explained_variance_ratio_]
