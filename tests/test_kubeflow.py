"""`python -m tfx_pipeline compile`: the KFP v2 spec, validated with the kfp SDK, and
the documented --beam-args examples (docs/beam.md) compiled."""

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions
from google.protobuf import json_format
from kfp import compiler, components, dsl
from kfp.pipeline_spec import pipeline_spec_pb2

from conftest import REPO
from tfx_pipeline import cli
from tfx_pipeline.kubeflow import COMPONENT_RESOURCES, output_paths
from tfx_pipeline.model_trainer import fold_parameters

IMAGE = "example.invalid/funnel:1"


def compile_spec(tmp_path, *extra):
    output = tmp_path / "spec" / "funnel"
    assert cli.main(["compile", "--output", str(output), "--image", IMAGE,
                     "--data-root", "gs://bucket/data", "--train-steps", "321",
                     "--model", "mmoe", *extra]) == 0
    job = json.loads((tmp_path / "spec" / "funnel.json").read_text())
    return job, tmp_path / "spec" / "funnel.yaml"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return compile_spec(tmp_path_factory.mktemp("kfp"))


def containers(job):
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    return {name.removesuffix("_executor"): spec["container"]
            for name, spec in executors.items() if "container" in spec}


def test_json_is_a_valid_pipeline_job_with_the_runtime_parameters(compiled):
    job, _ = compiled
    parsed = json_format.ParseDict(job, pipeline_spec_pb2.PipelineJob())  # unknown fields fail
    assert parsed.pipeline_spec["schemaVersion"] == "2.1.0"
    assert parsed.pipeline_spec["pipelineInfo"]["name"] == "funnel-synthetic"
    inputs = job["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
    assert inputs == {
        "data_root": {"parameterType": "STRING", "defaultValue": "gs://bucket/data"},
        "model_name": {"parameterType": "STRING", "defaultValue": "mmoe"},
        "train_steps": {"parameterType": "NUMBER_INTEGER", "defaultValue": 321}}
    assert job["runtimeConfig"]["parameterValues"] == {
        "data_root": "gs://bucket/data", "model_name": "mmoe", "train_steps": 321}


def test_runtime_parameters_feed_the_steps_that_use_them(compiled):
    job, _ = compiled
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]

    def bound(task, parameter):
        return tasks[task]["inputs"]["parameters"][parameter].get("componentInputParameter")

    assert bound("ImportExamples", "artifact_uri") == "data_root"
    assert bound("Trainer", "model_name") == "model_name"
    assert bound("Trainer", "train_steps") == "train_steps"
    assert bound("Pusher", "model_name") == "model_name"   # the push path follows the model
    config = json.loads(
        tasks["Trainer"]["inputs"]["parameters"]["custom_config"]["runtimeValue"]["constant"])
    assert "model" not in config and config["batch_size"] == 256


def test_data_root_is_imported_as_the_split_examples_artifact(compiled):
    """The Importer runs in KFP's driver: its URI is the data_root parameter, and the
    artifact carries the splits and formats StatisticsGen, Transform and the Evaluator read."""
    job, _ = compiled
    importer = job["pipelineSpec"]["deploymentSpec"]["executors"]["ImportExamples_executor"]
    assert set(importer) == {"importer"}
    assert importer["importer"]["artifactUri"] == {"runtimeParameter": "artifact_uri"}
    assert importer["importer"]["metadata"] == {
        "split_names": '["train", "eval"]', "payload_format": "FORMAT_TF_EXAMPLE",
        "file_format": "tfrecords_gzip"}
    assert "title: tfx.Examples" in importer["importer"]["typeSchema"]["instanceSchema"]
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    for consumer in ("StatisticsGen", "Transform", "ServingWarmup", "Evaluator"):
        source = tasks[consumer]["inputs"]["artifacts"]["examples"]["taskOutputArtifact"]
        assert source == {"producerTask": "ImportExamples", "outputArtifactKey": "result"}, consumer


