"""The Bazel BUILD files stay in step with the sources (docs/bazel.md).

Runs without Bazel: every BUILD file is parsed with Python's `ast` (the subset of
Starlark these files use is valid Python) and checked against the tree:

- every .py file is in the srcs of a py_* rule of its Bazel package, and every
  directory with an __init__.py is a Bazel package of its own;
- every tests/test_*.py has a py_test run by tests/bazel_pytest.py, tagged e2e
  exactly when the file has tests marked e2e;
- every file and label that a rule names exists;
- each rule's deps, followed transitively, provide every project module that
  its sources import.

Python rules list their srcs literally (no glob), so adding a module without
naming it in a BUILD file fails here.
"""

import ast
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# The real source tree, also when Bazel runs this file from a runfiles tree of
# symlinks (which holds only the files the BUILD files name).
REPO = Path(os.path.realpath(__file__)).parent.parent

# Directories that hold no sources: outputs, caches, Bazel's convenience links.
SKIP_DIRS = {".git", ".ci", ".pytest_cache", "__pycache__", "pipelines", "serving_models", "out"}
PY_RULES = {"py_library", "py_binary", "py_test"}
# Project packages that Bazel targets must provide (third-party imports come from
# the runtime Python and are not modelled).
PROJECT_TOP_LEVEL = {"keras_models", "transform", "tfx_pipeline", "serving"}
# Modules that tests import by their bare name, tests/ being on sys.path under pytest.
TEST_HELPERS = {"conftest", "funnel_data"}


@dataclass
class Rule:
    kind: str
    package: str              # "" for the top-level package
    attrs: dict = field(default_factory=dict)
    globbed: set = field(default_factory=set)   # attributes that call glob()

    @property
    def name(self) -> str:
        return self.attrs.get("name", "")

    @property
    def label(self) -> str:
        return f"//{self.package}:{self.name}"

    def files(self, attr: str) -> list[str]:
        """Repository-relative paths of the plain file names in a label-list attribute."""
        return [str(Path(self.package, entry)) for entry in self.attrs.get(attr) or []
                if not entry.startswith((":", "//", "@"))]


def walk_dirs():
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("bazel-"))
        yield Path(root), files


def build_file(directory: Path) -> Path | None:
    for name in ("BUILD", "BUILD.bazel"):
        if (directory / name).is_file():
            return directory / name
    return None


class _Unevaluated:
    def __repr__(self):
        return "<not a literal>"


