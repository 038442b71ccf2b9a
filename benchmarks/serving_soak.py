"""Serving soak: many clients, valid and malformed requests, the server's memory over time.

The stand-in server (serving.local_server, its own process, so its resident
memory can be sampled and a crash is seen) serves the project's real export of
a model on a loopback port. `--clients` threads, each with its own gRPC
channel, then call it for `--seconds`: valid requests (Predict, Classify,
Regress with real tf.Examples of the eval split at varied batch sizes,
GetModelMetadata, GetModelStatus) mixed with malformed ones (`--bad-share` of
all requests, the malformed kinds taken in turn):

  wrong_dtype               Predict, a float tensor for the string input     INVALID_ARGUMENT
  wrong_shape               Predict, a rank-2 batch of examples              INVALID_ARGUMENT
  unknown_signature         Predict, signature "nope"                        FAILED_PRECONDITION
  unknown_signature_classify Classify, signature "nope"                      INVALID_ARGUMENT
  unknown_model             Predict for a model the server does not have     NOT_FOUND
  unknown_version           Predict pinned to version 999                    NOT_FOUND
  empty_batch               Predict with no rows                             INVALID_ARGUMENT
  oversized_batch           Predict, one row more than --max-batch-size      INVALID_ARGUMENT
  garbage_example           Predict, real examples with one that is no tf.Example  INVALID_ARGUMENT
  garbage_example_classify  Classify request bytes holding no tf.Example     INVALID_ARGUMENT
  mismatched_tensor_content predict_raw, a float tensor_content cut short    INVALID_ARGUMENT

(the codes of docs/serving.md, "When a version is bad, and which errors
callers see"). Every answer is checked: a valid request must succeed with
finite outputs of the right row count, a malformed one must get exactly its
code; anything else is an unexpected answer. Before the clients start, one
call of each batched kind at each batch size compiles the XLA clusters. The
server's RSS is sampled every second; start RSS is the first sample after the
warm-up (the first `--warmup` seconds of the clients' `--seconds`), end RSS
the last, max RSS the highest of the whole run (model loading included), and
the slope a least-squares fit (MB per minute) over the samples after the
warm-up.

    scripts/run python benchmarks/serving_soak.py [--seconds 180] [--clients 8] \
        [--bad-share 0.3] [--output soak.json]

The model is the shared_bottom model of one small synthetic pipeline run,
trained once into --work-dir (default pipelines/serving-soak) and reused by
later runs. Exits 1 when the server died, did not answer a final valid
request, any answer was unexpected, or its memory grew past the bounds below.

Batch sizes: the serving signatures run under XLA, which compiles once per
distinct batch size (docs/serving.md), and the stand-in has no server-side
batching to pad sizes to a few; every new size costs a compile and keeps about
1.5 MB of compiled code. The default sizes are therefore a fixed spread from
1 to 256 (each compiled before the measurement starts); `--batch-sizes 1-256`
sends every size, to see what the compile cache costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2,  # noqa: E402
                                     get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from serving.client import examples_request  # noqa: E402
from tfx_pipeline.cli import OPEN_QUALITY_GATES  # noqa: E402
from tfx_pipeline.machine import cpu_description  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "shared_bottom"
DEFAULT_BATCH_SIZES = (1, 2, 3, 7, 8, 16, 31, 32, 64, 100, 128, 255, 256)
MAX_BATCH_SIZE = 256          # the server's --max-batch-size: the largest valid batch is the limit
CALL_TIMEOUT = 30.0           # seconds; a call that takes longer is an unexpected answer
# Memory bounds after the warm-up (why these: docs/reliability.md, "Soak").
MAX_GROWTH_MB = 50.0          # end RSS over start RSS, and max RSS over start RSS
MAX_SLOPE_MB_PER_MIN = 5.0    # least-squares slope of RSS over the samples after warm-up
INVALID = grpc.StatusCode.INVALID_ARGUMENT
OK = grpc.StatusCode.OK


# --- the model and the server ------------------------------------------------------------------

def obtain_export(work: str) -> tuple[str, list[bytes]]:
    """(base path of the pushed shared_bottom versions, eval examples) of one small
    synthetic pipeline run in `work`, run only when `work` has no pushed version yet."""
    from serving.predict import resolve_version_dir
    from tfx_pipeline.results import imported_split_records

    root, base = os.path.join(work, "pipeline"), os.path.join(work, "pushed", MODEL)
    try:
        resolve_version_dir(base)
    except FileNotFoundError:
        subprocess.run([sys.executable, "-m", "tfx_pipeline", "run", "--dataset", "synthetic",
                        "--rows", "5000", "--train-steps", "20", "--eval-steps", "2",
                        *OPEN_QUALITY_GATES, "--pipeline-root", root,
                        "--serving-dir", os.path.join(work, "pushed")],
                       cwd=REPO, check=True, capture_output=True)
    return base, imported_split_records(root, "eval", 2 * MAX_BATCH_SIZE)


def start_server(base_path: str, name: str, log_path: str) -> tuple[subprocess.Popen, str]:
    """The stand-in as its own process on a free loopback port; returns it and its
    address once it has loaded (and warmed up) the model. Its log goes to `log_path`."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.local_server", "--model-name", name,
             "--model-base-path", os.path.abspath(base_path), "--port", "0",
             "--host", "127.0.0.1", "--max-batch-size", str(MAX_BATCH_SIZE)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    line = process.stdout.readline()     # "serving on HOST:PORT", or "" if it died
    if not line.startswith("serving on "):
        process.wait(30)
        raise RuntimeError(f"the server did not start (exit {process.returncode}); "
                           f"see {log_path}")
    return process, line.split()[-1]


