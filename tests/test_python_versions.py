"""The project's code runs on every Python it supports, from 3.10 on.

The runtime is Python 3.13, so code written there can use syntax or library
names that an older Python lacks and no other test would notice. Every project
.py file is parsed with Python 3.10's grammar, and walked for names newer than
3.10 (NEWER_NAMES). scripts/setup.sh's venv accepts fewer Pythons (3.12-3.13,
those every pin in constraints.txt has wheels for); the code itself stays 3.10-clean
so a constraints set for 3.10/3.11 is all those would need (pyproject.toml's
requires-python).
"""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

# The real source tree, also when Bazel runs this file from a runfiles tree.
REPO = Path(os.path.realpath(__file__)).parent.parent
OLDEST = (3, 10)
SKIPPED_DIRS = {".git", "third_party", "pipelines", "__pycache__", "bazel-bin", "bazel-out",
                "bazel-testlogs"}

# (module, name) -> the Python version that added it. A short list of what is
# likely to be reached for, not every addition: each entry is a name that
# runs on the 3.13 runtime and raises AttributeError/ImportError on 3.10.
NEWER_NAMES = {
    ("os", "process_cpu_count"): "3.13",     # use tfx_pipeline.machine.usable_cpus
    ("itertools", "batched"): "3.12",
    ("datetime", "UTC"): "3.11",             # datetime.timezone.utc works everywhere
    ("typing", "Self"): "3.11",              # typing_extensions has them all
    ("typing", "LiteralString"): "3.11",
    ("typing", "Never"): "3.11",
    ("typing", "assert_never"): "3.11",
    ("typing", "NotRequired"): "3.11",
    ("typing", "Required"): "3.11",
    ("typing", "override"): "3.12",
    ("typing", "TypeIs"): "3.13",
    ("asyncio", "TaskGroup"): "3.11",
    ("asyncio", "timeout"): "3.11",
    ("asyncio", "Runner"): "3.11",
    ("enum", "StrEnum"): "3.11",             # class X(str, enum.Enum) works everywhere
    ("contextlib", "chdir"): "3.11",
    ("hashlib", "file_digest"): "3.11",
    ("logging", "getLevelNamesMapping"): "3.11",
    ("math", "sumprod"): "3.12",
    ("os.path", "splitroot"): "3.12",
    ("sys", "exception"): "3.11",            # sys.exc_info()[1] works everywhere
    ("copy", "replace"): "3.13",             # dataclasses.replace for dataclasses
    ("warnings", "deprecated"): "3.13",
}
NEWER_MODULES = {"tomllib": "3.11", "wsgiref.types": "3.11"}
NEWER_BUILTINS = {"ExceptionGroup": "3.11", "BaseExceptionGroup": "3.11"}
# Keyword arguments added after 3.10 to functions that exist on 3.10: (module, function, keyword).
NEWER_KEYWORDS = {
    ("shutil", "rmtree", "onexc"): "3.12",          # onerror works everywhere
    ("tempfile", "TemporaryDirectory", "delete"): "3.12",
    ("tempfile", "NamedTemporaryFile", "delete_on_close"): "3.12",
    ("glob", "glob", "include_hidden"): "3.11",
}
# Exceptions whose handler makes a use inside its try block a guarded one.
GUARD_EXCEPTIONS = {"AttributeError", "ImportError", "ModuleNotFoundError", "NameError",
                    "TypeError", "Exception"}


def project_files(root: Path = REPO) -> list[Path]:
    files = []
    for directory, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
        files += [Path(directory, name) for name in sorted(names) if name.endswith(".py")]
    return files


def grammar_problems(source: str, where: str) -> list[str]:
    """Syntax newer than 3.10: what Python 3.10's grammar rejects, plus what
    ast.parse(feature_version=...) lets through (PEP 646 starred subscripts, the
    f-strings of PEP 701)."""
    try:
        tree = ast.parse(source, filename=where, feature_version=OLDEST)
    except SyntaxError as error:
        return [f"{where}:{error.lineno}: {error.msg}"]
    problems = []
    for node in ast.walk(tree):
        index = node.slice if isinstance(node, ast.Subscript) else None
        elements = index.elts if isinstance(index, ast.Tuple) else [index]
        if any(isinstance(element, ast.Starred) for element in elements):
            problems.append(f"{where}:{node.lineno}: a starred subscript (a[*b]) needs 3.11")
        if isinstance(node, ast.arguments) and node.vararg is not None \
                and isinstance(node.vararg.annotation, ast.Starred):
            problems.append(f"{where}:{node.vararg.lineno}: *args: *Ts needs 3.11")
    return problems + fstring_problems(source, where)


