"""Quiet command-line output: native library chatter kept off the terminal.

TensorFlow, XLA and the CUDA probe log through C++ absl logging straight to file
descriptor 2, most of it before absl is initialised, so neither
TF_CPP_MIN_LOG_LEVEL nor Python's logging reaches it: a CPU-only run prints
`I0000 ... oneDNN custom operations are on`, `... Could not find cuda drivers`
and `E0000 ... failed call to cuInit`, and people read the `E` as a failure.

`install()` puts a filter between file descriptor 2 and the terminal: lines in
absl's native format (`I0000 00:00:...`, `W...`, `E...`) and the banner lines
that come with them are held back; every other byte passes unchanged, in order.
Python's own `sys.stderr` is pointed at the terminal directly, so the project's
messages and tracebacks never wait on the filter. Held-back lines are kept (the
last MAX_HELD) and written to the run log once `send_held_lines_to` names one;
a fatal line (`F...`) always passes, as the process is about to die.

Deprecation notices of libraries are dropped in quiet mode as well: Python's
DeprecationWarning, PendingDeprecationWarning and FutureWarning, and the ones
TensorFlow logs through its "tensorflow" logger (`... is deprecated and will be
removed ... Instructions for updating`). `--verbose` (or FUNNEL_VERBOSE=1) keeps
all of it.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import re
import sys
import threading
import warnings

VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "FUNNEL_VERBOSE"
MAX_HELD = 2000   # native lines remembered for the run log

# absl's native prefix: severity letter, MMDD, time; e.g. "E0000 00:00:1796.5 27744 file.cc:52]".
_ABSL_LINE = re.compile(rb"^[IWE]\d{4} \d\d:\d\d:[\d.]+ +\d+ [^\]]*\] ")
# Lines that travel with absl's start-up messages but lack its prefix.
_BANNERS = (
    re.compile(rb"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    re.compile(rb"^To enable the following instructions: .* rebuild TensorFlow"),
)

_held: collections.deque = collections.deque(maxlen=MAX_HELD)
_held_lock = threading.Lock()
_log_file = None
_installed = False


def verbose_requested(argv: list[str]) -> bool:
    """True when the command line or the environment asks for every log line."""
    return VERBOSE_FLAG in argv or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def is_chatter(line: bytes) -> bool:
    """True for a native log line the quiet mode holds back (one line, newline optional)."""
    return bool(_ABSL_LINE.match(line)) or any(banner.match(line) for banner in _BANNERS)


def is_not_deprecation_notice(record: logging.LogRecord) -> bool:
    """A logging filter: False for TensorFlow's "... is deprecated ... Instructions for
    updating" records (tensorflow.python.util.deprecation), True for every other."""
    message = record.getMessage()
    return not ("deprecated" in message and "Instructions for updating" in message)


def install() -> None:
    """Filters native chatter out of file descriptor 2 and ignores library warnings.

    Call before TensorFlow is imported; a second call does nothing. Child
    processes (Beam's workers) inherit the filtered descriptor.
    """
    global _installed
    if _installed:
        return
    _installed = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # fewer lines to filter at all
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    # TensorFlow announces its own deprecations through its Python logger, not `warnings`.
    logging.getLogger("tensorflow").addFilter(is_not_deprecation_notice)
    sys.stderr.flush()
    terminal = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    # Python's own output goes to the terminal without passing the filter.
    sys.stderr = open(terminal, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                      errors="backslashreplace", closefd=False)
    worker = threading.Thread(target=_pump, args=(read_end, terminal), daemon=True,
                              name="native-log-filter")
    worker.start()

    def _drain():
        # Restoring fd 2 closes the pipe's last writer in this process; the filter
        # then sees end of file once the children that inherited it are gone too.
        try:
            sys.stderr.flush()
            os.dup2(terminal, 2)
        except OSError:
            return
        worker.join(timeout=2)

    atexit.register(_drain)


def send_held_lines_to(path: str) -> None:
    """Appends the lines held back so far, and every later one, to the file `path`."""
    global _log_file
    with _held_lock:
        try:
            _log_file = open(path, "ab", buffering=0)
            for line in _held:
                _log_file.write(line)
        except OSError:   # a full disk must not break the run; the terminal is unaffected
            _log_file = None
        _held.clear()


def _hold(line: bytes) -> None:
    global _log_file
    with _held_lock:
        if _log_file is None:
            _held.append(line)
            return
        try:
            _log_file.write(line)
        except OSError:
            _log_file = None


def _pump(read_end: int, terminal: int) -> None:
    """Copies the pipe to the terminal line by line, holding back native chatter."""
    pending = b""
    while True:
        try:
            data = os.read(read_end, 65536)
        except OSError:
            data = b""
        if not data:
            break
        pending += data
        *lines, pending = pending.split(b"\n")
        passed = bytearray()
        for line in lines:
            line += b"\n"
            if is_chatter(line):
                _hold(line)
            else:
                passed += line
        if passed:
            _write_all(terminal, bytes(passed))
    if pending:
        if is_chatter(pending):
            _hold(pending)
        else:
            _write_all(terminal, pending)
    os.close(read_end)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data):]
        except OSError:
            return
