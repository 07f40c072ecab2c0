"""Where similarity blocks are computed and ranked: the Rust core, or PyTorch (CPU or CUDA), in a chosen precision.

``device``:

- ``"cpu"`` (default): the existing CPU path. With ``precision="fp32"`` the blocks come from the Rust core
  (``phenovec._core.Prepared``: rows prepared once, then blocks against all rows or given column rows, exact and
  bit-identical to ``_core.similarity_block``); with a reduced precision from a PyTorch GEMM on the
  CPU (see :mod:`phenovec.evaluate.precision`). Ranking is the Numba kernel of :mod:`evaluate_many`.
- ``"cuda"`` / ``"cuda:K"``: PyTorch on that GPU, blocks *and* ranking on the device. Only the prepared
  rows (N x D) and one block of queries (``device_block_bytes`` of block-sized temporaries) live there; the
  N x N matrix never exists. Per query only the counts of negatives above each positive come back to the host.
- ``"auto"``: ``"cuda"`` when ``torch.cuda.is_available()`` at call time, else ``"cpu"``.
- ``"torch-cpu"``: the CUDA code path run on PyTorch's CPU device (how the GPU path is tested without a GPU).

``engine`` (CPU, fp32): ``"auto"`` / ``"rust"`` = the Rust core's blocks, bit-identical to ``average_precision``;
``"torch"`` = rows prepared once here and PyTorch's float32 GEMM (oneDNN sgemm; about the CPU time of the Rust core's
GEMM since that runs on the ``gemm`` crate: 7.77 vs 7.79 CPU-s at 20k x 1,280, where ``matrixmultiply`` took 16.8), the
same IEEE float32 arithmetic in another summation order (AP equal to 1e-12 on
float64 input; on float32 input near-ties may resolve differently, as between copairs and phenovec).

The torch path prepares the rows as the Rust core does (cosine: unit rows; pearson: centred unit rows; spearman:
average ranks centred and doubled, ``2 r - (D + 1)``, integers, with each row's inverse norm; euclidean: squared
norms kept, ``-sqrt(max(0, |a|^2 + |b|^2 - 2 a.b))``), with the norms accumulated in float64 and the rows stored in
float32 (or float64 for float64 input at ``fp32``). Spearman's dot products of integer rows are exact in any
summation order (float64: up to ~295,000 features; float32: up to 369), and both paths scale them by
``inv_i * inv_j`` in that order: the same bits on every CPU and GPU, so pairs tied in real arithmetic stay tied.
Its ranking computes the same keys as the Numba kernel and the same integer counts, and sums AP on the host
in the same order, so given equal similarities it gives bit-identical AP (tested); its similarities differ
from the Rust GEMM's by float rounding only (a different summation order).
"""
from __future__ import annotations

import numba
import numpy as np

from phenovec import _core
from phenovec.evaluate.precision import check_precision, check_precision_name, matmul_mode, round_to

DEVICES = ("auto", "cpu", "cuda", "torch-cpu")
ENGINES = ("auto", "rust", "torch")
DEFAULT_DEVICE_BLOCK_BYTES = 2 * 2**30
PREPARE_ROWS = 1 << 15  # rows prepared at a time
BYTES_PER_BLOCK_ELEMENT = 48  # similarity, key, lo, bins, masks of one block element on the torch path


def resolve_device(device: str) -> str:
    """"cpu", "torch-cpu" or a CUDA device string; "auto" looks for CUDA now (not at import)."""
    if not isinstance(device, str) or not (device in DEVICES or device.startswith("cuda:")):
        raise ValueError(f"device must be one of {DEVICES} or 'cuda:K', got {device!r}")
    if device in ("cpu", "torch-cpu"):
        return device
    try:
        import torch
    except ImportError:
        if device == "auto":
            return "cpu"
        raise ValueError(f"device={device!r} needs PyTorch, which is not installed") from None
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: PyTorch sees no CUDA device (torch.cuda.is_available() is False); "
                         "use device='cpu' or 'auto'")
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def prepare_rows(x: np.ndarray, metric: str, dtype) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """The Rust core's preparation in numpy: (rows, squared norms for euclidean or None, inverse norms for
    spearman or None), in ``dtype``.

    ``x`` must already have passed ``_core.check_features`` (finite; non-zero norm / variance).
    """
    if metric == "spearman":
        # the core's own preparation (2 r - (D + 1) and the inverse norms), ranked in the input's precision; the
        # integers are exact in any float type, and a float64 inverse norm rounds to float32 as the core's does
        z, inv = _core.spearman_rows(np.ascontiguousarray(x))
        return z.astype(dtype, copy=False), None, inv.astype(dtype, copy=False)
    z = np.array(x, dtype=dtype, copy=True, order="C")
    if metric == "euclidean":
        return z, np.einsum("ij,ij->i", z, z), None
    for s in range(0, len(z), PREPARE_ROWS):  # in row chunks: no N x D float64 copy
        c = z[s : s + PREPARE_ROWS]
        if metric == "pearson":
            c -= c.mean(axis=1, dtype=np.float64).astype(dtype)[:, None]
        c64 = c.astype(np.float64)
        c *= (1.0 / np.sqrt(np.einsum("ij,ij->i", c64, c64))).astype(dtype)[:, None]
    return z, None, None


