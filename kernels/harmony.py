"""Numba CPU kernels of Harmony (Korsunsky et al. 2019) with harmonypy 2.1.0's arithmetic.

Loaded by path through ``phenovec.process.kernel_loader.load_kernel("harmony")`` and driven by
``phenovec.batch.harmony`` (which holds the algorithm's steps and their order; this file holds the loops).

harmonypy 2.1.0 (``src/harmony.cpp``) computes in float32 with a fixed summation order that does not depend on
its thread count. These kernels keep that order where it decides the result bits:

- the random stream: ``std::mt19937`` seeded with ``random_state`` (:func:`mt_seed`, :func:`mt_next`),
  ``std::uniform_real_distribution<float>`` (one 32-bit word / 2**32), and libstdc++'s ``std::shuffle`` (GCC 14,
  the compiler of the 2.1.0 wheel: two swap positions per word while ``N * N < 2**32``, Lemire's bounded integers);
- the k-means initialisation (a random cell per cluster, then per cluster the cell minimising
  ``-log(u) / |2 (1 - y.x)|``, then 10 Lloyd steps with Armadillo's distance order and tie-breaking);
- the soft-assignment update (blocks of ``N * block_size`` shuffled cells, one after the other; O and E frozen
  within a block; each block's cells grouped by batch in runs of at most 1024 cells, summed in float32 run by run;
  the softmax, its sums, the objective terms accumulated in double per cell, then per run in cell order). 16 cells
  go through it at once, one per SIMD lane (:func:`_lane_softmax`), so every step is a vector instruction while
  each cell keeps its own order (their rows in and out by 8 x 8 transposes, :func:`_transpose8`); ``exp`` is
  :func:`expf`, glibc's algorithm written to vectorise (bit-identical to libm's ``expf`` on every float32 in
  [-110, 0]). Within a block the cells are independent, so the lanes run on
  the threads: run by run (:func:`_reassign_runs_parallel`) or, for short runs, packed whatever their batch
  (:func:`_reassign_packed_parallel`);
- the correction ``Z_corr = Z_orig - sum_k R_k M_k`` summed in float32 over clusters in order.

The other loops run in parallel (Numba ``prange``). The products that only feed float64 sums (the ridge system's
weighted sums) are BLAS ``dgemm`` calls (:func:`combination_sums`; see ``phenovec.batch.harmony``), and each
cluster's ridge system is solved as harmonypy solves it, in double (:func:`ridge_systems`). Every parallel
loop writes per-task results that are combined in task order, so the results do not depend on the number of
threads.
"""
from __future__ import annotations

import math

import numpy as np
from numba import config, prange, types
from numba import njit as _numba_njit
from numba.core.errors import TypingError
from numba.extending import intrinsic


def njit(*args, **kwargs):
    """``numba.njit`` with LLVM's SLP vectoriser on while these kernels compile (Numba leaves it off by default,
    ``NUMBA_SLP_VECTORIZE=0``): the lane kernels' 16-lane accumulations (max, sums) then become vector instructions
    instead of 16 scalar ones. SLP does not reorder floating-point arithmetic, so the results are the same bits;
    measured at 100k cells: the assignment pass 47 -> 42 ms. Numba reads the setting each time it optimises a
    function, so it is switched on only around these dispatchers' compilations (and the kernels they call)."""
    def wrap(fn):
        dispatcher = _numba_njit(*args, **kwargs)(fn)
        compile_ = dispatcher.compile

        def compile_with_slp(sig):
            before = config.SLP_VECTORIZE
            config.SLP_VECTORIZE = 1
            try:
                return compile_(sig)
            finally:
                config.SLP_VECTORIZE = before

        dispatcher.compile = compile_with_slp
        return dispatcher
    return wrap

CELLS_PER_TASK = 1024
#: rows asked for ahead of the row being read wherever cells are visited in a shuffled or grouped order
#: (:func:`_prefetch_row`; 4-32 measured alike, 0 twice as slow in the block sums). At 100k cells x 50 PCs: the
#: k-means group sums 3.9 -> 1.7 ms a step, the correction 34 -> 22 ms a call
PREFETCH_AHEAD = 16
#: float32 sums kept in one fixed-length stack accumulator (the correction's dimensions, the plain assignment's
#: clusters): a constant trip count lets LLVM unroll the loop and hold the sums in vector registers
ACC_CHUNK = 64
F0 = np.float32(0.0)
F1 = np.float32(1.0)
F2 = np.float32(2.0)
F_TINY = np.float32(1e-10)
F_2_32 = np.float32(4294967296.0)
F_BELOW_1 = np.float32(np.nextafter(np.float32(1.0), np.float32(0.0)))
F_INF = np.float32(np.inf)
MASK32 = np.uint64(0xFFFFFFFF)
_EXACT_DOUBLE_BITS = np.uint64(0x4330000000000000)  # the bits of 2**52
_TWO_52 = 4503599627370496.0

# ------------------------------------------------------------------------------------------ glibc expf


