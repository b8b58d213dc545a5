"""Start writing a file's dirty pages to disk without waiting for them.

A download synced only at its commit points would otherwise leave all its bytes for the
final ``fdatasync``; started early (Linux ``sync_file_range`` with ``SYNC_FILE_RANGE_WRITE``)
the disk writes while chunks still arrive and that sync finds little left. Only a hint: where
the call is unavailable or fails, nothing happens and the later sync does all the work.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Callable

__all__ = ["start_writeback"]

log = logging.getLogger(__name__)

_SYNC_FILE_RANGE_WRITE = 2


def _load() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call  # type: ignore[no-any-return]


_sync_file_range = _load()


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing every dirty page of ``fd`` (returns at once)."""
    if _sync_file_range is not None and _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) != 0:
        log.debug("sync_file_range failed: errno %d", ctypes.get_errno())
