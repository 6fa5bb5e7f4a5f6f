"""needseg: B2B needs-based customer segmentation pipeline."""

import ctypes
import os
import sys


def _process_memory_policy() -> None:
    """How this process allocates, set before anything of needseg allocates much (docs/scale.md,
    "Memory"); the environment overrides both.

    - Arrow's allocator: its default, mimalloc, keeps what a step freed for itself; the system
      allocator hands large buffers back at once. Read by Arrow when it first allocates.
    - glibc's arenas: by default up to 8 per core, one per thread that allocates (DuckDB's,
      Arrow's, OpenMP's). Freed memory scattered over many arenas stays resident: after an
      ingest of 100k accounts 1.4 GB stayed in 20-odd arenas, 1.0 GB with two; the peak
      fell from 2.36 to 1.99 GB at the same CPU time.
    """
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    if sys.platform.startswith("linux") and "MALLOC_ARENA_MAX" not in os.environ:
        try:
            ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
        except (OSError, AttributeError):  # not glibc: its own allocator's defaults
            pass


_process_memory_policy()
