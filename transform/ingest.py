"""Input checks and conversion of a CSV, Parquet or TFRecord input into typed
tf.Example records.

Reading CSV. The file is UTF-8 text (a byte-order mark before the header is
allowed), optionally compressed (.gz, .bz2, .xz), with a header row and comma
separated fields; LF, CRLF and CR line ends are all accepted, and a field in
double quotes may hold commas, quotes ("" inside quotes) and line breaks. These
stop the ingest with `DataValidationError`, whatever `bad_rows` says, because
no row of such a file can be trusted:

  an empty file, or a header without data rows
  bytes that are not UTF-8, or a NUL byte (binary data)
  a physical line longer than MAX_LINE_BYTES (1 MiB)
  a duplicate name in the header (checked before any row is read)
  a column the spec needs missing from the header
  a row with more or fewer fields than the header, a quote never closed, or a
  field longer than csv.field_size_limit() (131,072 characters by default)

A blank line (or one of only spaces) is not a row: it is skipped and counted
(`blank_lines`, logged). A header column the spec does not use is ignored, with
a one-line note naming it.

Line numbers are physical lines of the file: the header starts at line 1, and a
row is numbered by the line it starts on, so a quoted field with line breaks
moves every later row's number down by the breaks it holds.

Reading Parquet (`transform.formats.ParquetReader`). The input is a Parquet
file, or a directory whose files named *.parquet are read in name order (not
subdirectories; names starting with "." or "_", such as _SUCCESS, and every
other name are skipped and listed in a note). Only the spec's columns are read,
CHUNK_ROWS rows at a time. Each cell becomes the text a CSV cell would hold, and
the checks below run on that text: null -> empty (a missing_value), integers
and decimals -> their digits, float64 -> the shortest text that reads back to
the same double, float32 -> the shortest that reads back to the same float32
(nan and inf included, so they are non_finite), bool -> 1 and 0 (in a string
column too), strings and binary -> UTF-8 text; dictionary-encoded columns are
decoded. A string in a number column is therefore an unparsable_number, as in
a CSV file. These stop the ingest (naming the file, and the row and column for
a cell): a file that is not Parquet or cannot be read, a spec column missing
from a file's schema or repeated in it, a nested column (list, struct, map) or
one of another type (timestamps, dates, ...) among the spec's, and binary that
is not UTF-8. Rows are numbered from 1 within their file ("row 5"); the rejects
file has `_file` and `_row` columns instead of `_line`.

Reading TFRecord (`transform.formats.TFRecordReader`). The input is a TFRecord
file of serialized tf.Examples, or a directory whose files are all read in name
order (TFRecord files have no one suffix; names starting with "." or "_" are
skipped). Each file is uncompressed or GZIP: the first that reads its first
record, GZIP tried first for a name ending in .gz (ZLIB is not read). Records
are read CHUNK_ROWS at a time. Each spec feature of a record must hold one
value, which becomes a text cell as above: bytes_list -> UTF-8 text,
int64_list -> digits, float_list -> the float32's shortest text (the usual
kinds are bytes_list for string features and int64_list or float_list for
numbers; another kind is read as its text, so bytes in a number feature are an
unparsable_number). A feature absent from the record or with no values is a
missing_value; one with several values is a `multiple_values` problem (below).
These stop the ingest: a file that is neither uncompressed nor GZIP TFRecord, a
corrupt or cut-short file (naming the first record that cannot be read), a
record that is not a tf.Example (also a tf.SequenceExample), bytes that are not
UTF-8, and a spec feature that no record among a file's first CHUNK_ROWS
records has (a missing column: a misspelt name in the spec would otherwise make
every row a missing_value, or an optional feature silently its default).
Records are numbered from 1 within their file ("record 5, feature 'age'"); the
rejects file has `_file` and `_record` columns.

Checks. Every row is then checked against the dataset spec; a cell's text is
stripped of surrounding white space first. Reasons a row is bad:

  missing_value      an empty cell in a required column; in number columns also
                     the spellings NA, N/A, null and None (any case)
  unparsable_number  a cell that is not a number (ASCII digits, optional sign,
                     decimal point and exponent: 12, -0.5, 1e3, .5) or, in an
                     integer column, a number with a fraction
  out_of_range       a number too large for the column's type: float32 for
                     numeric features and the core target (1e308 is finite as
                     float64 but not as float32), int64 for integer tokens
                     (beyond +-2**53 these must be written as plain digits)
  non_binary_label   a chain step that is not 0 or 1
  chain_violation    a step that is 1 while a valid previous step is 0, or (for a
                     gated core target) a non-zero target after a valid 0 last step
  negative_target    a finite continuous core target below zero
  non_finite         nan or inf (any case, optional sign, also "infinity") in a
                     number column
  multiple_values    (TFRecord) a feature with more than one value; the checks
                     skip that cell, and the rejects file shows its values as
                     "[a, b]"

In a string column every non-empty cell is a token, NA, null and nan included;
an empty one is a missing_value. -0.0 is a valid number. A problem is reported
in the cell that has it only: a bad step does not also make the next step a
chain_violation.

With `bad_rows="error"` (the default) the first problem raises
`DataValidationError` naming the file, line (row, record) and column, with the
count of every problem found. With `bad_rows="reject"` the bad rows are written,
unchanged and with their line (row, record) numbers and reasons, to a rejects CSV, and the per-reason counts
are returned; the remaining rows are converted. Nothing is dropped silently:
rows read == rows written + rows rejected.

Derived columns. A dataset may pass a `Prepare` hook (a name with a version,
the source columns it reads, and a function) that adds columns to each chunk's
text frame before the checks, e.g. labels derived from other columns. A source
cell it cannot derive from is a `CellProblem` naming the source column and a
reason (the parse reasons above, or the hook's own); its row is reported or
rejected like any other, and the rejects file holds the row as read, without
the derived columns. The hook's name is part of the ingest fingerprint.

Duplicates. The split hashes the whole row, so exact duplicate rows always land
in the same split. Ingest counts written rows equal to an earlier written row
(`duplicate_rows`, by a 64-bit digest per distinct row: 8 bytes each) and, when
they are more than DUPLICATE_WARN_SHARE of the rows and the spec splits by whole
row, logs one warning advising `split.partition_column`.

`ingest` reads the input in chunks of at most `CHUNK_ROWS` rows of one file,
so its memory does not grow with the input (beyond the digests); `ingest_csv` is
`ingest` of one CSV file. In error mode it stops at the first chunk with a
problem; the counts in the message are that chunk's.

It writes the good rows already split into train and eval, in the layout of a
TFX Examples artifact, so the pipeline registers the directory as its Examples
with an Importer instead of copying it through an ExampleGen:

  <staging root>/<spec name>-<fingerprint>/
    examples/Split-train/data-NNNNN.tfrecord.gz   one GZIP shard per chunk and split
    examples/Split-eval/data-NNNNN.tfrecord.gz
    summary.json                                  source, format, rows read,
                                                  written, per split, duplicate
                                                  rows, blank lines
    rejects.csv                                   with --bad-rows reject (unless given)

The split is ExampleGen's hash split (`SplitRule`), so a row lands in the split
ImportExampleGen would have put it in. Within a chunk the rows are written in a
seeded random order, standing in for the shuffle ExampleGen does while it writes.
"""