@intrinsic
def _as_u64(typingctx, x):
    """The bits of a float64 as uint64 (an LLVM bitcast: free, and vectorisable)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint64))
    return types.uint64(types.float64), codegen


@intrinsic
def _as_f64(typingctx, x):
    """The float64 whose bits are a uint64."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))
    return types.float64(types.uint64), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (``llvm.fma.f64``: one instruction on CPUs with FMA)."""
    def codegen(context, builder, signature, args):
        from llvmlite import ir

        f64 = ir.DoubleType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f64], ir.FunctionType(f64, [f64, f64, f64]))
        return builder.call(fn, args)
    return types.float64(types.float64, types.float64, types.float64), codegen


def _stack_array_intrinsic(dtype):
    @intrinsic
    def stack_array(typingctx, n):
        """A 1-D array of ``n`` (uninitialised) items on the calling function's stack: LLVM then knows it
        overlaps no other array, which lets it vectorise loops that mix it with others. Call it outside loops."""
        aryty = types.Array(dtype, 1, "C")

        def codegen(context, builder, signature, args):
            from numba.core import cgutils

            count = args[0]
            data = builder.alloca(context.get_data_type(dtype), size=count)
            ary = context.make_array(aryty)(context, builder)
            itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(dtype)))
            context.populate_array(ary, data=data, shape=cgutils.pack_array(builder, [count]),
                                   strides=cgutils.pack_array(builder, [itemsize]), itemsize=itemsize, meminfo=None)
            return ary._getvalue()
        return aryty(types.intp), codegen
    return stack_array


def _transpose8_intrinsic(accumulate):
    @intrinsic
    def transpose8(typingctx, src, src_at, dst, dst_at):
        """Copy an 8 x 8 float32 block transposed: row i of the block is the 8 items of ``src`` from ``src_at[i]``,
        and column i goes to the 8 items of ``dst`` from ``dst_at[i]`` (``accumulate``: ``dst + column`` instead;
        IEEE addition commutes, so that is ``column + dst`` bit for bit). ``src`` and ``dst``: 1-D C-contiguous
        float32; the offsets: 8 int64 each, every block row within its array (not checked: the callers' loops keep
        them in). Eight vector loads, 24 shuffles, eight vector stores: the lane kernels' change between cells' rows
        and lanes (16 cells side by side, cluster by cluster) without one scalar load and insert per item, which
        took half of the lane kernel's time (Numba's ``a[rows[ln] + g]`` over the lanes)."""
        for name, ary, dtype in (("src", src, types.float32), ("src_at", src_at, types.int64),
                                 ("dst", dst, types.float32), ("dst_at", dst_at, types.int64)):
            if not (isinstance(ary, types.Array) and ary.ndim == 1 and ary.layout == "C" and ary.dtype == dtype):
                raise TypingError(f"_transpose8: {name} must be a 1-D C-contiguous {dtype} array, got {ary}")

        def codegen(context, builder, signature, args):
            from llvmlite import ir

            f32 = ir.FloatType()
            v8 = ir.VectorType(f32, 8)
            i32 = ir.IntType(32)
            i64 = ir.IntType(64)
            s, s_at, d, d_at = (context.make_array(t)(context, builder, a) for t, a in zip(signature.args, args))

            def row(ary, at, i):
                start = builder.load(builder.gep(at.data, [ir.Constant(i64, i)]))
                return builder.bitcast(builder.gep(ary.data, [start]), v8.as_pointer())

            def shuffle(a, b, mask):
                mask = ir.Constant(ir.VectorType(i32, 8), [ir.Constant(i32, m) for m in mask])
                return builder.shuffle_vector(a, b, mask)

            v = [builder.load(row(s, s_at, i), align=4, typ=v8) for i in range(8)]
            lo, hi = [0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15]
            t = []
            for i in range(0, 8, 2):
                t += [shuffle(v[i], v[i + 1], lo), shuffle(v[i], v[i + 1], hi)]
            # t: (v0v1 lo, v0v1 hi, v2v3 lo, v2v3 hi, v4v5 lo, ...)
            pl, ph = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
            u = []
            for q in (0, 4):
                u += [shuffle(t[q], t[q + 2], pl), shuffle(t[q], t[q + 2], ph),
                      shuffle(t[q + 1], t[q + 3], pl), shuffle(t[q + 1], t[q + 3], ph)]
            # u[0..3]: columns 0-3 (rows 0-3) with columns 4-7 in the upper half; u[4..7]: the same for rows 4-7
            first, second = [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]
            cols = [shuffle(u[c], u[c + 4], first) for c in range(4)] + [shuffle(u[c], u[c + 4], second)
                                                                          for c in range(4)]
            for j in range(8):
                p = row(d, d_at, j)
                value = cols[j]
                if accumulate:
                    value = builder.fadd(builder.load(p, align=4, typ=v8), value)
                builder.store(value, p, align=4)
            return context.get_dummy_value()
        return types.void(src, src_at, dst, dst_at), codegen
    return transpose8


_transpose8 = _transpose8_intrinsic(False)
_transpose8_add = _transpose8_intrinsic(True)


_stack_f32 = _stack_array_intrinsic(types.float32)
_stack_f64 = _stack_array_intrinsic(types.float64)
_stack_i64 = _stack_array_intrinsic(types.int64)


@intrinsic
def _prefetch_row(typingctx, arr, row):
    """Ask the CPU to start loading row ``row`` of the C-contiguous 2-D array ``arr`` into its caches
    (``llvm.prefetch``, one per 64 bytes; no effect on any value). The Harmony passes visit cells in a random order,
    so their rows arrive from memory one at a time unless they are asked for ahead."""
    def codegen(context, builder, signature, args):
        from llvmlite import ir
        from numba.core import cgutils

        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        intp = context.get_value_type(types.intp)
        zero = context.get_constant(types.intp, 0)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], zero])
        i8p = ir.IntType(8).as_pointer()
        # typed pointers (older llvmlite, and llvmlite 0.50 by default) mangle the name with the pointee type
        name = "llvm.prefetch.p0" if getattr(i8p, "is_opaque", False) else "llvm.prefetch.p0i8"
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), name)
        base = builder.bitcast(ptr, i8p)
        itemsize = context.get_abi_sizeof(context.get_data_type(aryty.dtype))
        nbytes = builder.mul(builder.extract_value(ary.shape, 1), context.get_constant(types.intp, itemsize))
        read, keep, data = ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)
        line = context.get_constant(types.intp, 64)
        with cgutils.for_range_slice(builder, zero, nbytes, line, intp=intp) as (off, _):
            builder.call(fn, [builder.gep(base, [off]), read, keep, data])
        last = builder.sub(nbytes, context.get_constant(types.intp, 1))
        builder.call(fn, [builder.gep(base, [last]), read, keep, data])
        return context.get_dummy_value()
    return types.void(arr, row), codegen


def _exp2_table(bits: int = 5) -> np.ndarray:
    """``bits(2^(i/32)) - (i << 47)``: 2^(i/32) rounded to the nearest double (computed with 60 decimal digits),
    with the index taken out of its exponent field (the table of glibc's ``expf``)."""
    import decimal

    ctx = decimal.Context(prec=60)
    n = 1 << bits
    exact = [float(ctx.power(decimal.Decimal(2), ctx.divide(decimal.Decimal(i), decimal.Decimal(n))))
             for i in range(n)]
    return (np.array(exact).view(np.uint64) - (np.arange(n, dtype=np.uint64) << np.uint64(52 - bits))).astype(np.uint64)


_EXPF_TAB = _exp2_table()
_EXPF_INV_LN2_N = float.fromhex("0x1.71547652b82fep+0") * 32
_EXPF_SHIFT = float.fromhex("0x1.8p+52")
_EXPF_C0 = float.fromhex("0x1.c6af84b912394p-5") / 32 / 32 / 32
_EXPF_C1 = float.fromhex("0x1.ebfce50fac4f3p-3") / 32 / 32
_EXPF_C2 = float.fromhex("0x1.62e42ff0c52d6p-1") / 32
_EXPF_ZERO_BELOW = np.float32(-float.fromhex("0x1.9fe368p6"))  # log(2**-150): below it expf is 0


@njit(cache=True, inline="always")
def expf(x):
    """glibc's ``expf`` (Szabolcs Nagy's algorithm: 2^(k/32) from a table times a cubic in double, rounded to
    float32) for x <= 0, written so that loops over it vectorise. Bit for bit the libm ``expf`` Numba's
    ``math.exp`` calls on float32 (and harmonypy's C++ uses): checked on every float32 in [-104, 0] (tests check
    a sample). Inputs below ``log(2**-150)`` give 0; positive inputs are not used (arguments are ``x - max``)."""
    xd = np.float64(x)
    z = _EXPF_INV_LN2_N * xd
    kd = z + _EXPF_SHIFT
    ki = _as_u64(kd)
    kd -= _EXPF_SHIFT
    r = _fma(_EXPF_INV_LN2_N, xd, -kd)  # glibc's x86-64 FMA build contracts z - kd into one rounding
    t = _EXPF_TAB[ki & np.uint64(31)] + (ki << np.uint64(47))
    s = _as_f64(t)
    p = _EXPF_C0 * r + _EXPF_C1
    r2 = r * r
    y = _EXPF_C2 * r + 1.0
    y = p * r2 + y
    y = y * s
    return np.float32(y) if x >= _EXPF_ZERO_BELOW else F0


# ------------------------------------------------------------------------------------------ std::mt19937


@njit(cache=True)
def mt_seed(seed):
    """State of ``std::mt19937(seed)``: 624 words and the position (index 624), as uint64."""
    mt = np.empty(625, np.uint64)
    mt[0] = np.uint64(seed) & MASK32
    for i in range(1, 624):
        prev = mt[i - 1]
        mt[i] = (np.uint64(1812433253) * (prev ^ (prev >> np.uint64(30))) + np.uint64(i)) & MASK32
    mt[624] = 624
    return mt


@njit(cache=True)
def _twist(mt):
    """The generator's next 624 words (the standard three-part loop: no modulo, the odd-bit branch as a mask)."""
    upper = np.uint64(0x80000000)
    lower = np.uint64(0x7FFFFFFF)
    matrix = np.uint64(0x9908B0DF)
    one = np.uint64(1)
    for kk in range(227):
        y = (mt[kk] & upper) | (mt[kk + 1] & lower)
        mt[kk] = mt[kk + 397] ^ (y >> one) ^ ((np.uint64(0) - (y & one)) & matrix)
    for kk in range(227, 623):
        y = (mt[kk] & upper) | (mt[kk + 1] & lower)
        mt[kk] = mt[kk - 227] ^ (y >> one) ^ ((np.uint64(0) - (y & one)) & matrix)
    y = (mt[623] & upper) | (mt[0] & lower)
    mt[623] = mt[396] ^ (y >> one) ^ ((np.uint64(0) - (y & one)) & matrix)
    mt[624] = 0


@njit(cache=True, inline="always")
def _temper(y):
    y ^= y >> np.uint64(11)
    y ^= (y << np.uint64(7)) & np.uint64(0x9D2C5680)
    y ^= (y << np.uint64(15)) & np.uint64(0xEFC60000)
    y ^= y >> np.uint64(18)
    return y & MASK32


@njit(cache=True)
def mt_next(mt):
    """The next 32-bit output of the generator (tempered), as uint64."""
    if mt[624] >= 624:
        _twist(mt)
    i = mt[624]
    mt[624] = i + 1
    return _temper(mt[i])


@njit(cache=True, inline="always")
def _uniform01(word):
    """libstdc++'s ``generate_canonical<float>`` of one 32-bit word: ``float(word) / 2**32``, below 1. The word is
    made a double exactly by the 2**52 trick (its bits under a 2**52 exponent, minus 2**52), which vectorises on AVX2;
    Numba's uint64 -> float32 conversion does not (no such instruction before AVX-512). Rounding that exact double to
    float32 is the one rounding of the direct conversion, so the same bits."""
    u = np.float32(_as_f64(_EXACT_DOUBLE_BITS | word) - _TWO_52) / F_2_32
    return F_BELOW_1 if u >= F1 else u


@njit(cache=True)
def mt_uniform01(mt, out):
    """``std::uniform_real_distribution<float>(0, 1)`` draws (libstdc++: one word / 2**32, below 1); the words of
    each twist tempered and converted in one vectorisable loop."""
    n = out.shape[0]
    j = 0
    while j < n:
        if mt[624] >= 624:
            _twist(mt)
        i = mt[624]
        take = min(n - j, 624 - i)
        for t in range(take):
            out[j + t] = _uniform01(_temper(mt[i + t]))
        mt[624] = i + take
        j += take


@njit(cache=True)
def _bounded(mt, urange):
    """libstdc++ ``uniform_int_distribution`` on [0, urange) from 32-bit words (Lemire's method, ``_S_nd``)."""
    r = np.uint64(urange)
    product = mt_next(mt) * r
    low = product & MASK32
    if low < r:
        threshold = ((np.uint64(4294967296) - r) & MASK32) % r
        while low < threshold:
            product = mt_next(mt) * r
            low = product & MASK32
    return np.int64(product >> np.uint64(32))


#: swap positions drawn (and their elements asked for) ahead of the swaps in :func:`mt_shuffled_range`
SHUFFLE_AHEAD = 64


@njit(cache=True)
def mt_shuffled_range(mt, n):
    """``std::iota`` then libstdc++ 14 ``std::shuffle`` of 0..n-1 with the generator."""
    a = np.arange(n)
    if n == 0:
        return a
    if np.uint64(4294967295) // np.uint64(n) >= np.uint64(n):
        i = 1
        if n % 2 == 0:
            j = _bounded(mt, np.int64(2))
            t = a[i]
            a[i] = a[j]
            a[j] = t
            i += 1
        while i != n:
            swap_range = i + 1
            x = _bounded(mt, swap_range * (swap_range + 1))
            p1 = x // (swap_range + 1)
            p2 = x % (swap_range + 1)
            t = a[i]
            a[i] = a[p1]
            a[p1] = t
            i += 1
            t = a[i]
            a[i] = a[p2]
            a[p2] = t
            i += 1
        return a
    # the swap positions SHUFFLE_AHEAD steps at a time (the same words in the same order), each asked for before the
    # swaps: at 1M cells the array outgrows the caches and each swap waited for memory (32 -> 19 ms a shuffle)
    rows = a.reshape((n, 1))
    ahead = np.empty(SHUFFLE_AHEAD, np.int64)
    i = 1
    while i < n:
        m = min(SHUFFLE_AHEAD, n - i)
        for s in range(m):
            ahead[s] = _bounded(mt, i + s + 1)
            _prefetch_row(rows, ahead[s])
        for s in range(m):
            j = ahead[s]
            t = a[i + s]
            a[i + s] = a[j]
            a[j] = t
        i += m
    return a


# ------------------------------------------------------------------------------------------ small helpers


@njit(cache=True, inline="always")
def _term(a, b, i, n):
    return a[i] * b[i] if i < n else F0  # adding a zero product leaves a partial sum unchanged


@njit(cache=True, inline="always")
def _dot8(a, b, n):
    """float32 dot product in eight partial sums combined in a fixed order (harmonypy's ``dot``)."""
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = F0
    for i in range(0, n, 8):
        s0 += _term(a, b, i, n)
        s1 += _term(a, b, i + 1, n)
        s2 += _term(a, b, i + 2, n)
        s3 += _term(a, b, i + 3, n)
        s4 += _term(a, b, i + 4, n)
        s5 += _term(a, b, i + 5, n)
        s6 += _term(a, b, i + 6, n)
        s7 += _term(a, b, i + 7, n)
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


@njit(cache=True, inline="always")
def _accumulate(x, n):
    """Sum of n float32 as ``arma::sum``: two interleaved partial sums."""
    acc1 = F0
    acc2 = F0
    j = 1
    while j < n:
        acc1 += x[j - 1]
        acc2 += x[j]
        j += 2
    if j - 1 < n:
        acc1 += x[j - 1]
    return acc1 + acc2


@njit(cache=True, parallel=True)
def normalise_rows(x):
    """Scale each row to unit L2 norm in place (the norm summed in double, rounded to float32, as harmonypy's
    ``scale_to_unit_length`` gives; zero rows stay zero)."""
    n, d = x.shape
    for j in prange(n):
        row = x[j]
        acc = 0.0
        for a in range(d):
            acc += np.float64(row[a]) * np.float64(row[a])
        nrm = np.float32(math.sqrt(acc))
        if nrm > F0:
            for a in range(d):
                row[a] = row[a] / nrm


# ------------------------------------------------------------------------------------------ k-means init


@njit(cache=True)
def kmeans_random_cells(mt, n, k):
    """The first k draws of harmonypy's ``kmeans_init``: ``round(u * N)`` (float32 product, std::round), clipped."""
    first = np.empty(k, np.float32)
    mt_uniform01(mt, first)
    seeds = np.empty(k, np.int64)
    for i in range(k):
        v = first[i] * np.float32(n)
        r = math.floor(np.float64(v))
        if np.float64(v) - r >= 0.5:
            r += 1.0
        idx = np.int64(r)
        if idx >= n:
            idx = n - 1
        seeds[i] = idx
    return seeds


@njit(cache=True)
def mt_uniform_rows(mt, out):
    """Fill the rows of ``out`` (2-D float32) with uniform draws (:func:`mt_uniform01`), row after row."""
    for i in range(out.shape[0]):
        mt_uniform01(mt, out[i])


@njit(cache=True, parallel=True)
def kmeans_seed_cells(x, seeds, gt, u, neg_log_u, first_cluster, chosen, cells):
    """harmonypy 2.1.0 ``kmeans_init`` before its Lloyd steps, for clusters ``first_cluster ..`` (one per row of
    ``gt``): cluster i takes the cell minimising ``p = -log(u) / (|2 (1 - y_i.x)| + 1e-10)`` (u: row c of ``u``, its
    N fresh uniform draws; cells already taken excluded; the first on ties).

    Only screens with ``gt[c] = x[seeds[i]] @ x.T`` (float32 BLAS, |error| < 1e-5 on unit vectors) and
    ``neg_log_u`` (numpy's vectorised float32 ``-log(u)``, relative error < 1e-6; a margin of 1e-5 is allowed):
    every cell whose p could be the minimum is recomputed in harmonypy's order (eight-sum dot, float32 ``logf``),
    and the exact minimum among them is taken. A degenerate draw (every p equal) falls back to every cell. The
    screen's bounds run on the threads, 1024 cells per task (its minimum is the same on any count)."""
    n, d = x.shape
    lo = np.empty(n)
    delta = 1e-5
    margin = 1e-5
    n_tasks = (n + CELLS_PER_TASK - 1) // CELLS_PER_TASK
    task_hi = np.empty(n_tasks)
    for c in range(gt.shape[0]):
        i = first_cluster + c
        uc = u[c]
        ec = neg_log_u[c]
        gc = gt[c]
        y = x[seeds[i]]
        for t in prange(n_tasks):
            least = np.inf
            for j in range(t * CELLS_PER_TASK, min(n, (t + 1) * CELLS_PER_TASK)):
                e = np.float64(ec[j])
                dist = abs((1.0 - np.float64(gc[j])) * 2.0)
                low = e * (1.0 - margin) / (dist + delta + 1e-10)
                hi = e * (1.0 + margin) / (max(dist - delta, 0.0) + 1e-10)
                lo[j] = np.inf if chosen[j] else low
                least = min(least, np.inf if chosen[j] else hi)
            task_hi[t] = least
        best_hi = np.inf
        for t in range(n_tasks):
            best_hi = min(best_hi, task_hi[t])
        best = -1
        best_p = F_INF
        for j in range(n):
            if lo[j] <= best_hi:
                distance = abs((F1 - _dot8(y, x[j], d)) * F2)
                pj = (-np.float32(math.log(uc[j]))) / (distance + F_TINY)
                if pj < best_p:
                    best_p = pj
                    best = j
        if best < 0:  # every candidate infinite: harmonypy's rule over all cells
            best = 0
            while chosen[best] and best < n - 1:
                best += 1
        chosen[best] = True
        cells[i] = best


#: cells screened together by :func:`_screen_nearest`: their best, runner-up and index stay in vector registers over
#: the means (16: one 1,024-cell screen 135 -> 61 us on the Zen 3; 8: 108 us; 32 and 64 spill: 222 us)
SCREEN_TILE = 16


@njit(cache=True, inline="always")
def _screen_tile(gt, i0, w, msq, b1, b2, best):
    """The screen of :func:`_screen_nearest` for the ``w`` cells ``i0 ..`` of ``gt``, over every mean in order."""
    for ln in range(w):
        b1[ln] = np.inf
        b2[ln] = np.inf
        best[ln] = 0
    for q in range(gt.shape[0]):
        mq = np.float64(msq[q])
        for ln in range(w):
            v = mq - 2.0 * np.float64(gt[q, i0 + ln])
            old = b1[ln]
            b2[ln] = min(b2[ln], max(old, v))  # v below the best: the old best is the runner-up
            best[ln] = q if v < old else best[ln]
            b1[ln] = min(old, v)


@njit(cache=True)
def _screen_nearest(gt, j0, msq, tol, assignment, unsure):
    """From ``gt`` (K x m: column i the products ``means @ x[j0 + i]``) and the means' squared norms: cell
    ``j0 + i``'s nearest mean by ``|m|^2 - 2 x.m`` (the first on ties), and whether the runner-up is within ``tol``
    (then the exact order must decide). :data:`SCREEN_TILE` cells at a time, one per SIMD lane, their running best,
    runner-up and index on the stack (so in registers: LLVM knows they alias nothing), each mean's products updating
    them at once; a constant tile width lets LLVM unroll the lanes. Not inlined: the stack arrays are made where the
    function starts and freed when it returns, where inlined into a loop they would be made again each turn."""
    m = gt.shape[1]
    b1 = _stack_f64(SCREEN_TILE)
    b2 = _stack_f64(SCREEN_TILE)
    best = _stack_i64(SCREEN_TILE)
    for i0 in range(0, m, SCREEN_TILE):
        w = min(SCREEN_TILE, m - i0)
        if w == SCREEN_TILE:
            _screen_tile(gt, i0, SCREEN_TILE, msq, b1, b2, best)
        else:
            _screen_tile(gt, i0, w, msq, b1, b2, best)
        for ln in range(w):
            assignment[j0 + i0 + ln] = best[ln]
            unsure[j0 + i0 + ln] = (b2[ln] - b1[ln]) <= tol


@njit(cache=True, parallel=True)
def nearest_candidates(x, means, msq, tol, assignment, unsure):
    """:func:`_screen_nearest` for every cell of ``x`` (N x d float32) against ``means`` (K x d float32), 1024
    cells per task: each task's ``means @ x_task.T`` (a BLAS ``sgemm``, K x 1024: 400 KB at 100 clusters) is
    screened while it is still in the core's cache, instead of one K x N product (40 MB at 100k cells) written to
    memory and read back (100k cells, a k-means step in one sitting: 40-44 -> 28-33 ms). The screen allows for
    BLAS's rounding, so the split does not change the result."""
    n = x.shape[0]
    n_tasks = (n + CELLS_PER_TASK - 1) // CELLS_PER_TASK
    for t in prange(n_tasks):
        j0 = t * CELLS_PER_TASK
        j1 = min(n, j0 + CELLS_PER_TASK)
        _screen_nearest(np.dot(means, x[j0:j1].T), np.int64(j0), msq, tol, assignment, unsure)


@njit(cache=True, parallel=True)
def assign_nearest_exact(x, means, cells, assignment):
    """Armadillo's nearest mean (squared distance summed as harmonypy's ``kmeans_lloyd_step``: even dimensions
    in one float32 sum, odd in another; first mean on ties) for the cells ``cells``."""
    d = x.shape[1]
    k = means.shape[0]
    means_t = np.ascontiguousarray(means.T)  # d x k
    n = cells.shape[0]
    n_tasks = (n + CELLS_PER_TASK - 1) // CELLS_PER_TASK
    for t in prange(n_tasks):
        j0 = t * CELLS_PER_TASK
        j1 = min(n, j0 + CELLS_PER_TASK)
        acc1 = np.empty(k, np.float32)
        acc2 = np.empty(k, np.float32)
        for i in range(j0, j1):
            j = cells[i]
            xj = x[j]
            for g in range(k):
                acc1[g] = F0
                acc2[g] = F0
            a = 0
            b = 1
            while b < d:
                xa = xj[a]
                xb = xj[b]
                ma = means_t[a]
                mb = means_t[b]
                for g in range(k):
                    ta = xa - ma[g]
                    tb = xb - mb[g]
                    acc1[g] += ta * ta
                    acc2[g] += tb * tb
                a += 2
                b += 2
            if a < d:
                xa = xj[a]
                ma = means_t[a]
                for g in range(k):
                    ta = xa - ma[g]
                    acc1[g] += ta * ta
            best = 0
            m = F_INF
            for g in range(k):
                dist = acc1[g] + acc2[g]
                if dist < m:
                    m = dist
                    best = g
            assignment[j] = best


@njit(cache=True)
def _group_by_key(key, n_keys):
    n = key.shape[0]
    offsets = np.zeros(n_keys + 1, np.int64)
    for j in range(n):
        offsets[key[j] + 1] += 1
    for g in range(n_keys):
        offsets[g + 1] += offsets[g]
    nxt = offsets[:-1].copy()
    cells = np.empty(n, np.int64)
    for j in range(n):
        cells[nxt[key[j]]] = j
        nxt[key[j]] += 1
    return offsets, cells


@njit(cache=True, parallel=True)
def _sum_groups(x, offsets, cells, sums):
    """sums[g] = float32 sum of x[cells[i]] over group g's positions, in order."""
    n_groups = offsets.shape[0] - 1
    d = x.shape[1]
    for g in prange(n_groups):
        acc = np.zeros(d, np.float32)
        end = offsets[g + 1]
        for i in range(offsets[g], end):
            if i + PREFETCH_AHEAD < end:
                _prefetch_row(x, cells[i + PREFETCH_AHEAD])
            row = x[cells[i]]
            for a in range(d):
                acc[a] += row[a]
        for a in range(d):
            sums[g, a] = acc[a]


@njit(cache=True)
def lloyd_update(means, x, assignment):
    """The update half of one ``arma::kmeans(keep_existing, 1 iteration)`` step as harmonypy 2.1.0 runs it, given
    each cell's nearest mean; returns (new means, status): status 0 ok, 1 failed (Armadillo's failure: the caller
    stops), 2 an empty cluster needed a random cell (Armadillo's ``randi``, which phenovec cannot reproduce: the
    last cell is taken)."""
    n, d = x.shape
    k = means.shape[0]
    offsets, cells = _group_by_key(assignment, k)
    sums = np.empty((k, d), np.float32)
    _sum_groups(x, offsets, cells, sums)
    new = np.empty((k, d), np.float32)
    counts = np.empty(k, np.int64)
    last = np.zeros(k, np.int64)
    status = 0
    for g in range(k):
        counts[g] = offsets[g + 1] - offsets[g]
        if counts[g] > 0:
            last[g] = cells[offsets[g + 1] - 1]
        for a in range(d):
            new[g, a] = sums[g, a] / np.float32(counts[g]) if counts[g] >= 1 else F0
    n_dead = 0
    for g in range(k):
        if counts[g] == 0:
            n_dead += 1
    if n_dead:
        live = np.empty(k, np.int64)
        n_live = 0
        for g in range(k - 1, -1, -1):
            if counts[g] >= 2:
                live[n_live] = g
                n_live += 1
        if n_live == 0:
            return means, 1
        used = 0
        for g in range(k):
            if counts[g] != 0:
                continue
            if used < n_live:
                live_g = live[used]
                used += 1
                if live_g == g:
                    return means, 1
                proposed = last[live_g]
            else:
                proposed = n - 1
                status = 2
            for a in range(d):
                new[g, a] = x[proposed, a]
    for g in range(k):
        for a in range(d):
            if not np.isfinite(new[g, a]):
                return means, 1
    return new, status


# ------------------------------------------------------------------------------------------ assignments


@njit(cache=True, inline="always")
def _softmax(x, k):
    m = -F_INF
    for i in range(k):
        if x[i] > m:
            m = x[i]
    for i in range(k):
        x[i] = expf(x[i] - m)
    total = _accumulate(x, k)
    if not (np.isfinite(total) and total > F0):
        return False
    for i in range(k):
        x[i] = x[i] / total
    return True


@njit(cache=True, inline="always")
def _chunk_weighted_sum(acc, weights, j, table, c):
    """``acc[:] = sum over t (in order) of table[c, t, :] * weights[j, t]`` in float32, :data:`ACC_CHUNK` lanes: a
    fixed-length stack accumulator, indexed only by loop counters, which LLVM keeps in vector registers over t."""
    for lane in range(ACC_CHUNK):
        acc[lane] = F0
    for t in range(table.shape[1]):
        w = weights[j, t]
        for lane in range(ACC_CHUNK):
            acc[lane] += table[c, t, lane] * w


@njit(cache=True, error_model="numpy")
def _assign_cells(first, last, x, y_t, sigma, dist, r):
    """:func:`assign_without_diversity` for cells ``first .. last`` (rows indexed by hand; ``y_t``: the centroids
    as chunks x d x :data:`ACC_CHUNK` clusters, zero-padded, so that a chunk's fixed-length stack accumulator stays
    in vector registers over the dimensions, as in :func:`_correct_cells`); returns the number of bad
    normalisers. ``error_model="numpy"``: no test and branch before each division (sigma is positive, and a
    normaliser is checked before it divides), so the divisions vectorise: 40 -> 31.5 ms a call at 100k cells."""
    d = x.shape[1]
    n_chunks = y_t.shape[0]
    k = sigma.shape[0]
    acc = _stack_f32(ACC_CHUNK)
    logits = np.empty(k, np.float32)  # on the heap: a Numba worker thread's stack may be small
    bad = 0
    for j in range(first, last):
        for c in range(n_chunks):
            _chunk_weighted_sum(acc, x, j, y_t, c)
            g0 = c * ACC_CHUNK
            for gg in range(min(ACC_CHUNK, k - g0)):
                g = g0 + gg
                distance = F2 * (F1 - acc[gg])
                dist[j, g] = distance
                logits[g] = (-distance) / sigma[g]
        if not _softmax(logits, k):
            bad += 1
        for g in range(k):
            r[j, g] = logits[g]
    return bad


@njit(cache=True, parallel=True)
def assign_without_diversity(x, y, sigma, dist, r):
    """dist = 2 (1 - x.y) (summed over dimensions in order), R = softmax(-dist / sigma) per cell; returns the
    number of cells whose normaliser was not finite and positive."""
    n = x.shape[0]
    k = y.shape[0]
    n_chunks = (k + ACC_CHUNK - 1) // ACC_CHUNK
    d = y.shape[1]
    y_t = np.zeros((n_chunks, d, ACC_CHUNK), np.float32)  # chunk x dimension x cluster, zero-padded
    for g in range(k):
        for a in range(d):
            y_t[g // ACC_CHUNK, a, g % ACC_CHUNK] = y[g, a]
    n_tasks = (n + CELLS_PER_TASK - 1) // CELLS_PER_TASK
    bad = np.zeros(n_tasks, np.int64)
    for t in prange(n_tasks):
        bad[t] = _assign_cells(t * CELLS_PER_TASK, min(n, (t + 1) * CELLS_PER_TASK), x, y_t, sigma, dist, r)
    return bad.sum()


@njit(cache=True)
def _run_sums(r, cells, run_begin, run_end, first, last, out):
    k = r.shape[1]
    acc = _stack_f32(k)
    for q in range(first, last):
        for g in range(k):
            acc[g] = F0
        end = run_end[q]
        for i in range(run_begin[q], end):
            if i + PREFETCH_AHEAD < end:
                _prefetch_row(r, cells[i + PREFETCH_AHEAD])
            j = cells[i]
            for g in range(k):
                acc[g] += r[j, g]
        for g in range(k):
            out[q, g] = acc[g]


@njit(cache=True)
def _runs_of(offsets, base, run_group, run_begin, run_end, n_runs, group_first):
    """Append runs of at most CELLS_PER_TASK positions for each group g (positions base + offsets[g]..)."""
    for g in range(offsets.shape[0] - 1):
        start = base + offsets[g]
        end = base + offsets[g + 1]
        while start < end:
            run_group[n_runs] = group_first + g
            run_begin[n_runs] = start
            run_end[n_runs] = min(end, start + CELLS_PER_TASK)
            n_runs += 1
            start += CELLS_PER_TASK
    return n_runs


@njit(cache=True)
def batch_runs(cell_batches, cov_bounds, n_batches):
    """Cells of each batch (index order, batches of all covariates in order) and runs of at most 1024 of them:
    harmonypy's ``batch_groups``. Returns (cells, run_group, run_begin, run_end)."""
    n, n_cov = cell_batches.shape
    offsets = np.zeros(n_batches + 1, np.int64)
    for j in range(n):
        for c in range(n_cov):
            offsets[cell_batches[j, c] + 1] += 1
    for b in range(n_batches):
        offsets[b + 1] += offsets[b]
    nxt = offsets[:-1].copy()
    cells = np.empty(n * n_cov, np.int64)
    for j in range(n):
        for c in range(n_cov):
            b = cell_batches[j, c]
            cells[nxt[b]] = j
            nxt[b] += 1
    max_runs = n * n_cov // CELLS_PER_TASK + n_batches + 1
    run_group = np.empty(max_runs, np.int64)
    run_begin = np.empty(max_runs, np.int64)
    run_end = np.empty(max_runs, np.int64)
    zero = np.int64(0)
    n_runs = _runs_of(offsets, zero, run_group, run_begin, run_end, zero, zero)
    return cells, run_group[:n_runs], run_begin[:n_runs], run_end[:n_runs]


@njit(cache=True, parallel=True)
def rebuild_o_e(r, pr_b, cells, run_group, run_begin, run_end, o, e):
    """E(b, k) = (sum of R over cells)(k) * Pr_b(b); O(b) = sum of R over batch b's cells (run by run)."""
    n, k = r.shape
    n_tasks = (n + CELLS_PER_TASK - 1) // CELLS_PER_TASK
    task_sums = np.empty((n_tasks, k), np.float32)
    for t in prange(n_tasks):
        acc = np.zeros(k, np.float32)
        for j in range(t * CELLS_PER_TASK, min(n, (t + 1) * CELLS_PER_TASK)):
            for g in range(k):
                acc[g] += r[j, g]
        for g in range(k):
            task_sums[t, g] = acc[g]
    totals = np.zeros(k, np.float32)
    for t in range(n_tasks):
        for g in range(k):
            totals[g] += task_sums[t, g]
    for b in range(e.shape[0]):
        for g in range(k):
            e[b, g] = totals[g] * pr_b[b]
    sums = np.empty((run_group.shape[0], k), np.float32)
    for q in prange(run_group.shape[0]):  # each run its own sum, in cell order
        _run_sums(r, cells, run_begin, run_end, np.int64(q), np.int64(q) + 1, sums)
    o[:] = F0
    for q in range(run_group.shape[0]):
        for g in range(k):
            o[run_group[q], g] += sums[q, g]


@njit(cache=True, parallel=True)
def init_objective_terms(r, dist, sigma):
    """(sum R * dist, sum sigma * R log R) in double, per 1024-cell task then in task order."""
    n, k = r.shape
    n_tasks = (n + CELLS_PER_TASK - 1) // CELLS_PER_TASK
    errors = np.zeros(n_tasks)
    entropies = np.zeros(n_tasks)
    for t in prange(n_tasks):
        error = 0.0
        entropy = 0.0
        for j in range(t * CELLS_PER_TASK, min(n, (t + 1) * CELLS_PER_TASK)):
            for g in range(k):
                rv = r[j, g]
                error += np.float64(rv) * dist[j, g]
                if rv > F0:
                    entropy += np.float64(sigma[g]) * (rv * np.float32(math.log(rv)))
        errors[t] = error
        entropies[t] = entropy
    error = 0.0
    entropy = 0.0
    for t in range(n_tasks):
        error += errors[t]
        entropy += entropies[t]
    return error, entropy


@njit(cache=True)
def objective(error, entropy, o, e, theta, sigma, n):
    """harmonypy's ``record_objective``: (objective, distance, entropy, cross-entropy terms) as float32."""
    norm_const = np.float32(2000.0) / np.float32(n)
    cross = 0.0
    for b in range(o.shape[0]):
        for g in range(o.shape[1]):
            ev = e[b, g]
            ov = o[b, g]
            twice = F2 * ev
            ratio = (ov + ev + F1) / (twice + F1)
            term = np.float32(math.log(ratio))
            term = term * theta[b]
            term = term * sigma[g]
            term = term * ov
            cross += term
    ef = np.float32(error)
    nf = np.float32(entropy)
    cf = np.float32(cross)
    return (ef + nf + cf) * norm_const, ef * norm_const, nf * norm_const, cf * norm_const


@njit(cache=True)
def _log_diversity(o, e, theta, out):
    for b in range(o.shape[0]):
        w = theta[b]
        for g in range(o.shape[1]):
            twice = F2 * e[b, g]
            log_expected = np.float32(math.log(twice + F1))
            total = o[b, g] + e[b, g]
            log_observed = np.float32(math.log(total + F1))
            out[b, g] = (log_expected - log_observed) * w


#: cells reassigned together in :func:`_lane_softmax`: one SIMD lane per cell (16 float32 lanes: one AVX-512 vector)
LANES = 16


@njit(cache=True, inline="always")
def _arma_sum_step(x, base, g, acc1, acc2):
    """Add entry g of each lane's vector to its ``arma::sum`` (even entries in one float32 sum, odd in another)."""
    if g % 2 == 0:
        for ln in range(LANES):
            acc1[ln] += x[base + ln]
    else:
        for ln in range(LANES):
            acc2[ln] += x[base + ln]


@njit(cache=True, inline="always")
def _lane_scratch(k):
    """The lane buffers of :func:`_lane_softmax`, on the caller's stack (inlined, so the caller's frame holds them):
    flat K x LANES logits and distances, indexed by hand (slicing a row per cluster would count references each
    time), one float32 or float64 per lane for the running values, and the two 8-item offset lists of
    :func:`_transpose8`."""
    return (_stack_f32(k * LANES), _stack_f32(k * LANES), _stack_f32(LANES), _stack_f32(LANES), _stack_f32(LANES),
            _stack_f32(LANES), _stack_f64(LANES), _stack_f64(LANES), _stack_f64(LANES), _stack_i64(8), _stack_i64(8))


@njit(cache=True, inline="always")
def _lanes_from_rows(src, starts, dst, k, kb, s_at, d_at, add):
    """``dst[g * LANES + ln] = src[starts[ln] + g]`` for every cluster g and lane ln (``add``: ``dst[...] +
    src[...]``), by 8 x 8 transposes (:func:`_transpose8`) and item by item for the last ``k - kb`` clusters."""
    for h in range(0, LANES, 8):
        for g0 in range(0, kb, 8):
            for i in range(8):
                s_at[i] = starts[h + i] + g0
                d_at[i] = (g0 + i) * LANES + h
            if add:
                _transpose8_add(src, s_at, dst, d_at)
            else:
                _transpose8(src, s_at, dst, d_at)
    for g in range(kb, k):
        base = g * LANES
        for ln in range(LANES):
            if add:
                dst[base + ln] = dst[base + ln] + src[starts[ln] + g]
            else:
                dst[base + ln] = src[starts[ln] + g]


@njit(cache=True, inline="always")
def _rows_from_lanes(x, jj, r_flat, k, s_at, d_at):
    """``r_flat[jj[ln] * k + g] = x[g * LANES + ln]`` for every cluster g and lane ln: the lanes' results back to
    their cells' rows, by 8 x 8 transposes and item by item for the last ``k % 8`` clusters."""
    kb = k - k % 8
    for h in range(0, LANES, 8):
        for g0 in range(0, kb, 8):
            for i in range(8):
                s_at[i] = (g0 + i) * LANES + h
                d_at[i] = jj[h + i] * k + g0
            _transpose8(x, s_at, r_flat, d_at)
    for ln in range(LANES):
        row = jj[ln] * k
        for g in range(kb, k):
            r_flat[row + g] = x[g * LANES + ln]


@njit(cache=True, inline="always")
def _lane_softmax(jj, lead, one_lead, dist_flat, div_flat, sigma, cell_batches, k, x, dt, mx, acc1, acc2, total, w, ws,
                  ce, rows, s_at, d_at):
    """The softmax of the penalised logits of the :data:`LANES` cells ``jj`` (``lead``: each lane's row offset into
    the frozen penalties of its first-variable batch; ``one_lead``: all lanes share one), per cell in harmonypy's
    order, one cell per SIMD lane: the logits are laid out cluster by cluster (K x LANES) in ``x``, so each step
    (logits, max, ``expf``, the two interleaved float32 sums of ``arma::sum``, the float64 running sums) is one vector
    operation for all of them. Leaves the assignments in ``x``, each lane's normaliser in ``total``, its column sum's
    two halves in ``acc1`` / ``acc2`` and its float64 sums in ``w``, ``ws``, ``ce``."""
    n_cov = cell_batches.shape[1]
    kb = k - k % 8
    for ln in range(LANES):
        rows[ln] = jj[ln] * k
    _lanes_from_rows(dist_flat, rows, dt, k, kb, s_at, d_at, False)
    if one_lead:
        lrow = lead[0]
        for g in range(k):
            sg = sigma[g]
            lg = div_flat[lrow + g]
            base = g * LANES
            for ln in range(LANES):
                x[base + ln] = (-dt[base + ln]) / sg + lg
    else:
        _lanes_from_rows(div_flat, lead, x, k, kb, s_at, d_at, False)
        for g in range(k):
            sg = sigma[g]
            base = g * LANES
            for ln in range(LANES):
                x[base + ln] = (-dt[base + ln]) / sg + x[base + ln]
    for c in range(1, n_cov):
        for ln in range(LANES):
            rows[ln] = cell_batches[jj[ln], c] * k
        _lanes_from_rows(div_flat, rows, x, k, kb, s_at, d_at, True)
    for ln in range(LANES):
        mx[ln] = -F_INF
        acc1[ln] = F0
        acc2[ln] = F0
        w[ln] = 0.0
        ws[ln] = 0.0
        ce[ln] = 0.0
    for g in range(k):
        base = g * LANES
        for ln in range(LANES):
            v = x[base + ln]
            mx[ln] = v if v > mx[ln] else mx[ln]
    for g in range(k):
        s64 = np.float64(sigma[g])
        base = g * LANES
        for ln in range(LANES):
            shifted = x[base + ln] - mx[ln]
            ex = expf(shifted)
            x[base + ln] = ex
            wg = s64 * ex
            w[ln] += wg
            ws[ln] += wg * shifted
        _arma_sum_step(x, base, g, acc1, acc2)
    for ln in range(LANES):
        total[ln] = acc1[ln] + acc2[ln]
        acc1[ln] = F0
        acc2[ln] = F0
    for g in range(k):
        base = g * LANES
        for ln in range(LANES):
            pv = x[base + ln] / total[ln]
            x[base + ln] = pv
            ce[ln] += np.float64(pv) * dt[base + ln]
        _arma_sum_step(x, base, g, acc1, acc2)


@njit(cache=True, inline="always")
def _lane_flags(t, acc1, acc2, ln):
    """harmonypy's checks of one cell: 1 (stop: normaliser not finite and positive), 2 (column sum off 1), 0."""
    if not (np.isfinite(t) and t > F0):
        return 1
    column_sum = acc1[ln] + acc2[ln]
    return 2 if not np.isfinite(column_sum) or abs(column_sum - F1) > np.float32(1e-4) else 0


@njit(cache=True, error_model="numpy")
def _reassign_run(q, r, dist, sigma, log_div, cell_batches, cells, run_group, run_begin, run_end, run_sums, run_error,
                  run_entropy, run_flags):
    """Reassign the cells of lead run ``q`` (one batch of the first variable) with O and E frozen,
    :data:`LANES` at a time (:func:`_lane_softmax`), and add their results to the run's sums in cell order. The lane
    buffers live on the stack (128 bytes per cluster): LLVM then knows they overlap no other array and vectorises
    the lane loops (measured 1.5x on the pass); ``phenovec.batch.harmony`` gives runs with many clusters a thread
    with a large stack. ``error_model="numpy"``: a division by zero gives inf or NaN, which :func:`_lane_flags`
    reports as harmonypy's check does, instead of Numba's test and branch before each division, which kept the
    divisions scalar (the lane kernel 15 % faster)."""
    k = r.shape[1]
    x, dt, mx, acc1, acc2, total, w, ws, ce, s_at, d_at = _lane_scratch(k)
    jj = np.empty(LANES, np.int64)
    rows = np.empty(LANES, np.int64)
    lead = np.full(LANES, run_group[q] * k)
    dist_flat = dist.ravel()
    div_flat = log_div.ravel()
    r_flat = r.reshape(r.size)  # a view (r is C-contiguous; reshape refuses otherwise, where ravel would copy)
    sums = np.zeros(k, np.float32)
    error = 0.0
    entropy = 0.0
    flags = 0
    i = run_begin[q]
    while i < run_end[q]:
        nl = min(LANES, run_end[q] - i)
        for ln in range(LANES):  # lanes past the run's end repeat its last cell; their results are dropped
            jj[ln] = cells[i + min(ln, nl - 1)]
        _lane_softmax(jj, lead, True, dist_flat, div_flat, sigma, cell_batches, k, x, dt, mx, acc1, acc2, total, w,
                      ws, ce, rows, s_at, d_at)
        stop = 0
        for ln in range(nl):
            t = total[ln]
            f = _lane_flags(t, acc1, acc2, ln)
            flags |= f
            stop |= f & 1
            if f & 1:
                continue  # harmonypy stops the run with an error: which cell does not matter
            t64 = np.float64(t)
            error += ce[ln]
            entropy += (ws[ln] - math.log(t64) * w[ln]) / t64
        if stop:
            break
        if nl == LANES:
            _rows_from_lanes(x, jj, r_flat, k, s_at, d_at)
        else:
            for ln in range(nl):
                j = jj[ln]
                for g in range(k):
                    r[j, g] = x[g * LANES + ln]
        for ln in range(nl):
            j = jj[ln]
            for g in range(k):
                sums[g] += r[j, g]
        i += nl
    for g in range(k):
        run_sums[q, g] = sums[g]
    run_error[q] = error
    run_entropy[q] = entropy
    run_flags[q] = flags


@njit(cache=True)
def _reassign_runs(r, dist, sigma, log_div, cell_batches, cells, run_group, run_begin, run_end, n_lead, run_sums,
                   run_error, run_entropy, run_flags):
    """:func:`_reassign_run` for each lead run of the block, in order."""
    for q in range(n_lead):
        _reassign_run(q, r, dist, sigma, log_div, cell_batches, cells, run_group, run_begin, run_end, run_sums,
                      run_error, run_entropy, run_flags)


@njit(cache=True, parallel=True)
def _reassign_runs_parallel(r, dist, sigma, log_div, cell_batches, cells, run_group, run_begin, run_end, n_lead,
                            run_sums, run_error, run_entropy, run_flags):
    """:func:`_reassign_runs` with the lead runs on the thread pool: each run reads the frozen O / E penalties and
    writes only its own cells' rows and its own sums, so every value is the sequential pass's bit for bit."""
    for q in prange(n_lead):
        _reassign_run(np.int64(q), r, dist, sigma, log_div, cell_batches, cells, run_group, run_begin, run_end,
                      run_sums, run_error, run_entropy, run_flags)


@njit(cache=True, error_model="numpy")
def _reassign_lanes(i, m, r, dist, sigma, log_div, cell_batches, cells, cell_error, cell_entropy, cell_flags):
    """Reassign the block's lead cells at positions ``i .. i + LANES - 1`` (below ``m``) of ``cells`` with O and E
    frozen, whatever their batches (:func:`_lane_softmax`); each cell's R row, objective terms and flags go to its
    own slots, and the caller sums them run by run in cell order, so runs of a few cells leave no lane idle."""
    k = r.shape[1]
    x, dt, mx, acc1, acc2, total, w, ws, ce, s_at, d_at = _lane_scratch(k)
    jj = np.empty(LANES, np.int64)
    rows = np.empty(LANES, np.int64)
    lead = np.empty(LANES, np.int64)
    nl = min(LANES, m - i)
    for ln in range(LANES):  # lanes past the block's end repeat its last cell; their results are dropped
        jj[ln] = cells[i + min(ln, nl - 1)]
    one_lead = True
    for ln in range(LANES):
        lead[ln] = cell_batches[jj[ln], 0] * k
        one_lead = one_lead and lead[ln] == lead[0]
    _lane_softmax(jj, lead, one_lead, dist.ravel(), log_div.ravel(), sigma, cell_batches, k, x, dt, mx, acc1, acc2,
                  total, w, ws, ce, rows, s_at, d_at)
    stop = 0
    for ln in range(nl):
        p = i + ln
        t = total[ln]
        f = _lane_flags(t, acc1, acc2, ln)
        cell_flags[p] = f
        cell_error[p] = 0.0
        cell_entropy[p] = 0.0
        stop |= f & 1
        if f & 1:
            continue
        t64 = np.float64(t)
        cell_error[p] = ce[ln]
        cell_entropy[p] = (ws[ln] - math.log(t64) * w[ln]) / t64
    if stop:
        return
    if nl == LANES:
        _rows_from_lanes(x, jj, r.reshape(r.size), k, s_at, d_at)
    else:
        for ln in range(nl):
            j = jj[ln]
            for g in range(k):
                r[j, g] = x[g * LANES + ln]


@njit(cache=True)
def _reassign_packed(m, r, dist, sigma, log_div, cell_batches, cells, cell_error, cell_entropy, cell_flags):
    """:func:`_reassign_lanes` over the block's ``m`` lead cells, :data:`LANES` at a time."""
    for i in range(0, m, LANES):
        _reassign_lanes(i, m, r, dist, sigma, log_div, cell_batches, cells, cell_error, cell_entropy, cell_flags)


@njit(cache=True, parallel=True)
def _reassign_packed_parallel(m, r, dist, sigma, log_div, cell_batches, cells, cell_error, cell_entropy, cell_flags):
    """:func:`_reassign_packed` on the thread pool: each group of lanes reads the frozen O / E penalties and writes
    only its own cells' rows and slots, so every value is the sequential pass's bit for bit."""
    for t in prange((m + LANES - 1) // LANES):
        _reassign_lanes(t * LANES, m, r, dist, sigma, log_div, cell_batches, cells, cell_error, cell_entropy,
                        cell_flags)




@njit(cache=True)
def _block_run_sums(r, block, cell_run, c_first, q_first, q_last, out):
    """``out[q]`` = the sum of the R rows of run q's cells (float32, in block order, as :func:`_run_sums` sums a run)
    for the runs ``q_first .. q_last - 1`` of covariates ``c_first ..``: one sweep over the block's cells, each row
    read once and added to its run of each covariate (a run's cells are in block order, so each sum keeps its
    order). The rows :data:`PREFETCH_AHEAD` cells on are asked for ahead (at 100k cells the pass took 45-48 ms
    instead of 52.5; asking for their ``dist`` rows too made it slower)."""
    k = r.shape[1]
    m, n_cov = cell_run.shape
    for q in range(q_first, q_last):
        for g in range(k):
            out[q, g] = F0
    for i in range(m):
        if i + PREFETCH_AHEAD < m:
            _prefetch_row(r, block[i + PREFETCH_AHEAD])
        j = block[i]
        for c in range(c_first, n_cov):
            q = cell_run[i, c]
            for g in range(k):
                out[q, g] += r[j, g]


@njit(cache=True)
def _move_block(o, e, pr_b, run_sums, run_group, n_runs, n_lead, totals, sign):
    """Add (sign 1) or remove (sign -1) a block's run sums to O, run by run, and their total times Pr_b to E
    (``x + (-y)`` is ``x - y`` in IEEE arithmetic, so both directions keep harmonypy's bits)."""
    k = o.shape[1]
    totals[:] = F0
    for q in range(n_runs):
        ob = o[run_group[q]]
        for g in range(k):
            ob[g] += sign * run_sums[q, g]
        if q < n_lead:
            for g in range(k):
                totals[g] += run_sums[q, g]
    for b in range(o.shape[0]):
        for g in range(k):
            moved = totals[g] * pr_b[b]
            e[b, g] += sign * moved


@njit(cache=True)
def _group_block(block, cell_batches, cov_bounds, n_batches, block_cells, run_group, run_begin, run_end, cell_run):
    """Group a block's cells by batch, once per covariate (stable), in runs of at most 1024 cells: ``block_cells``
    (covariate c's grouping at positions ``c * m ..``), the runs (batch, first and last position), each cell's run per
    covariate (``cell_run``). Returns (runs, runs of the first covariate)."""
    m = block.shape[0]
    n_cov = cell_batches.shape[1]
    zero = np.int64(0)
    # the block's rows of cell_batches, read once where the counting and the grouping below read each row twice per
    # covariate, each time from a random place (1.5 ms less a pass at 100k cells)
    block_batches = np.empty((m, n_cov), np.int64)
    for i in range(m):
        for c in range(n_cov):
            block_batches[i, c] = cell_batches[block[i], c]
    n_runs = zero
    n_lead = zero
    for c in range(n_cov):
        first = zero if c == 0 else cov_bounds[c - 1]
        last = cov_bounds[c]
        counts = np.zeros(last - first + 1, np.int64)
        for i in range(m):
            counts[block_batches[i, c] - first + 1] += 1
        for b in range(last - first):
            counts[b + 1] += counts[b]
        first_run = np.empty(last - first, np.int64)
        q = n_runs
        for b in range(last - first):
            first_run[b] = q
            q += (counts[b + 1] - counts[b] + CELLS_PER_TASK - 1) // CELLS_PER_TASK
        n_runs = _runs_of(counts, c * m, run_group, run_begin, run_end, n_runs, first)
        nxt = counts[:-1].copy()
        for i in range(m):
            b = block_batches[i, c] - first
            p = nxt[b]
            block_cells[c * m + p] = block[i]
            cell_run[i, c] = first_run[b] + (p - counts[b]) // CELLS_PER_TASK
            nxt[b] += 1
        if c == 0:
            n_lead = n_runs
    return n_runs, n_lead


@njit(cache=True, inline="always")
def _block_bounds(blk, n_blocks, cells_per_block, n):
    """Positions ``first .. last - 1`` of the shuffled order in block ``blk`` (harmonypy's: the last block takes the
    rest; empty past the end)."""
    first = blk * cells_per_block
    last = n if blk == n_blocks - 1 else min(n, (blk + 1) * cells_per_block)
    return first, max(first, last)


@njit(cache=True, parallel=True)
def _plan_pass(order, r, cell_batches, cov_bounds, n_batches, n_blocks, cells_per_block, block_cells, run_group,
               run_begin, run_end, cell_run, n_runs, n_lead, run_sums):
    """Every block's grouping (:func:`_group_block`) and the sums that take it out of O and E, the blocks on the
    threads, before the pass changes R: a cell's R row changes only when its own block is reassigned, so each block's
    sums are the ones harmonypy takes at the block's turn (and each is summed in block order, as there). The blocks
    share ``block_cells`` and ``cell_run`` at their positions in the order; the runs and sums are per block."""
    n = order.shape[0]
    n_cov = cell_batches.shape[1]
    for t in prange(n_blocks):
        blk = np.int64(t)
        first, last = _block_bounds(blk, n_blocks, cells_per_block, n)
        n_runs[blk] = 0
        n_lead[blk] = 0
        if first == last:
            continue
        block = order[first:last]
        cr = cell_run[first:last]
        q, lead = _group_block(block, cell_batches, cov_bounds, n_batches, block_cells[first * n_cov: last * n_cov],
                               run_group[blk], run_begin[blk], run_end[blk], cr)
        n_runs[blk] = q
        n_lead[blk] = lead
        _block_run_sums(r, block, cr, np.int64(0), np.int64(0), q, run_sums[blk])


@njit(cache=True)
def update_assignments(order, r, dist, o, e, pr_b, sigma, theta, cell_batches, cov_bounds, n_blocks,
                       cells_per_block, parallel=False, pack_below=64):
    """One pass of harmonypy 2.1.0 ``update_R`` over the shuffled cells ``order``: block by block, take the block
    out of O and E, reassign its cells with the diversity penalty (O, E frozen), put them back. The blocks' groupings
    and the sums that take them out are computed first, all blocks at once on the threads (:func:`_plan_pass`). A
    block whose lead runs (its cells of one batch of the first variable) average fewer than ``pack_below`` cells is
    reassigned with its cells packed :data:`LANES` to a step whatever their batch (:func:`_reassign_packed`: short
    runs would leave lanes idle), else run by run (:func:`_reassign_runs`, which sums each run as it goes); the bits
    are the same. Returns (error, entropy, flags) with the objective's terms summed in double."""
    n = order.shape[0]
    k = r.shape[1]
    n_cov = cell_batches.shape[1]
    n_batches = o.shape[0]
    log_div = np.empty((n_batches, k), np.float32)
    totals = np.empty(k, np.float32)
    error = 0.0
    entropy = 0.0
    flags = 0
    zero = np.int64(0)  # not the constant 0: a kernel called with it is compiled again for Literal[int](0)
    largest = max(cells_per_block, n - (n_blocks - 1) * cells_per_block)
    max_runs = n_cov * (largest // CELLS_PER_TASK + 1) + n_batches + 1
    all_cells = np.empty(n * n_cov, np.int64)
    all_cell_run = np.empty((n, n_cov), np.int64)
    all_group = np.empty((n_blocks, max_runs), np.int64)
    all_begin = np.empty((n_blocks, max_runs), np.int64)
    all_end = np.empty((n_blocks, max_runs), np.int64)
    all_runs = np.empty(n_blocks, np.int64)
    all_lead = np.empty(n_blocks, np.int64)
    all_sums = np.empty((n_blocks, max_runs, k), np.float32)
    _plan_pass(order, r, cell_batches, cov_bounds, n_batches, n_blocks, cells_per_block, all_cells, all_group,
               all_begin, all_end, all_cell_run, all_runs, all_lead, all_sums)
    for blk in range(n_blocks):
        idx_min, idx_max = _block_bounds(blk, n_blocks, cells_per_block, n)
        if idx_min == idx_max:
            break
        m = idx_max - idx_min
        block = order[idx_min:idx_max]
        block_cells = all_cells[idx_min * n_cov: idx_max * n_cov]
        cell_run = all_cell_run[idx_min:idx_max]
        run_group = all_group[blk]
        run_begin = all_begin[blk]
        run_end = all_end[blk]
        n_runs = all_runs[blk]
        n_lead = all_lead[blk]
        run_sums = all_sums[blk]
        # take the block out of O and E
        _move_block(o, e, pr_b, run_sums, run_group, n_runs, n_lead, totals, -F1)
        _log_diversity(o, e, theta, log_div)
        if m >= pack_below * n_lead:
            # long lead runs: run by run, each run's sums added up as its cells are reassigned
            run_error = np.empty(n_lead)
            run_entropy = np.empty(n_lead)
            run_flags = np.empty(n_lead, np.int64)
            if parallel:
                _reassign_runs_parallel(r, dist, sigma, log_div, cell_batches, block_cells, run_group, run_begin,
                                        run_end, n_lead, run_sums, run_error, run_entropy, run_flags)
            else:
                _reassign_runs(r, dist, sigma, log_div, cell_batches, block_cells, run_group, run_begin, run_end,
                               n_lead, run_sums, run_error, run_entropy, run_flags)
            for q in range(n_lead):
                if run_flags[q] & 1:
                    return error, entropy, 1
            # put the block back
            _block_run_sums(r, block, cell_run, np.int64(1), n_lead, n_runs, run_sums)
            _move_block(o, e, pr_b, run_sums, run_group, n_runs, n_lead, totals, F1)
            for q in range(n_lead):
                error += run_error[q]
                entropy += run_entropy[q]
                flags |= run_flags[q]
            continue
        # short lead runs: the lead segment (positions 0 .. m - 1, the cells grouped by batch of the first variable)
        # packed LANES to a step whatever their batch, each cell's results to its own slots
        cell_error = np.empty(m)
        cell_entropy = np.empty(m)
        cell_flags = np.empty(m, np.int64)
        if parallel:
            _reassign_packed_parallel(m, r, dist, sigma, log_div, cell_batches, block_cells, cell_error, cell_entropy,
                                      cell_flags)
        else:
            _reassign_packed(m, r, dist, sigma, log_div, cell_batches, block_cells, cell_error, cell_entropy,
                             cell_flags)
        for i in range(m):
            if cell_flags[i] & 1:
                return error, entropy, 1
        # put the block back: every run's sums (the lead runs' in cell order, as the runs' own), and the objective's
        # terms per lead run in cell order, then run by run
        _block_run_sums(r, block, cell_run, zero, zero, n_runs, run_sums)
        _move_block(o, e, pr_b, run_sums, run_group, n_runs, n_lead, totals, F1)
        for q in range(n_lead):
            run_error = 0.0
            run_entropy = 0.0
            for i in range(run_begin[q], run_end[q]):
                run_error += cell_error[i]
                run_entropy += cell_entropy[i]
                flags |= cell_flags[i]
            error += run_error
            entropy += run_entropy
    return error, entropy, flags


# ------------------------------------------------------------------------------------------ correction


@njit(cache=True, inline="always")
def _combination_product(r, z_aug, order, starts, ends, g, q0, q1):
    """Combination g's ``R_g[:, q0:q1]^T Z_g`` (float64, one BLAS ``dgemm``), its cells' rows gathered first."""
    first = starts[g]
    m = ends[g] - first
    rows = np.empty((m, q1 - q0))
    for p in range(m):
        if p + PREFETCH_AHEAD < m:
            _prefetch_row(r, order[first + p + PREFETCH_AHEAD])
        j = order[first + p]
        for q in range(q1 - q0):
            rows[p, q] = r[j, q0 + q]
    return np.dot(rows.T, z_aug[first:first + m])


@njit(cache=True, parallel=True)
def combination_sums(r, z_aug, order, starts, ends, out):
    """``out[g] = R_g^T Z_g``: for combination g (positions ``starts[g] .. ends[g]`` of the combination order, cells
    ``order[p]``), the float64 sums of ``r[j, k] * z_aug[p]`` over its cells, one BLAS ``dgemm`` each (from Numba:
    no Python call per combination); combinations on the threads (each writes its own ``out[g]``, BLAS on one
    thread, so the result does not depend on the thread count)."""
    k = r.shape[1]
    for g in prange(starts.shape[0]):
        prod = _combination_product(r, z_aug, order, starts, ends, g, 0, k)
        for q in range(prod.shape[0]):
            for a in range(prod.shape[1]):
                out[g, q, a] = prod[q, a]


@njit(cache=True, inline="always")
def _zero_sums(out, weighted, q0, q1):
    """Zero clusters ``q0 .. q1 - 1`` of the batch sums ``out`` (B x K x (d+1)) and the intercept's ``weighted``."""
    for q in range(q0, q1):
        for a in range(weighted.shape[1]):
            weighted[q, a] = 0.0
        for b in range(out.shape[0]):
            for a in range(weighted.shape[1]):
                out[b, q, a] = 0.0


@njit(cache=True, inline="always")
def _add_to_batches(out, weighted, combos, counted, g, sums, q0, q1, sums_first):
    """Add combination g's sums of clusters ``q0 .. q1 - 1`` (``sums`` row ``q - sums_first`` for cluster q) to each
    of its batches' sums in ``out`` and, where ``counted[g, q]``, to the intercept's ``weighted``."""
    for c in range(combos.shape[1]):
        b = combos[g, c]
        for q in range(q0, q1):
            for a in range(weighted.shape[1]):
                out[b, q, a] += sums[q - sums_first, a]
    for q in range(q0, q1):
        if counted[g, q]:
            for a in range(weighted.shape[1]):
                weighted[q, a] += sums[q - sums_first, a]


#: clusters per task of :func:`batch_sums` (its tasks split the columns of the sums)
SUM_CLUSTERS_PER_TASK = 4


@njit(cache=True, parallel=True)
def batch_sums(sums, combos, counted, out, weighted):
    """From the combination sums (G x K x (d+1)): ``out[b] = sum of sums[g]`` over the combinations g holding batch b,
    and ``weighted[k] = sum of sums[g, k]`` over the combinations g with ``counted[g, k]``, both in combination
    order. One read of ``sums`` (it outgrows the caches: 20 MB at 480 combinations x 100 clusters), its clusters in
    tasks of :data:`SUM_CLUSTERS_PER_TASK` on the threads."""
    n_groups, k, d1 = sums.shape
    n_tasks = (k + SUM_CLUSTERS_PER_TASK - 1) // SUM_CLUSTERS_PER_TASK
    for t in prange(n_tasks):
        q0 = t * SUM_CLUSTERS_PER_TASK
        q1 = min(k, q0 + SUM_CLUSTERS_PER_TASK)
        _zero_sums(out, weighted, q0, q1)
        for g in range(n_groups):
            _add_to_batches(out, weighted, combos, counted, g, sums[g], q0, q1, 0)


@njit(cache=True, parallel=True)
def fused_batch_sums(r, z_aug, order, starts, ends, combos, counted, n_tasks, out, weighted, totals):
    """:func:`combination_sums` and :func:`batch_sums` without the G x K x (d+1) tensor between them, for
    combinations of a few cells (where that tensor outweighs the cells): ``n_tasks`` tasks each own a contiguous
    share of the clusters, compute each combination's sums for them (a ``dgemm`` on the share's columns) and add
    them to the batch and intercept sums at once, in combination order; ``totals[g, k]`` gets combination g's total
    weight in cluster k. BLAS may round a product on fewer columns differently in the last bit of a double, so the
    caller fixes ``n_tasks`` (not the thread count): the result then does not depend on the threads."""
    k = r.shape[1]
    d1 = z_aug.shape[1]
    n_groups = starts.shape[0]
    share = (k + n_tasks - 1) // n_tasks
    for t in prange(n_tasks):
        q0 = t * share
        q1 = min(k, q0 + share)
        if q0 >= q1:
            continue
        kc = q1 - q0
        _zero_sums(out, weighted, q0, q1)
        for g in range(n_groups):
            sums = _combination_product(r, z_aug, order, starts, ends, g, q0, q1)
            _add_to_batches(out, weighted, combos, counted, g, sums, q0, q1, q0)
            for q in range(kc):
                totals[g, q0 + q] = sums[q, d1 - 1]


@njit(cache=True)
def cooccurrence(totals, combos, n_batches):
    """``out[k, b1, b2] = sum of totals[g, k]`` over the combinations g holding both batches b1 and b2 (the
    R-weighted overlap of batches of different variables; the diagonal is each batch's O), combination order."""
    n_groups, k = totals.shape
    n_cov = combos.shape[1]
    acc = np.zeros((n_batches, n_batches, k))
    for g in range(n_groups):
        for c1 in range(n_cov):
            b1 = combos[g, c1]
            for c2 in range(n_cov):
                b2 = combos[g, c2]
                for q in range(k):
                    acc[b1, b2, q] += totals[g, q]
    out = np.empty((k, n_batches, n_batches))
    for b1 in range(n_batches):
        for b2 in range(n_batches):
            for q in range(k):
                out[q, b1, b2] = acc[b1, b2, q]
    return out


@njit(cache=True, error_model="numpy")
def _ridge_system(k, n_cov, keep, batch_cov, rz, a00, rhs0, cooc, pen, lamb0, m, y):
    """Cluster k's system of :func:`ridge_systems`; returns 1 if the system is singular, else 0."""
    n_batches = keep.shape[0]
    d = rhs0.shape[1]
    kept_per_cov = np.zeros(n_cov, np.int64)
    n_keep = 0
    for b in range(n_batches):
        if keep[b, k]:
            kept_per_cov[batch_cov[b]] += 1
            n_keep += 1
    diag_cov = 0
    for c in range(1, n_cov):
        if kept_per_cov[c] > kept_per_cov[diag_cov]:
            diag_cov = c
    n_diag = kept_per_cov[diag_cov]
    n = 1 + n_keep - n_diag
    slot = np.full(n_batches, -1, np.int64)  # row in the dense block (>= 1) or the diagonal one (>= 0)
    s = np.zeros((n, n))
    cpl = np.zeros((n, n_diag))
    dg = np.empty(n_diag)
    rhs_dense = np.zeros((n, d))
    rhs_diag = np.empty((n_diag, d))
    nd = 1
    nj = 0
    total = 0.0
    for b in range(n_batches):
        if not keep[b, k]:
            continue
        o = rz[b, k, d]
        total += o
        if batch_cov[b] == diag_cov:
            slot[b] = nj
            cpl[0, nj] = o
            dg[nj] = o + pen[b, k]
            for a in range(d):
                rhs_diag[nj, a] = rz[b, k, a]
            nj += 1
        else:
            slot[b] = nd
            s[nd, 0] = o
            s[0, nd] = o
            s[nd, nd] = o + pen[b, k]
            for a in range(d):
                rhs_dense[nd, a] = rz[b, k, a]
            nd += 1
    if n_cov > 1:
        s[0, 0] = a00[k]
        for a in range(d):
            rhs_dense[0, a] = rhs0[k, a]
        for b1 in range(n_batches):
            if not keep[b1, k]:
                continue
            for b2 in range(b1 + 1, n_batches):
                if not keep[b2, k] or batch_cov[b2] == batch_cov[b1]:
                    continue
                overlap = cooc[k, b1, b2]
                dense1 = batch_cov[b1] != diag_cov
                dense2 = batch_cov[b2] != diag_cov
                if dense1 and dense2:
                    s[slot[b1], slot[b2]] += overlap
                    s[slot[b2], slot[b1]] += overlap
                elif dense1:
                    cpl[slot[b1], slot[b2]] += overlap
                elif dense2:
                    cpl[slot[b2], slot[b1]] += overlap
    else:
        s[0, 0] = total
        for b in range(n_batches):
            if keep[b, k]:
                for a in range(d):
                    rhs_dense[0, a] += rz[b, k, a]
    if n_keep == n_batches:
        s[0, 0] += lamb0
    largest = 0.0
    for x in range(n):
        largest = max(largest, s[x, x])
    # eliminate the diagonal block (lower triangle of S, and the dense right-hand sides)
    for j in range(n_diag):
        for x in range(n):
            cx = cpl[x, j]
            if cx == 0.0:
                continue
            scale = cx / dg[j]
            for yy in range(x, n):
                s[yy, x] -= scale * cpl[yy, j]
            for a in range(d):
                rhs_dense[x, a] -= scale * rhs_diag[j, a]
    # Cholesky S = L L' in place, column by column
    limit = 1e-10 * largest
    singular = False
    for c in range(n):
        if not (s[c, c] > limit):
            singular = True
            break
        s[c, c] = math.sqrt(s[c, c])
        for rr in range(c + 1, n):
            s[rr, c] /= s[c, c]
        for c2 in range(c + 1, n):
            f = s[c2, c]
            if f == 0.0:
                continue
            for rr in range(c2, n):
                s[rr, c2] -= f * s[rr, c]
    if singular:
        return 1
    for c in range(n):
        for a in range(d):
            rhs_dense[c, a] /= s[c, c]
        for rr in range(c + 1, n):
            lv = s[rr, c]
            if lv == 0.0:
                continue
            for a in range(d):
                rhs_dense[rr, a] -= lv * rhs_dense[c, a]
    for c in range(n - 1, -1, -1):
        for rr in range(c + 1, n):
            lv = s[rr, c]
            if lv == 0.0:
                continue
            for a in range(d):
                rhs_dense[c, a] -= lv * rhs_dense[rr, a]
        for a in range(d):
            rhs_dense[c, a] /= s[c, c]
    for a in range(d):
        y[k, a] = np.float32(rhs_dense[0, a])
    w = np.empty(d)
    for b in range(n_batches):
        if not keep[b, k]:
            continue
        if batch_cov[b] == diag_cov:
            j = slot[b]
            for a in range(d):
                w[a] = rhs_diag[j, a]
            for x in range(n):
                cx = cpl[x, j]
                if cx == 0.0:
                    continue
                for a in range(d):
                    w[a] -= cx * rhs_dense[x, a]
            for a in range(d):
                m[b, k, a] = np.float32(w[a] / dg[j])
        else:
            for a in range(d):
                m[b, k, a] = np.float32(rhs_dense[slot[b], a])
    return 0


@njit(cache=True, error_model="numpy")
def ridge_systems(clusters, keep, batch_cov, rz, a00, rhs0, cooc, pen, lamb0, m, y, bad):
    """harmonypy 2.1.0's per-cluster ridge regressions (its ``solve_ridge_cluster``), in double, cluster by cluster.
    Not on the threads: at 2k-100k cells two threads saved only 0.16-0.26 ms a call (0.77 vs 0.93 ms at 2k), and the
    parallel loop cost ~5 s of a first call's compilation.

    Cluster k's system has a row for the intercept and one per batch it corrects (``keep[:, k]``). The kept batches
    of the covariate with the most of them share no cells: they form a diagonal block D, which is eliminated first;
    what is left (the intercept and the other covariates' batches, ``n`` rows) is the Schur complement
    ``S = A - C D^-1 C'``, factored by Cholesky (a pivot not above 1e-10 times A's largest diagonal entry: the
    system is singular, ``bad[i] = 1``), then the dense rows are solved and the diagonal ones follow from them.
    Every step runs in harmonypy's order, skipping the zero couplings it skips.

    ``batch_cov[b]``: batch b's covariate; ``rz[b, k]``: batch b's R-weighted coordinate sums and total
    (B x K x (d+1)); with several covariates ``a00[k]`` / ``rhs0[k]``: the intercept's total and coordinate sums
    (each cell once) and ``cooc[k, b1, b2]`` the R-weighted overlap of batches of different covariates (with one,
    the intercept's sums are the kept batches' and ``cooc`` is not read); ``pen[b, k]``: the ridge penalty;
    ``lamb0``: the intercept's, added when every batch is corrected (0: none). Writes ``y[k]`` (the intercept),
    ``m[b, k]`` for each kept batch. A zero diagonal entry (a kept batch with no weight and no penalty) gives NaN
    directions, as harmonypy's do (``error_model="numpy"``: no exception), which the caller's finiteness check
    reports."""
    n_batches = keep.shape[0]
    n_cov = np.int64(0)
    for b in range(n_batches):
        n_cov = max(n_cov, batch_cov[b] + 1)
    for i in range(clusters.shape[0]):
        bad[i] = _ridge_system(clusters[i], n_cov, keep, batch_cov, rz, a00, rhs0, cooc, pen, lamb0, m, y)


@njit(cache=True)
def combination_order(cell_batches):
    """Cells sorted stably by their tuple of batches (covariate 0 first): a stable counting sort per covariate,
    the last covariate first (what ``np.argsort`` of the tuples' mixed-radix keys with ``kind="mergesort"`` gives,
    in O(n) and without compiling Numba's merge sort)."""
    n, n_cov = cell_batches.shape
    order = np.arange(n)
    spare = np.empty(n, np.int64)
    for c in range(n_cov - 1, -1, -1):
        span = 0
        for j in range(n):
            if cell_batches[j, c] + 1 > span:
                span = cell_batches[j, c] + 1
        starts = np.zeros(span + 1, np.int64)
        for j in range(n):
            starts[cell_batches[j, c] + 1] += 1
        for b in range(span):
            starts[b + 1] += starts[b]
        for p in range(n):
            j = order[p]
            b = cell_batches[j, c]
            spare[starts[b]] = j
            starts[b] += 1
        order, spare = spare, order
    return order


@njit(cache=True)
def _correct_cells(first, last, z_orig, r, m, used, cell_batches, by_combination, z_corr):
    """:func:`apply_corrections` for positions ``first .. last`` of ``by_combination`` (indices by hand: no per-row
    array views). A cell's correction is summed :data:`ACC_CHUNK` dimensions at a time in a stack accumulator whose
    loop has a fixed length: LLVM unrolls it and keeps the sums in vector registers over the clusters (the combined
    directions are stored padded with zeros to a multiple of it), instead of loading and storing them per cluster
    (100k cells x 50 PCs: 39.5 -> 22 ms a call, same bits)."""
    d = z_orig.shape[1]
    k = r.shape[1]
    n_cov = cell_batches.shape[1]
    n_chunks = (d + ACC_CHUNK - 1) // ACC_CHUNK
    # chunk x cluster x dimension: every index a loop counter from 0, so LLVM drops Numba's negative-index checks
    # (with them, the loads stayed scalar and the call took 70-80 ms instead of 22-26)
    combined = np.empty((n_chunks, k, ACC_CHUNK), np.float32)  # on the heap: a worker thread's stack may be small
    acc = _stack_f32(ACC_CHUNK)
    have = False
    corrected = False
    prev = 0
    for i in range(first, last):
        j = by_combination[i]
        if i + PREFETCH_AHEAD < last:
            ahead = by_combination[i + PREFETCH_AHEAD]
            _prefetch_row(r, ahead)
            _prefetch_row(z_orig, ahead)
        same = have
        if have:
            for c in range(n_cov):
                if cell_batches[j, c] != cell_batches[prev, c]:
                    same = False
                    break
        if not same:
            have = True
            prev = j
            corrected = False
            combined[:] = F0
            for c in range(n_cov):
                b = cell_batches[j, c]
                if not used[b]:
                    continue
                corrected = True
                for cc in range(n_chunks):
                    a0 = cc * ACC_CHUNK
                    for g in range(k):
                        for a in range(min(ACC_CHUNK, d - a0)):
                            combined[cc, g, a] += m[b, g, a0 + a]
        if not corrected:
            for a in range(d):
                z_corr[j, a] = z_orig[j, a]
            continue
        for c in range(n_chunks):
            _chunk_weighted_sum(acc, r, j, combined, c)
            a0 = c * ACC_CHUNK
            for a in range(min(ACC_CHUNK, d - a0)):
                z_corr[j, a0 + a] = z_orig[j, a0 + a] - acc[a]


@njit(cache=True, parallel=True)
def apply_corrections(z_orig, r, m, used, cell_batches, by_combination, z_corr):
    """z_corr[j] = z_orig[j] - sum_k r[j, k] * (sum over j's used batches b of m[b, k]), the batch sum in covariate
    order and the cluster sum in cluster order (float32); cells with no used batch are copied."""
    n = z_orig.shape[0]
    n_tasks = (n + CELLS_PER_TASK - 1) // CELLS_PER_TASK
    for t in prange(n_tasks):
        _correct_cells(t * CELLS_PER_TASK, min(n, (t + 1) * CELLS_PER_TASK), z_orig, r, m, used, cell_batches,
                       by_combination, z_corr)
