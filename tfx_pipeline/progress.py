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
import os
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


_log_path: str | None = None


def attach(total: int, verbose: bool = False, log_path: str | None = None) -> ComponentProgress:
    """Installs the handler on the root logger; quietens TFX/TF/Beam unless verbose.

    With `log_path`, every record at INFO and above also goes to that file, and the
    libraries' error records (Beam's tracebacks, say) go only there unless verbose:
    a failed run ends in one line on the terminal (tfx_pipeline.cli) and the file
    has the rest.
    """
    global _log_path
    from absl import logging as absl_logging

    # TFX reports through absl at INFO. Some libraries save and restore absl's
    # verbosity around their work; setting it explicitly makes the restore land on INFO.
    absl_logging.set_verbosity(absl_logging.INFO)
    handler = ComponentProgress(total)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    ours = [handler]
    if log_path:
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        to_file = logging.FileHandler(log_path)
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(to_file)
        ours.append(to_file)
        _log_path = log_path
        from tfx_pipeline import quiet

        quiet.send_held_lines_to(log_path)   # TensorFlow's native lines, held off the terminal
        # A full disk must not turn every later record into a traceback on stderr.
        logging.raiseExceptions = False
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore")
        loggers = [root] + [logging.getLogger(name) for name in logging.root.manager.loggerDict]
        for logger in loggers:
            for other in getattr(logger, "handlers", ()):
                if all(other is not mine for mine in ours):
                    other.setLevel(logging.CRITICAL if log_path else logging.ERROR)
    return handler


def run_log_path() -> str | None:
    """The file the last `attach` sent the full log to, if any."""
    return _log_path
