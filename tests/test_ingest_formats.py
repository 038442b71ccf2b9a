"""Parquet and TFRecord inputs: the same rows give the same tf.Examples and splits as
through CSV, and bad cells and files get errors and rejects naming file, row or
record, column and reason."""

import gzip
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from conftest import REPO
from transform import ingest
from transform.datasets import synthetic
from transform.formats import reader_for
from transform.ingest import DataValidationError
from transform.spec import CATEGORICAL, NUMERIC, DatasetSpec, FeatureSpec, TaskChain

SPEC = DatasetSpec(
    name="tiny",
    features=(FeatureSpec("country", CATEGORICAL), FeatureSpec("age", NUMERIC),
              FeatureSpec("slot", CATEGORICAL, dtype="int")),
    chain=TaskChain(steps=("click", "buy"), core_target="amount", core_target_gated=True),
)
GOOD = pd.DataFrame({"country": ["de", "fr", "de"], "age": [31.0, 40.0, 22.0], "slot": [2, 1, 3],
                     "click": [1, 0, 1], "buy": [1, 0, 0], "amount": [12.5, 0.0, 0.0]})
HINT = "pass --bad-rows reject to set bad rows aside in a rejects file"


# ---------------------------------------------------------------- writing inputs

def write_csv(frame: pd.DataFrame, path) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def write_parquet(frame: pd.DataFrame, path, **kwargs) -> str:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, **kwargs)
    return str(path)


def feature(value) -> tf.train.Feature:
    """One value as the usual kind: str -> bytes_list, int -> int64_list, float ->
    float_list; a list -> several values of its first element's kind; None -> absent."""
    values = value if isinstance(value, list) else [value]
    if not values:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[]))
    if isinstance(values[0], (str, bytes)):
        return tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[v.encode() if isinstance(v, str) else v for v in values]))
    if isinstance(values[0], (int, np.integer)):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def example(row: dict) -> bytes:
    """A serialized tf.Example of the row's cells (a None cell is left out)."""
    return tf.train.Example(features=tf.train.Features(feature={
        name: feature(value) for name, value in row.items() if value is not None
    })).SerializeToString()


def write_tfrecord(rows, path, gzip_it: bool = False) -> str:
    """`rows` (a frame, or a list of dicts or serialized records) as a TFRecord file."""
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    options = "GZIP" if gzip_it else None
    with tf.io.TFRecordWriter(str(path), options=options) as writer:
        for row in rows:
            writer.write(row if isinstance(row, bytes) else example(row))
    return str(path)


def synthetic_rows(rows: int) -> pd.DataFrame:
    return synthetic.generate(synthetic.FunnelConfig(rows=rows, sample_seed=3))


# ---------------------------------------------------------------- running ingest

def run(tmp_path, format_name, path, spec=SPEC, staged="staged", **kwargs):
    return ingest.ingest(reader_for(format_name, str(path)), spec, str(tmp_path / staged),
                         log=kwargs.pop("log", lambda _: None), **kwargs)


def records_per_split(result) -> dict:
    """{split: sorted deterministic serializations of its tf.Examples} (order-free)."""
    out = {}
    for split in ingest.SPLIT_NAMES:
        files = tf.io.gfile.glob(f"{result.examples_uri}/Split-{split}/*")
        out[split] = sorted(
            tf.train.Example.FromString(r.numpy()).SerializeToString(deterministic=True)
            for r in tf.data.TFRecordDataset(files, compression_type="GZIP"))
    return out


def rejects_of(result) -> pd.DataFrame:
    return pd.read_csv(result.rejects_path, dtype=str, keep_default_na=False)


def error_of(tmp_path, format_name, path, spec=SPEC, **kwargs) -> str:
    with pytest.raises(DataValidationError) as raised:
        run(tmp_path, format_name, path, spec, **kwargs)
    return str(raised.value)


WRITERS = {"parquet": write_parquet, "tfrecord": write_tfrecord}


# ---------------------------------------------------------------- same as CSV

