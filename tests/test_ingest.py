"""Input checks: each kind of bad row gets an exact error, or goes to the rejects file."""

import gzip

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from transform.ingest import DataValidationError, ingest_csv
from transform.spec import CATEGORICAL, NUMERIC, DatasetSpec, FeatureSpec, TaskChain

SPEC = DatasetSpec(
    name="tiny",
    features=(FeatureSpec("country", CATEGORICAL), FeatureSpec("age", NUMERIC),
              FeatureSpec("slot", CATEGORICAL, dtype="int")),
    chain=TaskChain(steps=("click", "buy"), core_target="amount", core_target_gated=True),
)
HEADER = "country,age,slot,click,buy,amount\n"
GOOD_ROWS = "de,31,2,1,1,12.5\nfr,40,1,0,0,0\nde,22,3,1,0,0\n"


def write(tmp_path, body, header=HEADER, name="data.csv"):
    path = tmp_path / name
    path.write_text(header + body)
    return str(path)


def run(tmp_path, path, **kwargs):
    return ingest_csv(path, SPEC, str(tmp_path / "staged"), log=lambda _: None, **kwargs)


def read_examples(result):
    files = tf.io.gfile.glob(f"{result.examples_dir}/examples/*")
    rows = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        example = tf.train.Example.FromString(record.numpy())
        rows.append(example.features.feature)
    return rows


def test_good_rows_become_typed_examples(tmp_path):
    result = run(tmp_path, write(tmp_path, GOOD_ROWS))
    assert (result.rows_read, result.rows_written, result.reject_counts) == (3, 3, {})
    first = read_examples(result)[0]
    assert first["country"].bytes_list.value == [b"de"]
    assert first["age"].float_list.value == [31.0]
    assert first["slot"].int64_list.value == [2]
    assert first["click"].int64_list.value == [1]
    assert first["amount"].float_list.value == [12.5]


def test_unchanged_input_reuses_staged_data(tmp_path):
    path = write(tmp_path, GOOD_ROWS)
    first = run(tmp_path, path)
    second = run(tmp_path, path)
    assert second.reused and second.examples_dir == first.examples_dir


def test_gzipped_csv_is_read(tmp_path):
    path = tmp_path / "data.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(HEADER + GOOD_ROWS)
    assert run(tmp_path, str(path)).rows_written == 3


def test_missing_column(tmp_path):
    path = write(tmp_path, "de,31,1,1,12.5\n", header="country,age,click,buy,amount\n")
    with pytest.raises(DataValidationError) as raised:
        run(tmp_path, path)
    assert str(raised.value).startswith(
        f"{path}: missing column(s) ['slot'] required by spec 'tiny' (the header has "
        "['country', 'age', 'click', 'buy', 'amount'])")


@pytest.mark.parametrize("bad_row, location, detail, reason", [
    ("de,old,2,1,1,5", "line 5, column 'age'", "cannot parse 'old' as a number", "unparsable_number"),
    ("de,31,2.5,1,1,5", "line 5, column 'slot'", "cannot parse '2.5' as an integer", "unparsable_number"),
    ("de,,2,1,1,5", "line 5, column 'age'", "missing value", "missing_value"),
    ("de,31,2,2,0,0", "line 5, column 'click'", "'2' is not a binary label (expected 0 or 1)", "non_binary_label"),
    ("de,31,2,0,1,5", "line 5, column 'buy'", "'buy' is 1 while the previous step 'click' is 0", "chain_violation"),
    ("de,31,2,1,0,5", "line 5, column 'amount'", "value 5 is non-zero while the last step 'buy' is 0", "chain_violation"),
    ("de,31,2,1,1,-3.5", "line 5, column 'amount'", "negative value -3.5 for the continuous target", "negative_target"),
    ("de,31,2,1,1,inf", "line 5, column 'amount'", "non-finite value 'inf' for the continuous target", "non_finite"),
    ("de,31,2,1,1,nan", "line 5, column 'amount'", "non-finite value 'nan' for the continuous target", "non_finite"),
    ("de,inf,2,1,1,5", "line 5, column 'age'", "non-finite value 'inf'", "non_finite"),
])
def test_bad_row_error_names_file_line_and_column(tmp_path, bad_row, location, detail, reason):
    path = write(tmp_path, GOOD_ROWS + bad_row + "\n")
    with pytest.raises(DataValidationError) as raised:
        run(tmp_path, path)
    assert str(raised.value) == (
        f"{path} {location}: {detail} (rows with problems: 1 {reason}; "
        "pass --bad-rows reject to set bad rows aside in a rejects file)")


