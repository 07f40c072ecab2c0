"""Synthetic Cell-Painting plates: deterministic 5-channel 16-bit fields with known treatments and nuclei.

``synth_plate`` is the embedded demo data and the fixture of every later stage (crop, train, profile,
evaluate). It writes

* one single-page 16-bit greyscale TIFF per channel per site
  (``images/<plate>/<plate>_<well>_s<site>_<channel>.tif``; deflate or uncompressed, 64-row strips);
* ``index.csv``: one row per site — ``Metadata_Plate``, ``Metadata_Batch``, ``Metadata_Well``,
  ``Metadata_Site`` (1-based), ``FileName_<channel>`` per channel (paths relative to the index file),
  ``Metadata_Treatment``, ``Metadata_MOA``, ``Metadata_Control`` (True for DMSO wells);
* ``nuclei.csv``: the ground-truth nucleus centres — ``Metadata_Plate``, ``Metadata_Well``, ``Metadata_Site``,
  ``ObjectNumber`` (1-based per site), ``Nuclei_Location_Center_X``, ``Nuclei_Location_Center_Y`` (pixels,
  CellProfiler convention: x = column, y = row, the centre of pixel (r, c) is (c, r)).

Image model (per site, float intensities, then Poisson + Gaussian read noise, rounded and clipped to uint16):

* cells: centres by rejection sampling (no two centres closer than 0.9 x the sum of the cell semi-axes,
  relaxed in 5 % steps only when a dense field cannot be filled, never below the nucleus diameter, so cells
  overlap little), a random orientation, soft-edged ellipses for the cell and the nucleus;
* DNA: bright nucleus with chromatin texture; ER: cytoplasm brightest near the nucleus with a fine reticular
  texture; RNA: cytoplasm + nucleus + 1-3 nucleoli; AGP: cortical ring + diffuse cytoplasm with oriented fibres;
  Mito: punctate spots (Gaussian, sigma ~1.2 px) in the cytoplasm plus a faint diffuse component;
* per-cell lognormal intensity variation, per-well replicate variation;
* plate effects: per plate x channel intensity scale (lognormal, sigma 0.12) and background offset; batch effects
  (``plates_per_batch`` consecutive plates form a batch): a smooth illumination field (linear gradient +
  vignetting) per batch x channel;
* treatments: a control (name ``DMSO``, case-insensitive) is unperturbed. Every other treatment applies its MOA's
  effect (log-fold changes of the morphology parameters below) scaled by a compound potency in [0.7, 1.3] plus a
  small compound-specific off-axis change, so compounds of one MOA share a phenotype and still differ. A treatment
  given as ``(name, moa, strength)`` scales its whole effect by ``strength`` (0 = an inactive compound that looks
  like DMSO, 0.3 = a weak one): graded strengths make the metrics spread out instead of saturating.
* bad wells (``bad_wells`` per plate, seeded, never a control well's only replicate): alternately an *empty* well
  (no cells: a dispensing failure) and an *out-of-focus* well (every channel blurred, Gaussian sigma 3 px). The
  index says which in ``Metadata_WellQC`` (``ok`` | ``empty`` | ``out_of_focus``), the ground truth a QC check is
  tested against.

  =========================  ==========================================================================
  MOA (built in)             effect
  =========================  ==========================================================================
  ``Aurora kinase inhibitor``  larger nuclei (area ~ x1.9) and cells, brighter DNA
  ``Mitochondrial stressor``   ~ x2.2 mitochondrial spots, brighter spots, dimmer ER
  ``Actin disruptor``          elongated cells (aspect ~ x2), ~ x1.9 AGP, dimmer RNA
  =========================  ==========================================================================

  Any other MOA name gets a fixed random effect derived from the name (CRC-32) and the seed.

Determinism: every random draw comes from a generator seeded by (seed, plate, well, site) or (seed, name), so
the same arguments give byte-identical files, independent of the order in which sites are produced.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
DEFAULT_TREATMENTS: tuple[tuple[str, str], ...] = (
    ("DMSO", "control"),
    ("AKI-1", "Aurora kinase inhibitor"),
    ("AKI-2", "Aurora kinase inhibitor"),
    ("MST-1", "Mitochondrial stressor"),
    ("MST-2", "Mitochondrial stressor"),
    ("ACT-1", "Actin disruptor"),
    ("ACT-2", "Actin disruptor"),
)
# morphology parameters a treatment perturbs (log-fold changes from DMSO)
PARAMS = ("nucleus_size", "cell_size", "elongation", "dna", "er", "rna", "agp", "mito_count", "mito")
_MOA_EFFECTS = {
    "aurora kinase inhibitor": {"nucleus_size": 0.32, "cell_size": 0.15, "dna": 0.25},
    "mitochondrial stressor": {"mito_count": 0.8, "mito": 0.35, "er": -0.2},
    "actin disruptor": {"elongation": 0.7, "agp": 0.65, "rna": -0.2},
}
_BASE = {  # DMSO morphology: nucleus/cell radii in units of cell_radius, elongation = major/minor axis
    "nucleus_size": 0.5, "cell_size": 1.0, "elongation": 1.25, "dna": 9000.0, "er": 2500.0, "rna": 2000.0,
    "agp": 2200.0, "mito_count": 18.0, "mito": 3500.0,
}
_CH_PARAM = {"DNA": "dna", "ER": "er", "RNA": "rna", "AGP": "agp", "Mito": "mito"}
_PLATE_ROWS = "ABCDEFGHIJKLMNOP"
_MAX_FIELD = 4096


@dataclass(frozen=True)
class Treatment:
    name: str
    moa: str
    control: bool
    effect: np.ndarray  # log-fold change per PARAMS entry


def well_names(n_wells: int) -> list[str]:
    """The first ``n_wells`` wells of a 384-well plate, row-major: A01 ... A24, B01 ..."""
    if not 1 <= n_wells <= 384:
        raise ValueError(f"wells: {n_wells} wells requested; a synthetic plate holds 1 to 384")
    return [f"{_PLATE_ROWS[i // 24]}{i % 24 + 1:02d}" for i in range(n_wells)]


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *[int(k) for k in keys]])


def _crc(s: str) -> int:
    return zlib.crc32(s.encode("utf-8"))


def _treatments(treatments: Sequence[Sequence[str]], seed: int) -> list[Treatment]:
    out: list[Treatment] = []
    seen: set[str] = set()
    for i, t in enumerate(treatments):
        if len(t) not in (2, 3) or not all(isinstance(x, str) and x for x in t[:2]):
            raise ValueError(f"treatments[{i}]: expected a (name, moa) pair of non-empty strings or (name, moa, "
                             f"strength), got {t!r}")
        name, moa = t[0], t[1]
        strength = 1.0 if len(t) == 2 else t[2]
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 5:
            raise ValueError(f"treatments[{i}]: strength must be a number in [0, 5], got {strength!r}")
        if name in seen:
            raise ValueError(f"treatments[{i}]: duplicate treatment name {name!r}")
        seen.add(name)
        control = name.upper() == "DMSO"
        effect = np.zeros(len(PARAMS))
        if not control:
            known = _MOA_EFFECTS.get(moa.lower())
            if known is None:  # a fixed random phenotype for an unknown MOA
                r = _rng(seed, 1, _crc(moa))
                direction = r.standard_normal(len(PARAMS))
                moa_effect = 0.6 * direction / np.linalg.norm(direction)
            else:
                moa_effect = np.array([known.get(p, 0.0) for p in PARAMS])
            r = _rng(seed, 2, _crc(name))
            potency = r.uniform(0.7, 1.3)
            effect = strength * (potency * moa_effect + r.normal(0.0, 0.04, len(PARAMS)))
        out.append(Treatment(name, moa, control, effect))
    if not out:
        raise ValueError("treatments: at least one (name, moa) pair is required")
    return out


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-mask of an ellipse from its normalised radius d (1 on the boundary); width in d units."""
    return 1.0 / (1.0 + np.exp((d - 1.0) / width))


