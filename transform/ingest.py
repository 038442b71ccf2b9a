"""Input checks and conversion of a CSV file into typed tf.Example records.

Every row is checked against the dataset spec before anything trains:

  missing_value      an empty cell in a required column
  unparsable_number  a cell that does not parse as the column's number type
  non_binary_label   a chain step that is not 0 or 1
  chain_violation    a step that is 1 while the previous step is 0, or (for a
                     gated core target) a non-zero target after a 0 last step
  negative_target    a continuous core target below zero
  non_finite         NaN or infinity in a numeric feature or the core target

With `bad_rows="error"` (the default) the first problem raises
`DataValidationError` naming the file, line and column, with the count of every
problem found. With `bad_rows="reject"` the bad rows are written, unchanged and
with their line numbers and reasons, to a rejects CSV, and the per-reason counts
are returned; the remaining rows are converted. Nothing is dropped silently.

Line numbers count the header as line 1, so the first data row is line 2.

`ingest_csv` reads the file in chunks of `CHUNK_ROWS` rows, so its memory does
not grow with the file. In error mode it stops at the first chunk with a
problem; the counts in the message are that chunk's.

It writes the good rows already split into train and eval, in the layout of a
TFX Examples artifact, so the pipeline registers the directory as its Examples
with an Importer instead of copying it through an ExampleGen:

  <staging root>/<spec name>-<fingerprint>/
    examples/Split-train/data-NNNNN.tfrecord.gz   one GZIP shard per chunk and split
    examples/Split-eval/data-NNNNN.tfrecord.gz
    summary.json                                  rows read, written, per split
    rejects.csv                                   with --bad-rows reject (unless given)

The split is ExampleGen's hash split (`SplitRule`), so a row lands in the split
ImportExampleGen would have put it in. Within a chunk the rows are written in a
seeded random order, standing in for the shuffle ExampleGen does while it writes.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import shutil
from typing import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from transform.spec import DatasetSpec

BAD_ROW_MODES = ("error", "reject")
# Bump when the written record layout changes, so staged data is rebuilt.
# 2: one shard per chunk (data-NNNNN.tfrecord.gz)
# 3: shards split into examples/Split-train and examples/Split-eval, shuffled per chunk
_RECORD_LAYOUT_VERSION = "3"
CHUNK_ROWS = 250_000           # rows read, checked and written at a time
_ENCODE_ROWS = 65536           # rows per Arrow batch when encoding tf.Examples
SPLIT_NAMES = ("train", "eval")  # the Examples artifact's splits, in this order
HASH_BUCKETS = 100             # ExampleGen's buckets: train 100 - eval_percent, eval eval_percent
EXAMPLES_SUBDIR = "examples"   # the Examples artifact's directory inside an ingest directory


class DataValidationError(ValueError):
    """The input data breaks the spec; the message names file, line and column."""


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

    @property
    def examples_uri(self) -> str:
        """The Examples artifact's directory (Split-train/ and Split-eval/ inside)."""
        return os.path.join(self.examples_dir, EXAMPLES_SUBDIR)


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

    def __len__(self):
        return len(self.rows)


