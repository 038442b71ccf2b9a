"""Runs one test file under pytest for Bazel's py_test (tests/BUILD).

Bazel runs every py_test's main script; this one hands the test file named in
its arguments to pytest, from the runfiles root, where pytest.ini lies, so the
run is the same as `python -m pytest tests/test_x.py` in the repository.
It maps Bazel's test protocol onto pytest: the JUnit XML report goes to
XML_OUTPUT_FILE, --test_filter becomes `-k`, and pytest's cache stays out of
the read-only runfiles tree.

    bazel test //tests:test_metrics --test_filter=gini
"""

import os
import sys

import pytest


def pytest_args(argv: list[str], environ) -> list[str]:
    if not argv:
        raise SystemExit("usage: bazel_pytest.py TEST_FILE [PYTEST_ARGS...]")
    args = [argv[0], "-p", "no:cacheprovider", *argv[1:]]
    if environ.get("XML_OUTPUT_FILE"):
        args += ["--junitxml", environ["XML_OUTPUT_FILE"]]
    if environ.get("TESTBRIDGE_TEST_ONLY"):
        args += ["-k", environ["TESTBRIDGE_TEST_ONLY"]]
    return args


def main() -> int:
    # Bazel starts tests in the runfiles root already; `bazel run` of a test
    # target does too. TEST_SRCDIR is set by `bazel test` only.
    workspace = os.environ.get("TEST_WORKSPACE")
    if os.environ.get("TEST_SRCDIR") and workspace:
        os.chdir(os.path.join(os.environ["TEST_SRCDIR"], workspace))
    # Bazel puts the directory of this script first on sys.path; pytest adds
    # tests/ itself (rootdir conftest, prepend import mode), so drop it here
    # to import everything exactly as a plain pytest run does.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    return int(pytest.main(pytest_args(sys.argv[1:], os.environ)))


if __name__ == "__main__":
    sys.exit(main())
