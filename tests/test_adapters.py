"""The public-dataset adapters (ali_ccp, aliexpress, kuairand) on the shared format
samples: each sample goes through the real resolve + ingest path of `run`, and what
was written is compared with the raw file read independently with the csv module."""

import csv
import glob
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from tfx_pipeline.cli import OPEN_QUALITY_GATES, build_parser
from transform import datasets
from transform.datasets import ali_ccp, aliexpress, kuairand
from transform.ingest import DataValidationError, Prepare, ingest_csv

# The shared format samples: $DATASET_SAMPLES, else the shared datasets folder beside the repo.
SAMPLES = os.environ.get("DATASET_SAMPLES",
                         os.path.join(REPO, "..", "shared", "datasets", "samples"))
ALI_CCP_FILES = tuple(f"rechub_ali_ccp_{part}_sample.csv" for part in ("train", "val", "test"))
ALIEXPRESS_FILES = tuple(f"rechub_aliexpress_{part}_sample.csv" for part in ("train", "test"))
KUAIRAND_FILE = "kuairand1k_sample.csv"


def sample(name):
    path = os.path.join(SAMPLES, name)
    if not os.path.exists(path):
        pytest.skip(f"dataset sample {name} not found in {SAMPLES}; set DATASET_SAMPLES")
    return os.path.abspath(path)


def raw_rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_rows(path, rows, fields=None):
    """Rows (dicts) as a CSV file with one header; returns the path as a string."""
    fields = fields or list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def concatenated(tmp_path, names, out="all.csv"):
    """The sample files as one CSV (what the docs tell users to do with the published files)."""
    return write_rows(tmp_path / out, [row for name in names for row in raw_rows(sample(name))])


ADAPTERS = {"ali_ccp": ali_ccp, "aliexpress": aliexpress, "kuairand": kuairand}


def ingest(name, path, tmp_path, **kwargs):
    """What `run` does: resolve the dataset (which checks the file's layout), then ingest
    the file with the dataset's spec, header renames and derivation hook."""
    source = datasets.resolve(name, str(tmp_path / "source"), data=path)
    module = ADAPTERS[name]
    assert (source.spec, source.rename, source.prepare) == (
        module.SPEC, getattr(module, "RENAME", {}), getattr(module, "PREPARE", None))
    logged = []
    result = ingest_csv(path, source.spec, str(tmp_path / "staged"), rename=source.rename,
                        prepare=source.prepare, log=logged.append, **kwargs)
    return source, result, logged


def written(result):
    """Every written example (both splits) as {feature: first value}."""
    files = tf.io.gfile.glob(f"{result.examples_uri}/Split-*/*")
    rows = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        features = tf.train.Example.FromString(record.numpy()).features.feature
        rows.append({name: (list(f.int64_list.value) or list(f.float_list.value)
                            or [v.decode() for v in f.bytes_list.value])[0]
                     for name, f in features.items()})
    return rows


def assert_chain_holds(rows, steps):
    for row in rows:
        for previous, step in zip(steps, steps[1:]):
            assert row[step] <= row[previous], row


# ---------------------------------------------------------------- specs

def test_specs_name_their_features_and_chains():
    ccp = datasets.spec_for("ali_ccp")
    assert ccp.chain.steps == ("click", "purchase") and ccp.chain.core_target is None
    assert ccp.feature_names == tuple(f"f{field}" for field in ali_ccp.SPARSE) + ali_ccp.DENSE
    assert len(ali_ccp.SPARSE) == 23 and len(ali_ccp.DENSE) == 8
    express = datasets.spec_for("aliexpress")
    assert express.chain.steps == ("click", "conversion")
    assert express.feature_names == aliexpress.CATEGORICAL_COLUMNS + aliexpress.NUMERICAL_COLUMNS
    assert "search_id" not in express.columns and express.split.partition_column is None
    kuai = datasets.spec_for("kuairand")
    assert kuai.chain.steps == ("click", "long_view") and kuai.chain.core_target == "watch_time_s"
    assert not kuai.chain.core_target_gated and kuai.chain.resolved_core_head == "ziln"
    assert not {"play_time_ms", "profile_stay_time", "comment_stay_time"} & set(kuai.columns)
    for spec in (ccp, express, kuai):
        # Every name is a Python identifier: TensorFlow renames signature arguments that
        # are not (`101` becomes `arg_101`), which would break predict_raw by name.
        assert all(name.isidentifier() for name in spec.columns), spec.name
        assert set(datasets.NAMES) >= {spec.name}