def stop_server(process: subprocess.Popen, seconds: float = 30) -> bool:
    """SIGTERM, then wait; True when it stopped by itself (killed otherwise)."""
    if process.poll() is not None:
        return False
    process.terminate()
    try:
        process.wait(seconds)
        return process.returncode == 0
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False


# --- what the clients send ---------------------------------------------------------------------

@dataclasses.dataclass
class Model:
    """What requests are built from: the served model's name, version and signatures,
    and real serialized examples."""

    name: str
    version: int
    examples: list[bytes]
    outputs: list[str]                  # serving_default's output names
    classify: list[str]                 # classify_* signature names
    regress: list[str]                  # regress_* signature names
    raw_dtypes: dict[str, np.dtype]     # predict_raw's inputs

    def batch(self, rng: random.Random, rows: int) -> list[bytes]:
        """`rows` consecutive examples from a random place (repeating when needed)."""
        start = rng.randrange(len(self.examples))
        return [self.examples[(start + i) % len(self.examples)] for i in range(rows)]


def describe_model(address: str, name: str, examples: list[bytes]) -> Model:
    """A Model from the server's own GetModelMetadata and GetModelStatus answers."""
    with grpc.insecure_channel(address) as channel:
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            status_request(name), timeout=CALL_TIMEOUT)
        metadata = prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata(
            metadata_request(name), timeout=CALL_TIMEOUT)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(signatures)
    defs = signatures.signature_def
    return Model(name, max(s.version for s in status.model_version_status), examples,
                 sorted(defs["serving_default"].outputs),
                 sorted(k for k in defs if k.startswith("classify_")),
                 sorted(k for k in defs if k.startswith("regress_")),
                 {k: tf.as_dtype(v.dtype).as_numpy_dtype
                  for k, v in defs["predict_raw"].inputs.items()})


def predict_request(name: str, inputs: dict, signature: str = "",
                    version: int | None = None) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    for key, proto in inputs.items():
        request.inputs[key].CopyFrom(proto)
    return request


def metadata_request(name: str) -> get_model_metadata_pb2.GetModelMetadataRequest:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = name
    return request


