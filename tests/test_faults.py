"""`run` under faults, with real processes, signals and file systems.

- kill -9 of `run` during Transform, the Trainer and the Pusher: each re-run finishes
  what was left, reuses what completed, and the serving directory never shows a
  partial version;
- a second `run` on a busy pipeline root is refused in one line, the first finishes;
- a full disk (a small tmpfs) under the serving directory or the pipeline root: a
  one-line error naming the place, and the last good version still served.

The tmpfs cases need root (mount); the project's runtime and CI run as root.
"""

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO
from tfx_pipeline.cli import OPEN_QUALITY_GATES
from serving.predict import resolve_version_dir
from serving.servables import version_directories
from tfx_pipeline.push import copy_version, directory_digest, newest_version

pytestmark = pytest.mark.e2e

RUN = [sys.executable, "-m", "tfx_pipeline", "run", "--dataset", "synthetic", "--rows", "3000",
       "--train-steps", "60", "--eval-steps", "5", *OPEN_QUALITY_GATES]


class Run:
    """`run` in its own session, its output read by threads as it comes."""

    def __init__(self, root: Path, serving: Path, *extra: str):
        self.process = subprocess.Popen(
            [*RUN, "--pipeline-root", str(root), "--serving-dir", str(serving), *extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                        for stream, lines in ((self.process.stdout, self.stdout),
                                              (self.process.stderr, self.stderr))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 600) -> None:
        """Returns once a stderr line matches `pattern`; fails if the run ends first."""
        found = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while not any(found.search(line) for line in list(self.stderr)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                for reader in self.readers:
                    reader.join(timeout=10)
                if any(found.search(line) for line in self.stderr):
                    return
                raise AssertionError(f"no line matched {pattern!r}:\n" + "\n".join(self.stderr[-30:]))
            time.sleep(0.05)

    def kill_during(self, stage: str, after: float) -> dict[str, bool]:
        """SIGKILLs the `run` process itself `after` seconds after it prints that
        `stage` started, then whatever else it had started; returns its progress."""
        self.wait_for(rf"^\[\d+/\d+\] {stage} \.\.\.$")
        time.sleep(after)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=60)
        assert self.process.returncode == -signal.SIGKILL
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for reader in self.readers:
            reader.join(timeout=10)
        return progress(self.stderr)

    def finish(self, timeout: float = 900) -> tuple[int, str, str]:
        self.process.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=10)
        return self.process.returncode, "\n".join(self.stdout), "\n".join(self.stderr)


def progress(stderr_lines: list[str]) -> dict[str, bool]:
    """{component: reused from the cache} from a run's "[k/N] Name done in" lines."""
    done = [re.match(r"^\[\d+/\d+\] (\S+) done in [\d.]+ s( \(cached\))?$", line)
            for line in stderr_lines]
    return {m.group(1): bool(m.group(2)) for m in done if m}


def one_error_line(code: int, stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 1 and len(errors) == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    return errors[0]


def versions(serving_model_dir: Path) -> list[Path]:
    return sorted(p for p in serving_model_dir.glob("*") if p.name.isdigit())


def assert_only_whole_versions(serving_model_dir: Path, warm_models: list[str]) -> None:
    """Every numbered directory is byte for byte one of the pipeline's warm models."""
    digests = {directory_digest(m) for m in warm_models}
    for version in versions(serving_model_dir):
        assert directory_digest(str(version)) in digests, f"{version} is not a whole model"


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def warm_models(root: Path) -> list[str]:
    return glob.glob(str(root / "ServingWarmup" / "warm_model" / "*" / "Format-Serving"))


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs of that size under tmp_path; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def mount(size: str, name: str) -> Path:
        point = tmp_path / name
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                       check=True)
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_killed_runs_resume_and_a_second_run_is_refused(tmp_path, tmpfs):
    root, serving = tmp_path / "pipeline", tmpfs("64m", "serving")
    model_dir = serving / "shared_bottom"

    done = Run(root, serving).kill_during("Transform", after=3)
    assert done.get("ImportExamples") is False and "Transform" not in done, done
    assert not versions(model_dir)

    # Each re-run takes the lock the killed one held and reuses what completed.
    second = Run(root, serving)
    done = second.kill_during("Trainer", after=3)
    assert any("(reused)" in line for line in second.stderr if "passed the checks" in line)
    assert done["StatisticsGen"] and done["SchemaGen"] and not done["Transform"], done
    assert "Trainer" not in done

    # The Pusher takes well under a second: killed as it starts, it may or may not
    # have copied; either way no partial version may show.
    third = Run(root, serving)
    done = third.kill_during("Pusher", after=0)
    assert done["Transform"] and not done["Trainer"] and not done["Evaluator"], \
        "\n".join(line for line in second.stderr + third.stderr if line.startswith("["))
    assert_only_whole_versions(model_dir, warm_models(root))

    # The last re-run holds the root; a second run on it is refused at once.
    last = Run(root, serving)
    last.wait_for("passed the checks")
    code, _, stderr = Run(root, serving).finish(timeout=300)
    assert (f"pipeline root {root} is in use by another run (pid {last.process.pid} "
            in one_error_line(code, stderr))

    code, stdout, stderr = last.finish()
    assert code == 0, stderr[-3000:]
    # The Evaluator runs again: the model it blessed before the kill is now the
    # latest blessed model, i.e. its baseline, which changes its inputs.
    done = progress(stderr.splitlines())
    assert done["Trainer"] and done["ServingWarmup"] and not done["Pusher"], \
        "\n".join(line for line in third.stderr + stderr.splitlines() if line.startswith("["))
    assert "blessed; pushed to" in stdout or "blessed; already serving" in stdout, stdout
    assert len(versions(model_dir)) == 1
    assert_only_whole_versions(model_dir, warm_models(root))
    assert list(model_dir.iterdir()) == versions(model_dir)

    # A full serving disk: shrunk so that the new model does not fit beside the old one.
    before = versions(model_dir)
    used = shutil.disk_usage(serving).used
    subprocess.run(["mount", "-o", f"remount,size={used + directory_bytes(before[0]) // 2}",
                    str(serving)], check=True)
    code, _, stderr = Run(root, serving, "--train-steps", "61").finish()
    line = one_error_line(code, stderr)
    assert "no space left on device" in line and str(model_dir) in line, line
    assert list(model_dir.iterdir()) == before
    assert_only_whole_versions(model_dir, warm_models(root))


