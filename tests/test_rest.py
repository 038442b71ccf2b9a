"""TF Serving's REST API on the stand-in (serving/rest.py), over real HTTP on loopback.

The project's own export (from one pipeline run, the `pushed` fixture of
test_serving.py) is served by one in-process stand-in with gRPC and REST, so
every REST answer is compared with the gRPC answer to the same request: the
same numbers, and for a bad request the same message (and the HTTP status of
its gRPC code). Tiny tf.Module SavedModels cover formats the export does not
have (several inputs, string outputs, rank 2). After each bad request a good
one is served.
"""

import base64
import contextlib
import http.client
import json
import shutil
import signal
import socket
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, regression_pb2
from tensorflow_serving.config import model_server_config_pb2

from conftest import REPO
from serving.client import RestClient, ServingClient, ServingError, example_json
from serving.local_server import LocalServer, ModelService, PredictionService
from serving.rest import RestServer
from test_faults_serving import (POLL_SECONDS, call, examples_request, export_raising, export_tiny,
                                 predict_request, push, wait_for)
from test_serving import MODEL, free_port, pushed  # noqa: F401  (the pipeline-run fixture, reused)

pytestmark = pytest.mark.e2e
OUTPUTS = {"click_prob", "conversion_prob", "revenue_pred", "score"}


# --- HTTP --------------------------------------------------------------------------------------

def request(port: int, method: str, path: str, body=None, raw: bytes | None = None,
            headers: dict | None = None, connection: http.client.HTTPConnection | None = None):
    """(HTTP status, response headers, parsed JSON body) of one request to 127.0.0.1:port.

    `body` is sent as JSON, `raw` as it is; `connection` reuses a keep-alive connection.
    """
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    own = connection is None
    connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=data, headers=headers or {})
        response = connection.getresponse()
        payload = response.read()
        assert response.getheader("Content-Type") == "application/json"
        return response.status, dict(response.getheaders()), json.loads(payload)
    finally:
        if own:
            connection.close()