@pytest.mark.parametrize("format_name", ["parquet", "tfrecord"])
def test_the_same_rows_give_the_same_examples_and_splits_as_csv(tmp_path, format_name):
    frame = synthetic_rows(3000)
    through_csv = run(tmp_path, "csv", write_csv(frame, tmp_path / "rows.csv"), synthetic.SPEC)
    path = WRITERS[format_name](frame, tmp_path / f"rows.{format_name}")
    result = run(tmp_path, format_name, path, synthetic.SPEC)
    assert (result.rows_read, result.rows_written) == (3000, 3000)
    assert result.split_rows == through_csv.split_rows
    assert records_per_split(result) == records_per_split(through_csv)
    assert result.examples_dir != through_csv.examples_dir


@pytest.mark.parametrize("format_name", ["parquet", "tfrecord"])
def test_chunks_across_files_give_the_same_examples_and_number_rows_per_file(
        tmp_path, monkeypatch, format_name):
    """Two files (and entries a directory reader skips), read 7 rows at a time."""
    monkeypatch.setattr(ingest, "CHUNK_ROWS", 7)
    frame = synthetic_rows(40)
    through_csv = run(tmp_path, "csv", write_csv(frame, tmp_path / "rows.csv"), synthetic.SPEC)
    directory = tmp_path / "dir"
    directory.mkdir()
    suffix = ".parquet" if format_name == "parquet" else ".tfrecord"
    WRITERS[format_name](frame[:25], directory / f"part-0{suffix}")
    WRITERS[format_name](frame[25:].reset_index(drop=True), directory / f"part-1{suffix}")
    (directory / "_SUCCESS").write_text("")
    (directory / ".part-0.crc").write_text("not data")
    logged = []
    result = run(tmp_path, format_name, directory, synthetic.SPEC, log=logged.append)
    assert records_per_split(result) == records_per_split(through_csv)
    # 25 rows: chunks of 7, 7, 7, 4; 15 rows: 7, 7, 1 (a chunk never spans two files).
    shards = {os.path.basename(f) for f in tf.io.gfile.glob(f"{result.examples_uri}/*/*")}
    assert shards == {f"data-{i:05d}.tfrecord.gz" for i in range(7)}
    assert f"note: skipped 2 name(s) in directory {directory} that are not data files: " \
           f"['.part-0.crc', '_SUCCESS']" in logged

    # A bad cell in the second file's 10th row (its second chunk) names that file and row.
    bad = frame.copy()
    bad.loc[34, "click"] = 2
    shutil.rmtree(directory)
    directory.mkdir()
    WRITERS[format_name](bad[:25], directory / f"part-0{suffix}")
    WRITERS[format_name](bad[25:].reset_index(drop=True), directory / f"part-1{suffix}")
    unit, field = ("row", "column") if format_name == "parquet" else ("record", "feature")
    assert error_of(tmp_path, format_name, directory, synthetic.SPEC) == (
        f"{directory / f'part-1{suffix}'} {unit} 10, {field} 'click': '2' is not a binary "
        f"label (expected 0 or 1) (rows with problems in {unit}s 8-14: 1 non_binary_label; "
        f"{HINT})")


@pytest.mark.parametrize("format_name", ["parquet", "tfrecord"])
def test_unchanged_input_is_reused_and_a_changed_file_in_a_directory_is_not(tmp_path,
                                                                             format_name):
    directory = tmp_path / "dir"
    directory.mkdir()
    write = WRITERS[format_name]
    write(GOOD, directory / f"a.{format_name}")
    write(GOOD.assign(age=GOOD.age + 1), directory / f"b.{format_name}")
    first = run(tmp_path, format_name, directory)
    again = run(tmp_path, format_name, directory)
    assert again.reused and again.examples_dir == first.examples_dir
    assert first.rows_read == 6
    write(GOOD.assign(age=GOOD.age + 2), directory / f"b.{format_name}")
    changed = run(tmp_path, format_name, directory)
    assert not changed.reused and changed.examples_dir != first.examples_dir


# ---------------------------------------------------------------- Parquet cells

