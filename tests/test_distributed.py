"""The Trainer's --strategy: names, and a pipeline run under MirroredStrategy."""

import subprocess
import sys

import pytest

from conftest import REPO
from tfx_pipeline import cli, trainer


def test_strategy_names():
    assert cli.STRATEGIES == trainer.STRATEGIES
    assert trainer.make_strategy("default").num_replicas_in_sync == 1
    with pytest.raises(ValueError, match="unknown strategy 'tpu'; choose one of default, mirrored"):
        trainer.make_strategy("tpu")


@pytest.mark.e2e
def test_pipeline_trains_under_mirrored_strategy(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tfx_pipeline", "run", "--dataset", "synthetic", "--rows", "3000",
         "--train-steps", "40", "--eval-steps", "5", "--min-auc", "0", "--strategy", "mirrored",
         "--pipeline-root", str(tmp_path / "pipeline"), "--serving-dir", str(tmp_path / "serving")],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "blessed; pushed to" in result.stdout
