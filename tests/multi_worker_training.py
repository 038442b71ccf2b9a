"""Trains a model a few steps and prints its per-step losses as JSON (one line).

Run by tests/test_distributed.py, once per worker of a MultiWorkerMirroredStrategy
cluster (TF_CONFIG set by the test) and once without a strategy for reference:

    python tests/multi_worker_training.py --strategy multi_worker --model shared_bottom
    python tests/multi_worker_training.py --strategy default --model shared_bottom

Both see the same global batches of the synthetic funnel; under the strategy each
of the two workers computes half of every batch.
"""

import argparse
import json
import os
import sys

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                os.path.dirname(os.path.abspath(__file__))]

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from funnel_data import TASKS, funnel_arrays  # noqa: E402
from keras_models import registry  # noqa: E402
from tfx_pipeline.trainer import make_strategy  # noqa: E402

GLOBAL_BATCH = 64


class StepLosses(keras.callbacks.Callback):
    """Per-step total loss, recovered from Keras' running mean of the epoch."""

    def __init__(self):
        super().__init__()
        self.losses, self._means = [], []

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])
        self._means.append(mean)
        previous = self._means[-2] * (len(self._means) - 1) if len(self._means) > 1 else 0.0
        self.losses.append(mean * len(self._means) - previous)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="default")
    parser.add_argument("--model", default="shared_bottom")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()

    strategy = make_strategy(args.strategy)
    features, labels, layout = funnel_arrays(GLOBAL_BATCH * args.steps, seed=1)
    keras.utils.set_random_seed(7)
    with strategy.scope():
        model = registry.build(args.model, layout, TASKS, {"embedding_dim": 8})
    model.adapt_target(labels["revenue"])
    data = tf.data.Dataset.from_tensor_slices((features, labels)).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    # Every worker reads the whole dataset and keeps its share of each global batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = data.with_options(options)
    first = next(iter(strategy.experimental_distribute_dataset(data)))
    local_rows = [int(batch[1]["click"].shape[0])
                  for batch in strategy.experimental_local_results(first)]
    recorder = StepLosses()
    model.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0,
              callbacks=[recorder, *model.training_callbacks()])
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "local_rows": local_rows,
                      "losses": recorder.losses}))


if __name__ == "__main__":
    main()