def _unit_noise(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / (n.std() + 1e-12)


def _place_centres(rng, n: int, size: int, margin: float, min_dist: float, floor: float,
                   where: str) -> np.ndarray:
    """Random sequential placement: each new centre at least ``min_dist`` from all others; after 300
    consecutive rejections the distance shrinks by 5 %, never below ``floor`` (then a clear error)."""
    pts = np.empty((n, 2))
    k, fails = 0, 0
    while k < n:
        x, y = rng.uniform(margin, size - 1 - margin, 2)
        if k == 0 or np.min((pts[:k, 0] - x) ** 2 + (pts[:k, 1] - y) ** 2) >= min_dist ** 2:
            pts[k] = x, y
            k, fails = k + 1, 0
            continue
        fails += 1
        if fails >= 300:
            if min_dist <= floor:
                raise ValueError(
                    f"{where}: cannot place {n} cells with nuclei at least {floor:.1f} px apart in a "
                    f"{size}x{size} field; lower cells_per_site or cell_radius, or raise size")
            min_dist, fails = max(floor, min_dist * 0.95), 0
    return pts


def _add_box(img: np.ndarray, y0: int, x0: int, patch: np.ndarray) -> None:
    h, w = img.shape
    py0, px0 = max(0, -y0), max(0, -x0)
    y1, x1 = min(h, y0 + patch.shape[0]), min(w, x0 + patch.shape[1])
    img[max(0, y0):y1, max(0, x0):x1] += patch[py0:py0 + y1 - max(0, y0), px0:px0 + x1 - max(0, x0)]


def _illumination(seed: int, batch: int, size: int, n_ch: int) -> np.ndarray:
    r = _rng(seed, 3, batch)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) - 0.5
    fields = []
    for _ in range(n_ch):
        gx, gy = r.uniform(-0.25, 0.25, 2)
        vig = r.uniform(0.1, 0.3)
        cx, cy = r.uniform(-0.1, 0.1, 2)
        fields.append(1.0 + gx * xx + gy * yy - vig * ((xx - cx) ** 2 + (yy - cy) ** 2) * 2.0)
    return np.stack(fields).astype(np.float32)