def test_parquet_types_become_csv_text(tmp_path):
    """bool steps are 0/1, float32/int8/decimal/dictionary columns read as their values."""
    import decimal

    table = pa.table({
        "country": pa.array(["de", "fr", "de"]).dictionary_encode(),
        "age": pa.array([31.0, 40.1, 22.0], pa.float32()),
        "slot": pa.array([2, 1, 3], pa.int8()),
        "click": pa.array([True, False, True]),
        "buy": pa.array([True, False, False]),
        "amount": pa.array([decimal.Decimal("12.50"), decimal.Decimal("0"),
                            decimal.Decimal("0.00")], pa.decimal128(5, 2)),
        "notes": pa.array(["x", "y", "z"]),
    })
    pq.write_table(table, tmp_path / "typed.parquet")
    logged = []
    result = run(tmp_path, "parquet", tmp_path / "typed.parquet", log=logged.append)
    assert (result.rows_read, result.rows_written) == (3, 3)
    assert "note: ignoring column(s) ['notes'] that spec 'tiny' does not use" in logged
    through_csv = run(tmp_path, "csv", write_csv(GOOD.assign(age=[31.0, 40.1, 22.0]),
                                                 tmp_path / "good.csv"))
    assert records_per_split(result) == records_per_split(through_csv)


@pytest.mark.parametrize("column, values, location, detail, reason", [
    ("age", [31.0, None, 22.0], "row 2, column 'age'", "missing value", "missing_value"),
    ("country", ["de", None, "fr"], "row 2, column 'country'", "missing value", "missing_value"),
    ("age", ["31", "old", "22"], "row 2, column 'age'", "cannot parse 'old' as a number",
     "unparsable_number"),
    ("slot", [2.0, 2.5, 3.0], "row 2, column 'slot'", "cannot parse '2.5' as an integer",
     "unparsable_number"),
    ("age", [31.0, float("nan"), 22.0], "row 2, column 'age'", "non-finite value 'nan'",
     "non_finite"),
    ("age", [31.0, 1e300, 22.0], "row 2, column 'age'",
     "'1e+300' is out of range for float32", "out_of_range"),
    ("amount", [12.5, 0.0, -3.5], "row 3, column 'amount'",
     "negative value -3.5 for the continuous target", "negative_target"),
])
def test_parquet_bad_cells_name_file_row_and_column(tmp_path, column, values, location,
                                                    detail, reason):
    # Built from lists: None is a null and NaN a NaN (pandas' NaN would be a null).
    table = pa.table({name: pa.array(values if name == column else GOOD[name].tolist())
                      for name in GOOD.columns})
    path = str(tmp_path / "d.parquet")
    pq.write_table(table, path)
    assert error_of(tmp_path, "parquet", path) == (
        f"{path} {location}: {detail} (rows with problems: 1 {reason}; {HINT})")


def test_parquet_reject_mode_names_file_and_row(tmp_path):
    frame = pd.DataFrame({"country": ["de", "fr", None, "de"], "age": ["31", "old", "30", "1"],
                          "slot": [2, 1, 1, 1], "click": [1, 0, 0, 0], "buy": [1, 0, 1, 0],
                          "amount": [12.5, 0.0, 0.0, 0.0]})
    path = write_parquet(frame, tmp_path / "d.parquet")
    result = run(tmp_path, "parquet", path, bad_rows="reject")
    assert (result.rows_read, result.rows_written) == (4, 2)
    assert result.reject_counts == {"unparsable_number": 1, "missing_value": 1,
                                    "chain_violation": 1}
    rejects = rejects_of(result)
    assert list(rejects.columns[:3]) == ["_file", "_row", "_reasons"]
    assert rejects["_file"].tolist() == [path, path]
    assert rejects["_row"].tolist() == ["2", "3"]
    assert rejects["age"].tolist() == ["old", "30"]
    assert rejects["_reasons"].tolist() == [
        "age: cannot parse 'old' as a number",
        "country: missing value; buy: 'buy' is 1 while the previous step 'click' is 0"]


