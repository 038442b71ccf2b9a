"""`python -m tfx_pipeline report`: a pipeline run's evaluation as one offline HTML page.

    python -m tfx_pipeline report --pipeline-root pipelines/funnel-hillstrom-shared-bottom

Reads the newest Evaluator output of the pipeline root (through its ML
Metadata store) and writes <output>/index.html plus the PNG plots it shows.
The plots are also embedded in the page, so index.html alone opens anywhere,
without network access:

  - the verdict (blessed or not, and each gate the candidate missed)
  - per-task metrics on the overall slice, one row per output and sample space
  - candidate vs the latest blessed model (when the run had one)
  - per-slice bars of the headline metric (AUC; normalised Gini for the core
    target), each bar labelled with its example count
  - calibration curves: mean label against mean prediction in ten bins of
    equal example count, built from TFMA's fine calibration histogram
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import os
import sys
from collections import defaultdict

import numpy as np

from keras_models.layout import EvalOutput
from tfx_pipeline import results

HEADLINE = {"binary": "auc", "regression": "normalized_gini"}
COLUMNS = {
    "binary": ("example_count", "auc", "log_loss", "calibration", "mean_label",
               "mean_prediction"),
    "regression": ("example_count", "mse", "mae", "nrmse", "nmae", "normalized_gini", "spearman",
                   "calibration", "mean_label", "mean_prediction"),
}
DEFINITIONS = (
    ("auc", "area under the ROC curve of the probability against the 0/1 label"),
    ("log_loss", "mean of -[y log p + (1 - y) log(1 - p)], p clipped to [1e-7, 1 - 1e-7]"),
    ("calibration", "mean prediction / mean label; 1 is calibrated, above 1 over-predicts; "
                    f"outside {results.CALIBRATION_BAND[0]:g}-{results.CALIBRATION_BAND[1]:g} "
                    "it is flagged"),
    ("mse, mae", "mean squared / absolute error on the target's original scale"),
    ("nrmse", "RMSE / std(y): 1.0 is the error of always predicting the mean"),
    ("nmae", "MAE / mean|y - mean(y)|: the same for absolute error"),
    ("normalized_gini", "Gini of the ranking by prediction (twice the trapezoid area under the "
                        "Lorenz curve, minus 1) divided by the Gini of the perfect ranking; tied "
                        "predictions share their group's mean; 1 perfect, 0 constant or random, "
                        "-1 reversed"),
    ("spearman", "rank correlation of prediction and label, average ranks for ties"),
)
MAX_SLICE_BARS = 30   # slices with more values show the largest by example count
CALIBRATION_BINS = 10


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Everything the report shows, read from one pipeline root."""

    pipeline_root: str
    evaluation_uri: str
    candidate_uri: str
    baseline_uri: str | None
    blessed: bool | None
    failures: tuple[str, ...]
    outputs: tuple[EvalOutput, ...]
    slices: tuple[tuple[str, ...], ...]
    metrics: list
    calibration: list


def load_evaluation(pipeline_root: str) -> Evaluation:
    from serving.predict import load_spec
    from tfx_pipeline.trainer import task_layout_for

    metadata = os.path.join(pipeline_root, "metadata.sqlite")
    if not os.path.exists(metadata):
        raise FileNotFoundError(f"{pipeline_root}: no metadata.sqlite; is this a pipeline root?")
    outcome = results.last_run_outcome(metadata)
    if not outcome.evaluation_uri:
        raise FileNotFoundError(f"{pipeline_root}: the pipeline has no Evaluator output yet")
    candidate, baseline = results.evaluated_models(metadata, outcome.evaluation_uri)
    spec = load_spec(os.path.join(candidate, "Format-Serving"))
    return Evaluation(pipeline_root, outcome.evaluation_uri, candidate, baseline, outcome.blessed,
                      outcome.failed_thresholds, task_layout_for(spec).evaluation_outputs,
                      tuple(spec.slices), results.read_metrics(outcome.evaluation_uri),
                      results.read_calibration(outcome.evaluation_uri))


def calibration_bins(weights, label_sums, prediction_sums, bins: int = CALIBRATION_BINS):
    """Merges fine histogram buckets into `bins` groups of about equal weight.

    Args:
      weights, label_sums, prediction_sums: arrays of shape (buckets,), in
        prediction order.
    Returns:
      (mean prediction, mean label, weight), arrays of shape (<= bins,); empty
      groups are left out.
    """
    weights = np.asarray(weights, np.float64)
    total = weights.sum()
    if total <= 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    # A bucket joins the group its first example falls in.
    group = np.minimum((np.cumsum(weights) - weights) / total * bins, bins - 1).astype(int)
    weight = np.bincount(group, weights, bins)
    labels = np.bincount(group, np.asarray(label_sums, np.float64), bins)
    predictions = np.bincount(group, np.asarray(prediction_sums, np.float64), bins)
    kept = weight > 0
    return predictions[kept] / weight[kept], labels[kept] / weight[kept], weight[kept]


def _is_candidate(model: str) -> bool:
    return model in ("", "candidate")


