"""The whole pipeline through its CLI, as a user runs it: real TFX, TFT, TFMA, SavedModels."""

import glob
import json
import os
import subprocess
import sys

import keras

import keras_models  # noqa: F401  (registers model classes for load_model)
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_transform as tft

from conftest import REPO
from serving import predict
from transform.datasets import synthetic

pytestmark = pytest.mark.e2e


def cli(*args, check=True):
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stderr[-3000:]}")
    return result


def latest(pattern):
    matches = glob.glob(pattern)
    assert matches, f"nothing matches {pattern}"
    return max(matches, key=lambda p: int(p.rstrip("/").split("/")[-2 if p.endswith(".keras") else -1]))


def in_process_predictions(pipeline_root, raw_rows: dict):
    """The trained Keras model on TFT-transformed rows, without any SavedModel."""
    model = keras.models.load_model(latest(f"{pipeline_root}/Trainer/model_run/*/model.keras"))
    tft_output = tft.TFTransformOutput(latest(f"{pipeline_root}/Transform/transform_graph/*"))
    transformed = tft_output.transform_raw_features(
        {k: tf.reshape(tf.constant(v), (-1, 1)) for k, v in raw_rows.items()},  # parse shape (n, 1)
        drop_unused_features=True)
    outputs = model({k: transformed[k] for k in model.input_layout.field_names})
    return {k: np.asarray(outputs[k]) for k in model.task_layout.output_keys}


def raw_feature_columns(csv_path, spec):
    """Raw feature columns with the pipeline's typing, for the in-process model."""
    columns, _ = predict.read_feature_columns(csv_path, spec)
    return {name: values.astype(bytes) if values.dtype == object else values
            for name, values in columns.items()}


def assert_served_equals_in_process(pipeline_root, model_dir, rows_csv):
    version_dir = predict.resolve_version_dir(model_dir)
    spec = predict.load_spec(version_dir)
    serialized, _ = predict.serialize_rows(rows_csv, spec)
    served = predict.predict(version_dir, serialized)
    expected = in_process_predictions(pipeline_root, raw_feature_columns(rows_csv, spec))
    assert set(served) == set(expected)
    for key in expected:
        np.testing.assert_allclose(served[key], expected[key], rtol=1e-5, atol=1e-7)
    return served


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    args = ["-m", "tfx_pipeline", "run", "--dataset", "synthetic", "--rows", "6000",
            "--train-steps", "200", "--eval-steps", "20",
            "--pipeline-root", str(root / "pipeline"), "--serving-dir", str(root / "serving")]
    first = cli(*args)
    return root, args, first


def test_synthetic_run_blesses_and_pushes(synthetic_run):
    root, _, first = synthetic_run
    assert "blessed; pushed to" in first.stdout
    for step in ("click", "conversion"):
        line = next(l for l in first.stdout.splitlines() if l.startswith(f"eval {step}_prob:"))
        auc = float(line.split("auc ")[1].split(",")[0])
        assert auc > 0.6, line
    versions = glob.glob(str(root / "serving" / "shared_bottom" / "*" / "saved_model.pb"))
    assert len(versions) == 1
    for component in ("ImportExampleGen", "ExampleValidator", "AnomaliesGate", "Transform",
                      "Trainer", "Evaluator", "Pusher"):
        assert f"] {component} done in" in first.stderr


def test_second_identical_run_is_fully_cached(synthetic_run):
    _, args, _ = synthetic_run
    second = cli(*args)
    done = [l for l in second.stderr.splitlines() if " done in " in l]
    assert len(done) == 9
    assert all(l.endswith("(cached)") for l in done), done
    assert "reused" in second.stderr


def test_served_predictions_match_in_process_model(synthetic_run, tmp_path):
    root, _, _ = synthetic_run
    rows = tmp_path / "rows.csv"
    synthetic.generate(synthetic.FunnelConfig(rows=50, sample_seed=7)).to_csv(rows, index=False)
    served = assert_served_equals_in_process(str(root / "pipeline"),
                                             str(root / "serving" / "shared_bottom"), str(rows))
    assert np.unique(np.round(served["click_prob"], 6)).size > 40
    assert ((served["click_prob"] > 0) & (served["click_prob"] < 1)).all()
    printed = cli("-m", "serving.predict", "--model-dir", str(root / "serving" / "shared_bottom"),
                  "--csv", str(rows))
    table = pd.read_csv(pd.io.common.StringIO(printed.stdout))
    assert list(table.columns) == ["line", "click_prob", "conversion_prob", "revenue_pred", "score"]
    assert table["line"].tolist() == list(range(2, 52))
    np.testing.assert_allclose(table["click_prob"], served["click_prob"], rtol=1e-5)


