"""A component that adds TF Serving warmup requests to the trained model.

The Trainer sees transformed examples only, while warmup requests must carry
raw features, as clients send them. This component takes the Trainer's model
and the raw examples (the imported Examples), and outputs a copy of the model whose
assets.extra/ holds warmup requests built from the eval split (see
serving.warmup). The Evaluator judges, and the Pusher pushes, that copy.
"""

import os

import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Examples, Model
from tfx.utils import io_utils

from serving.warmup import PREDICT_BATCH_SIZES, write_warmup

SERVING_FORMAT = "Format-Serving"   # where TFX's Trainer puts the SavedModel


def read_split_records(examples_uri: str, split: str, limit: int | None = None) -> list[bytes]:
    """Serialized records of one split of an Examples artifact (GZIP TFRecords, as
    ingest and ExampleGen write them under <uri>/Split-<split>/); the first `limit`, or all."""
    split_dir = os.path.join(examples_uri, f"Split-{split}")
    files = sorted(tf.io.gfile.glob(os.path.join(split_dir, "*")))
    if not files:
        raise FileNotFoundError(f"no '{split}' examples under {split_dir}")
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    if limit is not None:
        dataset = dataset.take(limit)
    return [record.numpy() for record in dataset]


@component
def ServingWarmup(model: InputArtifact[Model], examples: InputArtifact[Examples],
                  warm_model: OutputArtifact[Model], split: Parameter[str] = "eval") -> None:
    source = os.path.join(model.uri, SERVING_FORMAT)
    target = os.path.join(warm_model.uri, SERVING_FORMAT)
    io_utils.copy_dir(source, target)
    write_warmup(target, read_split_records(examples.uri, split, max(PREDICT_BATCH_SIZES)))
