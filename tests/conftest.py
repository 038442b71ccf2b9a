import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_HILLSTROM = os.path.join(REPO, "..", "shared", "datasets", "hillstrom", "hillstrom.csv.gz")


@pytest.fixture(scope="session")
def hillstrom_csv():
    """The real Hillstrom file: $HILLSTROM_CSV, else the shared datasets folder beside the repo."""
    path = os.environ.get("HILLSTROM_CSV", DEFAULT_HILLSTROM)
    if not os.path.exists(path):
        pytest.skip(f"Hillstrom data not found at {path}; set HILLSTROM_CSV")
    return os.path.abspath(path)
