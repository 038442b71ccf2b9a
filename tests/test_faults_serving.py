"""Server faults: bad versions, bad requests and internal errors (docs/reliability.md, "Server").

Everything is real: SavedModels on disk (the project's own export from one
pipeline run, or a tiny tf.Module where only the SavedModel format matters),
the stand-in server on a loopback port, and raw gRPC calls, so each test sees
the status code a caller sees. The server runs in the test process; its
watcher polls every 0.1 s.
"""

import contextlib
import logging
import os
import shutil
import time

import grpc
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)
from tensorflow_serving.config import model_server_config_pb2

from serving.client import examples_request as client_examples_request
from serving.local_server import LocalServer
from serving.servables import ModelVersions
from test_serving import MODEL, methods, pushed  # noqa: F401  (the pipeline-run fixture, reused)

pytestmark = pytest.mark.e2e
POLL_SECONDS = 0.1
CODES = {code.value[0]: code for code in grpc.StatusCode}


# --- SavedModels -------------------------------------------------------------------------------

class _Doubler(tf.Module):
    """y = 2x on a float vector `x`: the smallest servable with a variable."""

    def __init__(self):
        super().__init__()
        self.scale = tf.Variable(2.0)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x):
        return {"y": x * self.scale}


def export_tiny(path, signature: str = "serving_default"):
    """A tiny SavedModel at `path` whose one signature is named `signature`."""
    module = _Doubler()
    tf.saved_model.save(module, str(path), signatures={signature: module.serve})
    return path


def _raise_runtime_error(x):
    raise RuntimeError("the servable's own code failed")


class _RaisesInPython(tf.Module):
    """serving_default runs Python code that raises (a tf.py_function; its Python callback
    exists only in the process that exported it, hence the in-process server)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x):
        return {"y": tf.py_function(_raise_runtime_error, [x], tf.float32)}


class _ReadsAnAsset(tf.Module):
    """serving_default reads an asset file on every call; deleting the file breaks it."""

    def __init__(self, asset_path):
        super().__init__()
        self.asset = tf.saved_model.Asset(asset_path)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x):
        return {"y": x * tf.strings.to_number(tf.io.read_file(self.asset))}


def export_raising(path):
    module = _RaisesInPython()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def export_missing_asset(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    asset = path.parent / "scale.txt"       # not a number: the watcher ignores it
    asset.write_text("2")
    module = _ReadsAnAsset(str(asset))
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    os.remove(path / "assets" / "scale.txt")


def push(base, version: int, source, damage=None):
    """Pushes `source` as version `version` the safe way: written under a temporary
    name (which the server must ignore), damaged there if asked, then renamed."""
    staging = base / f".tmp-{version}"
    shutil.copytree(source, staging)
    if damage:
        damage(staging)
    os.rename(staging, base / str(version))


def truncate_saved_model(version_dir):
    pb = version_dir / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:pb.stat().st_size // 2])


def remove_variables(version_dir):
    shutil.rmtree(version_dir / "variables")


def truncate_variables_data(version_dir):
    (data,) = (version_dir / "variables").glob("variables.data-*")
    data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])


# --- the server and raw calls ------------------------------------------------------------------

@contextlib.contextmanager
def serving(base, name: str = MODEL, **options):
    """An in-process stand-in serving `base` as model `name`; yields its address."""
    config = model_server_config_pb2.ModelConfig(name=name, base_path=str(base))
    server = LocalServer([config], poll_seconds=POLL_SECONDS, **options).start()
    try:
        yield server.address
    finally:
        server.stop(grace=1)


def stubs(address):
    channel = grpc.insecure_channel(address)
    return (channel, prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel))


def model_status(address, name: str = MODEL) -> dict:
    """version -> (state name, error code, error message), from GetModelStatus."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    channel, _, models = stubs(address)
    with channel:
        response = models.GetModelStatus(request, timeout=10)
    states = get_model_status_pb2.ModelVersionStatus.State
    return {s.version: (states.Name(s.state), CODES[s.status.error_code],
                        s.status.error_message) for s in response.model_version_status}