from __future__ import annotations

import bz2
import collections
import csv
import dataclasses
import gzip
import hashlib
import io
import itertools
import json
import lzma
import math
import os
import re
import shutil
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from transform.spec import DatasetSpec

BAD_ROW_MODES = ("error", "reject")
# Bump when the written record layout changes, so staged data is rebuilt.
# 2: one shard per chunk (data-NNNNN.tfrecord.gz)
# 3: shards split into examples/Split-train and examples/Split-eval, shuffled per chunk
# 4: physical line numbers, out_of_range, stricter parsing; summary counts duplicates
_RECORD_LAYOUT_VERSION = "4"
CHUNK_ROWS = 250_000           # rows read, checked and written at a time
_ENCODE_ROWS = 65536           # rows per Arrow batch when encoding tf.Examples
SPLIT_NAMES = ("train", "eval")  # the Examples artifact's splits, in this order
HASH_BUCKETS = 100             # ExampleGen's buckets: train 100 - eval_percent, eval eval_percent
EXAMPLES_SUBDIR = "examples"   # the Examples artifact's directory inside an ingest directory
MAX_LINE_BYTES = 1 << 20       # longest physical line accepted (also the scan's block size)
DUPLICATE_WARN_SHARE = 0.01    # warn when more than this share of written rows are duplicates
MISSING_SPELLINGS = frozenset({"", "na", "n/a", "null", "none"})  # lower-cased, in number columns
_INT64_RANGE = (-(1 << 63), (1 << 63) - 1)
_EXACT_FLOAT_INT = float(1 << 53)   # integers written as floats must stay below this
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NON_FINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_SHOWN_CHARS = 40              # longest cell text quoted in a message


class DataValidationError(ValueError):
    """The input data breaks the spec; the message names file, line (row, record) and column."""


@dataclasses.dataclass(frozen=True)
class RowUnit:
    """What a row's number counts in messages and the rejects file."""

    noun: str            # "line": a CSV file's physical line; "row", "record": 1-based in the file
    field: str           # what a cell's column is called: "column" or "feature"
    first: int           # the number of a file's first data row (CSV: 2, after the header)
    names_file: bool     # the rejects file gets a `_file` column (inputs of several files)

    @property
    def rejects_column(self) -> str:
        """The rejects file's column of row numbers: `_line`, `_row` or `_record`."""
        return f"_{self.noun}"


LINE = RowUnit("line", "column", 2, names_file=False)    # CSV
ROW = RowUnit("row", "column", 1, names_file=True)       # Parquet
RECORD = RowUnit("record", "feature", 1, names_file=True)  # TFRecord of tf.Examples


@dataclasses.dataclass(frozen=True)
class IngestResult:
    """What ingesting one source file produced."""

    examples_dir: str          # the ingest directory, holding examples/Split-<split>/
    rows_read: int
    rows_written: int
    reject_counts: Mapping[str, int]  # reason -> number of rejected rows
    rejects_path: str | None   # CSV of rejected rows, when any were rejected
    reused: bool               # True when an identical earlier ingest was reused
    split_rows: Mapping[str, int] = dataclasses.field(default_factory=dict)  # split -> rows
    duplicate_rows: int = 0    # written rows equal to an earlier written row
    blank_lines: int = 0       # blank lines skipped (not rows)

    @property
    def examples_uri(self) -> str:
        """The Examples artifact's directory (Split-train/ and Split-eval/ inside)."""
        return os.path.join(self.examples_dir, EXAMPLES_SUBDIR)


@dataclasses.dataclass(frozen=True)
class CellProblem:
    """A source cell a `Prepare` hook could not derive from, or a cell a reader could
    not read as one value (`Chunk.problems`): the row (position in the chunk's
    frame), the source column, the reason and the message detail."""

    row: int
    column: str
    reason: str
    detail: str


@dataclasses.dataclass(frozen=True)
class Prepare:
    """A per-chunk hook that derives columns from the text frame before the checks.

    `derive(frame)` returns (the frame with the derived columns added as text, the
    CellProblems of source cells that made a derived cell impossible). The derived
    cells of such a row must still be valid text (e.g. "0"), so that the problem is
    reported once, in its source cell. `name` identifies the rule, with a version,
    in the ingest fingerprint: change it when the rule changes. `reads` are the
    source columns the hook needs (a file without them stops the ingest; they are
    not noted as ignored).
    """

    name: str
    derive: Callable[[pd.DataFrame], tuple[pd.DataFrame, Sequence[CellProblem]]]
    reads: tuple[str, ...] = ()


@dataclasses.dataclass
class _Problems:
    """Problems found in a table, one entry per (row, column, reason)."""

    rows: list = dataclasses.field(default_factory=list)
    columns: list = dataclasses.field(default_factory=list)
    reasons: list = dataclasses.field(default_factory=list)
    details: list = dataclasses.field(default_factory=list)

    def add(self, mask: np.ndarray, column: str, reason: str, detail_for_row):
        for row in np.flatnonzero(mask):
            self.rows.append(int(row))
            self.columns.append(column)
            self.reasons.append(reason)
            self.details.append(detail_for_row(int(row)))

    def add_one(self, problem: CellProblem) -> None:
        """Adds one problem found elsewhere (by a reader or a Prepare hook)."""
        self.rows.append(int(problem.row))
        self.columns.append(problem.column)
        self.reasons.append(problem.reason)
        self.details.append(problem.detail)

    def __len__(self):
        return len(self.rows)


# ---------------------------------------------------------------- reading

def open_binary(path: str):
    """The file's bytes, decompressed by its suffix (.gz, .bz2, .xz; else as is)."""
    openers = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
    return openers.get(os.path.splitext(path)[1].lower(), open)(path, "rb")


def _line_breaks(data) -> int:
    """Line breaks in `data` (str or bytes) counting LF, CRLF and a lone CR once each."""
    lf, cr = ("\n", "\r") if isinstance(data, str) else (b"\n", b"\r")
    return data.count(lf) + data.count(cr) - data.count(cr + lf)


