"""TFX's Trainer with two execution properties of its own: `model_name` and `train_steps`.

Kubeflow Pipelines can only bind a runtime parameter to a whole execution
property; one nested in `train_args` or in the `custom_config` dict is frozen
into the compiled spec as text. Making the model's registry name and the step
count properties of their own lets `python -m tfx_pipeline compile` expose
them as pipeline parameters (tfx_pipeline.kubeflow). The executor folds them
back into `custom_config["model"]` and `train_args.num_steps`; everything else
is TFX's GenericExecutor, which calls tfx_pipeline.trainer.run_fn.
"""

from __future__ import annotations

import json

from tfx import types
from tfx.components.trainer import executor as trainer_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import trainer_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import json_utils, proto_utils

MODEL_NAME_KEY = "model_name"
TRAIN_STEPS_KEY = "train_steps"


class ModelTrainerSpec(standard_component_specs.TrainerSpec):
    PARAMETERS = {
        **standard_component_specs.TrainerSpec.PARAMETERS,
        MODEL_NAME_KEY: ExecutionParameter(type=str),
        TRAIN_STEPS_KEY: ExecutionParameter(type=int),
    }


def fold_parameters(exec_properties: dict) -> dict:
    """A copy of the execution properties with model_name and train_steps moved into
    custom_config["model"] and train_args.num_steps, where run_fn reads them."""
    folded = dict(exec_properties)
    config = json.loads(folded.get(standard_component_specs.CUSTOM_CONFIG_KEY) or "{}")
    config["model"] = folded.pop(MODEL_NAME_KEY)
    folded[standard_component_specs.CUSTOM_CONFIG_KEY] = json_utils.dumps(config)
    train_args = trainer_pb2.TrainArgs()
    proto_utils.json_to_proto(folded[standard_component_specs.TRAIN_ARGS_KEY], train_args)
    train_args.num_steps = int(folded.pop(TRAIN_STEPS_KEY))
    folded[standard_component_specs.TRAIN_ARGS_KEY] = proto_utils.proto_to_json(train_args)
    return folded


class ModelTrainerExecutor(trainer_executor.GenericExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
        super().Do(input_dict, output_dict, fold_parameters(exec_properties))


class ModelTrainer(base_component.BaseComponent):
    """Trains `model_name` (a str or a RuntimeParameter) for `train_steps` steps.

    Inputs and outputs are the Trainer's: transformed `examples`,
    `transform_graph`, `schema` in; `model` and `model_run` out. The node id
    stays "Trainer" (see create_components) so artifact paths do not change.
    """

    SPEC_CLASS = ModelTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ModelTrainerExecutor)

    def __init__(self, examples: types.BaseChannel, transform_graph: types.BaseChannel,
                 schema: types.BaseChannel, run_fn: str, model_name, train_steps,
                 eval_steps: int, custom_config: dict):
        spec = ModelTrainerSpec(
            examples=examples, transform_graph=transform_graph, schema=schema,
            run_fn=run_fn, train_args=trainer_pb2.TrainArgs(),
            eval_args=trainer_pb2.EvalArgs(num_steps=eval_steps),
            custom_config=json_utils.dumps(custom_config),
            model_name=model_name, train_steps=train_steps,
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun))
        super().__init__(spec=spec)
