"""Helpers of the operator tests (fixtures are in conftest.py)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
import yaml

from tests.support.kube_cluster import RunningCluster
from tests.support.net import free_port  # noqa: F401 - used here and by the operator tests
from tests.support.waiting import wait_for  # noqa: F401 - likewise

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "architecturesearches.kubenas.io.yaml"
RBAC_RULES = ROOT / "operator" / "rbac" / "operator-rules.yaml"
OPERATOR_NAMESPACE = "kubenas-system"
OPERATOR_SA = "kubenas-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"
CONTROLLER_IMAGE = "registry.example.com/kubenas/controller:test"
TRAINER_IMAGE = "registry.example.com/kubenas/trainer:test"
SESSION_GLOB = "kn-*"


@contextlib.contextmanager
def run_redis(data_dir: Path, password: Optional[str] = None) -> Iterator[str]:
    """A real redis-server on a free port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server); "
                    "the operator tests need a real one")
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = ["port", str(port), "bind", "127.0.0.1", "save", "", "appendonly", "no", "dir", str(data_dir)]
    args = [binary] + [f"--{conf[i]}" if i % 2 == 0 else conf[i] for i in range(len(conf))]
    if password:
        args += ["--requirepass", password]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start on port {port}")
            time.sleep(0.05)
        auth = f":{password}@" if password else ""
        yield f"redis://{auth}127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Kube:
    """The test's own admin access (the Python client), with dict results."""

    def __init__(self, cluster: RunningCluster) -> None:
        import kubernetes

        self.cluster = cluster
        self.client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.apps = kubernetes.client.AppsV1Api(self.client)
        self.batch = kubernetes.client.BatchV1Api(self.client)
        self.net = kubernetes.client.NetworkingV1Api(self.client)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.ext = kubernetes.client.ApiextensionsV1Api(self.client)
        self.created: list[str] = []

    def d(self, obj: Any) -> Any:
        return self.client.sanitize_for_serialization(obj)

    def json(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return json.loads(call(*args, _preload_content=False, **kwargs).data)

    def maybe(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Optional[dict]:
        from kubernetes.client.rest import ApiException

        try:
            return self.json(call, *args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # ArchitectureSearch
    def create_search(self, body: dict) -> dict:
        ns = body["metadata"]["namespace"]
        return self.json(self.custom.create_namespaced_custom_object, "kubenas.io", "v1alpha1", ns,
                         "architecturesearches", body)

    def search(self, ns: str, name: str) -> Optional[dict]:
        return self.maybe(self.custom.get_namespaced_custom_object, "kubenas.io", "v1alpha1", ns,
                          "architecturesearches", name)

    def patch_search(self, ns: str, name: str, patch: dict) -> dict:
        return self.json(self.custom.patch_namespaced_custom_object, "kubenas.io", "v1alpha1", ns,
                         "architecturesearches", name, patch, _content_type="application/merge-patch+json")

    def status(self, ns: str, name: str) -> dict:
        return (self.search(ns, name) or {}).get("status") or {}

    def events(self, ns: str, name: str) -> list[dict]:
        items = self.json(self.core.list_namespaced_event, ns,
                          field_selector=f"involvedObject.name={name}")["items"]
        return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def namespace(self, prefix: str = "kn") -> str:
        """A fresh namespace, deleted after the test (see conftest's `cleanup_namespaces`)."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.core.create_namespace({"metadata": {"name": name}})
        self.created.append(name)
        return name

    def delete_created_namespaces(self) -> None:
        while self.created:
            with contextlib.suppress(Exception):
                self.core.delete_namespace(self.created.pop())


def kubeconfig_with_token(admin_kubeconfig: Path, token: str, path: Path) -> Path:
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster["cluster"]}],
        "users": [{"name": OPERATOR_SA, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "test", "user": OPERATOR_SA}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def operator_env(**env: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def run_operator(kubeconfig: Path, redis_url: str, namespace_pattern: str, liveness_port: int = 0,
                 log: Optional[Path] = None) -> Iterator[Any]:
    """The operator (kopf run -m kubenas_operator.handlers) in a thread, as KopfRunner runs it."""
    from kopf.testing import KopfRunner

    env = dict(
        KUBENAS_OPERATOR_KUBECONFIG=str(kubeconfig),
        KUBENAS_OPERATOR_PASSWORD_KEY=secrets.token_hex(32),
        KUBENAS_OPERATOR_REDIS_URL=redis_url,
        KUBENAS_OPERATOR_NAMESPACE=OPERATOR_NAMESPACE,
        KUBENAS_CONTROLLER_IMAGE=CONTROLLER_IMAGE,
        KUBENAS_TRAINER_IMAGE=TRAINER_IMAGE,
        # Short watches: streams are closed and re-opened several times per session,
        # so the tests also cover an operator that recovers from a watch ending.
        KUBENAS_OPERATOR_WATCH_SERVER_TIMEOUT="20",
        KUBENAS_OPERATOR_WATCH_CLIENT_TIMEOUT="30",
        KUBENAS_OPERATOR_CONNECT_TIMEOUT="10",
    )
    args = ["run", "--standalone", f"--namespace={namespace_pattern}", "-m", "kubenas_operator.handlers"]
    if liveness_port:
        args.append(f"--liveness=http://127.0.0.1:{liveness_port}/healthz")
    with operator_env(**env):
        runner = KopfRunner(args, timeout=60)
        try:
            with runner:
                runner.started = time.monotonic()
                yield runner
        finally:
            if log is not None and runner.future.done() and not runner.future.exception():
                log.write_text(runner.output)


def search_body(name: str, namespace: str, spec: Optional[dict] = None) -> dict:
    return {
        "apiVersion": "kubenas.io/v1alpha1",
        "kind": "ArchitectureSearch",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec if spec is not None else {
            "searchSpace": {"type": "nasbench201"},
            "strategy": {"algorithm": "evolution", "parameters": {"population": 8, "sample": 3}},
            "budget": {"maxTrials": 24, "parallelism": 2},
            "training": {"epochs": 2, "cellsPerStage": 1, "channels": 8},
        },
    }


def write_summary(client: Any, namespace: str, name: str, **fields: Any) -> None:
    from kubenas.queue.keys import SearchKeys
    from kubenas.spec import SearchSummary

    summary = SearchSummary.model_validate(fields)
    client.set(SearchKeys(namespace, name).summary, summary.model_dump_json(by_alias=True))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
