"""Few-shot tasks: each assay of a label table (:mod:`phenovec.io.activity_labels`) joined to compound-level
profiles, filtered to tasks with enough actives and inactives, and split into train / validation / test tasks.

Compound-level profiles are the consensus of a compound's replicate wells (:func:`compound_profiles`, via
:func:`phenovec.process.consensus`; median by default). A task's compounds are sorted by id, so its rows (and the
episodes drawn from them) depend on the data alone, not on the order of the files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from phenovec.activity.learner import TaskData

#: the input kinds of a learner: profiles alone, or profiles plus auxiliary input columns
INPUTS = ("cp", "cp+")


@dataclass(frozen=True)
class TaskSet:
    """Tasks split by task: ``train`` and ``validation`` (for pre-training), ``test`` (for the episodes);
    ``dropped`` maps each assay left out to why; ``features`` names the profile columns."""

    train: list[TaskData]
    validation: list[TaskData]
    test: list[TaskData]
    features: list[str]
    dropped: dict[str, str] = field(default_factory=dict)
    #: auxiliary input columns: the last ``len(aux_columns)`` of ``features`` (FSL-CP's ``cp+`` inputs)
    aux_columns: list[str] = field(default_factory=list)
    #: (C, H, W) when the inputs are flattened crops (:mod:`phenovec.activity.crop_units`), else None
    crop_shape: tuple[int, int, int] | None = None

    def inputs(self, kind: str) -> "TaskSet":
        """The tasks with the inputs of ``kind``: ``cp+`` = every column (profiles and auxiliary inputs), ``cp`` = the
        profile columns alone (this set itself when there are no auxiliary columns)."""
        if kind not in INPUTS:
            raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {kind!r}")
        if kind == "cp+":
            if not self.aux_columns:
                raise ValueError("inputs cp+ needs auxiliary input columns (profiles.aux_columns)")
            return self
        if not self.aux_columns:
            return self
        n = len(self.features) - len(self.aux_columns)

        def cut(tasks):
            return [TaskData(t.name, np.ascontiguousarray(t.x[:, :n]), t.y, t.compounds) for t in tasks]
        return TaskSet(cut(self.train), cut(self.validation), cut(self.test), self.features[:n], dict(self.dropped),
                       crop_shape=self.crop_shape)

    def summary(self) -> pd.DataFrame:
        """One row per kept task: ``task``, ``split``, ``n``, ``actives``, ``inactives``."""
        rows = [{"task": t.name, "split": s, "n": len(t.y), "actives": int(t.y.sum()),
                 "inactives": int(len(t.y) - t.y.sum())}
                for s, ts in (("train", self.train), ("validation", self.validation), ("test", self.test)) for t in ts]
        return pd.DataFrame(rows, columns=["task", "split", "n", "actives", "inactives"])


def compound_profiles(profiles: pd.DataFrame, compound_column: str | Sequence[str], *,
                      features: str | Sequence[str] = "infer", operation: str = "median",
                      source: str = "profiles") -> pd.DataFrame:
    """One consensus profile per compound: a float32 frame indexed by compound id (str), one column per feature.

    ``compound_column`` may list several columns (compound and dose, say): the id is then their values joined by
    ``|``. Rows with a missing id are an error naming the first such row."""
    from phenovec.process import consensus

    cols = [compound_column] if isinstance(compound_column, str) else list(compound_column)
    key = compound_ids(profiles, cols, source=source)
    df = profiles.drop(columns=cols).assign(_compound=key)
    cons = consensus(df, replicate_columns=["_compound"], operation=operation, features=features)
    feats = [c for c in cons.columns if c != "_compound"]
    x = cons[feats].to_numpy(dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"{source}: compound {cons['_compound'].iloc[i]!r} has a non-finite consensus value in "
                         f"feature {feats[j]!r} (impute or drop the feature first)")
    return pd.DataFrame(x, index=pd.Index(cons["_compound"].astype(str).to_numpy(), name="compound"), columns=feats)


def compound_ids(profiles: pd.DataFrame, columns: str | Sequence[str], *, source: str = "profiles") -> np.ndarray:
    """Each row's compound id: the stripped text of ``columns`` joined by ``|`` (compound and dose, say); a missing
    column or id is an error naming it (and the first such data row)."""
    cols = [columns] if isinstance(columns, str) else list(columns)
    if not cols:
        raise ValueError(f"{source}: compound_column names no column")
    for c in cols:
        if c not in profiles.columns:
            raise ValueError(f"{source}: no column {c!r} (compound_column)")
    missing = profiles[cols].isna().any(axis=1).to_numpy()
    if missing.any():
        raise ValueError(f"{source}: data row {int(np.flatnonzero(missing)[0]) + 1} has no compound id "
                         f"(column {', '.join(cols)})")
    key = profiles[cols[0]].astype(str).str.strip()
    for c in cols[1:]:
        key = key + "|" + profiles[c].astype(str).str.strip()
    return key.to_numpy(dtype=object)


def _count(value: float | int, n: int, key: str) -> int:
    """A split size given as a fraction (0 <= v < 1) or a count (an integer >= 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{key} must be a fraction in [0, 1) or a task count, got {value!r}")
    if isinstance(value, float) and value < 1:
        return int(round(value * n))
    if float(value) != int(value):
        raise ValueError(f"{key} must be a fraction in [0, 1) or a whole task count, got {value!r}")
    return int(value)


def build_tasks(labels: pd.DataFrame, profiles: pd.DataFrame, *, min_actives: int = 10, min_inactives: int = 10,
                test: float | int = 0.2, validation: float | int = 0.1, test_tasks: Sequence[str] | None = None,
                tasks: Sequence[str] | None = None, missing_profiles: str = "error", seed: int = 0,
                aux_columns: Sequence[str] = ()) -> TaskSet:
    """Join the long ``labels`` (``compound``, ``assay``, ``label``) to compound ``profiles`` (from
    :func:`compound_profiles`) and split the kept tasks.

    A task is kept with at least ``min_actives`` actives and ``min_inactives`` inactives (others go to
    ``dropped``, with their counts), or exactly the assays ``tasks`` lists, each of which must pass (an error
    names the task otherwise). ``test`` / ``validation`` are fractions of the kept tasks or counts; the test tasks
    may instead be named (``test_tasks``). The split is a permutation by ``seed``. A labelled compound without a
    profile is an error naming it (``missing_profiles="drop"`` drops its labels instead). ``aux_columns`` names the
    last columns of ``profiles`` that are auxiliary inputs (:meth:`TaskSet.inputs`)."""
    if missing_profiles not in ("error", "drop"):
        raise ValueError(f"missing_profiles must be 'error' or 'drop', got {missing_profiles!r}")
    for key, v in (("min_actives", min_actives), ("min_inactives", min_inactives)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{key} must be an integer >= 1 (a task needs both classes), got {v!r}")
    missing_cols = [c for c in ("compound", "assay", "label") if c not in labels.columns]
    if missing_cols:
        raise ValueError(f"labels: no column {missing_cols[0]!r} (read them with phenovec.io.activity_labels)")
    index = pd.Index(profiles.index.astype(str))
    if index.has_duplicates:
        raise ValueError(f"profiles: compound {index[index.duplicated()][0]!r} has more than one profile")
    compounds = labels["compound"].astype(str)
    have = compounds.isin(index).to_numpy()
    if not have.all():
        absent = sorted(set(compounds[~have]))
        if missing_profiles == "error":
            raise ValueError(f"labels: no profile for labelled compound {absent[0]!r}"
                             + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else "")
                             + "; set missing_profiles: drop to leave their labels out")
        labels = labels[have]
        compounds = compounds[have]
    x_all = profiles.to_numpy(dtype=np.float32)
    pos = index.get_indexer(compounds)
    wanted = None if tasks is None else [str(t) for t in tasks]
    if wanted is not None:
        unknown = sorted(set(wanted) - set(labels["assay"].astype(str)))
        if unknown:
            raise ValueError(f"tasks: no labels for task {unknown[0]!r}")
    kept: list[TaskData] = []
    dropped: dict[str, str] = {}
    counts: dict[str, tuple[int, int]] = {}
    frame = pd.DataFrame({"compound": compounds.to_numpy(), "assay": labels["assay"].astype(str).to_numpy(),
                          "label": labels["label"].to_numpy(dtype=np.int8), "pos": pos})
    for assay, g in frame.groupby("assay", sort=True):
        if wanted is not None and assay not in wanted:
            continue
        g = g.sort_values("compound", kind="stable")
        n_act = int(g.label.sum())
        n_inact = len(g) - n_act
        counts[assay] = (n_act, n_inact)
        if n_act == 0 or n_inact == 0:
            reason = f"one class only ({n_act} actives, {n_inact} inactives)"
        elif n_act < min_actives or n_inact < min_inactives:
            reason = (f"{n_act} actives and {n_inact} inactives, fewer than min_actives {min_actives} / "
                      f"min_inactives {min_inactives}")
        else:
            kept.append(TaskData(name=assay, x=x_all[g.pos.to_numpy()], y=g.label.to_numpy(dtype=np.int8),
                                 compounds=g.compound.to_numpy(dtype=object)))
            continue
        if wanted is not None:
            raise ValueError(f"task {assay!r}: {reason}")
        dropped[assay] = reason
    if not kept:
        closest = max(counts, key=lambda k: min(counts[k]), default=None)
        raise ValueError(f"no task has at least {min_actives} actives and {min_inactives} inactives "
                         f"({len(dropped)} tasks dropped" + (f"; the most balanced, {closest!r}, has "
                         f"{counts[closest][0]} actives and {counts[closest][1]} inactives)" if closest else ")"))
    aux = [str(c) for c in aux_columns]
    if aux and [str(c) for c in profiles.columns[-len(aux):]] != aux:
        raise ValueError(f"profiles: the auxiliary input columns {aux} must be the last columns")
    ts = split_tasks(kept, features=[str(c) for c in profiles.columns], test=test, validation=validation,
                     test_tasks=test_tasks, seed=seed, dropped=dropped)
    return TaskSet(ts.train, ts.validation, ts.test, ts.features, ts.dropped, aux)


def split_tasks(tasks: list[TaskData], *, features: list[str], test: float | int = 0.2,
                validation: float | int = 0.1, test_tasks: Sequence[str] | None = None, seed: int = 0,
                dropped: dict[str, str] | None = None) -> TaskSet:
    """A seeded split of ``tasks`` into train / validation / test (see :func:`build_tasks`)."""
    by_name = {t.name: t for t in tasks}
    names = sorted(by_name)
    rng = np.random.default_rng([seed, 0x7A5C])
    if test_tasks is not None:
        test_names = [str(t) for t in test_tasks]
        for t in test_names:
            if t not in by_name:
                why = (dropped or {}).get(t)
                raise ValueError(f"test_tasks: task {t!r} " + (f"was dropped: {why}" if why else "has no labels"))
        rest = [n for n in names if n not in set(test_names)]
    else:
        n_test = _count(test, len(names), "test")
        order = [names[i] for i in rng.permutation(len(names))]
        test_names, rest = sorted(order[:n_test]), [n for n in names if n not in set(order[:n_test])]
    if not test_names:
        raise ValueError(f"no test tasks: test = {test!r} of {len(names)} kept tasks")
    n_val = _count(validation, len(names), "validation")
    if n_val > len(rest):
        raise ValueError(f"validation = {validation!r} asks for {n_val} tasks but only {len(rest)} are not test tasks")
    order = [rest[i] for i in rng.permutation(len(rest))]
    val_names = sorted(order[:n_val])
    train_names = sorted(order[n_val:])
    return TaskSet(train=[by_name[n] for n in train_names], validation=[by_name[n] for n in val_names],
                   test=[by_name[n] for n in test_names], features=list(features), dropped=dict(dropped or {}))


def separate_compounds(ts: TaskSet, *, pretrain_fraction: float = 0.5, seed: int = 0, min_actives: int = 1,
                       min_inactives: int = 1, group_by: str = "compound") -> TaskSet:
    """``ts`` with the compounds split in two: the training and validation tasks keep a seeded ``pretrain_fraction``
    of the compound groups, the test tasks the others. No test compound is then seen while pre-training.

    One-vs-rest tasks label every compound in every task, and a compound active in a training task is inactive in
    every test task: a learner pre-trained on the test compounds' labels can rank a test task from them alone.
    ``group_by="compound"`` groups ids by their first ``|``-separated part (a compound at several doses is one
    group); ``"id"`` takes each id as its own group. Tasks left with fewer than ``min_actives`` / ``min_inactives``
    go to ``dropped``; ``ValueError`` when no test task or no pre-training task is left."""
    if not 0 < pretrain_fraction < 1:
        raise ValueError(f"pretrain_fraction must be in (0, 1), got {pretrain_fraction!r}")
    if group_by not in ("compound", "id"):
        raise ValueError(f"group_by must be 'compound' or 'id', got {group_by!r}")
    every = sorted({str(c) for t in ts.train + ts.validation + ts.test for c in t.compounds})

    def group(c: str) -> str:
        return c.split("|", 1)[0] if group_by == "compound" else c
    groups = sorted({group(c) for c in every})
    rng = np.random.default_rng([seed, 0xD15])
    order = [groups[i] for i in rng.permutation(len(groups))]
    pretrain = set(order[:int(round(pretrain_fraction * len(groups)))])
    dropped = dict(ts.dropped)

    def keep(tasks: list[TaskData], side: bool) -> list[TaskData]:
        out = []
        for t in tasks:
            mask = np.array([(group(str(c)) in pretrain) == side for c in t.compounds], dtype=bool)
            n_act = int(t.y[mask].sum())
            n_inact = int(mask.sum()) - n_act
            if n_act < min_actives or n_inact < min_inactives:
                dropped[t.name] = (f"{n_act} actives and {n_inact} inactives on its side of the compound split, "
                                   f"fewer than {min_actives} / {min_inactives}")
                continue
            out.append(TaskData(t.name, t.x[mask], t.y[mask], t.compounds[mask]))
        return out
    train, validation, test = keep(ts.train, True), keep(ts.validation, True), keep(ts.test, False)
    if not test:
        raise ValueError("separate compounds: no test task keeps enough actives and inactives on the test side")
    if not train + validation:
        raise ValueError("separate compounds: no training task keeps enough actives and inactives")
    return TaskSet(train, validation, test, list(ts.features), dropped, list(ts.aux_columns), ts.crop_shape)