def status_request(name: str) -> get_model_status_pb2.GetModelStatusRequest:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    return request


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2), encoded by hand."""
    def varint(value: int) -> bytes:
        out = b""
        while value > 0x7F:
            out += bytes([value & 0x7F | 0x80])
            value >>= 7
        return out + bytes([value])
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def garbage_classify_bytes(name: str, signature: str) -> bytes:
    """ClassificationRequest bytes whose one example is not a tf.Example: model_spec
    {name, signature_name}, input.example_list.examples = b"not a tf.Example"."""
    spec = _field(1, name.encode()) + _field(3, signature.encode())
    return _field(1, spec) + _field(2, _field(1, _field(1, b"not a tf.Example")))


def mismatched_raw_inputs(model: Model) -> dict:
    """predict_raw inputs of 2 rows, item_price's (or the first float input's)
    tensor_content cut to 6 bytes."""
    inputs = {k: tf.make_tensor_proto(np.array(["1", "2"]).astype(dtype))
              for k, dtype in model.raw_dtypes.items()}
    floats = [k for k, d in model.raw_dtypes.items() if d == np.float32]
    key = "item_price" if "item_price" in floats else floats[0]
    proto = tf.make_tensor_proto(np.array([1.0, 2.0], np.float32))
    proto.tensor_content = proto.tensor_content[:6]
    inputs[key] = proto
    return inputs


def with_garbage_row(examples: list[bytes], rng: random.Random) -> list[bytes]:
    rows = list(examples)
    rows[rng.randrange(len(rows))] = b"not a tf.Example"
    return rows


# Malformed kind -> (method, request builder (model, rng, rows) -> request, expected code).
MALFORMED = {
    "wrong_dtype": ("Predict", lambda m, rng, n: predict_request(
        m.name, {"examples": tf.make_tensor_proto(np.ones(n, np.float32))}), INVALID),
    "wrong_shape": ("Predict", lambda m, rng, n: predict_request(
        m.name, {"examples": tf.make_tensor_proto([m.batch(rng, n)])}), INVALID),
    "unknown_signature": ("Predict", lambda m, rng, n: predict_request(
        m.name, {"examples": tf.make_tensor_proto(m.batch(rng, n))}, "nope"),
        grpc.StatusCode.FAILED_PRECONDITION),
    "unknown_signature_classify": ("Classify", lambda m, rng, n: examples_request(
        classification_pb2.ClassificationRequest, m.name, "nope", m.batch(rng, n)), INVALID),
    "unknown_model": ("Predict", lambda m, rng, n: predict_request(
        "no_such_model", {"examples": tf.make_tensor_proto(m.batch(rng, n))}),
        grpc.StatusCode.NOT_FOUND),
    "unknown_version": ("Predict", lambda m, rng, n: predict_request(
        m.name, {"examples": tf.make_tensor_proto(m.batch(rng, n))}, version=999),
        grpc.StatusCode.NOT_FOUND),
    "empty_batch": ("Predict", lambda m, rng, n: predict_request(
        m.name, {"examples": tf.make_tensor_proto([], tf.string)}), INVALID),
    "oversized_batch": ("Predict", lambda m, rng, n: predict_request(
        m.name, {"examples": tf.make_tensor_proto(m.batch(rng, MAX_BATCH_SIZE + 1))}), INVALID),
    "garbage_example": ("Predict", lambda m, rng, n: predict_request(
        m.name, {"examples": tf.make_tensor_proto(with_garbage_row(m.batch(rng, n), rng))}),
        INVALID),
    "garbage_example_classify": ("Classify raw", lambda m, rng, n: garbage_classify_bytes(
        m.name, rng.choice(m.classify)), INVALID),
    "mismatched_tensor_content": ("Predict", lambda m, rng, n: predict_request(
        m.name, mismatched_raw_inputs(m), "predict_raw"), INVALID),
}


def finite_rows(values, rows: int, what: str) -> str | None:
    """None when `values` is `rows` finite numbers, else what is wrong."""
    values = np.asarray(values)
    if values.shape[:1] != (rows,):
        return f"{what}: shape {values.shape}, expected {rows} rows"
    if not np.all(np.isfinite(values)):
        return f"{what}: not finite"
    return None


def check_predict(model: Model, response, rows: int) -> str | None:
    if sorted(response.outputs) != model.outputs:
        return f"outputs {sorted(response.outputs)}, expected {model.outputs}"
    for key in model.outputs:
        problem = finite_rows(tf.make_ndarray(response.outputs[key]), rows, key)
        if problem:
            return problem
    return None


def check_classify(model: Model, response, rows: int) -> str | None:
    results = response.result.classifications
    scores = [[c.score for c in r.classes] for r in results]
    if any(len(s) != 2 for s in scores):
        return "a classification without exactly 2 classes"
    problem = finite_rows(scores, rows, "scores")
    if problem is None and not np.allclose(np.sum(scores, axis=1), 1.0, atol=1e-4):
        problem = "scores do not sum to 1"
    return problem


def check_regress(model: Model, response, rows: int) -> str | None:
    return finite_rows([r.value for r in response.result.regressions], rows, "outputs")


def check_metadata(model: Model, response, rows: int) -> str | None:
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    if "serving_default" not in signatures.signature_def:
        return "no serving_default in the metadata"
    if response.model_spec.version.value != model.version:
        return f"metadata of version {response.model_spec.version.value}"
    return None


def check_status(model: Model, response, rows: int) -> str | None:
    states = [(s.version, s.state, s.status.error_code) for s in response.model_version_status]
    if states != [(model.version, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)]:
        return f"status {states}"
    return None


# Valid kind -> (method, request builder (model, rng, rows) -> request, check, batched).
VALID = {
    "predict": ("Predict", lambda m, rng, n: predict_request(
        m.name, {"examples": tf.make_tensor_proto(m.batch(rng, n))}), check_predict, True),
    "classify": ("Classify", lambda m, rng, n: examples_request(
        classification_pb2.ClassificationRequest, m.name, rng.choice(m.classify),
        m.batch(rng, n)), check_classify, True),
    "regress": ("Regress", lambda m, rng, n: examples_request(
        regression_pb2.RegressionRequest, m.name, rng.choice(m.regress), m.batch(rng, n)),
        check_regress, True),
    "metadata": ("GetModelMetadata", lambda m, rng, n: metadata_request(m.name),
                 check_metadata, False),
    "status": ("GetModelStatus", lambda m, rng, n: status_request(m.name), check_status, False),
}


# --- calling -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Outcome:
    """One call: its kind, the status code it got, its latency, and what was
    unexpected about the answer (None when nothing)."""

    kind: str
    code: str
    seconds: float
    problem: str | None


class Client:
    """One gRPC channel and the methods the soak calls on it."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.max_send_message_length", 64 * 2**20),
            ("grpc.max_receive_message_length", 64 * 2**20)])
        predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.rpcs = {
            "Predict": predictions.Predict, "Classify": predictions.Classify,
            "Regress": predictions.Regress, "GetModelMetadata": predictions.GetModelMetadata,
            "GetModelStatus": model_service_pb2_grpc.ModelServiceStub(self.channel).GetModelStatus,
            # request bytes sent as they are (no serializer): a request no typed message can hold
            "Classify raw": self.channel.unary_unary(
                "/tensorflow.serving.PredictionService/Classify",
                response_deserializer=classification_pb2.ClassificationResponse.FromString)}

    def call(self, method: str, request) -> tuple[grpc.StatusCode, str, object, float]:
        """(status code, details, response or None, seconds) of one call."""
        started = time.perf_counter()
        try:
            response = self.rpcs[method](request, timeout=CALL_TIMEOUT)
            return OK, "", response, time.perf_counter() - started
        except grpc.RpcError as error:
            return error.code(), error.details() or "", None, time.perf_counter() - started

    def close(self) -> None:
        self.channel.close()


