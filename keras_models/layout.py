"""What a model reads and predicts, and the names of its outputs.

The output names are a contract: they are the keys of the serving signature's
output dict and the output names TFMA evaluates.

  <step>_prob    marginal probability of a binary step on the impression space,
                 always inside [PROBABILITY_EPSILON, 1 - PROBABILITY_EPSILON]
  <target>_pred  E[core target | x], on its original scale (keras_models.core_heads)
  score          a ranking score: the core prediction when the chain has one,
                 else the last step's probability

Evaluation adds outputs that re-read these on a narrower sample space (see
`evaluation_outputs`), named `<output>_given_<step>`: the rows where `step`
happened.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

SCORE_KEY = "score"
# Probabilities are squashed into [eps, 1 - eps]: a step the features nearly
# determine would otherwise round to exactly 0 or 1 in float32, where log loss is
# undefined.
PROBABILITY_EPSILON = 1e-6


def prob_key(step: str) -> str:
    return f"{step}_prob"


def pred_key(target: str) -> str:
    return f"{target}_pred"


def conditional_key(step: str) -> str:
    """Training-only output: P(step | previous step) for models that factorise the chain."""
    return f"{step}_conditional"


def raw_key(target: str) -> str:
    """Training-only output: the core tower's raw output (batch, units of the core head)."""
    return f"{target}_raw"


def given_key(output_key: str, step: str) -> str:
    """Evaluation-only output: `output_key` on the rows where `step` is 1."""
    return f"{output_key}_given_{step}"


@dataclasses.dataclass(frozen=True)
class EvalOutput:
    """One output TFMA evaluates: a prediction, its label and its sample space.

    Attributes:
      name: TFMA output name (an output of the evaluation signature).
      label: label column it is scored against.
      kind: "binary" or "regression".
      prediction: the contract output it is computed from.
      divide_by: a contract output to divide `prediction` by, or None. The
        conditional probability P(step | previous step) is the ratio of the two
        marginals on the impression space; E[y | last step, x] is
        E[y | x] / P(last step | x) for a gated target.
      condition: a label column; only rows where it is 1 count (None: all rows).
    """

    name: str
    label: str
    kind: str
    prediction: str
    divide_by: str | None = None
    condition: str | None = None


@dataclasses.dataclass(frozen=True)
class InputLayout:
    """Model inputs, as the Transform output delivers them.

    Attributes:
      categorical: field name -> number of ids (vocabulary plus OOV buckets);
        each input is an int64 tensor of shape (batch,).
      numeric: names of scaled float32 inputs of shape (batch,).
    """

    categorical: Mapping[str, int]
    numeric: tuple[str, ...] = ()

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(self.categorical) + tuple(self.numeric)

    def to_config(self) -> dict:
        return {"categorical": dict(self.categorical), "numeric": list(self.numeric)}

    @classmethod
    def from_config(cls, config: Mapping) -> "InputLayout":
        return cls(dict(config["categorical"]), tuple(config.get("numeric", ())))


@dataclasses.dataclass(frozen=True)
class TaskLayout:
    """The chain a model predicts.

    Attributes:
      steps: binary steps in path order.
      core_target: optional continuous target ending the chain.
      target_transform: "z_score" or "log1p_z_score", the scaling of the
        "regression" core head.
      core_head: how the core target is predicted, one of
        keras_models.core_heads.CORE_HEADS.
    """

    steps: tuple[str, ...]
    core_target: str | None = None
    target_transform: str = "log1p_z_score"
    core_head: str = "decomposition"

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.steps + ((self.core_target,) if self.core_target else ())

    @property
    def output_keys(self) -> tuple[str, ...]:
        """The serving/TFMA output names, in a stable order."""
        keys = tuple(prob_key(s) for s in self.steps)
        if self.core_target:
            keys += (pred_key(self.core_target),)
        return keys + (SCORE_KEY,)

    @property
    def evaluation_outputs(self) -> tuple[EvalOutput, ...]:
        """What TFMA scores, per sample space.

        For a chain click -> conversion -> revenue:
          click_prob                         click, all rows (CTR)
          conversion_prob                    conversion, all rows (CTCVR)
          conversion_prob_given_click        conversion, clicked rows (CVR)
          revenue_pred                       revenue, all rows
          revenue_pred_given_conversion      revenue, converted rows, scored with
                                             revenue_pred / conversion_prob
        """
        outputs = []
        for index, step in enumerate(self.steps):
            outputs.append(EvalOutput(prob_key(step), step, "binary", prob_key(step)))
            if index:
                previous = self.steps[index - 1]
                outputs.append(EvalOutput(given_key(prob_key(step), previous), step, "binary",
                                          prob_key(step), divide_by=prob_key(previous),
                                          condition=previous))
        if self.core_target:
            target = pred_key(self.core_target)
            outputs.append(EvalOutput(target, self.core_target, "regression", target))
            last = self.steps[-1]
            outputs.append(EvalOutput(given_key(target, last), self.core_target, "regression",
                                      target, divide_by=prob_key(last), condition=last))
        return tuple(outputs)

    def to_config(self) -> dict:
        return {"steps": list(self.steps), "core_target": self.core_target,
                "target_transform": self.target_transform, "core_head": self.core_head}

    @classmethod
    def from_config(cls, config: Mapping) -> "TaskLayout":
        return cls(tuple(config["steps"]), config.get("core_target"),
                   config.get("target_transform", "log1p_z_score"),
                   config.get("core_head", "decomposition"))
