"""KuaiRand (Kuaishou short-video logs; Gao et al., CIKM 2022): log rows joined with
the user and video features, as in `kuairand1k_sample.csv`.

Chain: click -> long_view -> watch_time_s (seconds; continuous, not gated).

Source of the column definitions: the KuaiRand README (github.com/chongminggao/
KuaiRand, also kuairand.com), "Descriptions of the fields in log_xxx.csv":
`is_click` is a click in the two-column UI and a *valid play* in the
single-column UI (played >= the video's length if it is <= 7 s, else > 7 s);
`long_view` is 1 when the play time is >= the video's length if that is <= 18 s,
else >= 18 s; `play_time_ms` is the user's view time and `duration_ms` the
video's length, both in milliseconds.

The published logs have a `long_view` column; a joined file that kept it is
read as it is. A file without it (the sample) gets it derived here with the
README's rule applied to `play_time_ms` and `duration_ms`:
long_view = play_time_ms >= min(duration_ms, 18,000) [R: the rule is
KuaiRand's; computing it from these two columns is our reconstruction, and
KuaiRand's own label may come from internal fields]. `watch_time_s` is always
derived: play_time_ms / 1000.

Chain and autoplay. A video can play in the feed without a click (the
single-column UI plays it at once; `is_click` is then 1 only for a valid play),
so watch time is not gated by the steps (core_target_gated False; every row has
one). A long view without a click should not occur: under the README's rules
every long view is also a valid play, and in the two-column UI a video is
watched after a click on its cover [R: our reading of the README]. Such a row is
therefore not masked or relabelled: ingest reports it as a `chain_violation` of
`long_view` (rejected with --bad-rows reject), which keeps inconsistent logs
visible.

Bad source cells. When a derived cell cannot be computed, the row is reported
(or rejected) naming the SOURCE column: `play_time_ms` missing, unparsable,
non-finite or negative (`negative_value`); when long_view is derived,
`duration_ms` likewise, and `unknown_duration` for a duration of 0 (the rule
would call every play of such a video a long view; the sample has 18 such
rows). The derived cells of such a row hold "0" so the problem is reported once.

Features: the ids (user_id, video_id) as integer tokens with a vocabulary cap;
tab, the user flags and the encrypted one-hot fields as integer tokens (the
one-hot fields may be empty where the join found no value: token -1); the
`*_range` buckets, user_active_degree and video_type as string tokens (the
sample has them encoded as integers, the published files as strings: both
read); counts and the video's length as log-scaled numbers, its width and
height as numbers. Not features:
play_time_ms (the target), profile_stay_time and comment_stay_time (behaviour
during the view), visible_status (the video's state at publication time, after
the logs). Slices: tab (the scenario) and user_active_degree.

`--data` is one joined CSV file; joining the published log, user and video
files is not done here.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from transform.datasets import layout
from transform.ingest import CellProblem, DataValidationError, Prepare, parse_numbers, shown
from transform.spec import CATEGORICAL, NUMERIC, DatasetSpec, FeatureSpec, SplitSpec, TaskChain

LAYOUT = ("KuaiRand log rows joined with user and video features (as kuairand1k_sample.csv): "
          "user_id, video_id, is_click, play_time_ms, duration_ms, tab, user features, "
          "video_type, server_width, server_height")
RENAME = {"is_click": "click"}
LONG_VIEW = "long_view"
WATCH_TIME = "watch_time_s"
LONG_VIEW_MS = 18_000          # KuaiRand's long-view threshold: 18 s
# Identifies the derivation in the ingest fingerprint: bump it when the rule changes.
PREPARE_NAME = "kuairand-labels-v1"
SOURCES = ("play_time_ms", "duration_ms")
USER_ID_TOP_K = 30_000         # KuaiRand-27K has 27,285 users
VIDEO_ID_TOP_K = 100_000       # KuaiRand-1K alone has 4.4 million videos

_ONE_HOT = tuple(f"onehot_feat{i}" for i in range(18))
SPEC = DatasetSpec(
    name="kuairand",
    description="KuaiRand (Kuaishou feed): click -> long view -> watch time (s)",
    features=(
        FeatureSpec("user_id", CATEGORICAL, dtype="int", vocab_top_k=USER_ID_TOP_K),
        FeatureSpec("video_id", CATEGORICAL, dtype="int", vocab_top_k=VIDEO_ID_TOP_K),
        FeatureSpec("tab", CATEGORICAL, dtype="int"),
        FeatureSpec("duration_ms", NUMERIC, scaling="log_z_score"),
        FeatureSpec("video_type", CATEGORICAL),
        FeatureSpec("server_width", NUMERIC),
        FeatureSpec("server_height", NUMERIC),
        FeatureSpec("user_active_degree", CATEGORICAL),
        FeatureSpec("is_lowactive_period", CATEGORICAL, dtype="int"),
        FeatureSpec("is_live_streamer", CATEGORICAL, dtype="int"),
        FeatureSpec("is_video_author", CATEGORICAL, dtype="int"),
        FeatureSpec("follow_user_num", NUMERIC, scaling="log_z_score"),
        FeatureSpec("follow_user_num_range", CATEGORICAL),
        FeatureSpec("fans_user_num", NUMERIC, scaling="log_z_score"),
        FeatureSpec("fans_user_num_range", CATEGORICAL),
        FeatureSpec("friend_user_num", NUMERIC, scaling="log_z_score"),
        FeatureSpec("friend_user_num_range", CATEGORICAL),
        FeatureSpec("register_days", NUMERIC, scaling="log_z_score"),
        FeatureSpec("register_days_range", CATEGORICAL),
    ) + tuple(FeatureSpec(name, CATEGORICAL, dtype="int", required=False, default=-1.0)
              for name in _ONE_HOT),
    chain=TaskChain(steps=("click", LONG_VIEW), core_target=WATCH_TIME,
                    core_target_gated=False, target_transform="log1p_z_score"),
    slices=(("tab",), ("user_active_degree",)),
    split=SplitSpec(eval_percent=20),
)


def derive_labels(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[CellProblem]]:
    """Adds `watch_time_s` (and `long_view` when the file has none) to a chunk's text
    frame; returns it with the CellProblems of the source cells it could not use."""
    if WATCH_TIME in frame.columns:   # resolve_path reports this with the file's name
        raise DataValidationError(f"a column {WATCH_TIME!r} is in the data; the kuairand "
                                  f"adapter derives it from play_time_ms")
    problems: list[CellProblem] = []
    play, play_ok = _source(frame, "play_time_ms", problems, f"needed for {WATCH_TIME}")
    frame = frame.copy()
    frame[WATCH_TIME] = np.where(play_ok, (play / 1000.0).astype(str), "0")
    if LONG_VIEW not in frame.columns:
        duration, duration_ok = _source(frame, "duration_ms", problems, f"needed for {LONG_VIEW}")
        unknown = duration_ok & (duration <= 0)
        for row in np.flatnonzero(unknown):
            problems.append(CellProblem(
                int(row), "duration_ms", "unknown_duration",
                f"duration {shown(frame['duration_ms'].iat[row])} ms: the video's length is "
                f"unknown, so {LONG_VIEW} cannot be derived (KuaiRand's rule compares the play "
                f"time with it)"))
        usable = play_ok & duration_ok & ~unknown
        long_view = usable & (play >= np.minimum(duration, LONG_VIEW_MS))
        frame[LONG_VIEW] = np.where(long_view, "1", "0")
    return frame, problems


def _source(frame: pd.DataFrame, column: str, problems: list, purpose: str):
    """(the column as float64, mask of usable cells); a CellProblem per unusable cell."""
    parsed = parse_numbers(frame[column])
    values = parsed.values
    cell = lambda row: shown(frame[column].iat[row])   # noqa: E731
    for row in np.flatnonzero(parsed.missing):
        problems.append(CellProblem(int(row), column, "missing_value",
                                    f"missing value ({purpose})"))
    for reason, rows in parsed.bad.items():
        for row in rows:
            problems.append(CellProblem(int(row), column, reason,
                                        f"cannot use {cell(row)} as a number ({reason}; "
                                        f"{purpose})"))
    negative = parsed.valid & (values < 0)
    for row in np.flatnonzero(negative):
        problems.append(CellProblem(int(row), column, "negative_value",
                                    f"negative value {cell(row)} ({purpose})"))
    return values, parsed.valid & ~negative


PREPARE = Prepare(PREPARE_NAME, derive_labels, reads=SOURCES)


def resolve_path(data: str | None) -> str:
    """The data file (--data), checked to have the columns of the joined KuaiRand layout."""
    path = layout.resolve_path(data, "kuairand", LAYOUT)
    renamed_back = {new: old for old, new in RENAME.items()}
    needed = [renamed_back.get(column, column) for column in SPEC.columns
              if column not in (LONG_VIEW, WATCH_TIME)]
    names = layout.require_columns(path, needed + ["play_time_ms"], LAYOUT)
    if WATCH_TIME in (names or ()):
        raise DataValidationError(f"{path}: has a column {WATCH_TIME!r}, which the kuairand "
                                  f"adapter derives from play_time_ms; rename or drop it")
    return path