def _valid_utf8_prefix(data: bytes, at_end: bool) -> tuple[int, int | None]:
    """(length of the leading valid UTF-8 in `data`, offset of an invalid byte or None).

    A multi-byte sequence cut off by the end of `data` is not invalid unless `at_end`.
    """
    try:
        data.decode("utf-8")
        return len(data), None
    except UnicodeDecodeError as error:
        if error.reason == "unexpected end of data" and not at_end:
            return error.start, None
        return error.start, error.start


class _Scan:
    """Position while scanning a file's bytes: line (1-based) and bytes into that line."""

    def __init__(self):
        self.line, self.column, self.size = 1, 0, 0

    def position_of(self, data: bytes, offset: int) -> tuple[int, int]:
        """(line, 1-based byte in the line) of `offset` in `data`, which starts here."""
        before = data[:offset]
        last = max(before.rfind(b"\n"), before.rfind(b"\r"))
        column = offset - last if last >= 0 else self.column + offset + 1
        return self.line + _line_breaks(before), column

    def advance(self, data: bytes) -> None:
        """Moves past `data` (which must not end inside a CRLF)."""
        last = max(data.rfind(b"\n"), data.rfind(b"\r"))
        self.line += _line_breaks(data)
        self.column = len(data) - last - 1 if last >= 0 else self.column + len(data)
        self.size += len(data)

    def longest_line_end(self, data: bytes) -> int | None:
        """Offset in `data` where the current line passes MAX_LINE_BYTES, or None.

        Lines that start and end inside `data` are shorter than MAX_LINE_BYTES,
        because `data` is at most one block (MAX_LINE_BYTES) plus a few bytes.
        """
        breaks = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
        first = min(breaks) if breaks else len(data)
        over = MAX_LINE_BYTES - self.column
        if first > over:
            return over
        last = max(data.rfind(b"\n"), data.rfind(b"\r"))
        return None if len(data) - last - 1 <= MAX_LINE_BYTES else last + 1 + MAX_LINE_BYTES


def scan_text(path: str) -> None:
    """Reads the (decompressed) file once in blocks, in bounded memory.

    Raises DataValidationError, naming the line and byte, when the file is
    empty, is not UTF-8, holds a NUL byte or has a line longer than MAX_LINE_BYTES;
    also when it cannot be decompressed.
    """
    scan, pending = _Scan(), b""
    try:
        with open_binary(path) as handle:
            while True:
                block = handle.read(MAX_LINE_BYTES)
                data = pending + block
                if not data:
                    break
                valid, invalid = _valid_utf8_prefix(data, at_end=not block)
                keep = valid - 1 if block and data[valid - 1:valid] == b"\r" else valid
                _check_block(path, scan, data[:keep], data, invalid)
                scan.advance(data[:keep])
                pending = data[keep:]
                if not block:
                    break
    except (OSError, EOFError, lzma.LZMAError) as error:
        raise DataValidationError(f"{path}: cannot read or decompress the file: {error}") from None
    if scan.size == 0:
        raise DataValidationError(f"{path}: the file is empty (0 bytes; expected a header row)")


def _check_block(path: str, scan: _Scan, text: bytes, data: bytes, invalid: int | None) -> None:
    """Raises for a NUL byte or an overlong line in `text`, or the invalid byte of `data`."""
    nul = text.find(b"\x00")
    if nul >= 0:
        line, byte = scan.position_of(text, nul)
        raise DataValidationError(f"{path} line {line}, byte {byte}: a NUL byte (binary data, "
                                  f"not CSV text)")
    too_long = scan.longest_line_end(text)
    if too_long is not None:
        line, _ = scan.position_of(text, too_long)
        raise DataValidationError(f"{path} line {line}: longer than {MAX_LINE_BYTES:,} bytes "
                                  f"(MAX_LINE_BYTES); not a CSV file of rows")
    if invalid is not None:
        line, byte = scan.position_of(data, invalid)
        raise DataValidationError(
            f"{path} line {line}, byte {byte}: not UTF-8 text (byte 0x{data[invalid]:02x}); "
            f"save the file as UTF-8")


@dataclasses.dataclass(frozen=True)
class TextChunk:
    """Up to CHUNK_ROWS rows of a CSV file as text, with where they are in the file."""

    frame: pd.DataFrame   # one string column per header name
    lines: np.ndarray     # physical line on which each row starts (int64)
    blank_lines: int      # blank lines skipped in this stretch of the file


