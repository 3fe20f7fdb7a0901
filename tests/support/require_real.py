"""A pytest plugin: with KUBENAS_REQUIRE_REAL_COMPONENTS=1 (set by .ci/run) a skipped test fails.

CI must not pass by skipping what it could not run: a missing redis-server, API server,
prometheus or optional package is a broken machine, not a reason to go green. Expected
failures (xfail) are not skips and keep their meaning.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

VARIABLE = "KUBENAS_REQUIRE_REAL_COMPONENTS"


def required() -> bool:
    return os.environ.get(VARIABLE, "").strip().lower() in {"1", "true", "yes"}


def _skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: why")
        return str(longrepr[2])
    return str(longrepr)


def _fail_if_skipped(report: Any) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and required():
        report.outcome = "failed"
        report.longrepr = f"skipped, but {VARIABLE}=1 turns every skip into a failure: {_skip_reason(report)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Any:
    outcome = yield
    _fail_if_skipped(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: Any) -> Any:
    outcome = yield
    _fail_if_skipped(outcome.get_result())
