"""The Trainer component's `run_fn`: build a model by name, fit, export.

custom_config keys (set by pipeline.create_pipeline):
  spec        dataset spec JSON
  model       registry name of the model
  hparams     dict of the model's hyper-parameters
  batch_size  training batch size
  seed        random seed for weights and data order
  strategy    "default", "mirrored" or "multi_worker" (see make_strategy)
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow_transform as tft
from tfx_bsl.public import tfxio

from keras_models import registry
from keras_models.input_options import steady_input
from keras_models.layout import InputLayout, TaskLayout
from serving.export import export_serving_model
from tfx_pipeline.machine import release_free_memory
from transform.preprocessing import vocabulary_name
from transform.spec import DatasetSpec

KERAS_MODEL_FILE = "model.keras"
_LABEL_SAMPLE_BATCHES = 50  # the core head's scales and the output priors
# Training rows the mean recalibration is fitted on (keras_models.recalibration):
# every training row up to 1M (at 1 % a step then has up to 10,000 positives).
RECALIBRATION_ROWS = 1_000_000
STRATEGIES = ("default", "mirrored", "multi_worker")


def make_strategy(name: str):
    """The tf.distribute strategy the model is built and trained under.

    default       whatever TensorFlow provides (one device)
    mirrored      MirroredStrategy: every local GPU of this host (or its CPU); the
                  batch size is the global batch, split evenly over the replicas
    multi_worker  MultiWorkerMirroredStrategy: every worker named in TF_CONFIG,
                  each with its local GPUs; all workers run run_fn (see docs/distributed.md)
    """
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def is_chief(strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster: the
    chief task, or worker 0 when the cluster has no chief, writes the model."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def input_layout_for(spec: DatasetSpec, tft_output) -> InputLayout:
    """Model inputs from the spec, with vocabulary sizes from the Transform output."""
    categorical = {
        f.name: tft_output.vocabulary_size_by_name(vocabulary_name(f.name)) + f.oov_buckets
        for f in spec.features if f.is_categorical}
    numeric = tuple(f.name for f in spec.features if not f.is_categorical)
    return InputLayout(categorical, numeric)


def task_layout_for(spec: DatasetSpec) -> TaskLayout:
    chain = spec.chain
    return TaskLayout(chain.steps, chain.core_target, chain.target_transform,
                      chain.resolved_core_head)


def make_dataset(file_pattern, data_accessor, tft_output, spec: DatasetSpec, batch_size: int,
                 seed: int | None = None, num_epochs: int | None = None):
    """Transformed examples as (features, labels) batches, repeated forever (or
    `num_epochs` times), with tf.data autotuning off (keras_models.input_options says why)."""
    options = tfxio.TensorFlowDatasetOptions(batch_size=batch_size, shuffle_seed=seed,
                                             num_epochs=num_epochs)
    dataset = data_accessor.tf_dataset_factory(
        file_pattern, options, tft_output.transformed_metadata.schema)
    labels = spec.label_columns
    return steady_input(dataset.map(lambda batch: (
        {k: v for k, v in batch.items() if k not in labels},
        {k: batch[k] for k in labels})))


def first_rows(dataset, limit: int) -> tuple[dict, dict]:
    """Up to `limit` rows of a finite (features, labels) dataset as two dicts of
    NumPy arrays, each with the dataset's shape but `rows` on the batch axis."""
    features, labels, rows = [], [], 0
    for batch_features, batch_labels in dataset:
        features.append(batch_features)
        labels.append(batch_labels)
        rows += int(next(iter(batch_labels.values())).shape[0])
        if rows >= limit:
            break

    def joined(batches):
        return {name: np.concatenate([np.asarray(b[name]) for b in batches])[:limit]
                for name in batches[0]}

    return joined(features), joined(labels)


def run_fn(fn_args):
    config = fn_args.custom_config
    spec = DatasetSpec.from_json(config["spec"])
    seed = int(config.get("seed", 0))
    keras.utils.set_random_seed(seed)
    tft_output = tft.TFTransformOutput(fn_args.transform_output)
    strategy = make_strategy(config.get("strategy", "default"))
    with strategy.scope():
        model = registry.build(config["model"], input_layout_for(spec, tft_output),
                               task_layout_for(spec), config.get("hparams") or {})
    batch_size = int(config.get("batch_size", 256))
    train = make_dataset(fn_args.train_files, fn_args.data_accessor, tft_output, spec,
                         batch_size, seed)
    evaluation = make_dataset(fn_args.eval_files, fn_args.data_accessor, tft_output, spec,
                              batch_size)
    sample = [labels for _, labels in train.take(_LABEL_SAMPLE_BATCHES)]
    model.adapt_to_labels({name: np.concatenate([np.reshape(b[name], -1) for b in sample])
                           for name in spec.label_columns})
    model.fit(train, steps_per_epoch=fn_args.train_steps, epochs=1,
              validation_data=evaluation, validation_steps=fn_args.eval_steps, verbose=2,
              callbacks=model.training_callbacks())
    features, labels = first_rows(
        make_dataset(fn_args.train_files, fn_args.data_accessor, tft_output, spec, 8192,
                     seed, num_epochs=1), RECALIBRATION_ROWS)
    fitted = model.recalibrate(features, labels)
    if fitted is not None:
        shifts = ", ".join(f"{step} {shift:+.3f}" for step, shift in zip(spec.chain.steps,
                                                                         fitted.shifts))
        print(f"recalibrated on {len(labels[spec.label_columns[0]]):,} training rows: logit "
              f"shifts {shifts}; core scale {fitted.core_scale:.3f}", flush=True)
    # Under multi_worker every worker must take part in saving; only the chief's copy
    # is kept (the others write to a scratch directory that is removed).
    chief = is_chief(strategy)
    run_dir = fn_args.model_run_dir if chief else tempfile.mkdtemp(prefix="worker-model-run-")
    serving_dir = (fn_args.serving_model_dir if chief
                   else tempfile.mkdtemp(prefix="worker-serving-model-"))
    os.makedirs(run_dir, exist_ok=True)
    model.save(os.path.join(run_dir, KERAS_MODEL_FILE))
    export_serving_model(model, tft_output, spec, serving_dir)
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(serving_dir, ignore_errors=True)
    # Under LocalDagRunner the Evaluator runs next in this same process.
    del model, train, evaluation, features, labels
    release_free_memory()
