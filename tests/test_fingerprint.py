"""The code fingerprints re-run Transform and Trainer on a change of the code they run only.

Edits are made to a copy of the project's packages in a temporary directory,
never to the real files.
"""

import ast
import json
import shutil
from pathlib import Path

import pytest

from tfx_pipeline import fingerprint
from tfx_pipeline.fingerprint import (COMPONENT_MODULES, PROJECT_PACKAGES, code_fingerprints,
                                      component_files)


@pytest.fixture
def tree(tmp_path):
    """A copy of the project's packages (sources only)."""
    for package in PROJECT_PACKAGES:
        shutil.copytree(fingerprint.ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "BUILD"))
    return tmp_path


def edit(path: Path, line: str = "# an edit\n") -> None:
    path.write_text(path.read_text() + line)


def relative(component: str, root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in component_files(component, root)}


def test_the_copy_fingerprints_as_the_project_does(tree):
    assert code_fingerprints(tree) == code_fingerprints()
    assert set(code_fingerprints()) == {"transform", "trainer"}


@pytest.mark.parametrize("path", ["tfx_pipeline/report.py", "tfx_pipeline/cli.py",
                                  "tfx_pipeline/__main__.py", "tfx_pipeline/compare.py",
                                  "tfx_pipeline/eval_config.py", "serving/client.py",
                                  "transform/ingest.py"])
def test_code_outside_the_components_leaves_both_fingerprints(tree, path):
    before = code_fingerprints(tree)
    edit(tree / path, 'HELP = "a changed --help text"\n')
    assert code_fingerprints(tree) == before


@pytest.mark.parametrize("path", ["keras_models/layers.py", "keras_models/base.py",
                                  "keras_models/registry.py", "serving/export.py",
                                  "tfx_pipeline/trainer.py", "tfx_pipeline/model_trainer.py",
                                  "tfx_pipeline/machine.py"])
def test_model_and_trainer_code_re_runs_the_trainer_only(tree, path):
    before = code_fingerprints(tree)
    edit(tree / path)
    after = code_fingerprints(tree)
    assert after["trainer"] != before["trainer"]
    assert after["transform"] == before["transform"]


@pytest.mark.parametrize("path", ["transform/preprocessing.py", "transform/spec.py",
                                  "transform/__init__.py"])
def test_preprocessing_code_re_runs_both(tree, path):
    """The Trainer imports preprocessing (vocabulary names) and the spec too."""
    before = code_fingerprints(tree)
    edit(tree / path)
    after = code_fingerprints(tree)
    assert after["transform"] != before["transform"]
    assert after["trainer"] != before["trainer"]


def test_the_set_follows_the_imports_when_code_moves(tree):
    """A new module that a model module starts to import (also inside a function, or
    relatively) joins the Trainer's set; one that nothing imports does not."""
    (tree / "keras_models" / "moved.py").write_text("def helper():\n    return 1\n")
    (tree / "keras_models" / "relative.py").write_text("X = 1\n")
    (tree / "keras_models" / "unused.py").write_text("Y = 1\n")
    assert "keras_models/moved.py" not in relative("trainer", tree)
    edit(tree / "keras_models" / "layers.py",
         "\ndef _late():\n    from keras_models.moved import helper\n    return helper()\n"
         "from .relative import X  # noqa: E402\n")
    files = relative("trainer", tree)
    assert {"keras_models/moved.py", "keras_models/relative.py"} <= files
    assert "keras_models/unused.py" not in files
    before = code_fingerprints(tree)
    edit(tree / "keras_models" / "moved.py")
    after = code_fingerprints(tree)
    assert after["trainer"] != before["trainer"]
    edit(tree / "keras_models" / "unused.py")
    assert code_fingerprints(tree) == after


def test_what_each_component_runs():
    transform = relative("transform", fingerprint.ROOT)
    trainer = relative("trainer", fingerprint.ROOT)
    assert {"transform/preprocessing.py", "transform/spec.py", "transform/__init__.py"} <= transform
    assert not any(name.startswith(("keras_models/", "tfx_pipeline/", "serving/"))
                   for name in transform)
    assert {"tfx_pipeline/trainer.py", "tfx_pipeline/model_trainer.py", "keras_models/layers.py",
            "keras_models/registry.py", "keras_models/__init__.py", "serving/export.py",
            "transform/preprocessing.py"} <= trainer
    for outside in ("tfx_pipeline/cli.py", "tfx_pipeline/report.py", "tfx_pipeline/pipeline.py",
                    "tfx_pipeline/compare.py", "serving/client.py", "transform/ingest.py"):
        assert outside not in trainer and outside not in transform


def test_the_walk_starts_where_tfx_loads_the_project_code():
    """COMPONENT_MODULES names the modules of the pipeline's preprocessing_fn and run_fn
    and of the Trainer's executor."""
    from tfx_pipeline import pipeline
    from tfx_pipeline.model_trainer import ModelTrainer

    assert pipeline.PREPROCESSING_FN.rpartition(".")[0] in COMPONENT_MODULES["transform"]
    assert pipeline.RUN_FN.rpartition(".")[0] in COMPONENT_MODULES["trainer"]
    executor = ModelTrainer.EXECUTOR_SPEC.executor_class
    assert executor.__module__ in COMPONENT_MODULES["trainer"]


def test_component_code_imports_nothing_by_computed_name():
    """importlib.import_module or __import__ with a name the AST walk cannot read would
    let a module into a component without its fingerprint seeing it."""
    found = []
    for component in COMPONENT_MODULES:
        for path in component_files(component):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    name = ast.unparse(node.func)
                    if name in ("importlib.import_module", "import_module", "__import__"):
                        found.append(f"{path.relative_to(fingerprint.ROOT)}:{node.lineno}")
    assert not found, found


def test_each_component_gets_its_own_fingerprint_in_its_custom_config(tmp_path):
    from tfx_pipeline.pipeline import PipelineConfig, create_components
    from transform.datasets import spec_for

    config = PipelineConfig(pipeline_name="p", pipeline_root=str(tmp_path),
                            examples_dir=str(tmp_path / "examples"), spec=spec_for("synthetic"),
                            model_name="mmoe", serving_dir=str(tmp_path / "serving"),
                            code_fingerprints={"transform": "t-code", "trainer": "r-code"})
    components = {c.id: c for c in create_components(config)}
    custom = {name: json.loads(components[name].exec_properties["custom_config"])
              for name in ("Transform", "Trainer")}
    assert custom["Transform"]["code"] == "t-code"
    assert custom["Trainer"]["code"] == "r-code"


def test_the_cli_passes_the_fingerprints_of_the_tree(tmp_path):
    from tfx_pipeline.cli import _config, build_parser
    from transform.datasets import spec_for

    args = build_parser().parse_args(["run"])
    config = _config(args, str(tmp_path / "examples"), spec_for("synthetic"), str(tmp_path))
    assert dict(config.code_fingerprints) == code_fingerprints()