def raw_exchange(port: int, data: bytes, wait: float = 10) -> tuple[int, dict]:
    """Sends `data` on a fresh socket as it is; (HTTP status, JSON body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < \
                int(answer.split(b"Content-Length: ")[1].split(b"\r\n")[0]):
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def predict_path(name: str = MODEL, suffix: str = "") -> str:
    return f"/v1/models/{name}{suffix}:predict"


# --- the served export -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(pushed, tmp_path_factory):  # noqa: F811
    """(gRPC address, REST port, the rows' serialized examples, the server) for the export."""
    source, _, examples = pushed
    base = tmp_path_factory.mktemp("rest") / MODEL
    shutil.copytree(source / "1", base / "1")
    config = model_server_config_pb2.ModelConfig(name=MODEL, base_path=str(base))
    config.version_labels["stable"] = 1
    server = LocalServer([config], poll_seconds=POLL_SECONDS, rest_port=0).start()
    try:
        yield server.address, server.rest_port, examples, server
    finally:
        server.stop(grace=1)


def grpc_predict(address, examples, signature: str = "") -> dict:
    """{output: array} of a gRPC Predict of `examples` (serving_default's `examples`)."""
    request_ = predict_request({"examples": tf.make_tensor_proto(list(examples))}, signature)
    code, details, response = call(address, "Predict", request_)
    assert code == grpc.StatusCode.OK, details
    return {key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}


def assert_served(port: int, examples) -> None:
    """A good Predict over REST answers (after a bad request)."""
    status, _, answer = request(port, "POST", predict_path(), {"instances": [b64(examples[0])]})
    assert status == 200, answer
    assert set(answer["predictions"][0]) == OUTPUTS


def test_status_as_tf_serving_writes_it(served):
    _, port, _, _ = served
    available = {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    for path in (f"/v1/models/{MODEL}", f"/v1/models/{MODEL}/versions/1",
                 f"/v1/models/{MODEL}/labels/stable"):
        assert request(port, "GET", path)[::2] == (200, available), path
    assert request(port, "GET", f"/v1/models/{MODEL}/versions/2")[::2] == (
        404, {"error": f"Could not find version 2 of model {MODEL}"})
    assert request(port, "GET", f"/v1/models/{MODEL}/labels/canary")[::2] == (
        404, {"error": "Unrecognized servable version label: canary"})
    assert request(port, "GET", "/v1/models/other")[::2] == (
        404, {"error": "Servable not found for request: Latest(other)"})


def test_metadata_json_and_the_same_signatures_as_grpc(served):
    address, port, _, _ = served
    status, _, answer = request(port, "GET", f"/v1/models/{MODEL}/metadata")
    assert status == 200
    assert answer["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    assert list(answer["metadata"]) == ["signature_def"]
    signatures = answer["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "predict_raw", "evaluation", "classify_click",
                               "classify_conversion", "regress_revenue"}
    serving = signatures["serving_default"]
    assert serving["method_name"] == "tensorflow/serving/predict"
    assert {k: v for k, v in serving["inputs"]["examples"].items() if k != "name"} == {
        "dtype": "DT_STRING", "tensor_shape": {"dim": [{"size": "-1", "name": ""}],
                                               "unknown_rank": False}}
    assert set(serving["outputs"]) == OUTPUTS
    assert request(port, "GET", f"/v1/models/{MODEL}/versions/1/metadata")[2] == answer
    with ServingClient(address, MODEL) as grpc_client:
        assert RestClient(f"http://127.0.0.1:{port}", MODEL).metadata() == grpc_client.metadata()


def test_predict_with_b64_examples_equals_grpc_in_every_format(served):
    address, port, examples, _ = served
    expected = grpc_predict(address, examples)
    rows = [b64(e) for e in examples]
    formats = {  # body -> (response key, rows first or columns first)
        "bare instances": ({"instances": rows}, "predictions"),
        "named instances": ({"signature_name": "serving_default",
                             "instances": [{"examples": r} for r in rows]}, "predictions"),
        "named columns": ({"inputs": {"examples": rows}}, "outputs"),
        "bare columns": ({"inputs": rows}, "outputs"),
    }
    for case, (body, key) in formats.items():
        status, _, answer = request(port, "POST", predict_path(), body)
        assert (status, list(answer)) == (200, [key]), (case, answer)
        if key == "predictions":
            assert len(answer[key]) == len(examples)
            assert all(set(row) == OUTPUTS for row in answer[key])
            columns = {k: [row[k] for row in answer[key]] for k in OUTPUTS}
        else:
            columns = answer[key]
        assert set(columns) == OUTPUTS, case
        for name in OUTPUTS:   # JSON carries each float32 exactly
            np.testing.assert_array_equal(np.array(columns[name], np.float32), expected[name])
    for suffix in ("/versions/1", "/labels/stable"):
        status, _, answer = request(port, "POST", predict_path(suffix=suffix),
                                    {"instances": rows[:2]})
        assert status == 200 and len(answer["predictions"]) == 2, answer


def raw_features(examples, count: int) -> list[dict]:
    """{feature: JSON value} of the first `count` examples, as a REST caller writes rows."""
    rows = []
    for record in examples[:count]:
        features = tf.train.Example.FromString(record).features.feature
        row = {}
        for name, feature in features.items():
            kind = feature.WhichOneof("kind")
            value = getattr(feature, kind).value[0]
            row[name] = value.decode() if kind == "bytes_list" else value
        rows.append(row)
    return rows


def test_predict_raw_takes_json_feature_values(served):
    address, port, examples, _ = served
    expected = grpc_predict(address, examples[:10])
    status, _, answer = request(port, "POST", predict_path(), {
        "signature_name": "predict_raw", "instances": raw_features(examples, 10)})
    assert status == 200, answer
    for name in OUTPUTS:
        np.testing.assert_allclose([row[name] for row in answer["predictions"]], expected[name],
                                   rtol=1e-5, atol=1e-7)


def test_classify_and_regress_with_json_features_equal_grpc(served):
    address, port, examples, _ = served
    features = [example_json(e) for e in examples]
    assert all(isinstance(v[0], float) for f in features for k, v in f.items()
               if k == "item_price")
    code, details, classified = call(address, "Classify", examples_request(
        classification_pb2.ClassificationRequest, examples, "classify_click"))
    assert code == grpc.StatusCode.OK, details
    status, _, answer = request(port, "POST", f"/v1/models/{MODEL}:classify",
                                {"signature_name": "classify_click", "examples": features})
    assert status == 200 and list(answer) == ["result"], answer
    assert answer["result"] == [[[c.label, c.score] for c in row.classes]
                                for row in classified.result.classifications]
    assert [[pair[0] for pair in row] for row in answer["result"]] == [["0", "1"]] * len(examples)
    code, details, regressed = call(address, "Regress", examples_request(
        regression_pb2.RegressionRequest, examples, "regress_revenue"))
    assert code == grpc.StatusCode.OK, details
    status, _, answer = request(port, "POST", f"/v1/models/{MODEL}:regress",
                                {"signature_name": "regress_revenue", "examples": features})
    assert (status, answer) == (200, {"result": [r.value for r in regressed.result.regressions]})


def test_a_context_is_merged_into_every_example(served):
    address, port, examples, _ = served
    features = [example_json(e) for e in examples]
    device = features[0]["device"]
    same = [i for i, f in enumerate(features) if f["device"] == device]
    assert len(same) > 1
    body = {"signature_name": "regress_revenue", "context": {"device": device},
            "examples": [{k: v for k, v in features[i].items() if k != "device"} for i in same]}
    status, _, answer = request(port, "POST", f"/v1/models/{MODEL}:regress", body)
    assert status == 200, answer
    code, details, regressed = call(address, "Regress", examples_request(
        regression_pb2.RegressionRequest, [examples[i] for i in same], "regress_revenue"))
    assert code == grpc.StatusCode.OK, details
    assert answer == {"result": [r.value for r in regressed.result.regressions]}


def test_rest_client_returns_what_the_grpc_client_returns(served):
    address, port, examples, _ = served
    rest = RestClient(f"http://127.0.0.1:{port}", MODEL, batch_size=7)   # 50 rows: 8 requests
    with ServingClient(address, MODEL, batch_size=7) as grpc_client:
        expected, got = grpc_client.predict(examples), rest.predict(examples)
        assert set(got) == set(expected) == OUTPUTS
        for name in OUTPUTS:
            assert got[name].dtype == expected[name].dtype == np.float32
            np.testing.assert_array_equal(got[name], expected[name])
        assert set(rest.predict(examples[:3], output_filter=["score"])) == {"score"}
        assert rest.classify(examples, "classify_conversion") == \
            grpc_client.classify(examples, "classify_conversion")
        np.testing.assert_array_equal(rest.regress(examples, "regress_revenue"),
                                      grpc_client.regress(examples, "regress_revenue"))
        assert rest.status() == grpc_client.status() == [(1, "AVAILABLE")]
        assert rest.raw_feature_types() == grpc_client.raw_feature_types()
        assert rest.wait_until_available(5) == 1
        with pytest.raises(ServingError) as error:
            RestClient(f"http://127.0.0.1:{port}", "other").status()
        assert error.value.code == grpc.StatusCode.NOT_FOUND
        assert str(error.value) == (
            f"other at http://127.0.0.1:{port}: NOT_FOUND: Servable not found for request: "
            "Latest(other) (check the model name and version; the status command lists the "
            "loaded versions)")


def test_rest_client_retries_and_refused_connections_are_unavailable(served):
    _, _, examples, _ = served
    with pytest.raises(ServingError) as error:
        RestClient(f"http://127.0.0.1:{free_port()}", MODEL, retries=1, backoff=0.01).status()
    assert error.value.code == grpc.StatusCode.UNAVAILABLE


def test_cli_over_rest_prints_what_it_prints_over_grpc(pushed, served):  # noqa: F811
    _, rows, _ = pushed
    address, port, _, _ = served
    printed = []
    for where in (["--target", address], ["--rest", f"http://127.0.0.1:{port}"]):
        result = subprocess.run([sys.executable, "-m", "serving.client", *where, "--model-name",
                                 MODEL, "predict", "--csv", str(rows), "--batch-size", "16"],
                                cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        printed.append(result.stdout)
    assert printed[0] == printed[1]
    assert len(printed[1].splitlines()) == 51


# --- bad requests: the gRPC code's HTTP status and the gRPC message ------------------------------

def _grpc_twin(method, build):
    """A function (address, examples) -> (code, details) of the same request over gRPC."""
    def twin(address, examples):
        code, details, _ = call(address, method, build(examples))
        return code, details
    return twin


GARBAGE = b"not a tf.Example"
SAME_AS_GRPC = {
    # case: (path suffix or full path, JSON body from the examples, HTTP status, gRPC twin)
    "unknown model": ("/v1/models/other:predict", lambda e: {"instances": [b64(e[0])]}, 404,
                      _grpc_twin("Predict", lambda e: predict_request(
                          {"examples": tf.make_tensor_proto([e[0]])}, name="other"))),
    "unknown signature (Predict)": (
        predict_path(), lambda e: {"signature_name": "nope", "instances": [b64(e[0])]}, 400,
        _grpc_twin("Predict", lambda e: predict_request(
            {"examples": tf.make_tensor_proto([e[0]])}, "nope"))),
    "unknown signature (Classify)": (
        f"/v1/models/{MODEL}:classify",
        lambda e: {"signature_name": "nope", "examples": [example_json(e[0])]}, 400,
        _grpc_twin("Classify", lambda e: examples_request(
            classification_pb2.ClassificationRequest, e[:1], "nope"))),
    "predict signature in Regress": (
        f"/v1/models/{MODEL}:regress", lambda e: {"examples": [example_json(e[0])]}, 400,
        _grpc_twin("Regress", lambda e: examples_request(
            regression_pb2.RegressionRequest, e[:1], "serving_default"))),
    "unknown input name": (
        predict_path(), lambda e: {"instances": [{"rows": b64(e[0])}]}, 400,
        _grpc_twin("Predict", lambda e: predict_request({"rows": tf.make_tensor_proto([e[0]])}))),
    "no rows (Predict)": (
        predict_path(), lambda e: {"instances": []}, 400,
        _grpc_twin("Predict", lambda e: predict_request(
            {"examples": tf.make_tensor_proto([], tf.string)}))),
    "no rows (Classify)": (
        f"/v1/models/{MODEL}:classify",
        lambda e: {"signature_name": "classify_click", "examples": []}, 400,
        _grpc_twin("Classify", lambda e: examples_request(
            classification_pb2.ClassificationRequest, [], "classify_click"))),
    "oversized batch": (
        predict_path(), lambda e: {"instances": [b64(e[0])] * 10_001}, 400,
        _grpc_twin("Predict", lambda e: predict_request(
            {"examples": tf.make_tensor_proto([e[0]] * 10_001)}))),
    "bytes that are not a tf.Example": (
        predict_path(), lambda e: {"instances": [b64(GARBAGE)]}, 400,
        _grpc_twin("Predict", lambda e: predict_request(
            {"examples": tf.make_tensor_proto([GARBAGE])}))),
}


@pytest.mark.parametrize("case", list(SAME_AS_GRPC))
def test_a_bad_request_gets_the_grpc_message_and_the_next_one_is_served(served, case):
    address, port, examples, _ = served
    path, body, http_status, twin = SAME_AS_GRPC[case]
    code, details = twin(address, examples)
    assert code != grpc.StatusCode.OK
    status, _, answer = request(port, "POST", path, body(examples))
    assert (status, answer) == (http_status, {"error": details})
    assert_served(port, examples)


class Starts(str):
    """An expected error message known only by its start (the rest is Python's or TF's)."""


REST_ONLY = {
    # case: (path, raw body bytes, extra headers, HTTP status, the exact error or its start)
    "not JSON": (predict_path(), b"{instances: 1}", {}, 400,
                 "JSON Parse error: Expecting property name enclosed in double quotes: line 1 "
                 "column 2 (char 1)"),
    "not UTF-8": (predict_path(), b'{"instances": ["\xff"]}', {}, 400,
                  Starts("JSON Parse error: 'utf-8' codec can't decode byte 0xff")),
    "nested 100,000 deep": (predict_path(), b"[" * 100_000, {}, 400,
                            Starts("JSON Parse error: maximum recursion depth exceeded")),
    "a list, not an object": (predict_path(), b"[1, 2]", {}, 400,
                              "the request body must be a JSON object, not list"),
    "instances and inputs": (predict_path(), b'{"instances": [], "inputs": []}', {}, 400,
                             "the request needs exactly one of 'instances' (row format) or "
                             "'inputs' (columnar format)"),
    "neither instances nor inputs": (predict_path(), b'{"signature_name": ""}', {}, 400,
                                     "the request needs exactly one of 'instances' (row format) "
                                     "or 'inputs' (columnar format)"),
    "instances not a list": (predict_path(), b'{"instances": {"b64": ""}}', {}, 400,
                             "'instances' must be a list with one entry per row"),
    "a number for the string input": (predict_path(), b'{"instances": [1.5]}', {}, 400,
                                      "input 'examples' (string) takes strings or {\"b64\": "
                                      "...} objects; got 1.5"),
    "not base64": (predict_path(), b'{"instances": [{"b64": "%%%"}]}', {}, 400,
                   Starts('not valid base64 in a {"b64": ...} value: ')),
    "signature_name not a string": (predict_path(), b'{"signature_name": 1, "instances": []}',
                                    {}, 400, "'signature_name' must be a string"),
    "objects mixed with values": (predict_path(), b'{"instances": [{"examples": "a"}, "b"]}', {},
                                  400, "'instances' mixes objects with bare values"),
    "instances naming different inputs": (
        predict_path(), b'{"instances": [{"examples": "a"}, {"rows": "b"}]}', {}, 400,
        "instances[1] names inputs ['rows'], instances[0] names ['examples']; every instance "
        "must name the same inputs"),
    "examples not a list": (f"/v1/models/{MODEL}:classify", b'{"examples": {}}', {}, 400,
                            "the request needs 'examples', a list of objects of feature values"),
    "a feature mixing numbers and strings": (
        f"/v1/models/{MODEL}:regress", b'{"examples": [{"hour": [1, "a"]}]}', {}, 400,
        "feature 'hour' of examples[0] must be integers, numbers, or strings ({\"b64\": ...} for "
        "bytes), one kind per feature; got [1, \"a\"]"),
    "an empty feature list": (f"/v1/models/{MODEL}:regress", b'{"examples": [{"hour": []}]}', {},
                              400, "feature 'hour' of examples[0] is an empty list"),
    "a feature in context and example": (
        f"/v1/models/{MODEL}:regress",
        b'{"signature_name": "regress_revenue", "context": {"hour": 1}, "examples": [{"hour": 2}]}',
        {}, 400, "feature(s) ['hour'] are in both context and examples[0]"),
    "an integer for a float feature": (
        f"/v1/models/{MODEL}:regress",
        json.dumps({"signature_name": "regress_revenue", "examples": [{"item_price": 12}]}).encode(),
        {}, 400, "Name: <unknown>, Key: item_price, Index: 0.  Data types don't match. Data "
                 "type: int64 but expected type: float"),
    "an unknown verb": (f"/v1/models/{MODEL}:explain", b"{}", {}, 400,
                        f"Malformed request: POST /v1/models/{MODEL}:explain"),
    "a path outside the API": ("/v2/models/x:predict", b"{}", {}, 404,
                               "Not found: POST /v2/models/x:predict; TF Serving's REST API is "
                               "under /v1/models/NAME"),
    "a version beyond int64": (f"/v1/models/{MODEL}/versions/99999999999999999999:predict", b"{}",
                               {}, 400, "version 99999999999999999999 is not a 64-bit integer"),
    "a form-encoded body": (predict_path(), b"instances=1",
                            {"Content-Type": "application/x-www-form-urlencoded"}, 400,
                            "JSON Parse error: Expecting value: line 1 column 1 (char 0)"),
}


@pytest.mark.parametrize("case", list(REST_ONLY))
def test_a_malformed_rest_request_gets_a_json_error_and_the_next_one_is_served(served, case):
    _, port, examples, _ = served
    path, raw, headers, http_status, error = REST_ONLY[case]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    with contextlib.closing(connection):
        status, _, answer = request(port, "POST", path, raw=raw, headers=headers,
                                    connection=connection)
        assert (status, list(answer)) == (http_status, ["error"]), answer
        if isinstance(error, Starts):
            assert answer["error"].startswith(error), answer["error"]
        else:
            assert answer["error"] == error
        # The same keep-alive connection serves the next request.
        status, _, answer = request(port, "POST", predict_path(),
                                    {"instances": [b64(examples[0])]}, connection=connection)
        assert status == 200 and set(answer["predictions"][0]) == OUTPUTS


def test_a_json_body_is_read_whatever_its_content_type(served):
    """TF Serving ignores Content-Type; its own curl examples send curl's form type."""
    _, port, examples, _ = served
    body = json.dumps({"instances": [b64(examples[0])]}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "image/png"):
        status, _, answer = request(port, "POST", predict_path(), raw=body,
                                    headers={"Content-Type": content_type})
        assert status == 200 and set(answer["predictions"][0]) == OUTPUTS, content_type


def test_wrong_methods_are_405_with_allow(served):
    _, port, examples, _ = served
    cases = [("GET", predict_path(), "POST"), ("PUT", f"/v1/models/{MODEL}", "GET"),
             ("POST", f"/v1/models/{MODEL}/metadata", "GET"), ("DELETE", predict_path(), "POST")]
    for method, path, allowed in cases:
        status, headers, answer = request(port, method, path, raw=b"{}")
        assert (status, headers["Allow"]) == (405, allowed)
        assert answer == {"error": f"{method} is not allowed on {path}; use {allowed}"}
    assert_served(port, examples)


def test_http_level_refusals_close_the_connection_and_never_hang(served):
    _, port, examples, server = served
    path = predict_path().encode()
    no_length = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n{}"
    assert raw_exchange(port, no_length) == (411, {"error": "a POST needs a Content-Length header"})
    chunked = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    assert raw_exchange(port, chunked) == (411, {
        "error": "chunked request bodies are not supported; send Content-Length"})
    huge = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 300000000\r\n\r\n{"
    assert raw_exchange(port, huge) == (413, {
        "error": "the body has 300000000 bytes, more than the server's limit of 268435456"})
    bad_length = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{"
    assert raw_exchange(port, bad_length) == (400, {"error": "Content-Length '-5' is not a number"})
    status, answer = raw_exchange(port, b"NOT A REQUEST LINE AT ALL\r\n\r\n")
    assert status == 400 and answer["error"].startswith("Bad request version")
    status, answer = raw_exchange(port, b"BREW " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, answer) == (501, {"error": "Unsupported method ('BREW')"})
    # A client that stops sending mid-body: a server with a 1 s timeout on the same services.
    quick = RestServer(PredictionService(server.watcher), ModelService(server.watcher),
                       timeout=1.0).start()
    try:
        stalled = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"in"
        assert raw_exchange(quick.port, stalled) == (408, {
            "error": "the body ended after 4 of 100 bytes (or nothing came for 1 s)"})
        assert_served(quick.port, examples)
    finally:
        quick.stop(grace=1)
    assert_served(port, examples)


# --- formats on tiny SavedModels ---------------------------------------------------------------

class _Several(tf.Module):
    """Inputs x: float (batch,), m: float (batch, 2), s: string (batch,); outputs a float,
    a rank-2 float and the string input twice (one output name ending in _bytes)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x"),
                                  tf.TensorSpec([None, 2], tf.float32, name="m"),
                                  tf.TensorSpec([None], tf.string, name="s")])
    def serve(self, x, m, s):
        return {"y": x * 2.0, "m2": m * 2.0, "text": s, "raw_bytes": s}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """REST port of a stand-in serving `tiny` (y = 2x) and `several`, max batch size 8."""
    root = tmp_path_factory.mktemp("tiny-rest")
    export_tiny(root / "tiny" / "1")
    module = _Several()
    tf.saved_model.save(module, str(root / "several" / "1"),
                        signatures={"serving_default": module.serve})
    configs = [model_server_config_pb2.ModelConfig(name=n, base_path=str(root / n))
               for n in ("tiny", "several")]
    server = LocalServer(configs, poll_seconds=POLL_SECONDS, max_batch_size=8, rest_port=0).start()
    try:
        yield server.rest_port, root
    finally:
        server.stop(grace=1)


def test_one_input_one_output_values_are_bare(tiny):
    port, _ = tiny
    cases = [({"instances": [1.0, 2]}, {"predictions": [2.0, 4.0]}),
             ({"instances": [{"x": 3}]}, {"predictions": [6.0]}),
             ({"inputs": [1.5, -1]}, {"outputs": [3.0, -2.0]}),
             ({"inputs": {"x": [0.25]}}, {"outputs": [0.5]})]
    for body, expected in cases:
        assert request(port, "POST", predict_path("tiny"), body)[::2] == (200, expected), body


def test_several_inputs_and_outputs_strings_and_b64(tiny):
    port, _ = tiny
    latin = "é".encode("latin-1")             # not UTF-8: only b64 can carry it
    body = {"instances": [{"x": 1.0, "m": [1, 2], "s": "abc"},
                          {"x": 2.5, "m": [3, 4.5], "s": b64(latin)}]}
    status, _, answer = request(port, "POST", predict_path("several"), body)
    assert (status, answer) == (200, {"predictions": [
        {"y": 2.0, "m2": [2.0, 4.0], "text": "abc", "raw_bytes": b64(b"abc")},
        {"y": 5.0, "m2": [6.0, 9.0], "text": b64(latin), "raw_bytes": b64(latin)}]})
    columns = {"inputs": {"x": [1.0], "m": [[1, 2]], "s": [b64(b"abc")]}}
    assert request(port, "POST", predict_path("several"), columns)[::2] == (200, {"outputs": {
        "y": [2.0], "m2": [[2.0, 4.0]], "text": ["abc"], "raw_bytes": [b64(b"abc")]}})


@pytest.mark.parametrize("body, error", [
    ({"instances": [1.0]}, "the signature has 3 inputs (m, s, x); give each instance as an "
                           "object naming them"),
    ({"inputs": [1.0]}, "the signature has 3 inputs (m, s, x); give 'inputs' as an object "
                        "naming each"),
    ({"instances": [{"x": 1.0, "m": [1, 2]}]},
     "input size does not match signature: 2!=3. Inputs expected to be in the set {m,s,x}."),
    ({"instances": [{"x": 1.0, "m": [1, 2, 3], "s": "a"}]},
     "input 'm' has shape [1,3], which does not fit the signature's shape [?,2]"),
    ({"inputs": {"x": [1.0, 2.0], "m": [[1, 2], [3]], "s": ["a", "b"]}},
     "input 'm' is a ragged list; every row must have the same shape"),
    ({"inputs": {"x": [1.0], "m": [[1, 2]], "s": [["a"], "b"]}},
     "input 's' is a ragged list; every row must have the same shape"),
    ({"instances": [{"x": True, "m": [1, 2], "s": "a"}]},
     "input 'x' (float32) takes numbers; got true"),
    ({"instances": [{"x": 1.0, "m": [1, 2], "s": 5}]},
     "input 's' (string) takes strings or {\"b64\": ...} objects; got 5"),
])
def test_several_inputs_refused_with_the_reason(tiny, body, error):
    port, _ = tiny
    assert request(port, "POST", predict_path("several"), body)[::2] == (400, {"error": error})
    assert request(port, "POST", predict_path("tiny"), {"instances": [1.0]})[::2] == (
        200, {"predictions": [2.0]})


def test_the_servers_max_batch_size_holds_for_rest(tiny):
    port, _ = tiny
    assert request(port, "POST", predict_path("tiny"), {"instances": [1.0] * 8})[0] == 200
    assert request(port, "POST", predict_path("tiny"), {"inputs": {"x": [1.0] * 9}})[::2] == (
        400, {"error": "input 'x' has 9 rows, more than the maximum batch size 8 (the server's "
                       "--max-batch-size)"})


def test_a_failed_version_and_an_internal_fault_over_rest(tmp_path):
    export_tiny(tmp_path / "tiny" / "1")
    export_raising(tmp_path / "broken" / "1")
    configs = [model_server_config_pb2.ModelConfig(name=n, base_path=str(tmp_path / n))
               for n in ("tiny", "broken")]
    server = LocalServer(configs, poll_seconds=POLL_SECONDS, rest_port=0).start()
    port = server.rest_port
    try:
        push(tmp_path / "tiny", 2, export_tiny(tmp_path / "other", signature="other"))
        wait_for(lambda: len(request(port, "GET", "/v1/models/tiny")[2]
                             ["model_version_status"]) == 2, "version 2 reported")
        assert request(port, "GET", "/v1/models/tiny")[::2] == (200, {"model_version_status": [
            {"version": "1", "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}},
            {"version": "2", "state": "END", "status": {
                "error_code": "FAILED_PRECONDITION",
                "error_message": 'Serving signature key "serving_default" not found.'}}]})
        code, details, _ = call(server.address, "Predict", predict_request(
            {"x": tf.make_tensor_proto([1.0])}, name="broken"))
        assert code == grpc.StatusCode.INTERNAL
        body = {"instances": [1.0]}
        assert request(port, "POST", predict_path("broken"), body)[::2] == (
            500, {"error": details})
        assert request(port, "POST", predict_path("tiny"), body)[::2] == (
            200, {"predictions": [2.0]})
    finally:
        server.stop(grace=1)


# --- the command line ----------------------------------------------------------------------------

def start_cli(base, *options):
    """The stand-in as its own process serving `tiny` from `base` (not yet waited for)."""
    return subprocess.Popen(
        [sys.executable, "-m", "serving.local_server", "--model-name", "tiny", "--model-base-path",
         str(base), "--port", "0", *options], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def stop_cli(process) -> tuple[str, str]:
    """SIGTERM; (the rest of stdout, stderr). Read through the same buffered files as
    readline(), which may already hold later lines (communicate() would miss those)."""
    process.send_signal(signal.SIGTERM)
    out, err = process.stdout.read(), process.stderr.read()
    assert process.wait(60) == 0, err
    return out, err


def test_cli_rest_port_options(tiny):
    _, root = tiny
    process = start_cli(root / "tiny", "--rest-port", "0")
    try:
        assert process.stdout.readline().startswith("serving on 127.0.0.1:")
        rest_line = process.stdout.readline().strip()
        assert rest_line.startswith("REST API on http://127.0.0.1:")
        port = int(rest_line.rsplit(":", 1)[1])
        assert request(port, "POST", predict_path("tiny"), {"instances": [1.0]})[::2] == (
            200, {"predictions": [2.0]})
    finally:
        out, _ = stop_cli(process)
    assert out.strip().splitlines()[-1] == "stopped"
    quiet = start_cli(root / "tiny", "--no-rest")
    assert quiet.stdout.readline().startswith("serving on 127.0.0.1:")
    out, _ = stop_cli(quiet)
    assert "REST" not in out
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = str(taken.getsockname()[1])
        refused = start_cli(root / "tiny", "--rest-port", busy)
        _, err = refused.communicate(timeout=120)
        assert refused.returncode == 1
        assert err.strip().splitlines()[-1] == f"error: REST port {busy}: Address already in use"


def test_the_default_rest_port_left_off_when_taken(tiny, monkeypatch, caplog):
    """The default REST port held (here a free port this test holds, standing in for 8501,
    which other processes on the machine may use): gRPC serves, REST is off, one warning."""
    from serving import local_server

    _, root = tiny
    args = local_server.build_parser().parse_args(
        ["--model-name", "tiny", "--model-base-path", str(root / "tiny"), "--port", "0"])
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        monkeypatch.setattr(local_server, "DEFAULT_REST_PORT", holder.getsockname()[1])
        server = local_server.start_server(args, None)
        try:
            assert (server.rest, server.rest_port) == (None, None)
            with ServingClient(server.address, "tiny") as client:
                assert client.status() == [(1, "AVAILABLE")]
        finally:
            server.stop(grace=1)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"REST API off: port {local_server.DEFAULT_REST_PORT}: Address already in "
                        "use (give --rest-port 0 for any free port)"]
    server = local_server.start_server(args, None)       # the port free again: REST on it
    try:
        assert server.rest_port == local_server.DEFAULT_REST_PORT
        assert request(server.rest_port, "GET", "/v1/models/tiny")[0] == 200
    finally:
        server.stop(grace=1)
