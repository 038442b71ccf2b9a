"""Train every model on the same data with several seeds; write a results table.

    python -m tfx_pipeline.compare [--datasets synthetic,hillstrom] [--seeds 3] [--epochs 4]
                                   [--core-head ziln] [--validation-share 0.2]
                                   [--output docs/results.md]

For each dataset the real pipeline runs once (cached on reruns) to produce the
Transform output: the same vocabularies, scaling and train/eval split every
model then trains and is evaluated on (the eval rows go through the Transform
graph in-process, in the Examples artifact's order, so the synthetic generator's truth
lines up with them). Metrics are exact (scikit-learn AUC and log loss on all
eval rows; SciPy Spearman; the core-target metrics of tfx_pipeline.metrics) and
reported as mean ± std over seeds, with training examples/s measured around
`model.fit`. Rows: the synthetic generator's true values (`oracle`), each
model, and gradient-boosted trees (`trees`).

With `--validation-share`, models train on part of the training split and are
scored on the rest; the eval split is not read. Choices (a default head, a
hyper-parameter) are made that way, so the eval split's numbers stay unbiased.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np



def latest(pattern: str) -> str:
    matches = glob.glob(pattern)
    if not matches:
        raise FileNotFoundError(f"nothing matches {pattern}")
    return max(matches, key=lambda p: int(os.path.basename(p.rstrip("/"))))


def prepare(dataset: str, root: str, data: str | None, rows: int) -> str:
    """Runs the pipeline (one training step) so its Transform output exists; returns the root."""
    from tfx_pipeline.cli import OPEN_QUALITY_GATES

    args = [sys.executable, "-m", "tfx_pipeline", "run", "--dataset", dataset, "--train-steps", "1",
            "--eval-steps", "1", *OPEN_QUALITY_GATES, "--pipeline-root", root,
            "--serving-dir", os.path.join(root, "serving")]
    if data:
        args += ["--data", data]
    if dataset == "synthetic":
        args += ["--rows", str(rows)]
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pipeline for {dataset} failed: {result.stderr.strip().splitlines()[-1]}")
    return root


def load_split(root: str, split: str, tft_output) -> dict:
    """The Transform component's output for one split: column -> (rows,) array."""
    import tensorflow as tf

    directory = latest(f"{root}/Transform/transformed_examples/*")
    files = sorted(glob.glob(f"{directory}/Split-{split}/*"))
    spec = tft_output.transformed_feature_spec()
    columns: dict[str, list] = {name: [] for name in spec}
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(8192):
        parsed = tf.io.parse_example(batch, spec)
        for name in spec:
            columns[name].append(tf.reshape(parsed[name], [-1]).numpy())
    return {name: np.concatenate(parts) for name, parts in columns.items()}


def load_raw_split(root: str, split: str, tft_output) -> tuple[dict, dict]:
    """One split of the run's raw examples, and the same rows through the Transform
    graph, in the same order: (raw column -> (rows,), transformed column -> (rows,)).

    The raw values let the synthetic generator say what is true for each row."""
    from tfx_pipeline.oracle import numpy_column, parsed_batches
    from tfx_pipeline.results import imported_split_records

    records = imported_split_records(root, split)
    raw_spec = tft_output.raw_feature_spec()
    raw: dict[str, list] = {name: [] for name in raw_spec}
    transformed: dict[str, list] = {}
    for parsed in parsed_batches(records, raw_spec):
        for name, value in parsed.items():
            raw[name].append(value)
        for name, value in tft_output.transform_raw_features(parsed,
                                                             drop_unused_features=True).items():
            transformed.setdefault(name, []).append(value)
    return ({k: numpy_column(v) for k, v in raw.items()},
            {k: numpy_column(v) for k, v in transformed.items()})