def read_text_table(path: str, rename: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Reads a CSV (optionally .gz) with every cell as a string, nothing inferred."""
    return next(read_text_chunks(path, rename, chunk_rows=None))


def read_text_chunks(path: str, rename: Mapping[str, str] | None = None,
                     chunk_rows: int | None = CHUNK_ROWS):
    """Yields the CSV as string DataFrames of up to `chunk_rows` rows (None: one frame).

    A file with a header and no rows yields one empty frame.
    """
    if not os.path.exists(path):
        raise DataValidationError(f"{path}: file not found")
    try:
        reader = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False,
                             chunksize=chunk_rows)
        chunks = [reader] if chunk_rows is None else reader
        yielded = False
        for frame in chunks:
            yielded = True
            yield frame.rename(columns=dict(rename)) if rename else frame
        if not yielded:  # header only
            header = pd.read_csv(path, dtype=str, nrows=0)
            yield header.rename(columns=dict(rename)) if rename else header
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"{path}: the file is empty (no header row)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataValidationError(f"{path}: not a readable CSV file: {error}") from None


def _parse_numbers(column: pd.Series):
    """Returns (values as float64, empty mask, unparsable mask)."""
    stripped = column.str.strip()
    empty = (stripped == "").to_numpy()
    values = pd.to_numeric(stripped, errors="coerce").to_numpy(dtype=np.float64)
    literal_nan = stripped.str.lower().isin(["nan", "-nan", "+nan"]).to_numpy()
    unparsable = np.isnan(values) & ~empty & ~literal_nan
    return values, empty, unparsable


def _find_problems(frame: pd.DataFrame, spec: DatasetSpec):
    """Checks every cell; returns (problems, typed columns as numpy arrays)."""
    problems = _Problems()
    typed: dict[str, np.ndarray] = {}

    def cell(column):
        return lambda row: frame[column].iat[row]

    for feature in spec.features:
        raw = frame[feature.name]
        if feature.is_categorical and feature.dtype == "string":
            empty = (raw.str.strip() == "").to_numpy()
            if feature.required:
                problems.add(empty, feature.name, "missing_value", lambda r: "missing value")
            typed[feature.name] = raw.to_numpy(dtype=object)
            continue
        values, empty, unparsable = _parse_numbers(raw)
        if feature.required:
            problems.add(empty, feature.name, "missing_value", lambda r: "missing value")
        else:
            values = np.where(empty, feature.default, values)
        if feature.is_categorical:  # integer tokens
            problems.add(unparsable | (~np.isnan(values) & (values != np.round(values))),
                         feature.name, "unparsable_number",
                         lambda r, c=cell(feature.name): f"cannot parse {c(r)!r} as an integer")
            typed[feature.name] = np.nan_to_num(values).astype(np.int64)
        else:
            problems.add(unparsable, feature.name, "unparsable_number",
                         lambda r, c=cell(feature.name): f"cannot parse {c(r)!r} as a number")
            problems.add(~empty & ~unparsable & ~np.isfinite(values), feature.name, "non_finite",
                         lambda r, c=cell(feature.name): f"non-finite value {c(r)!r}")
            typed[feature.name] = np.where(np.isfinite(values), values, 0.0).astype(np.float32)

    chain = spec.chain
    for step in chain.steps:
        values, empty, unparsable = _parse_numbers(frame[step])
        problems.add(empty, step, "missing_value", lambda r: "missing value")
        problems.add(unparsable, step, "unparsable_number",
                     lambda r, c=cell(step): f"cannot parse {c(r)!r} as a number")
        parsed = ~empty & ~unparsable
        problems.add(parsed & ~np.isin(values, (0.0, 1.0)), step, "non_binary_label",
                     lambda r, c=cell(step): f"{c(r)!r} is not a binary label (expected 0 or 1)")
        typed[step] = np.where(values == 1.0, 1, 0).astype(np.int64)
        previous = chain.previous_step(step)
        if previous is not None:
            problems.add((typed[step] == 1) & (typed[previous] == 0), step, "chain_violation",
                         lambda r, s=step, p=previous: f"{s!r} is 1 while the previous step {p!r} is 0")

    target = chain.core_target
    if target:
        values, empty, unparsable = _parse_numbers(frame[target])
        problems.add(empty, target, "missing_value", lambda r: "missing value")
        problems.add(unparsable, target, "unparsable_number",
                     lambda r, c=cell(target): f"cannot parse {c(r)!r} as a number")
        parsed = ~empty & ~unparsable
        problems.add(parsed & ~np.isfinite(values), target, "non_finite",
                     lambda r, c=cell(target): f"non-finite value {c(r)!r} for the continuous target")
        problems.add(parsed & (values < 0), target, "negative_target",
                     lambda r, c=cell(target): f"negative value {c(r)} for the continuous target")
        if chain.core_target_gated:
            last = chain.steps[-1]
            problems.add(parsed & (values > 0) & (typed[last] == 0), target, "chain_violation",
                         lambda r, c=cell(target), s=last: f"value {c(r)} is non-zero while the last step {s!r} is 0")
        typed[target] = np.where(np.isfinite(values), values, 0.0).astype(np.float32)
    return problems, typed


def _summarise(problems: _Problems) -> collections.Counter:
    """Rows affected per reason (a row with two problems of a kind counts once)."""
    return collections.Counter(reason for _, reason in set(zip(problems.rows, problems.reasons)))


def check_table(frame: pd.DataFrame, spec: DatasetSpec, source: str, bad_rows: str = "error",
                first_line: int = 2, allow_all_bad: bool = False):
    """Checks a text table against the spec.

    `first_line` is the file line of the frame's first row (for chunks of a file).
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
        raise DataValidationError(
            f"{source}: missing column(s) {missing} required by spec {spec.name!r} "
            f"(the header has {list(frame.columns)})")
    if len(frame) == 0:
        raise DataValidationError(f"{source}: no data rows after the header")

    problems, typed = _find_problems(frame, spec)
    counts = _summarise(problems)
    if problems and bad_rows == "error":
        first = int(np.argmin(problems.rows))
        summary = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
        scope = "" if first_line == 2 and len(frame) < CHUNK_ROWS else (
            f" in lines {first_line}-{first_line + len(frame) - 1}")
        raise DataValidationError(
            f"{source} line {problems.rows[first] + first_line}, column "
            f"{problems.columns[first]!r}: {problems.details[first]} (rows with problems"
            f"{scope}: {summary}; pass --bad-rows reject to set bad rows aside in a rejects file)")

    bad = np.zeros(len(frame), dtype=bool)
    bad[problems.rows] = True
    reasons_per_row = collections.defaultdict(list)
    for row, column, detail in zip(problems.rows, problems.columns, problems.details):
        reasons_per_row[row].append(f"{column}: {detail}")
    rejects = frame[bad].copy()
    rejects.insert(0, "_line", np.flatnonzero(bad) + first_line)
    rejects.insert(1, "_reasons", ["; ".join(reasons_per_row[r]) for r in np.flatnonzero(bad)])
    good = {name: values[~bad] for name, values in typed.items()}
    if not (~bad).any() and not allow_all_bad:
        raise DataValidationError(f"{source}: every one of {len(frame)} rows has a problem; "
                                  f"see the reasons in the rejects file")
    return good, rejects, dict(counts)


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


def _fingerprint(path: str, spec: DatasetSpec, bad_rows: str, rename) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    digest.update(spec.to_json().encode())
    digest.update(json.dumps([bad_rows, sorted((rename or {}).items()), _RECORD_LAYOUT_VERSION]).encode())
    return digest.hexdigest()[:16]


def ingest_csv(path: str, spec: DatasetSpec, staging_root: str, bad_rows: str = "error",
               rejects_path: str | None = None, rename: Mapping[str, str] | None = None,
               log=print) -> IngestResult:
    """Checks `path` against `spec` and writes typed tf.Examples under `staging_root`,
    split into train and eval by `SplitRule.from_spec(spec)` (the layout in the
    module docstring); logs the rows per split.

    The output directory is named by a fingerprint of the file's bytes, the spec
    and the options, so re-running on unchanged input reuses it: the pipeline's
    Importer then registers the same directory again, resolves to the same
    Examples artifact, and every downstream component's cache stays valid.
    """
    if not os.path.exists(path):
        raise DataValidationError(f"{path}: file not found")
    out_dir = os.path.join(staging_root, f"{spec.name}-{_fingerprint(path, spec, bad_rows, rename)}")
    summary_path = os.path.join(out_dir, "summary.json")
    if os.path.exists(summary_path):
        with open(summary_path) as handle:
            summary = json.load(handle)
        _report_rejects(summary["rows_read"] - summary["rows_written"], summary["reject_counts"],
                        summary["rejects_path"], log)
        _report_splits(summary["split_rows"], spec, log)
        return IngestResult(out_dir, summary["rows_read"], summary["rows_written"],
                            summary["reject_counts"], summary["rejects_path"], reused=True,
                            split_rows=summary["split_rows"])

    shutil.rmtree(out_dir, ignore_errors=True)   # a half-written earlier attempt
    split_dirs = {split: os.path.join(out_dir, EXAMPLES_SUBDIR, f"Split-{split}")
                  for split in SPLIT_NAMES}
    for directory in split_dirs.values():
        os.makedirs(directory)
    rule = SplitRule.from_spec(spec)
    saved_rejects = rejects_path or os.path.join(out_dir, "rejects.csv")
    rows_read = written = rejected = 0
    counts: collections.Counter = collections.Counter()
    split_rows: collections.Counter = collections.Counter()
    for shard, frame in enumerate(read_text_chunks(path, rename, CHUNK_ROWS)):
        good, rejects, chunk_counts = check_table(
            frame, spec, source=path, bad_rows=bad_rows, first_line=rows_read + 2,
            allow_all_bad=True)
        if len(rejects):
            _append_csv(rejects, saved_rejects, header=rejected == 0)
        rows_read += len(frame)
        rejected += len(rejects)
        counts.update(chunk_counts)
        if len(rejects) < len(frame):
            written_now = write_split_shards(shuffled(good, seed=shard), split_dirs,
                                             f"data-{shard:05d}.tfrecord.gz", rule)
            split_rows.update(written_now)
            written += sum(written_now.values())
    if written == 0:
        raise DataValidationError(f"{path}: every one of {rows_read} rows has a problem; "
                                  f"see the reasons in {saved_rejects}")
    saved_rejects = saved_rejects if rejected else None
    _report_rejects(rejected, counts, saved_rejects, log)
    split_rows = {split: split_rows[split] for split in SPLIT_NAMES}
    _report_splits(split_rows, spec, log)
    summary = dict(source=path, rows_read=rows_read, rows_written=written,
                   reject_counts=dict(counts), rejects_path=saved_rejects, split_rows=split_rows)
    with open(summary_path, "w") as handle:  # written last: marks the ingest complete
        json.dump(summary, handle, indent=1)
    return IngestResult(out_dir, rows_read, written, dict(counts), saved_rejects, reused=False,
                        split_rows=split_rows)


def _append_csv(frame: pd.DataFrame, path: str, header: bool) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    frame.to_csv(path, index=False, mode="w" if header else "a", header=header)


def _report_rejects(rows: int, counts: Mapping[str, int], rejects_path: str | None, log) -> None:
    if rows:
        detail = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
        log(f"rejected {rows} row(s) (rows per reason: {detail}); they are in {rejects_path}")


def _report_splits(split_rows: Mapping[str, int], spec: DatasetSpec, log) -> None:
    """Logs the rows written per split and the rule that split them."""
    shown = ", ".join(f"{split_rows.get(split, 0):,} {split}" for split in SPLIT_NAMES)
    log(f"rows per split: {shown} (ExampleGen's rule: {SplitRule.from_spec(spec).describe()})")
