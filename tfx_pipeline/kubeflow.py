"""Compiling the pipeline for Kubeflow Pipelines (KFP v2 pipeline spec).

`compile_pipeline` writes the same pipeline as `run` in two forms: the
PipelineJob JSON (what Vertex AI and `kfp.Client().create_run_from_job_spec`
take) and the PipelineSpec YAML (what the KFP UI and
`kfp.Client().upload_pipeline` take). Both name the pipeline image and expose
three runtime parameters, settable per run without recompiling:

  data_root    directory of Split-train/ and Split-eval/ tf.Example TFRecords, as
               `run` ingests them (the Importer's source URI: the pipeline
               registers it as its Examples artifact, nothing re-splits it)
  train_steps  Trainer steps
  model_name   registry name of the model to train; also the push sub-directory

Every component carries a CPU/memory request and limit, and the Trainer a GPU
request (COMPONENT_RESOURCES; --trainer-gpus 0 trains on CPU).
"""

from __future__ import annotations

import dataclasses
import json
import os

import yaml
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx import v1 as tfx

from tfx_pipeline.pipeline import PipelineConfig, create_pipeline

ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
GPU_RESOURCE = "nvidia.com/gpu"


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one component's container asks of the cluster (limits = requests)."""

    cpus: float
    memory_gb: float
    gpus: int = 0


# Sized for about ten million rows with the Beam DirectRunner inside the
# component (see benchmarks/pipeline_scale.py); with --beam-args pointing at
# Dataflow/Flink/Spark the Beam-heavy components only coordinate.
COMPONENT_RESOURCES = {
    "StatisticsGen": Resources(cpus=4, memory_gb=8),
    "SchemaGen": Resources(cpus=1, memory_gb=2),
    "ImportSchemaGen": Resources(cpus=1, memory_gb=2),
    "ExampleValidator": Resources(cpus=1, memory_gb=4),
    "AnomaliesGate": Resources(cpus=1, memory_gb=1),
    "Transform": Resources(cpus=8, memory_gb=16),
    "Trainer": Resources(cpus=8, memory_gb=32, gpus=1),
    "ServingWarmup": Resources(cpus=2, memory_gb=8),
    "Evaluator": Resources(cpus=8, memory_gb=16),
    "Pusher": Resources(cpus=1, memory_gb=4),
}


def runtime_parameters(data_root: str, train_steps: int, model_name: str) -> dict:
    """The pipeline's runtime parameters, with the given values as defaults."""
    parameter = tfx.dsl.experimental.RuntimeParameter
    return {
        "data_root": parameter(name="data_root", ptype=str, default=data_root),
        "train_steps": parameter(name="train_steps", ptype=int, default=train_steps),
        "model_name": parameter(name="model_name", ptype=str, default=model_name),
    }


def resource_spec(resources: Resources, gpu_type: str = GPU_RESOURCE) -> ResourceSpec:
    """A KFP ResourceSpec; the numeric fields for older KFP backends, the string
    fields (Kubernetes quantities) for KFP 2.x."""
    spec = ResourceSpec(
        cpu_limit=resources.cpus, memory_limit=resources.memory_gb,
        cpu_request=resources.cpus, memory_request=resources.memory_gb,
        resource_cpu_limit=f"{resources.cpus:g}", resource_cpu_request=f"{resources.cpus:g}",
        resource_memory_limit=f"{resources.memory_gb:g}G",
        resource_memory_request=f"{resources.memory_gb:g}G")
    if resources.gpus:
        spec.accelerator.type = spec.accelerator.resource_type = gpu_type
        spec.accelerator.count = resources.gpus
        spec.accelerator.resource_count = str(resources.gpus)
    return spec


def attach_resources(pipeline, trainer_gpus: int = 1, gpu_type: str = GPU_RESOURCE) -> None:
    """Sets every component's platform config from COMPONENT_RESOURCES."""
    for component in pipeline.components:
        resources = COMPONENT_RESOURCES.get(component.id)
        if resources is None:      # the Importer and the Resolver run in KFP's driver
            continue
        if component.id == "Trainer":
            resources = dataclasses.replace(resources, gpus=trainer_gpus)
        component.with_platform_config(resource_spec(resources, gpu_type))


def output_paths(output: str) -> tuple[str, str]:
    """`out/p`, `out/p.json` or `out/p.yaml` -> (`out/p.json`, `out/p.yaml`)."""
    stem, suffix = os.path.splitext(output)
    if suffix not in (".json", ".yaml", ".yml"):
        stem = output
    return f"{stem}.json", f"{stem}.yaml"


def pipeline_job(config: PipelineConfig, image: str, trainer_gpus: int = 1,
                 gpu_type: str = GPU_RESOURCE) -> dict:
    """The KFP v2 PipelineJob (schema 2.1) as a dict. Runtime parameters in `config`
    keep their defaults both in the job's runtimeConfig and in the spec's inputs."""
    pipeline = create_pipeline(config, local_metadata=False)
    attach_resources(pipeline, trainer_gpus, gpu_type)
    defaults = {value.name: value.default for value in (
        config.examples_dir, config.model_name, config.train_steps)
        if isinstance(value, tfx.dsl.experimental.RuntimeParameter)}
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, use_pipeline_spec_2_1=True))
    job = runner.run(pipeline, parameter_values=defaults, write_out=False)
    # TFX puts the defaults in runtimeConfig only; the YAML form has no runtimeConfig.
    inputs = job["pipelineSpec"]["root"].get("inputDefinitions", {}).get("parameters", {})
    for name, default in defaults.items():
        inputs[name]["defaultValue"] = default
    return job


def compile_pipeline(config: PipelineConfig, image: str, output: str,
                     trainer_gpus: int = 1, gpu_type: str = GPU_RESOURCE) -> tuple[str, str]:
    """Writes the PipelineJob JSON and the PipelineSpec YAML; returns both paths."""
    job = pipeline_job(config, image, trainer_gpus, gpu_type)
    json_path, yaml_path = output_paths(output)
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as handle:
        json.dump(job, handle, indent=1, sort_keys=True)
    spec = job["pipelineSpec"]
    parameters = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    header = ["# PIPELINE DEFINITION", f"# Name: {spec['pipelineInfo']['name']}",
              f"# Image: {image}", "# Runtime parameters:"]
    header += [f"#  {name}: {p['parameterType']} = {p.get('defaultValue')!r}"
               for name, p in sorted(parameters.items())]
    with open(yaml_path, "w") as handle:
        handle.write("\n".join(header) + "\n")
        yaml.safe_dump(spec, handle, sort_keys=True)
    return json_path, yaml_path
