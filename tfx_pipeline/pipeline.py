"""The pipeline definition: one `create_pipeline` that wires every component.

ImportExampleGen -> StatisticsGen -> SchemaGen -> ExampleValidator -> AnomaliesGate
  -> Transform -> Trainer -> ServingWarmup -> Evaluator -> Pusher
ServingWarmup adds TF Serving warmup requests built from raw eval examples to
a copy of the trained model; that copy is evaluated and pushed.
The Evaluator also reads the latest blessed model (a Resolver node,
LatestBlessedModelStrategy) as the baseline for the change gates, and the
Pusher does not push a model that is already serving (tfx_pipeline.push).

The data root, the model's name and the training steps may be Kubeflow
RuntimeParameters instead of values (tfx_pipeline.kubeflow); Trainer and
Pusher take the latter two as execution properties of their own
(tfx_pipeline.model_trainer, tfx_pipeline.push.ModelPusher).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

from tfx import v1 as tfx
from tfx.proto import example_gen_pb2

from tfx_pipeline.anomalies_gate import AnomaliesGate
from tfx_pipeline.eval_config import Gates, build_eval_config
from tfx_pipeline.model_trainer import ModelTrainer
from tfx_pipeline.push import ModelPusher
from tfx_pipeline.serving_warmup import ServingWarmup
from transform.spec import DatasetSpec

PREPROCESSING_FN = "transform.preprocessing.preprocessing_fn"
RUN_FN = "tfx_pipeline.trainer.run_fn"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything that defines one pipeline run.

    examples_dir, model_name and train_steps may also be RuntimeParameters.
    """

    pipeline_name: str
    pipeline_root: str
    examples_dir: str            # directory of tf.Example TFRecords (the ingested data)
    spec: DatasetSpec
    model_name: str
    serving_dir: str             # the Pusher writes <serving_dir>/<model_name>/<version>/
    hparams: Mapping = dataclasses.field(default_factory=dict)
    train_steps: int = 1000
    eval_steps: int = 100
    batch_size: int = 256
    seed: int = 0
    strategy: str = "default"    # tf.distribute strategy of the Trainer (trainer.make_strategy)
    gates: Gates = Gates()
    beam_args: Sequence[str] = ()
    code_fingerprint: str = ""   # part of custom_config so code changes invalidate the cache
    schema_path: str | None = None  # a curated schema.pbtxt; None infers one with SchemaGen

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.pipeline_root, "metadata.sqlite")


def split_config(spec: DatasetSpec) -> example_gen_pb2.Output:
    eval_buckets = spec.split.eval_percent
    splits = example_gen_pb2.SplitConfig(
        splits=[example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=100 - eval_buckets),
                example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=eval_buckets)])
    if spec.split.partition_column:
        splits.partition_feature_name = spec.split.partition_column
    return example_gen_pb2.Output(split_config=splits)


def create_components(config: PipelineConfig) -> list:
    spec_json = config.spec.to_json()
    example_gen = tfx.components.ImportExampleGen(
        input_base=config.examples_dir, output_config=split_config(config.spec))
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    if config.schema_path:
        schema_gen = tfx.components.ImportSchemaGen(schema_file=config.schema_path)
    else:
        schema_gen = tfx.components.SchemaGen(
            statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"])
    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        custom_config={"spec": spec_json, "code": config.code_fingerprint})
    transform.add_upstream_node(gate)
    trainer = ModelTrainer(
        run_fn=RUN_FN,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        model_name=config.model_name, train_steps=config.train_steps,
        eval_steps=config.eval_steps,
        custom_config={"spec": spec_json, "hparams": dict(config.hparams),
                       "batch_size": config.batch_size, "seed": config.seed,
                       "strategy": config.strategy, "code": config.code_fingerprint},
    ).with_id("Trainer")
    warmup = ServingWarmup(model=trainer.outputs["model"], examples=example_gen.outputs["examples"])
    baseline = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("LatestBlessedModelResolver")
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"], model=warmup.outputs["warm_model"],
        baseline_model=baseline.outputs["model"],
        eval_config=build_eval_config(config.spec, config.gates))
    pusher = ModelPusher(
        model=warmup.outputs["warm_model"], model_blessing=evaluator.outputs["blessing"],
        serving_dir=config.serving_dir, model_name=config.model_name).with_id("Pusher")
    return [example_gen, statistics_gen, schema_gen, example_validator, gate, transform,
            trainer, warmup, baseline, evaluator, pusher]


def create_pipeline(config: PipelineConfig, local_metadata: bool = True) -> tfx.dsl.Pipeline:
    """The pipeline; with local_metadata, ML Metadata lives in SQLite under the pipeline
    root (LocalDagRunner). Kubeflow brings its own metadata store."""
    metadata_connection_config = (
        tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path)
        if local_metadata else None)
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=create_components(config),
        enable_cache=True,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(config.beam_args))
