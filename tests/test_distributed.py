"""The Trainer's --strategy: names, MultiWorkerMirroredStrategy across two worker
processes, and a pipeline run under MirroredStrategy. (MirroredStrategy over two
logical CPUs for every model: tests/test_model_zoo.py.)"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from tfx_pipeline import cli, trainer
from tfx_pipeline.cli import OPEN_QUALITY_GATES


def test_strategy_names():
    assert cli.STRATEGIES == trainer.STRATEGIES
    assert trainer.make_strategy("default").num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="unknown strategy 'tpu'; choose one of default, "
                                         "mirrored, multi_worker"):
        trainer.make_strategy("tpu")


@pytest.mark.parametrize("cluster, task, chief", [
    ({"worker": ["a:1", "b:1"]}, ("worker", 0), True),
    ({"worker": ["a:1", "b:1"]}, ("worker", 1), False),
    ({"chief": ["c:1"], "worker": ["a:1"]}, ("chief", 0), True),
    ({"chief": ["c:1"], "worker": ["a:1"]}, ("worker", 0), False),
])
def test_only_the_chief_keeps_the_model(cluster, task, chief):
    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(cluster), task_type=task[0], task_id=task[1])

    class Strategy:
        cluster_resolver = resolver

    assert trainer.is_chief(Strategy()) is chief
    assert trainer.is_chief(trainer.make_strategy("default")) is True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train(strategy: str, model: str, tf_config: dict | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "tests", "multi_worker_training.py"),
         "--strategy", strategy, "--model", model],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(process: subprocess.Popen) -> dict:
    try:
        out, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("model", ["shared_bottom", "apem"])
def test_multi_worker_strategy_matches_a_single_device(model):
    """Two worker processes on loopback, one CPU replica each, each reading its half
    of every global batch of 64: the per-step losses equal one device's on the whole
    batches (the replicas' gradients are all-reduced over gRPC)."""
    cluster = {"worker": [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]}
    workers = [_train("multi_worker", model, {"cluster": cluster,
                                              "task": {"type": "worker", "index": index}})
               for index in range(2)]
    single = _result(_train("default", model))
    results = [_result(worker) for worker in workers]
    assert single["local_rows"] == [64] and single["replicas"] == 1
    for result in results:
        assert result["replicas"] == 2 and result["local_rows"] == [32]
        assert len(result["losses"]) == len(single["losses"]) == 8
        np.testing.assert_allclose(result["losses"], single["losses"], rtol=2e-3)
    assert np.isfinite(single["losses"]).all()


@pytest.mark.e2e
@pytest.mark.parametrize("strategy", ["mirrored", "multi_worker"])
def test_pipeline_trains_under_a_strategy(strategy, tmp_path):
    """multi_worker without TF_CONFIG: one worker, the chief, which keeps the model."""
    result = subprocess.run(
        [sys.executable, "-m", "tfx_pipeline", "run", "--dataset", "synthetic", "--rows", "3000",
         "--train-steps", "40", "--eval-steps", "5", *OPEN_QUALITY_GATES, "--strategy", strategy,
         "--pipeline-root", str(tmp_path / "pipeline"), "--serving-dir", str(tmp_path / "serving")],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={k: v for k, v in os.environ.items() if k != "TF_CONFIG"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "blessed; pushed to" in result.stdout
    assert len(list((tmp_path / "serving" / "shared_bottom").glob("*/saved_model.pb"))) == 1
