"""Kevin Hillstrom's MineThatData e-mail data (64,000 customers, 2008).

The outcome chain is visit -> conversion -> spend (USD, non-zero only after a
conversion). `treatment` is the e-mail arm; the original file calls that column
`segment`, which is renamed on read. There is no timestamp, so rows are split by
a stable hash (see SplitSpec).
"""

from __future__ import annotations

import os

from transform.spec import CATEGORICAL, NUMERIC, DatasetSpec, FeatureSpec, SplitSpec, TaskChain

ENV_VAR = "HILLSTROM_CSV"
RENAME = {"segment": "treatment"}

SPEC = DatasetSpec(
    name="hillstrom",
    description="MineThatData e-mail challenge: visit -> conversion -> spend",
    features=(
        FeatureSpec("recency", NUMERIC),
        FeatureSpec("history_segment", CATEGORICAL),
        FeatureSpec("history", NUMERIC, scaling="log_z_score"),
        FeatureSpec("mens", CATEGORICAL, dtype="int"),
        FeatureSpec("womens", CATEGORICAL, dtype="int"),
        FeatureSpec("zip_code", CATEGORICAL),
        FeatureSpec("newbie", CATEGORICAL, dtype="int"),
        FeatureSpec("channel", CATEGORICAL),
        FeatureSpec("treatment", CATEGORICAL),
    ),
    chain=TaskChain(steps=("visit", "conversion"), core_target="spend",
                    core_target_gated=True, target_transform="log1p_z_score"),
    slices=(("treatment",), ("channel",), ("zip_code",), ("newbie",),
            ("history_segment",), ("treatment", "channel")),
    split=SplitSpec(eval_percent=20),
)


def resolve_path(data: str | None) -> str:
    """The data file: --data if given, else $HILLSTROM_CSV."""
    path = data or os.environ.get(ENV_VAR)
    if not path:
        raise ValueError(
            f"the hillstrom dataset needs its CSV file: pass --data PATH or set {ENV_VAR} "
            "(the file is hillstrom.csv or hillstrom.csv.gz from the MineThatData challenge)")
    return path