def valid_call(client: Client, model: Model, kind: str, rng: random.Random, rows: int) -> Outcome:
    """A valid request of `kind`; unexpected unless it succeeds and its answer checks."""
    method, build, check, _ = VALID[kind]
    code, details, response, seconds = client.call(method, build(model, rng, rows))
    problem = (f"{code.name}: {details}" if code != OK else check(model, response, rows))
    return Outcome(kind, code.name, seconds, problem)


def malformed_call(client: Client, model: Model, kind: str, rng: random.Random,
                   rows: int) -> Outcome:
    """A malformed request of `kind`; unexpected unless it gets exactly its code."""
    method, build, expected = MALFORMED[kind]
    code, details, _, seconds = client.call(method, build(model, rng, rows))
    problem = None if code == expected else f"{code.name} (expected {expected.name}): {details}"
    return Outcome(kind, code.name, seconds, problem)


def prewarm(address: str, model: Model, batch_sizes: list[int]) -> list[Outcome]:
    """One call of each batched valid kind at each batch size (and each classify and
    regress signature): the XLA compiles happen here, before anything is measured."""
    client, rng, outcomes = Client(address), random.Random(0), []
    try:
        for rows in batch_sizes:
            outcomes.append(valid_call(client, model, "predict", rng, rows))
            for signature in model.classify + model.regress:
                kind = "classify" if signature.startswith("classify_") else "regress"
                method, _, check, _ = VALID[kind]
                request = examples_request(
                    classification_pb2.ClassificationRequest if kind == "classify"
                    else regression_pb2.RegressionRequest, model.name, signature,
                    model.batch(rng, rows))
                code, details, response, seconds = client.call(method, request)
                problem = f"{code.name}: {details}" if code != OK else check(model, response, rows)
                outcomes.append(Outcome(kind, code.name, seconds, problem))
    finally:
        client.close()
    return outcomes