def read_text_table(path: str, rename: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Reads a CSV (optionally compressed) with every cell as a string, nothing inferred."""
    return next(read_text_chunks(path, rename, chunk_rows=None))


def read_text_chunks(path: str, rename: Mapping[str, str] | None = None,
                     chunk_rows: int | None = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """Yields the CSV as string DataFrames of up to `chunk_rows` rows (None: one frame).

    A file with a header and no rows yields one empty frame.
    """
    for chunk in read_numbered_chunks(path, rename, chunk_rows):
        yield chunk.frame


def read_numbered_chunks(path: str, rename: Mapping[str, str] | None = None,
                         chunk_rows: int | None = CHUNK_ROWS) -> Iterator[TextChunk]:
    """Yields the CSV's rows as `TextChunk`s of up to `chunk_rows` rows (None: one chunk),
    at least one (empty for a header-only file).

    Two readers go through the file in step: Python's csv module checks every
    record's field count and finds the line it starts on; pandas' C reader (fast,
    and its strings sit column by column in memory, which the checks need to be
    fast) gives the cells. pandas alone is not enough: it silently drops or
    shifts fields of a row with more fields than the header when that row
    starts a chunk. Raises DataValidationError for the structural problems in
    the module docstring.
    """
    if not os.path.exists(path):
        raise DataValidationError(f"{path}: file not found")
    scan_text(path)
    with io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", newline="") as text:
        reader = csv.reader(text, strict=True)
        header = _read_header(path, reader, rename)
        frames = _pandas_chunks(path, chunk_rows)
        yielded = False
        while True:
            starts, blank = _next_layout(path, reader, len(header), chunk_rows)
            if not len(starts):
                if not yielded:
                    yield TextChunk(pd.DataFrame(columns=header, dtype=object), starts, 0)
                return
            yield _to_chunk(path, header, next(frames), starts, blank)
            yielded = True


def _pandas_chunks(path: str, chunk_rows: int | None) -> Iterator[pd.DataFrame]:
    """pandas' string frames of the file, blank lines kept as rows, header row skipped."""
    options = dict(dtype=str, keep_default_na=False, na_filter=False, skip_blank_lines=False,
                   encoding="utf-8", index_col=False)
    try:
        if chunk_rows is None:
            yield pd.read_csv(path, **options)
        else:
            yield from pd.read_csv(path, chunksize=chunk_rows, **options)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:   # the csv reader found none
        raise DataValidationError(f"{path}: not a readable CSV file: "
                                  f"{' '.join(str(error).split())}") from None


def _next_layout(path: str, reader, fields: int, count: int | None):
    """Reads up to `count` records with the csv reader; returns (the line each starts on,
    mask of blank lines). Raises for a record whose field count is not `fields`, and
    for invalid CSV (a quote never closed, a field over csv.field_size_limit())."""
    starts, blank = [], []
    previous = reader.line_num
    try:
        for record in itertools.islice(reader, count):
            starts.append(previous + 1)
            previous = reader.line_num
            if len(record) != fields:
                if not _is_blank(record):
                    raise DataValidationError(f"{path} line {starts[-1]}: {len(record)} "
                                              f"field(s) where the header has {fields}")
                blank.append(len(starts) - 1)
    except csv.Error as error:
        raise DataValidationError(f"{path} line {previous + 1}: not valid CSV: {error} (in the "
                                  f"row that starts on this line)") from None
    mask = np.zeros(len(starts), dtype=bool)
    mask[blank] = True
    return np.array(starts, dtype=np.int64), mask


def _read_header(path: str, reader, rename: Mapping[str, str] | None) -> list[str]:
    """The header's column names (after `rename`); raises for a blank or duplicate header."""
    header = next(reader, None)
    if not header or not any(name.strip() for name in header):
        raise DataValidationError(f"{path} line 1: the header row is empty")
    names = [(rename or {}).get(name, name) for name in header]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataValidationError(f"{path} line 1: duplicate column name(s) {repeated} in the "
                                  f"header")
    return names


def _is_blank(record: list[str]) -> bool:
    """A record of a blank line, or of a line of only white space."""
    return not record or (len(record) == 1 and not record[0].strip())


def _to_chunk(path: str, header: list[str], frame: pd.DataFrame, starts: np.ndarray,
              blank: np.ndarray) -> TextChunk:
    """pandas' frame of the records whose start lines are `starts`, without blank lines."""
    if len(frame) != len(starts):
        raise DataValidationError(
            f"{path} lines {starts[0]}-{starts[-1]}: pandas read {len(frame)} rows where the "
            f"csv module read {len(starts)}; check the quoting in these lines")
    frame.columns = header
    if blank.any():
        frame = frame[~blank].reset_index(drop=True)
    return TextChunk(frame, starts[~blank], int(blank.sum()))


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Up to CHUNK_ROWS rows of one input file as text, what `ingest` checks and writes."""

    frame: pd.DataFrame     # one column of str cells per column read
    numbers: np.ndarray     # each row's place in `source` (int64), counted in `unit`
    source: str             # the file the rows are from
    unit: RowUnit = LINE
    blank_lines: int = 0    # blank lines skipped in this stretch of the file (CSV)
    ignored: tuple[str, ...] = ()   # columns (features) of the file the spec does not use
    # Cells the reader could not turn into one text value (a tf.Example feature with
    # several values): reported for that reason only (check_table's `unreadable`).
    problems: tuple[CellProblem, ...] = ()


class CsvReader:
    """The chunk reader of one CSV file (see `ingest` for what a reader provides)."""

    format = "csv"
    unit = LINE

    def __init__(self, path: str, rename: Mapping[str, str] | None = None):
        if not os.path.exists(path):
            raise DataValidationError(f"{path}: file not found")
        self.source, self.rename = path, dict(rename or {})
        self.files, self.ignored_files = [path], []

    def fingerprint_options(self):
        """What besides the bytes names the ingest (the rename, as before other formats)."""
        return sorted(self.rename.items())

    def chunks(self, wanted: Sequence[str], required: Sequence[str],
               spec_name: str) -> Iterator[Chunk]:
        """The file's rows, CHUNK_ROWS at a time (every header column; `check_table`
        reports missing ones, so `required` and `spec_name` are not used here)."""
        for text in read_numbered_chunks(self.source, self.rename, CHUNK_ROWS):
            ignored = tuple(column for column in text.frame.columns if column not in wanted)
            yield Chunk(text.frame, text.lines, self.source, LINE, text.blank_lines, ignored)


def shown(text: str) -> str:
    """`text` quoted for a message, cut to _SHOWN_CHARS characters."""
    if len(text) <= _SHOWN_CHARS:
        return repr(text)
    return f"{text[:_SHOWN_CHARS]!r}... ({len(text):,} characters)"


# ---------------------------------------------------------------- parsing cells

@dataclasses.dataclass
class ParsedColumn:
    """A column's cells as numbers: `values` (NaN or 0 where unusable), the rows whose
    cell is a missing value, and the rows of each other problem by reason."""

    values: np.ndarray
    missing: np.ndarray
    bad: dict[str, np.ndarray]

    def mask(self, reason: str) -> np.ndarray:
        """Boolean mask of the rows with problem `reason`."""
        mask = np.zeros(len(self.values), dtype=bool)
        mask[self.bad.get(reason, [])] = True
        return mask

    @property
    def valid(self) -> np.ndarray:
        """Rows whose cell is a usable number."""
        mask = ~self.missing
        for rows in self.bad.values():
            mask[rows] = False
        return mask


def classify_number(text: str) -> tuple[float | None, str | None]:
    """(value, None) for a number cell (already stripped), else (None, reason)."""
    if text.lower() in MISSING_SPELLINGS:
        return None, "missing_value"
    if _NON_FINITE.fullmatch(text):
        return None, "non_finite"
    if _NUMBER.fullmatch(text):
        value = float(text)
        return (None, "out_of_range") if math.isinf(value) else (value, None)
    return None, "unparsable_number"


def classify_integer(text: str) -> tuple[int | None, str | None]:
    """(value, None) for an integer-token cell (already stripped), else (None, reason)."""
    if _INTEGER.fullmatch(text):
        value = int(text)
        low, high = _INT64_RANGE
        return (value, None) if low <= value <= high else (None, "out_of_range")
    number, reason = classify_number(text)
    if reason:
        return None, reason
    if number != math.floor(number):
        return None, "unparsable_number"
    if abs(number) >= _EXACT_FLOAT_INT:
        return None, "out_of_range"
    return int(number), None


def _collect(values: np.ndarray, rows: np.ndarray, texts: pd.Series, classify) -> ParsedColumn:
    """Classifies the cells `rows` one by one (the rest are fine); fills `values`."""
    missing = np.zeros(len(values), dtype=bool)
    bad: dict[str, list[int]] = collections.defaultdict(list)
    for row in rows:
        value, reason = classify(texts.iat[row])
        if reason == "missing_value":
            missing[row] = True
        elif reason:
            bad[reason].append(row)
        else:
            values[row] = value
    return ParsedColumn(values, missing, {r: np.array(v, dtype=np.int64) for r, v in bad.items()})


def parse_numbers(column: pd.Series, float32: bool = False) -> ParsedColumn:
    """A text column as float64 numbers (rules in the module docstring); with
    `float32`, a value beyond float32's range is out_of_range."""
    stripped = column.str.strip()
    values = pd.to_numeric(stripped, errors="coerce").to_numpy(dtype=np.float64, copy=True)
    parsed = _collect(values, np.flatnonzero(~np.isfinite(values)), stripped, classify_number)
    if float32:
        with np.errstate(over="ignore"):
            over = np.isfinite(values) & np.isinf(values.astype(np.float32))
        if over.any():
            parsed.bad["out_of_range"] = np.union1d(parsed.bad.get("out_of_range", []),
                                                    np.flatnonzero(over)).astype(np.int64)
    return parsed