def render_site(params: dict, n_cells: int, size: int, cell_radius: float, channels: Sequence[str],
                rng: np.random.Generator, where: str = "site") -> tuple[np.ndarray, np.ndarray]:
    """Noise-free, unscaled intensities (C x size x size float32) and nucleus centres (n x 2, x then y).

    ``params`` holds the well's morphology (``PARAMS`` keys, DMSO values times the treatment's fold changes).
    """
    nuc_r = params["nucleus_size"] * cell_radius
    cell_r = max(params["cell_size"] * cell_radius, nuc_r * 1.25)
    elong = max(params["elongation"], 1.0)
    a_cell, b_cell = cell_r * np.sqrt(elong), cell_r / np.sqrt(elong)  # area-preserving elongation
    a_nuc, b_nuc = nuc_r * elong ** 0.25, nuc_r / elong ** 0.25
    centres = _place_centres(rng, n_cells, size, margin=max(nuc_r, 2.0), min_dist=0.9 * (a_cell + b_cell),
                             floor=2.0 * a_nuc + 1.0, where=where)
    half = int(np.ceil(a_cell * 1.25 + 3))
    grid = np.arange(-half, half + 1, dtype=np.float32)
    acc = {c: np.zeros((size, size), np.float32) for c in ("DNA", "ER", "RNA", "AGP", "Mito")}
    mito_pts = np.zeros((size, size), np.float32)
    nucleoli = np.zeros((size, size), np.float32)
    for x, y in centres:
        xi, yi = int(round(x)), int(round(y))
        fx, fy = x - xi, y - yi
        theta = rng.uniform(0, np.pi)
        ct, st = np.cos(theta), np.sin(theta)
        dx = grid[None, :] - fx
        dy = grid[:, None] - fy
        u, v = dx * ct + dy * st, -dx * st + dy * ct
        # cell centre slightly off the nucleus centre along the major axis
        off = rng.normal(0.0, 0.15) * a_cell
        d_cell = np.sqrt(((u - off) / a_cell) ** 2 + (v / b_cell) ** 2)
        d_nuc = np.sqrt((u / a_nuc) ** 2 + (v / b_nuc) ** 2)
        cm, nm = _soft(d_cell, 0.06), _soft(d_nuc, 0.05)
        ring = np.exp(-((d_cell - 0.93) / 0.08) ** 2)
        k = np.exp(rng.normal(0.0, 0.12, 5))  # per-cell brightness
        y0, x0 = yi - half, xi - half
        _add_box(acc["DNA"], y0, x0, params["dna"] * k[0] * nm)
        _add_box(acc["ER"], y0, x0, params["er"] * k[1] * np.clip(cm * (1.3 - 0.8 * d_cell) - 0.7 * nm, 0, None))
        _add_box(acc["RNA"], y0, x0, params["rna"] * k[2] * (0.6 * cm + 0.4 * nm))
        _add_box(acc["AGP"], y0, x0, params["agp"] * k[3] * (0.35 * cm + 0.9 * ring * cm))
        _add_box(acc["Mito"], y0, x0, params["mito"] * k[4] * 0.12 * cm)
        # mitochondria: impulses in the cytoplasm (between nucleus and membrane), blurred below
        n_spots = rng.poisson(params["mito_count"])
        if n_spots:
            t = rng.uniform(0, 2 * np.pi, n_spots)
            s = rng.uniform(0.5, 0.92, n_spots)
            su, sv = off + s * a_cell * np.cos(t), s * b_cell * np.sin(t)
            sx, sy = x + su * ct - sv * st, y + su * st + sv * ct
            ok = (sx >= 0) & (sx <= size - 1) & (sy >= 0) & (sy <= size - 1)
            np.add.at(mito_pts, (np.rint(sy[ok]).astype(int), np.rint(sx[ok]).astype(int)),
                      params["mito"] * k[4] * rng.uniform(0.6, 1.4, ok.sum()).astype(np.float32))
        n_nl = rng.integers(1, 4)
        t, s = rng.uniform(0, 2 * np.pi, n_nl), rng.uniform(0, 0.5, n_nl)
        nx, ny = x + s * a_nuc * np.cos(t), y + s * b_nuc * np.sin(t)
        np.add.at(nucleoli, (np.clip(np.rint(ny).astype(int), 0, size - 1),
                             np.clip(np.rint(nx).astype(int), 0, size - 1)), params["rna"] * k[2] * 1.0)
    spot_sigma = 1.2
    acc["Mito"] += ndimage.gaussian_filter(mito_pts, spot_sigma) * (2 * np.pi * spot_sigma ** 2)
    acc["RNA"] += ndimage.gaussian_filter(nucleoli, 1.6) * (2 * np.pi * 1.6 ** 2) * 0.8
    # channel textures (multiplicative, field-wide)
    acc["DNA"] *= np.clip(1.0 + 0.18 * _unit_noise(rng, (size, size), 1.0), 0.2, None)
    acc["ER"] *= np.clip(1.0 + 0.45 * _unit_noise(rng, (size, size), 0.8), 0.0, None)
    acc["RNA"] *= np.clip(1.0 + 0.2 * _unit_noise(rng, (size, size), 1.5), 0.2, None)
    fib = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), (0.7, 3.5))
    acc["AGP"] *= np.clip(1.0 + 0.35 * fib / (fib.std() + 1e-12), 0.0, None)
    return np.stack([acc[c] for c in channels]), centres


