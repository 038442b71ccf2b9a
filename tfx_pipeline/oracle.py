"""What the synthetic generator's true values score on a run's eval split.

The generator knows each row's true P(click), P(conversion) and E[revenue]
(transform.datasets.synthetic.true_expectations). Their calibration on the eval
rows (sum of true values / sum of labels) says how far this split's realised
labels fall from their expectation: a perfectly calibrated model reads the same
number, so a model's calibration is judged against it, not against 1. With a
few hundred conversions and a heavy-tailed value, the split alone moves the
revenue's figure by 10 % and more (docs/evaluation.md).
"""

from __future__ import annotations

import numpy as np


def parsed_batches(records, raw_spec, batch_size: int = 8192):
    """Serialized tf.Examples parsed with `raw_spec`, `batch_size` at a time."""
    import tensorflow as tf

    for start in range(0, len(records), batch_size):
        yield tf.io.parse_example(tf.constant(records[start:start + batch_size]), raw_spec)


def numpy_column(parts) -> np.ndarray:
    """Parsed (batch, ...) tensors of one column -> (rows,), bytes decoded to str."""
    import tensorflow as tf

    values = np.concatenate([tf.reshape(part, [-1]).numpy() for part in parts])
    return np.char.decode(values.astype(bytes)) if values.dtype == object else values


def read_raw_split(pipeline_root: str, split: str, raw_spec) -> dict[str, np.ndarray]:
    """One split of the run's imported raw examples as raw column -> (rows,)."""
    from tfx_pipeline.results import imported_split_records

    records = imported_split_records(pipeline_root, split)
    parts: dict[str, list] = {name: [] for name in raw_spec}
    for parsed in parsed_batches(records, raw_spec):
        for name, value in parsed.items():
            parts[name].append(value)
    return {name: numpy_column(values) for name, values in parts.items()}


def truth_calibration(pipeline_root: str, config) -> dict[str, float]:
    """Output name -> calibration of the true values on the run's eval split, for a
    run on the synthetic data generated with `config` (a FunnelConfig)."""
    import pandas as pd
    import tensorflow_transform as tft

    from tfx_pipeline.compare import latest
    from transform.datasets import synthetic

    tft_output = tft.TFTransformOutput(latest(f"{pipeline_root}/Transform/transform_graph/*"))
    rows = read_raw_split(pipeline_root, "eval", tft_output.raw_feature_spec())
    truth = synthetic.true_expectations(pd.DataFrame(rows), config)
    outputs = oracle_outputs(truth, synthetic.SPEC.chain)
    return {output: float(values.sum() / rows[label].sum()) if rows[label].sum() > 0
            else float("nan") for label, (output, values) in zip(truth, outputs.items())}


def oracle_outputs(truth: dict, chain) -> dict:
    """The true expectations (label -> (rows,)) in the models' output layout
    (output name -> (rows,)), in the same order."""
    from keras_models.layout import pred_key, prob_key

    return {pred_key(label) if label == chain.core_target else prob_key(label): value
            for label, value in truth.items()}


def truth_line(calibrations: dict[str, float]) -> str:
    shown = ", ".join(f"{output} {value:.3f}" for output, value in calibrations.items())
    return (f"the generator's true values on the same eval rows: calibration {shown} "
            "(a calibrated model reads about these; their distance from 1 is this split's noise)")