def carve_validation(columns: dict, share: float, keys: np.ndarray) -> tuple[dict, dict]:
    """Splits rows into (fit, validation) by their content, not their position.

    The raw examples' order is not a property of the data (ImportExampleGen's
    shuffle changed it every run; ingest now fixes it per input file, and a
    change of the file or CHUNK_ROWS changes it), so a split by position could
    score two runs on different rows. Rows
    are ranked by `keys` (a hash of each row's raw values, see row_keys) and the
    first share of that ranking is the validation part, in every run.

    Args:
      columns: column -> (rows,) array, every column the same length.
      share: fraction of rows in the validation part, in (0, 1).
      keys: (rows,) one key per row, the same for the same row in any order.
    Returns:
      Two dicts of the same columns, (rows - v,) and (v,) with v = round(share * rows),
      each in the input's row order.
    """
    if not 0 < share < 1:
        raise ValueError(f"validation share must be in (0, 1), got {share}")
    order = np.argsort(np.asarray(keys), kind="stable")
    held = int(round(share * len(order)))
    validation, fit = np.sort(order[:held]), np.sort(order[held:])
    return ({k: v[fit] for k, v in columns.items()}, {k: v[validation] for k, v in columns.items()})


def row_keys(raw: dict) -> np.ndarray:
    """(rows,) uint64: a hash of each row's raw values (pandas' stable row hash)."""
    import pandas as pd

    frame = pd.DataFrame({name: raw[name] for name in sorted(raw)})
    return pd.util.hash_pandas_object(frame, index=False).to_numpy()


_PATH_OPTIONS = ("--data", "--work-dir", "--output")


def shown_arguments(argv: list[str]) -> list[str]:
    """The command line as the results file shows it: an absolute path given to
    --data, --work-dir or --output cut to its base name (relative ones stay), so a
    committed file carries no path of the machine that wrote it."""
    def shown(path):
        return os.path.basename(path.rstrip("/")) if os.path.isabs(path) else path

    result, path_next = [], False
    for argument in argv:
        option, equals, value = argument.partition("=")
        if path_next:
            result.append(shown(argument))
        elif equals and option in _PATH_OPTIONS:
            result.append(f"{option}={shown(value)}")
        else:
            result.append(argument)
        path_next = argument in _PATH_OPTIONS
    return result


def validation_share(text: str) -> float:
    """argparse type of --validation-share: 0 (score on the eval split) or a share in (0, 1)."""
    try:
        share = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= share < 1:
        raise argparse.ArgumentTypeError(f"expected 0 (off) or a share in (0, 1), got {text!r}")
    return share


def binary_metrics(y, p) -> dict:
    from sklearn.metrics import log_loss, roc_auc_score

    from tfx_pipeline import metrics

    p = np.clip(p, 1e-7, 1 - 1e-7)
    if y.size == 0 or y.min() == y.max():
        return {"auc": float("nan"), "log_loss": float("nan"), "calibration": float("nan")}
    return {"auc": roc_auc_score(y, p), "log_loss": log_loss(y, p, labels=[0, 1]),
            "calibration": metrics.calibration(y, p)}


