"""Garbage collection paused around work that makes many small objects at once."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Pause the cyclic GC while building many small acyclic objects (headers of 10k+ leaves).

    msgpack's own performance advice: allocations trigger collections that find nothing here, and
    with a large model alive each full collection walks all of it.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
