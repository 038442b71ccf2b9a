import os

import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
