"""The tf.Transform `preprocessing_fn`, driven entirely by the dataset spec.

Categorical columns become vocabulary ids (int64; tokens outside the
vocabulary hash into `oov_buckets` extra ids), numeric columns are scaled per
their spec, and labels are cast to float32. Output names equal input names, so
a column is named once, in the spec.

The spec arrives as JSON in `custom_config["spec"]` (TFX passes custom_config
to the Transform component's preprocessing_fn).
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from transform.spec import DatasetSpec, FeatureSpec


def vocabulary_name(feature_name: str) -> str:
    """File name of a feature's vocabulary inside the transform output."""
    return f"vocab_{feature_name}"


def _dense(tensor, default):
    """Raw inputs are (batch,) dense tensors; tolerate sparse (batch, 1) too."""
    if isinstance(tensor, tf.SparseTensor):
        tensor = tf.sparse.to_dense(tensor, default_value=default)
    if tensor.shape.rank == 2:
        tensor = tf.squeeze(tensor, axis=1)
    return tensor


def transform_feature(feature: FeatureSpec, tensor):
    """Maps one raw feature column (batch,) to its model input (batch,)."""
    if feature.is_categorical:
        tokens = _dense(tensor, b"" if feature.dtype == "string" else 0)
        if tokens.dtype != tf.string:
            tokens = tf.strings.as_string(tokens)
        return tft.compute_and_apply_vocabulary(
            tokens, top_k=feature.vocab_top_k, num_oov_buckets=feature.oov_buckets,
            vocab_filename=vocabulary_name(feature.name))
    values = tf.cast(_dense(tensor, feature.default), tf.float32)
    if feature.scaling == "z_score":
        return tft.scale_to_z_score(values)
    if feature.scaling == "log_z_score":
        return tft.scale_to_z_score(tf.math.log1p(tf.maximum(values, 0.0)))
    if feature.scaling == "min_max":
        return tft.scale_to_0_1(values)
    return values


def make_preprocessing_fn(spec: DatasetSpec):
    """Returns a preprocessing_fn for `spec` (for tests and direct TFT use)."""

    def preprocessing_fn(inputs):
        outputs = {f.name: transform_feature(f, inputs[f.name]) for f in spec.features}
        for label in spec.label_columns:
            outputs[label] = tf.cast(_dense(inputs[label], 0), tf.float32)
        return outputs

    return preprocessing_fn


def preprocessing_fn(inputs, custom_config):
    """Entry point named in the TFX Transform component."""
    return make_preprocessing_fn(DatasetSpec.from_json(custom_config["spec"]))(inputs)
