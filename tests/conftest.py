import os
import sys

import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The installed command (make setup: pip install -e .), beside this interpreter.
FUNNELSTACK = os.path.join(os.path.dirname(sys.executable), "funnelstack")
DEFAULT_HILLSTROM = os.path.join(REPO, "..", "shared", "datasets", "hillstrom", "hillstrom.csv.gz")

# Two logical CPU devices, so tests can train under MirroredStrategy. This must
# happen before TensorFlow initialises its runtime, hence here, at collection.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])


@pytest.fixture(scope="session")
def hillstrom_csv():
    """The real Hillstrom file: $HILLSTROM_CSV, else the shared datasets folder beside the repo."""
    path = os.environ.get("HILLSTROM_CSV", DEFAULT_HILLSTROM)
    if not os.path.exists(path):
        pytest.skip(f"Hillstrom data not found at {path}; set HILLSTROM_CSV")
    return os.path.abspath(path)


@pytest.fixture(scope="session")
def pipeline_export(tmp_path_factory):
    """The pushed version directory of one small pipeline run (shared_bottom on 3,000
    synthetic rows), shared by every serving test module; each copies it, since
    tests add and damage versions."""
    import subprocess
    import sys

    from serving.predict import resolve_version_dir
    from tfx_pipeline.cli import OPEN_QUALITY_GATES

    root = tmp_path_factory.mktemp("serving-run")
    subprocess.run([sys.executable, "-m", "tfx_pipeline", "run", "--dataset", "synthetic",
                    "--rows", "3000", "--train-steps", "60", "--eval-steps", "5",
                    *OPEN_QUALITY_GATES,
                    "--pipeline-root", str(root / "pipeline"), "--serving-dir", str(root / "serving")],
                   cwd=REPO, check=True, capture_output=True, timeout=900)
    return resolve_version_dir(str(root / "serving" / "shared_bottom"))
