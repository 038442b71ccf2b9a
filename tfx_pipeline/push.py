"""TFX's Pusher executor, made idempotent and atomic.

Idempotent: re-running an unchanged pipeline re-evaluates the model (the latest
blessed model is now its own baseline) and blesses it again. The stock Pusher
would then copy it to a new version directory, and TF Serving would load and
warm up an identical model. This executor compares the blessed model with the
newest version under the push base directory (the one TF Serving serves by
default) file by file; when they are identical it records that version as the
push and copies nothing.

Atomic: the stock Pusher copies into the version directory itself, so a push
that is killed or runs out of disk leaves a numbered directory TF Serving tries
to load. Here a new version is copied under a hidden name and renamed into
place (`copy_version`). Versions, the blessing check and the PushedModel
artifact are the stock executor's.

`ModelPusher` is the Pusher component with one more execution property,
`model_name`: the push goes to <base directory>/<model_name>/<version>/. The
name can then be the same Kubeflow runtime parameter that picks the model to
train (tfx_pipeline.model_trainer), so the push path follows it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import time

from absl import logging
from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import io_utils, proto_utils

from serving.servables import version_directories
from tfx_pipeline import disk

ALREADY_SERVING_KEY = "already_serving"
MODEL_NAME_KEY = "model_name"


def directory_digest(path: str) -> str:
    """SHA-256 over the relative names and bytes of every file under `path`."""
    digest = hashlib.sha256()
    for root, _, files in sorted(fileio.walk(path)):
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode())
            with fileio.open(full, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


def newest_version(base_directory: str) -> str | None:
    """The highest numeric version directory holding a saved_model.pb, or None."""
    versions = version_directories(base_directory)
    return os.path.join(base_directory, versions[-1][1]) if versions else None


def _is_local(path: str) -> bool:
    return "://" not in path


def _partial_name(version: str) -> str:
    # A leading "." and a non-numeric name: TF Serving only loads directories whose
    # names are version numbers, so it never sees a version that is still copying.
    return f".partial-{version}-{socket.gethostname()}-{os.getpid()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, owned by someone else
        return True
    return True


def remove_abandoned_partials(base_directory: str) -> list[str]:
    """Deletes the partial copies a killed push left under `base_directory` on this host
    (their process is gone); returns their paths. Others' copies in progress stay."""
    if not fileio.isdir(base_directory):
        return []
    removed = []
    for name in fileio.listdir(base_directory):
        name = name.rstrip("/")
        parts = name.split("-")
        if not (name.startswith(".partial-") and len(parts) >= 4 and parts[-1].isascii() and parts[-1].isdigit()):
            continue
        host, pid = "-".join(parts[2:-1]), int(parts[-1])
        if host == socket.gethostname() and not _process_alive(pid):
            fileio.rmtree(os.path.join(base_directory, name))
            removed.append(os.path.join(base_directory, name))
    return removed


def copy_version(model_path: str, base_directory: str) -> tuple[str, str]:
    """Copies the SavedModel at `model_path` to a new version directory under
    `base_directory`; returns (its path, its version).

    The version is the Unix time in seconds (the stock Pusher's), raised past any
    existing version. On a local file system the model is copied into a hidden
    partial directory and renamed into place, so a server watching the base
    directory sees either no new version or a whole one, also when the copy is
    killed or the disk fills (the partial copy is removed; a killed one is removed
    by the next push). On object stores rename is not atomic, so the copy goes
    to its final place with saved_model.pb written last, as the stock Pusher does.
    """
    version = max([int(time.time())] + [v + 1 for v, _ in version_directories(
        base_directory, complete_only=False)])
    target = os.path.join(base_directory, str(version))
    if not _is_local(base_directory):
        _copy_saved_model(model_path, target)
        return target, str(version)
    for path in remove_abandoned_partials(base_directory):
        logging.warning("Removed %s, a partial copy left by a push that was killed.", path)
    partial = os.path.join(base_directory, _partial_name(str(version)))
    try:
        _copy_saved_model(model_path, partial)
        os.rename(partial, target)
    except BaseException as error:
        if fileio.exists(partial):
            fileio.rmtree(partial)
        if disk.is_disk_full(error):   # name the version, not the hidden partial copy
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), target) from error
        raise
    return target, str(version)


def _copy_saved_model(model_path: str, target: str) -> None:
    """Copies a SavedModel directory, saved_model.pb last (readers look for it first)."""
    io_utils.copy_dir(model_path, target, deny_regex_patterns=[r"saved_model\.pb"])
    graph = os.path.join(model_path, "saved_model.pb")
    if fileio.exists(graph):
        io_utils.copy_file(graph, os.path.join(target, "saved_model.pb"))


class IdempotentPusherExecutor(pusher_executor.Executor):
    """The stock Pusher's file-system push, except that an identical newest version is
    reused and a new version appears whole (copy_version)."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem":
            raise NotImplementedError("ModelPusher pushes to a file system only")
        base = destination.filesystem.base_directory
        if exec_properties.get(MODEL_NAME_KEY):
            base = os.path.join(base, exec_properties[MODEL_NAME_KEY])
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        serving = newest_version(base)
        if serving and directory_digest(model_path) == directory_digest(serving):
            target, version = serving, os.path.basename(serving)
            model_push.set_int_custom_property(ALREADY_SERVING_KEY, 1)
            logging.info("Model is already serving as %s; not pushed again.", serving)
        else:
            target, version = copy_version(model_path, base)
            logging.info("Model written to serving path %s.", target)
        io_utils.copy_dir(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=target, pushed_version=version)


class ModelPusherSpec(standard_component_specs.PusherSpec):
    PARAMETERS = {**standard_component_specs.PusherSpec.PARAMETERS,
                  MODEL_NAME_KEY: ExecutionParameter(type=str)}


class ModelPusher(base_component.BaseComponent):
    """Pushes a blessed `model` to <serving_dir>/<model_name>/<version>/ on a file system.

    `model_name` is a str or a RuntimeParameter; `serving_dir` a local path or a
    bucket URI. Output: `pushed_model`, as TFX's Pusher.
    """

    SPEC_CLASS = ModelPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(IdempotentPusherExecutor)

    def __init__(self, model: types.BaseChannel, model_blessing: types.BaseChannel,
                 serving_dir: str, model_name):
        destination = pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=serving_dir))
        spec = ModelPusherSpec(
            model=model, model_blessing=model_blessing, push_destination=destination,
            model_name=model_name,
            pushed_model=types.Channel(type=standard_artifacts.PushedModel))
        super().__init__(spec=spec)