def fstring_problems(source: str, where: str) -> list[str]:
    """f-strings that only Python 3.12's tokenizer (PEP 701) reads: the enclosing quote
    reused inside a replacement field, a backslash or a comment there. Before 3.12
    tokenize sees an f-string as one STRING token and the grammar check above
    already rejects these."""
    if sys.version_info < (3, 12):
        return []
    problems, quotes = [], []       # quotes: the quote of each open f-string
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        kind = token.type
        if kind == tokenize.FSTRING_START:
            quote = token.string.lstrip("fFrRbB")
            if quote in quotes or (quotes and quotes[-1][0] == quote[0]):
                problems.append(f"{where}:{token.start[0]}: an f-string nested in one with the "
                                f"same quote needs 3.12")
            quotes.append(quote)
        elif kind == tokenize.FSTRING_END:
            quotes.pop()
        elif quotes and kind == tokenize.STRING:
            body = token.string.lstrip("rRbBuU")
            if any(body.startswith(quote[0]) for quote in quotes):
                problems.append(f"{where}:{token.start[0]}: a string with the enclosing "
                                f"f-string's quote needs 3.12")
            if "\\" in token.string:
                problems.append(f"{where}:{token.start[0]}: a backslash inside an f-string's "
                                f"braces needs 3.12")
        elif quotes and kind == tokenize.COMMENT:
            problems.append(f"{where}:{token.start[0]}: a comment inside an f-string needs 3.12")
    return problems


def _guarded(parents: list[ast.AST], node: ast.AST) -> bool:
    """A use inside `try: ... except AttributeError/ImportError` or under
    `if sys.version_info >= ...` / `if hasattr(...)` is a fallback, not a dependency."""
    child = node
    for parent in reversed(parents):
        if isinstance(parent, ast.Try) and child in parent.body:
            for handler in parent.handlers:
                caught = handler.type
                names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
                if caught is None or any(isinstance(n, ast.Name) and n.id in GUARD_EXCEPTIONS
                                         for n in names):
                    return True
        if isinstance(parent, (ast.If, ast.IfExp)) and child is not parent.test:
            text = ast.dump(parent.test)
            if "version_info" in text or "hasattr" in text:
                return True
        child = parent
    return False


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def library_problems(source: str, where: str) -> list[str]:
    """Uses of NEWER_NAMES, NEWER_MODULES, NEWER_BUILTINS and NEWER_KEYWORDS, through
    whatever name the module was imported as; unguarded ones only (_guarded)."""
    tree = ast.parse(source, filename=where)
    aliases: dict[str, str] = {}     # local name -> module or module.attribute
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def resolve(dotted: str | None) -> str | None:
        if not dotted:
            return None
        head, _, rest = dotted.partition(".")
        if head not in aliases:
            return None
        return aliases[head] + ("." + rest if rest else "")

    def newer(full: str | None) -> str | None:
        if not full or "." not in full:
            return None
        module, _, name = full.rpartition(".")
        return NEWER_NAMES.get((module, name))

    problems = []

    def visit(node: ast.AST, parents: list[ast.AST]) -> None:
        found = None
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in NEWER_MODULES:
                    found = (alias.name, NEWER_MODULES[alias.name])
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module in NEWER_MODULES:
                found = (node.module, NEWER_MODULES[node.module])
            for alias in node.names:
                version = NEWER_NAMES.get((node.module, alias.name))
                if version:
                    found = (f"{node.module}.{alias.name}", version)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            full = resolve(_dotted(node))
            if newer(full):
                found = (full, newer(full))
        elif isinstance(node, ast.Name) and node.id in NEWER_BUILTINS and node.id not in aliases:
            found = (node.id, NEWER_BUILTINS[node.id])
        elif isinstance(node, ast.Call):
            full = resolve(_dotted(node.func))
            if full and "." in full:
                module, _, function = full.rpartition(".")
                for keyword in node.keywords:
                    version = NEWER_KEYWORDS.get((module, function, keyword.arg))
                    if version:
                        found = (f"{full}({keyword.arg}=...)", version)
        if found and not _guarded(parents, node):
            problems.append(f"{where}:{node.lineno}: {found[0]} needs Python {found[1]}")
        for child in ast.iter_child_nodes(node):
            visit(child, parents + [node])

    visit(tree, [])
    return problems


def test_every_project_file_parses_with_the_oldest_supported_grammar():
    files = project_files()
    assert len(files) > 50 and any(f.name == "machine.py" for f in files)
    problems = []
    for path in files:
        problems += grammar_problems(path.read_text(encoding="utf-8"),
                                     str(path.relative_to(REPO)))
    assert not problems, "syntax newer than Python 3.10:\n" + "\n".join(problems)


def test_no_project_file_uses_a_library_name_newer_than_the_oldest_supported_python():
    problems = []
    for path in project_files():
        problems += library_problems(path.read_text(encoding="utf-8"),
                                     str(path.relative_to(REPO)))
    assert not problems, "names newer than Python 3.10:\n" + "\n".join(problems)


