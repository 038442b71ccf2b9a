"""Ali-CCP (Alibaba Click and Conversion Prediction; Taobao, 2018) in the layout of
Torch-RecHub's preprocessing.

Chain: click -> purchase, no continuous target (the data has none).

The original release (Tianchi dataset 408, used by the ESMM paper: Ma et al.,
SIGIR 2018) is a skeleton file plus a common-features file in a key-value
format; this adapter reads the flat CSV that Torch-RecHub's preprocessing makes
of it (`ali_ccp_train.csv`, `ali_ccp_val.csv`, `ali_ccp_test.csv`; samples named
`rechub_ali_ccp_*_sample.csv`): labels `click` and `purchase`, 23 sparse fields
named by their Ali-CCP field ids (`101`, `121`, ..., `109_14`, ...) holding
label-encoded integers, and 8 dense fields `D109_14` ... `D853` (the weights
that go with the history and combination fields).

Field ids begin with a digit. TensorFlow turns such a name into `arg_101` when
it becomes an argument of a SavedModel signature (the served `predict_raw`
would then not accept the feature under its own name), so the sparse fields are
renamed on read: `101` -> `f101`, `109_14` -> `f109_14`. Dense names start with
a letter and stay.

Vocabularies. The dataset page lists the distinct values per field (e.g. 101
user id 238,635; 205 item id 467,298; 207 shop id 263,942; 216 brand id
106,399; 124 gender 3; 125 age 8; 301 position 3). Fields with more than
VOCAB_TOP_K values keep their VOCAB_TOP_K most frequent ids; the rest share the
out-of-vocabulary bucket. Slices: gender (f124), age (f125), position (f301).

`--data` is one file. The published train/val/test files are separate; the
pipeline makes its own hash split of whatever it reads, so pass one of them (or
one file concatenated from several, with a single header row).
"""

from __future__ import annotations

from transform.datasets import layout
from transform.spec import CATEGORICAL, NUMERIC, DatasetSpec, FeatureSpec, SplitSpec, TaskChain

LAYOUT = ("Ali-CCP as preprocessed by Torch-RecHub: ali_ccp_{train,val,test}.csv with click, "
          "purchase, 23 sparse fields 101 ... 150_14 and 8 dense fields D109_14 ... D853")
# Field id -> distinct values in the full data (Tianchi dataset 408's field table).
SPARSE = {
    "101": 238_635, "121": 98, "122": 14, "124": 3, "125": 8, "126": 4, "127": 4, "128": 3,
    "129": 5, "205": 467_298, "206": 6_929, "207": 263_942, "210": 80_232, "216": 106_399,
    "508": 5_888, "509": 104_830, "702": 51_878, "853": 37_148, "301": 3, "109_14": 5_853,
    "110_14": 105_622, "127_14": 53_843, "150_14": 31_858,
}
DENSE = ("D109_14", "D110_14", "D127_14", "D150_14", "D508", "D509", "D702", "D853")
LABELS = ("click", "purchase")
VOCAB_TOP_K = 50_000
RENAME = {field: f"f{field}" for field in SPARSE}

SPEC = DatasetSpec(
    name="ali_ccp",
    description="Ali-CCP (Taobao, Torch-RecHub layout): click -> purchase",
    features=tuple(
        FeatureSpec(RENAME[field], CATEGORICAL, dtype="int",
                    vocab_top_k=VOCAB_TOP_K if distinct > VOCAB_TOP_K else None)
        for field, distinct in SPARSE.items()
    ) + tuple(FeatureSpec(name, NUMERIC) for name in DENSE),
    chain=TaskChain(steps=LABELS),
    slices=(("f124",), ("f125",), ("f301",)),
    split=SplitSpec(eval_percent=20),
)


def resolve_path(data: str | None) -> str:
    """The data file (--data), checked to have the Torch-RecHub Ali-CCP columns."""
    path = layout.resolve_path(data, "ali_ccp", LAYOUT)
    layout.require_columns(path, LABELS + tuple(SPARSE) + DENSE, LAYOUT)
    return path