def wait_for(condition, what: str, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_SECONDS)


def predict_request(inputs: dict, signature: str = "", name: str = MODEL):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    for key, proto in inputs.items():
        request.inputs[key].CopyFrom(proto)
    return request


def examples_request(kind, examples, signature: str):
    """A Classify or Regress request (kind: ClassificationRequest or RegressionRequest)."""
    return client_examples_request(kind, MODEL, signature, examples)


def call(address, method: str, request):
    """(status code, details, response) of one PredictionService call."""
    channel, predictions, _ = stubs(address)
    with channel:
        try:
            return grpc.StatusCode.OK, "", getattr(predictions, method)(request, timeout=60)
        except grpc.RpcError as error:
            return error.code(), error.details(), None


def answering_version(address, examples) -> int:
    """The version that answers a Predict without a version (the default policy)."""
    request = predict_request({"examples": tf.make_tensor_proto(list(examples[:2]))})
    code, details, response = call(address, "Predict", request)
    assert code == grpc.StatusCode.OK, details
    return response.model_spec.version.value


# --- bad versions ------------------------------------------------------------------------------

def test_a_corrupt_push_keeps_the_last_good_version_serving(pushed, tmp_path, caplog):  # noqa: F811
    """The project's export pushed again, damaged three ways; then version 4 fixed."""
    source, _, examples = pushed
    base = tmp_path / MODEL
    base.mkdir()
    push(base, 1, source / "1")
    damages = {2: truncate_saved_model, 3: remove_variables, 4: truncate_variables_data}
    expected = {2: grpc.StatusCode.DATA_LOSS, 3: grpc.StatusCode.NOT_FOUND,
                4: grpc.StatusCode.OUT_OF_RANGE}
    with serving(base) as address:
        wait_for(lambda: model_status(address).get(1, ("",))[0] == "AVAILABLE", "version 1")
        for version, damage in damages.items():
            push(base, version, source / "1", damage)
            wait_for(lambda: version in model_status(address), f"version {version} reported")
            state, code, message = model_status(address)[version]
            assert (state, code) == ("END", expected[version]), message
            assert message
            assert model_status(address)[1][0] == "AVAILABLE"
            assert answering_version(address, examples) == 1
        time.sleep(10 * POLL_SECONDS)          # many more polls of the same bad versions
        failures = [r.getMessage() for r in caplog.records
                    if r.levelno == logging.ERROR and "failed to load" in r.getMessage()]
        assert len(failures) == 3, failures    # logged once each, not once per poll
        shutil.rmtree(base / "4")
        push(base, 4, source / "1")            # the same version number, fixed
        wait_for(lambda: model_status(address).get(4, ("",))[0] == "AVAILABLE", "version 4")
        assert answering_version(address, examples) == 4
        states = model_status(address)
        assert 1 not in states                 # the policy (newest only) unloads version 1
        assert {v: s[0] for v, s in states.items()} == {2: "END", 3: "END", 4: "AVAILABLE"}


def test_a_version_without_the_default_signature_is_not_served(tmp_path):
    base = tmp_path / "tiny"
    base.mkdir()
    export_tiny(base / "1")
    tiny = predict_request({"x": tf.make_tensor_proto([1.0, 2.0])}, name="tiny")
    with serving(base, "tiny") as address:
        wait_for(lambda: 1 in model_status(address, "tiny"), "version 1")
        push(base, 2, export_tiny(tmp_path / "other", signature="other"))
        wait_for(lambda: 2 in model_status(address, "tiny"), "version 2 reported")
        assert model_status(address, "tiny") == {
            1: ("AVAILABLE", grpc.StatusCode.OK, ""),
            2: ("END", grpc.StatusCode.FAILED_PRECONDITION,
                'Serving signature key "serving_default" not found.')}
        code, _, response = call(address, "Predict", tiny)
        assert code == grpc.StatusCode.OK and response.model_spec.version.value == 1
        push(base, 3, export_tiny(tmp_path / "good"))       # a newer version number, good
        wait_for(lambda: model_status(address, "tiny").get(3, ("",))[0] == "AVAILABLE",
                 "version 3")
        code, _, response = call(address, "Predict", tiny)
        assert code == grpc.StatusCode.OK and response.model_spec.version.value == 3


