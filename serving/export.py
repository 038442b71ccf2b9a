"""Exports a trained Keras 3 model as a TF Serving SavedModel.

The Transform graph's layer is a tf_keras layer and cannot live inside a
Keras 3 model, so both are held by a `tf.Module` whose `tf.function`
signatures chain them. Signatures (all inference-only, batch-major):

  serving_default(examples: string (batch,)) -> {contract output: (batch,)}
      serialized tf.Example with raw feature values (labels not needed)
      -> tf.io.parse_example -> Transform layer -> model (training=False)
  predict_raw(<feature>: (batch,) per raw feature) -> the same outputs
      one tensor per raw feature (string, int64 or float32, as in the
      schema), for REST/JSON callers who do not build tf.Examples
  classify_<step>(inputs: string (batch,)) -> scores (batch, 2), classes (batch, 2)
      for TF Serving's Classify API: classes "0"/"1", scores 1-p and p
  regress_<target>(inputs: string (batch,)) -> outputs (batch,)
      for TF Serving's Regress API: the core target on its original scale
  evaluation(examples) -> contract outputs plus the evaluation outputs
      (keras_models.layout.TaskLayout.evaluation_outputs) that TFMA reads

Contract outputs are keras_models.layout.TaskLayout.output_keys. The dataset
spec is written to assets.extra/ so tools can build requests from raw rows.

TF 2's SavedModel writer marks every signature as a Predict signature; TF
Serving's Classify and Regress APIs refuse those, so the method names of the
classify/regress signatures are set in saved_model.pb after saving (and the
fingerprint is written anew).
"""

from __future__ import annotations

import os

import tensorflow as tf

from keras_models.layout import PROBABILITY_EPSILON, pred_key, prob_key

SPEC_ASSET = "dataset_spec.json"
EXAMPLES_INPUT = "examples"
SERVING_SIGNATURE = "serving_default"
RAW_SIGNATURE = "predict_raw"
EVAL_SIGNATURE = "evaluation"
CLASSIFY_INPUT = "inputs"           # TF Serving's fixed input name for Classify/Regress
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


def classify_signature(step: str) -> str:
    return f"classify_{step}"


def regress_signature(target: str) -> str:
    return f"regress_{target}"


def _examples_spec(name: str) -> list:
    return [tf.TensorSpec([None], tf.string, name=name)]


class _Untracked:
    """Holds an object without tf.Module tracking it (and saving all it references)."""

    def __init__(self, value):
        self.value = value


