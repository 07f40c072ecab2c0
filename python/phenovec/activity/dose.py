"""Low-concentration inference (FSL-CP thesis ch. 3): train an activity model on the profiles taken at one
concentration, then -- without retraining -- score the profiles of held-out compounds taken at any other.

A model is named as the thesis does, ``[train dose / inference dose / threshold]`` (e.g. ``[20µM/0.62µM/5]``): the
dose of the training profiles, the dose of the profiles it scores, and what defined the training labels (the thesis'
pIC50 threshold; for a class task, the class, e.g. ``[20µM/0.62µM/Genotoxin]``). Training and inferring at the same
dose is the conventional model.

- :func:`read_dose_series`: well profiles with a compound, a dose, a label and (optionally) a SMILES column from a
  CSV table (defaults: the column names of the Dahlin et al. 2023 cell-injury set); doses within a relative
  tolerance are one level (0.62 and 0.63 µM -> 0.62).
- :func:`compound_folds`: compound-level folds for one binary task, stratified by label and grouped by Murcko
  scaffold (compounds sharing a scaffold are held out together) when SMILES are there.
- :func:`cross_dose_scores`: per fold, a fresh clone of any scikit-learn-style classifier is fitted on the training
  compounds' wells *at the training dose only*, then scores the held-out compounds' wells at *each inference dose
  separately*; a compound's score at a dose is the mean P(active) over its wells at that dose. Out-of-fold, tidy.
- :func:`cross_dose_table`: per task and (train, inference) dose: AUROC, RIPtoP-AUPRC, precision and recall at 0.5.
- :func:`dose_comparison`: the mean over tasks as an inference-dose x training-dose table.

- :func:`dose_series_study`: all of it for every one-vs-rest task of a well table (``phenovec activity dose TABLE
  --train-dose 20 --train-dose 0.62 -o OUT.csv`` prints the comparison and writes the tidy table).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "DoseSeries",
    "read_dose_series",
    "dose_levels",
    "format_dose",
    "model_name",
    "compound_folds",
    "cross_dose_scores",
    "cross_dose_table",
    "dose_comparison",
    "default_estimator",
]

FEATURE_PREFIXES = ("Cells_", "Cytoplasm_", "Nuclei_")
# the compound is its name (its InChIKey where the name is missing): in the Dahlin files Platycodin D carries
# Ebselen oxide's SMILES and InChIKey
DAHLIN = {"compound": ("Compound Name", "Compound InChIKey"), "dose": "Compound Concentration (microMolar)",
          "label": "injury_type", "smiles": "Compound SMILES"}


def format_dose(dose: float) -> str:
    """A dose as the tables write it: ``20``, ``0.62``."""
    return f"{float(dose):g}"


def model_name(train_dose: float, infer_dose: float, threshold, unit: str = "µM") -> str:
    """The thesis' model name ``[train dose / inference dose / threshold]``, e.g. ``[20µM/0.16µM/5]``."""
    t = format_dose(threshold) if isinstance(threshold, (int, float, np.number)) else str(threshold)
    return f"[{format_dose(train_dose)}{unit}/{format_dose(infer_dose)}{unit}/{t}]"


def dose_levels(doses, rel_tol: float = 0.05) -> np.ndarray:
    """Merge doses that differ by at most ``rel_tol`` (relative) into one level, the cluster's most frequent value
    (ties: the smaller). NaN stays NaN."""
    d = np.asarray(doses, dtype=np.float64)
    out = d.copy()
    values, counts = np.unique(d[np.isfinite(d)], return_counts=True)
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] > values[i - 1] * (1 + rel_tol):
            cluster, n = values[start:i], counts[start:i]
            level = cluster[int(np.argmax(n))]
            out[np.isin(d, cluster)] = level
            start = i
    return out


@dataclass(frozen=True)
class DoseSeries:
    """Well profiles across doses: ``x`` (wells x features), and per well ``compound``, ``dose`` (merged level),
    ``label`` and ``smiles`` (or None); ``features``: the column names; ``source``: where it was read."""

    x: np.ndarray
    compound: np.ndarray
    dose: np.ndarray
    label: np.ndarray
    smiles: np.ndarray | None
    features: list[str]
    source: str = "dose series"

    def doses(self) -> list[float]:
        return sorted(set(self.dose.tolist()))


