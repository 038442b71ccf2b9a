"""Evaluator cost per evaluated row: the pipeline's EvalConfig against TFMA's built-ins.

One small synthetic pipeline run provides a trained model (its evaluation
signature, as the Evaluator reads it) and raw eval examples; the examples are
repeated up to `--rows`. TFMA then evaluates them, `--repeats` times each, with

  project   the EvalConfig the pipeline generates (tfx_pipeline.eval_config):
            per output and slice one combiner (a prediction histogram for binary
            outputs, the gathered pairs for the core target)
  builtin   the same outputs, slices, rows and sample spaces with TFMA's
            built-in metrics, one combiner per metric, as the Evaluator ran
            before: ExampleCount, AUC, Calibration, MeanLabel, MeanPrediction,
            CalibrationPlot and BinaryCrossEntropy for binary outputs;
            ExampleCount, MeanSquaredError, MeanAbsoluteError, MeanLabel,
            MeanPrediction and the project's sample metrics for the core target

and reports the median wall time, its spread (slowest / fastest run) and the
median milliseconds per evaluated row. Thresholds are left out (no baseline).
Each run is the Beam pipeline TFX's Evaluator builds (TFXIO with the run's
schema, then tfma.ExtractEvaluateAndWriteResults), in-process on Beam's
DirectRunner as a local run below local_beam_args' multi-processing threshold.

    scripts/run python benchmarks/evaluator_speed.py [--rows 100000] [--repeats 3]
        [--configs project,builtin]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tfx_pipeline.cli import OPEN_QUALITY_GATES  # noqa: E402
from tfx_pipeline.compare import latest  # noqa: E402
from tfx_pipeline.machine import cpu_description  # noqa: E402


def run_pipeline(work: str) -> str:
    """One small synthetic pipeline run; returns its root. Exits with the run's own
    last error line if it fails."""
    root = os.path.join(work, "pipeline")
    print("training a model on 20,000 synthetic rows (about a minute) ...", file=sys.stderr)
    done = subprocess.run([sys.executable, "-m", "tfx_pipeline", "run", "--dataset", "synthetic",
                           "--rows", "20000", "--train-steps", "200", "--eval-steps", "5",
                           *OPEN_QUALITY_GATES, "--pipeline-root", root,
                           "--serving-dir", os.path.join(work, "pushed")],
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        sys.exit(f"error: the pipeline run failed: {last}")
    return root



def write_rows(root: str, rows: int, path: str) -> int:
    """The run's raw eval examples, repeated until `rows`, as one TFRecord file."""
    import tensorflow as tf

    from tfx_pipeline.results import imported_split_records

    records = imported_split_records(root, "eval")
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(rows):
            writer.write(records[i % len(records)])
    return rows


def builtin_config(config):
    """`config` with TFMA's built-in metrics wherever TFMA has one."""
    from tensorflow_model_analysis.proto import config_pb2

    from tfx_pipeline import eval_config

    builtin = config_pb2.EvalConfig()
    builtin.CopyFrom(config)
    for spec in builtin.metrics_specs:
        binary = spec.metrics[0].class_name == "BinaryExampleCount"
        names = (["ExampleCount", "AUC", "BinaryCrossEntropy", "Calibration", "MeanLabel",
                  "MeanPrediction"] if binary else
                 ["ExampleCount", "MeanSquaredError", "MeanAbsoluteError", "MeanLabel",
                  "MeanPrediction"])
        custom = [] if binary else [n for n in eval_config.REGRESSION_METRICS
                                    if not n.startswith("Sample") and "OnSample" not in n]
        del spec.metrics[:]
        spec.metrics.extend(config_pb2.MetricConfig(class_name=n) for n in names)
        spec.metrics.extend(config_pb2.MetricConfig(class_name=n,
                                                    module=eval_config.CUSTOM_METRICS_MODULE)
                            for n in custom)
        if binary:
            spec.metrics.append(config_pb2.MetricConfig(class_name="CalibrationPlot",
                                                        config='"num_buckets": 1000'))
    return builtin


def evaluate_once(model_dir: str, schema_path: str, config, data: str, out: str) -> float:
    """Seconds for the Beam pipeline TFX's Evaluator builds: examples read through
    TFXIO with the run's schema -> tfma.ExtractEvaluateAndWriteResults (model loading
    included, as the Evaluator loads it inside the pipeline)."""
    import apache_beam as beam
    import tensorflow_model_analysis as tfma
    from tfx_bsl.public import tfxio
    from tfx_bsl.tfxio import tensor_adapter

    from tfx.utils import io_utils

    start = time.perf_counter()
    schema = io_utils.SchemaReader().read(schema_path)
    examples = tfxio.TFExampleRecord(file_pattern=data, schema=schema,
                                     raw_record_column_name=tfma.ARROW_INPUT_COLUMN)
    adapter = tensor_adapter.TensorAdapterConfig(
        arrow_schema=examples.ArrowSchema(),
        tensor_representations=examples.TensorRepresentations())
    model = tfma.default_eval_shared_model(model_dir, eval_config=config)
    with beam.Pipeline() as pipeline:
        _ = (pipeline | examples.BeamSource()
             | tfma.ExtractEvaluateAndWriteResults(eval_shared_model=model, eval_config=config,
                                                   output_path=out,
                                                   tensor_adapter_config=adapter))
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default="project,builtin")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    from transform import datasets
    from tfx_pipeline.eval_config import build_eval_config

    project = build_eval_config(datasets.spec_for("synthetic", None))
    for spec in project.metrics_specs:
        for metric in spec.metrics:
            metric.ClearField("per_slice_thresholds")
    configs = {"project": project, "builtin": builtin_config(project)}
    results = {}
    with tempfile.TemporaryDirectory(prefix="evaluator-speed-") as work:
        root = run_pipeline(work)
        model_dir = latest(f"{root}/ServingWarmup/warm_model/*") + "/Format-Serving"
        schema = latest(f"{root}/SchemaGen/schema/*") + "/schema.pbtxt"
        data = os.path.join(work, "eval.tfrecord")
        rows = write_rows(root, args.rows, data)
        print(f"{rows:,} rows, {len(project.metrics_specs)} outputs x "
              f"{len(project.slicing_specs)} slicings; {cpu_description()}")
        print(f"{'config':<10}{'median s':>10}{'spread':>8}{'ms/row':>9}  runs (s)")
        for name in args.configs.split(","):
            seconds = []
            for i in range(args.repeats):
                print(f"{name}: run {i + 1} of {args.repeats} ...", file=sys.stderr, flush=True)
                seconds.append(evaluate_once(model_dir, schema, configs[name], data,
                                             os.path.join(work, f"out-{name}-{i}")))
            median = statistics.median(seconds)
            results[name] = {"seconds": seconds, "median_s": median,
                             "spread": max(seconds) / min(seconds),
                             "ms_per_row": 1000 * median / rows}
            print(f"{name:<10}{median:>10.1f}{results[name]['spread']:>8.2f}"
                  f"{results[name]['ms_per_row']:>9.3f}  "
                  f"{', '.join(f'{s:.1f}' for s in seconds)}", flush=True)
    if "project" in results and "builtin" in results:
        print(f"built-in / project ms per row: "
              f"{results['builtin']['ms_per_row'] / results['project']['ms_per_row']:.1f}x "
              f"(goal >= 10x)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": cpu_description(), "rows": rows, "results": results}, handle,
                      indent=1)


if __name__ == "__main__":
    main()
