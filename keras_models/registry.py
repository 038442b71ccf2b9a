"""Model names -> classes, and one `build` function used by the Trainer and tests."""

from __future__ import annotations

from typing import Mapping

import keras
import tensorflow as tf

from keras_models.aitm import AITM
from keras_models.apem import APEM
from keras_models.esmm import ESMM
from keras_models.htlnet import HTLNet
from keras_models.layout import InputLayout, TaskLayout
from keras_models.mmoe import MMoE
from keras_models.ple import PLE
from keras_models.shared_bottom import SharedBottom

MODELS = {
    "apem": APEM,
    "htlnet": HTLNet,
    "shared_bottom": SharedBottom,
    "mmoe": MMoE,
    "ple": PLE,
    "esmm": ESMM,
    "aitm": AITM,
}


def model_class(name: str):
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}") from None


def check_fits(name: str, task_layout: TaskLayout, hparams: Mapping | None = None) -> None:
    """Raises ValueError when model `name` cannot be trained on this chain or these hparams."""
    cls = model_class(name)
    if cls.requires_core_target and not task_layout.core_target:
        raise ValueError(f"model {name!r} needs a chain that ends in a continuous core target "
                         f"(chain.core_target in the dataset spec); this chain is "
                         f"{' -> '.join(task_layout.steps)}")
    jit_compile_setting(cls, cls.hparams_class.from_dict(dict(hparams or {})))


def build(name: str, input_layout: InputLayout, task_layout: TaskLayout,
          hparams: Mapping | None = None) -> keras.Model:
    """Builds, creates the variables of, and compiles model `name` (Adam at its learning rate).

    Call it inside `strategy.scope()` to train under a tf.distribute strategy.
    """
    model = model_class(name)(input_layout, task_layout, dict(hparams or {}))
    model.build()
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=model.hparams.learning_rate),
                  jit_compile=jit_compile_setting(type(model), model.hparams,
                                                  distributed=tf.distribute.has_strategy()))
    return model


JIT_COMPILE = ("auto", "on", "off")


def jit_compile_setting(model_cls, hparams, distributed: bool = False):
    """The hyper-parameter jit_compile as keras.Model.compile takes it: True, False or "auto".

    Gradient rules are kept out of XLA: their per-task backward passes failed to
    compile (HTLNet) or ran out of memory compiling (APEM with PCGrad). Under a
    tf.distribute strategy (`distributed`) "auto" leaves the choice to Keras: XLA
    cannot reach variables mirrored on other CPU devices.
    """
    value = hparams.jit_compile
    if value not in JIT_COMPILE:
        raise ValueError(f"jit_compile must be one of {', '.join(JIT_COMPILE)}; got {value!r}")
    plain = hparams.gradient_rule == "none"
    if value == "on" and not plain:
        raise ValueError(f"jit_compile 'on' does not work with gradient_rule "
                         f"{hparams.gradient_rule!r}; use 'auto' or 'off'")
    if value == "auto":
        if not plain:
            return False
        return True if model_cls.xla_on_cpu and not distributed else "auto"
    return value == "on"
