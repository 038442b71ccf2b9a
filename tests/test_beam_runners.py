"""--beam-args reach Beam: the whole pipeline on the DirectRunner's multi-processing
mode; without --beam-args, large local inputs get worker processes."""

import subprocess
import sys

import pytest

from conftest import REPO
from tfx_pipeline.cli import (MAX_LOCAL_BEAM_WORKERS, MULTI_PROCESS_MIN_ROWS, OPEN_QUALITY_GATES,
                              build_parser, join_beam_args, local_beam_args)


@pytest.mark.e2e
def test_direct_runner_multi_processing_runs_the_pipeline(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tfx_pipeline", "run", "--dataset", "synthetic", "--rows", "3000",
         "--train-steps", "20", "--eval-steps", "2", *OPEN_QUALITY_GATES, "--verbose",
         "--beam-args", "--direct_running_mode=multi_processing --direct_num_workers=2",
         "--pipeline-root", str(tmp_path / "pipeline"), "--serving-dir", str(tmp_path / "serving")],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "blessed; pushed to" in result.stdout
    # Worker processes talk to the runner over gRPC; the in-memory default starts no such server.
    assert "worker_handlers:starting control server" in result.stderr


def test_given_beam_args_are_used_as_they_are():
    given = "--runner=DataflowRunner --project=p"
    assert local_beam_args(given, rows=10**7, cpus=8) == ("--runner=DataflowRunner", "--project=p")
    assert local_beam_args("--direct_running_mode=in_memory", rows=10**7, cpus=8) == (
        "--direct_running_mode=in_memory",)


def test_small_inputs_and_single_cpu_machines_stay_in_process():
    assert local_beam_args("", rows=MULTI_PROCESS_MIN_ROWS - 1, cpus=8) == ()
    assert local_beam_args("  ", rows=10**7, cpus=1) == ()


def test_large_inputs_get_one_worker_per_cpu_up_to_the_cap():
    assert local_beam_args("", rows=MULTI_PROCESS_MIN_ROWS, cpus=2) == (
        "--direct_running_mode=multi_processing", "--direct_num_workers=2")
    assert local_beam_args("", rows=10**6, cpus=64)[1] == (
        f"--direct_num_workers={MAX_LOCAL_BEAM_WORKERS}")


def test_a_single_beam_option_is_taken_as_the_value_of_beam_args():
    argv = ["run", "--beam-args", "--direct_running_mode=in_memory", "--rows", "10"]
    assert join_beam_args(argv) == ["run", "--beam-args=--direct_running_mode=in_memory",
                                    "--rows", "10"]
    args = build_parser().parse_args(join_beam_args(argv))
    assert (args.beam_args, args.rows) == ("--direct_running_mode=in_memory", 10)
    with pytest.raises(SystemExit):   # what argparse alone does with it
        build_parser().parse_args(argv)


def test_beam_args_without_a_value_is_still_an_error():
    assert join_beam_args(["run", "--beam-args"]) == ["run", "--beam-args"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(join_beam_args(["run", "--beam-args"]))


@pytest.mark.parametrize("asked", [False, True])
def test_transform_computes_its_own_statistics_only_when_asked(asked, tmp_path):
    """Transform's statistics repeat StatisticsGen's and, on the DirectRunner, hold every
    transformed row in the runner's memory (docs/scale.md); they are off by default."""
    from tfx_pipeline.pipeline import PipelineConfig, create_components
    from transform.datasets import spec_for

    options = {"transform_statistics": True} if asked else {}
    config = PipelineConfig(pipeline_name="p", pipeline_root=str(tmp_path),
                            examples_dir=str(tmp_path / "examples"), spec=spec_for("synthetic"),
                            model_name="mmoe", serving_dir=str(tmp_path / "serving"), **options)
    transform = next(c for c in create_components(config) if c.id == "Transform")
    assert transform.exec_properties["disable_statistics"] == int(not asked)