def client_loop(address: str, model: Model, index: int, deadline: float, bad_share: float,
                batch_sizes: list[int], seed: int) -> list[Outcome]:
    """One client until `deadline`: a malformed request with probability `bad_share`
    (the kinds in turn, starting at a different one per client), otherwise a valid
    kind at random, each at a random batch size from `batch_sizes`."""
    client, rng = Client(address), random.Random(seed * 1000 + index)
    bad_kinds, turn, outcomes = list(MALFORMED), index, []
    try:
        while time.monotonic() < deadline:
            rows = rng.choice(batch_sizes)
            if rng.random() < bad_share:
                kind, turn = bad_kinds[turn % len(bad_kinds)], turn + 1
                outcomes.append(malformed_call(client, model, kind, rng, rows))
            else:
                outcomes.append(valid_call(client, model, rng.choice(list(VALID)), rng, rows))
    finally:
        client.close()
    return outcomes


def run_clients(address: str, model: Model, clients: int, seconds: float, bad_share: float,
                batch_sizes: list[int], seed: int) -> tuple[list[Outcome], float]:
    """`clients` threads for `seconds`; (every outcome, wall seconds)."""
    results: list[list[Outcome]] = [[] for _ in range(clients)]
    deadline = time.monotonic() + seconds

    def work(index: int):
        results[index] = client_loop(address, model, index, deadline, bad_share,
                                     batch_sizes, seed)

    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 2 * CALL_TIMEOUT + 60)
    return [o for r in results for o in r], time.monotonic() - started


# --- memory ------------------------------------------------------------------------------------

class RssSampler(threading.Thread):
    """Samples a process's resident memory every `interval` seconds: (monotonic time, bytes)."""

    def __init__(self, pid: int, interval: float = 1.0):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            try:
                self.samples.append((time.monotonic(), self.process.memory_info().rss))
            except psutil.Error:
                return                                  # the process is gone
            self.stopped.wait(self.interval)

    def stop(self) -> list[tuple[float, int]]:
        self.stopped.set()
        self.join(5)
        return self.samples


def memory_summary(samples: list[tuple[float, int]], after: float) -> dict:
    """Start (first sample at or after `after`), end, max RSS in MB and the least-squares
    slope in MB per minute over the samples from `after` on."""
    kept = [(t, rss / 2**20) for t, rss in samples if t >= after]
    if len(kept) < 2:
        return {"samples": len(kept)}
    minutes = np.array([(t - kept[0][0]) / 60 for t, _ in kept])
    mb = np.array([m for _, m in kept])
    return {"samples": len(kept), "start_mb": round(mb[0], 1), "end_mb": round(mb[-1], 1),
            "max_mb": round(max(m for _, m in samples) / 2**20, 1),
            "max_after_warmup_mb": round(mb.max(), 1),
            "slope_mb_per_min": round(float(np.polyfit(minutes, mb, 1)[0]), 2)}


