"""Row-invariant products (models/captioning/products.py): right values, and a row's bits never
depend on the rows beside it, whichever kind the probe picked on this BLAS."""

from __future__ import annotations

import numpy as np
import pytest

from pixelrpc.models.captioning import products as P

SHAPES = [(512, 3052), (256, 2048), (512, 512), (16, 30), (3, 1004)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_invariant_product_values_and_row_invariance(shape, dtype):
    rng = np.random.default_rng(7)
    w = rng.standard_normal(shape).astype(dtype)
    a = rng.standard_normal((300, shape[0])).astype(dtype)
    product = P.invariant_product(w)
    full = product(a)
    assert full.shape == (300, shape[1]) and full.dtype == dtype and full.flags.c_contiguous
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(full, a.astype(np.float64) @ w.astype(np.float64), rtol=tol, atol=tol * shape[0])
    # other data than the probe's, every small row count and some large ones, at several offsets
    for rows in [*range(1, 20), 31, 33, 64, 100, 255, 256, 257]:
        for offset in (0, 1, 5):
            part = product(a[offset: offset + rows])
            np.testing.assert_array_equal(part, full[offset: offset + rows], err_msg=f"{rows} rows at {offset}")


def test_tiled_product_tilings_agree():
    """Every tiling (1, 2, 4, 8-row tiles, with their own column blocks) gives the same bits here;
    the probe would send a BLAS where they do not to the padded product."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((512, 3052)).astype(np.float32)
    product = P.TiledProduct(w)
    if P.invariant_product(w).kind != product.kind:
        pytest.skip("this BLAS failed the small-kernel probe: the padded product is in use (checked above)")
    a = rng.standard_normal((8, 512)).astype(np.float32)
    eight = product(a)
    for r in (1, 2, 3, 4, 5):
        np.testing.assert_array_equal(product(a[:r]), eight[:r])
    assert {len(b) for b in product.blocks.values()} != {1}  # the tilings do differ in blocks


def test_padded_product_fallback_is_invariant():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((512, 1004)).astype(np.float32)
    product = P.PaddedProduct(w)
    a = rng.standard_normal((40, 512)).astype(np.float32)
    full = product(a)
    for rows in (1, 2, 3, 9, 17):
        np.testing.assert_array_equal(product(a[:rows]), full[:rows])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gil_free_gemm_gives_the_f2py_bits(dtype):
    """blas.gemm_nogil calls the same routine as scipy's wrapper: every tiling, the same bits."""
    from pixelrpc.models.captioning.blas import gemm_nogil

    if gemm_nogil(dtype) is None:
        pytest.skip("this scipy exports no cython_blas gemm: the f2py wrapper is used (tested above)")
    rng = np.random.default_rng(5)
    w = rng.standard_normal((256, 700)).astype(dtype)
    nogil, f2py = P.TiledProduct(w), P.TiledProduct(w, release_gil=False)
    for rows in (1, 2, 3, 8, 9, 40):
        a = rng.standard_normal((rows, 256)).astype(dtype)
        np.testing.assert_array_equal(nogil(a), f2py(a), err_msg=f"{rows} rows")


def test_products_release_the_gil():
    """While one thread multiplies, another Python thread keeps running: the longest pause it sees
    is far shorter than the BLAS call. (scipy's f2py wrapper holds the GIL for the whole call: a
    server's event loop would stop while captions decode.)"""
    import threading
    import time

    from scipy.linalg.blas import sgemm

    from pixelrpc.models.captioning.blas import gemm_nogil

    gemm = gemm_nogil(np.float32)
    if gemm is None:
        pytest.skip("this scipy exports no cython_blas gemm: products hold the GIL")
    rng = np.random.default_rng(6)
    m, k, n = 512, 4096, 2048  # one call of ~4e9 multiply-adds: tens of milliseconds
    a = np.asfortranarray(rng.standard_normal((m, k)).astype(np.float32))
    b = np.asfortranarray(rng.standard_normal((k, n)).astype(np.float32))
    c = np.empty((m, n), dtype=np.float32, order="F")

    def longest_pause(multiply) -> float:
        worker = threading.Thread(target=multiply)
        pause, last = 0.0, time.perf_counter()
        worker.start()
        while worker.is_alive():
            now = time.perf_counter()
            pause, last = max(pause, now - last), now
        worker.join()
        return pause

    held = longest_pause(lambda: sgemm(1.0, a, b, c=c, overwrite_c=True))
    free = longest_pause(lambda: gemm(m, n, k, a.ctypes.data, m, b.ctypes.data, k, c.ctypes.data, m))
    np.testing.assert_array_equal(c, sgemm(1.0, a, b))  # and the same bits
    assert free < held / 3, (free, held)
