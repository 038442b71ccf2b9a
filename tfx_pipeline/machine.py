"""What the machine a figure was measured on is: CPU model, core count, vector units."""

from __future__ import annotations

import os


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> str:
    """For example 'AMD EPYC, 2 cores, AVX2, AVX-512'; 'unknown CPU, N cores' off Linux.

    The vector units are named because TensorFlow's CPU kernels differ with them
    (oneDNN picks AVX-512 code paths where it can), so figures from CPUs of one
    model name but different units are not comparable."""
    try:
        with open(cpuinfo) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return f"unknown CPU, {os.cpu_count()} cores"
    names = [l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")]
    flags = next((l.split(":", 1)[1].split() for l in lines if l.startswith("flags")), [])
    units = [label for flag, label in (("avx2", "AVX2"), ("avx512f", "AVX-512"),
                                        ("amx_tile", "AMX")) if flag in flags]
    parts = [names[0] if names else "unknown CPU", f"{len(names) or os.cpu_count()} cores"]
    return ", ".join(parts + units)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or taskset's
    limit), or os.cpu_count() where the mask is unknown. Works on every Python the
    project supports (os.process_cpu_count exists only from 3.13)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_pools(cpus: int, intra: int | None = None, inter: int | None = None) -> tuple[int, int]:
    """(intra-op, inter-op) thread-pool sizes for TensorFlow: each the CPU count unless
    given (what TensorFlow picks by itself, made explicit so it can be overridden and
    reported). A given size must be at least 1."""
    for name, value in (("intra-op", intra), ("inter-op", inter)):
        if value is not None and value < 1:
            raise ValueError(f"{name} threads must be at least 1, got {value}")
    return (intra or cpus, inter or cpus)


def configure_tensorflow_threads(intra: int | None = None,
                                 inter: int | None = None) -> tuple[int, int]:
    """Sets TensorFlow's thread pools (thread_pools of usable_cpus()) and returns them.

    Must run before TensorFlow executes its first operation; afterwards the pools are
    fixed, and asking for other sizes is an error that says so."""
    import tensorflow as tf

    cpus = usable_cpus()
    intra, inter = thread_pools(cpus, intra, inter)
    threading = tf.config.threading
    try:
        threading.set_intra_op_parallelism_threads(intra)
        threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        current = (threading.get_intra_op_parallelism_threads(),
                   threading.get_inter_op_parallelism_threads())
        # (0, 0) is TensorFlow's own choice, the CPU count.
        effective = tuple(size or cpus for size in current)
        if effective != (intra, inter):
            raise RuntimeError(f"TensorFlow already runs with thread pools {current}; "
                               f"set them before it starts") from None
    return intra, inter


# glibc's mallopt parameter number for the arena limit (malloc.h: M_ARENA_MAX).
_M_ARENA_MAX = -8


def _glibc():
    """The C library when it is glibc (it has malloc_trim), else None."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def limit_malloc_arenas(cpus: int) -> int | None:
    """Caps glibc's malloc arenas at max(2, cpus) in this process and, through
    MALLOC_ARENA_MAX, in the processes it starts (Beam's workers); returns the cap,
    or None off glibc. A value already in the environment is kept.

    glibc gives each thread that contends for the heap an arena of its own, up to
    8 per core, and a freed block returns to its own arena only; TensorFlow's and
    Beam's many threads then hold freed memory in many arenas. At 10M rows the
    Evaluator's processes peaked 8 % lower with 2 arenas (docs/scale.md)."""
    libc = _glibc()
    if libc is None:
        return None
    cap = int(os.environ.setdefault("MALLOC_ARENA_MAX", str(max(2, cpus))))
    libc.mallopt(_M_ARENA_MAX, cap)
    return cap


def release_free_memory() -> None:
    """Collects Python's garbage and hands the heap's free pages back to the system
    (glibc's malloc_trim), so a stage's peak does not stay in this process's
    resident size for the stages after it."""
    import gc

    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
