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
import sys

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
    """Shape and rates of the generated funnel.

    `seed` fixes the world: the latent structure and the intercepts that give
    the requested rates. `sample_seed` (default: `seed`) fixes which impressions
    are drawn from it, so fresh rows from the same world are one flag away.
    """

    rows: int = 20000
    seed: int = 0
    sample_seed: int | None = None
    click_rate: float = 0.08        # P(click) over impressions
    conversion_rate: float = 0.15   # P(conversion | click)
    segments: int = 12
    categories: int = 40
    items: int = 2000
    max_position: int = 20


_CALIBRATION_ROWS = 200_000
_DEVICES = ("mobile", "desktop", "tablet")
_DEVICE_SHARE = (0.6, 0.3, 0.1)
_DEVICE_CLICK = np.array([0.2, 0.0, -0.3])
_DEVICE_CONVERSION = np.array([-0.3, 0.4, 0.0])
_QUANTITY_RATE = 0.3          # quantity = 1 + Poisson(rate * activity)
_REVENUE_NOISE_SIGMA = 0.3    # revenue = price * quantity * lognormal(0, sigma)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _solve_intercept(logits: np.ndarray, target_rate: float, weights=None) -> float:
    """Intercept b with the (weighted) mean of sigmoid(logits + b) equal to target_rate."""
    low, high = -30.0, 30.0
    for _ in range(60):
        mid = (low + high) / 2
        rate = np.average(_sigmoid(logits + mid), weights=weights)
        low, high = (mid, high) if rate < target_rate else (low, mid)
    return (low + high) / 2


@dataclasses.dataclass(frozen=True)
class _World:
    """The latent structure behind every impression of one seed."""

    segment_vectors: np.ndarray   # (segments, 4)
    category_vectors: np.ndarray  # (categories, 4)
    item_category: np.ndarray     # (items,)
    item_quality: np.ndarray      # (items,)
    item_base_price: np.ndarray   # (items,)
    click_intercept: float = 0.0
    conversion_intercept: float = 0.0


def _draw(world: _World, config: FunnelConfig, n: int, rng) -> dict:
    """Features and the two logits (intercepts included) for n impressions."""
    segment = rng.integers(0, len(world.segment_vectors), n)
    activity = rng.gamma(2.0, 1.5, n)
    item = np.minimum(rng.zipf(1.3, n) - 1, config.items - 1)
    price = world.item_base_price[item] * np.exp(rng.normal(0, 0.1, n))
    device = rng.choice(len(_DEVICES), n, p=_DEVICE_SHARE)
    hour = rng.integers(0, 24, n)
    position = rng.integers(1, config.max_position + 1, n)
    return _with_logits(world, dict(segment=segment, activity=activity, item=item, price=price,
                                    device=device, hour=hour, position=position))


def _with_logits(world: _World, rows: dict) -> dict:
    """Adds the item category and the click and conversion logits to drawn features."""
    segment, activity, item, price = rows["segment"], rows["activity"], rows["item"], rows["price"]
    device, hour, position = rows["device"], rows["hour"], rows["position"]
    category = world.item_category[item]
    affinity = np.einsum("nd,nd->n", world.segment_vectors[segment],
                         world.category_vectors[category]) / 2
    evening = np.cos((hour - 20) / 24 * 2 * np.pi)
    click_logit = (world.click_intercept + 0.9 * affinity + world.item_quality[item]
                   - 0.08 * position + _DEVICE_CLICK[device] + 0.3 * evening
                   + 0.3 * np.log1p(activity))
    conversion_logit = (world.conversion_intercept + 0.7 * affinity - 0.5 * (np.log(price) - 3.2)
                        + 0.5 * world.item_quality[item] + _DEVICE_CONVERSION[device]
                        + 0.4 * np.log1p(activity))
    return dict(rows, category=category, click_logit=click_logit,
                conversion_logit=conversion_logit)


def _make_world(config: FunnelConfig) -> _World:
    rng = np.random.default_rng([config.seed, 0])
    world = _World(
        segment_vectors=rng.normal(0, 1, (config.segments, 4)),
        category_vectors=rng.normal(0, 1, (config.categories, 4)),
        item_category=rng.integers(0, config.categories, config.items),
        item_quality=rng.normal(0, 0.6, config.items),
        item_base_price=np.exp(rng.normal(3.2, 0.8, config.items)))
    # Intercepts are solved once on a fixed reference sample, so every draw from
    # this world, of any size, follows the same model.
    reference = _draw(world, config, _CALIBRATION_ROWS, np.random.default_rng([config.seed, 1]))
    click_b = _solve_intercept(reference["click_logit"], config.click_rate)
    conversion_b = _solve_intercept(reference["conversion_logit"], config.conversion_rate,
                                    weights=_sigmoid(reference["click_logit"] + click_b))
    return dataclasses.replace(world, click_intercept=click_b, conversion_intercept=conversion_b)


GENERATE_CHUNK_ROWS = 1_000_000   # rows drawn at a time, so memory does not grow with `rows`