def read_dose_series(path: str | Path, *, compound_column: str | Sequence[str] = DAHLIN["compound"],
                     dose_column: str = DAHLIN["dose"], label_column: str = DAHLIN["label"],
                     smiles_column: str | None = DAHLIN["smiles"],
                     feature_prefixes: Sequence[str] = FEATURE_PREFIXES, rel_tol: float = 0.05) -> DoseSeries:
    """Read a well table (CSV, optionally compressed). Rows without a dose (untreated controls) are dropped.

    ``compound_column`` may list several columns: a row's compound is the first of them that is not missing.
    Errors name the file and the column / row: a missing column, a row without a compound, a dose that is not a
    number, a non-finite feature, a compound carrying two labels.
    """
    path = Path(path)
    table = pd.read_csv(path, low_memory=False)
    id_columns = [compound_column] if isinstance(compound_column, str) else list(compound_column)
    needed = id_columns + [dose_column, label_column] + ([smiles_column] if smiles_column else [])
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise KeyError(f"{path}: no column(s) {missing}")
    features = [c for c in table.columns if c.startswith(tuple(feature_prefixes))]
    if not features:
        raise ValueError(f"{path}: no feature column starts with any of {list(feature_prefixes)}")
    dose = pd.to_numeric(table[dose_column], errors="coerce")
    bad = table[dose_column].notna() & dose.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ValueError(f"{path}, row {row}, column {dose_column!r}: dose {table[dose_column].iloc[row]!r} is not "
                         "a number")
    table = table[dose.notna().to_numpy()]
    dose = dose[dose.notna()]
    compound = table[id_columns[0]]
    for c in id_columns[1:]:
        compound = compound.fillna(table[c])
    if compound.isna().any():
        row = compound.index[compound.isna().to_numpy()][0]
        raise ValueError(f"{path}, row {row}: no compound in column(s) {id_columns}")
    compound_column = "_compound"
    table = table.assign(_compound=compound.astype(str))
    x = table[features].to_numpy(dtype=np.float64)
    if not np.isfinite(x).all():
        r, c = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{path}, row {table.index[r]}, column {features[c]!r}: feature is not finite")
    per_compound = table.groupby(compound_column)[label_column].nunique()
    if (per_compound > 1).any():
        c = per_compound.index[per_compound > 1][0]
        raise ValueError(f"{path}: compound {c!r} has more than one {label_column!r} "
                         f"({sorted(table.loc[table[compound_column] == c, label_column].unique().tolist())})")
    return DoseSeries(
        x=x,
        compound=table[compound_column].astype(str).to_numpy(),
        dose=dose_levels(dose.to_numpy(), rel_tol),
        label=table[label_column].to_numpy(),
        smiles=table[smiles_column].to_numpy() if smiles_column else None,
        features=features,
        source=str(path),
    )


def compound_folds(series: DoseSeries, positive, k: int = 5, seed: int = 0) -> dict[str, int]:
    """Fold per compound for the task ``label == positive``: stratified by the label, grouped by Murcko scaffold
    when the series has SMILES (else by compound), seeded."""
    from sklearn.model_selection import StratifiedGroupKFold

    from phenovec.activity.scaffold import murcko_scaffolds

    first = pd.DataFrame({"compound": series.compound, "label": series.label,
                          "smiles": series.smiles if series.smiles is not None else series.compound}
                         ).drop_duplicates("compound")
    y = (first["label"] == positive).to_numpy().astype(int)
    if y.sum() < k or (1 - y).sum() < k:
        raise ValueError(f"{series.source}: task {positive!r} has {int(y.sum())} active and {int((1 - y).sum())} "
                         f"inactive compounds; {k} folds need at least {k} of each")
    if series.smiles is not None:
        groups = murcko_scaffolds(first["smiles"].tolist(), source=f"{series.source} SMILES",
                                  row_names=first["compound"].tolist())
    else:
        groups = first["compound"].tolist()
    cut = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = np.empty(len(first), dtype=np.int64)
    for f, (_, held_out) in enumerate(cut.split(np.zeros(len(y)), y, groups)):
        fold[held_out] = f
    return dict(zip(first["compound"].tolist(), fold.tolist()))


