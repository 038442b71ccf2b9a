"""--beam-args reach Beam: the whole pipeline on the DirectRunner's multi-processing mode."""

import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.e2e


def test_direct_runner_multi_processing_runs_the_pipeline(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tfx_pipeline", "run", "--dataset", "synthetic", "--rows", "3000",
         "--train-steps", "20", "--eval-steps", "2", "--min-auc", "0", "--verbose",
         "--beam-args", "--direct_running_mode=multi_processing --direct_num_workers=2",
         "--pipeline-root", str(tmp_path / "pipeline"), "--serving-dir", str(tmp_path / "serving")],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "blessed; pushed to" in result.stdout
    # Worker processes talk to the runner over gRPC; the in-memory default starts no such server.
    assert "worker_handlers:starting control server" in result.stderr