def memory_failures(memory: dict) -> list[str]:
    """The memory bounds that were crossed (MAX_GROWTH_MB, MAX_SLOPE_MB_PER_MIN)."""
    if "start_mb" not in memory:
        return [f"too few RSS samples after the warm-up ({memory['samples']})"]
    failures = []
    for key in ("end_mb", "max_after_warmup_mb"):
        if memory[key] - memory["start_mb"] > MAX_GROWTH_MB:
            failures.append(f"RSS grew {memory[key] - memory['start_mb']:.1f} MB after the "
                            f"warm-up ({key}; bound {MAX_GROWTH_MB:g} MB)")
    if memory["slope_mb_per_min"] > MAX_SLOPE_MB_PER_MIN:
        failures.append(f"RSS slope {memory['slope_mb_per_min']} MB/min "
                        f"(bound {MAX_SLOPE_MB_PER_MIN:g} MB/min)")
    return failures


# --- the soak ----------------------------------------------------------------------------------

def per_kind(outcomes: list[Outcome]) -> dict:
    """kind -> count, answers by status code, p50/p99 latency (ms), unexpected answers
    and the first few of their descriptions."""
    table = {}
    for kind in list(VALID) + list(MALFORMED):
        mine = [o for o in outcomes if o.kind == kind]
        codes: dict[str, int] = {}
        for o in mine:
            codes[o.code] = codes.get(o.code, 0) + 1
        ms = np.array([o.seconds for o in mine]) * 1000
        problems = [o.problem for o in mine if o.problem]
        table[kind] = {
            "expected": "OK" if kind in VALID else MALFORMED[kind][2].name,
            "count": len(mine), "codes": codes,
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(mine) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(mine) else None,
            "unexpected": len(problems), "examples": problems[:3]}
    return table


def final_check(address: str, model: Model) -> str | None:
    """None when a last valid Predict (one row) is answered correctly, else what went wrong."""
    client = Client(address)
    try:
        return valid_call(client, model, "predict", random.Random(1), 1).problem
    finally:
        client.close()


def soak(base_path: str, name: str, examples: list[bytes], seconds: float = 180,
         clients: int = 8, bad_share: float = 0.3, warmup: float = 10,
         batch_sizes=DEFAULT_BATCH_SIZES, log_path: str = "serving-soak-server.log",
         seed: int = 0) -> dict:
    """Starts the server on `base_path` as model `name`, pre-warms it, runs the clients
    for `seconds` (the first `warmup` of them not counted in the memory figures), checks
    that it is alive and answers, stops it; returns every figure and `failures`."""
    process, address = start_server(base_path, name, log_path)
    sampler = RssSampler(process.pid)
    try:
        sampler.start()
        model = describe_model(address, name, examples)
        warm = prewarm(address, model, list(batch_sizes))
        started = time.monotonic()
        outcomes, wall = run_clients(address, model, clients, seconds, bad_share,
                                     list(batch_sizes), seed)
        alive = process.poll() is None
        final = final_check(address, model) if alive else "the server process is gone"
    finally:
        samples = sampler.stop()
        returncode_before_stop = process.poll()
        stopped = stop_server(process)
    memory = memory_summary(samples, started + warmup)
    kinds = per_kind(outcomes)
    unexpected = sum(k["unexpected"] for k in kinds.values())
    prewarm_unexpected = [o.problem for o in warm if o.problem]
    failures = []
    if not alive:
        failures.append(f"the server died during the soak (exit code {returncode_before_stop})")
    elif final:
        failures.append(f"the final valid request failed: {final}")
    if unexpected or prewarm_unexpected:
        failures.append(f"{unexpected + len(prewarm_unexpected)} unexpected answer(s)")
    failures += memory_failures(memory)
    return {"cpu": cpu_description(), "tensorflow": tf.__version__, "model": name,
            "version": model.version, "seconds": seconds, "warmup_seconds": warmup,
            "clients": clients, "bad_share": bad_share, "batch_sizes": list(batch_sizes),
            "max_batch_size": MAX_BATCH_SIZE, "requests": len(outcomes),
            "requests_per_s": round(len(outcomes) / wall, 1),
            "prewarm_calls": len(warm), "prewarm_unexpected": prewarm_unexpected[:3],
            "unexpected": unexpected, "server_alive": alive, "final_request": final or "OK",
            "server_stopped_cleanly": stopped, "memory": memory,
            "bounds": {"max_growth_mb": MAX_GROWTH_MB,
                       "max_slope_mb_per_min": MAX_SLOPE_MB_PER_MIN},
            "kinds": kinds, "rss_samples_mb": [round(rss / 2**20, 1) for _, rss in samples],
            "failures": failures}