def parse_integers(column: pd.Series) -> ParsedColumn:
    """A text column of integer tokens as int64 (rules in the module docstring)."""
    stripped = column.str.strip()
    numbers = pd.to_numeric(stripped, errors="coerce")
    if numbers.dtype == np.int64:   # every cell a plain integer in range: exact already
        return ParsedColumn(numbers.to_numpy(), np.zeros(len(numbers), dtype=bool), {})
    floats = numbers.to_numpy(dtype=np.float64)
    exact = np.isfinite(floats) & (np.abs(floats) < _EXACT_FLOAT_INT) & (floats == np.floor(floats))
    values = np.where(exact, floats, 0.0).astype(np.int64)
    return _collect(values, np.flatnonzero(~exact), stripped, classify_integer)


# ---------------------------------------------------------------- checking rows

class _Checker:
    """Checks the columns of one text table against a spec, collecting problems and
    the typed columns (numpy arrays) that tf.Examples are made of."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self.problems = _Problems()
        self.typed: dict[str, np.ndarray] = {}
        self.valid: dict[str, np.ndarray] = {}   # column -> rows with a usable value

    def cell(self, column: str):
        """A function of a row giving the cell's text quoted for a message."""
        return lambda row: shown(self.frame[column].iat[row])

    def report(self, column: str, parsed: ParsedColumn, kind: str, dtype: str, suffix: str = "",
               missing: bool = True) -> None:
        """Adds the missing values (when `missing`) and parse problems of a column;
        `kind` and `dtype` name what the cells should be ("a number", "float32")."""
        if missing:
            self.problems.add(parsed.missing, column, "missing_value", self._missing_detail(column))
        cell = self.cell(column)
        self.problems.add(parsed.mask("unparsable_number"), column, "unparsable_number",
                          lambda r: f"cannot parse {cell(r)} as {kind}")
        self.problems.add(parsed.mask("out_of_range"), column, "out_of_range",
                          lambda r: f"{cell(r)} is out of range for {dtype}{suffix}")
        self.problems.add(parsed.mask("non_finite"), column, "non_finite",
                          lambda r: f"non-finite value {cell(r)}{suffix}")

    def _missing_detail(self, column: str):
        def detail(row):
            text = self.frame[column].iat[row]
            return "missing value" if not text.strip() else f"missing value ({shown(text)})"
        return detail

    def string_feature(self, feature) -> None:
        raw = self.frame[feature.name]
        if feature.required:
            empty = (raw.str.strip() == "").to_numpy()
            self.problems.add(empty, feature.name, "missing_value", lambda r: "missing value")
        self.typed[feature.name] = raw.to_numpy(dtype=object)

    def integer_feature(self, feature) -> None:
        parsed = parse_integers(self.frame[feature.name])
        self.report(feature.name, parsed, "an integer", "int64", missing=feature.required)
        if not feature.required:
            parsed.values[parsed.missing] = int(feature.default)
        self.typed[feature.name] = parsed.values

    def numeric_feature(self, feature) -> None:
        parsed = parse_numbers(self.frame[feature.name], float32=True)
        self.report(feature.name, parsed, "a number", "float32", missing=feature.required)
        values = np.where(parsed.valid, parsed.values, 0.0)
        if not feature.required:
            values[parsed.missing] = feature.default
        self.typed[feature.name] = values.astype(np.float32)

    def step(self, step: str, previous: str | None) -> None:
        parsed = parse_numbers(self.frame[step])
        self.report(step, parsed, "a number", "float64")
        binary = np.isin(parsed.values, (0.0, 1.0))
        cell = self.cell(step)
        self.problems.add(parsed.valid & ~binary, step, "non_binary_label",
                          lambda r: f"{cell(r)} is not a binary label (expected 0 or 1)")
        self.valid[step] = parsed.valid & binary
        self.typed[step] = np.where(parsed.values == 1.0, 1, 0).astype(np.int64)
        if previous is not None:
            both = self.valid[step] & self.valid[previous]
            self.problems.add(both & (self.typed[step] == 1) & (self.typed[previous] == 0), step,
                              "chain_violation",
                              lambda r: f"{step!r} is 1 while the previous step {previous!r} is 0")

    def core_target(self, target: str, gated_by: str | None) -> None:
        parsed = parse_numbers(self.frame[target], float32=True)
        suffix = " for the continuous target"
        self.report(target, parsed, "a number", "float32", suffix=suffix)
        valid, values, cell = parsed.valid, parsed.values, self.cell(target)
        self.problems.add(valid & (values < 0), target, "negative_target",
                          lambda r: f"negative value {self.frame[target].iat[r].strip()}{suffix}")
        if gated_by:
            self.problems.add(valid & (values > 0) & self.valid[gated_by] &
                              (self.typed[gated_by] == 0), target, "chain_violation",
                              lambda r: f"value {self.frame[target].iat[r].strip()} is non-zero "
                                        f"while the last step {gated_by!r} is 0")
        self.typed[target] = np.where(valid, values, 0.0).astype(np.float32)


def _find_problems(frame: pd.DataFrame, spec: DatasetSpec):
    """Checks every cell; returns (problems, typed columns as numpy arrays)."""
    checker = _Checker(frame)
    for feature in spec.features:
        if not feature.is_categorical:
            checker.numeric_feature(feature)
        elif feature.dtype == "string":
            checker.string_feature(feature)
        else:
            checker.integer_feature(feature)
    chain = spec.chain
    for step in chain.steps:
        checker.step(step, chain.previous_step(step))
    if chain.core_target:
        checker.core_target(chain.core_target,
                            chain.steps[-1] if chain.core_target_gated else None)
    return checker.problems, checker.typed


def _summarise(problems: _Problems) -> collections.Counter:
    """Rows affected per reason (a row with two problems of a kind counts once)."""
    return collections.Counter(reason for _, reason in set(zip(problems.rows, problems.reasons)))


