"""Restarting the operator creates nothing twice, and finishes what a crash left half done.

The session's operator watches `kn-*`; these operators watch only a namespace of
their own, started and stopped one after the other."""

from __future__ import annotations

import pytest

from kubenas import metrics

from tests.operator.support import run_operator, search_body, wait_for

pytestmark = pytest.mark.kube


def snapshot(kube, ns: str, name: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(kind, name) -> (uid, version) of every object the operator made for this search.

    The version is what only a writer of the object's spec changes: metadata.generation
    where the kind has one (the real controllers keep writing the status of Deployments
    and Jobs), else the resourceVersion (Secrets, ConfigMaps, Services)."""
    selector = f"app.kubernetes.io/instance={name}"
    lists = {
        "Secret": kube.core.list_namespaced_secret, "ConfigMap": kube.core.list_namespaced_config_map,
        "Service": kube.core.list_namespaced_service, "Deployment": kube.apps.list_namespaced_deployment,
        "Job": kube.batch.list_namespaced_job, "NetworkPolicy": kube.net.list_namespaced_network_policy,
        "PersistentVolumeClaim": kube.core.list_namespaced_persistent_volume_claim,
    }
    out = {}
    for kind, call in lists.items():
        for item in kube.json(call, ns, label_selector=selector)["items"]:
            meta = item["metadata"]
            if not meta.get("ownerReferences"):
                continue
            if kind == "PersistentVolumeClaim":  # the volume controllers annotate it; its spec is what we wrote
                version = str(sorted(item["spec"]["resources"]["requests"].items()))
            else:
                version = f"generation {meta['generation']}" if "generation" in meta else meta["resourceVersion"]
            out[(kind, meta["name"])] = (meta["uid"], version)
    return out


def reconciles(ns: str, name: str) -> float:
    return metrics.OPERATOR_RECONCILES.labels(f"{ns}/{name}", "ok")._value.get()


def test_restarts_create_nothing_twice(kube, crd, operator_kubeconfig, redis_url, tmp_path):
    ns, name = kube.namespace("restart"), "resilient"
    spec = {**search_body(name, ns)["spec"], "redis": {"persistence": {"enabled": True, "size": "1Gi"}}}
    with run_operator(operator_kubeconfig, redis_url, ns):
        kube.create_search(search_body(name, ns, spec))
        first = wait_for("all 9 objects", lambda: (lambda s: s if len(s) == 9 else None)(snapshot(kube, ns, name)))
        wait_for("reconciled", lambda: kube.status(ns, name).get("observedGeneration") == 1)
    password = kube.json(kube.core.read_namespaced_secret, f"kubenas-{name}-redis", ns)["data"]["password"]

    # 1. a plain restart: the resume handler re-applies everything, and nothing changes at all
    before = reconciles(ns, name)
    with run_operator(operator_kubeconfig, redis_url, ns):
        wait_for("the resume handler", lambda: reconciles(ns, name) > before)
    assert snapshot(kube, ns, name) == first, "a restart rewrote or recreated objects"

    # 2. a crash half-way through: the trainers and the controller's spec were never written
    kube.apps.delete_namespaced_deployment(f"kubenas-{name}-trainer", ns)
    kube.core.delete_namespaced_config_map(f"kubenas-{name}-spec", ns)
    partial = snapshot(kube, ns, name)
    assert len(partial) == 7
    before = reconciles(ns, name)
    with run_operator(operator_kubeconfig, redis_url, ns):
        wait_for("the resume handler", lambda: reconciles(ns, name) > before)
        after = wait_for("9 objects again", lambda: (lambda s: s if len(s) == 9 else None)(snapshot(kube, ns, name)))
    for key, value in partial.items():
        assert after[key] == value, f"{key} was rewritten"
    assert kube.json(kube.core.read_namespaced_secret, f"kubenas-{name}-redis", ns)["data"]["password"] == password
    assert kube.status(ns, name)["phase"] == "Pending"
