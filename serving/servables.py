"""Loaded model versions for the local stand-in server, kept current as TF Serving does.

TF Serving watches each model's base path, where every version is a numeric
sub-directory holding a SavedModel, and loads the versions its version policy
selects (by default the newest one). `ModelVersions` does the same for one
model: `poll()` finds new versions, loads them (replaying the model's warmup
requests, as TF Serving does, before the version counts as AVAILABLE), swaps
them in, and unloads versions the policy no longer wants. A version whose
SavedModel is still being written (no saved_model.pb yet, which TFX's Pusher
copies last) is left for the next poll. Requests get a reference to a loaded
version and keep it for the whole call, so swaps never break a call in flight.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.config import model_server_config_pb2

log = logging.getLogger(__name__)


class ServableNotFound(LookupError):
    """No loaded version answers the request (gRPC NOT_FOUND)."""


@dataclasses.dataclass
class LoadedVersion:
    """One loaded SavedModel version.

    Attributes:
      signature_defs: signature name -> SignatureDef proto (inputs, outputs,
        method name), as GetModelMetadata returns them.
      functions: signature name -> callable concrete function.
    """

    version: int
    path: str
    signature_defs: dict
    functions: dict
    model: object   # the loaded object; holds the variables the functions use


def numeric_versions(base_path: str) -> list[int]:
    """Versions under `base_path` whose SavedModel is complete (saved_model.pb present)."""
    if not tf.io.gfile.isdir(base_path):
        return []
    found = []
    for entry in tf.io.gfile.listdir(base_path):
        name = entry.rstrip("/")
        if name.isdigit() and tf.io.gfile.exists(os.path.join(base_path, name, "saved_model.pb")):
            found.append(int(name))
    return sorted(found)


def wanted_versions(available: list[int], policy) -> list[int]:
    """The versions a ModelVersionPolicy selects; the default policy is the newest one."""
    kind = policy.WhichOneof("policy_choice") if policy is not None else None
    if kind == "all":
        return list(available)
    if kind == "specific":
        return [v for v in available if v in set(policy.specific.versions)]
    count = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
    return available[-count:]


def load_version(path: str, version: int) -> LoadedVersion:
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(path, "saved_model.pb"), "rb") as handle:
        saved_model.ParseFromString(handle.read())
    signature_defs = {name: definition for name, definition
                      in saved_model.meta_graphs[0].signature_def.items()
                      if not name.startswith("__")}
    model = tf.saved_model.load(path)
    functions = {name: model.signatures[name] for name in signature_defs}
    return LoadedVersion(version, path, signature_defs, functions, model)


class ModelVersions:
    """The loaded versions of one model, following its base path."""

    def __init__(self, config: model_server_config_pb2.ModelConfig, warmup=None):
        """`warmup(loaded)` replays the version's warmup requests; it raises to refuse a version."""
        self.name = config.name
        self.base_path = config.base_path
        self.policy = config.model_version_policy if config.HasField("model_version_policy") \
            else None
        self.labels = dict(config.version_labels)
        self._warmup = warmup
        self._lock = threading.Lock()
        self._loaded: dict[int, LoadedVersion] = {}
        self._failed: dict[int, str] = {}     # version -> load error, kept until it changes

    def poll(self) -> None:
        wanted = wanted_versions(numeric_versions(self.base_path), self.policy)
        for version in wanted:
            if version in self._loaded or version in self._failed:
                continue
            path = os.path.join(self.base_path, str(version))
            try:
                loaded = load_version(path, version)
                if self._warmup:
                    self._warmup(loaded)
            except Exception as error:  # a bad version must not take the server down
                log.error("model %s version %d failed to load: %s", self.name, version, error)
                self._failed[version] = f"{type(error).__name__}: {error}"
                continue
            with self._lock:
                self._loaded[version] = loaded
            log.info("model %s version %d is AVAILABLE", self.name, version)
        with self._lock:
            for version in [v for v in self._loaded if v not in wanted]:
                del self._loaded[version]
                log.info("model %s version %d unloaded", self.name, version)

    def get(self, version: int | None = None, label: str | None = None) -> LoadedVersion:
        """The newest loaded version, or a specific one by number or label."""
        if label:
            if label not in self.labels:
                raise ServableNotFound(f"Unrecognized servable version label: {label}")
            version = self.labels[label]
        with self._lock:
            if version is None and self._loaded:
                return self._loaded[max(self._loaded)]
            if version in self._loaded:
                return self._loaded[version]
        wanted = f"Specific({self.name}, {version})" if version is not None \
            else f"Latest({self.name})"
        raise ServableNotFound(f"Servable not found for request: {wanted}")

    def states(self) -> list[tuple[int, str, str]]:
        """(version, state, error message) for each version known to this model."""
        with self._lock:
            loaded = sorted(self._loaded)
        failed = [(v, "END", message) for v, message in sorted(self._failed.items())]
        return [(v, "AVAILABLE", "") for v in loaded] + failed


class Watcher:
    """Polls every model's base path on a background thread."""

    def __init__(self, models: list[ModelVersions], poll_seconds: float):
        self.models = {m.name: m for m in models}
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)

    def poll_once(self) -> None:
        for model in self.models.values():
            model.poll()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            started = time.monotonic()
            self.poll_once()
            log.debug("polled base paths in %.3f s", time.monotonic() - started)

    def start(self) -> None:
        self.poll_once()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def model(self, name: str) -> ModelVersions:
        if name not in self.models:
            raise ServableNotFound(f"Servable not found for request: Latest({name})")
        return self.models[name]