def _blanked(frame: pd.DataFrame, cells: Sequence[CellProblem]) -> pd.DataFrame:
    """`frame`, or a copy with the text of `cells` (row, column) emptied."""
    if not cells:
        return frame
    frame = frame.copy()
    for cell in cells:
        frame.iat[cell.row, frame.columns.get_loc(cell.column)] = ""
    return frame


def _without_cells(problems: _Problems, cells: set) -> _Problems:
    """The problems outside `cells`, a set of (row, column)."""
    kept = _Problems()
    for entry in zip(problems.rows, problems.columns, problems.reasons, problems.details):
        if (entry[0], entry[1]) not in cells:
            kept.add_one(CellProblem(*entry))
    return kept


def missing_columns_error(source: str, missing: Sequence[str], spec_name: str,
                          has: str) -> DataValidationError:
    """The error for spec columns an input lacks; `has` says what it has instead
    ("the header has [...]", "the Parquet schema has [...]")."""
    return DataValidationError(f"{source}: missing column(s) {list(missing)} required by spec "
                               f"{spec_name!r} ({has})")


def check_table(frame: pd.DataFrame, spec: DatasetSpec, source: str, bad_rows: str = "error",
                first_line: int = 2, allow_all_bad: bool = False,
                lines: np.ndarray | None = None, source_problems: Sequence[CellProblem] = (),
                unit: RowUnit = LINE, unreadable: Sequence[CellProblem] = ()):
    """Checks a text table against the spec.

    `lines` is the place of each row in its file, counted in `unit` (CSV lines as
    `TextChunk.lines`, or Parquet rows, TFRecord records); without it the rows are
    taken to be consecutive from `first_line`. `unit` words the messages ("line 5,
    column 'age'", "record 5, feature 'age'") and names the rejects' number column.
    `source_problems` (from a `Prepare` hook) are added to the problems the checks
    find, except one the checks found in the same cell for the same reason.
    `unreadable` cells (a reader's problems, e.g. multiple_values) are reported for
    that reason only: the checks see them as empty and report nothing else there.
    Returns:
      (typed columns of the good rows, rejects DataFrame, per-reason counts).
    Raises:
      DataValidationError: on a structural problem, or on any bad row when
        `bad_rows == "error"`, or when every row is bad (unless `allow_all_bad`).
    """
    if bad_rows not in BAD_ROW_MODES:
        raise ValueError(f"bad_rows must be one of {BAD_ROW_MODES}, got {bad_rows!r}")
    missing = [column for column in spec.columns if column not in frame.columns]
    if missing:
        raise missing_columns_error(source, missing, spec.name,
                                    f"the header has {list(frame.columns)}")
    if len(frame) == 0:
        raise DataValidationError(f"{source}: no data rows after the header")
    if lines is None:
        lines = first_line + np.arange(len(frame), dtype=np.int64)

    problems, typed = _find_problems(_blanked(frame, unreadable), spec)
    if unreadable:
        problems = _without_cells(problems, {(p.row, p.column) for p in unreadable})
    found = set(zip(problems.rows, problems.columns, problems.reasons))
    for problem in source_problems:
        if (problem.row, problem.column, problem.reason) not in found:
            problems.add_one(problem)
    for problem in unreadable:
        problems.add_one(problem)
    counts = _summarise(problems)
    if problems and bad_rows == "error":
        first = int(np.argmin(problems.rows))
        summary = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
        scope = "" if lines[0] == unit.first and len(frame) < CHUNK_ROWS else (
            f" in {unit.noun}s {lines[0]}-{lines[-1]}")
        raise DataValidationError(
            f"{source} {unit.noun} {lines[problems.rows[first]]}, {unit.field} "
            f"{problems.columns[first]!r}: {problems.details[first]} (rows with problems"
            f"{scope}: {summary}; pass --bad-rows reject to set bad rows aside in a rejects file)")

    bad = np.zeros(len(frame), dtype=bool)
    bad[problems.rows] = True
    reasons_per_row = collections.defaultdict(list)
    for row, column, detail in zip(problems.rows, problems.columns, problems.details):
        reasons_per_row[row].append(f"{column}: {detail}")
    rejects = frame[bad].copy()
    rejects.insert(0, unit.rejects_column, lines[bad])
    rejects.insert(1, "_reasons", ["; ".join(reasons_per_row[r]) for r in np.flatnonzero(bad)])
    good = {name: values[~bad] for name, values in typed.items()}
    if not (~bad).any() and not allow_all_bad:
        raise DataValidationError(f"{source}: every one of {len(frame)} rows has a problem; "
                                  f"see the reasons in the rejects file")
    return good, rejects, dict(counts)


# ---------------------------------------------------------------- duplicates

