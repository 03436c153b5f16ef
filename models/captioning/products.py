"""Row-invariant matrix products: ``a @ w`` where a row's result never depends on the other rows.

Decoding batches concurrent requests (``decoding.BatchDecoder``) and promises that a caption decoded
alone and inside any batch is bitwise the same. BLAS kernels do not give that for free: numpy sends
a one-row product to ``gemv``, OpenBLAS forwards ``M == 1`` to ``gemv`` and sends ``M * N * K``
below about 1e6 to "small matrix" kernels, and each of these sums in its own order. So a product is
built from pieces whose arithmetic is fixed, and the choice is *measured* on the BLAS in use, once
per (dtype, shape), by ``invariant_product``:

1. ``TiledProduct`` (preferred): tiles of at most ``TILE_ROWS`` rows by column blocks narrow
   enough that a tile stays within OpenBLAS's small-matrix kernels. Those kernels read the weights
   without packing them, so one row costs about what ``gemv`` costs (a step of one caption runs at
   the speed of the plain numpy loop) and 256 rows about what one big ``gemm`` costs; each output
   element is one multiply-add chain over K, so every row gets the same bits in any tile (measured
   here: x86-64 with AVX-512, OpenBLAS 0.3.31).
2. ``PaddedProduct`` (fallback): every product through the level-3 ``gemm`` drivers, rows padded
   where the BLAS would switch kernels (``gemm_plan``). Invariant everywhere it was measured, but a
   single row pays for packing the weights (2-4x ``gemv``).

A candidate is used only if random rows multiplied in every probed row count and offset equal,
bitwise, the same rows inside a large product (``_row_invariant``); a BLAS that fails both probes
gets 256-row products (always invariant, slow for small batches).
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from pixelrpc.models.captioning.blas import gemm_nogil

log = logging.getLogger("pixelrpc.captioning")

MAX_GEMM_ROWS = 256  # longer padded products are cut into 256-row pieces
SMALL_PRODUCT_ROWS = 16
TILE_ROWS = 8
COL_ALIGN = 16  # column blocks are whole micro-tiles wide, so a column is computed alike in every tiling
SMALL_KERNEL_MNK = 1_000_000  # OpenBLAS takes M * N * K up to this to its small-matrix kernels
# Row counts compared, likely failures first: tails of 8-row micro-kernels, the small-matrix cut-off
# (small row counts), the 192-row blocking of some kernels, and every count up to 40.
_PROBE_ROWS = tuple(dict.fromkeys(
    (1, 2, 3, 5, 7, 9, 193, 195, 197, 199, 200, 208, 256, 255, 129, 128, 127, 96, 65, 64, 63, *range(1, 41))))
_CHOSEN: dict[tuple, object] = {}


def _gemm_for(dtype: np.dtype):
    """``gemm(1.0, a, b)`` of the given dtype: the BLAS level-3 routine, called directly.

    The Fortran ``?gemm`` entry point that scipy wraps keeps any row count on the ``gemm`` drivers
    (numpy would hand a one-row product to ``gemv``).
    """
    from scipy.linalg.blas import get_blas_funcs

    return get_blas_funcs("gemm", dtype=dtype)


class GemmProduct:
    """``a @ w`` through BLAS ``gemm`` kernels only (not yet padded: see ``PaddedProduct``).

    In float32, fewer than ``SMALL_PRODUCT_ROWS`` rows go to scipy's Fortran ``gemm`` and more to
    ``numpy.matmul`` (CBLAS ``gemm``, faster for many rows); both reach the same kernels. In float64
    OpenBLAS's CBLAS and Fortran paths differ for some shapes, so every product goes to scipy's.
    """

    def __init__(self, w: np.ndarray):
        self.c = np.ascontiguousarray(w)  # (K, M) for numpy
        self.f = np.asfortranarray(w)  # (K, M) for scipy
        self.gemm = _gemm_for(w.dtype)
        self.shape, self.dtype = w.shape, w.dtype
        self.small = SMALL_PRODUCT_ROWS if w.dtype == np.float32 else 1 << 62

    def __call__(self, a: np.ndarray) -> np.ndarray:
        if a.shape[0] < self.small:  # C-ordered result: every caller gets rows laid out alike
            return np.ascontiguousarray(self.gemm(1.0, np.asfortranarray(a), self.f))
        return np.matmul(np.ascontiguousarray(a), self.c)


class PaddedProduct:
    """``GemmProduct`` with rows padded to at least ``min_rows`` and a multiple of ``block``, and
    products longer than ``MAX_GEMM_ROWS`` cut, so every row gets the same arithmetic."""

    kind = "padded gemm"

    def __init__(self, w: np.ndarray, plan: tuple[int, int] | None = None):
        self.inner = GemmProduct(w)
        self.shape, self.dtype = w.shape, w.dtype
        self.plan = plan or gemm_plan(self.inner)

    def __call__(self, a: np.ndarray) -> np.ndarray:
        R = a.shape[0]
        if R > MAX_GEMM_ROWS:
            return np.concatenate([self(a[i: i + MAX_GEMM_ROWS]) for i in range(0, R, MAX_GEMM_ROWS)])
        min_rows, block = self.plan
        rows = max(min_rows, -(-R // block) * block)
        if rows == R:
            return self.inner(a)
        padded = np.zeros((rows, a.shape[1]), dtype=self.dtype)
        padded[:R] = a
        # A copy, not a view: numpy 2.4's in-place unary ufuncs (``np.negative(x, out=x)``) gave wrong
        # values on a (1, N) view with a non-unit inner stride, the shape a padded F-ordered result has.
        return np.ascontiguousarray(self.inner(padded)[:R])


class TiledProduct:
    """``a @ w`` as tiles of at most ``TILE_ROWS`` rows of ``a`` times a column block of ``w``, each
    tile within the small-matrix kernels (``rows * cols * K <= SMALL_KERNEL_MNK``).

    A tile of r rows uses the widest blocks its size allows (1, 2, 4 or 8 rows: fewer, wider calls
    for a few rows), every block a multiple of ``COL_ALIGN`` columns wide, so a column falls in the
    same place of the kernel's micro-tiles in every tiling; ``invariant_product``'s probe checks that
    every tiling gives every row the same bits. The result is C-ordered (R, M).
    """

    kind = "small-kernel tiles"

    def __init__(self, w: np.ndarray, *, release_gil: bool = True):
        K, M = w.shape
        self.shape, self.dtype = w.shape, w.dtype
        self.release_gil = release_gil  # False: scipy's f2py gemm (holds the GIL), for comparison
        self.f = np.asfortranarray(w)  # a column block of it is F-contiguous: BLAS reads it in place
        self.blocks = {}  # tile rows -> [(start, stop)] column blocks
        for rows in (1, 2, 4, TILE_ROWS):
            cols = max(COL_ALIGN, SMALL_KERNEL_MNK // (rows * K) // COL_ALIGN * COL_ALIGN)
            self.blocks[rows] = [(j, min(j + cols, M)) for j in range(0, M, cols)]
        self.gemm = _gemm_for(w.dtype)
        self._local = threading.local()  # one GIL-free gemm (argument buffers) per thread

    def _blocks_for(self, r: int) -> list[tuple[int, int]]:
        """The column blocks of an r-row tile: those of the smallest tiling (1, 2, 4, 8) that holds it."""
        return self.blocks[next(t for t in self.blocks if t >= r)]

    def _plans(self):
        """This thread's GIL-free gemm calls, prepared per tile size: {rows: [(args, j)]}, or None
        where scipy exports no ``cython_blas`` (the f2py wrapper is used then)."""
        plans = getattr(self._local, "plans", False)
        if plans is False:
            gemm = gemm_nogil(self.dtype) if self.release_gil else None
            plans = None
            if gemm is not None:
                K, size, base = self.shape[0], self.dtype.itemsize, self.f.ctypes.data
                # column j of F-ordered B starts j*K items in; of C, j*r items in
                plans = {r: [(gemm.prepare(r, k - j, K, r, base + j * K * size, K, r), j * r * size)
                             for j, k in self._blocks_for(r)]
                         for r in range(1, TILE_ROWS + 1)}
                self._local.gemm = gemm
            self._local.plans = plans
        return plans

    def _tile(self, a: np.ndarray) -> np.ndarray:
        """At most TILE_ROWS rows (r, K) -> (r, M), F-ordered, each block written in place.

        The blocks run through ``blas.gemm_nogil`` (the GIL is released while BLAS works, so a
        server's event loop keeps running), or scipy's f2py ``gemm`` where that is unavailable."""
        r = a.shape[0]
        out = np.empty((r, self.shape[1]), dtype=self.dtype, order="F")
        tile = np.asfortranarray(a)
        plans = self._plans()
        if plans is None:
            for j, k in self._blocks_for(r):
                self.gemm(1.0, tile, self.f[:, j:k], c=out[:, j:k], overwrite_c=True)
            return out
        run, a_ptr, c_ptr = self._local.gemm.run, tile.ctypes.data, out.ctypes.data
        for prepared, offset in plans[r]:
            run(prepared, a_ptr, c_ptr + offset)
        return out

    def __call__(self, a: np.ndarray) -> np.ndarray:
        R = a.shape[0]
        if R <= TILE_ROWS:
            return np.ascontiguousarray(self._tile(a))
        out = np.empty((R, self.shape[1]), dtype=self.dtype)
        for i in range(0, R, TILE_ROWS):
            out[i: i + TILE_ROWS] = self._tile(a[i: i + TILE_ROWS])
        return out


def _row_invariant(product, k: int, dtype: np.dtype, rows: tuple[int, ...] = _PROBE_ROWS) -> bool:
    """Whether random rows multiplied in each probed row count, at offsets 0 and 3, equal (bitwise)
    the same rows inside one ``MAX_GEMM_ROWS + 3``-row product."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((MAX_GEMM_ROWS + 3, k)).astype(dtype)
    ref = product(a)
    for r in rows:
        for offset in (0, 3):
            if not np.array_equal(product(a[offset: offset + r]), ref[offset: offset + r]):
                return False
    return True


def gemm_plan(product: GemmProduct) -> tuple[int, int]:
    """``(min_rows, block)`` for ``PaddedProduct``: the smallest padding with which every probed row
    count gives every row the bits it gets inside a 256-row product; ``(256, 16)`` when none does."""
    key = ("plan", product.dtype.str, product.shape)
    if key in _CHOSEN:
        return _CHOSEN[key]
    rng = np.random.default_rng(0)
    a = rng.standard_normal((MAX_GEMM_ROWS, product.shape[0])).astype(product.dtype)
    ref = product(a)

    def passes(min_rows: int, block: int) -> bool:
        for r in _PROBE_ROWS:
            rows = max(min_rows, -(-r // block) * block)
            padded = np.zeros((rows, a.shape[1]), dtype=a.dtype)
            padded[:r] = a[:r]
            if not np.array_equal(product(padded)[:r], ref[:r]):
                return False
        return True

    plan = (MAX_GEMM_ROWS, 16)  # nothing smaller passes: every product gets 256 rows
    for block in (1, 2, 4, 8, 16):
        found = next((m for m in (1, 2, 4, 8, 16, 32, 64) if m % block == 0 and passes(m, block)), None)
        if found is not None:
            plan = (found, block)
            break
    _CHOSEN[key] = plan
    return plan


def invariant_product(w: np.ndarray):
    """The fastest row-invariant product by ``w`` (K, M) on this BLAS: ``TiledProduct`` when it
    passes the probe for this dtype and inner dimension, else ``PaddedProduct``. The probe runs once
    per (dtype, shape)."""
    key = ("kind", w.dtype.str, w.shape)
    kind = _CHOSEN.get(key)
    if kind is None:
        probe = np.random.default_rng(1).standard_normal(w.shape).astype(w.dtype)
        kind = "tiled" if _row_invariant(TiledProduct(probe), w.shape[0], w.dtype) else "padded"
        if kind == "padded":
            log.info("small-kernel tiles are not row-invariant on this BLAS for %s %s: padded gemm",
                     w.dtype, w.shape)
        _CHOSEN[key] = kind
    return TiledProduct(w) if kind == "tiled" else PaddedProduct(w)
