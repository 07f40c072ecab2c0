"""MOAProfiler's training splits (Wong et al. 2023, digest part B1): well-holdout, compound-holdout, balancing.

Pure pandas / numpy (no torch): each function takes the table of cells or image fields (one row each, with
the well's plate and well columns and the MOA label) and answers per row, so a field trainer and a crop
trainer use them alike.

- :func:`well_holdout_split` (the paper's main scheme): built independently per MOA, the MOA's wells are
  shuffled and each well, with all its fields, goes to one of 60 % train / 10 % validation / 30 % test. The
  test wells are spread over as many plates as possible (round-robin over the MOA's plates), so a MOA whose
  wells lie on 7 or more plates has test wells on at least ``min_test_plates`` (7) plates; where that cannot
  be (too few plates, or too few test wells) one :class:`PlateSpreadWarning` names the MOAs.
- :func:`compound_holdout_split` (Fig. 4): one randomly chosen compound of every MOA with two or more
  compounds is held out (``test``); the other compounds' wells go 70 % train / 30 % validation, per MOA.
- :func:`balance_by_duplication`: an epoch's row positions with every class duplicated up to the largest.
- :func:`evaluation_rows`: DMSO trains but is never scored, and single-compound MOAs are left out of every
  test analysis; this is :func:`phenovec.evaluate.moa_test_wells` applied to the whole table.

Every split is deterministic in ``seed`` and independent of the row order; each MOA gets its own random
stream (seeded by the seed and the MOA's name), so adding a MOA does not reshuffle the others. The label is
the MOA with DMSO as one more class: DMSO is split like any MOA (it trains and validates).
"""
from __future__ import annotations

import warnings
import zlib
from typing import Sequence

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


class PlateSpreadWarning(UserWarning):
    """A MOA's test wells cover fewer than ``min_test_plates`` plates (its wells lie on too few plates, or it
    has too few test wells)."""


def _check_columns(df: pd.DataFrame, cols: dict[str, str], missing_ok: bool = False) -> None:
    """``cols``: argument name -> column name. Unknown columns (and, unless ``missing_ok``, missing values)
    raise naming both."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"expected a pandas DataFrame of cells or fields, got {type(df).__name__}")
    for arg, col in cols.items():
        if col not in df.columns:
            raise ValueError(f"{arg}: unknown column {col!r} (columns: {', '.join(map(str, df.columns))})")
    if missing_ok:
        return
    for arg, col in cols.items():
        na = df[col].isna().to_numpy()
        if na.any():
            r = int(np.flatnonzero(na)[0])
            raise ValueError(f"{arg}: column {col!r} has a missing value (NaN) at row {r} "
                             f"({int(na.sum())} such rows)")


def _wells(df: pd.DataFrame, well_cols: Sequence[str], labels: dict[str, str]) -> tuple[np.ndarray, pd.DataFrame]:
    """(well code per row, one row per well with its ``labels`` columns), wells in sorted key order. A label
    that is not constant within a well is an error naming the well."""
    well_cols = [well_cols] if isinstance(well_cols, str) else list(well_cols)
    if not well_cols:
        raise ValueError("well_cols: at least one column identifies a well")
    _check_columns(df, {**{f"well_cols[{i}]": c for i, c in enumerate(well_cols)}, **labels})
    grouped = df.groupby(well_cols, sort=True, dropna=False)
    code = grouped.ngroup().to_numpy(dtype=np.int64)
    for arg, col in labels.items():
        n = grouped[col].nunique()
        bad = np.flatnonzero(n.to_numpy() > 1)
        if len(bad):
            key = n.index[bad[0]]
            raise ValueError(f"{arg}: well {key!r} ({'/'.join(well_cols)}) has {int(n.iloc[bad[0]])} values of "
                             f"column {col!r}; all fields of a well must share it ({len(bad)} such wells)")
    table = grouped[list(dict.fromkeys(labels.values()))].first().reset_index(drop=True)
    return code, table


def _moa_rng(seed: int, moa, tag: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), tag, zlib.crc32(str(moa).encode("utf-8"))])


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _moas_with_few_wells(wells: pd.DataFrame, moa_col: str, minimum: int) -> None:
    n = wells.groupby(moa_col, sort=True).size()
    few = n[n < minimum]
    if len(few):
        names = ", ".join(f"{m!r} ({int(k)} well{'s' if k != 1 else ''})" for m, k in few.iloc[:10].items())
        raise ValueError(f"moa_col: MOA {names} of column {moa_col!r} needs at least {minimum} wells to be split"
                         + (f" ({len(few)} such MOAs)" if len(few) > 1 else "")
                         + "; drop it or merge it before splitting")


def _counts(n: int, fractions: Sequence[float], minimum: Sequence[int]) -> np.ndarray:
    """Largest-remainder allocation of ``n`` items to the fractions, then at least ``minimum[i]`` each (taken
    from the largest set)."""
    f = np.asarray(fractions, dtype=np.float64)
    raw = f * n
    out = np.floor(raw).astype(np.int64)
    rest = n - int(out.sum())
    order = np.lexsort((np.arange(len(f)), -(raw - out)))  # largest remainder first, ties by position
    out[order[:rest]] += 1
    for i, m in enumerate(minimum):
        while out[i] < m:
            j = int(np.argmax(np.where(np.arange(len(f)) == i, -1, out - np.asarray(minimum))))
            if out[j] <= minimum[j]:
                break
            out[j] -= 1
            out[i] += 1
    return out


def _spread_order(plates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions of wells in round-robin order over their plates (plates and wells within a plate shuffled):
    the first k cover min(k, #plates) plates."""
    perm = rng.permutation(len(plates))
    uniq = pd.unique(plates[perm])  # plates in a random order
    rank_of_plate = {p: i for i, p in enumerate(uniq)}
    plate_rank = np.array([rank_of_plate[p] for p in plates[perm]], dtype=np.int64)
    within = pd.Series(plate_rank).groupby(plate_rank).cumcount().to_numpy()  # k-th well of its plate
    return perm[np.lexsort((plate_rank, within))]


