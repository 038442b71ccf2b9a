"""Serving latency and throughput per model: in-process and through the gRPC stand-in.

For every model, the SavedModel the pipeline exports (serving_default: raw
serialized tf.Examples -> parse -> Transform graph -> model) is called with
real examples of the synthetic funnel's eval split at batch sizes 1, 64 and
256:

  in-process  `loaded.signatures["serving_default"](examples=...)` in this
              process, one call after another;
  stand-in    serving.client.ServingClient -> gRPC on loopback ->
              serving.local_server (its own process, all models loaded).

Each row reports the median (p50) and 99th percentile (p99) of per-call
latency in milliseconds and the throughput (examples per second: batch size
over the mean latency, calls made one after another). Models are untrained
(latency does not depend on the weights) and use their default
hyper-parameters. One pipeline run provides the Transform graph and the
examples.

    scripts/run python benchmarks/serving_latency.py [--models shared_bottom,apem] [--calls 1000]

Against real TF Serving on a GPU: export the models (this script writes them to
<work dir>/models/<model>/1 and keeps them when --work-dir is given), start
serving/deploy/docker-compose.yml with MODELS_DIR pointing there and a
models.config listing them, and run with --target HOST:8500 to measure the
server instead of the stand-in (batching parameters apply there, not here).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfx_pipeline.cli import MODEL_NAMES, OPEN_QUALITY_GATES  # noqa: E402
from tfx_pipeline.compare import latest  # noqa: E402
from tfx_pipeline.machine import cpu_description  # noqa: E402

BATCH_SIZES = (1, 64, 256)
TARGETS = {"in_process_b1_p99_ms": 2.0, "in_process_b256_examples_s": 100_000,
           "stand_in_b1_p99_ms": 5.0}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_pipeline(work: str) -> str:
    """One synthetic pipeline run; returns its pipeline root."""
    root = os.path.join(work, "pipeline")
    subprocess.run([sys.executable, "-m", "tfx_pipeline", "run", "--dataset", "synthetic",
                    "--rows", "5000", "--train-steps", "20", "--eval-steps", "2",
                    *OPEN_QUALITY_GATES,
                    "--pipeline-root", root, "--serving-dir", os.path.join(work, "pushed")],
                   cwd=REPO, check=True, capture_output=True)
    return root



def export_models(root: str, models: list[str], out: str, xla: bool = True) -> None:
    """Exports each (untrained) model with the run's Transform graph to out/<model>/1.

    Models already exported there are kept, so a server may serve them meanwhile.
    """
    import tensorflow_transform as tft

    from keras_models import registry
    from serving.export import export_serving_model
    from serving.predict import load_spec
    from tfx_pipeline.trainer import input_layout_for, task_layout_for

    tft_output = tft.TFTransformOutput(latest(f"{root}/Transform/transform_graph/*"))
    spec = load_spec(latest(f"{root}/Trainer/model/*") + "/Format-Serving")
    for name in models:
        if os.path.exists(os.path.join(out, name, "1", "saved_model.pb")):
            continue   # exported by an earlier run with this --work-dir (and maybe being served)
        model = registry.build(name, input_layout_for(spec, tft_output), task_layout_for(spec))
        if spec.chain.core_target:
            model.adapt_target(np.random.default_rng(0).lognormal(3, 1, 1000).astype("float32"))
        export_serving_model(model, tft_output, spec, os.path.join(out, name, "1"), xla=xla)


def eval_examples(root: str, count: int) -> list[bytes]:
    from tfx_pipeline.results import imported_split_records

    return imported_split_records(root, "eval", count)


def summarise(seconds: list[float], batch: int) -> dict:
    milliseconds = np.array(seconds) * 1000
    return {"p50_ms": float(np.percentile(milliseconds, 50)),
            "p99_ms": float(np.percentile(milliseconds, 99)),
            "examples_s": batch / float(np.mean(seconds))}


def time_calls(call, batch: int, calls: int, warmup: int = 20) -> dict:
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return summarise(seconds, batch)


def calls_for(batch: int, calls: int) -> int:
    return max(50, calls // max(1, batch // 16))


def in_process(model_dir: str, examples: list[bytes], calls: int) -> dict:
    function = tf.saved_model.load(model_dir).signatures["serving_default"]
    results = {}
    for batch in BATCH_SIZES:
        tensor = tf.constant(examples[:batch])
        results[batch] = time_calls(lambda: function(examples=tensor), batch,
                                    calls_for(batch, calls))
    return results


def through_grpc(target: str, name: str, examples: list[bytes], calls: int) -> dict:
    from serving.client import ServingClient

    client = ServingClient(target, name, timeout=30, batch_size=max(BATCH_SIZES))
    results = {}
    for batch in BATCH_SIZES:
        rows = examples[:batch]
        results[batch] = time_calls(lambda: client.predict(rows), batch, calls_for(batch, calls))
    client.close()
    return results


def start_stand_in(models_dir: str, models: list[str]):
    config = os.path.join(models_dir, "models.config")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write("model_config_list {\n" + "".join(
            f'  config {{ name: "{m}" base_path: "{os.path.join(models_dir, m)}" }}\n'
            for m in models) + "}\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "serving.local_server", "--model-config-file",
                                config, "--port", str(port)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, f"127.0.0.1:{port}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    parser.add_argument("--calls", type=int, default=1000, help="calls at batch 1 (fewer at larger)")
    parser.add_argument("--target", help="measure this TF Serving host:port instead of the stand-in")
    parser.add_argument("--work-dir", help="keep exports and the pipeline run here")
    parser.add_argument("--no-xla", action="store_true",
                        help="export without XLA in the serving signatures (to see what it adds)")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    work = args.work_dir or tempfile.mkdtemp(prefix="serving-bench-")
    root = run_pipeline(work)
    models_dir = os.path.join(work, "models-no-xla" if args.no_xla else "models")
    export_models(root, models, models_dir, xla=not args.no_xla)
    examples = eval_examples(root, max(BATCH_SIZES))
    process, target = (None, args.target) if args.target else start_stand_in(models_dir, models)
    rows = []
    try:
        # Nothing is timed until the server has loaded (and warmed up) every model:
        # on 2 cores its loading would slow whatever is measured meanwhile.
        from serving.client import ServingClient

        for name in models:
            with ServingClient(target, name, timeout=30) as client:
                client.wait_until_available(600)
        for name in models:
            local = in_process(os.path.join(models_dir, name, "1"), examples, args.calls)
            remote = through_grpc(target, name, examples, args.calls)
            rows.append((name, local, remote))
    finally:
        if process:
            process.terminate()
            process.wait(30)
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"# serving latency ({cpu_description()}, TF {tf.__version__}; "
          f"{'TF Serving at ' + args.target if args.target else 'stand-in over loopback gRPC'}"
          f"{'; exported without XLA' if args.no_xla else ''})")
    print("| model | path | batch | p50 ms | p99 ms | examples/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, local, remote in rows:
        for path, results in (("in-process", local), ("gRPC", remote)):
            for batch, r in results.items():
                print(f"| {name} | {path} | {batch} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                      f"{r['examples_s']:,.0f} |")
    print()
    print("targets: in-process batch-1 p99 <= 2 ms, batch-256 >= 100,000 examples/s; "
          "gRPC batch-1 p99 <= 5 ms")
    for name, local, remote in rows:
        checks = {"in_process_b1_p99_ms": local[1]["p99_ms"] <= TARGETS["in_process_b1_p99_ms"],
                  "in_process_b256_examples_s":
                      local[256]["examples_s"] >= TARGETS["in_process_b256_examples_s"],
                  "stand_in_b1_p99_ms": remote[1]["p99_ms"] <= TARGETS["stand_in_b1_p99_ms"]}
        missed = [k for k, ok in checks.items() if not ok]
        print(f"{name}: {'all targets met' if not missed else 'missed ' + ', '.join(missed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