def _evaluate(node: ast.AST, package_dir: Path):
    """A literal, a glob([...]) (evaluated against the tree), or a list sum of them."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "glob":
        patterns = ast.literal_eval(node.args[0])
        return sorted({str(p.relative_to(package_dir)) for pattern in patterns
                       for p in package_dir.glob(pattern) if p.is_file()})
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _evaluate(node.left, package_dir), _evaluate(node.right, package_dir)
        if isinstance(left, list) and isinstance(right, list):
            return left + right
        return _Unevaluated()
    try:
        return ast.literal_eval(node)
    except ValueError:
        return _Unevaluated()


def parse_build(path: Path) -> list[Rule]:
    package_dir = path.parent
    package = "" if package_dir == REPO else str(package_dir.relative_to(REPO))
    tree = ast.parse(path.read_text(), filename=str(path))
    rules = []
    for statement in tree.body:
        if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)):
            continue
        call = statement.value
        if not isinstance(call.func, ast.Name):
            continue
        attrs = {kw.arg: _evaluate(kw.value, package_dir) for kw in call.keywords if kw.arg}
        globbed = {kw.arg for kw in call.keywords if kw.arg and any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "glob"
            for n in ast.walk(kw.value))}
        rules.append(Rule(call.func.id, package, attrs, globbed))
    return rules


@pytest.fixture(scope="module")
def packages() -> dict[str, list[Rule]]:
    """Bazel package ("" for the top level) -> its rules."""
    found = {}
    for directory, _ in walk_dirs():
        path = build_file(directory)
        if path is not None:
            package = "" if directory == REPO else str(directory.relative_to(REPO))
            found[package] = parse_build(path)
    return found


@pytest.fixture(scope="module")
def rules(packages) -> dict[str, Rule]:
    return {rule.label: rule for rs in packages.values() for rule in rs if rule.name}


def package_of(path: Path, packages) -> str:
    """The Bazel package a file belongs to: its nearest directory with a BUILD file."""
    directory = path.parent
    while True:
        package = "" if directory == REPO else str(directory.relative_to(REPO))
        if package in packages:
            return package
        directory = directory.parent


def project_py_files() -> list[Path]:
    return sorted(Path(root, name).relative_to(REPO) for root, files in walk_dirs()
                  for name in files if name.endswith(".py"))


def test_the_top_level_and_every_project_package_have_a_build_file(packages):
    assert "" in packages, "no top-level BUILD file"
    assert (REPO / "WORKSPACE").is_file() or (REPO / "MODULE.bazel").is_file()
    for package in ["keras_models", "transform", "transform/datasets", "tfx_pipeline",
                    "serving", "tests", "benchmarks"]:
        assert package in packages, f"{package}/ has no BUILD file"
    # One BUILD per Python package: a new subpackage needs its own BUILD file.
    for directory, files in walk_dirs():
        if "__init__.py" in files:
            assert build_file(directory), (
                f"{directory.relative_to(REPO)}/ is a Python package but has no BUILD file")


def unlisted_python_files(packages, py_files) -> list[str]:
    missing = []
    for path in py_files:
        package = package_of(REPO / path, packages)
        srcs = {src for rule in packages[package] if rule.kind in PY_RULES
                for src in rule.files("srcs")}
        if str(path) not in srcs:
            missing.append(f"{path} (add it to a py_* rule's srcs in {package or '.'}/BUILD)")
    return missing


def test_every_python_file_is_in_the_srcs_of_a_python_rule(packages):
    missing = unlisted_python_files(packages, project_py_files())
    assert not missing, "Python files no BUILD target lists:\n" + "\n".join(missing)


def in_nested_repository(package: str) -> bool:
    """True for the stand-in repositories kept in the tree (a WORKSPACE of their own)."""
    directory = REPO / package
    while directory != REPO:
        if (directory / "WORKSPACE").is_file():
            return True
        directory = directory.parent
    return False


def test_the_build_files_filegroup_lists_every_build_file(packages, rules):
    listed = set(rules["//:build_files"].attrs["srcs"])
    expected = {"BUILD", "WORKSPACE"} | {f"//{package}:BUILD" for package in packages
                                         if package and not in_nested_repository(package)}
    assert listed == expected


def test_python_rules_list_their_srcs_literally(packages):
    for rs in packages.values():
        for rule in rs:
            if rule.kind in PY_RULES:
                srcs = rule.attrs.get("srcs")
                assert isinstance(srcs, list) and srcs and "srcs" not in rule.globbed, (
                    f"{rule.label}: srcs must be a literal list of file names (no glob)")
                assert "main" not in rule.attrs or rule.attrs["main"] in srcs, (
                    f"{rule.label}: main {rule.attrs['main']} is not in srcs")


def test_every_named_file_and_label_exists(packages, rules):
    problems = []
    for rs in packages.values():
        for rule in rs:
            for attr in ("srcs", "data", "deps"):
                value = rule.attrs.get(attr)
                if value is None:
                    continue
                if not isinstance(value, list):
                    problems.append(f"{rule.label}: {attr} is not a list of labels")
                    continue
                for entry in value:
                    problem = _check_label(entry, rule, packages, rules)
                    if problem:
                        problems.append(f"{rule.label}: {attr} entry {entry!r}: {problem}")
    assert not problems, "\n".join(problems)


def _check_label(entry: str, rule: Rule, packages, rules) -> str | None:
    if entry.startswith("@"):
        return None  # another repository: not checked here
    if entry.startswith(":"):
        package, name = rule.package, entry[1:]
    elif entry.startswith("//"):
        package, _, name = entry[2:].partition(":")
        name = name or package.rsplit("/", 1)[-1]
        if package not in packages:
            return f"no BUILD file in {package or '.'}/"
    else:
        package, name = rule.package, entry
    if f"//{package}:{name}" in rules:
        return None
    path = REPO / package / name
    if not path.is_file():
        return "no such target or file"
    if package_of(path, packages) != package:
        return f"the file belongs to another Bazel package ({package_of(path, packages)})"
    return None


def test_every_test_file_has_a_py_test(packages):
    tests = {rule.name: rule for rule in packages["tests"] if rule.kind == "py_test"}
    for path in sorted((REPO / "tests").glob("test_*.py")):
        name = path.stem
        assert name in tests, f"tests/BUILD has no py_test for {path.name}"
        rule = tests[name]
        assert path.name in rule.attrs["srcs"]
        assert rule.attrs.get("main") == "bazel_pytest.py", f"{rule.label}: main must be bazel_pytest.py"
        assert rule.attrs.get("args") == [f"$(rootpath {path.name})"], (
            f"{rule.label}: args must name its own test file")
    for name in tests:
        assert (REPO / "tests" / f"{name}.py").is_file(), f"py_test {name} has no tests/{name}.py"


def test_e2e_files_are_tagged(packages):
    marker = re.compile(r"pytest\.mark\.e2e\b")
    for rule in packages["tests"]:
        if rule.kind != "py_test":
            continue
        has_e2e = bool(marker.search((REPO / "tests" / f"{rule.name}.py").read_text()))
        tags = rule.attrs.get("tags") or []
        assert ("e2e" in tags) == has_e2e, (
            f"{rule.label}: tag e2e {'missing' if has_e2e else 'set'}, but the file "
            f"{'has' if has_e2e else 'has no'} tests marked e2e")
        if has_e2e:
            assert rule.attrs.get("size") == "large", f"{rule.label}: e2e tests are size large"


def _module_file(module: str, importer: Path) -> Path | None:
    """The project file that `import module` loads, or None for a third-party module."""
    top = module.split(".")[0]
    if top in TEST_HELPERS and importer.parts[0] == "tests":
        return Path("tests", f"{top}.py")
    if top not in PROJECT_TOP_LEVEL:
        return None
    parts = module.split(".")
    while parts:
        base = Path(*parts)
        if (REPO / base).with_suffix(".py").is_file():
            return base.with_suffix(".py")
        if (REPO / base / "__init__.py").is_file():
            return base / "__init__.py"
        parts.pop()  # `from package import name` where name is not a module
    return None


def imported_project_files(path: Path) -> set[Path]:
    tree = ast.parse((REPO / path).read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [f"{node.module}.{alias.name}" for alias in node.names]
        for module in modules:
            target = _module_file(module, path)
            if target is not None and target != path:
                found.add(target)
    return found


def test_deps_provide_every_imported_project_module(rules):
    def closure(label: str, seen: set[str]) -> set[str]:
        if label in seen or label not in rules:
            return set()
        seen.add(label)
        rule = rules[label]
        files = set(rule.files("srcs"))
        for dep in rule.attrs.get("deps") or []:
            dep_label = f"//{rule.package}{dep}" if dep.startswith(":") else dep
            if ":" not in dep_label[2:]:
                dep_label += ":" + dep_label.rsplit("/", 1)[-1]
            files |= closure(dep_label, seen)
        return files

    problems = []
    for label, rule in sorted(rules.items()):
        if rule.kind not in PY_RULES:
            continue
        available = closure(label, set())
        for src in rule.files("srcs"):
            for needed in sorted(imported_project_files(Path(src))):
                if str(needed) not in available:
                    problems.append(f"{label}: {src} imports {needed}, which no dep provides")
    assert not problems, "\n".join(problems)


def test_the_checks_catch_an_unlisted_module_and_parse_glob(packages, tmp_path):
    """Not vacuous: a module that no BUILD file names is reported."""
    extra = [Path("keras_models/new_model.py"), Path("transform/datasets/new_data.py"),
             Path("benchmarks/new_bench.py")]
    before = set(unlisted_python_files(packages, project_py_files()))
    after = set(unlisted_python_files(packages, project_py_files() + extra))
    assert sorted(m.split()[0] for m in after - before) == sorted(str(p) for p in extra)
    build = tmp_path / "BUILD"
    build.write_text('py_library(name = "x", srcs = ["a.py"] + glob(["*.txt"]), deps = [":y"])\n')
    (tmp_path / "b.txt").write_text("")
    tree = ast.parse(build.read_text())
    call = tree.body[0].value
    attrs = {kw.arg: _evaluate(kw.value, tmp_path) for kw in call.keywords}
    assert attrs == {"name": "x", "srcs": ["a.py", "b.txt"], "deps": [":y"]}
