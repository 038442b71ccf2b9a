"""How the pipeline's cost grows with rows: wall time and peak memory per stage.

For each size in --rows, the whole pipeline runs on the synthetic funnel through
the real CLI (`python -m tfx_pipeline run`, LocalDagRunner, Beam's DirectRunner
as `run` chooses it or as --beam-args say) in a child process. For each size in
--transform-rows, only ImportExamples -> ImportSchemaGen -> Transform runs, with the
same Beam arguments (the schema is the one SchemaGen inferred in the largest full
run). Stages:
start-up (Python, TensorFlow imports) with generating the CSV, checking and
converting it (ingest), then each component.

Memory is the resident set size of the child and all its descendants, sampled
every 0.2 s; a stage's peak is the highest sample while it ran. The child's own
peak (the runner, which holds Beam's data between stages) and the largest other
process's (a Beam worker) are reported beside it. The Trainer's
cost is set by --train-steps (default 1000 steps of 256 rows), not by the row
count; the Evaluator reads the whole eval split (20 % of the rows).

    scripts/run python benchmarks/pipeline_scale.py                        # 100k, 1M; 10M Transform only
    scripts/run python benchmarks/pipeline_scale.py --beam-args "--direct_running_mode=in_memory"   # one process
    scripts/run python benchmarks/pipeline_scale.py --rows 20000 --transform-rows 50000   # a smoke run
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tfx_pipeline.cli import OPEN_QUALITY_GATES  # noqa: E402
from tfx_pipeline.machine import cpu_description  # noqa: E402

_START = re.compile(r"^\[\d+/\d+\] (\S+) \.\.\.$")
_DONE = re.compile(r"^\[\d+/\d+\] (\S+) done in ")
_CHECKING = re.compile(r"^checking .* against spec")
_CHECKED = re.compile(r"rows passed the checks")


class MemorySampler(threading.Thread):
    """Samples the RSS of a process tree: the whole tree, the root process (the
    runner, where Beam's DirectRunner keeps data between stages) and the largest
    other process (a Beam worker). `peak(since, until, part)` over a time window."""

    PARTS = ("total", "runner", "largest_worker")

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, dict]] = []
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            try:
                runner = self.process.memory_info().rss
                others = []
                for member in self.process.children(recursive=True):
                    try:
                        others.append(member.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                return
            self.samples.append((time.monotonic(), {
                "total": runner + sum(others), "runner": runner,
                "largest_worker": max(others, default=0)}))
            self.stopped.wait(self.interval)

    def peak(self, since: float, until: float, part: str = "total") -> int:
        """Highest sample of `part` in the window, counting the last sample before it
        (a stage shorter than the interval may have none of its own)."""
        before = [rss[part] for t, rss in self.samples if t < since][-1:]
        return max(before + [rss[part] for t, rss in self.samples if since <= t <= until],
                   default=0)

    def peaks_mb(self, since: float, until: float) -> dict:
        return {f"peak_{part}_mb": round(self.peak(since, until, part) / 2**20)
                for part in self.PARTS}


def run_measured(command: list[str], log_path: str) -> list[dict]:
    """Runs `command`, splitting its wall time into stages from the progress lines on
    stderr; returns [{stage, seconds, peak_total_mb, peak_runner_mb,
    peak_largest_worker_mb}] in order."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    sampler = MemorySampler(process.pid)
    sampler.start()
    stdout_lines: list[str] = []
    reader = threading.Thread(target=lambda: stdout_lines.extend(process.stdout), daemon=True)
    reader.start()
    marks: list[tuple[str, float]] = [("start-up, generate CSV", started)]
    with open(log_path, "w") as log:
        for line in process.stderr:
            log.write(line)
            line = line.rstrip("\n")
            now = time.monotonic()
            if _CHECKING.search(line):
                marks.append(("ingest (check CSV, write tf.Examples)", now))
            elif _CHECKED.search(line):
                marks.append(("(between stages)", now))
            elif match := _START.match(line):
                marks.append((match.group(1), now))
            elif _DONE.match(line):
                marks.append(("(between stages)", now))
    process.wait()
    reader.join()
    ended = time.monotonic()
    sampler.stopped.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... failed; see {log_path}")
    marks.append(("end", ended))
    stages = []
    for (name, since), (_, until) in zip(marks, marks[1:]):
        if name == "(between stages)" and until - since < 1.0:
            continue
        stages.append({"stage": name, "seconds": round(until - since, 1),
                       **sampler.peaks_mb(since, until)})
    stages.append({"stage": "total", "seconds": round(ended - started, 1),
                   **sampler.peaks_mb(started, ended)})
    return stages


def full_run(rows: int, work_dir: str, train_steps: int, beam_args: str = "") -> list[dict]:
    root = os.path.join(work_dir, f"full-{rows}")
    command = [sys.executable, "-m", "tfx_pipeline", "run", "--dataset", "synthetic",
               "--rows", str(rows), "--train-steps", str(train_steps), *OPEN_QUALITY_GATES,
               "--pipeline-root", root, "--serving-dir", os.path.join(work_dir, "serving")]
    if beam_args:
        command += ["--beam-args", beam_args]
    return run_measured(command, os.path.join(work_dir, f"full-{rows}.log"))


def transform_run(rows: int, work_dir: str, schema: str, beam_args: str = "") -> list[dict]:
    command = [sys.executable, os.path.abspath(__file__), "--transform-child", str(rows),
               "--work-dir", work_dir, "--schema", schema, f"--beam-args={beam_args}"]
    return run_measured(command, os.path.join(work_dir, f"transform-{rows}.log"))


def transform_child(rows: int, work_dir: str, schema: str, beam_args: str = "") -> None:
    """In the child: the CSV, the ingest, then ImportExamples -> ImportSchemaGen -> Transform."""
    from tfx import v1 as tfx

    from tfx_pipeline import progress
    from tfx_pipeline.cli import local_beam_args
    from tfx_pipeline.machine import usable_cpus
    from tfx_pipeline.pipeline import import_examples, transform_component
    from transform import datasets
    from transform.ingest import ingest_csv, require_every_split

    root = os.path.join(work_dir, f"transform-{rows}")
    source = datasets.resolve("synthetic", os.path.join(root, "source"), rows=rows)
    print(f"checking {source.path} against spec", file=sys.stderr, flush=True)
    ingested = ingest_csv(source.path, source.spec, os.path.join(root, "ingested"),
                          log=lambda line: print(line, file=sys.stderr))
    print(f"{ingested.rows_written} rows passed the checks", file=sys.stderr, flush=True)
    require_every_split(ingested, source.spec)
    importer = import_examples(ingested.examples_uri)
    schema_gen = tfx.components.ImportSchemaGen(schema_file=schema)
    transform = transform_component(importer.outputs["result"], schema_gen.outputs["schema"],
                                    source.spec)
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="funnel-transform-scale", pipeline_root=root,
        components=[importer, schema_gen, transform], enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(root, "metadata.sqlite")),
        beam_pipeline_args=list(local_beam_args(beam_args, rows, usable_cpus())))
    progress.attach(total=3)
    tfx.orchestration.LocalDagRunner().run(pipeline)


