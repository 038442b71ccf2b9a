"""Training throughput (examples/s) per model on a fixed reference shape.

Shape (issue 3): batch 1024; 16 categorical fields, vocabulary 1000 each,
embedding dim 16; 4 numeric fields; tasks: two binary steps and one continuous
target. Shared-Bottom: bottom [128, 64], towers [32]. MMoE: 4 experts of
[128, 64], towers [32]. PLE: 1 level, 2 shared + 2 task-specific experts of
[128, 64], towers [32]. ESMM: towers [128, 64, 32]. AITM: bottoms [128, 64],
towers [32]. APEM: 2 groups, 4 inducing points, 2 heads, 1 layer, towers
[128, 64, 32]. HTLNet: towers [128, 64, 32], with and without its gradient rule.

Data are random and held in memory, so the figure is the model's training step
through `model.fit` (Keras overhead included), not input I/O. Each model runs a
warm-up epoch, then `--repeats` timed epochs of `--steps` steps; the median is
reported.

    scripts/run python benchmarks/train_throughput.py [--models shared_bottom,mmoe] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_models import registry  # noqa: E402
from keras_models.layout import InputLayout, TaskLayout  # noqa: E402

BATCH = 1024
CATEGORICAL = {f"c{i:02d}": 1000 for i in range(16)}
NUMERIC = tuple(f"n{i}" for i in range(4))
TASKS = TaskLayout(("click", "conversion"), "value")
BASE = {"embedding_dim": 16}
CONFIGS = {
    "shared_bottom": ("shared_bottom", {"bottom_units": [128, 64], "tower_units": [32]}),
    "mmoe": ("mmoe", {"num_experts": 4, "expert_units": [128, 64], "tower_units": [32]}),
    "ple": ("ple", {"num_levels": 1, "shared_experts": 2, "specific_experts": 2,
                    "expert_units": [128, 64], "tower_units": [32]}),
    "esmm": ("esmm", {"tower_units": [128, 64, 32]}),
    "aitm": ("aitm", {"bottom_units": [128, 64], "tower_units": [32]}),
    "apem": ("apem", {"tower_units": [128, 64, 32]}),
    "htlnet": ("htlnet", {"tower_units": [128, 64, 32]}),
    "htlnet_no_adjustment": ("htlnet", {"tower_units": [128, 64, 32], "gradient_rule": "none"}),
}
# Reference: a widely used PyTorch multi-task library on the same machine and shapes
# (issue 3); targets are 1.2x these.
PYTORCH_REFERENCE = {"shared_bottom": 78_000, "mmoe": 34_000, "ple": 22_000}


def make_data(batches: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = batches * BATCH
    features = {name: rng.integers(0, size, n) for name, size in CATEGORICAL.items()}
    features.update({name: rng.normal(size=n).astype("float32") for name in NUMERIC})
    click = (rng.random(n) < 0.1).astype("float32")
    conversion = click * (rng.random(n) < 0.2)
    labels = {"click": click, "conversion": conversion.astype("float32"),
              "value": (conversion * rng.lognormal(3, 1, n)).astype("float32")}
    data = tf.data.Dataset.from_tensor_slices((features, labels)).batch(BATCH, drop_remainder=True)
    return data.cache().repeat().prefetch(tf.data.AUTOTUNE), labels["value"]


def measure(key: str, steps: int, repeats: int, data, values) -> float:
    name, hparams = CONFIGS[key]
    keras.utils.set_random_seed(0)
    model = registry.build(name, InputLayout(CATEGORICAL, NUMERIC), TASKS, {**BASE, **hparams})
    model.adapt_target(values)
    callbacks = model.training_callbacks()
    model.fit(data, steps_per_epoch=max(20, steps // 5), epochs=1, verbose=0, callbacks=callbacks)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=callbacks)
        rates.append(steps * BATCH / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(CONFIGS))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    data, values = make_data(batches=64)
    results = {}
    print(f"batch {BATCH}, {os.cpu_count()} CPUs, TensorFlow {tf.__version__}, "
          f"Keras {keras.__version__}, {platform.processor() or platform.machine()}")
    print(f"{'model':<22}{'examples/s':>12}{'target':>10}  verdict")
    for key in args.models.split(","):
        rate = measure(key, args.steps, args.repeats, data, values)
        results[key] = rate
        target = 1.2 * PYTORCH_REFERENCE[key] if key in PYTORCH_REFERENCE else None
        verdict = "" if target is None else ("meets" if rate >= target else "BELOW")
        shown = f"{target:,.0f}" if target else "-"
        print(f"{key:<22}{rate:>12,.0f}{shown:>10}  {verdict}", flush=True)
    if "htlnet" in results and "htlnet_no_adjustment" in results:
        ratio = results["htlnet_no_adjustment"] / results["htlnet"]
        print(f"HTLNet step time with / without the gradient adjustment: {ratio:.2f} "
              f"(target <= 1.3: {'meets' if ratio <= 1.3 else 'BELOW'})")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
