"""Serving: the exported signatures, warmup, and real gRPC on loopback through the stand-in.

One pipeline run (synthetic funnel) provides the pushed SavedModel; the stand-in
server runs as its own process, as users start it.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from conftest import REPO
from serving import warmup
from serving.client import ServingClient, ServingError, examples_from_csv
from transform.datasets import synthetic

pytestmark = pytest.mark.e2e
MODEL = "funnel"


@pytest.fixture(scope="module")
def pushed(pipeline_export, tmp_path_factory):
    """(base path with one version, rows CSV, serialized examples of those rows)."""
    root = tmp_path_factory.mktemp("serving")
    base = root / "models" / MODEL
    shutil.copytree(pipeline_export, base / "1")
    rows = root / "rows.csv"
    synthetic.generate(synthetic.FunnelConfig(rows=50, sample_seed=11)).to_csv(rows, index=False)
    loaded = tf.saved_model.load(str(base / "1"))
    types = {name: {tf.string: "string", tf.int64: "int64", tf.float32: "float"}[spec.dtype]
             for name, spec in loaded.signatures["predict_raw"].structured_input_signature[1].items()}
    return base, rows, examples_from_csv(str(rows), types)


def in_process(base, examples, signature="serving_default", key="examples"):
    loaded = tf.saved_model.load(str(base / "1"))
    outputs = loaded.signatures[signature](**{key: tf.constant(list(examples))})
    return {k: v.numpy() for k, v in outputs.items()}


def methods(version_dir):
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    return saved_model.meta_graphs[0]


def test_signatures_and_their_method_names(pushed):
    base, _, _ = pushed
    graph = methods(base / "1")
    found = {name: s.method_name for name, s in graph.signature_def.items()
             if not name.startswith("__")}
    assert found == {
        "serving_default": "tensorflow/serving/predict",
        "predict_raw": "tensorflow/serving/predict",
        "evaluation": "tensorflow/serving/predict",
        "classify_click": "tensorflow/serving/classify",
        "classify_conversion": "tensorflow/serving/classify",
        "regress_revenue": "tensorflow/serving/regress"}
    serving = graph.signature_def["serving_default"]
    assert list(serving.inputs) == ["examples"]
    assert set(serving.outputs) == {"click_prob", "conversion_prob", "revenue_pred", "score"}
    assert set(graph.signature_def["classify_click"].outputs) == {"scores", "classes"}
    assert set(graph.signature_def["regress_revenue"].outputs) == {"outputs"}
    assert set(graph.signature_def["predict_raw"].inputs) == {
        "user_segment", "user_activity", "item_id", "item_category", "item_price", "position",
        "device", "hour"}


def test_the_exported_graph_is_inference_only(pushed):
    base, _, _ = pushed
    graph = methods(base / "1")
    ops = {node.op for node in graph.graph_def.node}
    for function in graph.graph_def.library.function:
        ops |= {node.op for node in function.node_def}
    assert not {op for op in ops if op.startswith(("ResourceApply", "Apply", "AssignAdd"))}, ops
    names = [n.lower() for n, _ in tf.train.list_variables(str(base / "1" / "variables" / "variables"))]
    assert any(n.startswith("model_variables/") for n in names), names
    assert not [n for n in names if "optimizer" in n or "adam" in n or "iteration" in n], names


def test_raw_classify_and_regress_signatures_agree_with_serving_default(pushed):
    base, rows, examples = pushed
    expected = in_process(base, examples)
    loaded = tf.saved_model.load(str(base / "1"))
    raw_inputs = {}
    for name, spec in loaded.signatures["predict_raw"].structured_input_signature[1].items():
        features = [tf.train.Example.FromString(e).features.feature[name] for e in examples]
        values = [getattr(f, f.WhichOneof("kind")).value[0] for f in features]
        raw_inputs[name] = tf.constant(values, dtype=spec.dtype)
    raw = {k: v.numpy() for k, v in loaded.signatures["predict_raw"](**raw_inputs).items()}
    for key in expected:
        np.testing.assert_allclose(raw[key], expected[key], rtol=1e-5, atol=1e-7)
    scores = in_process(base, examples, "classify_click", "inputs")["scores"]
    np.testing.assert_allclose(scores[:, 1], expected["click_prob"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5, atol=1e-7)
    regressed = in_process(base, examples, "regress_revenue", "inputs")["outputs"]
    np.testing.assert_allclose(regressed, expected["revenue_pred"], rtol=1e-5, atol=1e-7)


def test_warmup_requests_come_from_eval_data_and_replay(pushed):
    base, _, _ = pushed
    logs = warmup.read_warmup(str(base / "1"))
    assert 0 < len(logs) <= 1000
    predicts = [l.predict_log.request for l in logs if l.HasField("predict_log")]
    assert [len(tf.make_ndarray(r.inputs["examples"])) for r in predicts] == [1, 8, 16, 32, 64, 128, 256]
    assert {r.model_spec.signature_name for r in predicts} == {"serving_default"}
    classified = {l.classify_log.request.model_spec.signature_name for l in logs
                  if l.HasField("classify_log")}
    assert classified == {"classify_click", "classify_conversion"}
    regressed = [l.regress_log.request for l in logs if l.HasField("regress_log")]
    assert [r.model_spec.signature_name for r in regressed] == ["regress_revenue"]
    # Real examples with every raw feature, and labels (from the eval split).
    example = tf.train.Example.FromString(tf.make_ndarray(predicts[0].inputs["examples"])[0])
    assert {"device", "item_id", "click", "revenue"} <= set(example.features.feature)
    outputs = in_process(base, tf.make_ndarray(predicts[-1].inputs["examples"]))
    assert outputs["click_prob"].shape == (256,)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(pushed):
    """The stand-in as a subprocess, polling its base path every 0.2 s."""
    base, _, _ = pushed
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.local_server", "--model-name", MODEL, "--model-base-path",
         str(base), "--port", str(port), "--file-system-poll-wait-seconds", "0.2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = ServingClient(f"127.0.0.1:{port}", MODEL, timeout=10, retries=20, backoff=0.2)
    client.wait_until_available(120)
    yield process, f"127.0.0.1:{port}"
    client.close()
    if process.poll() is None:
        process.kill()


def test_grpc_predictions_equal_the_in_process_model(pushed, server):
    base, _, examples = pushed
    _, address = server
    expected = in_process(base, examples)
    with ServingClient(address, MODEL, batch_size=7) as client:   # 50 rows -> 8 requests
        served = client.predict(examples)
        assert set(served) == set(expected)
        for key in expected:
            np.testing.assert_allclose(served[key], expected[key], rtol=1e-5, atol=1e-7)
        classes = client.classify(examples[:3], "classify_conversion").classifications
        assert [c.classes[1].score for c in classes] == pytest.approx(
            expected["conversion_prob"][:3].tolist(), rel=1e-6)
        np.testing.assert_allclose(client.regress(examples, "regress_revenue"),
                                   expected["revenue_pred"], rtol=1e-5, atol=1e-7)
        assert set(client.metadata()) >= {"serving_default", "predict_raw", "classify_click"}
        assert client.status() == [(1, "AVAILABLE")]


def test_concurrent_requests_all_get_their_own_answers(pushed, server):
    base, _, examples = pushed
    _, address = server
    expected = in_process(base, examples)["score"]
    failures = []

    def worker(offset):
        with ServingClient(address, MODEL) as client:
            for round_ in range(15):
                start = (offset + round_) % 40
                got = client.predict(examples[start:start + 10])["score"]
                if not np.allclose(got, expected[start:start + 10], rtol=1e-5, atol=1e-7):
                    failures.append((offset, round_))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def rejected(address, input_key: str, value: bytes) -> grpc.RpcError:
    """The error of a raw Predict call with one input tensor `input_key` = [value]."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs[input_key].CopyFrom(tf.make_tensor_proto([value]))
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as error:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, 10)
    return error.value