def test_full_pipeline_root_is_one_line_naming_it(tmp_path, tmpfs):
    root = tmpfs("1m", "pipeline")
    code, _, stderr = Run(root / "funnel", tmp_path / "serving").finish(timeout=300)
    line = one_error_line(code, stderr)
    assert "no space left on device" in line and str(root) in line, line


def test_a_killed_copy_never_shows_a_version_and_the_next_push_clears_it(tmp_path):
    """The push copies under a hidden name and renames: killed in the middle of a
    300 MB copy, the base directory holds no numbered directory; the next push
    removes the leftover and adds a whole version."""
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"graph")
    with open(model / "variables" / "variables.data-00000-of-00001", "wb") as handle:
        handle.truncate(300 * 2**20)
    base = tmp_path / "serving" / "m"
    code = ("import sys; from tfx_pipeline.push import copy_version; "
            "copy_version(sys.argv[1], sys.argv[2])")
    copier = subprocess.Popen([sys.executable, "-c", code, str(model), str(base)], cwd=REPO)
    deadline = time.monotonic() + 120
    while not list(base.glob(".partial-*/variables/*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    copier.send_signal(signal.SIGKILL)
    copier.wait()
    leftovers = list(base.glob(".partial-*"))
    assert leftovers and not versions(base)

    target, version = copy_version(str(model), str(base))
    assert [p.name for p in base.iterdir()] == [version]
    assert directory_digest(target) == directory_digest(str(model))


def test_a_push_onto_a_full_disk_leaves_nothing_behind(tmp_path, tmpfs):
    base = tmpfs("2m", "serving") / "m"
    small, large = tmp_path / "small", tmp_path / "large"
    for model, size in ((small, 2**19), (large, 3 * 2**20)):
        model.mkdir()
        (model / "saved_model.pb").write_bytes(os.urandom(size))
    kept, _ = copy_version(str(small), str(base))
    with pytest.raises(OSError) as raised:
        copy_version(str(large), str(base))
    assert "No space left on device" in str(raised.value) and raised.value.filename.startswith(str(base))
    assert [str(p) for p in base.iterdir()] == [kept]


def test_pushing_and_predicting_read_versions_as_tf_serving_does(tmp_path):
    """Only names of ASCII digits are versions ("007" is 7); "²", which str.isdigit()
    accepts and int() refuses, used to stop the Pusher before it copied anything."""
    base = tmp_path / "serving" / "m"
    for name in ("3", "007", "\u00b2", "9.partial", ".tmp-12"):
        (base / name).mkdir(parents=True)
        (base / name / "saved_model.pb").write_bytes(b"graph")
    (base / "12").mkdir()                     # a version still being written: no graph yet
    assert version_directories(str(base)) == [(3, "3"), (7, "007")]
    assert version_directories(str(base), complete_only=False) == [(3, "3"), (7, "007"), (12, "12")]
    assert newest_version(str(base)) == str(base / "007")
    assert resolve_version_dir(str(base)) == str(base / "007")
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"new graph")
    target, version = copy_version(str(model), str(base))
    assert int(version) >= 13 and target == str(base / version)
    assert newest_version(str(base)) == target