def well_holdout_split(
    cells_or_fields: pd.DataFrame,
    *,
    moa_col: str,
    well_cols: Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
    plate_col: str = "Metadata_Plate",
    fractions: Sequence[float] = (0.6, 0.1, 0.3),
    seed: int = 0,
    min_test_plates: int = 7,
) -> pd.Series:
    """``train`` / ``val`` / ``test`` per row (a Series on the input's index, name ``split``).

    Per MOA: ``fractions`` (train, val, test) of its wells by largest remainder, with at least one training
    and one test well, and one validation well when the MOA has three or more wells and the validation
    fraction is positive. Test wells are taken round-robin over the MOA's plates (``plate_col``), so they
    cover ``min(#test wells, #plates)`` plates; MOAs covering fewer than ``min_test_plates`` get one
    :class:`PlateSpreadWarning` naming them (``min_test_plates=0`` silences it). Errors (``ValueError``): an
    unknown column, a missing label, a MOA with a single well, a well whose fields carry two MOAs or plates.
    """
    df = cells_or_fields
    seed = _check_seed(seed)
    try:
        fr = np.asarray([float(v) for v in fractions], dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"fractions must be three numbers (train, val, test), got {fractions!r}") from None
    if fr.shape != (3,) or (fr < 0).any() or not np.isclose(fr.sum(), 1.0) or fr[0] <= 0 or fr[2] <= 0:
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test) summing to 1 with "
                         f"train and test positive, got {tuple(fractions)!r}")
    if isinstance(min_test_plates, bool) or not isinstance(min_test_plates, (int, np.integer)) or min_test_plates < 0:
        raise ValueError(f"min_test_plates must be a non-negative integer, got {min_test_plates!r}")
    code, wells = _wells(df, well_cols, {"moa_col": moa_col, "plate_col": plate_col})
    _moas_with_few_wells(wells, moa_col, 2)
    well_split = np.empty(len(wells), dtype=object)
    short: list[tuple[object, int, int, int]] = []  # (MOA, test plates, plates, test wells)
    for moa, idx in wells.groupby(moa_col, sort=True).indices.items():
        rng = _moa_rng(seed, moa, 0x3E11)
        n = len(idx)
        minimum = (1, 1 if (fr[1] > 0 and n >= 3) else 0, 1)
        n_train, n_val, n_test = _counts(n, fr, minimum)
        plates = wells[plate_col].to_numpy()[idx]
        order = _spread_order(plates, rng)
        test = idx[order[:n_test]]
        rest = idx[order[n_test:]]
        rest = rest[rng.permutation(len(rest))]
        well_split[test] = "test"
        well_split[rest[:n_val]] = "val"
        well_split[rest[n_val:]] = "train"
        covered = len(pd.unique(plates[order[:n_test]]))
        if covered < min_test_plates:
            short.append((moa, covered, len(pd.unique(plates)), int(n_test)))
    if short:
        listed = "; ".join(f"{m!r}: {c} plate{'s' if c != 1 else ''} ({t} test wells, wells on {p} plates)"
                           for m, c, p, t in short[:10])
        more = f"; and {len(short) - 10} more" if len(short) > 10 else ""
        warnings.warn(f"well_holdout_split: the test wells of {len(short)} MOA{'s' if len(short) != 1 else ''} "
                      f"of column {moa_col!r} cover fewer than min_test_plates={min_test_plates} plates "
                      f"(column {plate_col!r}), as many as their wells allow: {listed}{more}",
                      PlateSpreadWarning, stacklevel=2)
    return pd.Series(well_split[code], index=df.index, name="split", dtype=object)