def print_table(title: str, stages: list[dict]) -> None:
    print(f"\n{title}")
    print(f"  {'stage':<40}{'seconds':>10}{'peak RSS MB':>14}{'runner MB':>12}{'worker MB':>12}")
    for stage in stages:
        print(f"  {stage['stage']:<40}{stage['seconds']:>10.1f}{stage['peak_total_mb']:>14}"
              f"{stage['peak_runner_mb']:>12}{stage['peak_largest_worker_mb']:>12}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="100000,1000000",
                        help="comma-separated row counts for full pipeline runs")
    parser.add_argument("--transform-rows", default="10000000",
                        help="comma-separated row counts for Transform-only runs ('' for none)")
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--work-dir", default=os.path.join(REPO, "pipelines", "scale"))
    parser.add_argument("--beam-args", default="",
                        help="passed to the full runs, e.g. \"--direct_running_mode=multi_processing "
                             "--direct_num_workers=2\" (default: what `run` chooses for the row count)")
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--transform-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--schema", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.transform_child:
        transform_child(args.transform_child, args.work_dir, args.schema, args.beam_args)
        return 0

    os.makedirs(args.work_dir, exist_ok=True)
    full_sizes = [int(n) for n in args.rows.split(",") if n]
    transform_sizes = [int(n) for n in args.transform_rows.split(",") if n]
    print(f"# pipeline scale on {cpu_description()}", flush=True)
    results = {"machine": {"cpu": cpu_description(), "cpus": os.cpu_count(),
                           "python": platform.python_version(),
                           "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
               "train_steps": args.train_steps, "beam_args": args.beam_args,
               "full": {}, "transform_only": {}}
    for rows in full_sizes:
        results["full"][rows] = full_run(rows, args.work_dir, args.train_steps, args.beam_args)
        print_table(f"full pipeline, {rows:,} rows", results["full"][rows])
    if transform_sizes:
        if not full_sizes:
            raise SystemExit("Transform-only runs take the schema of a full run; pass --rows too")
        schemas = glob.glob(os.path.join(args.work_dir, f"full-{max(full_sizes)}", "SchemaGen",
                                         "schema", "*", "schema.pbtxt"))
        for rows in transform_sizes:
            results["transform_only"][rows] = transform_run(rows, args.work_dir, max(schemas),
                                                            args.beam_args)
            print_table(f"Transform only, {rows:,} rows", results["transform_only"][rows])
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
