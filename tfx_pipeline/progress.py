"""Readable progress for LocalDagRunner runs.

TFX reports each component's start, end and cache hits through absl logging.
`ComponentProgress` turns those records into one line per component
("[3/9] SchemaGen ... done in 0.1 s (cached)") and hides the rest of the
INFO-level chatter unless verbose output is asked for. An Importer that
resolves to the artifact it registered before (the same directory, unchanged
input) counts as cached too.
"""

from __future__ import annotations

import logging
import re
import sys
import time

_RUNNING = re.compile(r"Component (\S+) is running\.")
_FINISHED = re.compile(r"Component (\S+) is finished\.")
# A component's cache hit (portable/launcher.py), or an Importer's reuse (importer.py).
_CACHED = re.compile(r"A cached execution \d+ is used\.|^Reusing existing artifact$")


class ComponentProgress(logging.Handler):
    """A logging handler that prints one progress line per finished component."""

    def __init__(self, total: int, stream=None):
        super().__init__(level=logging.INFO)
        self.total = total
        self.stream = stream or sys.stderr
        self.done = 0
        self.started: dict[str, float] = {}
        self.cached: set[str] = set()
        self.current: str | None = None
        self.finished: list[tuple[str, float, bool]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if match := _RUNNING.search(message):
            self.current = match.group(1)
            self.started[self.current] = time.monotonic()
            print(f"[{self.done + 1}/{self.total}] {self.current} ...", file=self.stream, flush=True)
        elif _CACHED.search(message) and self.current:
            self.cached.add(self.current)
        elif match := _FINISHED.search(message):
            name = match.group(1)
            self.done += 1
            seconds = time.monotonic() - self.started.get(name, time.monotonic())
            cached = name in self.cached
            self.finished.append((name, seconds, cached))
            note = " (cached)" if cached else ""
            print(f"[{self.done}/{self.total}] {name} done in {seconds:.1f} s{note}",
                  file=self.stream, flush=True)


def attach(total: int, verbose: bool = False) -> ComponentProgress:
    """Installs the handler on the root logger; quietens TFX/TF/Beam unless verbose."""
    from absl import logging as absl_logging

    # TFX reports through absl at INFO. Some libraries save and restore absl's
    # verbosity around their work; setting it explicitly makes the restore land on INFO.
    absl_logging.set_verbosity(absl_logging.INFO)
    handler = ComponentProgress(total)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore")
        loggers = [root] + [logging.getLogger(name) for name in logging.root.manager.loggerDict]
        for logger in loggers:
            for other in getattr(logger, "handlers", ()):
                if other is not handler:
                    other.setLevel(logging.ERROR)
    return handler