def _check_args(plates, wells, sites_per_well, size, cells_per_site, channels, compression, cell_radius,
                plates_per_batch) -> tuple[list[str], tuple[int, int]]:
    if not isinstance(plates, (int, np.integer)) or plates < 1:
        raise ValueError(f"plates: expected a positive integer, got {plates!r}")
    if isinstance(wells, (int, np.integer)):
        wells = well_names(int(wells))
    else:
        wells = list(wells)
        if not wells or any(not isinstance(w, str) or not w for w in wells):
            raise ValueError(f"wells: expected a well count or non-empty well names, got {wells!r}")
        if len(set(wells)) != len(wells):
            raise ValueError("wells: duplicate well names")
    if not isinstance(sites_per_well, (int, np.integer)) or sites_per_well < 1:
        raise ValueError(f"sites_per_well: expected a positive integer, got {sites_per_well!r}")
    if not isinstance(size, (int, np.integer)) or not 32 <= size <= _MAX_FIELD:
        raise ValueError(f"size: expected an integer field side in 32..{_MAX_FIELD} px, got {size!r}")
    lo, hi = cells_per_site
    if not (1 <= int(lo) <= int(hi)):
        raise ValueError(f"cells_per_site: expected (low, high) with 1 <= low <= high, got {cells_per_site!r}")
    unknown = [c for c in channels if c not in _CH_PARAM]
    if unknown or not channels or len(set(channels)) != len(channels):
        raise ValueError(f"channels: expected distinct names from {CHANNELS}, got {tuple(channels)!r}")
    if compression not in ("deflate", "none"):
        raise ValueError(f"compression: expected 'deflate' or 'none', got {compression!r}")
    if not 3.0 <= cell_radius <= size / 4:
        raise ValueError(f"cell_radius: expected 3 .. size/4 = {size / 4:g} px, got {cell_radius!r}")
    if plates_per_batch < 1:
        raise ValueError(f"plates_per_batch: expected a positive integer, got {plates_per_batch!r}")
    return wells, (int(lo), int(hi))


