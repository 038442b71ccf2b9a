"""The typed dataset spec that flows through every stage of the pipeline.

A `DatasetSpec` says which columns are features (and how to preprocess them),
which columns form the task chain (ordered binary steps, optionally ending in a
continuous core target), which features slice the evaluation, and how rows are
split into train and eval. It is plain data: it loads from YAML or JSON, and it
travels to the Transform and Trainer components as JSON in `custom_config`.

This module imports nothing from the rest of the project.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

CATEGORICAL = "categorical"
NUMERIC = "numeric"
FEATURE_KINDS = (CATEGORICAL, NUMERIC)
CATEGORICAL_DTYPES = ("string", "int")
NUMERIC_SCALINGS = ("z_score", "log_z_score", "min_max", "none")
TARGET_TRANSFORMS = ("z_score", "log1p_z_score")
# keras_models.core_heads.CORE_HEADS, plus "auto" (this module imports nothing of the project)
CORE_HEADS = ("auto", "decomposition", "ziln", "regression")


class SpecError(ValueError):
    """A dataset spec is malformed; the message names the file and field."""


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """One input column.

    Attributes:
      name: column name in the source data.
      kind: "categorical" (looked up in a vocabulary) or "numeric".
      dtype: for categorical columns, "string" or "int" (ints are treated as
        tokens); numeric columns are always read as float.
      vocab_top_k: keep only the most frequent tokens (None keeps all).
      oov_buckets: hash buckets for tokens outside the vocabulary.
      scaling: for numeric columns: "z_score", "log_z_score" (log1p, then
        z-score; for non-negative heavy-tailed values), "min_max" or "none".
      required: when False, an empty cell is allowed and becomes "" (categorical,
        an out-of-vocabulary token) or `default` (numeric).
      default: fill value for empty numeric cells when `required` is False.
    """

    name: str
    kind: str
    dtype: str = "string"
    vocab_top_k: int | None = None
    oov_buckets: int = 1
    scaling: str = "z_score"
    required: bool = True
    default: float = 0.0

    @property
    def is_categorical(self) -> bool:
        return self.kind == CATEGORICAL


@dataclasses.dataclass(frozen=True)
class TaskChain:
    """The ordered chain of user actions to predict.

    Attributes:
      steps: binary label columns in path order, e.g. ("click", "conversion").
        A step can only be 1 where the previous step is 1.
      core_target: optional continuous, non-negative label that ends the chain
        (spend, revenue, watch time).
      core_target_gated: when True, the core target may only be non-zero where
        the last binary step is 1 (spend only after a conversion).
      target_transform: how the "regression" core head scales the target for
        training: "z_score" or "log1p_z_score". Predictions are always reported
        on the original scale.
      core_head: how models predict E[core target | x] (keras_models.core_heads):
        "decomposition" (needs core_target_gated), "ziln", "regression", or
        "auto": decomposition for a gated target, ziln otherwise.
    """

    steps: tuple[str, ...]
    core_target: str | None = None
    core_target_gated: bool = False
    target_transform: str = "log1p_z_score"
    core_head: str = "auto"

    @property
    def resolved_core_head(self) -> str:
        if self.core_head != "auto":
            return self.core_head
        return "decomposition" if self.core_target_gated else "ziln"

    @property
    def label_columns(self) -> tuple[str, ...]:
        return self.steps + ((self.core_target,) if self.core_target else ())

    def previous_step(self, step: str) -> str | None:
        """The step that must have happened for `step` to be possible."""
        index = self.steps.index(step)
        return self.steps[index - 1] if index > 0 else None


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """Train/eval split by a stable hash of each example.

    Identical rows always land in the same split, so exact duplicates never
    leak from train into eval. `partition_column` hashes one column instead
    (for example a user id, to keep all of a user's rows together).
    """

    eval_percent: int = 20
    partition_column: str | None = None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Everything the pipeline needs to know about a dataset."""

    name: str
    features: tuple[FeatureSpec, ...]
    chain: TaskChain
    slices: tuple[tuple[str, ...], ...] = ()
    split: SplitSpec = SplitSpec()
    description: str = ""

    def __post_init__(self):
        validate(self)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def label_columns(self) -> tuple[str, ...]:
        return self.chain.label_columns

    @property
    def columns(self) -> tuple[str, ...]:
        """All columns the source data must have: features, then labels."""
        return self.feature_names + self.label_columns

    def feature(self, name: str) -> FeatureSpec:
        for feature in self.features:
            if feature.name == name:
                return feature
        raise KeyError(f"no feature named {name!r} in spec {self.name!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DatasetSpec":
        return from_dict(json.loads(text))


def _fail(where: str, message: str):
    raise SpecError(f"{where}: {message}")


def validate(spec: DatasetSpec, where: str = "spec") -> None:
    """Checks internal consistency; raises SpecError naming the bad field."""
    if not spec.name:
        _fail(where, "'name' must be non-empty")
    if not spec.features:
        _fail(where, "'features' must list at least one column")
    seen: set[str] = set()
    for i, feature in enumerate(spec.features):
        at = f"{where}: features[{i}] ({feature.name!r})"
        if feature.kind not in FEATURE_KINDS:
            _fail(at, f"kind must be one of {FEATURE_KINDS}, got {feature.kind!r}")
        if feature.is_categorical and feature.dtype not in CATEGORICAL_DTYPES:
            _fail(at, f"dtype must be one of {CATEGORICAL_DTYPES}, got {feature.dtype!r}")
        if not feature.is_categorical and feature.scaling not in NUMERIC_SCALINGS:
            _fail(at, f"scaling must be one of {NUMERIC_SCALINGS}, got {feature.scaling!r}")
        if feature.oov_buckets < 1:
            _fail(at, "oov_buckets must be at least 1")
        if feature.name in seen:
            _fail(at, "duplicate column name")
        seen.add(feature.name)
    chain = spec.chain
    if not chain.steps:
        _fail(where, "'chain.steps' must list at least one binary step")
    for label in chain.label_columns:
        if label in seen:
            _fail(where, f"column {label!r} is used twice (as a feature or as two labels)")
        seen.add(label)
    if chain.target_transform not in TARGET_TRANSFORMS:
        _fail(where, f"chain.target_transform must be one of {TARGET_TRANSFORMS}")
    if chain.core_target_gated and not chain.core_target:
        _fail(where, "chain.core_target_gated needs a chain.core_target")
    if chain.core_head not in CORE_HEADS:
        _fail(where, f"chain.core_head must be one of {CORE_HEADS}")
    if chain.core_head == "decomposition" and not chain.core_target_gated:
        _fail(where, "chain.core_head 'decomposition' needs chain.core_target_gated: true "
                     "(E[y] = P(last step) * E[y | last step] holds only when y is 0 "
                     "without the last step); use 'ziln' for an ungated target")
    for i, cross in enumerate(spec.slices):
        for column in cross:
            if column not in spec.feature_names:
                _fail(where, f"slices[{i}] names {column!r}, which is not a feature")
    if not 0 < spec.split.eval_percent < 100:
        _fail(where, "split.eval_percent must be between 1 and 99")
    partition = spec.split.partition_column
    if partition and partition not in spec.columns:
        _fail(where, f"split.partition_column {partition!r} is not a column")
    if partition and (partition == chain.core_target or
                      (partition in spec.feature_names and not spec.feature(partition).is_categorical)):
        _fail(where, f"split.partition_column {partition!r} is a float column; the split hashes "
                     f"a string or integer column only (as TFX's ExampleGen does)")


_FEATURE_FIELDS = {f.name for f in dataclasses.fields(FeatureSpec)}
_CHAIN_FIELDS = {f.name for f in dataclasses.fields(TaskChain)}
_SPLIT_FIELDS = {f.name for f in dataclasses.fields(SplitSpec)}
_SPEC_FIELDS = {f.name for f in dataclasses.fields(DatasetSpec)}


def _check_keys(where: str, given: Mapping[str, Any], allowed: set[str], required: Sequence[str]):
    if not isinstance(given, Mapping):
        _fail(where, f"expected a mapping, got {type(given).__name__}")
    unknown = sorted(set(given) - allowed)
    if unknown:
        _fail(where, f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    for key in required:
        if key not in given:
            _fail(where, f"missing required field {key!r}")


def from_dict(data: Mapping[str, Any], where: str = "spec") -> DatasetSpec:
    """Builds a DatasetSpec from parsed YAML/JSON, with field-level errors."""
    _check_keys(where, data, _SPEC_FIELDS, ("name", "features", "chain"))
    features = []
    for i, raw in enumerate(data["features"]):
        _check_keys(f"{where}: features[{i}]", raw, _FEATURE_FIELDS, ("name", "kind"))
        features.append(FeatureSpec(**raw))
    _check_keys(f"{where}: chain", data["chain"], _CHAIN_FIELDS, ("steps",))
    chain_fields = dict(data["chain"])
    chain_fields["steps"] = tuple(chain_fields["steps"])
    split = data.get("split") or {}
    _check_keys(f"{where}: split", split, _SPLIT_FIELDS, ())
    slices = tuple(
        (s,) if isinstance(s, str) else tuple(s) for s in data.get("slices", ())
    )
    try:
        return DatasetSpec(
            name=data["name"],
            features=tuple(features),
            chain=TaskChain(**chain_fields),
            slices=slices,
            split=SplitSpec(**split),
            description=data.get("description", ""),
        )
    except SpecError as error:
        raise SpecError(str(error).replace("spec:", f"{where}:", 1)) from None


def load(path: str) -> DatasetSpec:
    """Loads a spec from a .yaml/.yml or .json file."""
    if not os.path.exists(path):
        raise SpecError(f"{path}: spec file not found")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as error:  # yaml and json raise different types
        raise SpecError(f"{path}: cannot parse: {error}") from None
    return from_dict(data, where=path)