def test_temporary_and_non_numeric_directories_are_ignored(tmp_path):
    """Complete SavedModels under names a push in progress or a person might leave."""
    base = tmp_path / "tiny"
    base.mkdir()
    export_tiny(base / "1")
    for name in (".tmp-3", "3.partial", "latest", "\u00b2"):   # "²" passes str.isdigit()
        export_tiny(base / name)
    with serving(base, "tiny") as address:
        time.sleep(10 * POLL_SECONDS)
        assert model_status(address, "tiny") == {1: ("AVAILABLE", grpc.StatusCode.OK, "")}
        push(base, 2, base / "1")           # the watcher is still polling
        wait_for(lambda: model_status(address, "tiny").get(2, ("",))[0] == "AVAILABLE",
                 "version 2")


def test_a_zero_padded_version_directory_is_served_by_its_number(tmp_path):
    """TF Serving reads "007" as version 7; the stand-in loads it from that directory."""
    base = tmp_path / "tiny"
    export_tiny(base / "007")
    model = ModelVersions(model_server_config_pb2.ModelConfig(name="tiny", base_path=str(base)))
    model.poll(settle=False)
    assert [s[:2] for s in model.states()] == [(7, "AVAILABLE")]


def test_a_version_is_loaded_once_its_files_stop_changing(tmp_path):
    """Without the atomic rename: the watcher waits while files change, retries a version
    that failed once its files change, and never reports a version half written."""
    base = tmp_path / "tiny"
    complete = export_tiny(tmp_path / "complete")
    export_tiny(base / "1")
    model = ModelVersions(model_server_config_pb2.ModelConfig(name="tiny", base_path=str(base)))
    model.poll()
    model.poll()
    assert [s[:2] for s in model.states()] == [(1, "AVAILABLE")]
    shutil.copytree(complete, base / "2")
    truncate_variables_data(base / "2")        # a copy in progress: the data file half there
    model.poll()                               # new files: seen, not loaded yet
    assert [s[:2] for s in model.states()] == [(1, "AVAILABLE")]
    data = next((base / "2" / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes() + b"\0")   # still growing
    model.poll()
    assert [s[:2] for s in model.states()] == [(1, "AVAILABLE")]
    model.poll()                               # unchanged for a poll: tried, and it fails
    assert [s[:2] for s in model.states()] == [(1, "AVAILABLE"), (2, "END")]
    assert model.get().version == 1
    shutil.copy(next((complete / "variables").glob("variables.data-*")), data)   # finished
    model.poll()
    model.poll()
    assert [s[:2] for s in model.states()] == [(2, "AVAILABLE")]
    assert model.get().version == 2


# --- bad requests ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(pushed, tmp_path_factory):  # noqa: F811
    """(address, examples, predict_raw's input dtypes): the project's export served by one
    stand-in for every bad-request case."""
    source, _, examples = pushed
    base = tmp_path_factory.mktemp("served") / MODEL
    shutil.copytree(source / "1", base / "1")
    raw = methods(base / "1").signature_def["predict_raw"].inputs
    dtypes = {k: tf.as_dtype(info.dtype).as_numpy_dtype for k, info in raw.items()}
    with serving(base) as address:
        wait_for(lambda: 1 in model_status(address), "version 1")
        yield address, examples, dtypes


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2), encoded by hand."""
    def varint(value):
        out = b""
        while value > 0x7F:
            out += bytes([value & 0x7F | 0x80])
            value >>= 7
        return out + bytes([value])
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def raw_call(address, method: str, payload: bytes):
    """(status code, details) of a call whose request bytes are sent as they are."""
    with grpc.insecure_channel(address) as channel:
        rpc = channel.unary_unary(f"/tensorflow.serving.PredictionService/{method}")
        try:
            rpc(payload, timeout=30)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as error:
            return error.code(), error.details()


def garbage_examples_request() -> bytes:
    """model_spec {name} and input.example_list.examples = one unparseable tf.Example."""
    spec = _field(1, MODEL.encode())
    return _field(1, spec) + _field(2, _field(1, _field(1, b"not a tf.Example")))


def bad_tensor_content():
    """predict_raw with item_price's tensor_content 6 bytes long for 2 floats."""
    proto = tf.make_tensor_proto(np.array([1.0, 2.0], np.float32))
    proto.tensor_content = proto.tensor_content[:6]
    return proto


