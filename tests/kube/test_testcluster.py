"""The test cluster is a real Kubernetes control plane: real storage, real RBAC
and, with controllers, real Deployment -> ReplicaSet -> Pod reconciliation and
garbage collection. Driven with kubectl, as a user would."""

from __future__ import annotations

import json

import pytest

from tests.support.kube_cluster import RunningCluster, start_test_cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.kube


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> RunningCluster:
    with start_test_cluster(tmp_path_factory.mktemp("kube-apiserver")) as running:
        yield running


def test_configmap_round_trip_and_rbac(cluster: RunningCluster):
    ns = "kubenas-rbac"
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl(
        "create", "configmap", "search-config", "-n", ns,
        "--from-literal=strategy=evolution", "--from-literal=trials=12",
    )
    data = json.loads(
        cluster.kubectl("get", "configmap", "search-config", "-n", ns, "-o", "json").stdout
    )["data"]
    assert data == {"strategy": "evolution", "trials": "12"}

    cluster.kubectl("create", "serviceaccount", "trainer", "-n", ns)
    sa = f"system:serviceaccount:{ns}:trainer"

    # No RBAC yet: denied, both as a question and for a real request.
    denied = cluster.kubectl("auth", "can-i", "get", "secrets", "-n", ns, f"--as={sa}", check=False)
    assert denied.stdout.strip() == "no", denied
    assert denied.returncode != 0
    forbidden = cluster.kubectl("get", "secrets", "-n", ns, f"--as={sa}", check=False)
    assert forbidden.returncode != 0
    assert "forbidden" in forbidden.stderr.lower(), forbidden.stderr

    cluster.kubectl("create", "role", "secret-reader", "-n", ns, "--verb=get,list", "--resource=secrets")
    cluster.kubectl(
        "create", "rolebinding", "trainer-secret-reader", "-n", ns,
        "--role=secret-reader", f"--serviceaccount={ns}:trainer",
    )
    allowed = cluster.kubectl("auth", "can-i", "get", "secrets", "-n", ns, f"--as={sa}", check=False)
    assert allowed.stdout.strip() == "yes", allowed
    assert allowed.returncode == 0
    cluster.kubectl("get", "secrets", "-n", ns, f"--as={sa}")
    # The grant is namespaced: another namespace is still off limits.
    other = cluster.kubectl("auth", "can-i", "get", "secrets", "-n", "default", f"--as={sa}", check=False)
    assert other.stdout.strip() == "no", other


def test_deployment_reconciled_and_garbage_collected(tmp_path):
    with start_test_cluster(tmp_path / "cluster", with_controllers=True) as cluster:
        ns = "kubenas-workload"
        cluster.kubectl("create", "namespace", ns)
        cluster.kubectl(
            "create", "deployment", "web", "-n", ns,
            "--image=registry.k8s.io/pause:3.10", "--replicas=1",
        )

        def names(kind: str) -> list[str]:
            out = cluster.kubectl("get", kind, "-n", ns, "-l", "app=web", "-o", "name").stdout
            return out.split()

        replicasets = wait_for("the Deployment's ReplicaSet", lambda: names("replicasets"))
        assert len(replicasets) == 1
        pods = wait_for("the ReplicaSet's Pod", lambda: names("pods"))
        assert len(pods) == 1
        pod = json.loads(cluster.kubectl("get", pods[0], "-n", ns, "-o", "json").stdout)
        owner = pod["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "ReplicaSet"
        assert f"replicaset.apps/{owner['name']}" == replicasets[0]
        # No kubelet and no Node: the pod exists but is never scheduled.
        assert pod["status"]["phase"] == "Pending"

        # Deleting the Deployment leaves its dependents to the garbage collector.
        cluster.kubectl("delete", "deployment", "web", "-n", ns, "--wait=false")
        wait_for("garbage collection of the ReplicaSet", lambda: not names("replicasets"), timeout=90)
        wait_for("garbage collection of the Pod", lambda: not names("pods"), timeout=90)
