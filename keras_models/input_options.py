"""tf.data options for datasets fed to `fit` and `evaluate`.

tf.data's autotuner (on by default) runs a thread per iterator that re-tunes
in rounds, from every 10 ms up to every 60 s (observed: a period doubling from
10 ms). Deleting such an iterator
sometimes waits for the autotuner's next round, so the call that created it
(`fit`, `evaluate`) returns on that schedule: 10 ms x (2^k - 1) after the
iterator was made, however long the steps took. On a 2-core AMD EPYC this made
training epochs last exactly 2.55, 5.11, 10.23 or 20.47 s whatever the steps
took (benchmarks/train_throughput.py; docs/performance.md has the evidence).
Training and validation inputs here are prefetched batches of fixed size whose
parallelism needs no tuning, so the autotuner is switched off for them.
"""

from __future__ import annotations

import tensorflow as tf


def steady_input(data):
    """`data` with tf.data autotuning off when it is a tf.data.Dataset; else unchanged.

    With autotuning off, an AUTOTUNE parallelism falls back to tf.data's default
    (its thread pool's size, the core count)."""
    if not isinstance(data, tf.data.Dataset):
        return data
    options = tf.data.Options()
    options.autotune.enabled = False
    return data.with_options(options)
