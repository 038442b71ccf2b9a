"""A hash per component of the project code that runs inside it (Transform, Trainer).

TFX caches a component's run by its inputs and execution properties; a change of
the project's own code is neither. So pipeline.create_components puts each
component's fingerprint into its custom_config ("code"): a change of the code
the component runs re-runs it, and nothing else does. Editing the report, the
CLI or its --help texts leaves both fingerprints as they are; a model change
re-runs the Trainer but not the Transform.

What a component runs is found, not listed: the project modules imported,
transitively, from the module files TFX loads in it (COMPONENT_MODULES), by
reading their imports with `ast` (every import statement, also those inside
functions, and each package's __init__.py that importing a module runs). So
the set stays right when code moves between modules. Imports by computed name
(importlib with a variable) would be missed; the project has none, and
tests/test_fingerprint.py checks that.

Imports nothing heavy: `python -m tfx_pipeline run` computes the fingerprints
before TensorFlow is loaded.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parent.parent
# The project's top-level packages; imports of anything else are third-party.
PROJECT_PACKAGES = ("keras_models", "transform", "tfx_pipeline", "serving")
# The modules TFX loads inside each component, from which the walk starts:
#   transform  the preprocessing_fn's module (pipeline.PREPROCESSING_FN)
#   trainer    the run_fn's module (pipeline.RUN_FN) and the Trainer's executor
#              (model_trainer.ModelTrainerExecutor folds the execution properties)
# tests/test_fingerprint.py keeps these in step with pipeline.py.
COMPONENT_MODULES = {
    "transform": ("transform.preprocessing",),
    "trainer": ("tfx_pipeline.trainer", "tfx_pipeline.model_trainer"),
}


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The source file of a project module (a package's __init__.py), or None."""
    if module.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(module: str, path: Path) -> str:
    """The package a relative import in `module` (at `path`) is relative to."""
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def imported_modules(module: str, root: Path = ROOT) -> set[str]:
    """The project modules `module`'s source imports anywhere in it. `from P import N`
    counts as P, and as P.N where that is a module."""
    path = module_file(module, root)
    if path is None:
        return set()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module, path)
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                parent = ".".join(part for part in (base, node.module) if part)
            else:
                parent = node.module or ""
            found.add(parent)
            found.update(f"{parent}.{alias.name}" for alias in node.names)
    return {name for name in found if module_file(name, root) is not None}


def _with_packages(module: str) -> list[str]:
    """`a.b.c` -> a, a.b, a.b.c: importing a module runs its packages' __init__ first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def module_closure(modules: Iterable[str], root: Path = ROOT) -> set[str]:
    """`modules`, their packages, and every project module they import, transitively."""
    seen: set[str] = set()
    pending = [name for module in modules for name in _with_packages(module)]
    while pending:
        module = pending.pop()
        if module in seen or module_file(module, root) is None:
            continue
        seen.add(module)
        for imported in imported_modules(module, root):
            pending.extend(_with_packages(imported))
    return seen


def component_files(component: str, root: Path = ROOT) -> list[Path]:
    """The source files of the project code that runs inside `component`, sorted."""
    modules = module_closure(COMPONENT_MODULES[component], root)
    return sorted(module_file(module, root) for module in modules)


def fingerprint(component: str, root: Path = ROOT) -> str:
    """16 hex digits over the path and content of each of component_files."""
    digest = hashlib.sha256()
    for path in component_files(component, root):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def code_fingerprints(root: Path = ROOT) -> dict[str, str]:
    """{component: fingerprint} for every component of COMPONENT_MODULES."""
    return {component: fingerprint(component, root) for component in COMPONENT_MODULES}
