"""BLAS ``?gemm`` called without holding the GIL, for the decoding products (``products``).

scipy's ``scipy.linalg.blas.sgemm`` (an f2py wrapper) keeps the GIL for the whole product. In a
server, the thread that decodes captions then stops the event loop for most of every step, and
the two threads take turns instead of running on two cores. ``scipy.linalg.cython_blas`` exports
the very same Fortran routines as C function pointers (its public ``__pyx_capi__`` table); called
through ``ctypes`` they run with the GIL released. Same library, same kernels, same bits: only
who waits changes (tests/test_captioning_products.py compares both bitwise).

``gemm_nogil(dtype)`` returns ``None`` where the table is missing (another scipy build), and the
callers keep the f2py wrapper then.
"""

from __future__ import annotations

import ctypes

import numpy as np

_P = ctypes.c_void_p
_CACHE: dict[str, object] = {}


def _capsule_pointer(capsule) -> int:
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return get_pointer(capsule, get_name(capsule))


class Gemm:
    """``C (m, n) = A (m, k) @ B (k, n)``, all column-major (Fortran order), for one dtype.

    ``__call__(m, n, k, a, lda, b, ldb, c, ldc)`` takes sizes as Python ints and the three
    matrices as data addresses; the integer arguments are passed by reference from small buffers
    kept here, so a call allocates nothing. One ``Gemm`` per thread: the buffers are reused.
    """

    def __init__(self, function, dtype: np.dtype):
        self.f = function
        scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
        self.alpha, self.beta = scalar(1.0), scalar(0.0)
        self.ints = (ctypes.c_int * 6)()  # m, n, k, lda, ldb, ldc
        base, size = ctypes.addressof(self.ints), ctypes.sizeof(ctypes.c_int)
        self.addr = [base + i * size for i in range(6)]
        self.no = ctypes.c_char_p(b"N")
        self.alpha_p, self.beta_p = ctypes.addressof(self.alpha), ctypes.addressof(self.beta)

    def __call__(self, m: int, n: int, k: int, a: int, lda: int, b: int, ldb: int, c: int, ldc: int) -> None:
        ints, addr = self.ints, self.addr
        ints[0], ints[1], ints[2], ints[3], ints[4], ints[5] = m, n, k, lda, ldb, ldc
        self.f(self.no, self.no, addr[0], addr[1], addr[2], self.alpha_p, a, addr[3], b, addr[4],
               self.beta_p, c, addr[5])


def gemm_nogil(dtype) -> Gemm | None:
    """A GIL-free ``gemm`` of float32 or float64, or None when scipy does not export one."""
    dtype = np.dtype(dtype)
    name = {np.dtype(np.float32): "sgemm", np.dtype(np.float64): "dgemm"}.get(dtype)
    if name is None:
        return None
    if name not in _CACHE:
        try:
            from scipy.linalg import cython_blas

            pointer = _capsule_pointer(cython_blas.__pyx_capi__[name])
            _CACHE[name] = ctypes.CFUNCTYPE(None, *([_P] * 13))(pointer)  # CFUNCTYPE: releases the GIL
        except (ImportError, AttributeError, KeyError, ValueError):
            _CACHE[name] = None
    function = _CACHE[name]
    return Gemm(function, dtype) if function is not None else None