def test_parquet_structural_problems_stop_the_ingest(tmp_path):
    path = write_parquet(GOOD.drop(columns=["slot"]), tmp_path / "missing.parquet")
    assert error_of(tmp_path, "parquet", path) == (
        f"{path}: missing column(s) ['slot'] required by spec 'tiny' (the Parquet schema has "
        f"['country', 'age', 'click', 'buy', 'amount'])")

    nested = pa.Table.from_pandas(GOOD, preserve_index=False).set_column(
        1, "age", pa.array([[31.0], [40.0, 41.0], [22.0]]))
    pq.write_table(nested, tmp_path / "nested.parquet")
    message = error_of(tmp_path, "parquet", tmp_path / "nested.parquet")
    assert message.startswith(f"{tmp_path / 'nested.parquet'}: column 'age' is a nested "
                              f"column (list<")   # list<element: double> as Parquet stores it
    assert message.endswith("ingest reads flat columns only (one string, number or boolean "
                            "per row)")

    timed = pa.Table.from_pandas(GOOD, preserve_index=False).set_column(
        0, "country", pa.array(pd.to_datetime(["2024-01-01"] * 3)))
    pq.write_table(timed, tmp_path / "timed.parquet")
    assert error_of(tmp_path, "parquet", tmp_path / "timed.parquet").startswith(
        f"{tmp_path / 'timed.parquet'}: column 'country' has type timestamp[")

    binary = pa.Table.from_pandas(GOOD, preserve_index=False).set_column(
        0, "country", pa.array([b"de", b"\xff", b"fr"], pa.binary()))
    pq.write_table(binary, tmp_path / "binary.parquet")
    assert error_of(tmp_path, "parquet", tmp_path / "binary.parquet") == (
        f"{tmp_path / 'binary.parquet'} row 2, column 'country': bytes that are not UTF-8 "
        f"text (b'\\xff')")

    (tmp_path / "text.parquet").write_text("country,age\nde,31\n")
    assert error_of(tmp_path, "parquet", tmp_path / "text.parquet").startswith(
        f"{tmp_path / 'text.parquet'}: not a readable Parquet file: ")

    empty = tmp_path / "empty-dir"
    empty.mkdir()
    (empty / "_SUCCESS").write_text("")
    assert error_of(tmp_path, "parquet", empty) == (
        f"{empty}: no *.parquet files in the directory (skipped: ['_SUCCESS'])")
    assert error_of(tmp_path, "parquet", tmp_path / "absent.parquet") == (
        f"{tmp_path / 'absent.parquet'}: file not found")

    no_rows = write_parquet(GOOD[:0], tmp_path / "no-rows.parquet")
    assert error_of(tmp_path, "parquet", no_rows) == (
        f"{no_rows}: no data rows (in 1 parquet file(s))")


# ---------------------------------------------------------------- TFRecord cells

def good_rows() -> list[dict]:
    return GOOD.to_dict("records")


@pytest.mark.parametrize("change, location, detail, reason", [
    ({"age": None}, "record 2, feature 'age'", "missing value", "missing_value"),
    ({"age": []}, "record 2, feature 'age'", "missing value", "missing_value"),
    ({"age": [31.0, 32.5]}, "record 2, feature 'age'",
     "2 values '[31.0, 32.5]' where a feature must hold exactly one", "multiple_values"),
    ({"age": "old"}, "record 2, feature 'age'", "cannot parse 'old' as a number",
     "unparsable_number"),
    ({"slot": 2.5}, "record 2, feature 'slot'", "cannot parse '2.5' as an integer",
     "unparsable_number"),
    ({"click": 2}, "record 2, feature 'click'", "'2' is not a binary label (expected 0 or 1)",
     "non_binary_label"),
    ({"amount": float("inf")}, "record 2, feature 'amount'",
     "non-finite value 'inf' for the continuous target", "non_finite"),
])
def test_tfrecord_bad_cells_name_file_record_and_feature(tmp_path, change, location, detail,
                                                         reason):
    rows = good_rows()
    rows[1].update(change)
    path = write_tfrecord(rows, tmp_path / "d.tfrecord")
    assert error_of(tmp_path, "tfrecord", path) == (
        f"{path} {location}: {detail} (rows with problems: 1 {reason}; {HINT})")


