"""Loaded model versions for the local stand-in server, kept current as TF Serving does.

TF Serving watches each model's base path, where every version is a numeric
sub-directory holding a SavedModel, and loads the versions its version policy
selects (by default the newest one). `ModelVersions` does the same for one
model: `poll()` finds new versions, loads them (replaying the model's warmup
requests, as TF Serving does, before the version counts as AVAILABLE), swaps
them in, and unloads versions the policy no longer wants. Requests get a
reference to a loaded version and keep it for the whole call, so swaps never
break a call in flight.

A push in progress is never loaded half-way: only directories named by ASCII
digits count (`.tmp-3` or `3.partial` are ignored, so a pusher that writes
under a temporary name and renames is safe), a version needs its
saved_model.pb (TFX's Pusher copies it last), and its files must be the same
at two polls in a row. A version that fails to load is reported (state END,
with its error code and message), logged once, and left alone until its
files change; the policy then picks among the other versions, so the last
good one keeps serving.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

import tensorflow as tf
from google.protobuf import message
from tensorflow.core.protobuf import error_codes_pb2, saved_model_pb2
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


@dataclasses.dataclass(frozen=True)
class LoadFailure:
    """Why a version did not load, and what its files looked like then.

    Attributes:
      code: a tensorflow.error.Code, as GetModelStatus reports it.
      message: the error, for GetModelStatus and the log.
      fingerprint: `files_fingerprint` of the version directory it failed on.
    """

    code: int
    message: str
    fingerprint: tuple


def is_version_name(name: str) -> bool:
    """True for a version directory's name: ASCII digits only. A temporary name
    (`.tmp-3`, `3.partial`) or a Unicode digit ("²", which str.isdigit() accepts and
    int() refuses) is not a version."""
    return name.isascii() and name.isdigit()


def version_directories(base_path: str, complete_only: bool = True) -> list[tuple[int, str]]:
    """(version, directory name) of the versions under `base_path` (local or any file
    system tf.io.gfile reads), by version; with `complete_only`, only those whose
    saved_model.pb is present. "007" is version 7, as for TF Serving."""
    if not tf.io.gfile.isdir(base_path):
        return []
    found = []
    for entry in tf.io.gfile.listdir(base_path):
        name = entry.rstrip("/")
        if is_version_name(name) and (not complete_only or tf.io.gfile.exists(
                os.path.join(base_path, name, "saved_model.pb"))):
            found.append((int(name), name))
    return sorted(found)



def files_fingerprint(path: str) -> tuple:
    """(relative name, size, modification time) of every file under `path`, sorted."""
    entries = []
    for directory, _, files in tf.io.gfile.walk(path):
        for name in files:
            full = os.path.join(directory, name)
            try:
                stat = tf.io.gfile.stat(full)
            except tf.errors.NotFoundError:       # removed while we looked: still changing
                continue
            entries.append((os.path.relpath(full, path), stat.length, stat.mtime_nsec))
    return tuple(sorted(entries))


# Python exceptions TensorFlow raises for these TF status codes while loading.
_PYTHON_ERROR_CODES = ((FileNotFoundError, tf.errors.NOT_FOUND),
                       (IndexError, tf.errors.OUT_OF_RANGE))


def load_error_code(error: Exception) -> int:
    """The tensorflow.error.Code to report for a failed load (UNKNOWN when there is none)."""
    code = getattr(error, "error_code", None)     # tf.errors.OpError, the server's errors
    if isinstance(code, int) and code in error_codes_pb2.Code.values():
        return code
    for kind, mapped in _PYTHON_ERROR_CODES:
        if isinstance(error, kind):
            return mapped
    return tf.errors.UNKNOWN


def wanted_versions(available: list[int], policy) -> list[int]:
    """The versions a ModelVersionPolicy selects; the default policy is the newest one."""
    kind = policy.WhichOneof("policy_choice") if policy is not None else None
    if kind == "all":
        return list(available)
    if kind == "specific":
        return [v for v in available if v in set(policy.specific.versions)]
    count = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
    return available[-count:]


def read_saved_model(path: str) -> saved_model_pb2.SavedModel:
    """The SavedModel proto; DataLossError with TF's own message when it does not parse."""
    pb_path = os.path.join(path, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(pb_path, "rb") as handle:
        try:
            saved_model.ParseFromString(handle.read())
        except message.DecodeError:
            raise tf.errors.DataLossError(None, None,
                                          f"Can't parse {pb_path} as binary proto") from None
    return saved_model


def load_version(path: str, version: int) -> LoadedVersion:
    saved_model = read_saved_model(path)
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
        self._failed: dict[int, LoadFailure] = {}   # kept until the version's files change
        self._seen: dict[int, tuple] = {}           # files at the last poll, of unloaded versions
        self._directories: dict[int, str] = {}      # version -> directory name ("007" is 7)

    def _path(self, version: int) -> str:
        return os.path.join(self.base_path, self._directories.get(version, str(version)))

    def poll(self, settle: bool = True) -> None:
        """Loads the versions the policy wants among the good ones, then unloads the rest.

        `settle=False` loads new versions without waiting for a second look at their
        files (at start-up, as TF Serving loads what is there before it serves).
        """
        self._directories = dict(version_directories(self.base_path))
        on_disk = sorted(self._directories)
        self._forget_missing(on_disk)
        wanted = wanted_versions([v for v in on_disk if not self._still_failed(v)], self.policy)
        for version in wanted:
            if version not in self._loaded and (self._settled(version) or not settle):
                self._load(version)
        self._unload_unwanted(wanted)

    def _forget_missing(self, on_disk: list[int]) -> None:
        """Drops what is remembered of versions whose directories are gone."""
        for known in (self._failed, self._seen):
            for version in [v for v in known if v not in on_disk]:
                del known[version]

    def _still_failed(self, version: int) -> bool:
        """True for a version that failed to load and whose files have not changed since."""
        failure = self._failed.get(version)
        if failure is None:
            return False
        if files_fingerprint(self._path(version)) == failure.fingerprint:
            return True
        log.info("model %s version %d changed since it failed; loading it again",
                 self.name, version)
        del self._failed[version]
        return False

    def _settled(self, version: int) -> bool:
        """True once the version's files are the same as at the previous poll."""
        now = files_fingerprint(self._path(version))
        before, self._seen[version] = self._seen.get(version), now
        return now == before

    def _load(self, version: int) -> None:
        """Loads and warms up one version; a failure is recorded and logged, not raised."""
        try:
            loaded = load_version(self._path(version), version)
            if self._warmup:
                self._warmup(loaded)
        except Exception as error:  # a bad version must not take the server down
            failure = LoadFailure(load_error_code(error), f"{error}".strip() or
                                  type(error).__name__, files_fingerprint(self._path(version)))
            self._failed[version] = failure
            log.error("model %s version %d failed to load (%s): %s", self.name, version,
                      error_codes_pb2.Code.Name(failure.code), failure.message)
            return
        with self._lock:
            self._loaded[version] = loaded
        self._seen.pop(version, None)
        log.info("model %s version %d is AVAILABLE", self.name, version)

    def _unload_unwanted(self, wanted: list[int]) -> None:
        """Unloads versions the policy no longer wants, but only once a version it wants
        serves (as TF Serving's availability-preserving policy: no gap in service)."""
        with self._lock:
            if not any(v in self._loaded for v in wanted):
                return
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

    def states(self) -> list[tuple[int, str, int, str]]:
        """(version, state, tensorflow.error.Code, error message) for each version known to
        this model: the loaded ones AVAILABLE (code OK), the failed ones END with their error."""
        with self._lock:
            loaded = sorted(self._loaded)
        failed = [(v, "END", f.code, f.message) for v, f in sorted(self._failed.items())]
        return [(v, "AVAILABLE", tf.errors.OK, "") for v in loaded] + failed


class Watcher:
    """Polls every model's base path on a background thread."""

    def __init__(self, models: list[ModelVersions], poll_seconds: float):
        self.models = {m.name: m for m in models}
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)

    def poll_once(self, settle: bool = True) -> None:
        """Polls every model; one model's failure is logged and does not stop the others."""
        for model in self.models.values():
            try:
                model.poll(settle)
            except Exception:   # e.g. an unreadable base path; the next poll tries again
                log.exception("model %s: polling %s failed", model.name, model.base_path)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            started = time.monotonic()
            self.poll_once()
            log.debug("polled base paths in %.3f s", time.monotonic() - started)

    def start(self) -> None:
        """Loads the versions there are now, then polls in the background."""
        self.poll_once(settle=False)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def model(self, name: str) -> ModelVersions:
        if name not in self.models:
            raise ServableNotFound(f"Servable not found for request: Latest({name})")
        return self.models[name]
