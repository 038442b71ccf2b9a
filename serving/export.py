"""Exports a trained Keras 3 model as a TF Serving SavedModel.

The Transform graph's layer is a tf_keras layer and cannot live inside a
Keras 3 model, so both are held by a `tf.Module` whose `tf.function`
signatures chain them:

  serving_default(examples: string (batch,)) -> {output name: (batch,)}
      serialized tf.Example with raw feature values (no labels needed)
      -> tf.io.parse_example -> Transform layer -> model (inference mode)

Only the contract outputs (see keras_models.layout) are returned. The graph is
inference-only: no training step, no optimizer. The dataset spec is written to
assets.extra/ so tools can build requests from raw rows without the pipeline.
"""

from __future__ import annotations

import os

import tensorflow as tf

SPEC_ASSET = "dataset_spec.json"
EXAMPLES_INPUT = "examples"


class ServingModule(tf.Module):
    """Raw tf.Examples in, named predictions out."""

    def __init__(self, model, tft_output, feature_names, output_keys):
        super().__init__()
        self.model = model
        self.tft_layer = tft_output.transform_features_layer()
        raw_spec = tft_output.raw_feature_spec()
        self._parse_spec = {name: raw_spec[name] for name in feature_names}
        self._model_inputs = tuple(model.input_layout.field_names)
        self._output_keys = tuple(output_keys)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve_examples(self, examples):
        raw = tf.io.parse_example(examples, self._parse_spec)
        transformed = self.tft_layer(raw)
        outputs = self.model({k: transformed[k] for k in self._model_inputs}, training=False)
        return {key: tf.identity(outputs[key], name=key) for key in self._output_keys}


def export_serving_model(model, tft_output, spec, export_dir: str) -> str:
    """Writes the SavedModel to `export_dir`; returns the path."""
    module = ServingModule(model, tft_output, spec.feature_names, model.task_layout.output_keys)
    signatures = {"serving_default": module.serve_examples.get_concrete_function()}
    tf.saved_model.save(module, export_dir, signatures=signatures)
    extra = os.path.join(export_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, SPEC_ASSET), "w") as handle:
        handle.write(spec.to_json())
    return export_dir