def test_tfrecord_reject_mode_names_file_and_record(tmp_path):
    rows = good_rows() + [dict(good_rows()[0], click=[1, 0]),          # several values
                          dict(good_rows()[0], age=None),               # absent
                          dict(good_rows()[0], country=7)]              # int64 in a string feature
    path = write_tfrecord(rows, tmp_path / "d.tfrecord.gz", gzip_it=True)
    result = run(tmp_path, "tfrecord", path, bad_rows="reject")
    assert (result.rows_read, result.rows_written) == (6, 4)
    # The several-valued step is reported once: not also a missing value or, in the
    # next step, a chain violation.
    assert result.reject_counts == {"multiple_values": 1, "missing_value": 1}
    rejects = rejects_of(result)
    assert list(rejects.columns[:3]) == ["_file", "_record", "_reasons"]
    assert rejects["_record"].tolist() == ["4", "5"]
    assert rejects["click"].tolist() == ["[1, 0]", "1"]
    assert rejects["_reasons"].tolist() == [
        "click: 2 values '[1, 0]' where a feature must hold exactly one",
        "age: missing value"]


def test_tfrecord_compression_is_found_by_reading(tmp_path):
    frame = synthetic_rows(50)
    through_csv = run(tmp_path, "csv", write_csv(frame, tmp_path / "rows.csv"), synthetic.SPEC)
    for name, gzip_it in (("plain.gz", False), ("packed.tfrecord", True)):
        path = write_tfrecord(frame, tmp_path / name, gzip_it=gzip_it)
        result = run(tmp_path, "tfrecord", path, synthetic.SPEC)
        assert records_per_split(result) == records_per_split(through_csv), name


def test_tfrecord_structural_problems_stop_the_ingest(tmp_path):
    rows = good_rows()
    path = write_tfrecord(rows[:2] + [b"country,age,slot\n"] + rows[2:], tmp_path / "text.tfrecord")
    message = error_of(tmp_path, "tfrecord", path, bad_rows="reject")
    assert message.startswith(f"{path} record 3: not a serialized tf.Example (")

    sequence = tf.train.SequenceExample(
        context=tf.train.Features(feature={"age": feature(31.0)}),
        feature_lists=tf.train.FeatureLists(feature_list={
            "clicks": tf.train.FeatureList(feature=[feature(1)])})).SerializeToString()
    path = write_tfrecord([sequence] + rows, tmp_path / "sequence.tfrecord")
    assert error_of(tmp_path, "tfrecord", path) == (
        f"{path} record 1: not a tf.Example (it has fields a tf.Example does not have; a "
        f"tf.SequenceExample or another message?)")

    path = write_tfrecord([{k: v for k, v in r.items() if k != "slot"} | {"extra": 1}
                           for r in rows], tmp_path / "missing.tfrecord")
    assert error_of(tmp_path, "tfrecord", path) == (
        f"{path}: missing column(s) ['slot'] required by spec 'tiny' (no record among "
        f"records 1-3 has them; the records have features ['age', 'amount', 'buy', 'click', "
        f"'country', 'extra'])")

    path = write_tfrecord(rows[:1] + [dict(rows[1], country=b"\xff")], tmp_path / "bytes.tfrecord")
    assert error_of(tmp_path, "tfrecord", path) == (
        f"{path} record 2, feature 'country': bytes that are not UTF-8 text (b'\\xff')")

    (tmp_path / "rows.csv").write_text("country,age\nde,31\n")
    assert error_of(tmp_path, "tfrecord", tmp_path / "rows.csv").startswith(
        f"{tmp_path / 'rows.csv'}: not a TFRecord file, uncompressed or GZIP (uncompressed: ")


