"""One `run` at a time per pipeline root.

Two runs on the same root would write the same ML Metadata store (SQLite) and
the same staging directories at once. `hold(pipeline_root)` takes an exclusive,
non-blocking `flock` on <pipeline root>/.run.lock for the whole run; a second run
fails at once with a one-line error naming the holder. The kernel releases the
lock when the holding process ends in any way, kill -9 included, so no stale
lock is ever left to clean up. (flock is advisory and per host: two machines
sharing a root over a network file system are not kept apart.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time

LOCK_NAME = ".run.lock"


class PipelineRootBusy(RuntimeError):
    """Another run holds the pipeline root."""


@contextlib.contextmanager
def hold(pipeline_root: str):
    """Holds the lock of `pipeline_root` (created if missing) inside the `with` block."""
    os.makedirs(pipeline_root, exist_ok=True)
    path = os.path.join(pipeline_root, LOCK_NAME)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise PipelineRootBusy(
                f"pipeline root {pipeline_root} is in use by another run ({holder}); wait for "
                f"it to finish or pass another --pipeline-root") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, "
                     f"since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