def test_cli_help_lists_the_adapters(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--dataset DATASET synthetic | hillstrom | ali_ccp | aliexpress | kuairand | csv" in text
    assert "ali_ccp, aliexpress, kuairand: one file in the published layout" in text


# ---------------------------------------------------------------- Ali-CCP

@pytest.mark.parametrize("name", ALI_CCP_FILES)
def test_ali_ccp_sample_labels_and_renamed_fields(name, tmp_path):
    path = sample(name)
    raw = raw_rows(path)
    source, result, _ = ingest("ali_ccp", path, tmp_path)
    assert source.rename["101"] == "f101" and source.rename["109_14"] == "f109_14"
    assert result.rows_read == len(raw) == result.rows_written + sum(result.reject_counts.values())
    assert result.rows_written == len(raw)            # the sample has no bad rows
    rows = written(result)
    assert sum(r["click"] for r in rows) == sum(int(r["click"]) for r in raw)
    assert sum(r["purchase"] for r in rows) == sum(int(r["purchase"]) for r in raw)
    assert_chain_holds(rows, ("click", "purchase"))
    # Values arrive under the renamed names, unchanged.
    for field in ("205", "109_14"):
        assert sorted(r[f"f{field}"] for r in rows) == sorted(int(r[field]) for r in raw)
    assert sum(r["D508"] for r in rows) == pytest.approx(sum(float(r["D508"]) for r in raw),
                                                        rel=1e-6)


# ---------------------------------------------------------------- AliExpress

@pytest.mark.parametrize("name", ALIEXPRESS_FILES)
def test_aliexpress_sample_labels(name, tmp_path):
    path = sample(name)
    raw = raw_rows(path)
    _, result, logged = ingest("aliexpress", path, tmp_path)
    assert result.rows_read == len(raw) == result.rows_written
    rows = written(result)
    assert sum(r["click"] for r in rows) == sum(int(r["click"]) for r in raw)
    assert sum(r["conversion"] for r in rows) == sum(int(r["conversion"]) for r in raw)
    assert_chain_holds(rows, ("click", "conversion"))
    assert all("search_id" not in r for r in rows)
    assert any("search_id" in line for line in logged)   # noted as ignored, not silently
    assert sorted(r["categorical_7"] for r in rows) == sorted(int(r["categorical_7"]) for r in raw)


# ---------------------------------------------------------------- KuaiRand

def by_hand(raw):
    """(rows with an unknown duration, long views, watch seconds) of the other rows,
    by KuaiRand's rule: long view when played >= min(duration, 18 s)."""
    unknown = [r for r in raw if float(r["duration_ms"]) <= 0]
    known = [r for r in raw if float(r["duration_ms"]) > 0]
    long_views = sum(float(r["play_time_ms"]) >= min(float(r["duration_ms"]), 18000)
                     for r in known)
    seconds = sum(float(r["play_time_ms"]) for r in known) / 1000
    return unknown, long_views, seconds, known


def test_kuairand_sample_derives_long_view_and_watch_time(tmp_path):
    path = sample(KUAIRAND_FILE)
    raw = raw_rows(path)
    assert "long_view" not in raw[0]                  # derived, not read
    unknown, long_views, seconds, known = by_hand(raw)
    assert len(unknown) == 18 and long_views > 0
    _, result, logged = ingest("kuairand", path, tmp_path, bad_rows="reject")
    assert result.rows_read == len(raw) == result.rows_written + len(unknown)
    assert result.reject_counts == {"unknown_duration": len(unknown)}
    rows = written(result)
    assert sum(r["long_view"] for r in rows) == long_views
    assert sum(r["watch_time_s"] for r in rows) == pytest.approx(seconds, rel=1e-6)
    assert sum(r["click"] for r in rows) == sum(int(r["is_click"]) for r in known)
    assert_chain_holds(rows, ("click", "long_view"))
    # The rejected rows are written as read (no derived columns), naming the source column.
    rejects = raw_rows(result.rejects_path)
    assert len(rejects) == len(unknown)
    assert "long_view" not in rejects[0] and "watch_time_s" not in rejects[0]
    assert all(r["_reasons"].startswith("duration_ms: duration '0' ms: the video's length is "
                                        "unknown, so long_view cannot be derived") for r in rejects)
    assert not any("play_time_ms" in line for line in logged)   # read by the hook: not "ignored"


def test_kuairand_unknown_duration_stops_the_default_mode(tmp_path):
    path = sample(KUAIRAND_FILE)
    first = 2 + next(i for i, r in enumerate(raw_rows(path)) if float(r["duration_ms"]) <= 0)
    with pytest.raises(DataValidationError) as error:
        ingest("kuairand", path, tmp_path)
    assert str(error.value).startswith(
        f"{path} line {first}, column 'duration_ms': duration '0' ms: the video's length is "
        f"unknown, so long_view cannot be derived")
    assert "18 unknown_duration" in str(error.value)


def test_kuairand_uses_a_published_long_view_column(tmp_path):
    """A file with KuaiRand's own long_view keeps it (no rule applied, no duration check)."""
    raw = raw_rows(sample(KUAIRAND_FILE))
    for row in raw:
        row["long_view"] = row["is_click"]            # any valid labels: these must come back
    path = write_rows(tmp_path / "with_long_view.csv", raw)
    _, result, _ = ingest("kuairand", path, tmp_path)
    assert result.rows_written == len(raw)
    rows = written(result)
    assert sum(r["long_view"] for r in rows) == sum(int(r["is_click"]) for r in raw)
    assert sum(r["watch_time_s"] for r in rows) == pytest.approx(
        sum(float(r["play_time_ms"]) for r in raw) / 1000, rel=1e-6)


@pytest.mark.parametrize("cell, reason, detail", [
    ("12s", "unparsable_number", "cannot use '12s' as a number (unparsable_number; "
                                 "needed for watch_time_s)"),
    ("", "missing_value", "missing value (needed for watch_time_s)"),
    ("-5", "negative_value", "negative value '-5' (needed for watch_time_s)"),
    ("nan", "non_finite", "cannot use 'nan' as a number (non_finite; needed for watch_time_s)"),
])
def test_kuairand_bad_play_time_names_the_source_column(cell, reason, detail, tmp_path):
    raw = [r for r in raw_rows(sample(KUAIRAND_FILE)) if float(r["duration_ms"]) > 0]
    raw[4]["play_time_ms"] = cell                    # file line 6
    path = write_rows(tmp_path / "bad.csv", raw)
    with pytest.raises(DataValidationError) as error:
        ingest("kuairand", path, tmp_path / "error")
    assert str(error.value).startswith(f"{path} line 6, column 'play_time_ms': {detail} "
                                       f"(rows with problems: 1 {reason};")
    _, result, _ = ingest("kuairand", path, tmp_path / "reject", bad_rows="reject")
    assert result.reject_counts == {reason: 1}
    assert result.rows_read == len(raw) == result.rows_written + 1
    (reject,) = raw_rows(result.rejects_path)
    assert reject["_line"] == "6" and reject["_reasons"] == f"play_time_ms: {detail}"
    assert reject["play_time_ms"] == cell


def test_kuairand_bad_duration_is_reported_once(tmp_path):
    """duration_ms is a feature and the long-view rule's source: one problem, not two."""
    raw = [r for r in raw_rows(sample(KUAIRAND_FILE)) if float(r["duration_ms"]) > 0]
    raw[0]["duration_ms"] = "long"
    path = write_rows(tmp_path / "bad.csv", raw)
    _, result, _ = ingest("kuairand", path, tmp_path, bad_rows="reject")
    assert result.reject_counts == {"unparsable_number": 1}
    (reject,) = raw_rows(result.rejects_path)
    assert reject["_line"] == "2" and reject["_reasons"].count("duration_ms:") == 1


def test_kuairand_long_view_without_a_click_is_a_chain_violation(tmp_path):
    raw = [r for r in raw_rows(sample(KUAIRAND_FILE)) if float(r["duration_ms"]) > 0]
    row = next(i for i, r in enumerate(raw) if r["is_click"] == "0")
    raw[row]["play_time_ms"] = "60000"               # a minute: a long view, without a click
    path = write_rows(tmp_path / "autoplay.csv", raw)
    _, result, _ = ingest("kuairand", path, tmp_path, bad_rows="reject")
    assert result.reject_counts == {"chain_violation": 1}
    (reject,) = raw_rows(result.rejects_path)
    assert reject["_line"] == str(row + 2)
    assert reject["_reasons"] == "long_view: 'long_view' is 1 while the previous step 'click' is 0"


def test_a_changed_derivation_rule_ingests_again(tmp_path):
    path = write_rows(tmp_path / "k.csv", [r for r in raw_rows(sample(KUAIRAND_FILE))
                                           if float(r["duration_ms"]) > 0])
    source = datasets.resolve("kuairand", str(tmp_path), data=path)

    def run(prepare):
        return ingest_csv(path, source.spec, str(tmp_path / "staged"), rename=source.rename,
                          prepare=prepare, log=lambda _: None)

    first, again = run(source.prepare), run(source.prepare)
    assert again.reused and again.examples_dir == first.examples_dir
    changed = run(Prepare("kuairand-labels-v2", source.prepare.derive, source.prepare.reads))
    assert not changed.reused and changed.examples_dir != first.examples_dir


# ---------------------------------------------------------------- layouts

@pytest.mark.parametrize("name, file, drop, layout", [
    ("ali_ccp", ALI_CCP_FILES[0], ("205", "D853"), "Ali-CCP as preprocessed by Torch-RecHub"),
    ("aliexpress", ALIEXPRESS_FILES[1], ("search_id", "numerical_7"), "AliExpress in the"),
    ("kuairand", KUAIRAND_FILE, ("play_time_ms",), "KuaiRand log rows joined"),
])
def test_a_file_of_another_layout_names_the_missing_columns(name, file, drop, layout, tmp_path):
    raw = raw_rows(sample(file))
    fields = [f for f in raw[0] if f not in drop]
    path = write_rows(tmp_path / "other.csv", [{f: r[f] for f in fields} for r in raw], fields)
    with pytest.raises(DataValidationError) as error:
        datasets.resolve(name, str(tmp_path), data=path)
    message = str(error.value)
    assert message.startswith(f"{path}: not the expected layout ({layout}")
    assert f"missing column(s) {list(drop)}" in message


def test_one_file_not_a_directory(tmp_path):
    shutil.copy(sample(ALI_CCP_FILES[0]), tmp_path / "ali_ccp_train.csv")
    with pytest.raises(DataValidationError, match="is a directory; the ali_ccp dataset reads one "
                                                  "CSV file"):
        datasets.resolve("ali_ccp", str(tmp_path), data=str(tmp_path))
    with pytest.raises(ValueError, match="the kuairand dataset needs its CSV file: pass --data"):
        datasets.resolve("kuairand", str(tmp_path))


# ---------------------------------------------------------------- end to end

@pytest.mark.e2e
@pytest.mark.parametrize("name", ["ali_ccp", "aliexpress", "kuairand"])
def test_adapter_runs_the_pipeline_on_its_sample(name, tmp_path):
    """`run` on the sample (all of a dataset's sample files in one), tiny settings: a
    trained model comes out and is evaluated on every step of the chain."""
    files = {"ali_ccp": ALI_CCP_FILES, "aliexpress": ALIEXPRESS_FILES,
             "kuairand": (KUAIRAND_FILE,)}[name]
    data = concatenated(tmp_path, files) if len(files) > 1 else sample(files[0])
    args = [sys.executable, "-m", "tfx_pipeline", "run", "--dataset", name, "--data", data,
            "--train-steps", "20", "--eval-steps", "2", "--batch-size", "32",
            "--hparams", '{"embedding_dim": 4}', *OPEN_QUALITY_GATES,
            "--pipeline-root", str(tmp_path / "pipeline"),
            "--serving-dir", str(tmp_path / "serving")]
    if name == "kuairand":
        args += ["--bad-rows", "reject"]              # the sample's 18 rows of unknown duration
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert glob.glob(str(tmp_path / "pipeline" / "Trainer" / "model_run" / "*" / "model.keras"))
    steps = datasets.spec_for(name).chain.steps
    for step in steps:
        assert f"eval {step}_prob: auc" in result.stdout, result.stdout
    if name == "kuairand":
        assert "eval watch_time_s_pred:" in result.stdout
        assert "rejected 18 row(s) (rows per reason: unknown_duration: 18)" in result.stderr
    assert "blessed; pushed to" in result.stdout, result.stdout
