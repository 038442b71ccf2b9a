"""TFX's Pusher executor, made idempotent: a model that is already serving is not pushed again.

Re-running an unchanged pipeline re-evaluates the model (the latest blessed
model is now its own baseline) and blesses it again. The stock Pusher would
then copy it to a new version directory, and TF Serving would load and warm
up an identical model. This executor compares the blessed model with the
newest version under the push base directory (the one TF Serving serves by
default) file by file; when they are identical it records that version as the
push and copies nothing. Everything else is the stock executor.

`ModelPusher` is the Pusher component with one more execution property,
`model_name`: the push goes to <base directory>/<model_name>/<version>/. The
name can then be the same Kubeflow runtime parameter that picks the model to
train (tfx_pipeline.model_trainer), so the push path follows it.
"""

from __future__ import annotations

import hashlib
import os

from absl import logging
from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import io_utils, proto_utils

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
    if not fileio.isdir(base_directory):
        return None
    versions = [v.rstrip("/") for v in fileio.listdir(base_directory)]
    versions = [v for v in versions if v.isdigit()
                and fileio.exists(os.path.join(base_directory, v, "saved_model.pb"))]
    return os.path.join(base_directory, max(versions, key=int)) if versions else None


class IdempotentPusherExecutor(pusher_executor.Executor):
    """The stock Pusher, except that an identical newest version is reused."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        exec_properties = dict(exec_properties)
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if exec_properties.get(MODEL_NAME_KEY):
            base = destination.filesystem.base_directory
            destination.filesystem.base_directory = os.path.join(
                base, exec_properties.pop(MODEL_NAME_KEY))
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY] = (
                proto_utils.proto_to_json(destination))
        serving = (newest_version(destination.filesystem.base_directory)
                   if destination.WhichOneof("destination") == "filesystem" else None)
        if serving and self.CheckBlessing(input_dict):
            model_path = self.GetModelPath(input_dict)
            if directory_digest(model_path) == directory_digest(serving):
                model_push = artifact_utils.get_single_instance(
                    output_dict[standard_component_specs.PUSHED_MODEL_KEY])
                io_utils.copy_dir(model_path, model_push.uri)
                self._MarkPushed(model_push, pushed_destination=serving,
                                 pushed_version=os.path.basename(serving))
                model_push.set_int_custom_property(ALREADY_SERVING_KEY, 1)
                logging.info("Model is already serving as %s; not pushed again.", serving)
                return
        super().Do(input_dict, output_dict, exec_properties)


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
