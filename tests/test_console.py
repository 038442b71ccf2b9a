"""The `funnelstack` command and its quiet output (tfx_pipeline.console, tfx_pipeline.quiet)."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import FUNNELSTACK, REPO
from tfx_pipeline import console, quiet

NATIVE_LINE = re.compile(r"^[IWEF]\d{4} ", re.MULTILINE)


def run_python(code, tmp_path, **env):
    """Runs `code` in a fresh interpreter from `tmp_path`; returns the finished process."""
    environment = {k: v for k, v in os.environ.items() if k != quiet.VERBOSE_ENV}
    environment.update(env, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environment,
                          capture_output=True, timeout=300)


@pytest.mark.parametrize("line, chatter", [
    (b"I0000 00:00:1796498042.917573   31955 port.cc:153] oneDNN custom operations are on.\n", True),
    (b"W0000 00:00:1796498042.9   7 cudart_stub.cc:31] Could not find cuda drivers\n", True),
    (b"E0000 00:00:1796498055.980960   31955 cuda_platform.cc:52] failed call to cuInit\n", True),
    (b"E1205 19:11:56.123456 12 file.cc:1] no trailing newline", True),
    (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
     True),
    (b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
     b"with the appropriate compiler flags.\n", True),
    # Fatal lines pass: the process is about to die and the reason must be seen.
    (b"F0000 00:00:1796498055.980960   31955 x.cc:1] Check failed\n", False),
    (b"error: the data file is missing\n", False),
    (b"E0000 is not a log line without the time\n", False),
    (b"[7/11] Transform done in 14.5 s\n", False),
])
def test_native_chatter_is_recognised_by_its_absl_prefix(line, chatter):
    assert quiet.is_chatter(line) is chatter


def test_tensorflow_deprecation_records_are_dropped_and_others_kept():
    import logging

    def record(message):
        return logging.LogRecord("tensorflow", logging.WARNING, __file__, 1, message, None, None)

    notice = ("From x.py:127: tf_record_iterator (from tensorflow.python.lib.io.tf_record) is "
              "deprecated and will be removed in a future version.\nInstructions for updating:\n"
              "Use eager execution")
    assert not quiet.is_not_deprecation_notice(record(notice))
    assert quiet.is_not_deprecation_notice(record("5 out of the last 5 calls triggered retracing"))


QUIET_PROGRAM = r"""
import os, sys, warnings
from tfx_pipeline import quiet
if not quiet.verbose_requested(sys.argv):
    quiet.install()
os.write(2, b"I0000 00:00:1796498042.917573   31955 port.cc:153] held back\n")
os.write(2, b"native kept 1\n")
warnings.warn("a library deprecation", DeprecationWarning)
print("python kept", file=sys.stderr, flush=True)
import tensorflow as tf
tf.constant(1.0) + 1.0          # touches the devices: the CUDA probe logs here on CPU hosts
os.write(2, b"native kept 2\n")
quiet.send_held_lines_to(sys.argv[1])
os.write(2, b"W0000 00:00:1796498042.9   7 later.cc:1] after the log was named\n")
"""


def test_quiet_mode_holds_native_lines_back_and_passes_the_rest_in_order(tmp_path):
    log = tmp_path / "run.log"
    result = run_python(QUIET_PROGRAM.replace("sys.argv[1]", repr(str(log))), tmp_path)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    stderr = result.stderr.decode()
    assert not NATIVE_LINE.search(stderr), stderr
    assert "absl::InitializeLog" not in stderr and "DeprecationWarning" not in stderr
    native = [line for line in stderr.splitlines() if line.startswith("native kept")]
    assert native == ["native kept 1", "native kept 2"]
    assert "python kept" in stderr
    held = log.read_text()
    assert "port.cc:153] held back" in held
    assert "later.cc:1] after the log was named" in held


def test_verbose_keeps_every_line(tmp_path):
    code = QUIET_PROGRAM.replace("sys.argv[1]", repr(str(tmp_path / "run.log")))
    result = run_python(code, tmp_path, FUNNEL_VERBOSE="1")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    stderr = result.stderr.decode()
    assert "port.cc:153] held back" in stderr and "later.cc:1] after the log was named" in stderr
    assert "a library deprecation" in stderr


def test_verbose_is_asked_by_flag_or_environment(monkeypatch):
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    assert not quiet.verbose_requested(["run", "--rows", "5"])
    assert quiet.verbose_requested(["run", "--verbose"])
    monkeypatch.setenv(quiet.VERBOSE_ENV, "0")
    assert not quiet.verbose_requested([])
    monkeypatch.setenv(quiet.VERBOSE_ENV, "1")
    assert quiet.verbose_requested([])


def test_installed_command_works_from_any_directory(tmp_path):
    assert os.access(FUNNELSTACK, os.X_OK), "make setup installs the package (pip install -e .)"
    result = subprocess.run([FUNNELSTACK, "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in console.COMMANDS:
        assert re.search(rf"^  {command} ", result.stdout, re.MULTILINE), command
    assert result.stderr == ""


@pytest.mark.parametrize("command, expected_usage", [
    ("run", "usage: funnelstack run "),
    ("report", "usage: funnelstack report "),
    ("compile", "usage: funnelstack compile "),
    ("compare", "usage: funnelstack compare "),
    ("serve", "usage: funnelstack serve "),
    ("client", "usage: funnelstack client "),
    ("predict", "usage: funnelstack predict "),
    ("generate", "usage: funnelstack generate "),
])
def test_every_command_answers_help_under_its_own_name(command, expected_usage, tmp_path):
    result = subprocess.run([FUNNELSTACK, command, "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(expected_usage), result.stdout[:200]


def test_unknown_command_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([FUNNELSTACK, "trian"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "funnelstack: unknown command 'trian'; choose one of " + ", ".join(console.COMMANDS)]


def test_generate_writes_rows_from_another_directory(tmp_path):
    result = subprocess.run([FUNNELSTACK, "generate", "--rows", "7", "--output", "rows.csv"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "rows.csv").read_text().splitlines()) == 8   # header + 7 rows


def test_module_entry_points_keep_working(tmp_path):
    for module in ("tfx_pipeline", "serving.predict", "serving.client", "serving.local_server",
                   "tfx_pipeline.compare", "transform.datasets.synthetic"):
        result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (module, result.stderr)
        assert result.stdout.startswith(f"usage: python -m {module}"), (module, result.stdout[:80])


def test_version_comes_from_the_installed_package():
    assert console.version() != "unknown (not installed)"
    assert shutil.which("funnelstack", path=os.path.dirname(sys.executable)) == FUNNELSTACK
