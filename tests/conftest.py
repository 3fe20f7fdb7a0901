import os

import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.support.require_real"]

# Building networks is slow next to hypothesis' default deadline.
settings.register_profile("kubenas", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("kubenas")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB201_TABLE = os.path.join("shared", "data", "nasbench201", "cifar10-12epoch.csv")


def _checkouts() -> list[str]:
    """This checkout, and the one it was cloned from when that is a local path: the shared data
    lies beside the work area's checkout, not beside a throw-away clone of it."""
    import subprocess

    origin = subprocess.run(["git", "-C", ROOT, "config", "--get", "remote.origin.url"],
                            capture_output=True, text=True).stdout.strip()
    return [ROOT] + ([origin] if os.path.isdir(origin) else [])


@pytest.fixture(scope="session")
def nb201_table_path() -> str:
    if os.environ.get("KUBENAS_NB201_TABLE"):
        candidates = [os.environ["KUBENAS_NB201_TABLE"]]
    else:
        candidates = [os.path.join(checkout, "..", NB201_TABLE) for checkout in _checkouts()]
    path = next((c for c in candidates if os.path.exists(c)), None)
    if path is None:
        pytest.fail(f"NAS-Bench-201 table not found at {' or '.join(candidates)} (set KUBENAS_NB201_TABLE)")
    return path