@pytest.mark.parametrize("into_record", [5, 30])
def test_a_cut_short_tfrecord_file_names_the_record(tmp_path, into_record):
    """Cut 5 bytes into the 5th record's 12-byte header (which TensorFlow's reader
    takes for the end of the file) or 30 bytes in (which it reports)."""
    whole = write_tfrecord(good_rows() * 3, tmp_path / "whole.tfrecord")
    data = open(whole, "rb").read()   # 9 records of the same size
    cut = tmp_path / "cut.tfrecord"
    cut.write_bytes(data[:len(data) * 4 // 9 + into_record])
    message = error_of(tmp_path, "tfrecord", cut, bad_rows="reject")
    assert message.startswith(f"{cut} record 5: cannot read the TFRecord data (")
    assert message.endswith("); the file is corrupt or cut short")
    if into_record == 5:
        assert "(the file ends 5 byte(s) into the record)" in message

    packed = write_tfrecord(good_rows() * 3, tmp_path / "whole.tfrecord.gz", gzip_it=True)
    (tmp_path / "cut.gz").write_bytes(open(packed, "rb").read()[:-into_record])
    assert "cut short" in error_of(tmp_path, "tfrecord", tmp_path / "cut.gz")


def test_gzip_csv_is_not_mistaken_for_tfrecord(tmp_path):
    with gzip.open(tmp_path / "rows.csv.gz", "wt") as handle:
        handle.write("country,age\nde,31\n")
    assert error_of(tmp_path, "tfrecord", tmp_path / "rows.csv.gz").startswith(
        f"{tmp_path / 'rows.csv.gz'}: not a TFRecord file, uncompressed or GZIP (GZIP: ")


# ---------------------------------------------------------------- datasets

def test_parquet_and_tfrecord_datasets_need_data_and_a_spec(tmp_path):
    from transform import datasets

    spec = tmp_path / "spec.json"
    spec.write_text(SPEC.to_json())
    for name in ("parquet", "tfrecord"):
        assert name in datasets.NAMES
        source = datasets.resolve(name, str(tmp_path / "work"), data="x", spec_path=str(spec))
        assert (source.format, source.path, source.spec) == (name, "x", SPEC)
        assert datasets.spec_for(name, str(spec)) == SPEC
        with pytest.raises(ValueError, match=f"the {name} dataset needs both --data PATH and "
                                             f"--spec FILE"):
            datasets.resolve(name, str(tmp_path / "work"), data="x")
        with pytest.raises(ValueError, match=f"the {name} dataset needs --spec FILE"):
            datasets.spec_for(name)
    assert datasets.resolve("csv", str(tmp_path), data="x", spec_path=str(spec)).format == "csv"
    with pytest.raises(ValueError, match="unknown input format 'orc'"):
        reader_for("orc", "x")


# ---------------------------------------------------------------- the pipeline

@pytest.mark.e2e
@pytest.mark.parametrize("format_name", ["parquet", "tfrecord"])
def test_pipeline_runs_on_parquet_and_tfrecord_through_the_cli(tmp_path, format_name):
    """The CLI on 3,000 synthetic rows (the serving tests' size) in a directory of two
    files, 60 train steps and the absolute gates open: a model is blessed and pushed."""
    from tfx_pipeline.cli import OPEN_QUALITY_GATES

    frame = synthetic_rows(3000)
    data = tmp_path / "data"
    data.mkdir()
    WRITERS[format_name](frame[:1500], data / f"part-0.{format_name}")
    WRITERS[format_name](frame[1500:].reset_index(drop=True), data / f"part-1.{format_name}")
    spec = tmp_path / "spec.json"
    spec.write_text(synthetic.SPEC.to_json())
    result = subprocess.run(
        [sys.executable, "-m", "tfx_pipeline", "run", "--dataset", format_name,
         "--data", str(data), "--spec", str(spec), "--train-steps", "60", "--eval-steps", "5",
         *OPEN_QUALITY_GATES, "--pipeline-root", str(tmp_path / "pipeline"),
         "--serving-dir", str(tmp_path / "serving")],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "3000 of 3000 rows passed the checks" in result.stderr
    assert "blessed; pushed to" in result.stdout
    assert len(list((tmp_path / "serving" / "shared_bottom").glob("*/saved_model.pb"))) == 1