STRINGS = tf.make_tensor_proto
INVALID = grpc.StatusCode.INVALID_ARGUMENT
CASES = {
    # case: (method, request builder from the examples and predict_raw's input dtypes,
    #        status code, fragment of the details)
    "wrong dtype": ("Predict", lambda e, raw: predict_request(
        {"examples": tf.make_tensor_proto([1.0, 2.0])}), INVALID, "dtype"),
    "wrong shape": ("Predict", lambda e, raw: predict_request(
        {"examples": STRINGS([list(e[:2])])}), INVALID, "shape"),
    "unknown input name": ("Predict", lambda e, raw: predict_request(
        {"rows": STRINGS(list(e[:1]))}), INVALID, "input tensor alias not found"),
    "no inputs": ("Predict", lambda e, raw: predict_request({}), INVALID,
                  "input size does not match signature: 0!=1"),
    "unknown signature (Predict)": ("Predict", lambda e, raw: predict_request(
        {"examples": STRINGS(list(e[:1]))}, "nope"), grpc.StatusCode.FAILED_PRECONDITION,
        'Serving signature key "nope" not found.'),
    "unknown signature (Classify)": ("Classify", lambda e, raw: examples_request(
        classification_pb2.ClassificationRequest, e[:1], "nope"), INVALID,
        "No signature was found with the name: nope"),
    "predict signature in Regress": ("Regress", lambda e, raw: examples_request(
        regression_pb2.RegressionRequest, e[:1], "serving_default"), INVALID,
        "Expected regression signature method_name to be tensorflow/serving/regress. "
        "Was: tensorflow/serving/predict"),
    "empty batch (Predict)": ("Predict", lambda e, raw: predict_request(
        {"examples": tf.make_tensor_proto([], tf.string)}), INVALID, "Input is empty"),
    "empty batch (Classify)": ("Classify", lambda e, raw: examples_request(
        classification_pb2.ClassificationRequest, [], "classify_click"), INVALID,
        "Input is empty."),
    "oversized batch": ("Predict", lambda e, raw: predict_request(
        {"examples": STRINGS((list(e) * 201)[:10_001])}), INVALID,
        "10001 rows, more than the maximum batch size 10000"),
    "garbage bytes as a tf.Example (Predict)": ("Predict", lambda e, raw: predict_request(
        {"examples": STRINGS([b"not a tf.Example"])}), INVALID, "Could not parse example input"),
    "mismatched tensor_content": ("Predict", lambda e, raw: predict_request(
        {**{k: STRINGS(np.array(["1", "2"]).astype(dtype)) for k, dtype in raw.items()},
         "item_price": bad_tensor_content()}, "predict_raw"), INVALID, "item_price"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_request_gets_its_status_code_and_the_next_one_is_served(served, case):
    address, examples, raw = served
    method, build, code, fragment = CASES[case]
    got, details, _ = call(address, method, build(examples, raw))
    assert (got, fragment in details) == (code, True), details
    assert answering_version(address, examples) == 1


@pytest.mark.parametrize("method", ["Classify", "Regress"])
def test_garbage_bytes_as_serialized_examples_are_invalid_argument(served, method):
    address, examples, _ = served
    code, details = raw_call(address, method, garbage_examples_request())
    assert code == INVALID, details
    assert answering_version(address, examples) == 1


def test_the_batch_limit_is_configurable_and_the_limit_itself_is_served(tmp_path):
    base = tmp_path / "tiny"
    export_tiny(base / "1")
    with serving(base, "tiny", max_batch_size=8) as address:
        wait_for(lambda: 1 in model_status(address, "tiny"), "version 1")
        at_limit = predict_request({"x": tf.make_tensor_proto(np.ones(8, np.float32))}, name="tiny")
        over = predict_request({"x": tf.make_tensor_proto(np.ones(9, np.float32))}, name="tiny")
        assert call(address, "Predict", at_limit)[0] == grpc.StatusCode.OK
        code, details, _ = call(address, "Predict", over)
        assert code == INVALID and "9 rows, more than the maximum batch size 8" in details


# --- faults inside the server ------------------------------------------------------------------

@pytest.mark.parametrize("export", [export_raising, export_missing_asset],
                         ids=["python RuntimeError", "missing asset file"])
def test_an_internal_fault_is_internal_and_the_server_keeps_serving(tmp_path, caplog, export):
    """Two models on one server: `broken` fails inside its own code, `tiny` is fine."""
    export(tmp_path / "broken" / "1")
    export_tiny(tmp_path / "tiny" / "1")
    configs = [model_server_config_pb2.ModelConfig(name=n, base_path=str(tmp_path / n))
               for n in ("broken", "tiny")]
    server = LocalServer(configs, poll_seconds=POLL_SECONDS).start()
    try:
        x = {"x": tf.make_tensor_proto([1.0, 2.0])}
        code, details, _ = call(server.address, "Predict", predict_request(x, name="broken"))
        assert code == grpc.StatusCode.INTERNAL, details
        assert "Traceback" not in details and "File " not in details and len(details) < 300
        assert any(r.exc_info for r in caplog.records if r.levelno == logging.ERROR)
        code, _, response = call(server.address, "Predict", predict_request(x, name="tiny"))
        assert code == grpc.StatusCode.OK
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), [2.0, 4.0])
        code, _, _ = call(server.address, "Predict", predict_request(x, name="broken"))
        assert code == grpc.StatusCode.INTERNAL          # the same fault, the same answer
    finally:
        server.stop(grace=1)