def test_anomalies_stop_the_run_before_training(synthetic_run, tmp_path):
    """Infer, curate, import: a curated schema that forbids 'tablet' stops the run."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    root, _, _ = synthetic_run
    inferred = latest(f"{root}/pipeline/SchemaGen/schema/*") + "/schema.pbtxt"
    schema = text_format.Parse(open(inferred).read(), schema_pb2.Schema())
    domain = next(d for d in schema.string_domain if d.name == "device")
    kept = [v for v in domain.value if v != "tablet"]
    del domain.value[:]
    domain.value.extend(kept)
    curated = tmp_path / "schema.pbtxt"
    curated.write_text(text_format.MessageToString(schema))
    result = cli("-m", "tfx_pipeline", "run", "--dataset", "synthetic", "--rows", "6000",
                 "--schema", str(curated), "--pipeline-root", str(tmp_path / "pipeline"),
                 "--serving-dir", str(tmp_path / "serving"), check=False)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ExampleValidator found anomalies: split 'eval', feature 'device': "
                           "Unexpected string values"), last
    assert "tablet" in last
    assert not os.path.exists(tmp_path / "pipeline" / "Trainer")
    assert not os.path.exists(tmp_path / "serving")


def write_shop(tmp_path, body: str):
    """A two-step CSV dataset (country; click -> buy) and its spec file."""
    rows = tmp_path / "shop.csv"
    rows.write_text("country,click,buy\n" + body)
    spec = tmp_path / "shop.yaml"
    spec.write_text("name: shop\nfeatures: [{name: country, kind: categorical}]\n"
                    "chain: {steps: [click, buy]}\n")
    return rows, spec


def test_bad_input_stops_before_the_pipeline(tmp_path):
    rows, spec = write_shop(tmp_path, "de,1,1\nfr,0,1\n")
    result = cli("-m", "tfx_pipeline", "run", "--dataset", "csv", "--data", str(rows), "--spec",
                 str(spec), "--pipeline-root", str(tmp_path / "p"), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {rows} line 3, column 'buy': 'buy' is 1 while the previous step 'click' is 0 "
        "(rows with problems: 1 chain_violation; pass --bad-rows reject to set bad rows aside "
        "in a rejects file)")
    assert not os.path.exists(tmp_path / "p" / "ImportExampleGen")


def test_hillstrom_end_to_end(hillstrom_csv, tmp_path):
    args = ["-m", "tfx_pipeline", "run", "--dataset", "hillstrom", "--data", hillstrom_csv,
            "--train-steps", "400", "--batch-size", "512", "--eval-steps", "25",
            "--pipeline-root", str(tmp_path / "pipeline"), "--serving-dir", str(tmp_path / "serving")]
    result = cli(*args)
    assert "blessed; pushed to" in result.stdout, result.stdout
    rows = tmp_path / "rows.csv"
    pd.read_csv(hillstrom_csv).sample(40, random_state=0).to_csv(rows, index=False)
    served = assert_served_equals_in_process(str(tmp_path / "pipeline"),
                                             str(tmp_path / "serving" / "shared_bottom"), str(rows))
    assert np.unique(np.round(served["visit_prob"], 6)).size > 20
    assert ((served["conversion_prob"] > 0) & (served["conversion_prob"] < served["visit_prob"].max())).all()
    assert (served["spend_pred"] >= 0).all()


def test_compile_writes_a_kubeflow_v2_spec(tmp_path):
    output = tmp_path / "pipeline.json"
    cli("-m", "tfx_pipeline", "compile", "--output", str(output), "--image", "example/funnel:1",
        "--pipeline-root", str(tmp_path / "root"))
    spec = json.loads(output.read_text())
    text = output.read_text()
    assert spec["pipelineSpec"]["pipelineInfo"]["name"] == "funnel-synthetic-shared-bottom"
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    assert {"ImportExampleGen", "Transform", "Trainer", "Evaluator", "Pusher"} <= set(tasks)
    assert "example/funnel:1" in text


@pytest.mark.parametrize("model", ["apem", "htlnet"])
def test_paper_models_train_export_and_serve_through_the_pipeline(model, tmp_path):
    root = tmp_path / "pipeline"
    result = cli("-m", "tfx_pipeline", "run", "--dataset", "synthetic", "--rows", "3000",
                 "--model", model, "--hparams", '{"embedding_dim": 8}', "--train-steps", "60",
                 "--eval-steps", "5", "--min-auc", "0", "--pipeline-root", str(root),
                 "--serving-dir", str(tmp_path / "serving"))
    assert "blessed; pushed to" in result.stdout
    rows = tmp_path / "rows.csv"
    synthetic.generate(synthetic.FunnelConfig(rows=30, sample_seed=5)).to_csv(rows, index=False)
    served = assert_served_equals_in_process(str(root), str(tmp_path / "serving" / model), str(rows))
    assert np.unique(np.round(served["click_prob"], 6)).size > 20


def test_model_that_does_not_fit_the_chain_fails_before_any_work(tmp_path):
    rows, spec = write_shop(tmp_path, "de,1,1\nfr,0,0\n")
    result = cli("-m", "tfx_pipeline", "run", "--dataset", "csv", "--data", str(rows), "--spec",
                 str(spec), "--model", "htlnet", "--pipeline-root", str(tmp_path / "p"), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: model 'htlnet' needs a chain that ends in a continuous core target "
        "(chain.core_target in the dataset spec); this chain is click -> buy")
    assert not os.path.exists(tmp_path / "p" / "ingested")
    bad = cli("-m", "tfx_pipeline", "run", "--dataset", "csv", "--data", str(rows), "--spec",
              str(spec), "--hparams", '{"depth": 2}', "--pipeline-root", str(tmp_path / "p"),
              check=False)
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "error: unknown hyper-parameter(s) ['depth'] for SharedBottomHParams")