def test_malformed_requests_get_invalid_argument_with_the_reason(server):
    _, address = server
    garbage = rejected(address, "examples", b"not a tf.Example")
    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Could not parse example input" in garbage.details()
    wrong_key = rejected(address, "rows", b"")
    assert wrong_key.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert wrong_key.details() == ("input tensor alias not found in signature: rows. "
                                   "Inputs expected to be in the set {examples}.")


def test_unknown_model_version_or_signature(pushed, server):
    _, _, examples = pushed
    _, address = server
    with pytest.raises(ServingError) as error:
        ServingClient(address, "no_such_model").predict(examples[:1])
    assert error.value.code == grpc.StatusCode.NOT_FOUND
    assert "Servable not found for request: Latest(no_such_model)" in str(error.value)
    with pytest.raises(ServingError) as error:
        ServingClient(address, MODEL, version=999).predict(examples[:1])
    assert error.value.code == grpc.StatusCode.NOT_FOUND
    assert f"Specific({MODEL}, 999)" in str(error.value)
    with pytest.raises(ServingError) as error:
        ServingClient(address, MODEL).predict(examples[:1], signature="nope")
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_cli_predict_and_errors(pushed, server):
    base, rows, examples = pushed
    _, address = server
    result = subprocess.run([sys.executable, "-m", "serving.client", "--target", address,
                             "--model-name", MODEL, "predict", "--csv", str(rows),
                             "--batch-size", "16"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "line,click_prob,conversion_prob,revenue_pred,score"
    assert len(lines) == 51
    click = np.array([float(l.split(",")[1]) for l in lines[1:]])
    np.testing.assert_allclose(click, in_process(base, examples)["click_prob"], rtol=1e-5)
    bad = subprocess.run([sys.executable, "-m", "serving.client", "--target", address,
                          "--model-name", "other", "status"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "error: other at 127.0.0.1:") and "NOT_FOUND" in bad.stderr


def test_a_newly_pushed_version_is_served_without_restart(pushed, server):
    """Copied as TFX's Pusher does: saved_model.pb last. The old version is unloaded."""
    base, _, examples = pushed
    _, address = server
    staging = base / "2"
    shutil.copytree(base / "1", staging, ignore=shutil.ignore_patterns("saved_model.pb"))
    with ServingClient(address, MODEL) as client:
        time.sleep(0.6)    # several polls see the incomplete version and leave it alone
        assert client.status() == [(1, "AVAILABLE")]
        shutil.copy(base / "1" / "saved_model.pb", staging / "saved_model.pb")
        deadline = time.monotonic() + 60
        while client.status() != [(2, "AVAILABLE")]:
            assert time.monotonic() < deadline, client.status()
            time.sleep(0.2)
        pinned = ServingClient(address, MODEL, version=2)
        assert pinned.predict(examples[:2])["score"].shape == (2,)
        with pytest.raises(ServingError) as error:
            ServingClient(address, MODEL, version=1).predict(examples[:1])
        assert error.value.code == grpc.StatusCode.NOT_FOUND


def test_client_retries_until_the_server_comes_up(pushed):
    """UNAVAILABLE is retried with backoff; the server starts 1 s after the first attempt."""
    from tensorflow_serving.config import model_server_config_pb2

    from serving.local_server import LocalServer

    base, _, examples = pushed
    port = free_port()
    config = model_server_config_pb2.ModelConfig(name=MODEL, base_path=str(base))
    starter = threading.Timer(1.0, lambda: started.append(LocalServer([config], port).start()))
    started = []
    starter.start()
    try:
        client = ServingClient(f"127.0.0.1:{port}", MODEL, timeout=5, retries=8, backoff=0.2)
        assert client.predict(examples[:3])["score"].shape == (3,)
    finally:
        starter.join()
        for running in started:
            running.stop()


def self_signed(tmp_path):
    """A key and certificate for 127.0.0.1, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_file, cert_file = tmp_path / "server.key", tmp_path / "server.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_file, cert_file


def test_tls_channel(pushed, tmp_path):
    from tensorflow_serving.config import model_server_config_pb2

    from serving.local_server import LocalServer

    base, _, examples = pushed
    key_file, cert_file = self_signed(tmp_path)
    config = model_server_config_pb2.ModelConfig(name=MODEL, base_path=str(base))
    server = LocalServer([config], tls=(key_file.read_bytes(), cert_file.read_bytes())).start()
    try:
        with ServingClient(server.address, MODEL, tls_ca=str(cert_file)) as client:
            assert client.predict(examples[:4])["score"].shape == (4,)
        with pytest.raises(ServingError) as error:   # a plain-text client cannot talk to it
            ServingClient(server.address, MODEL, retries=0, timeout=2).status()
        assert error.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_sigterm_stops_the_server_cleanly(server):
    process, address = server
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert output.strip().splitlines()[-1] == "stopped"
    assert f"serving on {address}" in output
    with pytest.raises(ServingError) as error:
        ServingClient(address, MODEL, retries=0, timeout=2).status()
    assert error.value.code == grpc.StatusCode.UNAVAILABLE