# --- values never seen in training ---------------------------------------------------------------

def test_categorical_values_never_seen_in_training_are_served(pushed, served):  # noqa: F811
    """Unseen strings and ids map to the out-of-vocabulary ids: finite predictions, and
    two unseen strings of a column with one OOV bucket get the same answer."""
    _, rows_csv, _ = pushed
    address, _, dtypes = served
    rows = pd.read_csv(rows_csv).head(4)

    def predict(**replaced):
        inputs = {name: tf.make_tensor_proto(
                      np.asarray(replaced.get(name, rows[name].to_numpy()), dtype=dtype)
                      if dtype != object else [str(v).encode() for v in replaced.get(name, rows[name])])
                  for name, dtype in dtypes.items()}
        code, details, response = call(address, "Predict", predict_request(inputs, "predict_raw"))
        assert code == grpc.StatusCode.OK, details
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    seen = predict()
    unseen_a = predict(device=["never-seen-a"] * 4, item_id=[10**12] * 4)
    unseen_b = predict(device=["never-seen-b"] * 4, item_id=[10**12] * 4)
    for key in seen:
        assert np.isfinite(unseen_a[key]).all() and unseen_a[key].shape == seen[key].shape, key
        np.testing.assert_array_equal(unseen_a[key], unseen_b[key], err_msg=key)
