"""Process-wide settings for running the model on a CPU: torch's thread count and how glibc treats freed memory.

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh `mmap` and hands the heap's
free top back to the OS, so each forward pass faults its activations in again, page by page, and the kernel zeroes
every page: a page fault per page of every batch. Keeping freed memory for reuse removes them, and batches
are faster (measured in docs/engine.md). The price: the process keeps its peak memory (the model plus one batch's
activations) instead of shrinking between batches.
"""

from __future__ import annotations

import ctypes
import platform

import structlog
import torch

# mallopt(3) parameters
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_UP_TO = 2**31 - 1  # bytes of free heap top kept before trimming (mallopt takes a C int)

log = structlog.get_logger(__name__)


def configure_cpu(threads: int | None, keep_freed_memory: bool) -> None:
    if threads:
        torch.set_num_threads(threads)
    if keep_freed_memory:
        keep_freed_memory_for_reuse()


def keep_freed_memory_for_reuse() -> bool:
    """Serve large allocations from the heap and never trim it (glibc only; elsewhere a no-op returning False)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    kept = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO))
    log.debug("freed memory is kept for reuse", applied=kept)
    return kept
