"""Exports a trained Keras 3 model as a TF Serving SavedModel.

The Transform graph's layer is a tf_keras layer and cannot live inside a
Keras 3 model, so both are held by a `tf.Module` whose `tf.function`
signatures chain them:

  serving_default(examples: string (batch,)) -> {output name: (batch,)}
      serialized tf.Example with raw feature values (no labels needed)
      -> tf.io.parse_example -> Transform layer -> model (inference mode)

  evaluation(examples) -> the same outputs plus the evaluation outputs
      (keras_models.layout.TaskLayout.evaluation_outputs): conditional
      probabilities and copies for narrower sample spaces, which TFMA reads.

Only the contract outputs (see keras_models.layout) are returned by
serving_default. The graph is inference-only: no training step, no optimizer. The dataset spec is written to
assets.extra/ so tools can build requests from raw rows without the pipeline.
"""

from __future__ import annotations

import os

import tensorflow as tf

SPEC_ASSET = "dataset_spec.json"
EXAMPLES_INPUT = "examples"
EVAL_SIGNATURE = "evaluation"
PROBABILITY_EPSILON = 1e-6


class ServingModule(tf.Module):
    """Raw tf.Examples in, named predictions out."""

    def __init__(self, model, tft_output, feature_names, output_keys, evaluation_outputs=()):
        super().__init__()
        self.model = model
        self.tft_layer = tft_output.transform_features_layer()
        raw_spec = tft_output.raw_feature_spec()
        self._parse_spec = {name: raw_spec[name] for name in feature_names}
        self._model_inputs = tuple(model.input_layout.field_names)
        self._output_keys = tuple(output_keys)
        self._evaluation_outputs = tuple(evaluation_outputs)

    def _predict(self, examples):
        raw = tf.io.parse_example(examples, self._parse_spec)
        transformed = self.tft_layer(raw)
        return self.model({k: transformed[k] for k in self._model_inputs}, training=False)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve_examples(self, examples):
        outputs = self._predict(examples)
        return {key: tf.identity(outputs[key], name=key) for key in self._output_keys}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def evaluate_examples(self, examples):
        """Contract outputs plus evaluation outputs, each of shape (batch,)."""
        outputs = self._predict(examples)
        result = {key: outputs[key] for key in self._output_keys}
        for output in self._evaluation_outputs:
            value = outputs[output.prediction]
            if output.divide_by:
                # P(step | previous) = P(step) / P(previous), kept inside (0, 1): models with
                # independent marginal towers can predict P(step) > P(previous), and log loss
                # is undefined at exactly 0 or 1.
                value = tf.clip_by_value(tf.math.divide_no_nan(value, outputs[output.divide_by]),
                                         PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)
            result[output.name] = value
        return {key: tf.identity(value, name=key) for key, value in result.items()}


def export_serving_model(model, tft_output, spec, export_dir: str) -> str:
    """Writes the SavedModel to `export_dir`; returns the path."""
    layout = model.task_layout
    module = ServingModule(model, tft_output, spec.feature_names, layout.output_keys,
                           layout.evaluation_outputs)
    signatures = {"serving_default": module.serve_examples.get_concrete_function(),
                  EVAL_SIGNATURE: module.evaluate_examples.get_concrete_function()}
    tf.saved_model.save(module, export_dir, signatures=signatures)
    extra = os.path.join(export_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, SPEC_ASSET), "w") as handle:
        handle.write(spec.to_json())
    return export_dir
