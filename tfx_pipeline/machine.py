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
