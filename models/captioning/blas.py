"""BLAS ``?gemm`` called without holding the GIL, for the decoding products (``products``).

scipy's ``scipy.linalg.blas.sgemm`` (an f2py wrapper) keeps the GIL for the whole product. In a
server, the thread that decodes captions then stops the event loop for most of every step, and
the two threads take turns instead of running on two cores. ``scipy.linalg.cython_blas`` exports
the very same Fortran routines as C function pointers (its public ``__pyx_capi__`` table); called
through ``ctypes`` they run with the GIL released. Same library, same kernels, same bits: only
who waits changes (tests/test_captioning_products.py compares both bitwise).

A ``Gemm`` keeps per-thread state (its integer boxes): one per thread (``TiledProduct`` keeps one in a
``threading.local``). ``gemm_nogil(dtype)`` returns ``None`` where the table is missing (another scipy build), and the
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
    matrices as data addresses. The integer arguments go by reference to ``c_int`` objects kept
    per value (a decoder uses a handful of sizes), the function has no ``argtypes`` (ctypes then
    passes objects as they are): the call costs about what scipy's wrapper call costs (0.5 us).
    """

    def __init__(self, function, dtype: np.dtype):
        self.f = function
        scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
        self._scalars = (scalar(1.0), scalar(0.0))  # kept alive: passed by reference
        self.alpha, self.beta = (ctypes.byref(v) for v in self._scalars)
        self._no = ctypes.c_char(b"N")
        self.no = ctypes.byref(self._no)
        self._ints: dict[int, tuple] = {}  # value -> (c_int, byref of it)

    def _int(self, value: int):
        hit = self._ints.get(value)
        if hit is None:
            box = ctypes.c_int(value)
            hit = self._ints[value] = (box, ctypes.byref(box))
        return hit[1]

    def __call__(self, m: int, n: int, k: int, a: int, lda: int, b: int, ldb: int, c: int, ldc: int) -> None:
        self.run(self.prepare(m, n, k, lda, b, ldb, ldc), a, c)

    def prepare(self, m: int, n: int, k: int, lda: int, b: int, ldb: int, ldc: int) -> tuple:
        """The arguments of a call whose A and C addresses are not known yet (``run``)."""
        i = self._int
        return (self.no, self.no, i(m), i(n), i(k), self.alpha), (i(lda), _P(b), i(ldb), self.beta), i(ldc)

    def run(self, prepared: tuple, a: int, c: int) -> None:
        head, middle, ldc = prepared
        self.f(*head, _P(a), *middle, _P(c), ldc)


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
            _CACHE[name] = ctypes.CFUNCTYPE(None)(pointer)  # CFUNCTYPE (not PYFUNCTYPE): releases the GIL
        except (ImportError, AttributeError, KeyError, ValueError):
            _CACHE[name] = None
    function = _CACHE[name]
    return Gemm(function, dtype) if function is not None else None
