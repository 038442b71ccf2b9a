"""The Keras versions keras_models is tested with, checked when keras_models is imported.

keras_models.base.MultiTaskModel relies on Keras internals that Keras may change
in any release without a deprecation period (docs/kubeflow.md, "Keras internals"):

  Model._maybe_symbolic_build(iterator, data_batch)
      overridden: under MultiWorkerMirroredStrategy Keras 3.15 builds the model
      from the first batch averaged across workers, which fails; the override
      passes one replica's batch. It reads the epoch iterator's items as
      (begin step, end step, batches).
  Model._distribute_strategy
      read by that override: the strategy the model was created under, or None.
  the reduction of train_step's logs (keras.src.backend.tensorflow.trainer.
  reduce_per_replica)
      under MultiWorkerMirroredStrategy it concatenates the replicas' values on
      axis 0, so MultiTaskModel._record returns them with shape (1,).

On a Keras outside TESTED_KERAS, importing keras_models raises UntestedKerasError,
rather than training a model whose overrides Keras silently stopped calling (or
calls differently). To try a newer Keras, set FUNNEL_UNTESTED_KERAS=1: the check
then only warns. Run tests/test_keras_compat.py, tests/test_distributed.py and
tests/test_model_zoo.py (they exercise every hook) and, when they pass, move
TESTED_KERAS to take that version in.
"""

from __future__ import annotations

import inspect
import os
import re
import warnings

# Keras versions the suite passed with: from the first (constraints.txt's pin) up
# to, not including, the second. Patch releases of the tested minor release are
# taken in: they fix bugs and have not reworked the trainer so far.
TESTED_KERAS = ((3, 15, 1), (3, 16))
OVERRIDE_ENV = "FUNNEL_UNTESTED_KERAS"
# keras.Model methods keras_models overrides, with the parameters it calls them with.
PRIVATE_HOOKS = {"_maybe_symbolic_build": ("iterator", "data_batch")}


class UntestedKerasError(RuntimeError):
    """The installed Keras is outside TESTED_KERAS or lacks a hook keras_models overrides."""


class UntestedKerasWarning(UserWarning):
    """The same, let through by FUNNEL_UNTESTED_KERAS=1."""


def parse_version(text: str) -> tuple[int, ...]:
    """'3.15.1' -> (3, 15, 1); a suffix ('3.16.0.dev2026', '3.16.0rc1') is dropped."""
    numbers = re.match(r"\d+(?:\.\d+)*", text.strip())
    if not numbers:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(part) for part in numbers.group().split("."))


def _range_text() -> str:
    low, high = (".".join(map(str, bound)) for bound in TESTED_KERAS)
    return f">= {low}, < {high}"


def problems(version: str, model_class) -> list[str]:
    """What keeps keras_models from trusting this Keras: [] when nothing does."""
    found = []
    low, high = TESTED_KERAS
    if not low <= parse_version(version) < high:
        found.append(f"Keras {version} is outside the tested range ({_range_text()})")
    for name, parameters in PRIVATE_HOOKS.items():
        hook = getattr(model_class, name, None)
        if hook is None:
            found.append(f"keras.Model has no {name}, which keras_models overrides")
            continue
        missing = [p for p in parameters if p not in inspect.signature(hook).parameters]
        if missing:
            found.append(f"keras.Model.{name} takes no {', '.join(missing)}, which "
                         f"keras_models passes")
    return found


def check(version: str | None = None, model_class=None) -> None:
    """Raises UntestedKerasError on an untested Keras (the installed one unless given);
    with FUNNEL_UNTESTED_KERAS=1 set, warns instead."""
    if version is None or model_class is None:
        import keras

        version = keras.__version__ if version is None else version
        model_class = keras.Model if model_class is None else model_class
    found = problems(version, model_class)
    if not found:
        return
    message = (
        "; ".join(found) + ". keras_models overrides Keras internals (Model."
        "_maybe_symbolic_build, Model._distribute_strategy, the multi-worker reduction "
        "of train_step's logs) that a Keras release may change without notice. Install "
        "the tested Keras (constraints.txt), or set "
        f"{OVERRIDE_ENV}=1 to try this one and run tests/test_keras_compat.py, "
        "tests/test_distributed.py and tests/test_model_zoo.py (docs/kubeflow.md, "
        "\"Keras internals\").")
    if os.environ.get(OVERRIDE_ENV, "") not in ("", "0"):
        warnings.warn(message, UntestedKerasWarning, stacklevel=2)
        return
    raise UntestedKerasError(message)