def row_digests(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """A 64-bit digest (uint64) of each row of typed columns (names in sorted order)."""
    table = pd.DataFrame({name: columns[name] for name in sorted(columns)})
    return pd.util.hash_pandas_object(table, index=False).to_numpy()


class DuplicateCounter:
    """Counts rows equal to an earlier row, over any number of chunks, keeping the
    sorted digests of the distinct rows seen (8 bytes per distinct row)."""

    def __init__(self):
        self.seen = np.empty(0, dtype=np.uint64)
        self.duplicates = 0

    def add(self, columns: Mapping[str, np.ndarray]) -> None:
        """Counts the duplicates among these rows and the rows added before."""
        digests = np.unique(row_digests(columns))   # sorted, distinct
        self.duplicates += len(next(iter(columns.values()))) - len(digests)
        at = np.searchsorted(self.seen, digests)
        known = at < len(self.seen)
        known[known] = self.seen[at[known]] == digests[known]
        self.duplicates += int(known.sum())
        # Two sorted runs: the stable sort merges them in linear time.
        self.seen = np.sort(np.concatenate([self.seen, digests[~known]]), kind="stable")


def duplicate_warning(duplicates: int, written: int, spec: DatasetSpec) -> str | None:
    """The warning line when more than DUPLICATE_WARN_SHARE of the written rows are
    duplicates and the split hashes the whole row; else None."""
    if not written or spec.split.partition_column or duplicates / written <= DUPLICATE_WARN_SHARE:
        return None
    return (f"warning: {duplicates:,} of {written:,} written rows ({duplicates / written:.1%}) "
            f"repeat an earlier row exactly; the split hashes the whole row, so all copies of a "
            f"row land in the same split and rows that repeat often can be missing from "
            f"training or eval altogether: set split.partition_column in the spec to split by "
            f"an id column")


# ---------------------------------------------------------------- writing

def arrow_column(values: np.ndarray) -> pa.Array:
    """One value per row, as the list array tf.Example encoding expects."""
    if values.dtype == object:
        flat = pa.array(values, type=pa.large_string()).cast(pa.large_binary())
    else:
        flat = pa.array(values)
    offsets = pa.array(np.arange(len(values) + 1, dtype=np.int64))
    return pa.LargeListArray.from_arrays(offsets, flat)


@dataclasses.dataclass(frozen=True)
class SplitRule:
    """ExampleGen's train/eval split by hash, as TFX 1.21 computes it
    (`_PartitionFn` in tfx/components/example_gen/base_example_gen_executor.py).

    A record's key is its tf.Example serialized deterministically (features in
    name order), or, with a partition column, that one feature serialized the
    same way. Its bucket is int(sha256(key).hexdigest(), 16) % 100; buckets
    below 100 - eval_percent are train, the rest eval. ImportExampleGen parses
    each record it reads and serializes it deterministically before hashing, so
    the key does not depend on the order in which the encoder wrote the features.
    """

    eval_percent: int = 20
    partition_column: str | None = None

    @classmethod
    def from_spec(cls, spec: DatasetSpec) -> "SplitRule":
        """The rule of the spec's `split` section."""
        return cls(spec.split.eval_percent, spec.split.partition_column)

    def key(self, record: bytes) -> bytes:
        """The bytes ExampleGen hashes for one serialized tf.Example."""
        from tensorflow.core.example import example_pb2

        example = example_pb2.Example.FromString(record)
        if self.partition_column is None:
            return example.SerializeToString(deterministic=True)
        features = example.features.feature
        if self.partition_column not in features:
            raise DataValidationError(
                f"split.partition_column {self.partition_column!r} is not in the example")
        return features[self.partition_column].SerializeToString(deterministic=True)

    def split_of(self, record: bytes) -> str:
        """'train' or 'eval' for one serialized tf.Example."""
        train_buckets = HASH_BUCKETS - self.eval_percent
        return SPLIT_NAMES[0] if hash_bucket(self.key(record)) < train_buckets else SPLIT_NAMES[1]

    def describe(self) -> str:
        """The rule in words, for the log and for error messages."""
        by = f"column {self.partition_column!r}" if self.partition_column else "whole row"
        return f"hash of the {by}, {self.eval_percent} % eval"


def hash_bucket(key: bytes) -> int:
    """ExampleGen's bucket of a partition key: its SHA-256 as an integer, modulo 100."""
    return int(hashlib.sha256(key).hexdigest(), 16) % HASH_BUCKETS


def encode_examples(columns: Mapping[str, np.ndarray]):
    """Yields the rows as serialized tf.Examples, in lists of up to _ENCODE_ROWS."""
    from tfx_bsl.coders import example_coder

    names = sorted(columns)
    count = len(columns[names[0]])
    for start in range(0, count, _ENCODE_ROWS):
        batch = pa.RecordBatch.from_arrays(
            [arrow_column(columns[n][start:start + _ENCODE_ROWS]) for n in names], names)
        yield example_coder.RecordBatchToExamples(batch)


def shuffled(columns: Mapping[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The rows in a random order fixed by `seed`, the same order in every column."""
    count = len(next(iter(columns.values())))
    order = np.random.default_rng(seed).permutation(count)
    return {name: values[order] for name, values in columns.items()}


def write_split_shards(columns: Mapping[str, np.ndarray], split_dirs: Mapping[str, str],
                       file_name: str, rule: SplitRule) -> collections.Counter:
    """Writes one tf.Example per row to `file_name` (a GZIP TFRecord) in the directory
    of the row's split; a split without rows gets no file. Returns rows per split."""
    import tensorflow as tf

    writers: dict = {}
    counts: collections.Counter = collections.Counter()
    try:
        for records in encode_examples(columns):
            for record in records:
                split = rule.split_of(record)
                if split not in writers:
                    writers[split] = tf.io.TFRecordWriter(
                        os.path.join(split_dirs[split], file_name), options="GZIP")
                writers[split].write(record)
                counts[split] += 1
    finally:
        for writer in writers.values():
            writer.close()
    return counts


def require_every_split(result: IngestResult, spec: DatasetSpec) -> None:
    """Raises DataValidationError when a split got no rows (the pipeline needs both)."""
    empty = [split for split in SPLIT_NAMES if not result.split_rows.get(split)]
    if empty:
        raise DataValidationError(
            f"no rows landed in the {' and '.join(map(repr, empty))} split of "
            f"{result.rows_written} rows ({SplitRule.from_spec(spec).describe()}); the pipeline "
            f"needs rows in both splits: add rows or change split.eval_percent in the spec")


def _fingerprint(files: Sequence[str], spec: DatasetSpec, bad_rows: str, options,
                 prepare: Prepare | None = None) -> str:
    """16 hex digits of SHA-256 over every input file's bytes (in the order read),
    the spec, `bad_rows`, the reader's `options` (JSON-able), the record layout
    version and the Prepare hook's name. A CSV file's digest is what it was before
    other formats were read (its options are the rename), so earlier ingests stay valid."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    digest.update(spec.to_json().encode())
    digest.update(json.dumps([bad_rows, options, _RECORD_LAYOUT_VERSION]).encode())
    if prepare is not None:   # (kept out of the digest without a hook: earlier ingests stay valid)
        digest.update(json.dumps(["prepare", prepare.name]).encode())
    return digest.hexdigest()[:16]


def ingest_csv(path: str, spec: DatasetSpec, staging_root: str, bad_rows: str = "error",
               rejects_path: str | None = None, rename: Mapping[str, str] | None = None,
               log=print, prepare: Prepare | None = None) -> IngestResult:
    """`ingest` of one CSV file (`rename`: header name -> spec name)."""
    return ingest(CsvReader(path, rename), spec, staging_root, bad_rows=bad_rows,
                  rejects_path=rejects_path, log=log, prepare=prepare)


def ingest(reader, spec: DatasetSpec, staging_root: str, bad_rows: str = "error",
           rejects_path: str | None = None, log=print,
           prepare: Prepare | None = None) -> IngestResult:
    """Checks the rows `reader` gives against `spec` and writes typed tf.Examples
    under `staging_root`, split into train and eval by `SplitRule.from_spec(spec)`
    (the layout in the module docstring); logs ignored columns and files, skipped
    blank lines, rejects, the rows per split and a duplicate warning. `prepare`
    derives columns from each chunk before the checks (see "Derived columns" in the
    module docstring).

    `reader` is a `CsvReader`, or a reader of `transform.formats` (Parquet,
    TFRecord). It has `source` (the path given: a file or a directory), `format`,
    `unit` (a RowUnit), `files` (the data files, in the order read),
    `ignored_files` (directory entries skipped), `fingerprint_options()` (JSON-able)
    and `chunks(wanted, required, spec_name)`, which yields `Chunk`s of at most
    CHUNK_ROWS rows of one file each, with the columns of `wanted` the file has, and
    raises DataValidationError for a structural problem (a `required` column
    missing, for the readers that check that themselves).

    The output directory is named by a fingerprint of the files' bytes, the spec
    and the options, so re-running on unchanged input reuses it: the pipeline's
    Importer then registers the same directory again, resolves to the same
    Examples artifact, and every downstream component's cache stays valid.
    """
    fingerprint = _fingerprint(reader.files, spec, bad_rows, reader.fingerprint_options(),
                               prepare)
    out_dir = os.path.join(staging_root, f"{spec.name}-{fingerprint}")
    summary_path = os.path.join(out_dir, "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as handle:
            summary = json.load(handle)
        _report(summary, spec, log)
        return _result(out_dir, summary, reused=True)

    shutil.rmtree(out_dir, ignore_errors=True)   # a half-written earlier attempt
    split_dirs = {split: os.path.join(out_dir, EXAMPLES_SUBDIR, f"Split-{split}")
                  for split in SPLIT_NAMES}
    for directory in split_dirs.values():
        os.makedirs(directory)
    rule = SplitRule.from_spec(spec)
    saved_rejects = rejects_path or os.path.join(out_dir, "rejects.csv")
    rows_read = written = rejected = blank = 0
    counts: collections.Counter = collections.Counter()
    split_rows: collections.Counter = collections.Counter()
    duplicates = DuplicateCounter()
    ignored: dict[str, None] = {}   # in the order first seen
    reads = tuple(prepare.reads) if prepare else ()
    wanted = [*spec.columns, *(column for column in reads if column not in spec.columns)]
    # Without a hook every spec column must be in the file; with one, the columns
    # it reads (the ones it derives are checked once derived).
    required = reads if prepare else tuple(spec.columns)
    for shard, chunk in enumerate(reader.chunks(wanted, required, spec.name)):
        frame, source_problems = _prepared(prepare, chunk.frame, chunk.source)
        blank += chunk.blank_lines
        ignored.update(dict.fromkeys(chunk.ignored))
        if len(frame) == 0 and shard > 0:   # only blank lines were left
            continue
        good, rejects, chunk_counts = check_table(
            frame, spec, source=chunk.source, bad_rows=bad_rows, allow_all_bad=True,
            lines=chunk.numbers, source_problems=source_problems, unit=chunk.unit,
            unreadable=chunk.problems)
        # A rejected row as read: without the columns the hook derived.
        rejects = rejects.drop(columns=[c for c in frame.columns if c not in chunk.frame.columns])
        if chunk.unit.names_file:
            rejects.insert(0, "_file", chunk.source)
        if len(rejects):
            _append_csv(rejects, saved_rejects, header=rejected == 0)
        rows_read += len(frame)
        rejected += len(rejects)
        counts.update(chunk_counts)
        if len(rejects) < len(frame):
            duplicates.add(good)
            written_now = write_split_shards(shuffled(good, seed=shard), split_dirs,
                                             f"data-{shard:05d}.tfrecord.gz", rule)
            split_rows.update(written_now)
            written += sum(written_now.values())
    if rows_read == 0:
        raise DataValidationError(f"{reader.source}: no data rows (in {len(reader.files)} "
                                  f"{reader.format} file(s))")
    if written == 0:
        raise DataValidationError(f"{reader.source}: every one of {rows_read} rows has a "
                                  f"problem; see the reasons in {saved_rejects}")
    summary = dict(source=reader.source, format=reader.format, files=len(reader.files),
                   rows_read=rows_read, rows_written=written,
                   reject_counts=dict(counts), rejects_path=saved_rejects if rejected else None,
                   split_rows={split: split_rows[split] for split in SPLIT_NAMES},
                   duplicate_rows=duplicates.duplicates, blank_lines=blank,
                   ignored_columns=list(ignored), ignored_files=list(reader.ignored_files))
    _report(summary, spec, log)
    # Written last, whole or not at all (renamed into place): marks the ingest complete.
    with open(summary_path + ".partial", "w") as handle:
        json.dump(summary, handle, indent=1)
    os.replace(summary_path + ".partial", summary_path)
    return _result(out_dir, summary, reused=False)


def _prepared(prepare: Prepare | None, frame: pd.DataFrame, source: str):
    """(the chunk's frame with the hook's derived columns, the hook's CellProblems)."""
    if prepare is None:
        return frame, ()
    missing = [column for column in prepare.reads if column not in frame.columns]
    if missing:
        raise DataValidationError(
            f"{source}: missing column(s) {missing} that {prepare.name!r} derives columns from "
            f"(the header has {list(frame.columns)})")
    return prepare.derive(frame)


def _result(out_dir: str, summary: Mapping, reused: bool) -> IngestResult:
    """The IngestResult of an ingest directory and its summary."""
    return IngestResult(out_dir, summary["rows_read"], summary["rows_written"],
                        summary["reject_counts"], summary["rejects_path"], reused=reused,
                        split_rows=summary["split_rows"],
                        duplicate_rows=summary["duplicate_rows"],
                        blank_lines=summary["blank_lines"])


def _report(summary: Mapping, spec: DatasetSpec, log) -> None:
    """Logs what an ingest set aside or noticed, one line each, and the rows per split."""
    if summary["ignored_columns"]:
        log(f"note: ignoring column(s) {summary['ignored_columns']} that spec "
            f"{spec.name!r} does not use")
    if summary.get("ignored_files"):
        log(f"note: skipped {len(summary['ignored_files'])} name(s) in directory "
            f"{summary['source']} that are not data files: {summary['ignored_files']}")
    if summary["blank_lines"]:
        log(f"note: skipped {summary['blank_lines']} blank line(s)")
    _report_rejects(summary["rows_read"] - summary["rows_written"], summary["reject_counts"],
                    summary["rejects_path"], log)
    _report_splits(summary["split_rows"], spec, log)
    warning = duplicate_warning(summary["duplicate_rows"], summary["rows_written"], spec)
    if warning:
        log(warning)


def _append_csv(frame: pd.DataFrame, path: str, header: bool) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    frame.to_csv(path, index=False, mode="w" if header else "a", header=header)


def _report_rejects(rows: int, counts: Mapping[str, int], rejects_path: str | None, log) -> None:
    if rows:
        detail = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
        log(f"rejected {rows} row(s) (rows per reason: {detail}); they are in {rejects_path}")


def _report_splits(split_rows: Mapping[str, int], spec: DatasetSpec, log) -> None:
    """Logs the rows written per split and the rule that split them."""
    per_split = ", ".join(f"{split_rows.get(split, 0):,} {split}" for split in SPLIT_NAMES)
    log(f"rows per split: {per_split} (ExampleGen's rule: {SplitRule.from_spec(spec).describe()})")