@pytest.mark.parametrize("source, expected", [
    ("try:\n    pass\nexcept* ValueError:\n    pass\n", "Exception groups"),
    ("type Pair = tuple[int, int]\n", "x.py:1: Type statement"),
    ("def first[T](xs: list[T]) -> T:\n    return xs[0]\n", "x.py:1: Type parameter lists"),
    ("x = a[*b]\n", "x.py:1: a starred subscript"),
    ('x = f"{"a"}"\n', "x.py:1: a string with the enclosing"),
    ("x = f\"{'\\n'.join(y)}\"\n", "x.py:1: a backslash"),
    ('x = f"""{y  # why\n}"""\n', "x.py:1: a comment"),
])
def test_the_grammar_check_names_file_and_line_of_newer_syntax(source, expected):
    problems = grammar_problems(source, "x.py")
    assert problems and problems[0].startswith("x.py:"), problems
    if sys.version_info >= (3, 12):     # older parsers say "invalid syntax"
        assert expected in problems[0], problems


def test_the_grammar_check_passes_3_10_syntax():
    source = ("match x:\n    case [1, *rest]:\n        pass\n"
              "with (open(a) as f, open(b) as g):\n    pass\n"
              "y = f\"{x!r:>{width}} {'a'} {d['k']}\"\n"
              "def f(*args: int) -> int | None:\n    return a[1:2, ...]\n")
    assert grammar_problems(source, "x.py") == []


@pytest.mark.parametrize("source, expected", [
    ("import os\nn = os.process_cpu_count()\n", "x.py:2: os.process_cpu_count needs Python 3.13"),
    ("import os as system\nn = system.process_cpu_count()\n", "x.py:2: os.process_cpu_count"),
    ("from os import process_cpu_count\n", "x.py:1: os.process_cpu_count"),
    ("import itertools\nfor b in itertools.batched(x, 2):\n    pass\n", "x.py:2: itertools.batched"),
    ("from itertools import batched\n", "x.py:1: itertools.batched needs Python 3.12"),
    ("import datetime\nt = datetime.datetime.now(datetime.UTC)\n", "x.py:2: datetime.UTC"),
    ("from datetime import UTC\n", "x.py:1: datetime.UTC"),
    ("from typing import Self\n", "x.py:1: typing.Self"),
    ("import typing\n@typing.override\ndef f(self):\n    pass\n", "x.py:2: typing.override"),
    ("import tomllib\n", "x.py:1: tomllib needs Python 3.11"),
    ("import asyncio\nasync def f():\n    async with asyncio.TaskGroup():\n        pass\n",
     "x.py:3: asyncio.TaskGroup"),
    ("import enum\nclass Colour(enum.StrEnum):\n    RED = 'red'\n", "x.py:2: enum.StrEnum"),
    ("raise ExceptionGroup('two', [ValueError(), KeyError()])\n", "x.py:1: ExceptionGroup"),
    ("import contextlib\nwith contextlib.chdir('/'):\n    pass\n", "x.py:2: contextlib.chdir"),
    ("import shutil\nshutil.rmtree(p, onexc=print)\n", "x.py:2: shutil.rmtree(onexc=...)"),
])
def test_the_library_check_names_file_line_and_version(source, expected):
    problems = library_problems(source, "x.py")
    assert problems and problems[0].startswith(expected), problems


def test_the_library_check_accepts_3_10_names_and_guarded_fallbacks():
    source = (
        "import os, itertools, datetime\n"
        "n = len(os.sched_getaffinity(0))\n"
        "pairs = itertools.pairwise(x)\n"
        "utc = datetime.timezone.utc\n"
        "try:\n    import tomllib\nexcept ModuleNotFoundError:\n    tomllib = None\n"
        "if hasattr(os, 'process_cpu_count'):\n    n = os.process_cpu_count()\n"
        "import sys\nif sys.version_info >= (3, 12):\n    from itertools import batched\n"
        "def process_cpu_count():\n    return 1\n"
        "obj.batched(2)\n")        # an attribute of anything but the module is not flagged
    assert library_problems(source, "x.py") == []


def _fake_python(bin_dir: Path, version: str) -> None:
    """A `python3` on PATH that reports `version` to common.sh's detection, beside a
    `getconf` that reports glibc 2.41, so the host's own glibc does not matter."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("python3", version), ("getconf", "glibc 2.41")):
        script = bin_dir / name
        script.write_text(f"#!/bin/sh\necho {text}\n")
        script.chmod(0o755)


@pytest.mark.parametrize("python, runtime", [
    ("3.9", "rootfs"), ("3.10", "rootfs"), ("3.11", "rootfs"),
    ("3.12", "venv"), ("3.13", "venv"), ("3.14", "rootfs")])
def test_setup_takes_a_plain_venv_only_on_a_python_the_pins_resolve_on(tmp_path, python, runtime):
    _fake_python(tmp_path / "bin", python)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(["bash", "-c", "source scripts/common.sh; detect_runtime"], cwd=REPO,
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == runtime


@pytest.mark.parametrize("python", ["3.9", "3.11", "3.14"])
def test_setup_refuses_a_venv_on_an_unsupported_python_naming_the_range(tmp_path, python):
    _fake_python(tmp_path / "bin", python)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
           "FUNNEL_RUNTIME": "venv", "FUNNEL_HOME": str(tmp_path / "home")}
    done = subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert f"Python {python}" in done.stderr and "3.12-3.13" in done.stderr, done.stderr
    assert not (tmp_path / "home" / "venv").exists()
