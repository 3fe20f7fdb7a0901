"""The operator against real parts: kube-apiserver with etcd and the real controllers
(kubenas-testcluster), a real redis-server, and the operator itself under kopf's
KopfRunner, logged in as its own ServiceAccount with the RBAC rules the Helm
chart ships (operator/rbac/operator-rules.yaml).

One cluster, one Redis and one operator per test session; each test works in
namespaces of its own (`kn-...`; the session's operator watches `kn-*`). A
missing kubenas-testcluster or redis-server fails these tests, never skips them.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# Poll fast in tests (the operator reads its settings when it starts, not at import).
os.environ.setdefault("KUBENAS_OPERATOR_POLL_SECONDS", "1")

from tests.operator.support import (  # noqa: E402
    CRD_FILE, OPERATOR_NAMESPACE, OPERATOR_SA, RBAC_RULES, SESSION_GLOB, Kube, kubeconfig_with_token,
    free_port, run_operator, run_redis, wait_for,
)
from tests.support.kube_cluster import RunningCluster, start_test_cluster  # noqa: E402


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    with run_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture()
def redis_client(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Iterator[RunningCluster]:
    # With the real controllers: ownerReferences cascade (garbage collector),
    # Deployments get ReplicaSets and pods, Jobs get pods (no kubelet: none runs).
    with start_test_cluster(tmp_path_factory.mktemp("kube"), with_controllers=True) as running:
        yield running


@pytest.fixture(scope="session")
def kube(cluster) -> Kube:
    return Kube(cluster)


@pytest.fixture(autouse=True)
def cleanup_namespaces(request):
    """Delete the namespaces a test made (the real namespace controller empties them), so
    searches of finished tests stop costing the operator and the controllers anything."""
    yield
    if "kube" in request.fixturenames:
        request.getfixturevalue("kube").delete_created_namespaces()


@pytest.fixture(scope="session")
def crd(cluster, kube) -> dict:
    """The CRD from crds/ (the generated file), applied as a user would."""
    cluster.kubectl("apply", "--server-side", "-f", str(CRD_FILE))

    def established():
        served = kube.json(kube.ext.read_custom_resource_definition, "architecturesearches.kubenas.io")
        conditions = {c["type"]: c["status"] for c in (served.get("status") or {}).get("conditions") or []}
        return served if conditions.get("Established") == "True" else None

    served = wait_for("the CRD to be established", established, timeout=60)
    served["established_at"] = time.monotonic()
    return served


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster, kube, crd, tmp_path_factory) -> Path:
    """A kubeconfig for the operator's ServiceAccount, bound to the rules the chart ships."""
    rules = yaml.safe_load(RBAC_RULES.read_text())["rules"]
    kube.core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
    kube.core.create_namespaced_service_account(OPERATOR_NAMESPACE, {"metadata": {"name": OPERATOR_SA}})
    kube.rbac.create_cluster_role({"metadata": {"name": "kubenas-operator"}, "rules": rules})
    kube.rbac.create_cluster_role_binding({
        "metadata": {"name": "kubenas-operator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubenas-operator"},
        "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NAMESPACE}],
    })
    request = kube.json(kube.core.create_namespaced_service_account_token, OPERATOR_SA, OPERATOR_NAMESPACE,
                        {"spec": {"expirationSeconds": 4 * 3600}})
    return kubeconfig_with_token(cluster.kubeconfig, request["status"]["token"],
                                  tmp_path_factory.mktemp("operator") / "kubeconfig")


@pytest.fixture(scope="session")
def liveness_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def operator(operator_kubeconfig, redis_url, liveness_port, tmp_path_factory) -> Iterator[Any]:
    """The session's operator: watches kn-* as its ServiceAccount; managed searches read `redis_url`."""
    log = tmp_path_factory.mktemp("operator-log") / "operator.log"
    with run_operator(operator_kubeconfig, redis_url, SESSION_GLOB, liveness_port, log) as runner:
        yield runner