# --- the command line --------------------------------------------------------------------------

def print_report(result: dict) -> None:
    """A compact table per request kind, then the run's totals, memory and verdict."""
    print(f"# serving soak ({result['cpu']}, TF {result['tensorflow']}; stand-in over loopback "
          f"gRPC; {result['clients']} clients, {result['seconds']:g} s, "
          f"{result['bad_share']:.0%} malformed)")
    print("| kind | expected | count | answers | p50 ms | p99 ms | unexpected |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind, k in result["kinds"].items():
        answers = ", ".join(f"{code} {n}" for code, n in sorted(k["codes"].items())) or "-"
        p50 = "-" if k["p50_ms"] is None else f"{k['p50_ms']:.2f}"
        p99 = "-" if k["p99_ms"] is None else f"{k['p99_ms']:.2f}"
        print(f"| {kind} | {k['expected']} | {k['count']:,} | {answers} | {p50} | {p99} | "
              f"{k['unexpected']} |")
    memory = result["memory"]
    print(f"\nrequests: {result['requests']:,} ({result['requests_per_s']:,.1f}/s); "
          f"unexpected answers: {result['unexpected']}; server alive: {result['server_alive']}; "
          f"final request: {result['final_request']}")
    if "start_mb" in memory:
        print(f"server RSS: start {memory['start_mb']:.1f} MB (after "
              f"{result['warmup_seconds']:g} s warm-up), end {memory['end_mb']:.1f}, "
              f"max {memory['max_mb']:.1f}; slope {memory['slope_mb_per_min']:+.2f} MB/min "
              f"over {memory['samples']} samples "
              f"(bounds: growth <= {MAX_GROWTH_MB:g} MB, slope <= {MAX_SLOPE_MB_PER_MIN:g} MB/min)")
    for kind, k in result["kinds"].items():
        for example in k["examples"]:
            print(f"unexpected {kind}: {example}")
    print("PASS" if not result["failures"] else "FAIL: " + "; ".join(result["failures"]))


def parse_batch_sizes(text: str) -> list[int]:
    """'1,8,256' or '1-256' (every size in the range) -> sizes, each 1..MAX_BATCH_SIZE."""
    if "-" in text:
        low, high = (int(x) for x in text.split("-"))
        sizes = list(range(low, high + 1))
    else:
        sizes = [int(x) for x in text.split(",")]
    if not sizes or min(sizes) < 1 or max(sizes) > MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"batch sizes must be 1..{MAX_BATCH_SIZE}")
    return sizes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180, help="how long the clients run")
    parser.add_argument("--clients", type=int, default=8,
                        help="concurrent clients, one gRPC channel each")
    parser.add_argument("--bad-share", type=float, default=0.3,
                        help="share of malformed requests (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=10,
                        help="seconds of traffic before the memory figures start")
    parser.add_argument("--batch-sizes", type=parse_batch_sizes,
                        default=list(DEFAULT_BATCH_SIZES),
                        help="comma list or LOW-HIGH (default: a spread from 1 to 256)")
    parser.add_argument("--work-dir", default=os.path.join(REPO, "pipelines", "serving-soak"),
                        help="the pipeline run and its pushed model, made once and reused")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="write every figure as JSON here")
    args = parser.parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    base, examples = obtain_export(args.work_dir)
    result = soak(base, MODEL, examples, args.seconds, args.clients, args.bad_share,
                  args.warmup, args.batch_sizes, os.path.join(args.work_dir, "server.log"),
                  args.seed)
    print_report(result)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
