"""Independent model fits on every core, with results that do not depend on it.

Segmentation and churn fit many small models that do not depend on each other: bootstrap
refits, cross-validation folds, one candidate k after another. Each runs single-threaded
(native thread pools are held to one thread: see pipelines/segmentation/run.py), so a run
used one core of two. `ordered_map` runs them on threads - scikit-learn's k-means, NumPy
and LightGBM release the GIL while they compute - and returns their results in the order
of the inputs, so a caller that adds them up in that order gets the same figures to the
bit whatever the number of threads (tests/test_repeatable.py, tests/test_parallel.py).

Each worker thread holds OpenMP to one thread of its own: OpenMP's thread count is a
per-thread setting that a new thread takes from the environment, not from the caller's
`threadpool_limits`, and k-means adds its per-thread partial sums in an order that follows
it - one thread each keeps the figures those of a single-threaded run.

The threads are those DuckDB is given (`NEEDSEG_DUCKDB_THREADS`, default: the cores this
process may use), or `NEEDSEG_FIT_THREADS` when set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pipelines.settings import duckdb_resources, thread_count

T = TypeVar("T")
R = TypeVar("R")


def _one_openmp_thread() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="openmp")  # this thread's own setting, for its life


def workers() -> int:
    """Threads for independent fits: NEEDSEG_FIT_THREADS when set (the test suite sets 1 per
    pytest worker, as it does for BLAS and OpenMP), else NEEDSEG_DUCKDB_THREADS (default:
    the usable cores)."""
    return thread_count("NEEDSEG_FIT_THREADS") or duckdb_resources().threads


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int | None = None) -> list[R]:
    """[fn(item) for item in items], computed on up to `threads` threads (default
    `workers()`), in the items' order. An exception in any call is raised here."""
    items = list(items)
    threads = min(threads or workers(), len(items))
    if threads <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="needseg-fit", initializer=_one_openmp_thread) as pool:
        return list(pool.map(fn, items))