def test_reject_mode_sets_bad_rows_aside_with_counts(tmp_path):
    bad = "de,old,2,1,1,5\nfr,30,1,0,1,0\nfr,30,1,0,1,-1\n"
    logged = []
    result = ingest_csv(write(tmp_path, GOOD_ROWS + bad), SPEC, str(tmp_path / "staged"),
                        bad_rows="reject", rejects_path=str(tmp_path / "rejects.csv"),
                        log=logged.append)
    assert (result.rows_read, result.rows_written) == (6, 3)
    assert result.reject_counts == {"unparsable_number": 1, "chain_violation": 2,
                                    "negative_target": 1}
    rejects = pd.read_csv(tmp_path / "rejects.csv", dtype=str, keep_default_na=False)
    assert rejects["_line"].tolist() == ["5", "6", "7"]
    assert rejects["age"].tolist() == ["old", "30", "30"]  # original cells, unchanged
    assert rejects["_reasons"].iloc[2] == (
        "buy: 'buy' is 1 while the previous step 'click' is 0; "
        "amount: negative value -1 for the continuous target")
    assert logged == [f"rejected 3 row(s) (rows per reason: chain_violation: 2, negative_target: 1, "
                      f"unparsable_number: 1); they are in {tmp_path / 'rejects.csv'}"]
    assert len(read_examples(result)) == 3


def test_problem_counts_cover_the_whole_file(tmp_path):
    bad = "".join("de,31,2,0,1,0\n" for _ in range(4)) + "de,x,2,1,1,1\n"
    with pytest.raises(DataValidationError, match=r"rows with problems: 4 chain_violation, "
                                                  r"1 unparsable_number"):
        run(tmp_path, write(tmp_path, GOOD_ROWS + bad))


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataValidationError, match="file not found"):
        run(tmp_path, str(tmp_path / "nope.csv"))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataValidationError, match="the file is empty"):
        run(tmp_path, str(empty))
    with pytest.raises(DataValidationError, match="no data rows after the header"):
        run(tmp_path, write(tmp_path, ""))


def test_hillstrom_file_passes_the_checks(tmp_path, hillstrom_csv):
    from transform.datasets import hillstrom

    result = ingest_csv(hillstrom_csv, hillstrom.SPEC, str(tmp_path), rename=hillstrom.RENAME,
                        log=lambda _: None)
    assert (result.rows_read, result.rows_written) == (64000, 64000)
    examples = read_examples(result)
    raw = pd.read_csv(hillstrom_csv)
    assert sum(e["conversion"].int64_list.value[0] for e in examples) == raw["conversion"].sum()
    spend = np.array([e["spend"].float_list.value[0] for e in examples])
    assert spend.sum() == pytest.approx(raw["spend"].sum(), rel=1e-6)


def test_large_files_are_read_and_written_in_chunks(tmp_path, monkeypatch):
    """Chunks of 2 rows: one shard per chunk, line numbers counted across chunks, the
    same examples as one pass, and a chunk whose rows are all bad writes no shard."""
    body = GOOD_ROWS + "fr,50,2,0,0,0\nit,x,1,0,0,0\nes,19,,0,0,0\n" + GOOD_ROWS  # 6, 7 bad
    path = write(tmp_path, body)
    whole = run(tmp_path / "whole", path, bad_rows="reject")
    monkeypatch.setattr("transform.ingest.CHUNK_ROWS", 2)
    chunked = run(tmp_path / "chunked", path, bad_rows="reject")
    assert (chunked.rows_read, chunked.rows_written) == (9, 7)
    assert chunked.reject_counts == whole.reject_counts == {"unparsable_number": 1,
                                                            "missing_value": 1}
    shards = sorted(p.name for p in (tmp_path / "chunked").glob("staged/*/examples/*"))
    assert shards == ["data-00000.tfrecord.gz", "data-00001.tfrecord.gz",   # lines 2-3, 4-5
                      "data-00003.tfrecord.gz", "data-00004.tfrecord.gz"]   # 8-9, 10
    assert [dict(r) for r in read_examples(chunked)] == [dict(r) for r in read_examples(whole)]
    rejects = pd.read_csv(chunked.rejects_path)
    assert rejects["_line"].tolist() == [6, 7]
    assert pd.read_csv(whole.rejects_path).equals(rejects)


def test_error_in_a_later_chunk_names_its_file_line(tmp_path, monkeypatch):
    monkeypatch.setattr("transform.ingest.CHUNK_ROWS", 2)
    path = write(tmp_path, GOOD_ROWS + "it,x,1,0,0,0\n")
    with pytest.raises(DataValidationError,
                       match=r"data.csv line 5, column 'age': cannot parse 'x' as a number "
                             r"\(rows with problems in lines 4-5: 1 unparsable_number;"):
        run(tmp_path, path)
    assert not list(tmp_path.glob("staged/*/summary.json"))   # nothing marked complete