def _bad_wells(rng: np.random.Generator, well_treat: dict, count: int, where: str) -> dict[str, str]:
    """``count`` wells of a plate -> ``empty`` / ``out_of_focus`` (alternating), chosen among wells whose treatment
    keeps at least two good wells on the plate."""
    if count < 0:
        raise ValueError(f"bad_wells: expected a count >= 0, got {count!r}")
    left = {}
    for t in well_treat.values():
        left[t.name] = left.get(t.name, 0) + 1
    out: dict[str, str] = {}
    for well in rng.permutation(sorted(well_treat)):
        if len(out) == count:
            break
        t = well_treat[str(well)]
        if left[t.name] > 2:
            left[t.name] -= 1
            out[str(well)] = ("empty", "out_of_focus")[len(out) % 2]
    if len(out) < count:
        raise ValueError(f"{where}: bad_wells = {count} leaves a treatment with fewer than two good wells; use more "
                         "wells or fewer bad ones")
    return out


def synth_plate(out_dir, plates: int = 1, wells: Sequence[str] | int = 24, sites_per_well: int = 2,
                size: int = 256, cells_per_site: tuple[int, int] = (20, 40),
                channels: Sequence[str] = CHANNELS, treatments: Sequence[Sequence[str]] = DEFAULT_TREATMENTS,
                seed: int = 0, compression: str = "deflate", cell_radius: float = 12.0,
                plates_per_batch: int = 2, bad_wells: int = 0, control_wells: int | None = None,
                progress: bool = True) -> dict[str, Path]:
    """Write a synthetic plate set under ``out_dir``; returns ``{"index", "nuclei", "images"}`` paths.

    Wells get treatments round-robin over a per-plate shuffled well order (so every treatment has
    ``len(wells) // len(treatments)`` or one more wells per plate, at plate positions that differ between
    plates); ``control_wells`` instead gives that many wells of each plate to the control (``DMSO``) and the others
    round-robin to the other treatments, as real plates hold many more control wells. Cells per site are drawn uniformly in ``cells_per_site`` (inclusive). Plates are named
    ``SYNTH-P01`` ..., batches ``SYNTH-B01`` ... ``bad_wells`` wells per plate are empty or out of focus (module
    docstring). Existing files of the same names are overwritten; the index and
    the nuclei table are written last (a crash leaves no index).
    """
    import tifffile
    from tqdm.auto import tqdm

    channels = tuple(channels)
    wells, (lo, hi) = _check_args(plates, wells, sites_per_well, size, cells_per_site, channels, compression,
                                  cell_radius, plates_per_batch)
    treats = _treatments(treatments, seed)
    out = Path(out_dir)
    img_root = out / "images"
    comp = "zlib" if compression == "deflate" else None
    base = np.array([_BASE[p] for p in PARAMS])
    ch_idx = np.array([list(CHANNELS).index(c) for c in channels])
    rows, nuclei = [], []
    total = plates * len(wells) * sites_per_well
    with tqdm(total=total, desc="synth sites", unit="site", disable=not progress) as bar:
        for p in range(plates):
            plate = f"SYNTH-P{p + 1:02d}"
            batch_i = p // plates_per_batch
            batch = f"SYNTH-B{batch_i + 1:02d}"
            pr = _rng(seed, 4, p)
            plate_scale = np.exp(pr.normal(0.0, 0.12, len(CHANNELS)))[ch_idx]
            plate_offset = pr.uniform(150.0, 450.0, len(CHANNELS))[ch_idx]
            illum = _illumination(seed, batch_i, size, len(CHANNELS))[ch_idx]
            order = pr.permutation(len(wells))
            if control_wells is None:
                well_treat = {wells[w]: treats[i % len(treats)] for i, w in enumerate(order)}
            else:
                ctrl = [t for t in treats if t.control]
                rest = [t for t in treats if not t.control]
                if not ctrl or not rest or not 1 <= control_wells <= len(wells) - len(rest):
                    raise ValueError(f"control_wells = {control_wells}: needs a DMSO treatment, another treatment and "
                                     f"1 .. {len(wells) - len(rest)} wells for the {len(wells)}-well plates")
                well_treat = {wells[w]: (ctrl[0] if i < control_wells else rest[(i - control_wells) % len(rest)])
                              for i, w in enumerate(order)}
            bad = _bad_wells(_rng(seed, 7, p), well_treat, bad_wells, f"plate {plate}") if bad_wells else {}
            (img_root / plate).mkdir(parents=True, exist_ok=True)
            for w_i, well in enumerate(wells):
                tr = well_treat[well]
                wr = _rng(seed, 5, p, w_i)
                # replicate variation: a small per-well change on top of the treatment effect
                params = dict(zip(PARAMS, base * np.exp(tr.effect + wr.normal(0.0, 0.03, len(PARAMS)))))
                for s in range(1, sites_per_well + 1):
                    sr = _rng(seed, 6, p, w_i, s)
                    where = f"plate {plate} well {well} site {s}"
                    n = int(sr.integers(lo, hi + 1)) if bad.get(well) != "empty" else 0
                    clean, centres = render_site(params, n, size, cell_radius, channels, sr, where)
                    if bad.get(well) == "out_of_focus":
                        clean = ndimage.gaussian_filter(clean, (0, 3.0, 3.0))
                    row = {"Metadata_Plate": plate, "Metadata_Batch": batch, "Metadata_Well": well,
                           "Metadata_Site": s}
                    for c_i, ch in enumerate(channels):
                        sig = (clean[c_i] + 250.0) * illum[c_i] * plate_scale[c_i] + plate_offset[c_i]
                        gain = 2.0
                        img = sr.poisson(np.clip(sig, 0, None) / gain) * gain + sr.normal(0.0, 6.0, sig.shape)
                        img = np.clip(np.rint(img), 0, 65535).astype(np.uint16)
                        rel = Path("images") / plate / f"{plate}_{well}_s{s}_{ch}.tif"
                        tifffile.imwrite(out / rel, img, compression=comp, photometric="minisblack",
                                         metadata=None, rowsperstrip=64)
                        row[f"FileName_{ch}"] = rel.as_posix()
                    row.update(Metadata_Treatment=tr.name, Metadata_MOA=tr.moa, Metadata_Control=tr.control)
                    if bad_wells:
                        row["Metadata_WellQC"] = bad.get(well, "ok")
                    rows.append(row)
                    for j, (x, y) in enumerate(centres, start=1):
                        nuclei.append((plate, well, s, j, round(float(x), 3), round(float(y), 3)))
                    bar.update(1)
    index = pd.DataFrame(rows)
    loc = pd.DataFrame(nuclei, columns=["Metadata_Plate", "Metadata_Well", "Metadata_Site", "ObjectNumber",
                                        "Nuclei_Location_Center_X", "Nuclei_Location_Center_Y"])
    paths = {"index": out / "index.csv", "nuclei": out / "nuclei.csv", "images": img_root}
    for key, df in (("nuclei", loc), ("index", index)):
        tmp = paths[key].with_name("." + paths[key].name + ".tmp")
        df.to_csv(tmp, index=False)
        tmp.replace(paths[key])
    return paths