class Similarities:
    """Similarity blocks of one feature matrix: ``block(q, cols)`` = similarities of rows ``q`` to rows ``cols``.

    ``cols=None`` means every row. ``torch_ranking`` says whether blocks are torch tensors on ``device`` to be
    ranked there (``rank_block_torch``) or numpy arrays for the Numba kernel.
    """

    def __init__(self, x: np.ndarray, metric: str, precision: str = "fp32", device: str = "cpu",
                 emulate: bool = False, engine: str = "auto"):
        check_precision_name(precision)
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.device = resolve_device(device)
        self.rust = self.device == "cpu" and precision == "fp32" and not emulate and engine != "torch"
        if engine == "rust" and not self.rust:  # an argument conflict, whatever this machine can run
            raise ValueError(f"engine='rust' computes fp32 on the CPU only (got precision={precision!r}, "
                             f"device={device!r}, emulate={emulate})")
        check_precision(precision, self.device, emulate)
        self.metric, self.precision, self.emulate = metric, precision, emulate
        self.x = x
        self.n = len(x)
        self.torch_ranking = self.device != "cpu"
        if self.rust:
            self.itemsize = x.itemsize
            self.prepared = _core.Prepared(x, metric)  # rows prepared once for every block
            return
        import torch

        self.torch = torch
        tdev = "cpu" if self.device == "torch-cpu" else self.device
        dtype = x.dtype if precision == "fp32" else np.float32
        z, sq, inv = prepare_rows(x, metric, dtype)
        if emulate or precision in ("fp16", "tf32") and not self.device.startswith("cuda"):
            z = round_to(z, precision) if precision != "fp32" else z
        self.itemsize = 4 if precision != "fp32" else x.itemsize
        self.z = torch.from_numpy(z).to(tdev)
        self.low = None
        if self.device.startswith("cuda") and precision in ("bf16", "fp16") and not emulate:
            self.low = self.z.to(torch.bfloat16 if precision == "bf16" else torch.float16)
            self.z = None  # only the rounded rows stay on the device (2.6 GB instead of 7.7 GB at 1M x 1280)
        self.sq = None if sq is None else torch.from_numpy(sq).to(tdev)
        self.inv = None if inv is None else torch.from_numpy(inv).to(tdev)
        self.tdev = tdev

    def _mm(self, qi, ci):
        torch = self.torch
        if self.low is not None:
            a, b = self.low[qi], (self.low if ci is None else self.low[ci])
            try:
                return torch.mm(a, b.T, out_dtype=torch.float32)
            except (NotImplementedError, RuntimeError, TypeError):
                # no bf16/fp16 GEMM with float32 output here: the same rounded inputs through a float32 GEMM
                with matmul_mode("fp32", self.device):
                    return a.float() @ b.float().T
        a, b = self.z[qi], (self.z if ci is None else self.z[ci])
        with matmul_mode(self.precision, self.device, self.emulate):
            return a @ b.T

    def block(self, q: np.ndarray, cols: np.ndarray | None = None):
        if self.rust:
            # a similarity's value does not depend on the block's rows or columns (the core's GEMM is shape-independent)
            return self.prepared.block(np.asarray(q, dtype=np.int64),
                                       None if cols is None else np.asarray(cols, dtype=np.int64))
        torch = self.torch
        qi = torch.from_numpy(np.asarray(q, dtype=np.int64)).to(self.tdev)
        ci = None if cols is None else torch.from_numpy(np.asarray(cols, dtype=np.int64)).to(self.tdev)
        s = self._mm(qi, ci)
        if self.inv is not None:  # spearman: the exact integer dot times (inv_i * inv_j), as the core
            s.mul_(torch.outer(self.inv[qi], self.inv if ci is None else self.inv[ci]).to(s.dtype))
        if self.sq is not None:
            sq_c = self.sq if ci is None else self.sq[ci]
            d2 = self.sq[qi][:, None].to(s.dtype) + sq_c[None, :].to(s.dtype) - 2 * s
            s = -torch.sqrt(torch.clamp(d2, min=0))
        return s if self.torch_ranking else s.numpy()

    def block_rows(self, n_cols: int, block_bytes: int, device_block_bytes: int) -> int:
        """Queries per block: ``block_bytes`` of host similarities, or ``device_block_bytes`` of torch temporaries."""
        if self.torch_ranking:
            return int(max(1, min(self.n, device_block_bytes // (max(1, n_cols) * BYTES_PER_BLOCK_ELEMENT))))
        return int(max(1, min(self.n, block_bytes // (max(1, n_cols) * self.itemsize))))


class TorchRules:
    """One rule set's codes on the torch device (see ``evaluate_many._Rule``)."""

    def __init__(self, rule, tdev):
        import torch

        def t(a):
            return torch.from_numpy(np.ascontiguousarray(a)).to(tdev)

        self.active, self.ps, self.pd_, self.ns, self.nd = t(rule.active), t(rule.ps), t(rule.pd_), t(rule.ns), t(rule.nd)


def _match_t(qi, ci, same, diff):
    out = None
    for c in range(same.shape[0]):
        e = same[c][qi][:, None] == same[c][ci][None, :]
        out = e if out is None else out & e
    for c in range(diff.shape[0]):
        e = diff[c][qi][:, None] != diff[c][ci][None, :]
        out = e if out is None else out & e
    return out


def keys_torch(s, f32_keys: bool, euclidean: bool):
    """The Numba kernel's ranking keys (larger ranks first): copairs' float32 ``1 - s`` negated, or ``s``."""
    import torch

    if not f32_keys:
        return s
    if euclidean:
        inv = (1.0 / (1.0 - s.to(torch.float64))).to(torch.float32)
        return -(1.0 - inv)
    return -(1.0 - s.to(torch.float32))


def rank_block_torch(s, q: np.ndarray, want: np.ndarray, cols: np.ndarray | None, rules: TorchRules,
                     f32_keys: bool, euclidean: bool) -> np.ndarray:
    """(AP, Mann-Whitney U) of the wanted queries of one block ``s`` (a torch tensor, rows ``q``, columns ``cols`` or all).

    For each query: its positive keys sorted ascending (padded with +inf), and for every negative the number of
    positives at or above it (``searchsorted``); the histogram of those numbers is all AP needs. The histogram
    comes to the host and AP is summed there by ``ap_from_counts`` in the Numba kernel's order.
    """
    import torch

    tdev = s.device
    qi = torch.from_numpy(np.asarray(q, dtype=np.int64)).to(tdev)
    ci = torch.arange(s.shape[1], device=tdev) if cols is None else torch.from_numpy(np.asarray(cols, np.int64)).to(tdev)
    valid = (rules.active[ci][None, :] & (qi[:, None] != ci[None, :])) & torch.from_numpy(np.asarray(want)).to(tdev)[:, None]
    pos = _match_t(qi, ci, rules.ps, rules.pd_)
    pos = valid if pos is None else pos & valid
    neg = _match_t(qi, ci, rules.ns, rules.nd)
    neg = valid if neg is None else neg & valid
    key = keys_torch(s, f32_keys, euclidean)
    mp = pos.sum(dim=1)
    m_max = int(mp.max()) if len(q) else 0
    if m_max == 0:
        return np.full(len(q), np.nan), np.full(len(q), np.nan)
    inf = torch.tensor(float("inf"), dtype=key.dtype, device=tdev)
    asc = torch.topk(torch.where(pos, key, inf), m_max, dim=1, largest=False, sorted=True).values.contiguous()
    lo = torch.searchsorted(asc, key.contiguous(), side="left")  # first positive >= the negative's key
    del asc
    bins = torch.clamp(mp[:, None] - lo, min=0)
    del lo
    cnt = torch.zeros((len(q), m_max + 1), dtype=torch.int64, device=tdev)
    cnt.scatter_add_(1, bins, neg.to(torch.int64))
    return ap_from_counts(cnt.cpu().numpy(), mp.cpu().numpy().astype(np.int64))


@numba.njit(cache=True)
def ap_and_u(cnt: np.ndarray, mp: int, mn: int, cumulative: bool = False) -> tuple[float, float]:
    """AP and Mann-Whitney U of one query from ``cnt[k]`` = its negatives with exactly k positives at or above them
    (or, ``cumulative``, ``cnt[k]`` = its negatives ranked above its k-th positive: the running sum of the former).

    AP sums precision at each positive in rank order; U counts (positive, negative) pairs with the positive first
    (ties: positive first, as AP ranks them), so ROC-AUC = U / (mp * mn).
    """
    total = 0.0
    above = 0
    u = 0
    for k in range(mp):
        above = cnt[k] if cumulative else above + cnt[k]
        total += np.float64(k + 1) / np.float64(k + above + 1)
        u += mn - above
    return total / mp, np.float64(u)


@numba.njit(cache=True)
def ap_from_counts(cnt: np.ndarray, mp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP and U per row from ``cnt[t, k]`` (``ap_and_u``); NaN where a row has no positive."""
    ap = np.empty(cnt.shape[0])
    u = np.empty(cnt.shape[0])
    for t in range(cnt.shape[0]):
        if mp[t] == 0:
            ap[t] = np.nan
            u[t] = np.nan
            continue
        ap[t], u[t] = ap_and_u(cnt[t], mp[t], cnt[t].sum())
    return ap, u