def evaluate(outputs: dict, labels: dict, chain, truth: dict | None = None) -> dict:
    """Metric name -> value: each step on all rows, each later step also on the rows
    where the previous step happened (its conditional estimate m_s / m_{s-1}); the core
    target on all rows, and its calibration on the last step's rows scored with
    E[y] / P(last step). With `truth` (label -> the true expectation per row), the mean
    absolute distance of each prediction to it."""
    from keras_models.layout import pred_key, prob_key
    from tfx_pipeline import metrics

    results = {}
    for i, step in enumerate(chain.steps):
        for name, value in binary_metrics(labels[step], outputs[prob_key(step)]).items():
            results[f"{step} {name}"] = value
        if i:
            previous = chain.steps[i - 1]
            rows = labels[previous] == 1
            conditional = outputs[prob_key(step)][rows] / np.maximum(outputs[prob_key(previous)][rows], 1e-7)
            for name, value in binary_metrics(labels[step][rows], conditional).items():
                results[f"{step}@{previous} {name}"] = value
    if chain.core_target:
        target, last = chain.core_target, chain.steps[-1]
        y, p = labels[target], outputs[pred_key(target)]
        rows = labels[last] == 1
        given = p[rows] / np.maximum(outputs[prob_key(last)][rows], 1e-7)
        results.update({f"{target} nrmse": metrics.nrmse(y, p),
                        f"{target} nmae": metrics.nmae(y, p),
                        f"{target} gini": metrics.normalized_gini(y, p),
                        f"{target} spearman": metrics.spearman(y, p),
                        f"{target} calibration": metrics.calibration(y, p),
                        f"{target}@{last} calibration": metrics.calibration(y[rows], given)})
    if truth is not None:
        for label, expected in truth.items():
            key = pred_key(label) if label == chain.core_target else prob_key(label)
            results[f"{label} |pred - true|"] = float(np.mean(np.abs(outputs[key] - expected)))
    return results


def run_model(name, spec, tft_output, train, evaluation, seed, epochs, batch_size, truth=None,
              hparams=None):
    import keras
    import tensorflow as tf

    from keras_models import registry
    from tfx_pipeline.trainer import input_layout_for, task_layout_for

    keras.utils.set_random_seed(seed)
    labels = spec.label_columns
    model = registry.build(name, input_layout_for(spec, tft_output), task_layout_for(spec),
                           hparams or {})
    features = {k: v for k, v in train.items() if k not in labels}
    targets = {k: train[k] for k in labels}
    model.adapt_to_labels(targets)
    data = (tf.data.Dataset.from_tensor_slices((features, targets))
            .shuffle(len(train[labels[0]]), seed=seed).batch(batch_size).prefetch(2))
    start = time.perf_counter()
    model.fit(data, epochs=epochs, verbose=0, shuffle=False,  # the Dataset is shuffled
              callbacks=model.training_callbacks())
    rate = epochs * len(train[labels[0]]) / (time.perf_counter() - start)
    model.recalibrate(features, targets)
    eval_features = {k: v for k, v in evaluation.items() if k not in labels}
    outputs = model.predict(eval_features, batch_size=8192, verbose=0)
    scores = evaluate(outputs, {k: evaluation[k] for k in labels}, spec.chain, truth)
    scores["train examples/s"] = rate
    return scores


def tree_features(spec, tft_output, columns: dict):
    """(rows, fields) matrix of the Transform output, and which columns are categorical.

    scikit-learn's histogram trees take at most 255 categories per feature; a larger
    vocabulary (an item id) enters as its integer id, split on like a number."""
    from tfx_pipeline.trainer import input_layout_for

    layout = input_layout_for(spec, tft_output)
    names = layout.field_names
    matrix = np.stack([columns[name].astype(np.float64) for name in names], axis=1)
    categorical = np.array([name in layout.categorical and layout.categorical[name] <= 255
                            for name in names])
    return matrix, categorical