def _sample_space(output: EvalOutput) -> str:
    return f"rows where {output.condition} = 1" if output.condition else "all rows"


def _format(value) -> str:
    if value is None:
        return "&mdash;"
    if value != value:
        return "n/a"
    return f"{value:,.0f}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.4f}"


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()


def _overall(evaluation: Evaluation, model_test=_is_candidate) -> dict:
    """(output, metric) -> value on the overall slice."""
    return {(m.output, m.metric): m.value for m in evaluation.metrics
            if m.slice_key == () and model_test(m.model) and not m.is_diff}


def metrics_table(evaluation: Evaluation) -> str:
    values = _overall(evaluation)
    parts = []
    for kind in ("binary", "regression"):
        outputs = [o for o in evaluation.outputs if o.kind == kind]
        if not outputs:
            continue
        head = "".join(f"<th>{c}</th>" for c in ("output", "label", "sample space") + COLUMNS[kind])
        rows = "".join(
            f"<tr><td>{o.name}</td><td>{o.label}</td><td>{_sample_space(o)}</td>"
            + "".join(f"<td>{_format(values.get((o.name, c)))}</td>" for c in COLUMNS[kind])
            + "</tr>" for o in outputs)
        parts.append(f"<table><tr>{head}</tr>{rows}</table>")
    return "\n".join(parts)


def calibration_flags(evaluation: Evaluation) -> str:
    """The outputs whose calibration leaves results.CALIBRATION_BAND, as an HTML list."""
    overall: dict[str, dict[str, float]] = defaultdict(dict)
    for (output, metric), value in _overall(evaluation).items():
        overall[output][metric] = value
    lines = results.calibration_warnings(overall)
    if not lines:
        return "<p class=ok>Every output's calibration is within " \
               f"{results.CALIBRATION_BAND[0]:g}-{results.CALIBRATION_BAND[1]:g}.</p>"
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return f"<p class=bad>Calibration warnings:</p><ul class=bad>{items}</ul>"


def comparison(evaluation: Evaluation) -> tuple[str, bytes | None]:
    """Candidate vs baseline: an HTML table and a bar chart of the headline metrics."""
    if not evaluation.baseline_uri:
        return "<p>No baseline: this was the first evaluation with a blessed model to compare " \
               "against, so only the absolute gates applied.</p>", None
    candidate = _overall(evaluation)
    baseline = _overall(evaluation, lambda m: m == "baseline")
    rows, labels, pairs = [], [], []
    for output in evaluation.outputs:
        for metric in COLUMNS[output.kind][1:]:
            new, old = candidate.get((output.name, metric)), baseline.get((output.name, metric))
            if new is None or old is None or metric == "mean_label":  # same data: no change
                continue
            change = new - old
            rows.append(f"<tr><td>{output.name}</td><td>{metric}</td><td>{_format(new)}</td>"
                        f"<td>{_format(old)}</td><td>{'n/a' if change != change else f'{change:+.4f}'}"
                        "</td></tr>")
            if metric == HEADLINE[output.kind]:
                labels.append(f"{output.name}\n{metric}")
                pairs.append((new, old))
    table = ("<table><tr><th>output</th><th>metric</th><th>candidate</th><th>baseline</th>"
             "<th>change</th></tr>" + "".join(rows) + "</table>")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 3.5))
    x = np.arange(len(labels))
    axis.bar(x - 0.2, [p[0] for p in pairs], 0.4, label="candidate")
    axis.bar(x + 0.2, [p[1] for p in pairs], 0.4, label="latest blessed (baseline)")
    axis.set_xticks(x, labels, fontsize=8)
    axis.set_title("Headline metrics, overall slice")
    axis.legend(fontsize=8)
    return table, _png(figure)


def slice_table(evaluation: Evaluation, columns: tuple[str, ...]) -> dict:
    """The candidate's metrics on each slice of `columns`: {output: {"v1 x v2": {metric: value}}}.

    TFMA orders a cross's columns by name; the values are joined in the order of `columns`.
    """
    table = defaultdict(dict)
    for m in evaluation.metrics:
        if not (_is_candidate(m.model) and not m.is_diff and m.slice_key):
            continue
        values = dict(m.slice_key)
        if len(values) == len(columns) and set(values) == set(columns):
            name = " x ".join(str(values[c]) for c in columns)
            table[m.output].setdefault(name, {})[m.metric] = m.value
    return table


