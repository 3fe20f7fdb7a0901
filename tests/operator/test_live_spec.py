"""Budget and suspend reach a running search through the real API server: `kubectl scale`
and patches of spec.budget / spec.suspend move the trainer Deployment and rewrite the
search's live-spec record in a real Redis, and never replace the controller Job."""

from __future__ import annotations

import json

import pytest

from kubenas.queue.keys import SearchKeys
from kubenas.queue.live_spec import read_live_spec

from tests.operator.support import search_body, wait_for

pytestmark = pytest.mark.kube


def live(redis_client, ns: str, name: str):
    return read_live_spec(redis_client, SearchKeys(ns, name))


def deployment_replicas(kube, ns: str, name: str):
    deployment = kube.maybe(kube.apps.read_namespaced_deployment, f"kubenas-{name}-trainer", ns)
    return None if deployment is None else deployment["spec"]["replicas"]


def generation(kube, ns: str, name: str) -> int:
    return kube.search(ns, name)["metadata"]["generation"]


def test_scale_budget_and_suspend_reach_the_trainers_and_the_live_spec(kube, operator, cluster, redis_client):
    ns, name = kube.namespace(), "live"
    kube.create_search(search_body(name, ns))
    first = wait_for("the live spec", lambda: live(redis_client, ns, name))
    assert (first.budget.parallelism, first.budget.max_trials, first.suspend, first.revision) == (2, 24, False, 1)
    job = wait_for("the controller Job", lambda: kube.maybe(kube.batch.read_namespaced_job, f"kubenas-{name}-controller", ns))

    # kubectl scale: the scale subresource sets budget.parallelism
    cluster.kubectl("scale", f"archsearch/{name}", "-n", ns, "--replicas=6")
    wait_for("6 trainers", lambda: deployment_replicas(kube, ns, name) == 6)
    scaled = wait_for("the live spec at 6", lambda: (lambda s: s if s and s.budget.parallelism == 6 else None)(
        live(redis_client, ns, name)))
    assert scaled.revision == generation(kube, ns, name) > first.revision

    # the limits of the budget
    kube.patch_search(ns, name, {"spec": {"budget": {"maxTrials": 50, "maxDuration": "2h", "maxFailedTrials": 3}}})
    budget = wait_for("the new limits", lambda: (lambda s: s if s and s.budget.max_trials == 50 else None)(
        live(redis_client, ns, name))).budget
    assert (budget.max_duration, budget.max_failed_trials, budget.parallelism) == ("2h", 3, 6)

    # suspend: no trainers, the controller told; resume brings them back
    kube.patch_search(ns, name, {"spec": {"suspend": True}})
    wait_for("no trainers", lambda: deployment_replicas(kube, ns, name) == 0)
    suspended = wait_for("suspend in the live spec", lambda: (lambda s: s if s and s.suspend else None)(
        live(redis_client, ns, name)))
    assert suspended.revision == generation(kube, ns, name)
    kube.patch_search(ns, name, {"spec": {"suspend": False}})
    wait_for("6 trainers again", lambda: deployment_replicas(kube, ns, name) == 6)
    wait_for("resumed in the live spec", lambda: (lambda s: s is not None and not s.suspend)(live(redis_client, ns, name)))

    # a Redis that lost the record gets it back from the next poll
    redis_client.delete(SearchKeys(ns, name).live_spec)
    restored = wait_for("the record rewritten", lambda: live(redis_client, ns, name))
    assert restored.revision == generation(kube, ns, name) and restored.budget.parallelism == 6

    # none of it replaced the controller
    now = kube.maybe(kube.batch.read_namespaced_job, f"kubenas-{name}-controller", ns)
    assert now["metadata"]["uid"] == job["metadata"]["uid"]


def test_a_change_of_an_immutable_field_is_refused_naming_it(kube, operator, cluster):
    ns, name = kube.namespace(), "fixed"
    kube.create_search(search_body(name, ns))
    for patch, field in [({"searchSpace": {"type": "darts"}}, "spec.searchSpace"),
                         ({"training": {"dataset": {"name": "cifar10"}}}, "spec.training"),
                         ({"objective": {"target": 0.9}}, "spec.objective")]:
        result = cluster.kubectl("patch", "archsearch", name, "-n", ns, "--type=merge",
                                 "-p", json.dumps({"spec": patch}), check=False)
        assert result.returncode != 0, patch
        assert f"{field} is immutable once the search exists" in result.stderr, result.stderr
    assert kube.search(ns, name)["metadata"]["generation"] == 1
