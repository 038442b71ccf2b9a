"""The synthetic funnel as model-ready arrays, without TFX (for keras_models tests)."""

import numpy as np

from keras_models.layout import InputLayout, TaskLayout
from transform.datasets.synthetic import SPEC, FunnelConfig, generate

TASKS = TaskLayout(SPEC.chain.steps, SPEC.chain.core_target, SPEC.chain.target_transform)


def funnel_arrays(rows: int, seed: int = 0, sample_seed: int | None = None):
    """(features, labels, input layout): ids by factorising, numerics z-scored as the spec says."""
    frame = generate(FunnelConfig(rows=rows, seed=seed, sample_seed=sample_seed))
    features, vocab = {}, {}
    for feature in SPEC.features:
        column = frame[feature.name]
        if feature.is_categorical:
            codes = column.astype(str).astype("category").cat.codes.to_numpy()
            features[feature.name] = codes.astype("int64")
            vocab[feature.name] = int(codes.max()) + 1
        else:
            values = column.to_numpy(dtype="float64")
            if feature.scaling == "log_z_score":
                values = np.log1p(np.maximum(values, 0))
            features[feature.name] = ((values - values.mean()) / values.std()).astype("float32")
    labels = {name: frame[name].to_numpy(dtype="float32") for name in SPEC.label_columns}
    numeric = tuple(f.name for f in SPEC.features if not f.is_categorical)
    return features, labels, InputLayout(vocab, numeric)


def split(arrays: dict, rows: int):
    return ({k: v[:rows] for k, v in arrays.items()}, {k: v[rows:] for k, v in arrays.items()})


def random_batch(layout: InputLayout, n: int = 64, seed: int = 0, steps=("click", "buy"),
                 core_target: str | None = "amount"):
    """Random ids and numbers for `layout`, labels for a chained click -> buy -> amount."""
    rng = np.random.default_rng(seed)
    features = {name: rng.integers(0, size, n) for name, size in layout.categorical.items()}
    features.update({name: rng.normal(size=n).astype("float32") for name in layout.numeric})
    labels, previous = {}, np.ones(n, "float32")
    for step in steps:
        previous = previous * (rng.random(n) < 0.5).astype("float32")
        labels[step] = previous
    if core_target:
        labels[core_target] = (previous * rng.lognormal(2, 1, n)).astype("float32")
    return features, labels
