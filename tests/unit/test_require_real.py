"""The CI guard: with KUBENAS_REQUIRE_REAL_COMPONENTS=1 a skip fails the run."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SKIPPING = textwrap.dedent("""
    import pytest

    def test_runs():
        assert True

    def test_skips():
        pytest.skip("redis-server not found")

    @pytest.mark.xfail(strict=True, reason="known")
    def test_expected_failure():
        assert False
""")

SKIPPING_MODULE = "import pytest\npytest.importorskip('a_module_that_is_not_installed')\n"


def run_pytest(tmp_path: Path, source: str, require: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(source)
    env = {**os.environ, "KUBENAS_REQUIRE_REAL_COMPONENTS": require, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.support.require_real",
         "--rootdir", str(tmp_path), str(tmp_path / "test_sample.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("source", [SKIPPING, SKIPPING_MODULE], ids=["test", "module"])
def test_a_skip_fails_when_real_components_are_required(tmp_path, source):
    result = run_pytest(tmp_path, source, "1")
    assert result.returncode in (1, 2), result.stdout + result.stderr  # failed tests, or a failed collection
    assert "turns every skip into a failure" in result.stdout
    assert "skipped" not in result.stdout.splitlines()[-1]


def test_a_skip_stays_a_skip_elsewhere(tmp_path):
    result = run_pytest(tmp_path, SKIPPING, "")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 1 skipped, 1 xfailed" in result.stdout
