"""AliExpress search logs (Tianchi dataset 74690; Li et al., CIKM 2020), in the
16-categorical + 63-numerical layout that the multi-task libraries use
(Torch-RecHub's `aliexpress_{train,test}.csv`, the per-country files of
MTReclib; samples named `rechub_aliexpress_*_sample.csv`).

Chain: click -> conversion, no continuous target (the data has none).

Columns: `search_id`, `categorical_1` ... `categorical_16` (label-encoded
integers), `numerical_1` ... `numerical_63` (already scaled to [0, 1] by the
publisher), `click`, `conversion`. What each column means is not published.

`search_id` is not a feature: it names one search request, so a model could
only memorise it (MTReclib's loader drops it too). Keeping a search's rows
together in one split would need it as `split.partition_column`, and a partition
column must be a column of the written examples, that is a feature: a model
input that every eval row would see as unknown. So the rows are split by the
hash of the whole row, and rows of one search can land in both splits; the
eval split then holds other results of searches seen in training (their shared
query features, not their labels).

`--data` is one file. The published train and test files are separate; the
pipeline makes its own hash split of whatever it reads, so pass one of them (or
one file concatenated from several, with a single header row).
"""

from __future__ import annotations

from transform.datasets import layout
from transform.spec import CATEGORICAL, NUMERIC, DatasetSpec, FeatureSpec, SplitSpec, TaskChain

LAYOUT = ("AliExpress in the Torch-RecHub/MTReclib layout: search_id, categorical_1 ... "
          "categorical_16, numerical_1 ... numerical_63, click, conversion")
ID_COLUMN = "search_id"
CATEGORICAL_COLUMNS = tuple(f"categorical_{i}" for i in range(1, 17))
NUMERICAL_COLUMNS = tuple(f"numerical_{i}" for i in range(1, 64))
LABELS = ("click", "conversion")

SPEC = DatasetSpec(
    name="aliexpress",
    description="AliExpress search (Torch-RecHub layout): click -> conversion",
    features=tuple(FeatureSpec(name, CATEGORICAL, dtype="int") for name in CATEGORICAL_COLUMNS)
    + tuple(FeatureSpec(name, NUMERIC) for name in NUMERICAL_COLUMNS),
    chain=TaskChain(steps=LABELS),
    # The meanings are unpublished: two low-cardinality fields as examples of slices.
    slices=(("categorical_2",), ("categorical_4",)),
    split=SplitSpec(eval_percent=20),
)


def resolve_path(data: str | None) -> str:
    """The data file (--data), checked to have the AliExpress columns (search_id included,
    so that a file of another layout with the same feature names is not taken for it)."""
    path = layout.resolve_path(data, "aliexpress", LAYOUT)
    layout.require_columns(path, (ID_COLUMN,) + CATEGORICAL_COLUMNS + NUMERICAL_COLUMNS + LABELS,
                           LAYOUT)
    return path
