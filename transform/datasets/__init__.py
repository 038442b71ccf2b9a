"""Built-in datasets: where a dataset's data comes from and which spec reads it.

  synthetic   the seeded funnel generator (default for `make demo`)
  hillstrom   MineThatData e-mail data, from --data or $HILLSTROM_CSV
  ali_ccp     Ali-CCP (Taobao) in Torch-RecHub's CSV layout, from --data (one file)
  aliexpress  AliExpress search logs in the 16+63-column layout, from --data (one file)
  kuairand    KuaiRand logs joined with user and video features, from --data (one file)
  csv         any CSV file (--data) described by a spec file (--spec)
  parquet     a Parquet file or a directory of *.parquet files (--data), with --spec
  tfrecord    a TFRecord file of tf.Examples or a directory of them (--data), with --spec
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

from transform import spec as spec_lib

NAMES = ("synthetic", "hillstrom", "ali_ccp", "aliexpress", "kuairand", "csv", "parquet",
         "tfrecord")
# Datasets that are any file (or directory) in a format, described by --spec.
FORMAT_NAMES = ("csv", "parquet", "tfrecord")


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """A data file (or directory) in `format` and the spec that describes it."""

    spec: spec_lib.DatasetSpec
    path: str
    rename: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # The synthetic generator's FunnelConfig when the rows were generated (it knows
    # each row's true expectations); None for recorded data.
    generator: object = None
    # Derives columns from each chunk before the checks (transform.ingest.Prepare).
    prepare: object = None
    # How `path` is read: "csv", "parquet" or "tfrecord" (transform.formats.reader_for).
    format: str = "csv"


def resolve(name: str, work_dir: str, data: str | None = None, spec_path: str | None = None,
            rows: int | None = None, seed: int = 0) -> DatasetSource:
    """Finds (or, for `synthetic`, writes) the data for dataset `name`."""
    # Imported here so `python -m transform.datasets.synthetic` does not import itself twice.
    from transform.datasets import hillstrom, synthetic

    if name in _adapters():
        return _adapter_source(_adapters()[name], data, spec_path)
    if name == "synthetic":
        if data:
            raise ValueError("the synthetic dataset is generated; use --rows/--seed instead of --data")
        config = synthetic.FunnelConfig(rows=rows or synthetic.FunnelConfig.rows, seed=seed)
        path = os.path.join(work_dir, f"synthetic-rows{config.rows}-seed{config.seed}.csv")
        if not os.path.exists(path):
            os.makedirs(work_dir, exist_ok=True)
            synthetic.write_csv(path + ".partial", config)
            os.replace(path + ".partial", path)
        return DatasetSource(_with_spec_override(synthetic.SPEC, spec_path), path,
                             generator=config)
    if name == "hillstrom":
        return DatasetSource(_with_spec_override(hillstrom.SPEC, spec_path),
                             hillstrom.resolve_path(data), hillstrom.RENAME)
    if name in FORMAT_NAMES:
        if not data or not spec_path:
            raise ValueError(f"the {name} dataset needs both --data PATH and --spec FILE")
        return DatasetSource(spec_lib.load(spec_path), data, format=name)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")


def spec_for(name: str, spec_path: str | None = None) -> spec_lib.DatasetSpec:
    """The spec of dataset `name` (or the file `spec_path`), without touching any data."""
    from transform.datasets import hillstrom, synthetic

    builtin = {"synthetic": synthetic.SPEC, "hillstrom": hillstrom.SPEC,
               **{adapter: module.SPEC for adapter, module in _adapters().items()}}
    if name in FORMAT_NAMES:
        if not spec_path:
            raise ValueError(f"the {name} dataset needs --spec FILE")
        return spec_lib.load(spec_path)
    if name not in builtin:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}")
    return _with_spec_override(builtin[name], spec_path)


def _adapters() -> dict:
    """Public datasets read from one file in a published layout: name -> module with
    SPEC, resolve_path(data) (which checks the layout), and optionally RENAME (header
    names) and PREPARE (a transform.ingest.Prepare that derives columns)."""
    from transform.datasets import ali_ccp, aliexpress, kuairand

    return {"ali_ccp": ali_ccp, "aliexpress": aliexpress, "kuairand": kuairand}


def _adapter_source(module, data: str | None, spec_path: str | None) -> DatasetSource:
    return DatasetSource(_with_spec_override(module.SPEC, spec_path), module.resolve_path(data),
                         getattr(module, "RENAME", {}), prepare=getattr(module, "PREPARE", None))


def _with_spec_override(default: spec_lib.DatasetSpec, spec_path: str | None):
    return spec_lib.load(spec_path) if spec_path else default
