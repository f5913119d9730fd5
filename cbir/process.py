"""Process-wide settings of the long-running servers (API workers, the Streamlit app).

* Large temporaries go straight back to the operating system: glibc's malloc otherwise
  raises its mmap threshold after the first large free and then serves multi-megabyte
  arrays (distance rows, DBA matrices) from the heap, where freed memory stays resident.
  A fixed threshold (``M_MMAP_THRESHOLD``) keeps RSS tied to what is really in use.
* One BLAS thread (and one FAISS OpenMP thread) per request: requests run concurrently,
  and one query is a memory-bound matrix-vector product or one graph walk anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 * 1024


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold (True when applied; False on other C libraries)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def limit_blas_threads() -> None:
    """One BLAS thread, and one OpenMP thread for FAISS (its idle threads would spin)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:  # pragma: no cover - a dependency
        pass


def tune_server_process() -> None:
    return_large_buffers()
    limit_blas_threads()
