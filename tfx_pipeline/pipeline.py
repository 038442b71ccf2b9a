"""The pipeline definition: one `create_pipeline` that wires every component.

ImportExamples -> StatisticsGen -> SchemaGen -> ExampleValidator -> AnomaliesGate
  -> Transform -> Trainer -> ServingWarmup -> Evaluator -> Pusher
ImportExamples is an Importer: it registers the directory ingest wrote
(transform.ingest: Split-train/ and Split-eval/, already split by ExampleGen's
hash rule) as the Examples artifact, without reading or copying a record. On
unchanged input it resolves to the same artifact, so the rest is cached.
ServingWarmup adds TF Serving warmup requests built from raw eval examples to
a copy of the trained model; that copy is evaluated and pushed.
The Evaluator also reads the latest blessed model (a Resolver node,
LatestBlessedModelStrategy) as the baseline for the change gates, and the
Pusher does not push a model that is already serving (tfx_pipeline.push).

The data root, the model's name and the training steps may be Kubeflow
RuntimeParameters instead of values (tfx_pipeline.kubeflow; the Importer's
source URI takes one in TFX 1.21's Kubeflow V2 compiler); Trainer and
Pusher take the latter two as execution properties of their own
(tfx_pipeline.model_trainer, tfx_pipeline.push.ModelPusher).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

from tfx import v1 as tfx
from tfx.types import artifact_utils

from tfx_pipeline.anomalies_gate import AnomaliesGate
from tfx_pipeline.eval_config import Gates, build_eval_config
from tfx_pipeline.model_trainer import ModelTrainer
from tfx_pipeline.push import ModelPusher
from tfx_pipeline.serving_warmup import ServingWarmup
from transform.ingest import SPLIT_NAMES
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
    examples_dir: str            # Split-train/ and Split-eval/ of tf.Examples (IngestResult.examples_uri)
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
    # {"transform": ..., "trainer": ...}: the hash of the project code each of the two
    # runs (tfx_pipeline.fingerprint), in its custom_config, so that a change of that
    # code, and only of that code, re-runs it instead of reusing the cached run.
    code_fingerprints: Mapping[str, str] = dataclasses.field(default_factory=dict)
    schema_path: str | None = None  # a curated schema.pbtxt; None infers one with SchemaGen
    # Transform's own statistics: pre-transform (what StatisticsGen already computed)
    # and post-transform with anomalies. Off by default: on Beam's DirectRunner the
    # post-transform branch keeps every transformed row in the runner's memory
    # (8.7 GB at 10M rows; docs/scale.md). Worth turning on with a distributed runner.
    transform_statistics: bool = False

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.pipeline_root, "metadata.sqlite")


EXAMPLES_IMPORTER = "ImportExamples"
# What ImportExampleGen records on its Examples: the splits, and the payload and
# file format the readers (tfx.components.util.tfxio_utils) look up; both
# formats are also their defaults.
EXAMPLES_PROPERTIES = {"split_names": artifact_utils.encode_split_names(list(SPLIT_NAMES))}
EXAMPLES_CUSTOM_PROPERTIES = {"payload_format": "FORMAT_TF_EXAMPLE",
                              "file_format": "tfrecords_gzip"}


def import_examples(examples_dir) -> tfx.dsl.Importer:
    """The Importer that registers an ingested directory as the Examples artifact.

    `examples_dir` (a path or a RuntimeParameter) must hold Split-train/ and
    Split-eval/ of GZIP TFRecords named *.gz (transform.ingest writes them). With
    reimport=False the same directory resolves to the artifact registered before.
    """
    return tfx.dsl.Importer(
        source_uri=examples_dir, artifact_type=tfx.types.standard_artifacts.Examples,
        reimport=False, properties=dict(EXAMPLES_PROPERTIES),
        custom_properties=dict(EXAMPLES_CUSTOM_PROPERTIES)).with_id(EXAMPLES_IMPORTER)


def transform_component(examples, schema, spec: DatasetSpec, code_fingerprint: str = "",
                        statistics: bool = False) -> tfx.components.Transform:
    """tf.Transform over `examples` with the project's preprocessing_fn.

    `code_fingerprint` is the hash of the project code the Transform runs
    (tfx_pipeline.fingerprint); `statistics` turns on Transform's own pre- and
    post-transform statistics (PipelineConfig.transform_statistics says why they
    are off by default).
    """
    return tfx.components.Transform(
        examples=examples, schema=schema, preprocessing_fn=PREPROCESSING_FN,
        custom_config={"spec": spec.to_json(), "code": code_fingerprint},
        disable_statistics=not statistics)


def create_components(config: PipelineConfig) -> list:
    spec_json = config.spec.to_json()
    importer = import_examples(config.examples_dir)
    examples = importer.outputs["result"]
    statistics_gen = tfx.components.StatisticsGen(examples=examples)
    if config.schema_path:
        schema_gen = tfx.components.ImportSchemaGen(schema_file=config.schema_path)
    else:
        schema_gen = tfx.components.SchemaGen(
            statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"])
    transform = transform_component(examples, schema_gen.outputs["schema"], config.spec,
                                    config.code_fingerprints.get("transform", ""),
                                    config.transform_statistics)
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
                       "strategy": config.strategy,
                       "code": config.code_fingerprints.get("trainer", "")},
    ).with_id("Trainer")
    warmup = ServingWarmup(model=trainer.outputs["model"], examples=examples)
    baseline = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("LatestBlessedModelResolver")
    evaluator = tfx.components.Evaluator(
        examples=examples, model=warmup.outputs["warm_model"],
        baseline_model=baseline.outputs["model"],
        eval_config=build_eval_config(config.spec, config.gates))
    pusher = ModelPusher(
        model=warmup.outputs["warm_model"], model_blessing=evaluator.outputs["blessing"],
        serving_dir=config.serving_dir, model_name=config.model_name).with_id("Pusher")
    return [importer, statistics_gen, schema_gen, example_validator, gate, transform,
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
