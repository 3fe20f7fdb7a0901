"""The operator's RBAC (operator/rbac/operator-rules.yaml, as the Helm chart ships it):
enough to do its job (every test in this directory runs the operator under it) and
no more: it cannot read Secrets, not even the Redis Secrets it creates."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.operator.support import OPERATOR_USER, RBAC_RULES
from tests.support.kube_cluster import KUBECTL

pytestmark = pytest.mark.kube

ALLOWED = [
    ("watch", "architecturesearches.kubenas.io", "-A"),
    ("patch", "architecturesearches.kubenas.io/status", "-n", "default"),
    ("create", "secrets", "-n", "default"),
    ("create", "events", "-n", "default"),
    ("patch", "deployments.apps", "-n", "default"),
    ("delete", "deployments.apps", "-n", "default"),
    ("create", "jobs.batch", "-n", "default"),
    ("patch", "jobs.batch", "-n", "default"),  # a one-shot search's worker Job: spec.suspend
    ("patch", "networkpolicies.networking.k8s.io", "-n", "default"),
    ("patch", "configmaps", "-n", "default"),
]
DENIED = [
    ("get", "secrets", "-n", "default"),
    ("get", "secrets", "-n", "kube-system"),
    ("list", "secrets", "-A"),
    ("watch", "secrets", "-A"),
    ("update", "secrets", "-n", "default"),
    ("patch", "secrets", "-n", "default"),
    ("delete", "secrets", "-n", "default"),
    ("create", "pods", "-n", "default"),
    ("get", "pods", "-n", "default"),
    ("create", "pods/exec", "-n", "default"),
    ("create", "roles.rbac.authorization.k8s.io", "-n", "default"),
    ("create", "rolebindings.rbac.authorization.k8s.io", "-n", "default"),
    ("create", "serviceaccounts/token", "-n", "default"),
    ("delete", "architecturesearches.kubenas.io", "-n", "default"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io", "-A"),
    ("list", "nodes", "-A"),
]


def can_i(cluster, verb: str, resource: str, *scope: str) -> bool:
    result = cluster.kubectl("auth", "can-i", verb, resource, *scope, f"--as={OPERATOR_USER}", check=False)
    return result.stdout.strip() == "yes"


def test_operator_may_do_its_job(cluster, operator_kubeconfig):
    refused = [" ".join(c) for c in ALLOWED if not can_i(cluster, *c)]
    assert not refused, f"the operator's RBAC misses: {refused}"


def test_operator_may_not_read_secrets_or_escalate(cluster, operator_kubeconfig, kube):
    granted = [" ".join(c) for c in DENIED if can_i(cluster, *c)]
    assert not granted, f"the operator's RBAC grants too much: {granted}"
    # and for real, with the operator's own token: another application's Secret stays closed
    ns = kube.namespace()
    kube.core.create_namespaced_secret(ns, {"metadata": {"name": "db-password"}, "stringData": {"password": "x"}})
    result = subprocess.run([KUBECTL, "--kubeconfig", str(operator_kubeconfig), "get", "secret", "db-password",
                             "-n", ns], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "forbidden" in result.stderr.lower(), result.stderr


def test_the_cluster_role_is_the_rules_file(kube, operator_kubeconfig):
    role = kube.json(kube.rbac.read_cluster_role, "kubenas-operator")
    want = yaml.safe_load(RBAC_RULES.read_text())["rules"]
    normalized = [{k: v for k, v in r.items() if v} for r in role["rules"]]
    assert normalized == want
