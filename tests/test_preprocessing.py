"""The spec-driven preprocessing_fn under real tf.Transform, against hand-computed values."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from transform.preprocessing import make_preprocessing_fn
from transform.spec import CATEGORICAL, NUMERIC, DatasetSpec, FeatureSpec, TaskChain

SPEC = DatasetSpec(
    name="tiny",
    features=(FeatureSpec("country", CATEGORICAL, oov_buckets=2),
              FeatureSpec("slot", CATEGORICAL, dtype="int"),
              FeatureSpec("age", NUMERIC),
              FeatureSpec("price", NUMERIC, scaling="log_z_score"),
              FeatureSpec("rank", NUMERIC, scaling="min_max")),
    chain=TaskChain(steps=("click",), core_target="amount"),
)
ROWS = [
    {"country": b"de", "slot": 7, "age": 1.0, "price": 0.0, "rank": 2.0, "click": 1, "amount": 3.0},
    {"country": b"de", "slot": 7, "age": 2.0, "price": math.e - 1, "rank": 4.0, "click": 0, "amount": 0.0},
    {"country": b"fr", "slot": 9, "age": 3.0, "price": math.e ** 2 - 1, "rank": 6.0, "click": 1, "amount": 1.5},
]
FEATURE_SPEC = {
    "country": tf.io.FixedLenFeature([], tf.string), "slot": tf.io.FixedLenFeature([], tf.int64),
    "age": tf.io.FixedLenFeature([], tf.float32), "price": tf.io.FixedLenFeature([], tf.float32),
    "rank": tf.io.FixedLenFeature([], tf.float32), "click": tf.io.FixedLenFeature([], tf.int64),
    "amount": tf.io.FixedLenFeature([], tf.float32),
}


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(FEATURE_SPEC))
    with tft_beam.Context(temp_dir=str(tmp_path_factory.mktemp("tft"))):
        (rows, _), transform_fn = (ROWS, metadata) | tft_beam.AnalyzeAndTransformDataset(
            make_preprocessing_fn(SPEC))
    return rows, transform_fn


def column(rows, name):
    return np.array([row[name] for row in rows])


def test_vocabularies_order_by_frequency(transformed):
    rows, _ = transformed
    # 'de' is the most frequent token -> id 0; 'fr' -> id 1.
    np.testing.assert_array_equal(column(rows, "country"), [0, 0, 1])
    np.testing.assert_array_equal(column(rows, "slot"), [0, 0, 1])  # ints are tokens too


def test_numeric_scalings(transformed):
    rows, _ = transformed
    z = np.array([-1.0, 0.0, 1.0]) / np.sqrt(2.0 / 3.0)  # (x - 2) / population std of [1, 2, 3]
    np.testing.assert_allclose(column(rows, "age"), z, rtol=1e-5)
    np.testing.assert_allclose(column(rows, "price"), z, rtol=1e-5)  # log1p gives [0, 1, 2]
    np.testing.assert_allclose(column(rows, "rank"), [0.0, 0.5, 1.0], rtol=1e-6)


def test_labels_are_cast_not_scaled(transformed):
    rows, _ = transformed
    np.testing.assert_array_equal(column(rows, "click"), [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(column(rows, "amount"), [3.0, 0.0, 1.5])


def test_unseen_tokens_hash_into_oov_buckets(transformed, tmp_path):
    _, transform_fn = transformed
    import tensorflow_transform as tft

    transform_fn | tft_beam.WriteTransformFn(str(tmp_path))
    output = tft.TFTransformOutput(str(tmp_path))
    assert output.vocabulary_size_by_name("vocab_country") == 2
    assert output.transformed_feature_spec()["click"].dtype == tf.float32
    assert output.transformed_feature_spec()["country"].dtype == tf.int64
    result = output.transform_raw_features(
        {"country": tf.constant([b"de", b"xx", b"yy"]), "slot": tf.constant([9, 8, 7], tf.int64),
         "age": tf.constant([2.0]), "price": tf.constant([0.0]), "rank": tf.constant([4.0])},
        drop_unused_features=True)
    ids = result["country"].numpy()
    assert ids[0] == 0 and all(2 <= i < 4 for i in ids[1:])  # 2 vocab ids + 2 OOV buckets
    np.testing.assert_array_equal(result["slot"].numpy(), [1, 2, 0])  # 8 is OOV -> id 2