def run_trees(spec, tft_output, train, evaluation, seed, truth=None):
    """Gradient-boosted trees, one per task, on the same Transform output and split:
    a classifier per step (its marginal on all rows) and, for the core target, a
    least-squares regressor on all rows, which estimates E[y | x] directly. Defaults
    of scikit-learn's HistGradientBoosting, with its early stopping on a validation
    share of the training rows."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    from keras_models.layout import pred_key, prob_key

    x_train, categorical = tree_features(spec, tft_output, train)
    x_eval, _ = tree_features(spec, tft_output, evaluation)
    chain, outputs = spec.chain, {}
    start = time.perf_counter()
    for step in chain.steps:
        model = HistGradientBoostingClassifier(categorical_features=categorical, random_state=seed)
        model.fit(x_train, train[step].astype(int))
        outputs[prob_key(step)] = model.predict_proba(x_eval)[:, 1]
    if chain.core_target:
        model = HistGradientBoostingRegressor(categorical_features=categorical, random_state=seed)
        model.fit(x_train, train[chain.core_target])
        outputs[pred_key(chain.core_target)] = np.maximum(model.predict(x_eval), 0.0)
    rate = len(x_train) / (time.perf_counter() - start)
    scores = evaluate(outputs, {k: evaluation[k] for k in spec.label_columns}, chain, truth)
    scores["train examples/s"] = rate
    return scores


def format_table(models, runs, columns=None) -> list[str]:
    columns = columns or list(next(iter(runs.values()))[0])
    lines = ["| model | " + " | ".join(c.replace("|", "\\|") for c in columns) + " |",
             "| --- | " + " | ".join("---" for _ in columns) + " |"]
    for name in models:
        cells = []
        for column in columns:
            values = np.array([run.get(column, np.nan) for run in runs[name]], dtype=float)
            if np.all(np.isnan(values)):
                cells.append("&ndash;")
            elif column == "train examples/s":
                cells.append(f"{np.nanmean(values):,.0f}")
            elif len(values) == 1:
                cells.append(f"{values[0]:.4f}")
            else:
                cells.append(f"{np.nanmean(values):.4f} ± {np.nanstd(values):.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


PAPER_MODELS = ("apem", "htlnet")
BASELINES = ("shared_bottom", "mmoe", "ple", "esmm", "aitm", "trees")


def better(column: str, a: float, b: float) -> bool:
    """Whether value a beats value b in this metric column (calibration: nearer 1)."""
    name = column.rsplit(" ", 1)[-1]
    if name == "calibration":
        return abs(a - 1) < abs(b - 1)
    if name in ("log_loss", "nrmse", "nmae"):
        return a < b
    return a > b


def quality_goals(means: dict, target: str | None, paper_check: bool,
                  oracle: dict | None = None) -> list[str]:
    """The issue's quality goals checked against mean-over-seeds values, as Markdown.

    Args:
      means: model -> metric column -> mean over seeds (the oracle row excluded).
      target: the core target's name, or None.
      paper_check: also check that APEM and HTLNet match the best baseline and the
        trees on every metric column (the goal is set for Hillstrom).
      oracle: the true values' metric column -> value on the same rows, if known;
        an unmet calibration goal then says what the truth itself reads.
    Returns:
      Lines that state each goal as met or name every model and column short of it.
    """
    lines = []
    if target:
        nrmse = {m: v[f"{target} nrmse"] for m, v in means.items()}
        short = [f"{m} {x:.4f}" for m, x in nrmse.items() if not x < 1.0]
        lines.append("- Core NRMSE below 1.0 for every model: "
                     + ("met." if not short else f"**not met** ({', '.join(short)})."))
        calibration = {m: v[f"{target} calibration"] for m, v in means.items()}
        short = [f"{m} {x:.3f}" for m, x in calibration.items() if not 0.9 <= x <= 1.1]
        line = ("- Core calibration within 0.9–1.1 for every model: "
                + ("met." if not short else f"**not met** ({', '.join(short)})."))
        if short and oracle and f"{target} calibration" in oracle:
            line += (f" The true values read {oracle[f'{target} calibration']:.3f} on the "
                     "same rows: the distance of that from 1 is the split's own noise.")
        lines.append(line)
    if paper_check:
        columns = [c for c in next(iter(means.values())) if c != "train examples/s"]
        rivals = [b for b in BASELINES if b in means]
        for model in (m for m in PAPER_MODELS if m in means):
            gaps = []
            for column in columns:
                best = rivals[0]
                for rival in rivals[1:]:
                    if better(column, means[rival][column], means[best][column]):
                        best = rival
                if better(column, means[best][column], means[model][column]):
                    gaps.append(f"{column} {means[model][column]:.4f} vs {best} "
                                f"{means[best][column]:.4f}")
            lines.append(f"- {model} matches or beats the best baseline and the trees on every "
                         "column: " + ("met." if not gaps else f"**not met** on {len(gaps)} of "
                                        f"{len(columns)} columns ({'; '.join(gaps)})."))
    return lines


def main(argv=None, prog: str = "python -m tfx_pipeline.compare") -> int:
    parser = argparse.ArgumentParser(prog=prog,
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="synthetic,hillstrom")
    parser.add_argument("--models", default="shared_bottom,mmoe,ple,esmm,aitm,apem,htlnet,trees",
                        help="registry names, and 'trees' for the gradient-boosted trees")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--rows", type=int, default=100000, help="synthetic rows")
    parser.add_argument("--core-head", choices=("auto", "decomposition", "ziln", "regression"),
                        help="override the spec's chain.core_head for every model")
    parser.add_argument("--validation-share", type=validation_share, default=0.0,
                        help="score on this share of the training split instead of the eval "
                             "split (for choosing defaults without touching the eval split)")
    parser.add_argument("--hparams", help="hyper-parameters for every model, as `run --hparams` "
                                          "takes them (those a model does not have are refused)")
    parser.add_argument("--data", help="Hillstrom CSV (default: $HILLSTROM_CSV)")
    parser.add_argument("--work-dir", default="pipelines/compare")
    parser.add_argument("--output", default="docs/results.md")
    args = parser.parse_args(argv)

    import dataclasses

    import pandas as pd
    import tensorflow_transform as tft

    from keras_models import registry
    from tfx_pipeline import oracle
    from tfx_pipeline.cli import parse_hparams
    from tfx_pipeline.machine import cpu_description
    from tfx_pipeline.trainer import task_layout_for
    from transform import datasets
    from transform.datasets import synthetic

    models = args.models.split(",")
    try:   # refused before any pipeline work, not at the first model
        hparams = parse_hparams(args.hparams)
        for name in (m for m in models if m != "trees"):
            registry.model_class(name).hparams_class.from_dict(hparams)
    except ValueError as error:
        parser.error(str(error))
    sections = []
    for dataset in args.datasets.split(","):
        spec = datasets.spec_for(dataset)
        if args.core_head:
            spec = dataclasses.replace(spec, chain=dataclasses.replace(spec.chain,
                                                                       core_head=args.core_head))
        root = os.path.abspath(os.path.join(args.work_dir, dataset))
        data = (args.data or os.environ.get("HILLSTROM_CSV")) if dataset == "hillstrom" else None
        print(f"[{dataset}] preparing the Transform output ...", file=sys.stderr, flush=True)
        prepare(dataset, root, data, args.rows)
        tft_output = tft.TFTransformOutput(latest(f"{root}/Transform/transform_graph/*"))
        if args.validation_share:
            raw_train, train = load_raw_split(root, "train", tft_output)
            keys = row_keys(raw_train)
            train, evaluation = carve_validation(train, args.validation_share, keys)
            _, raw_eval = carve_validation(raw_train, args.validation_share, keys)
        else:
            train = load_split(root, "train", tft_output)
            raw_eval, evaluation = load_raw_split(root, "eval", tft_output)
        truth = None
        if dataset == "synthetic":   # the pipeline generated it with FunnelConfig(rows, seed=0)
            truth = synthetic.true_expectations(pd.DataFrame(raw_eval),
                                                synthetic.FunnelConfig(rows=args.rows))
        labels = {k: evaluation[k] for k in spec.label_columns}
        runs = {}
        if truth is not None:
            runs["oracle"] = [evaluate(oracle.oracle_outputs(truth, spec.chain), labels,
                                       spec.chain, truth)]
        for name in models:
            if name != "trees":
                try:
                    registry.check_fits(name, task_layout_for(spec))
                except ValueError:
                    continue
            runs[name] = []
            for seed in range(args.seeds):
                started = time.monotonic()
                if name == "trees":
                    scores = run_trees(spec, tft_output, train, evaluation, seed, truth)
                else:
                    scores = run_model(name, spec, tft_output, train, evaluation, seed,
                                       args.epochs, args.batch_size, truth, hparams)
                runs[name].append(scores)
                print(f"[{dataset}] {name} seed {seed}: {time.monotonic() - started:.0f} s",
                      file=sys.stderr, flush=True)
        n_train, n_eval = len(train[spec.label_columns[0]]), len(labels[spec.label_columns[0]])
        columns = [c for c in runs[next(m for m in models if m in runs)][0]
                   if "|pred - true|" not in c]
        order = (["oracle"] if "oracle" in runs else []) + [m for m in models if m in runs]
        scored_on = (f"validation rows ({args.validation_share:g} of the pipeline's training "
                     "split; the eval split is not used)" if args.validation_share
                     else "evaluation rows (the pipeline's hash split)")
        sections += [f"## {dataset}", "",
                     f"{n_train:,} training and {n_eval:,} {scored_on}; chain "
                     f"{' -> '.join(spec.label_columns)}; core head "
                     f"{spec.chain.resolved_core_head}.", ""]
        sections += format_table(order, runs, columns) + [""]
        means = {m: {c: float(np.nanmean([run.get(c, np.nan) for run in runs[m]])) for c in columns}
                 for m in order if m != "oracle"}
        sections += ["Quality goals (mean over seeds, computed from the table above; a gap "
                     "smaller than the seeds' std is within noise):", ""]
        sections += quality_goals(means, spec.chain.core_target,
                                  paper_check=dataset == "hillstrom",
                                  oracle=runs["oracle"][0] if "oracle" in runs else None) + [""]
        if truth is not None:
            distance = [c for c in runs["oracle"][0] if "|pred - true|" in c]
            true_means = ", ".join(f"{label} {value.mean():.4f}" for label, value in truth.items())
            sections += [f"Distance to the truth on the same rows: mean absolute difference "
                         f"between each prediction and the generator's true value (mean true "
                         f"values: {true_means}). The oracle's is 0 by definition.", ""]
            sections += format_table([m for m in order if m != "oracle"], runs, distance) + [""]
    header = [
        "# Model comparison", "",
        f"Written by `make compare` (`python -m tfx_pipeline.compare "
        f"{' '.join(shown_arguments(argv or sys.argv[1:]))}`) "
        f"on {datetime.date.today().isoformat()}, CPU: {cpu_description()}. Every model uses its "
        f"default hyper-parameters (docs/models.md)"
        f"{f', with {json.dumps(hparams)} for all' if hparams else ''}, {args.epochs} epochs at batch "
        f"{args.batch_size}, Adam; mean ± std over {args.seeds} seeds (weights and data order). "
        "Metrics on the scored rows (each section names them): AUC and log loss of each "
        "step's marginal on all rows; "
        "`b@a` is step b on the rows where step a happened, scored with m_b / m_a; NRMSE, NMAE, "
        "normalised Gini, Spearman and calibration (mean prediction / mean label) of the core "
        "target on all rows, on its original scale, and its calibration on the last step's rows "
        "scored with E[y] / P(last step) (definitions in tfx_pipeline/metrics.py). Training "
        "examples/s is measured around `model.fit` (for trees: around the fits of all tasks).", "",
        "`oracle` (synthetic only) scores the generator's true P(click), P(conversion) and "
        "E[revenue] of each evaluation row: the best any model can do on these rows. `trees` "
        "is scikit-learn's HistGradientBoosting, one model per task, on the same Transform "
        "output and split (tfx_pipeline/compare.py `run_trees`).", "",
        "These are not reproductions of the papers' tables: their datasets are not available "
        "here.", ""]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as handle:
        handle.write("\n".join(header + sections))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
