"""Telling a full disk apart from other failures, and saying where it is full.

A write() that fails with ENOSPC names no file, and Beam, TFX and TensorFlow's
file functions re-raise it as their own types (TensorFlow's as
ResourceExhaustedError with the path in the message), so the test looks at
every error in the chain and at the message text.
"""

from __future__ import annotations

import errno
import os
import shutil


def error_chain(error: BaseException | None):
    """`error`, then the errors it was raised from or while handling, in turn."""
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def is_disk_full(error: BaseException) -> bool:
    return any(getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e)
               for e in error_chain(error))


def disk_full_reason(error: BaseException, directories: list[str]) -> str | None:
    """For a full disk, one line naming the file the error names, or else the fullest of
    `directories` with its free space; None for any other error."""
    if not is_disk_full(error):
        return None
    named = next((e.filename for e in error_chain(error) if getattr(e, "filename", None)), None)
    if named:
        return f"no space left on device writing {named}"
    if not directories:
        return "no space left on device"
    fullest = min(directories, key=lambda d: shutil.disk_usage(_existing_parent(d)).free)
    free = shutil.disk_usage(_existing_parent(fullest)).free
    return (f"no space left on device under {fullest} ({free / 2**20:.1f} MB free there); "
            f"free some space or choose another directory")


def _existing_parent(path: str) -> str:
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path