def compound_holdout_split(
    df: pd.DataFrame,
    *,
    moa_col: str,
    compound_col: str,
    well_cols: Sequence[str] = ("Metadata_Plate", "Metadata_Well"),
    seed: int = 0,
    train_fraction: float = 0.7,
) -> pd.Series:
    """``train`` / ``val`` / ``test`` per row (a Series on the input's index, name ``split``).

    For every MOA with two or more compounds one compound, drawn at random, is ``test`` (all its wells).
    The other wells of each MOA go ``train_fraction`` to training and the rest to validation (by well, at
    least one training well, and one validation well when there are two or more and ``train_fraction`` < 1).
    Single-compound MOAs (DMSO among them) only train and validate. Errors (``ValueError``): an unknown
    column, a missing label, a MOA with a single well, a well with two compounds, a compound with two MOAs.
    """
    seed = _check_seed(seed)
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float, np.floating)) \
            or not 0 < float(train_fraction) <= 1:
        raise ValueError(f"train_fraction must be a number in (0, 1], got {train_fraction!r}")
    tf = float(train_fraction)
    code, wells = _wells(df, well_cols, {"moa_col": moa_col, "compound_col": compound_col})
    pairs = wells[[compound_col, moa_col]].drop_duplicates()
    dup = pairs[compound_col].duplicated(keep=False).to_numpy()
    if dup.any():
        c = pairs[compound_col].to_numpy()[dup][0]
        ms = sorted(map(repr, pairs.loc[pairs[compound_col] == c, moa_col]))
        raise ValueError(f"compound_col: compound {c!r} of column {compound_col!r} has {len(ms)} MOAs in column "
                         f"{moa_col!r} ({', '.join(ms)}); each compound must have one MOA")
    _moas_with_few_wells(wells, moa_col, 2)
    well_split = np.empty(len(wells), dtype=object)
    compounds = wells[compound_col].to_numpy()
    for moa, idx in wells.groupby(moa_col, sort=True).indices.items():
        rng = _moa_rng(seed, moa, 0xC0D)
        cpds = sorted(pd.unique(compounds[idx]), key=str)
        held = np.zeros(len(idx), dtype=bool)
        if len(cpds) >= 2:
            held = compounds[idx] == cpds[int(rng.integers(len(cpds)))]
        well_split[idx[held]] = "test"
        rest = idx[~held]
        rest = rest[rng.permutation(len(rest))]
        n = len(rest)
        n_train, _ = _counts(n, (tf, 1.0 - tf), (1, 1 if (tf < 1 and n >= 2) else 0))
        well_split[rest[:n_train]] = "train"
        well_split[rest[n_train:]] = "val"
    return pd.Series(well_split[code], index=df.index, name="split", dtype=object)


def balance_by_duplication(df: pd.DataFrame, *, label_col: str, seed: int = 0, epoch: int = 0) -> np.ndarray:
    """Row positions (``df.iloc``) for one class-balanced epoch, shuffled: every row once, and each smaller
    class topped up to the largest class's count by duplicating its rows (whole copies, then a random
    subset without replacement), so every class has exactly the largest count. Pass the training rows
    only. Deterministic in (seed, epoch); a new epoch duplicates a different subset."""
    seed = _check_seed(seed)
    epoch = _check_seed(epoch)
    _check_columns(df, {"label_col": label_col})
    if len(df) == 0:
        raise ValueError(f"label_col: no rows to balance (column {label_col!r})")
    rng = np.random.default_rng([seed, epoch, 0xBA1])
    groups = df.groupby(label_col, sort=True).indices  # positional
    target = max(len(p) for p in groups.values())
    parts = []
    for _, pos in sorted(groups.items(), key=lambda kv: str(kv[0])):
        reps, extra = divmod(target, len(pos))
        parts.append(np.tile(pos, reps))
        parts.append(rng.choice(pos, size=extra, replace=False))
    out = np.concatenate(parts).astype(np.int64)
    return out[rng.permutation(len(out))]


def evaluation_rows(df: pd.DataFrame, *, moa_col: str, compound_col: str, control: str | None = "DMSO",
                    split=None) -> np.ndarray:
    """Boolean mask of the rows every metric scores: not the control (``control`` in ``compound_col`` or
    ``moa_col``) and of a MOA with two or more compounds, counted over the whole table (pass the whole
    table: after a compound holdout each test MOA has a single compound). With ``split`` (a split name per
    row, e.g. from :func:`well_holdout_split`) only ``test`` rows are kept. The filter is
    :func:`phenovec.evaluate.moa_test_wells`; a control that no row has is an error."""
    from phenovec.evaluate.moa_test_wells import moa_test_wells

    _check_columns(df, {"moa_col": moa_col, "compound_col": compound_col}, missing_ok=True)  # checked below
    pos = np.arange(len(df), dtype=np.float64)[:, None]
    _, kept = moa_test_wells(df[[moa_col, compound_col]], pos, moa_col=moa_col, compound_col=compound_col,
                             control=control)
    mask = np.zeros(len(df), dtype=bool)
    mask[kept[:, 0].astype(np.int64)] = True
    if split is not None:
        s = np.asarray(split, dtype=object)
        if s.shape != (len(df),):
            raise ValueError(f"split: {s.shape[0] if s.ndim else 0} split names for {len(df)} rows")
        mask &= s == "test"
    return mask
