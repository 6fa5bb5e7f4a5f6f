"""needseg: B2B needs-based customer segmentation pipeline."""

import os

# Arrow's allocator for the process, unless the environment chose one. Its default,
# mimalloc, keeps what a step freed for itself: after an ingest of 100k accounts about
# 2 GB stayed resident under every later step of the same process. The system allocator
# hands large buffers back at once (`pipelines.settings.release_process_memory` trims the
# rest) and was no slower on the bench's ingest (docs/scale.md, "Memory"). Read by Arrow
# when it first allocates, so it is set before anything of needseg imports pyarrow.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
