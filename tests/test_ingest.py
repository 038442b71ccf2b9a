"""Input checks: each kind of bad row gets an exact error, or goes to the rejects file;
the good rows are written already split, as ImportExampleGen would have split them."""

import collections
import gzip
import hashlib
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from transform.ingest import (DataValidationError, SplitRule, hash_bucket, ingest_csv,
                              require_every_split)
from transform.spec import CATEGORICAL, NUMERIC, DatasetSpec, FeatureSpec, SplitSpec, TaskChain

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


def read_records(result, split="*"):
    """Serialized examples of one split (or all), read the way TFX's readers find them:
    every file in <examples>/Split-<split>/, GZIP."""
    files = tf.io.gfile.glob(f"{result.examples_uri}/Split-{split}/*")
    return [record.numpy() for record in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def read_examples(result, split="*"):
    return [tf.train.Example.FromString(record).features.feature
            for record in read_records(result, split)]


def deterministic(records):
    """Each record serialized deterministically (features in name order)."""
    return [tf.train.Example.FromString(r).SerializeToString(deterministic=True) for r in records]


def canonical(records):
    """Records as a sorted list of their deterministic serializations (order-free)."""
    return sorted(deterministic(records))


def test_good_rows_become_typed_examples(tmp_path):
    result = run(tmp_path, write(tmp_path, GOOD_ROWS))
    assert (result.rows_read, result.rows_written, result.reject_counts) == (3, 3, {})
    first = next(e for e in read_examples(result) if e["age"].float_list.value == [31.0])
    assert first["country"].bytes_list.value == [b"de"]
    assert first["slot"].int64_list.value == [2]
    assert first["click"].int64_list.value == [1]
    assert first["amount"].float_list.value == [12.5]


def test_unchanged_input_reuses_staged_data_and_a_change_does_not(tmp_path):
    path = write(tmp_path, GOOD_ROWS)
    first = run(tmp_path, path)
    logged = []
    second = ingest_csv(path, SPEC, str(tmp_path / "staged"), log=logged.append)
    assert second.reused and second.examples_dir == first.examples_dir
    assert second.split_rows == first.split_rows
    assert logged == [f"rows per split: {first.split_rows['train']} train, "
                      f"{first.split_rows['eval']} eval (ExampleGen's rule: hash of the whole "
                      f"row, 20 % eval)"]
    changed = run(tmp_path, write(tmp_path, GOOD_ROWS.replace("31", "32")))
    assert not changed.reused and changed.examples_dir != first.examples_dir


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
    assert logged[0] == (f"rejected 3 row(s) (rows per reason: chain_violation: 2, "
                         f"negative_target: 1, unparsable_number: 1); they are in "
                         f"{tmp_path / 'rejects.csv'}")
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
    assert sum(result.split_rows.values()) == 64000
    assert 0.19 < result.split_rows["eval"] / 64000 < 0.21   # spec: eval_percent 20
    assert len(read_records(result, "eval")) == result.split_rows["eval"]
    examples = read_examples(result)
    raw = pd.read_csv(hillstrom_csv)
    assert sum(e["conversion"].int64_list.value[0] for e in examples) == raw["conversion"].sum()
    spend = np.array([e["spend"].float_list.value[0] for e in examples])
    assert spend.sum() == pytest.approx(raw["spend"].sum(), rel=1e-6)


def test_large_files_are_read_and_written_in_chunks(tmp_path, monkeypatch):
    """Chunks of 2 rows: one shard per chunk and split, line numbers counted across
    chunks, the same examples in the same splits as one pass, and a chunk whose rows
    are all bad writes no shard."""
    body = GOOD_ROWS + "fr,50,2,0,0,0\nit,x,1,0,0,0\nes,19,,0,0,0\n" + GOOD_ROWS  # 6, 7 bad
    path = write(tmp_path, body)
    whole = run(tmp_path / "whole", path, bad_rows="reject")
    monkeypatch.setattr("transform.ingest.CHUNK_ROWS", 2)
    chunked = run(tmp_path / "chunked", path, bad_rows="reject")
    assert (chunked.rows_read, chunked.rows_written) == (9, 7)
    assert chunked.reject_counts == whole.reject_counts == {"unparsable_number": 1,
                                                            "missing_value": 1}
    shards = {p.name for p in (tmp_path / "chunked").glob("staged/*/examples/Split-*/*")}
    assert shards == {"data-00000.tfrecord.gz", "data-00001.tfrecord.gz",   # lines 2-3, 4-5
                      "data-00003.tfrecord.gz", "data-00004.tfrecord.gz"}   # 8-9, 10
    assert chunked.split_rows == whole.split_rows
    for split in ("train", "eval"):
        assert canonical(read_records(chunked, split)) == canonical(read_records(whole, split))
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


def test_error_when_a_split_gets_no_rows(tmp_path):
    result = run(tmp_path, write(tmp_path, "de,31,2,1,1,12.5\n"))
    empty = "eval" if result.split_rows["train"] else "train"
    with pytest.raises(DataValidationError, match=(
            rf"no rows landed in the '{empty}' split of 1 rows \(hash of the whole row, "
            rf"20 % eval\); the pipeline needs rows in both splits")):
        require_every_split(result, SPEC)


# Serialized deterministically, the tf.Example {click: 1, country: "de"} is these 37
# bytes; their SHA-256 is af607578...a534a207, which is 43 modulo 100 (checked with
# sha256sum and bc). The others, the same way:
#   {click: 0, country: "fr"}  3fe07c2c...f620119d -> 65
#   {click: 1, country: "it"}  bd8c26bb...6c81e0e1 -> 1
#   {click: 0, country: "es"}  2ce885d5...5c41841b9c -> 44
DE_CLICK = (b'\n#\n\x0e\n\x05click\x12\x05\x1a\x03\n\x01\x01'
            b'\n\x11\n\x07country\x12\x06\n\x04\n\x02de')
HAND_BUCKETS = {("de", 1): 43, ("fr", 0): 65, ("it", 1): 1, ("es", 0): 44}


def example(**features) -> tf.train.Example:
    """A tf.Example with one value per feature: str -> bytes, int -> int64, float."""
    built = tf.train.Example()
    for name, value in features.items():
        feature = built.features.feature[name]
        if isinstance(value, str):
            feature.bytes_list.value.append(value.encode())
        elif isinstance(value, int):
            feature.int64_list.value.append(value)
        else:
            feature.float_list.value.append(value)
    return built


def test_split_rule_by_hand():
    """bucket = sha256(key) % 100; buckets below 100 - eval_percent train, the rest eval."""
    assert example(click=1, country="de").SerializeToString(deterministic=True) == DE_CLICK
    assert hashlib.sha256(DE_CLICK).hexdigest() == (
        "af607578c62a86b567cd98155be884fe9d9d4716253f94b1f66cafb7a534a207")
    rule = SplitRule(eval_percent=20)
    for (country, click), bucket in HAND_BUCKETS.items():
        # The record's own feature order does not matter: the key is re-serialized.
        record = example(country=country, click=click).SerializeToString()
        assert hash_bucket(rule.key(record)) == bucket
    splits = {row: rule.split_of(example(country=row[0], click=row[1]).SerializeToString())
              for row in HAND_BUCKETS}
    assert splits == {("de", 1): "train", ("fr", 0): "train", ("it", 1): "train",
                      ("es", 0): "train"}   # 43, 65, 1, 44 < 80
    at_44 = example(country="es", click=0).SerializeToString()
    assert SplitRule(eval_percent=56).split_of(at_44) == "eval"    # train buckets 0-43
    assert SplitRule(eval_percent=55).split_of(at_44) == "train"   # train buckets 0-44
    assert SplitRule(eval_percent=35).split_of(
        example(country="fr", click=0).SerializeToString()) == "eval"   # 65 >= 65


def test_partition_column_splits_by_that_feature_alone():
    """The key is the feature serialized on its own: b'\\n\\x04\\n\\x02u1' for the string
    'u1' (sha256 865cde49...85da6b0129 -> bucket 29), b'\\x1a\\x03\\n\\x01\\x07' for the
    integer 7 (95ca9c84...dac1089d3d -> 33)."""
    by_user = SplitRule(eval_percent=70, partition_column="user")   # train buckets 0-29
    rows = [example(user="u1", click=c, country=k).SerializeToString()
            for c, k in ((0, "de"), (1, "fr"), (1, "it"))]
    assert [by_user.key(r) for r in rows] == [b"\n\x04\n\x02u1"] * 3
    assert {by_user.split_of(r) for r in rows} == {"train"}                     # 29 < 30
    assert SplitRule(71, "user").split_of(rows[0]) == "eval"                    # 29 >= 29
    seven = example(user=7, click=1).SerializeToString()
    assert hash_bucket(SplitRule(20, "user").key(seven)) == 33


def spec_with_split(**split) -> DatasetSpec:
    import dataclasses

    return dataclasses.replace(SPEC, split=SplitSpec(**split))


def many_rows(count: int = 60) -> str:
    """`count` good rows of SPEC, with some exact duplicates."""
    lines = []
    for i in range(count):
        click, buy = i % 2, int(i % 2 == 1 and i % 3 == 0)
        lines.append(f"{['de', 'fr', 'it', 'es', 'pl'][i % 5]},{20 + i % 17},{i % 4},"
                     f"{click},{buy},{7.5 if buy else 0}")
    return "\n".join(lines + lines[:5]) + "\n"


def import_example_gen(input_dir: str, spec: DatasetSpec, output_dir: str) -> None:
    """TFX's ImportExampleGen executor, configured as the pipeline configured it before
    ingest split the rows itself."""
    from tfx.components.example_gen.import_example_gen import executor
    from tfx.proto import example_gen_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    Split = example_gen_pb2.SplitConfig.Split
    splits = example_gen_pb2.SplitConfig(splits=[
        Split(name="train", hash_buckets=100 - spec.split.eval_percent),
        Split(name="eval", hash_buckets=spec.split.eval_percent)])
    if spec.split.partition_column:
        splits.partition_feature_name = spec.split.partition_column
    examples = standard_artifacts.Examples()
    examples.uri = output_dir
    executor.Executor().Do({}, {"examples": [examples]}, {
        "input_base": input_dir,
        "input_config": proto_utils.proto_to_json(example_gen_pb2.Input(
            splits=[example_gen_pb2.Input.Split(name="single_split", pattern="*")])),
        "output_config": proto_utils.proto_to_json(example_gen_pb2.Output(split_config=splits)),
        "output_data_format": example_gen_pb2.FORMAT_TF_EXAMPLE,
        "output_file_format": example_gen_pb2.FORMAT_TFRECORDS_GZIP})


@pytest.mark.parametrize("split", [dict(eval_percent=30),
                                   dict(eval_percent=40, partition_column="country"),
                                   dict(eval_percent=50, partition_column="slot")])
def test_rows_land_in_the_split_import_example_gen_gives_them(tmp_path, split):
    """Ingest's records, pooled in one directory as the pipeline used to hand them to
    ImportExampleGen, split by the real ImportExampleGen: the same rows in each split."""
    spec = spec_with_split(**split)
    result = ingest_csv(write(tmp_path, many_rows()), spec, str(tmp_path / "staged"),
                        log=lambda _: None)
    assert sum(result.split_rows.values()) == result.rows_written == 65
    assert min(result.split_rows.values()) > 0
    pooled = tmp_path / "pooled"
    pooled.mkdir()
    for path in tf.io.gfile.glob(f"{result.examples_uri}/Split-*/*"):
        split_dir, name = os.path.split(path)
        shutil.copy(path, pooled / f"{os.path.basename(split_dir)}-{name}")
    import_example_gen(str(pooled), spec, str(tmp_path / "example_gen"))
    for name in ("train", "eval"):
        files = tf.io.gfile.glob(str(tmp_path / "example_gen" / f"Split-{name}" / "*"))
        theirs = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
        ours = read_records(result, name)
        assert len(ours) == result.split_rows[name]
        assert canonical(ours) == canonical(theirs), name


def test_rows_are_shuffled_within_a_chunk_the_same_way_every_time(tmp_path):
    """A sorted CSV does not reach the pipeline sorted (ExampleGen shuffled while it
    copied); the order is fixed, so an unchanged input writes the same rows in the same
    order (the encoder's feature order within a record varies, hence `deterministic`)."""
    path = write(tmp_path, many_rows())
    first = run(tmp_path / "a", path)
    ages = [e["age"].float_list.value[0] for e in read_examples(first, "train")]
    assert ages != sorted(ages) and ages != sorted(ages, reverse=True)
    again = run(tmp_path / "b", path)
    for name in ("train", "eval"):
        assert deterministic(read_records(again, name)) == deterministic(read_records(first, name))
    summary = json.loads((tmp_path / "a" / "staged").joinpath(
        os.path.basename(first.examples_dir), "summary.json").read_text())
    assert summary["split_rows"] == first.split_rows
    assert collections.Counter(summary["split_rows"]).total() == 65