def default_estimator(seed: int = 0):
    """Standardised features + L2 logistic regression (C = 0.1): the model of the cell-injury dose tables."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000, random_state=seed))


def cross_dose_scores(series: DoseSeries, positive, train_doses: Sequence[float], folds: dict[str, int], *,
                      estimator=None, infer_doses: Sequence[float] | None = None) -> pd.DataFrame:
    """Out-of-fold compound scores: for every training dose and fold, a fresh clone of ``estimator`` fitted on the
    other folds' wells at that dose scores this fold's wells at each inference dose separately.

    Columns: ``task, train_dose, infer_dose, compound, fold, label (1 = active), score (mean P(active) over the
    compound's wells at the inference dose), n_wells``. A compound absent at a dose has no row for it.
    """
    from sklearn.base import clone

    estimator = default_estimator() if estimator is None else estimator
    known = series.doses()
    infer = known if infer_doses is None else [float(d) for d in infer_doses]
    for d in list(train_doses) + list(infer):
        if not np.any(np.isclose(known, d)):
            raise ValueError(f"{series.source}: no wells at dose {format_dose(d)} (doses: "
                             f"{[format_dose(v) for v in known]})")
    missing = sorted(set(series.compound.tolist()) - set(folds))
    if missing:
        raise ValueError(f"{series.source}: compound {missing[0]!r} has no fold ({len(missing)} without)")
    y = (series.label == positive).astype(int)
    fold = np.array([folds[c] for c in series.compound])
    rows = []
    for train_dose in train_doses:
        at_train = np.isclose(series.dose, train_dose)
        for f in sorted(set(fold.tolist())):
            train = at_train & (fold != f)
            if len(set(y[train].tolist())) < 2:
                raise ValueError(f"{series.source}: task {positive!r}, fold {f}: the training wells at "
                                 f"{format_dose(train_dose)} hold one class only")
            model = clone(estimator).fit(series.x[train], y[train])
            active_col = int(np.flatnonzero(np.asarray(model.classes_) == 1)[0])
            for infer_dose in infer:
                wells = np.flatnonzero((fold == f) & np.isclose(series.dose, infer_dose))
                if len(wells) == 0:
                    continue
                p = model.predict_proba(series.x[wells])[:, active_col]
                frame = pd.DataFrame({"compound": series.compound[wells], "label": y[wells], "score": p})
                per = frame.groupby("compound", sort=True).agg(label=("label", "first"), score=("score", "mean"),
                                                                n_wells=("score", "size")).reset_index()
                per.insert(0, "fold", f)
                per.insert(0, "infer_dose", float(infer_dose))
                per.insert(0, "train_dose", float(train_dose))
                per.insert(0, "task", str(positive))
                rows.append(per)
    return pd.concat(rows, ignore_index=True)


def cross_dose_table(scores: pd.DataFrame, threshold_column: str = "task") -> pd.DataFrame:
    """Per task and (train, inference) dose: the thesis' model name, compounds, actives, AUROC, RIPtoP-AUPRC,
    precision and recall of the calls at P >= 0.5 (NaN where undefined: AUROC when the compounds scored at a dose
    hold one class). ``threshold_column`` fills the name's third slot."""
    from phenovec.activity.metrics import THRESHOLD, score

    out = []
    for (task, train_dose, infer_dose), g in scores.groupby(["task", "train_dose", "infer_dose"], sort=True):
        one_class = g["label"].nunique() < 2  # e.g. a dose only a few compounds were given: no AUROC there
        m = (dict.fromkeys(("auroc", "riptop_auprc"), float("nan")) if one_class else
             score(g["label"], g["score"], where=f"task {task!r}, {model_name(train_dose, infer_dose, task)}"))
        called = g["score"].to_numpy() >= THRESHOLD
        truth = g["label"].to_numpy() == 1
        out.append({
            "task": task, "train_dose": train_dose, "infer_dose": infer_dose,
            "model": model_name(train_dose, infer_dose, g[threshold_column].iloc[0]),
            "n_compounds": len(g), "n_active": int(truth.sum()),
            "auroc": m["auroc"], "riptop_auprc": m["riptop_auprc"],
            "precision": float((called & truth).sum() / called.sum()) if called.any() else float("nan"),
            "recall": float((called & truth).sum() / truth.sum()) if truth.any() else float("nan"),
        })
    return pd.DataFrame(out)


def dose_comparison(table: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """Mean ``metric`` over tasks: rows = inference dose, columns = ``[train/*/tasks]`` per training dose."""
    mean = table.groupby(["infer_dose", "train_dose"])[metric].mean().unstack("train_dose")
    mean = mean[sorted(mean.columns, reverse=True)]
    mean.columns = [f"train {format_dose(d)}µM" for d in mean.columns]
    mean.index = [f"infer {format_dose(d)}µM" for d in mean.index]
    return mean


def dose_series_study(table: str | Path, train_doses: Sequence[float], *, min_compounds: int = 5,
                      exclude_labels: Sequence[str] = ("Control",), folds: int = 5,
                      seed: int = 0) -> tuple[DoseSeries, list[str], pd.DataFrame]:
    """The thesis' low-concentration study on one well table: one-vs-rest tasks for every label with at least
    ``min_compounds`` compounds (``exclude_labels`` left out), each trained at every ``train_doses`` dose and scored
    out-of-fold (scaffold-grouped, stratified ``folds``-fold) at every dose given to at least half of the compounds.
    Returns (the series, the tasks, the tidy :func:`cross_dose_table` of every task)."""
    if not train_doses:
        raise ValueError("train_doses: give at least one training dose")
    series = read_dose_series(table)
    per_label = pd.Series(series.label).groupby(series.compound).first().value_counts()
    tasks = sorted(lab for lab, n in per_label.items() if n >= min_compounds and lab not in exclude_labels)
    if not tasks:
        raise ValueError(f"{series.source}: no label has {min_compounds} or more compounds "
                         f"(most: {per_label.to_dict() if len(per_label) <= 5 else per_label.head(5).to_dict()})")
    compounds_at = pd.Series(series.compound).groupby(series.dose).nunique()
    infer = [d for d, n in compounds_at.items() if n >= len(set(series.compound)) / 2]
    tables = []
    for task in tasks:
        task_folds = compound_folds(series, task, folds, seed)
        scores = cross_dose_scores(series, task, train_doses, task_folds, estimator=default_estimator(seed),
                                   infer_doses=infer)
        tables.append(cross_dose_table(scores))
    return series, tasks, pd.concat(tables, ignore_index=True)