def slice_bars(evaluation: Evaluation, columns: tuple[str, ...]) -> bytes:
    """One panel per output: the headline metric per value of `columns`, with counts."""
    import matplotlib.pyplot as plt

    by_output = slice_table(evaluation, columns)
    outputs = [o for o in evaluation.outputs if o.name in by_output]
    counts = defaultdict(float)   # the same slice values, in the same rows, on every panel
    for entries in by_output.values():
        for name, metrics in entries.items():
            counts[name] = max(counts[name], metrics.get("example_count", 0))
    names = sorted(sorted(counts, key=lambda n: -counts[n])[:MAX_SLICE_BARS])
    figure, axes = plt.subplots(1, max(1, len(outputs)), squeeze=False, sharey=True,
                                figsize=(2.2 + 2.6 * max(1, len(outputs)), 1.2 + 0.3 * len(names)))
    for axis, output in zip(axes[0], outputs):
        metric = HEADLINE[output.kind]
        entries = [by_output[output.name].get(name, {}) for name in names]
        raw = np.array([e.get(metric, np.nan) for e in entries], dtype=float)
        values = np.nan_to_num(raw)   # undefined (e.g. one class only): no bar, marked n/a
        axis.barh(names, values, color="tab:blue")
        for row, entry in enumerate(entries):
            note = " (n/a)" if np.isnan(raw[row]) else ""
            axis.text(0, row, f" n={entry.get('example_count', 0):,.0f}{note}", va="center",
                      fontsize=7, color="white" if values[row] > 0.25 else "black")
        axis.set_title(f"{output.name}\n{metric} ({_sample_space(output)})", fontsize=8)
        axis.tick_params(labelsize=7)
    figure.suptitle(f"by {' x '.join(columns)}", fontsize=10, y=1.02)
    return _png(figure)


def calibration_curves(evaluation: Evaluation) -> bytes | None:
    import matplotlib.pyplot as plt

    overall = [h for h in evaluation.calibration if h.slice_key == ()]
    outputs = [o for o in evaluation.outputs if o.kind == "binary"
               and any(h.output == o.name for h in overall)]
    if not outputs:
        return None
    figure, axes = plt.subplots(1, len(outputs), squeeze=False, figsize=(3.4 * len(outputs), 3.4))
    for axis, output in zip(axes[0], outputs):
        top = 0.0
        for histogram in overall:
            if histogram.output != output.name:
                continue
            predicted, observed, _ = calibration_bins(
                histogram.weights, histogram.label_sums, histogram.prediction_sums)
            label = "baseline" if histogram.model == "baseline" else "candidate"
            axis.plot(predicted, observed, marker="o", markersize=3, label=label)
            top = max(top, *predicted, *observed) if predicted.size else top
        axis.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1)
        axis.set_xlabel("mean prediction", fontsize=8)
        axis.set_ylabel("mean label", fontsize=8)
        axis.set_title(f"{output.name}\n({_sample_space(output)})", fontsize=8)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=7)
    return _png(figure)


def _image(name: str, png: bytes, output_dir: str) -> str:
    with open(os.path.join(output_dir, name), "wb") as handle:
        handle.write(png)
    encoded = base64.b64encode(png).decode()
    return f'<img alt="{name}" src="data:image/png;base64,{encoded}">'


def render(evaluation: Evaluation, output_dir: str) -> str:
    """Writes index.html and the PNGs to `output_dir`; returns the HTML path."""
    import matplotlib

    matplotlib.use("Agg")
    os.makedirs(output_dir, exist_ok=True)
    if evaluation.blessed:
        verdict = "<p class=ok>Blessed: every gate passed.</p>"
    else:
        reasons = "".join(f"<li>{html.escape(r)}</li>" for r in evaluation.failures)
        verdict = f"<p class=bad>Not blessed, not pushed.</p><ul>{reasons}</ul>"
    table, chart = comparison(evaluation)
    sections = [
        f"<h1>Evaluation of {html.escape(os.path.basename(os.path.abspath(evaluation.pipeline_root)))}</h1>",
        f"<p>candidate <code>{html.escape(evaluation.candidate_uri)}</code><br>"
        f"baseline <code>{html.escape(evaluation.baseline_uri or 'none')}</code><br>"
        f"TFMA output <code>{html.escape(evaluation.evaluation_uri)}</code></p>",
        verdict,
        "<h2>Per-task metrics (overall slice)</h2>", metrics_table(evaluation),
        calibration_flags(evaluation),
        "<h2>Candidate vs latest blessed model</h2>", table]
    if chart:
        sections.append(_image("comparison.png", chart, output_dir))
    curves = calibration_curves(evaluation)
    if curves:
        sections += ["<h2>Calibration (overall slice, 10 bins of equal count)</h2>",
                     _image("calibration.png", curves, output_dir)]
    sections.append("<h2>Slices</h2>")
    for columns in evaluation.slices:
        name = "slice_" + "_x_".join(columns) + ".png"
        sections.append(_image(name, slice_bars(evaluation, tuple(columns)), output_dir))
    sections.append("<h2>Definitions</h2><dl>" + "".join(
        f"<dt>{name}</dt><dd>{text}</dd>" for name, text in DEFINITIONS) + "</dl>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Evaluation report</title>"
            "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
            "padding:3px 8px;text-align:right;font-size:13px}.ok{color:#070}.bad{color:#b00}"
            "img{max-width:100%;display:block;margin:1em 0}</style></head><body>"
            + "\n".join(sections) + "</body></html>")
    path = os.path.join(output_dir, "index.html")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    return path


def command_report(args) -> int:
    output = args.output or os.path.join(args.pipeline_root, "report")
    path = render(load_evaluation(args.pipeline_root), output)
    print(f"wrote {path}", file=sys.stderr)
    return 0
