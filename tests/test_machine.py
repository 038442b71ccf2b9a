"""The CPU description every published figure carries."""

from tfx_pipeline.machine import cpu_description


def write_cpuinfo(path, model, flags, cores):
    block = f"processor\t: {{}}\nmodel name\t: {model}\nflags\t\t: {flags}\n\n"
    path.write_text("".join(block.format(i) for i in range(cores)))
    return str(path)


def test_names_model_cores_and_vector_units(tmp_path):
    cpuinfo = write_cpuinfo(tmp_path / "cpuinfo", "AMD EPYC", "fpu sse2 avx avx2 fma avx512f avx512bw", 2)
    assert cpu_description(cpuinfo) == "AMD EPYC, 2 cores, AVX2, AVX-512"


def test_a_cpu_without_avx512_says_so_by_omission(tmp_path):
    cpuinfo = write_cpuinfo(tmp_path / "cpuinfo", "Intel Xeon", "fpu sse2 avx avx2 fma", 4)
    assert cpu_description(cpuinfo) == "Intel Xeon, 4 cores, AVX2"


def test_missing_cpuinfo_still_reports_the_core_count(tmp_path):
    assert cpu_description(str(tmp_path / "absent")).startswith("unknown CPU, ")


def test_thread_pools_default_to_the_cpu_count_and_can_be_overridden():
    import pytest

    from tfx_pipeline.machine import thread_pools, usable_cpus

    assert thread_pools(2) == (2, 2)
    assert thread_pools(8, intra=4) == (4, 8)
    assert thread_pools(8, inter=1) == (8, 1)
    with pytest.raises(ValueError, match="intra-op threads must be at least 1, got 0"):
        thread_pools(2, intra=0)
    import os
    assert 1 <= usable_cpus() <= (os.cpu_count() or 1)


def test_run_takes_thread_pool_sizes_and_refuses_bad_ones(capsys):
    import pytest

    from tfx_pipeline.cli import build_parser

    args = build_parser().parse_args(["run", "--intra-op-threads", "1", "--inter-op-threads", "2"])
    assert (args.intra_op_threads, args.inter_op_threads) == (1, 2)
    assert build_parser().parse_args(["run"]).intra_op_threads is None
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["run", "--intra-op-threads", "0"])
    assert exit_info.value.code == 2
    assert "expected at least 1 thread, got 0" in capsys.readouterr().err


def test_tensorflow_gets_the_pools_in_a_fresh_process():
    import subprocess
    import sys

    code = ("from tfx_pipeline.machine import configure_tensorflow_threads as c; "
            "import tensorflow as tf; print(c(1, 2)); "
            "print(tf.config.threading.get_intra_op_parallelism_threads(), "
            "tf.config.threading.get_inter_op_parallelism_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=__import__("pathlib").Path(__file__).resolve().parent.parent).stdout
    assert out.split("\n")[-3:-1] == ["(1, 2)", "1 2"]


def test_pools_fixed_by_a_running_tensorflow_are_an_error_that_says_so():
    import subprocess
    import sys

    code = ("import tensorflow as tf; tf.constant(1.0) + 1.0; "
            "from tfx_pipeline.machine import configure_tensorflow_threads as c, usable_cpus; "
            "print(c() == (usable_cpus(), usable_cpus())); c(1, 1)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=__import__("pathlib").Path(__file__).resolve().parent.parent)
    assert done.stdout.strip().endswith("True")     # TensorFlow's own choice is the same
    assert "already runs with thread pools" in done.stderr and done.returncode != 0


def run_python(code: str, env: dict) -> str:
    import subprocess
    import sys

    from conftest import REPO

    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_malloc_arenas_are_capped_for_this_process_and_its_children_unless_set():
    import os

    code = ("import os, subprocess, sys; from tfx_pipeline.machine import limit_malloc_arenas; "
            "print(limit_malloc_arenas(int(sys.argv[1]) if len(sys.argv) > 1 else 4), "
            "subprocess.run(['sh', '-c', 'echo $MALLOC_ARENA_MAX'], capture_output=True, "
            "text=True).stdout.strip())")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert run_python(code, env) == "4 4"                        # max(2, cpus), inherited
    assert run_python(code.replace("else 4", "else 1"), env) == "2 2"   # never below 2
    assert run_python(code, {**env, "MALLOC_ARENA_MAX": "7"}) == "7 7"  # the user's value wins


def test_release_free_memory_hands_freed_heap_pages_back():
    """500 MB of small blocks freed stay resident until the heap is trimmed."""
    import os

    code = ("import psutil; from tfx_pipeline.machine import release_free_memory; "
            "rss = lambda: psutil.Process().memory_info().rss >> 20; "
            "blocks = [bytearray(1000) for _ in range(500_000)]; "
            "keep = bytearray(1); peak = rss(); del blocks; freed = rss(); "
            "release_free_memory(); print(peak, freed, rss())")
    peak, freed, trimmed = map(int, run_python(code, dict(os.environ)).split())
    assert freed > peak - 100          # freed by Python, still resident
    assert trimmed < freed - 300       # handed back


def test_usable_cpus_is_the_affinity_mask_not_the_machines_count(monkeypatch):
    """A container or `taskset` limits the CPUs a process may run on; TensorFlow's and
    Beam's pools are sized by that, not by every core the machine has."""
    import os

    from tfx_pipeline import machine

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    assert machine.usable_cpus() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(), raising=False)
    assert machine.usable_cpus() == 1          # never 0


def test_usable_cpus_falls_back_to_the_cpu_count_without_an_affinity_mask(monkeypatch):
    """macOS and some other systems have no os.sched_getaffinity; where the call fails
    (OSError) the count is the machine's, and at least 1 when even that is unknown."""
    import os

    from tfx_pipeline import machine

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert machine.usable_cpus() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert machine.usable_cpus() == 1

    def refused(pid):
        raise OSError("not permitted")

    monkeypatch.setattr(os, "sched_getaffinity", refused, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert machine.usable_cpus() == 3


def test_usable_cpus_never_needs_os_process_cpu_count(monkeypatch):
    """os.process_cpu_count exists only from Python 3.13; the project supports 3.10 on."""
    import os

    from tfx_pipeline import machine

    monkeypatch.delattr(os, "process_cpu_count", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1, 2, 5}, raising=False)
    assert machine.usable_cpus() == 3
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert machine.usable_cpus() == 4


def test_usable_cpus_matches_this_process_affinity():
    import os

    from tfx_pipeline.machine import usable_cpus

    if hasattr(os, "sched_getaffinity"):
        assert usable_cpus() == len(os.sched_getaffinity(0))
    else:
        assert usable_cpus() == (os.cpu_count() or 1)