def generate(config: FunnelConfig = FunnelConfig()) -> pd.DataFrame:
    """Returns `config.rows` impressions with features and the outcome chain."""
    return pd.concat(list(generate_chunks(config)), ignore_index=True)


def generate_chunks(config: FunnelConfig = FunnelConfig()):
    """Yields the impressions of `generate(config)` as DataFrames of at most
    GENERATE_CHUNK_ROWS rows. Up to that many rows there is one chunk, drawn from
    the generator [sample_seed, 2]; above it chunk i is drawn from [sample_seed, 2, i],
    so a large table never has to be in memory at once."""
    world = _make_world(config)
    sample_seed = config.seed if config.sample_seed is None else config.sample_seed
    if config.rows <= GENERATE_CHUNK_ROWS:
        yield _sample(world, config, config.rows, np.random.default_rng([sample_seed, 2]))
        return
    for i, start in enumerate(range(0, config.rows, GENERATE_CHUNK_ROWS)):
        n = min(GENERATE_CHUNK_ROWS, config.rows - start)
        yield _sample(world, config, n, np.random.default_rng([sample_seed, 2, i]))


def _sample(world: _World, config: FunnelConfig, n: int, rng) -> pd.DataFrame:
    """n impressions drawn with `rng`: features, click, conversion and revenue."""
    rows = _draw(world, config, n, rng)
    click = rng.random(n) < _sigmoid(rows["click_logit"])
    conversion = click & (rng.random(n) < _sigmoid(rows["conversion_logit"]))
    quantity = 1 + rng.poisson(_QUANTITY_RATE * rows["activity"])
    revenue = np.where(conversion, rows["price"] * quantity
                       * np.exp(rng.normal(0, _REVENUE_NOISE_SIGMA, n)), 0.0)
    return pd.DataFrame({
        "user_segment": [f"seg_{s:02d}" for s in rows["segment"]],
        "user_activity": np.round(rows["activity"], 4),
        "item_id": rows["item"],
        "item_category": [f"cat_{c:02d}" for c in rows["category"]],
        "item_price": np.round(rows["price"], 2),
        "device": np.array(_DEVICES)[rows["device"]],
        "hour": rows["hour"],
        "position": rows["position"],
        "click": click.astype(int),
        "conversion": conversion.astype(int),
        "revenue": np.round(revenue, 2),
    })


def true_expectations(frame: pd.DataFrame, config: FunnelConfig = FunnelConfig()) -> dict:
    """What the generating model says about each row of `frame` (columns as `generate`
    writes them): the true P(click), P(conversion) on the impression space and
    E[revenue], each a float64 array of shape (rows,).

    E[revenue | x] = P(click) P(conversion | click) price (1 + 0.3 activity) e^(0.3^2 / 2):
    quantity is 1 + Poisson(0.3 activity) and the noise log-normal(0, 0.3). The
    features are read as written (activity to 4, price to 2 decimals), so the values
    are exact up to that rounding.
    """
    world = _make_world(config)
    rows = _with_logits(world, dict(
        segment=np.array([int(s.split("_")[1]) for s in frame["user_segment"]]),
        activity=frame["user_activity"].to_numpy(np.float64),
        item=frame["item_id"].to_numpy(np.int64),
        price=frame["item_price"].to_numpy(np.float64),
        device=np.array([_DEVICES.index(d) for d in frame["device"]]),
        hour=frame["hour"].to_numpy(np.int64),
        position=frame["position"].to_numpy(np.int64)))
    click = _sigmoid(rows["click_logit"])
    conversion = click * _sigmoid(rows["conversion_logit"])
    value = (rows["price"] * (1 + _QUANTITY_RATE * rows["activity"])
             * np.exp(_REVENUE_NOISE_SIGMA ** 2 / 2))
    return {"click": click, "conversion": conversion, "revenue": conversion * value}


def write_csv(path: str, config: FunnelConfig = FunnelConfig()) -> str:
    """Writes `generate(config)` to `path` chunk by chunk; returns `path`."""
    for i, chunk in enumerate(generate_chunks(config)):
        chunk.to_csv(path, index=False, mode="w" if i == 0 else "a", header=i == 0)
    return path


def main(argv=None, prog: str = "python -m transform.datasets.synthetic") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Write the synthetic funnel as CSV.")
    parser.add_argument("--rows", type=int, default=FunnelConfig.rows)
    parser.add_argument("--seed", type=int, default=FunnelConfig.seed, help="fixes the world")
    parser.add_argument("--sample-seed", type=int, help="fixes which rows are drawn (default: --seed)")
    parser.add_argument("--click-rate", type=float, default=FunnelConfig.click_rate)
    parser.add_argument("--conversion-rate", type=float, default=FunnelConfig.conversion_rate)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    config = FunnelConfig(rows=args.rows, seed=args.seed, sample_seed=args.sample_seed,
                          click_rate=args.click_rate,
                          conversion_rate=args.conversion_rate)
    write_csv(args.output, config)
    print(f"wrote {args.rows} rows to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
