"""Command line: `python -m tfx_pipeline {run,compile,report} ...` (see --help)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tfx_pipeline import disk

# The registry's names, listed here so `--help` need not import TensorFlow;
# tests/test_models.py keeps the two in step.
MODEL_NAMES = ("apem", "htlnet", "shared_bottom", "mmoe", "ple", "esmm", "aitm")
STRATEGIES = ("default", "mirrored", "multi_worker")   # trainer.STRATEGIES, kept in step by a test
DEFAULT_IMAGE = "funnelstack:latest"
BEAM_ARGS_HELP = ("extra Beam pipeline arguments, space-separated, for every Beam-based "
                  "component (examples for Dataflow, Flink and Spark: docs/beam.md)")
# Without --beam-args, `run` uses the DirectRunner's worker processes from this many
# input rows on: on 2 cores they cost about 70 s of start-up and a worker's memory
# per stage and save about half of the per-row time, so they pay off from about
# 150k rows (docs/scale.md). Each worker holds about 1.2 GB at 1M rows, hence the cap.
MULTI_PROCESS_MIN_ROWS = 200_000
MAX_LOCAL_BEAM_WORKERS = 4
# `run` flags that open the absolute quality gates (AUC floor, core calibration band,
# core NRMSE bound), for runs that only need the pipeline's artifacts or plumbing.
# The change gates against the latest blessed model still apply.
OPEN_CORE_GATES = ("--core-calibration", "1e-9,1e9", "--max-core-nrmse", "1e9")
OPEN_QUALITY_GATES = ("--min-auc", "0") + OPEN_CORE_GATES


def local_beam_args(given: str, rows: int, cpus: int) -> tuple[str, ...]:
    """The Beam arguments of a local run.

    `given` (the --beam-args string) when it is not empty. Otherwise, for
    `rows` >= MULTI_PROCESS_MIN_ROWS on a machine with `cpus` > 1, the
    DirectRunner's multi-processing mode with min(cpus, MAX_LOCAL_BEAM_WORKERS)
    workers; else none (Beam's in-process default).
    """
    if given.strip():
        return tuple(given.split())
    if rows < MULTI_PROCESS_MIN_ROWS or cpus < 2:
        return ()
    return ("--direct_running_mode=multi_processing",
            f"--direct_num_workers={min(cpus, MAX_LOCAL_BEAM_WORKERS)}")


def parse_hparams(value: str | None) -> dict:
    """--hparams takes a JSON/YAML file or an inline JSON object."""
    if not value:
        return {}
    if os.path.exists(value):
        text = Path(value).read_text()
        if value.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    else:
        try:
            data = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"--hparams is neither a file nor valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError("--hparams must be a JSON/YAML object of name: value")
    return data


def pipeline_name(dataset: str, model: str) -> str:
    # Kubeflow does not allow '_' in pipeline names.
    return f"funnel-{dataset}-{model}".replace("_", "-")


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 thread, got {value}")
    return value


def _band(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two numbers), got {text!r}") from None
    if not 0 < low < high:
        raise argparse.ArgumentTypeError(f"expected 0 < LOW < HIGH, got {text!r}")
    return low, high


def _add_model_args(parser):
    parser.add_argument("--dataset", default="synthetic",
                        help="synthetic | hillstrom | ali_ccp | aliexpress | kuairand | csv | "
                             "parquet | tfrecord (the last three: any --data file in that "
                             "format, with --spec)")
    parser.add_argument("--spec", help="dataset spec file (YAML/JSON); required for --dataset "
                                       "csv, parquet and tfrecord")
    parser.add_argument("--model", default="shared_bottom", help=f"one of: {', '.join(MODEL_NAMES)}")
    parser.add_argument("--hparams", help="model hyper-parameters: a JSON/YAML file or inline JSON")
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--eval-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", choices=STRATEGIES,
                        default="default",
                        help="tf.distribute strategy of the Trainer: one device, every "
                             "local GPU (MirroredStrategy), or every worker in TF_CONFIG "
                             "(MultiWorkerMirroredStrategy; docs/distributed.md)")
    parser.add_argument("--min-auc", type=float, default=0.55,
                        help="bless only if every binary step's AUC on eval (all rows) is at "
                             "least this")
    parser.add_argument("--max-auc-drop", type=float, default=0.02,
                        help="bless only if no step's AUC falls more than this below the latest "
                             "blessed model's")
    parser.add_argument("--max-gini-drop", type=float, default=0.05,
                        help="the same for the core target's normalised Gini")
    parser.add_argument("--core-calibration", type=_band, default=(0.8, 1.25), metavar="LOW,HIGH",
                        help="bless only if the core target's mean prediction / mean label on "
                             "eval (all rows) is within this band (default 0.8,1.25)")
    parser.add_argument("--max-core-nrmse", type=float, default=1.0,
                        help="bless only if the core target's NRMSE on eval (all rows) is at "
                             "most this; 1.0 is the error of predicting the mean everywhere")


def build_parser(prog: str = "python -m tfx_pipeline") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog,
                                     description="Multi-step conversion models on TFX.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="check the data and run the pipeline locally")
    _add_model_args(run)
    run.add_argument("--data", help="CSV file (hillstrom: or $HILLSTROM_CSV; csv: required; "
                                    "ali_ccp, aliexpress, kuairand: one file in the published "
                                    "layout, README.md \"Public datasets\"); parquet: a "
                                    "Parquet file or a directory of *.parquet files; tfrecord: "
                                    "a TFRecord file of tf.Examples (GZIP or not) or a "
                                    "directory of them")
    run.add_argument("--rows", type=int, help="rows to generate (synthetic only; default 20000)")
    run.add_argument("--pipeline-root", help="artifacts and metadata (default: pipelines/<name>)")
    run.add_argument("--serving-dir", default="serving_models",
                     help="push target: <serving dir>/<model>/<version>/")
    run.add_argument("--bad-rows", choices=("error", "reject"), default="error",
                     help="stop at the first bad input row, or set bad rows aside")
    run.add_argument("--rejects", help="where to write rejected rows (with --bad-rows reject)")
    run.add_argument("--beam-args", default="", help=BEAM_ARGS_HELP)
    run.add_argument("--schema", help="curated schema.pbtxt to validate against (default: inferred)")
    run.add_argument("--verbose", action="store_true", help="show TFX/Beam/TensorFlow logs")
    run.add_argument("--intra-op-threads", type=_threads, metavar="N",
                     help="TensorFlow's intra-op thread pool (default: the usable CPUs)")
    run.add_argument("--inter-op-threads", type=_threads, metavar="N",
                     help="TensorFlow's inter-op thread pool (default: the usable CPUs)")

    compile_ = commands.add_parser(
        "compile", help="write a Kubeflow Pipelines v2 spec (JSON and YAML)",
        description="--data-root, --train-steps and --model become the defaults of the "
                    "runtime parameters data_root, train_steps and model_name.")
    _add_model_args(compile_)
    compile_.add_argument("--output", required=True,
                          help="spec path without suffix (or with .json/.yaml); "
                               "writes <output>.json and <output>.yaml")
    compile_.add_argument("--data-root", default="gs://YOUR_BUCKET/data/synthetic",
                          help="directory the cluster can read, holding Split-train/ and "
                               "Split-eval/ of GZIP tf.Example TFRecords (what `run` ingests "
                               "to <pipeline root>/ingested/<name>-<fingerprint>/examples)")
    compile_.add_argument("--pipeline-root", default="gs://YOUR_BUCKET/pipelines")
    compile_.add_argument("--serving-dir", default="gs://YOUR_BUCKET/serving")
    compile_.add_argument("--image", default=DEFAULT_IMAGE, help="container image of the pipeline")
    compile_.add_argument("--trainer-gpus", type=int, default=1,
                          help="GPUs the Trainer's container requests (0: train on CPU)")
    compile_.add_argument("--gpu-type", default="nvidia.com/gpu",
                          help="Kubernetes resource name of the GPU")
    compile_.add_argument("--beam-args", default="", help=BEAM_ARGS_HELP)

    report = commands.add_parser("report", help="render the latest evaluation as an HTML page")
    report.add_argument("--pipeline-root", required=True, help="a pipeline root of `run`")
    report.add_argument("--output", help="directory for index.html and PNGs "
                                         "(default: <pipeline root>/report)")
    return parser


def _config(args, examples_dir, spec, pipeline_root: str, name: str | None = None,
            model_name=None, train_steps=None, beam_args=None):
    """The PipelineConfig of the parsed arguments; the keyword arguments override
    what the arguments say (compile passes runtime parameters, run the Beam
    arguments it chose)."""
    from tfx_pipeline.eval_config import Gates
    from tfx_pipeline.fingerprint import code_fingerprints
    from tfx_pipeline.pipeline import PipelineConfig

    return PipelineConfig(
        pipeline_name=name or pipeline_name(args.dataset, args.model),
        pipeline_root=pipeline_root, examples_dir=examples_dir, spec=spec,
        model_name=model_name or args.model,
        serving_dir=os.path.abspath(args.serving_dir) if "://" not in args.serving_dir
        else args.serving_dir,
        hparams=parse_hparams(args.hparams),
        train_steps=args.train_steps if train_steps is None else train_steps,
        eval_steps=args.eval_steps, batch_size=args.batch_size, seed=args.seed,
        strategy=args.strategy,
        gates=Gates(args.min_auc, args.max_auc_drop, args.max_gini_drop, args.core_calibration,
                    args.max_core_nrmse),
        beam_args=tuple(args.beam_args.split()) if beam_args is None else beam_args,
        code_fingerprints=code_fingerprints(),
        schema_path=os.path.abspath(args.schema) if getattr(args, "schema", None) else None)


def _check_model(args, spec):
    """Fails early, before any data work, when the model cannot train on this spec."""
    from keras_models import registry
    from tfx_pipeline.trainer import task_layout_for

    registry.check_fits(args.model, task_layout_for(spec), parse_hparams(args.hparams))


def command_run(args) -> int:
    from tfx_pipeline import run_lock
    from tfx_pipeline.machine import configure_tensorflow_threads, limit_malloc_arenas, usable_cpus

    # Before TensorFlow runs anything: the Trainer runs in this process under
    # LocalDagRunner, so these are the pools it trains with.
    configure_tensorflow_threads(args.intra_op_threads, args.inter_op_threads)
    limit_malloc_arenas(usable_cpus())

    name = pipeline_name(args.dataset, args.model)
    pipeline_root = os.path.abspath(args.pipeline_root or os.path.join("pipelines", name))
    with run_lock.hold(pipeline_root):
        return _run_locked(args, pipeline_root)


def _run_locked(args, pipeline_root: str) -> int:
    """`run` once it holds the pipeline root: ingest, the pipeline, the outcome."""
    from tfx_pipeline.machine import usable_cpus
    from transform import datasets
    from transform.formats import reader_for
    from transform.ingest import ingest, require_every_split

    started = time.monotonic()
    _check_model(args, datasets.spec_for(args.dataset, args.spec))
    source = datasets.resolve(args.dataset, os.path.join(pipeline_root, "source"), data=args.data,
                              spec_path=args.spec, rows=args.rows, seed=args.seed)
    print(f"checking {source.path} against spec {source.spec.name!r} ...", file=sys.stderr)
    ingested = ingest(reader_for(source.format, source.path, source.rename), source.spec,
                      os.path.join(pipeline_root, "ingested"), bad_rows=args.bad_rows,
                      rejects_path=args.rejects, prepare=source.prepare,
                      log=lambda line: print(line, file=sys.stderr))
    print(f"{ingested.rows_written} of {ingested.rows_read} rows passed the checks"
          f"{' (reused)' if ingested.reused else ''}", file=sys.stderr)
    require_every_split(ingested, source.spec)

    from tfx import v1 as tfx

    from tfx_pipeline import progress, results
    from tfx_pipeline.pipeline import create_pipeline

    beam_args = local_beam_args(args.beam_args, ingested.rows_written, usable_cpus())
    if beam_args and not args.beam_args.strip():
        print(f"{ingested.rows_written} rows: Beam runs with {' '.join(beam_args)} "
              f"(--beam-args overrides; \"--direct_running_mode=in_memory\" keeps one process)",
              file=sys.stderr)
    config = _config(args, ingested.examples_uri, source.spec, pipeline_root, beam_args=beam_args)
    pipeline = create_pipeline(config)
    progress.attach(total=len(pipeline.components), verbose=args.verbose,
                    log_path=os.path.join(pipeline_root, "logs",
                                          time.strftime("run-%Y%m%d-%H%M%S.log")))
    tfx.orchestration.LocalDagRunner().run(pipeline)

    outcome = results.last_run_outcome(config.metadata_path)
    if outcome.evaluation_uri:
        overall = results.overall_metrics(outcome.evaluation_uri)
        for output, metrics in sorted(overall.items()):
            shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
            print(f"eval {output}: {shown}")
        for line in results.calibration_warnings(overall):
            print(f"warning: {line}")
        if source.generator is not None:
            from tfx_pipeline import oracle

            print("scoring the generator's true values on the eval rows ...", file=sys.stderr)
            print(oracle.truth_line(oracle.truth_calibration(pipeline_root, source.generator)))
    if outcome.blessed and outcome.already_serving:
        print(f"blessed; already serving as {outcome.pushed_destination} (not pushed again)")
    elif outcome.blessed:
        print(f"blessed; pushed to {outcome.pushed_destination}")
    else:
        reasons = outcome.failed_thresholds or ("see the Evaluator output",)
        print("NOT blessed, nothing pushed:\n" + "\n".join(f"  - {r}" for r in reasons))
    print(f"finished in {time.monotonic() - started:.0f} s; artifacts in {pipeline_root}",
          file=sys.stderr)
    return 0


def command_compile(args) -> int:
    from tfx_pipeline import kubeflow
    from transform import datasets

    spec = datasets.spec_for(args.dataset, args.spec)
    _check_model(args, spec)
    if args.trainer_gpus < 0:
        raise ValueError(f"--trainer-gpus must be 0 or more, not {args.trainer_gpus}")
    parameters = kubeflow.runtime_parameters(args.data_root, args.train_steps, args.model)
    # The model is a runtime parameter, so the pipeline is named after the dataset only.
    config = _config(args, parameters["data_root"], spec, args.pipeline_root,
                     name=f"funnel-{args.dataset}", model_name=parameters["model_name"],
                     train_steps=parameters["train_steps"])
    paths = kubeflow.compile_pipeline(config, args.image, args.output,
                                      trainer_gpus=args.trainer_gpus, gpu_type=args.gpu_type)
    print(f"wrote Kubeflow pipeline spec {paths[0]} and {paths[1]} (image {args.image}; "
          f"runtime parameters {', '.join(parameters)})")
    return 0


def command_report(args) -> int:
    from tfx_pipeline import report

    return report.command_report(args)


def join_beam_args(argv: list[str]) -> list[str]:
    """Writes `--beam-args VALUE` as `--beam-args=VALUE`.

    argparse takes a value that starts with "-" for an option of its own unless
    it contains a space, so `--beam-args "--runner=DirectRunner"` (one Beam
    option) would fail with "expected one argument" while two options pass.
    """
    joined, index = [], 0
    while index < len(argv):
        if argv[index] == "--beam-args" and index + 1 < len(argv):
            joined.append(f"--beam-args={argv[index + 1]}")
            index += 2
        else:
            joined.append(argv[index])
            index += 1
    return joined


def _written_directories(args) -> list[str]:
    """The local directories a command writes to, as given on its command line."""
    paths = [getattr(args, name, None) for name in ("pipeline_root", "serving_dir", "output")]
    return [os.path.abspath(p) for p in paths if p and "://" not in p]


def main(argv=None, prog: str = "python -m tfx_pipeline") -> int:
    args = build_parser(prog).parse_args(join_beam_args(sys.argv[1:] if argv is None else list(argv)))
    try:
        commands = {"run": command_run, "compile": command_compile, "report": command_report}
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # every failure ends in one readable line
        reason = (disk.disk_full_reason(error, _written_directories(args))
                  or " ".join(str(error).split()) or type(error).__name__)
        from tfx_pipeline import progress

        log = progress.run_log_path()
        print(f"error: {reason}" + (f" (full log: {log})" if log else ""), file=sys.stderr)
        if os.environ.get("FUNNEL_DEBUG"):
            raise
        return 1