class ServingModule(tf.Module):
    """Raw features in (as tf.Examples or tensors), named predictions out."""

    def __init__(self, model, tft_output, feature_names, evaluation_outputs=(), xla=True):
        super().__init__()
        # Only the model's variables are saved: tracking the Keras model itself would
        # also save its optimizer (Adam's slots triple the size) into a serving model.
        self._keras_model = _Untracked(model)
        self.model_variables = list(model.variables)
        # The serving signatures run the model through XLA: these models are many tiny
        # ops, and fusing them halves APEM's latency. XLA compiles once per batch size.
        self._compiled_model = _Untracked(tf.function(
            lambda inputs: model(inputs, training=False), jit_compile=xla))
        self.tft_layer = tft_output.transform_features_layer()
        raw_spec = tft_output.raw_feature_spec()
        self._parse_spec = {name: raw_spec[name] for name in feature_names}
        self._model_inputs = tuple(model.input_layout.field_names)
        self._output_keys = tuple(model.task_layout.output_keys)
        self._evaluation_outputs = tuple(evaluation_outputs)

    def _predict_raw(self, raw, compiled: bool = True):
        # Features parsed with a FixedLenFeature of shape [1] arrive as (batch, 1).
        raw = {name: tf.reshape(value, [-1] + list(self._parse_spec[name].shape))
               for name, value in raw.items()}
        transformed = self.tft_layer(raw)
        inputs = {k: transformed[k] for k in self._model_inputs}
        if compiled:
            return self._compiled_model.value(inputs)
        return self._keras_model.value(inputs, training=False)

    def _predict(self, examples, compiled: bool = True):
        return self._predict_raw(tf.io.parse_example(examples, self._parse_spec), compiled)

    def _contract(self, outputs) -> dict:
        return {key: tf.identity(outputs[key], name=key) for key in self._output_keys}

    @tf.function(input_signature=_examples_spec(EXAMPLES_INPUT))
    def serve_examples(self, examples):
        return self._contract(self._predict(examples))

    def raw_function(self):
        """predict_raw: one (batch,) tensor per raw feature."""
        specs = {name: tf.TensorSpec([None], spec.dtype, name=name)
                 for name, spec in self._parse_spec.items()}
        return tf.function(lambda **raw: self._contract(self._predict_raw(raw))) \
            .get_concrete_function(**specs)

    def classify_function(self, step: str):
        key = prob_key(step)

        def classify(inputs):
            probability = self._predict(inputs)[key]
            scores = tf.stack([1.0 - probability, probability], axis=1)
            classes = tf.broadcast_to(tf.constant([b"0", b"1"]), tf.shape(scores))
            return {"scores": scores, "classes": classes}

        return tf.function(classify, input_signature=_examples_spec(CLASSIFY_INPUT)) \
            .get_concrete_function()

    def regress_function(self, target: str):
        key = pred_key(target)
        return tf.function(lambda inputs: {"outputs": self._predict(inputs)[key]},
                           input_signature=_examples_spec(CLASSIFY_INPUT)).get_concrete_function()

    @tf.function(input_signature=_examples_spec(EXAMPLES_INPUT))
    def evaluate_examples(self, examples):
        """Contract outputs plus evaluation outputs, each of shape (batch,).

        Not compiled with XLA: TFMA sends batches of many different sizes.
        """
        outputs = self._predict(examples, compiled=False)
        result = {key: outputs[key] for key in self._output_keys}
        for output in self._evaluation_outputs:
            value = outputs[output.prediction]
            if output.divide_by:
                # P(step | previous) = P(step) / P(previous) and E[y | last step] =
                # E[y] / P(last step); the marginals are at least PROBABILITY_EPSILON.
                value = tf.math.divide_no_nan(value, outputs[output.divide_by])
                if output.kind == "binary":
                    # Kept inside (0, 1): models with independent marginal towers can
                    # predict P(step) > P(previous), and log loss is undefined at 0 or 1.
                    value = tf.clip_by_value(value, PROBABILITY_EPSILON,
                                             1.0 - PROBABILITY_EPSILON)
            result[output.name] = value
        return {key: tf.identity(value, name=key) for key, value in result.items()}


def set_method_names(export_dir: str, methods: dict[str, str]) -> None:
    """Sets signature method names in saved_model.pb and rewrites fingerprint.pb."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    path = os.path.join(export_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as handle:
        saved_model.ParseFromString(handle.read())
    for meta_graph in saved_model.meta_graphs:
        for name, method in methods.items():
            meta_graph.signature_def[name].method_name = method
    with tf.io.gfile.GFile(path, "wb") as handle:
        handle.write(saved_model.SerializeToString())
    with tf.io.gfile.GFile(os.path.join(export_dir, "fingerprint.pb"), "wb") as handle:
        handle.write(fingerprinting.CreateFingerprintDef(export_dir))


def export_serving_model(model, tft_output, spec, export_dir: str, xla: bool = True) -> str:
    """Writes the SavedModel to `export_dir`; returns the path.

    With `xla`, the serving signatures run the model with jit_compile (TF Serving
    on CPU then needs --xla_cpu_compilation_enabled=true).
    """
    layout = model.task_layout
    module = ServingModule(model, tft_output, spec.feature_names, layout.evaluation_outputs, xla)
    signatures = {SERVING_SIGNATURE: module.serve_examples.get_concrete_function(),
                  RAW_SIGNATURE: module.raw_function(),
                  EVAL_SIGNATURE: module.evaluate_examples.get_concrete_function()}
    methods = {}
    for step in layout.steps:
        signatures[classify_signature(step)] = module.classify_function(step)
        methods[classify_signature(step)] = CLASSIFY_METHOD
    if layout.core_target:
        signatures[regress_signature(layout.core_target)] = module.regress_function(
            layout.core_target)
        methods[regress_signature(layout.core_target)] = REGRESS_METHOD
    tf.saved_model.save(module, export_dir, signatures=signatures)
    set_method_names(export_dir, methods)
    extra = os.path.join(export_dir, "assets.extra")
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, SPEC_ASSET), "w") as handle:
        handle.write(spec.to_json())
    return export_dir
