"""The `funnelstack` command: every tool of the project behind one name.

    funnelstack run ...       check the data and run the pipeline locally
    funnelstack report ...    the latest evaluation as an HTML page
    funnelstack compile ...   a Kubeflow Pipelines spec
    funnelstack compare ...   every model on the pipeline's split, over seeds
    funnelstack serve ...     the local stand-in for TF Serving (gRPC and REST)
    funnelstack client ...    call a served model (gRPC or REST)
    funnelstack predict ...   predictions of an exported model for raw CSV rows
    funnelstack generate ...  write the synthetic funnel as CSV

Each command takes the options of its module's own command line (`python -m
tfx_pipeline run`, `python -m serving.client`, ...), which keep working.
Output is quiet unless `--verbose` is given anywhere on the line (or
FUNNEL_VERBOSE=1): see tfx_pipeline.quiet.
"""

from __future__ import annotations

import importlib
import sys

from tfx_pipeline import quiet

PROG = "funnelstack"
# command -> (module, what it does); each module has main(argv, prog) -> exit code.
COMMANDS = {
    "run": ("tfx_pipeline.cli", "check the data and run the pipeline locally"),
    "report": ("tfx_pipeline.cli", "render the latest evaluation as an HTML page"),
    "compile": ("tfx_pipeline.cli", "write a Kubeflow Pipelines v2 spec (JSON and YAML)"),
    "compare": ("tfx_pipeline.compare", "every model on the pipeline's split, mean and sd over seeds"),
    "serve": ("serving.local_server", "serve exported models over TF Serving's gRPC and REST APIs"),
    "client": ("serving.client", "call a served model: predict, status, metadata"),
    "predict": ("serving.predict", "predictions of an exported model for the rows of a CSV file"),
    "generate": ("transform.datasets.synthetic", "write the synthetic funnel as CSV"),
}
# Commands whose module takes the command name itself as its first argument.
_SUBCOMMANDS_OF_CLI = ("run", "report", "compile")
# Commands with a --verbose option of their own; the others do not know the flag.
_TAKE_VERBOSE = ("run",)


def usage() -> str:
    """The top-level help text."""
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} COMMAND [options]   ({PROG} COMMAND --help for a command's options)",
             "", "Multi-step conversion models on TFX.", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "options:", "  --verbose  show every log line of TensorFlow, TFX and Beam",
              "  --version  print the package version"]
    return "\n".join(lines)


def version() -> str:
    """The installed package's version, or "unknown" when run from a source tree."""
    from importlib import metadata

    try:
        return metadata.version(PROG)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not quiet.verbose_requested(argv):
        quiet.install()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        print(f"{PROG} {version()}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"{PROG}: unknown command {command!r}; choose one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    if command not in _TAKE_VERBOSE:
        rest = [arg for arg in rest if arg != quiet.VERBOSE_FLAG]
    if command in _SUBCOMMANDS_OF_CLI:
        rest = [command] + rest
        prog = PROG
    else:
        prog = f"{PROG} {command}"
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest, prog=prog) or 0


if __name__ == "__main__":
    sys.exit(main())
