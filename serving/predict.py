"""Print predictions of an exported model for the rows of a raw CSV file.

    python -m serving.predict --model-dir serving_models/shared_bottom --csv rows.csv

--model-dir is either one SavedModel version or a base directory of numeric
versions (the newest is used, as TF Serving does). Rows are checked against the
dataset spec stored in the model (assets.extra/dataset_spec.json), converted to
tf.Examples with the same typing the pipeline used, and sent through the
`serving_default` signature. Label columns, if present, are ignored. Output is
CSV on stdout: the row's line number, then one column per model output.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def resolve_version_dir(model_dir: str) -> str:
    """A SavedModel directory: `model_dir` itself or its newest numeric version."""
    if os.path.exists(os.path.join(model_dir, "saved_model.pb")):
        return model_dir
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"{model_dir}: no such model directory")
    from serving.servables import version_directories

    versions = version_directories(model_dir)
    if not versions:
        raise FileNotFoundError(f"{model_dir}: neither a SavedModel nor a directory of versions")
    return os.path.join(model_dir, versions[-1][1])


def load_spec(version_dir: str):
    from serving.export import SPEC_ASSET
    from transform.spec import DatasetSpec

    path = os.path.join(version_dir, "assets.extra", SPEC_ASSET)
    with open(path, encoding="utf-8") as handle:
        return DatasetSpec.from_json(handle.read())


def read_feature_columns(csv_path: str, spec) -> tuple[dict, np.ndarray]:
    """Checks the feature columns of `csv_path` against the spec.

    Returns (feature name -> typed numpy column, line number of each row).
    """
    from transform.ingest import check_table, read_text_table

    frame = read_text_table(csv_path)
    # Labels play no part in a request: replace them so only features are checked.
    for label in spec.label_columns:
        frame[label] = "0"
    columns, _, _ = check_table(frame, spec, source=csv_path, bad_rows="error")
    return {name: columns[name] for name in spec.feature_names}, np.arange(len(frame)) + 2


def serialize_rows(csv_path: str, spec) -> tuple[list[bytes], np.ndarray]:
    """Checks feature columns of `csv_path`; returns serialized tf.Examples and line numbers."""
    import pyarrow as pa
    from tfx_bsl.coders import example_coder

    from transform.ingest import arrow_column

    columns, lines = read_feature_columns(csv_path, spec)
    batch = pa.RecordBatch.from_arrays([arrow_column(v) for v in columns.values()], list(columns))
    return example_coder.RecordBatchToExamples(batch), lines


def predict(version_dir: str, serialized: list[bytes]) -> dict[str, np.ndarray]:
    import tensorflow as tf

    loaded = tf.saved_model.load(version_dir)
    outputs = loaded.signatures["serving_default"](examples=tf.constant(serialized))
    return {name: tensor.numpy() for name, tensor in outputs.items()}


def main(argv=None, prog: str = "python -m serving.predict") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--csv", required=True, help="rows with the raw feature columns")
    args = parser.parse_args(argv)
    try:
        version_dir = resolve_version_dir(args.model_dir)
        serialized, lines = serialize_rows(args.csv, load_spec(version_dir))
        outputs = predict(version_dir, serialized)
    except Exception as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    names = sorted(outputs)
    print(",".join(["line"] + names))
    for i, line in enumerate(lines):
        print(",".join([str(line)] + [f"{outputs[n][i]:.6g}" for n in names]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
