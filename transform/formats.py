"""Parquet and TFRecord inputs for ingest: chunk readers that turn each file's
rows into the same text frames a CSV file gives, so the same checks, rejects and
writer apply (`transform.ingest.ingest`; the rules are in its module docstring,
under "Parquet" and "TFRecord").

  ParquetReader   a Parquet file, or a directory of *.parquet files
  TFRecordReader  a TFRecord file of serialized tf.Examples (GZIP or not), or a
                  directory of them
  reader_for      the reader of a format name ("csv", "parquet", "tfrecord")

A reader yields `Chunk`s of at most `ingest.CHUNK_ROWS` rows of one file each,
numbered from 1 within their file ("row N" for Parquet, "record N" for TFRecord).
"""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from transform import ingest
from transform.ingest import RECORD, ROW, CellProblem, Chunk, DataValidationError, shown

FORMATS = ("csv", "parquet", "tfrecord")
MULTIPLE_VALUES = "multiple_values"   # the reason of a tf.Example feature with several values


def reader_for(format_name: str, path: str, rename: Mapping[str, str] | None = None):
    """The chunk reader of `path` in format `format_name` (one of FORMATS); `rename`
    (old -> new column name) applies to CSV headers only."""
    if format_name == "csv":
        return ingest.CsvReader(path, rename)
    if rename:
        raise ValueError(f"renaming columns is only supported for CSV, not {format_name}")
    if format_name == "parquet":
        return ParquetReader(path)
    if format_name == "tfrecord":
        return TFRecordReader(path)
    raise ValueError(f"unknown input format {format_name!r}; choose one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------- files

def data_files(path: str, matches: Callable[[str], bool], kind: str) -> tuple[list[str], list[str]]:
    """(the data files of `path`, the directory entries skipped), both sorted by name.

    A file is read whatever its name. In a directory, the files whose names
    `matches` and do not start with "." or "_" are read (no subdirectories);
    every other entry (e.g. _SUCCESS, .crc files) is skipped and named in the
    second list. Raises DataValidationError when `path` does not exist or a
    directory holds no such file (`kind` names them in the message).
    """
    if not os.path.exists(path):
        raise DataValidationError(f"{path}: file not found")
    if not os.path.isdir(path):
        return [path], []
    files, skipped = [], []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        usable = not name.startswith((".", "_")) and os.path.isfile(full) and matches(name)
        (files if usable else skipped).append(full if usable else name)
    if not files:
        raise DataValidationError(f"{path}: no {kind} files in the directory (skipped: {skipped})")
    return files, skipped


class _FileReader:
    """What Parquet and TFRecord readers share: the files and the fingerprint options."""

    format = ""
    kind = ""   # the files a directory is read for, in messages

    def __init__(self, path: str):
        self.source = path
        self.files, self.ignored_files = data_files(path, self.matches, self.kind)

    @staticmethod
    def matches(name: str) -> bool:
        return True

    def fingerprint_options(self) -> dict:
        """The format and each file's name (relative to the source) and size, in order."""
        base = self.source if os.path.isdir(self.source) else os.path.dirname(self.source)
        return {"format": self.format,
                "files": [[os.path.relpath(f, base), os.path.getsize(f)] for f in self.files]}


# ---------------------------------------------------------------- cells as text

def float_texts(array: pa.Array) -> pa.Array:
    """Floats (float16/32/64, nulls allowed) as the shortest decimal text (large_string)
    that the checks read back to the same value: float32 values as float32, float64
    as float64 text ('nan', 'inf', '-0', '1e+300' included)."""
    if array.type == pa.float16():
        array = array.cast(pa.float32())
    texts = array.cast(pa.large_string())
    if array.type != pa.float32():
        return texts
    # Shortest float32 text, read as float64 and rounded to float32 (what the checks
    # do), is the same value but for rare double roundings: those get float64 text.
    values = array.to_numpy(zero_copy_only=False)
    back = pd.to_numeric(pd.Series(texts.to_numpy(zero_copy_only=False)),
                         errors="coerce").to_numpy(np.float64).astype(np.float32)
    wrong = ~((back == values) | (np.isnan(back) & np.isnan(values)))
    if not wrong.any():
        return texts
    exact = array.cast(pa.float64()).cast(pa.large_string())
    return pc.if_else(pa.array(wrong), exact, texts)


def utf8_texts(array: pa.Array, where: Callable[[int], str]) -> pa.Array:
    """A string or binary array as large_string; raises DataValidationError naming
    `where(index)` for the first value that is not UTF-8."""
    try:
        return array.cast(pa.large_binary()).cast(pa.large_string())
    except pa.ArrowInvalid:
        for index, value in enumerate(array.cast(pa.large_binary()).to_pylist()):
            if value is not None:
                _decoded(value, where(index))   # raises for the first one that is not UTF-8
        raise


def arrow_texts(array: pa.Array, where: Callable[[int], str]) -> np.ndarray:
    """A flat Arrow column as the text a CSV cell would hold (object array of str):
    null -> "", bool -> "1"/"0", floats by `float_texts`, integers and decimals as
    digits, strings and binary as UTF-8 text. `where(index)` names a value's place."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    kind = array.type
    if pa.types.is_null(kind):
        return np.full(len(array), "", dtype=object)
    if pa.types.is_boolean(kind):
        texts = pc.if_else(array, "1", "0")
    elif pa.types.is_floating(kind):
        texts = float_texts(array)
    elif _is_text(kind):
        texts = utf8_texts(array, where)
    else:   # integers, decimals
        texts = array.cast(pa.large_string())
    return texts.fill_null("").to_numpy(zero_copy_only=False).astype(object)


def _is_text(kind: pa.DataType) -> bool:
    return (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
            or getattr(pa.types, "is_string_view", lambda _: False)(kind)
            or getattr(pa.types, "is_binary_view", lambda _: False)(kind))


def readable_type(kind: pa.DataType) -> bool:
    """Whether `arrow_texts` reads a column of this type (flat strings, binary,
    numbers, decimals, booleans, all-null; dictionary-encoded ones too)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return (pa.types.is_null(kind) or pa.types.is_boolean(kind) or pa.types.is_integer(kind)
            or pa.types.is_floating(kind) or pa.types.is_decimal(kind) or _is_text(kind))


# ---------------------------------------------------------------- Parquet

class ParquetReader(_FileReader):
    """Rows of a Parquet file, or of the *.parquet files of a directory in name order,
    read CHUNK_ROWS at a time (only the columns asked for)."""

    format = "parquet"
    kind = "*.parquet"
    unit = ROW

    @staticmethod
    def matches(name: str) -> bool:
        return name.lower().endswith(".parquet")

    def chunks(self, wanted: Sequence[str], required: Sequence[str],
               spec_name: str) -> Iterator[Chunk]:
        """Yields each file's rows as text `Chunk`s (columns: those of `wanted` the
        file has, in that order); raises DataValidationError for a file that is not
        Parquet, lacks a `required` column or has a column ingest does not read."""
        for file in self.files:
            yield from parquet_chunks(file, wanted, required, spec_name)


def parquet_chunks(file: str, wanted: Sequence[str], required: Sequence[str],
                   spec_name: str) -> Iterator[Chunk]:
    """The rows of one Parquet file as text Chunks of up to CHUNK_ROWS rows."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as error:
        raise DataValidationError(f"{file}: not a readable Parquet file: {error}") from None
    schema = parquet.schema_arrow
    columns = _parquet_columns(file, schema, wanted, required, spec_name)
    ignored = tuple(name for name in schema.names if name not in wanted)
    first = 1
    batches = parquet.iter_batches(batch_size=ingest.CHUNK_ROWS, columns=columns)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as error:
            raise DataValidationError(f"{file}: cannot read the rows from row {first} on: "
                                      f"{error}") from None
        if batch is None:
            return
        if batch.num_rows:
            yield Chunk(_parquet_frame(batch, file, first),
                        first + np.arange(batch.num_rows, dtype=np.int64), file, ROW,
                        ignored=ignored)
        first += batch.num_rows


def _parquet_columns(file: str, schema: pa.Schema, wanted: Sequence[str],
                     required: Sequence[str], spec_name: str) -> list[str]:
    """The `wanted` columns the file has; raises for a missing `required` column, a
    repeated name, or a column of a type ingest does not read (nested ones included)."""
    names = schema.names
    repeated = sorted({name for name in names if name in wanted and names.count(name) > 1})
    if repeated:
        raise DataValidationError(f"{file}: duplicate column name(s) {repeated} in the "
                                  f"Parquet schema")
    missing = [name for name in required if name not in names]
    if missing:
        raise ingest.missing_columns_error(file, missing, spec_name,
                                    f"the Parquet schema has {names}")
    columns = [name for name in wanted if name in names]
    for name in columns:
        kind = schema.field(name).type
        if pa.types.is_nested(kind):
            raise DataValidationError(
                f"{file}: column {name!r} is a nested column ({kind}); ingest reads flat "
                f"columns only (one string, number or boolean per row)")
        if not readable_type(kind):
            raise DataValidationError(
                f"{file}: column {name!r} has type {kind}, which ingest does not read "
                f"(strings, UTF-8 binary, integers, floats, decimals and booleans are read)")
    return columns


def _parquet_frame(batch: pa.RecordBatch, file: str, first: int) -> pd.DataFrame:
    """A batch as a frame of text columns; `first` is its first row's number in the file."""
    texts = {}
    for name, column in zip(batch.schema.names, batch.columns):
        texts[name] = arrow_texts(column, lambda i, name=name: f"{file} row {first + i}, "
                                                                 f"column {name!r}")
    return pd.DataFrame(texts, index=pd.RangeIndex(batch.num_rows))


# ---------------------------------------------------------------- TFRecord

class TFRecordReader(_FileReader):
    """Serialized tf.Examples of a TFRecord file, or of every file of a directory in
    name order, read CHUNK_ROWS records at a time."""

    format = "tfrecord"
    kind = "TFRecord"
    unit = RECORD

    def chunks(self, wanted: Sequence[str], required: Sequence[str],
               spec_name: str) -> Iterator[Chunk]:
        """Yields each file's records as text `Chunk`s (a column per `wanted` feature);
        raises DataValidationError for a file that is not TFRecord, a record that is
        not a tf.Example, or a `required` feature no record of a file's first chunk has."""
        for file in self.files:
            yield from tfrecord_chunks(file, wanted, required, spec_name)


def tfrecord_compression(file: str) -> str:
    """"GZIP" or "" (uncompressed): the first that reads the file's first record,
    trying GZIP first for a name ending in .gz. Raises DataValidationError when
    neither does."""
    import tensorflow as tf

    order = ("GZIP", "") if file.lower().endswith(".gz") else ("", "GZIP")
    errors = []
    for compression in order:
        try:
            for _ in tf.data.TFRecordDataset(file, compression_type=compression).take(1):
                pass
            return compression
        except tf.errors.OpError as error:
            errors.append(f"{compression or 'uncompressed'}: {_first_line(error.message)}")
    raise DataValidationError(f"{file}: not a TFRecord file, uncompressed or GZIP "
                              f"({'; '.join(errors)})")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


_RECORD_FRAME_BYTES = 16   # a TFRecord's length (8 bytes) and two CRCs (4 each) around its data


def record_batches(file: str, compression: str) -> Iterator[list[bytes]]:
    """The file's records in lists of up to CHUNK_ROWS; raises DataValidationError
    naming the first record that cannot be read (corrupt or cut-short data; also a
    file cut inside a record's header, which TensorFlow's reader takes for its end)."""
    import tensorflow as tf

    batches = tf.data.TFRecordDataset(file, compression_type=compression).batch(
        ingest.CHUNK_ROWS).as_numpy_iterator()
    read = consumed = 0
    while True:
        try:
            batch = next(batches, None)
        except tf.errors.OpError as error:
            bad = read + _readable_records(file, compression, read) + 1
            raise _unreadable(file, bad, _first_line(error.message)) from None
        if batch is None:
            break
        yield list(batch)
        read += len(batch)
        consumed += sum(len(record) for record in batch) + _RECORD_FRAME_BYTES * len(batch)
    left = _record_bytes(file, compression) - consumed
    if left:
        raise _unreadable(file, read + 1, f"the file ends {left} byte(s) into the record")


def _unreadable(file: str, record: int, why: str) -> DataValidationError:
    return DataValidationError(f"{file} record {record}: cannot read the TFRecord data ({why}); "
                               f"the file is corrupt or cut short")


def _record_bytes(file: str, compression: str) -> int:
    """The bytes of the file's TFRecord framing and data (decompressed for GZIP)."""
    if not compression:
        return os.path.getsize(file)
    size = 0
    try:
        with gzip.open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                size += len(block)
    except (OSError, EOFError, zlib.error) as error:
        raise DataValidationError(f"{file}: cannot decompress the GZIP data ({error}); the file "
                                  f"is corrupt or cut short") from None
    return size


def _readable_records(file: str, compression: str, skip: int) -> int:
    """How many records after the first `skip` read one by one before an error."""
    import tensorflow as tf

    count = 0
    try:
        for _ in tf.data.TFRecordDataset(file, compression_type=compression).skip(skip):
            count += 1
    except tf.errors.OpError:
        pass
    return count


def tfrecord_chunks(file: str, wanted: Sequence[str], required: Sequence[str],
                    spec_name: str) -> Iterator[Chunk]:
    """The records of one TFRecord file as text Chunks of up to CHUNK_ROWS rows."""
    first = 1
    for records in record_batches(file, tfrecord_compression(file)):
        cells, seen, extra = example_cells(records, file, first, wanted)
        if first == 1:
            missing = [name for name in required if name not in seen]
            if missing:
                raise ingest.missing_columns_error(
                    file, missing, spec_name, f"no record among records 1-{len(records)} has "
                    f"them; the records have features {sorted(seen | set(extra))}")
        frame, problems = {}, []
        for name in wanted:
            frame[name], found = cell_texts(cells[name], file, name, first)
            problems.extend(found)
        yield Chunk(pd.DataFrame(frame, index=pd.RangeIndex(len(records))),
                    first + np.arange(len(records), dtype=np.int64), file, RECORD,
                    ignored=tuple(extra), problems=tuple(problems))
        first += len(records)


def parse_example(record: bytes, file: str, number: int):
    """The tf.Example of a serialized record; raises DataValidationError naming
    the file and record when the bytes are not one (also for a message with fields a
    tf.Example does not have, such as a tf.SequenceExample)."""
    from google.protobuf import message, unknown_fields
    from tensorflow.core.example import example_pb2

    try:
        example = example_pb2.Example.FromString(record)
    except message.DecodeError as error:
        raise DataValidationError(f"{file} record {number}: not a serialized tf.Example "
                                  f"({error})") from None
    if len(unknown_fields.UnknownFieldSet(example)):
        raise DataValidationError(
            f"{file} record {number}: not a tf.Example (it has fields a tf.Example does not "
            f"have; a tf.SequenceExample or another message?)")
    return example


def example_cells(records: Sequence[bytes], file: str, first: int, wanted: Sequence[str]):
    """Per wanted feature, one cell per record: None (absent or no values), the one
    value (bytes, int or float), or a tuple of several values. Also returns the
    wanted features some record has (a set) and the other features seen (a list)."""
    cells = {name: [None] * len(records) for name in wanted}
    wanted_set, seen, extra = set(wanted), set(), {}
    for index, record in enumerate(records):
        features = parse_example(record, file, first + index).features.feature
        for name, feature in features.items():
            if name not in wanted_set:
                extra[name] = None
                continue
            seen.add(name)
            kind = feature.WhichOneof("kind")
            values = getattr(feature, kind).value if kind else ()
            if len(values) == 1:
                cells[name][index] = values[0]
            elif len(values) > 1:
                cells[name][index] = tuple(values)
    return cells, seen, list(extra)


def cell_texts(cells: list, file: str, name: str, first: int):
    """(the cells as CSV text, an object array; CellProblems of cells with several
    values). bytes -> UTF-8 text, int -> digits, float (float32) -> `float_texts`,
    None -> "". A cell with several values holds them as "[a, b]" text."""
    texts = np.full(len(cells), "", dtype=object)
    float_rows, floats, problems = [], [], []
    for row, value in enumerate(cells):
        kind = type(value)
        if value is None:
            continue
        if kind is bytes:
            texts[row] = _decoded(value, f"{file} record {first + row}, feature {name!r}")
        elif kind is int:
            texts[row] = str(value)
        elif kind is float:
            float_rows.append(row)
            floats.append(value)
        else:
            texts[row] = "[" + ", ".join(_value_text(v) for v in value) + "]"
            problems.append(CellProblem(row, name, MULTIPLE_VALUES,
                                        f"{len(value)} values {shown(texts[row])} where a "
                                        f"feature must hold exactly one"))
    if float_rows:
        texts[float_rows] = float_texts(pa.array(np.array(floats, dtype=np.float32))).to_numpy(
            zero_copy_only=False)
    return texts, problems


def _decoded(value: bytes, where: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise DataValidationError(f"{where}: bytes that are not UTF-8 text "
                                  f"({shown_bytes(value)})") from None


def shown_bytes(value: bytes) -> str:
    """`value` as a bytes literal for a message, cut to 40 bytes."""
    return repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value):,} bytes)"


def _value_text(value) -> str:
    """One of several values of a feature as text, for messages and the rejects file."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, float):
        return str(np.float32(value))
    return str(value)
