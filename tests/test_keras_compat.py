"""keras_models refuses an untested Keras, and the suite's warning filters stay narrow."""

import configparser
import os
import subprocess
import sys
import warnings

import pytest

from conftest import REPO
from keras_models import keras_compat
from keras_models.keras_compat import (TESTED_KERAS, UntestedKerasError, UntestedKerasWarning,
                                       check, parse_version)


def test_the_installed_keras_is_a_tested_one():
    import keras

    low, high = TESTED_KERAS
    assert low <= parse_version(keras.__version__) < high
    assert keras_compat.problems(keras.__version__, keras.Model) == []


@pytest.mark.parametrize("text, parsed", [("3.15.1", (3, 15, 1)), ("3.16.0.dev2026120501", (3, 16, 0)),
                                          ("3.16.0rc1", (3, 16, 0)), ("4.0", (4, 0))])
def test_versions_parse_without_their_suffix(text, parsed):
    assert parse_version(text) == parsed


@pytest.mark.parametrize("version", ["3.16.0", "3.14.2", "4.0.0", "3.15.0", "3.16.0.dev2026"])
def test_an_untested_keras_is_an_error_that_says_what_and_how(version, monkeypatch):
    import keras

    monkeypatch.delenv(keras_compat.OVERRIDE_ENV, raising=False)
    with pytest.raises(UntestedKerasError) as error:
        check(version, keras.Model)
    message = str(error.value)
    assert f"Keras {version} is outside the tested range (>= 3.15.1, < 3.16)" in message
    assert "_maybe_symbolic_build" in message and "FUNNEL_UNTESTED_KERAS=1" in message


def test_the_override_turns_the_error_into_a_warning(monkeypatch):
    import keras

    monkeypatch.setenv(keras_compat.OVERRIDE_ENV, "1")
    with pytest.warns(UntestedKerasWarning, match="Keras 3.17.0 is outside"):
        check("3.17.0", keras.Model)
    monkeypatch.setenv(keras_compat.OVERRIDE_ENV, "0")
    with pytest.raises(UntestedKerasError):
        check("3.17.0", keras.Model)


def test_a_keras_without_the_overridden_hook_is_refused_even_in_range(monkeypatch):
    monkeypatch.delenv(keras_compat.OVERRIDE_ENV, raising=False)

    class Renamed:
        def _maybe_build(self, iterator=None, data_batch=None):
            pass

    class Changed:
        def _maybe_symbolic_build(self, data=None):
            pass

    with pytest.raises(UntestedKerasError, match="keras.Model has no _maybe_symbolic_build"):
        check("3.15.1", Renamed)
    with pytest.raises(UntestedKerasError, match="takes no iterator, data_batch"):
        check("3.15.1", Changed)


def test_the_hooks_the_models_use_exist_in_this_keras():
    """What keras_models.base.MultiTaskModel reads besides the overridden method."""
    import keras

    from keras_models import base

    model = keras.Sequential([keras.layers.Dense(1)])
    assert hasattr(model, "_distribute_strategy")
    for name in keras_compat.PRIVATE_HOOKS:
        assert name in vars(base.MultiTaskModel), f"MultiTaskModel no longer overrides {name}"


def _import_with_keras(version: str, override: str | None):
    env = {k: v for k, v in os.environ.items() if k != keras_compat.OVERRIDE_ENV}
    if override is not None:
        env[keras_compat.OVERRIDE_ENV] = override
    code = f"import keras; keras.__version__ = {version!r}; import keras_models; print('imported')"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_importing_keras_models_on_an_untested_keras_stops_with_the_reason():
    done = _import_with_keras("3.99.0", None)
    assert done.returncode != 0 and "imported" not in done.stdout
    assert "UntestedKerasError: Keras 3.99.0 is outside the tested range" in done.stderr
    allowed = _import_with_keras("3.99.0", "1")
    assert allowed.returncode == 0 and "imported" in allowed.stdout
    assert "UntestedKerasWarning: Keras 3.99.0 is outside" in allowed.stderr


def _filters() -> list[str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.path.join(REPO, "pytest.ini"))
    lines = parser["pytest"]["filterwarnings"].splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_the_warning_filters_ignore_only_named_messages():
    """A blanket `ignore::DeprecationWarning` would hide what announces a broken hook."""
    for line in _filters():
        action, message, category, *module = line.split(":")
        if action == "ignore":
            assert message.strip(), f"pytest.ini ignores a whole category: {line}"


@pytest.mark.parametrize("module", ["keras_models.base", "transform.preprocessing",
                                    "tfx_pipeline.trainer", "serving.export"])
@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_a_deprecation_in_the_projects_own_code_fails_the_test(module, category):
    with pytest.raises(category, match="something old"):
        warnings.warn_explicit("something old", category, f"{module}.py", 1, module=module)
