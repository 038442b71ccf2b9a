"""How noisy a revenue calibration figure is at a given demo size.

The synthetic generator's revenue is heavy-tailed: about 1 % of impressions
convert, and the value is spread about as widely as its mean. A split's
realised mean revenue therefore has a relative standard deviation of
CV / sqrt(rows), CV being the per-row coefficient of variation. A model
recalibrated on the training rows (keras_models.recalibration) and scored on
the eval rows inherits both splits' noise:

    sd(calibration) ~ CV * sqrt(1 / eval_rows + 1 / train_rows)

This script measures CV on `--sample-rows` freshly generated rows of the
default world and prints, for each size in `--rows`, that sd and the chance
that a perfectly calibrated model reads within 0.9-1.1 (normal approximation),
with the pipeline's 20 % eval split. The Makefile's DEMO_ROWS is chosen from it.

    scripts/run python benchmarks/revenue_noise.py [--rows 100000,300000,500000,1000000]
"""

from __future__ import annotations

import argparse
import math
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from transform.datasets.synthetic import SPEC, FunnelConfig, generate  # noqa: E402


def calibration_spread(cv: float, rows: int, eval_share: float) -> tuple[float, float]:
    """(sd of a calibrated model's eval calibration, P(0.9 <= it <= 1.1))."""
    sd = cv * math.sqrt(1 / (eval_share * rows) + 1 / ((1 - eval_share) * rows))
    return sd, math.erf(0.1 / (sd * math.sqrt(2)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="100000,300000,500000,1000000",
                        help="demo sizes to report, comma-separated")
    parser.add_argument("--sample-rows", type=int, default=2_000_000,
                        help="rows generated to measure the per-row spread")
    parser.add_argument("--sample-seed", type=int, default=7,
                        help="which impressions are drawn (the world is seed 0, the demo's)")
    args = parser.parse_args(argv)
    try:
        sizes = [int(size) for size in args.rows.split(",")]
    except ValueError:
        parser.error(f"--rows takes whole numbers separated by commas, not {args.rows!r}")

    print(f"generating {args.sample_rows:,} rows ...", file=sys.stderr, flush=True)
    frame = generate(FunnelConfig(rows=args.sample_rows, seed=0, sample_seed=args.sample_seed))
    revenue = frame[SPEC.chain.core_target].to_numpy()
    converted = revenue[revenue > 0]
    cv = revenue.std() / revenue.mean()
    print(f"per-row revenue CV {cv:.2f}; conversion rate {frame['conversion'].mean():.4f}; "
          f"value sd / mean on conversions {converted.std() / converted.mean():.2f}")
    eval_share = SPEC.split.eval_percent / 100
    print(f"{'rows':>10}  {'sd of calibration':>18}  {'P(0.9-1.1)':>10}")
    for rows in sizes:
        sd, inside = calibration_spread(cv, rows, eval_share)
        print(f"{rows:>10,}  {sd:>17.1%}  {inside:>10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
