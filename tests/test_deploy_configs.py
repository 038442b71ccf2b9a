"""The TF Serving deployment files parse with TF Serving's config messages and agree with each other."""

import http.server
import json
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from tensorflow_serving.config import model_server_config_pb2

from serving import config_protos
from serving.warmup import PREDICT_BATCH_SIZES

DEPLOY = Path(__file__).resolve().parent.parent / "serving" / "deploy"


@pytest.fixture(scope="module")
def models():
    config = config_protos.parse_text(str(DEPLOY / "models.config"),
                                      model_server_config_pb2.ModelServerConfig)
    return list(config.model_config_list.config)


def test_models_config(models):
    assert [m.name for m in models] == ["shared_bottom", "htlnet"]
    for model in models:
        assert model.base_path == f"/models/{model.name}"
        assert model.model_platform == "tensorflow"
    assert [m.model_version_policy.latest.num_versions for m in models] == [1, 2]


def test_the_stand_in_reads_the_same_models_config(models):
    from serving.local_server import build_parser, model_configs

    args = build_parser().parse_args(["--model-config-file", str(DEPLOY / "models.config")])
    assert model_configs(args) == models


def test_batching_parameters():
    batching = config_protos.parse_text(str(DEPLOY / "batching_parameters.txt"),
                                        config_protos.BatchingParameters)
    allowed = list(batching.allowed_batch_sizes)
    assert allowed == sorted(allowed) and allowed[-1] == batching.max_batch_size.value == 256
    assert batching.batch_timeout_micros.value == 2000
    assert batching.num_batch_threads.value == 4
    assert batching.max_enqueued_batches.value == 100
    # Every padded batch shape is warmed up before the version serves.
    assert set(allowed) <= set(PREDICT_BATCH_SIZES)


def test_an_unknown_batching_field_is_refused(tmp_path):
    bad = tmp_path / "batching.txt"
    bad.write_text("max_batch_size { value: 8 }\nmax_batch_sise { value: 8 }\n")
    with pytest.raises(ValueError, match=r"batching.txt: 2:1 : .*max_batch_sise"):
        config_protos.parse_text(str(bad), config_protos.BatchingParameters)


def test_monitoring_config_matches_the_scrape_annotation():
    monitoring = config_protos.parse_text(str(DEPLOY / "monitoring.config"),
                                          config_protos.MonitoringConfig)
    assert monitoring.prometheus_config.enable
    deployment = yaml.safe_load((DEPLOY / "deployment.yaml").read_text())
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == monitoring.prometheus_config.path


def config_files_in(flags):
    """{flag: file name} for flags that point into /config/."""
    return {f.split("=")[0]: f.split("=")[1].removeprefix("/config/")
            for f in flags if "=/config/" in f}


def test_compose_and_deployment_run_the_same_server(models):
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["tf-serving"]
    deployment = yaml.safe_load((DEPLOY / "deployment.yaml").read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert compose["command"] == container["args"]
    files = config_files_in(container["args"])
    assert set(files) == {"--model_config_file", "--batching_parameters_file",
                          "--monitoring_config_file"}
    assert all((DEPLOY / name).exists() for name in files.values())
    assert container["image"].endswith("-gpu") and "-gpu}" in compose["image"]
    # GPUs: one per pod, the NVIDIA runtime in compose.
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    device = compose["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    # Readiness waits for every configured model.
    names = [m.name for m in models]
    assert container["readinessProbe"]["exec"]["command"] == [
        "bash", "/config/model_ready.sh", *names]
    assert compose["healthcheck"]["test"] == ["CMD", "bash", "/config/model_ready.sh", *names]


def test_kustomization_service_and_config_map_fit_together():
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    deployment = yaml.safe_load((DEPLOY / "deployment.yaml").read_text())
    service = yaml.safe_load((DEPLOY / "service.yaml").read_text())
    generator = kustomization["configMapGenerator"][0]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == generator["name"]
    assert set(generator["files"]) == {"models.config", "batching_parameters.txt",
                                       "monitoring.config", "model_ready.sh"}
    assert set(kustomization["resources"]) == {"deployment.yaml", "service.yaml"}
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == ports


class _ModelStatus(http.server.BaseHTTPRequestHandler):
    """Answers GET /v1/models/<name> with TF Serving's REST status body."""

    states = {}

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if name not in self.states:
            body = {"error": f"Servable not found for request: Latest({name})"}
            code = 404
        else:
            body = {"model_version_status": [{"version": "3", "state": self.states[name],
                                              "status": {"error_code": "OK",
                                                         "error_message": ""}}]}
            code = 200
        payload = json.dumps(body, indent=1).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("states, ready", [
    ({"shared_bottom": "AVAILABLE", "htlnet": "AVAILABLE"}, True),
    ({"shared_bottom": "AVAILABLE", "htlnet": "LOADING"}, False),
    ({"shared_bottom": "AVAILABLE"}, False),
])
def test_readiness_script(states, ready):
    _ModelStatus.states = states
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ModelStatus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = subprocess.run(["bash", str(DEPLOY / "model_ready.sh"), "shared_bottom", "htlnet"],
                                env={"REST_PORT": str(server.server_port), "PATH": "/usr/bin:/bin"},
                                capture_output=True, text=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) == ready, result.stderr
