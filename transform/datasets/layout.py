"""What the public-dataset adapters share: finding the file and checking its layout.

An adapter reads one CSV file (optionally .gz, .bz2 or .xz) in a published
layout. Before any row is read, `require_columns` compares the file's header
with the columns the adapter needs and stops with an error naming the file, the
missing columns and the layout it expected, so a file of another layout (or of
another preprocessing of the same data) fails at once instead of row by row.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Sequence

from transform.ingest import DataValidationError, open_binary


def resolve_path(data: str | None, dataset: str, layout: str) -> str:
    """The one data file of `dataset`: --data, which must be a file (not a directory)."""
    if not data:
        raise ValueError(f"the {dataset} dataset needs its CSV file: pass --data PATH "
                         f"(expected layout: {layout})")
    if os.path.isdir(data):
        raise DataValidationError(
            f"{data}: is a directory; the {dataset} dataset reads one CSV file ({layout}). "
            f"To use several published files, concatenate them into one, keeping the first "
            f"header only")
    if not os.path.exists(data):
        raise DataValidationError(f"{data}: file not found")
    return data


def header(path: str) -> list[str] | None:
    """The names in the file's first CSV record, or None when it cannot be read
    (empty, not UTF-8, not decompressible: ingest reports those, naming the line)."""
    try:
        with io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", newline="") as text:
            return next(csv.reader(text), None)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, ValueError):
        return None


def require_columns(path: str, required: Sequence[str], layout: str) -> list[str] | None:
    """The header of `path` (None when unreadable, see `header`); raises
    DataValidationError when it lacks any of `required`."""
    names = header(path)
    if names is None:
        return None
    missing = [column for column in required if column not in names]
    if missing:
        shown = names if len(names) <= 12 else names[:12] + [f"... ({len(names)} columns)"]
        raise DataValidationError(
            f"{path}: not the expected layout ({layout}): missing column(s) {missing} "
            f"(the header has {shown})")
    return names