def test_every_step_runs_the_image_with_its_resources(compiled):
    job, _ = compiled
    steps = containers(job)
    assert set(steps) == set(COMPONENT_RESOURCES) - {"ImportSchemaGen"}
    for name, container in steps.items():
        assert container["image"] == IMAGE, name
        wanted = COMPONENT_RESOURCES[name]
        resources = container["resources"]
        assert resources["resourceCpuLimit"] == f"{wanted.cpus:g}", name
        assert resources["resourceMemoryLimit"] == f"{wanted.memory_gb:g}G", name
        assert resources["cpuLimit"] == wanted.cpus and resources["memoryLimit"] == wanted.memory_gb
        assert ("accelerator" in resources) == (name == "Trainer"), name
    assert steps["Trainer"]["resources"]["accelerator"] == {
        "type": "nvidia.com/gpu", "count": "1",
        "resourceType": "nvidia.com/gpu", "resourceCount": "1"}
    assert "tfx_pipeline.model_trainer.ModelTrainerExecutor" in steps["Trainer"]["args"]


def test_yaml_loads_as_a_kfp_component_and_compiles_inside_a_kfp_pipeline(compiled, tmp_path):
    job, yaml_path = compiled
    assert yaml.safe_load(yaml_path.read_text()) == job["pipelineSpec"]
    funnel = components.load_component_from_file(str(yaml_path))
    inputs = funnel.component_spec.inputs
    assert {name: (spec.type, spec.default) for name, spec in inputs.items()} == {
        "data_root": ("String", "gs://bucket/data"), "model_name": ("String", "mmoe"),
        "train_steps": ("Integer", 321)}

    @dsl.pipeline(name="nightly-funnel")
    def nightly(model_name: str = "apem"):
        funnel(model_name=model_name, train_steps=50)

    wrapped = tmp_path / "nightly.yaml"
    compiler.Compiler().compile(nightly, str(wrapped))
    spec = yaml.safe_load(wrapped.read_text())
    trainer = spec["deploymentSpec"]["executors"]["Trainer_executor"]["container"]
    assert trainer["resources"]["accelerator"]["count"] == "1" and trainer["image"] == IMAGE


def test_trainer_gpus_zero_trains_on_cpu(tmp_path):
    job, _ = compile_spec(tmp_path, "--trainer-gpus", "0")
    assert "accelerator" not in containers(job)["Trainer"]["resources"]


def test_output_paths_accept_a_stem_or_either_suffix():
    assert output_paths("out/p") == ("out/p.json", "out/p.yaml")
    assert output_paths("out/p.json") == ("out/p.json", "out/p.yaml")
    assert output_paths("out/p.yaml") == ("out/p.json", "out/p.yaml")
    assert output_paths("out/v1.2") == ("out/v1.2.json", "out/v1.2.yaml")


def test_trainer_folds_its_parameters_into_what_run_fn_reads():
    folded = fold_parameters({
        "custom_config": json.dumps({"seed": 3}), "train_args": '{"splits": ["train"]}',
        "model_name": "apem", "train_steps": 77.0, "run_fn": "x.y"})
    assert json.loads(folded["custom_config"]) == {"seed": 3, "model": "apem"}
    assert json.loads(folded["train_args"]) == {"splits": ["train"], "num_steps": 77}
    assert "model_name" not in folded and "train_steps" not in folded
    assert folded["run_fn"] == "x.y"


def documented_beam_args():
    """Every --beam-args "..." value inside the code blocks of docs/beam.md."""
    text = Path(REPO, "docs", "beam.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    found = []
    for block in blocks:
        words = shlex.split(block.replace("\\\n", " "))
        found += [words[i + 1] for i, word in enumerate(words) if word == "--beam-args"]
    return found


def test_docs_show_direct_dataflow_flink_and_spark_examples():
    runners = [re.search(r"--runner=(\w+)", args) for args in documented_beam_args()]
    named = {m.group(1) for m in runners if m}
    assert {"DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner"} <= named
    assert any("direct_running_mode=multi_processing" in a for a in documented_beam_args())


@pytest.mark.parametrize("beam_args", documented_beam_args())
def test_documented_beam_args_compile_and_beam_knows_every_option(beam_args, tmp_path):
    flags = beam_args.split()
    options = PipelineOptions(flags)
    known = options.get_all_options(retain_unknown_options=False)
    with_unknown = options.get_all_options(retain_unknown_options=True)
    assert set(with_unknown) - set(known) == set(), f"options Beam does not know: {beam_args}"
    job, _ = compile_spec(tmp_path, "--beam-args", beam_args)
    for name in ("StatisticsGen", "Transform", "Evaluator"):
        args = containers(job)[name]["args"]
        assert args[-len(flags):] == flags, name
