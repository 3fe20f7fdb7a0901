"""A multi-objective search's Pareto front, from the controller's search state through the
operator into the resource's status on a real API server (whose schema would prune
any field it does not declare), and into `kubectl get -o wide`."""

from __future__ import annotations

import pytest

from kubenas.objectives import Objectives
from kubenas.search_state import SearchState
from kubenas.spec import BudgetSpec

from tests.operator.support import search_body, wait_for, write_summary

pytestmark = pytest.mark.kube

METRICS = [{"name": "validationAccuracy", "goal": "maximize"}, {"name": "parameters", "goal": "minimize"}]


def _state_with_results(count: int) -> SearchState:
    """The controller's own bookkeeping fed `count` results whose (accuracy, parameters) all
    trade off (every one on the front), and as many that are dominated."""
    state = SearchState(BudgetSpec(max_trials=1000), make_message=None,
                        objectives=Objectives((("validationAccuracy", "maximize"), ("parameters", "minimize"))))
    for i in range(count):
        good = {"e": "result", "id": f"t-{i:04d}", "status": "succeeded", "reward": 0.5 + i / 100,
                "accuracy": 0.5 + i / 100, "cost": {"params": 1000.0 * (i + 1)}}
        worse = {"e": "result", "id": f"t-{count + i:04d}", "status": "succeeded", "reward": 0.4 + i / 100,
                 "accuracy": 0.4 + i / 100, "cost": {"params": 1000.0 * (i + 2)}}
        state.apply(good)
        state.apply(worse)
    return state


def test_the_front_reaches_the_status_bounded(kube, operator, redis_client, cluster):
    ns, name = kube.namespace(), "pareto"
    spec = search_body(name, ns)["spec"]
    spec["objective"] = {"metrics": METRICS}
    kube.create_search(search_body(name, ns, spec))
    summary = _state_with_results(20).summary(updated="2026-01-01T00:00:00Z")
    assert summary.pareto_front_size == 20 and len(summary.pareto_front) == 16
    write_summary(redis_client, ns, name, **summary.model_dump(by_alias=True))

    status = wait_for("the front in the status", lambda: (lambda s: s if s.get("paretoFront") else None)(
        kube.status(ns, name)))
    front = status["paretoFront"]
    assert len(front) == 16 and status["paretoFrontSize"] == 20
    # Spread along the front, both ends kept: the most accurate and the smallest.
    assert front[0]["trial"] == "t-0019" and front[-1]["trial"] == "t-0000"
    assert front[0]["values"] == {"validationAccuracy": pytest.approx(0.69), "parameters": 20000.0}
    assert all(m["trial"] < "t-0020" for m in front), "a dominated trial reached the front"
    assert status["hypervolume"] == pytest.approx(summary.hypervolume) and status["hypervolume"] > 0

    table = cluster.kubectl("get", "archsearch", name, "-n", ns, "-o", "wide").stdout
    header, row = table.splitlines()
    at = header.index("FRONT")  # columns are aligned; others may be blank
    assert row[at:].split()[0] == "20"
