"""A seeded synthetic funnel: impression -> click -> conversion -> revenue.

Each row is one impression. Click and conversion probabilities come from a
known logistic model of user, item and context features (a user-segment x
item-category affinity, item quality, position bias, device and hour effects),
with intercepts solved so the average rates match the requested ones; revenue
is price x quantity with log-normal noise, and non-zero only on conversions.
Because the generating model is known, a learner that beats a constant
predictor is provably using the features.

    python -m transform.datasets.synthetic --rows 1000000 --output funnel.csv
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pandas as pd

from transform.spec import CATEGORICAL, NUMERIC, DatasetSpec, FeatureSpec, SplitSpec, TaskChain

SPEC = DatasetSpec(
    name="synthetic",
    description="Seeded synthetic funnel: click -> conversion -> revenue",
    features=(
        FeatureSpec("user_segment", CATEGORICAL),
        FeatureSpec("user_activity", NUMERIC, scaling="log_z_score"),
        FeatureSpec("item_id", CATEGORICAL, dtype="int", oov_buckets=2),
        FeatureSpec("item_category", CATEGORICAL),
        FeatureSpec("item_price", NUMERIC, scaling="log_z_score"),
        FeatureSpec("device", CATEGORICAL),
        FeatureSpec("hour", CATEGORICAL, dtype="int"),
        FeatureSpec("position", NUMERIC),
    ),
    chain=TaskChain(steps=("click", "conversion"), core_target="revenue",
                    core_target_gated=True, target_transform="log1p_z_score"),
    slices=(("device",), ("user_segment",), ("device", "user_segment")),
    split=SplitSpec(eval_percent=20),
)


@dataclasses.dataclass(frozen=True)
class FunnelConfig:
    """Shape and rates of the generated funnel."""

    rows: int = 20000
    seed: int = 0
    click_rate: float = 0.08        # P(click) over impressions
    conversion_rate: float = 0.15   # P(conversion | click)
    segments: int = 12
    categories: int = 40
    items: int = 2000
    max_position: int = 20


def _solve_intercept(logits: np.ndarray, target_rate: float, weights=None) -> float:
    """Intercept b with mean(sigmoid(logits + b)) == target_rate (bisection)."""
    low, high = -30.0, 30.0
    for _ in range(60):
        mid = (low + high) / 2
        rate = np.average(1 / (1 + np.exp(-(logits + mid))), weights=weights)
        low, high = (mid, high) if rate < target_rate else (low, mid)
    return (low + high) / 2


def generate(config: FunnelConfig = FunnelConfig()) -> pd.DataFrame:
    """Returns `config.rows` impressions with features and the outcome chain."""
    rng = np.random.default_rng(config.seed)
    n = config.rows
    # Latent structure, fixed by the seed.
    segment_vectors = rng.normal(0, 1, (config.segments, 4))
    category_vectors = rng.normal(0, 1, (config.categories, 4))
    item_category = rng.integers(0, config.categories, config.items)
    item_quality = rng.normal(0, 0.6, config.items)
    item_base_price = np.exp(rng.normal(3.2, 0.8, config.items))
    device_click = {"mobile": 0.2, "desktop": 0.0, "tablet": -0.3}
    device_conversion = {"mobile": -0.3, "desktop": 0.4, "tablet": 0.0}

    segment = rng.integers(0, config.segments, n)
    activity = rng.gamma(2.0, 1.5, n)
    item = np.minimum(rng.zipf(1.3, n) - 1, config.items - 1)
    category = item_category[item]
    price = item_base_price[item] * np.exp(rng.normal(0, 0.1, n))
    device = rng.choice(list(device_click), n, p=[0.6, 0.3, 0.1])
    hour = rng.integers(0, 24, n)
    position = rng.integers(1, config.max_position + 1, n)

    affinity = np.einsum("nd,nd->n", segment_vectors[segment], category_vectors[category]) / 2
    evening = np.cos((hour - 20) / 24 * 2 * np.pi)
    click_logit = (0.9 * affinity + item_quality[item] - 0.08 * position
                   + np.vectorize(device_click.get)(device) + 0.3 * evening
                   + 0.3 * np.log1p(activity))
    click_logit += _solve_intercept(click_logit, config.click_rate)
    click = rng.random(n) < 1 / (1 + np.exp(-click_logit))

    conversion_logit = (0.7 * affinity - 0.5 * (np.log(price) - 3.2) + 0.5 * item_quality[item]
                        + np.vectorize(device_conversion.get)(device) + 0.4 * np.log1p(activity))
    conversion_logit += _solve_intercept(conversion_logit, config.conversion_rate, weights=click)
    conversion = click & (rng.random(n) < 1 / (1 + np.exp(-conversion_logit)))

    quantity = 1 + rng.poisson(0.3 * activity)
    revenue = np.where(conversion, price * quantity * np.exp(rng.normal(0, 0.3, n)), 0.0)

    return pd.DataFrame({
        "user_segment": [f"seg_{s:02d}" for s in segment],
        "user_activity": np.round(activity, 4),
        "item_id": item,
        "item_category": [f"cat_{c:02d}" for c in category],
        "item_price": np.round(price, 2),
        "device": device,
        "hour": hour,
        "position": position,
        "click": click.astype(int),
        "conversion": conversion.astype(int),
        "revenue": np.round(revenue, 2),
    })


def write_csv(path: str, config: FunnelConfig = FunnelConfig()) -> str:
    generate(config).to_csv(path, index=False)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the synthetic funnel as CSV.")
    parser.add_argument("--rows", type=int, default=FunnelConfig.rows)
    parser.add_argument("--seed", type=int, default=FunnelConfig.seed)
    parser.add_argument("--click-rate", type=float, default=FunnelConfig.click_rate)
    parser.add_argument("--conversion-rate", type=float, default=FunnelConfig.conversion_rate)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    config = FunnelConfig(rows=args.rows, seed=args.seed, click_rate=args.click_rate,
                          conversion_rate=args.conversion_rate)
    write_csv(args.output, config)
    print(f"wrote {args.rows} rows to {args.output}")


if __name__ == "__main__":
    main()
