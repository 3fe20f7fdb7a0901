import os

import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.support.require_real"]

# Building networks is slow next to hypothesis' default deadline.
settings.register_profile("kubenas", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("kubenas")

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(scope="session")
def nb201_table_path() -> str:
    path = os.environ.get("KUBENAS_NB201_TABLE", os.path.join(SHARED_DATA, "nasbench201", "cifar10-12epoch.csv"))
    if not os.path.exists(path):
        pytest.fail(f"NAS-Bench-201 table not found at {path} (set KUBENAS_NB201_TABLE)")
    return path
