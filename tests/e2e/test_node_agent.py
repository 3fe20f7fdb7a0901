"""The node agent makes the mini-cluster run real workloads: a real control
plane (API server, controllers, scheduler) and pods as local processes with
their own IPs, volumes and Services. One cluster and one agent for the module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support.kube_cluster import RunningCluster, start_test_cluster
from tests.support.node_agent import RunningNodeAgent, expand, start_node_agent
from tests.support.waiting import wait_for

pytestmark = pytest.mark.kube

NS = "kn-agent"

# A web server bound to its pod IP (from $(POD_IP) in args); it answers with its hostname.
WEB_SERVER = r"""
import http.server, socket, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = socket.gethostname().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
print("serving on", sys.argv[1], flush=True)
http.server.ThreadingHTTPServer((sys.argv[1], 8080), Handler).serve_forever()
"""

# Fetches each URL (retrying a little) and fails unless all answered.
HTTP_CLIENT = r"""
import sys, time, urllib.request
failed = 0
for url in sys.argv[1:]:
    for attempt in range(20):
        try:
            print(url, "->", urllib.request.urlopen(url, timeout=5).read().decode(), flush=True)
            break
        except Exception as e:
            print(url, "error:", e, flush=True)
            time.sleep(1)
    else:
        failed += 1
sys.exit(1 if failed else 0)
"""


# --- helpers ------------------------------------------------------------------------

class Kubectl:
    def __init__(self, cluster: RunningCluster, agent: RunningNodeAgent):
        self.cluster, self.agent = cluster, agent

    def __call__(self, *args: str, **kwargs):
        return self.cluster.kubectl(*args, **kwargs)

    def apply(self, *objects: dict) -> None:
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                   "items": list(objects)}))

    def get(self, kind: str, name: str = "", namespace: str = NS, **kw) -> dict:
        args = ["get", kind] + ([name] if name else []) + ["-n", namespace, "-o", "json"]
        for key, value in kw.items():
            args += [f"--{key.replace('_', '-')}", value]
        return json.loads(self.cluster.kubectl(*args).stdout)

    def pods(self, selector: str) -> list[dict]:
        return self.get("pods", selector=selector)["items"]

    def wait_for(self, what: str, probe, timeout: float = 120, interval: float = 0.5):
        return wait_for(what, probe, timeout, interval, details=self.agent.diagnostics)

    def ready_pods(self, selector: str) -> list[dict]:
        return [p for p in self.pods(selector) if is_ready(p) and not p["metadata"].get("deletionTimestamp")]

    def job_condition(self, name: str, wanted: str, timeout: float = 120) -> dict:
        def probe():
            job = self.get("job", name)
            conds = {c["type"]: c["status"] for c in job.get("status", {}).get("conditions") or []}
            if wanted == "Complete" and conds.get("Failed") == "True":
                raise AssertionError(f"job {name} failed: {job['status']}\n{self.agent.diagnostics()}")
            return job if conds.get(wanted) == "True" else None

        return self.wait_for(f"job {name} {wanted}", probe, timeout)


def is_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions") or [])


def pid_of(pod: dict, container: int = 0) -> int:
    cid = pod["status"]["containerStatuses"][container]["containerID"]
    assert cid.startswith("pid://"), cid
    return int(cid[len("pid://"):])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (the agent reaps its children, this just avoids a race).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def deployment(name: str, container: dict, replicas: int = 1, **pod_spec) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"terminationGracePeriodSeconds": 5, "containers": [container], **pod_spec}},
        },
    }


def service(name: str, port: int, target) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"app": name}, "ports": [{"name": "main", "port": port, "targetPort": target}]}}


def job(name: str, container: dict, backoff_limit: int = 2, **pod_spec) -> dict:
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": NS},
        "spec": {"backoffLimit": backoff_limit, "template": {"spec": {
            "restartPolicy": "Never", "containers": [container], **pod_spec}}},
    }


POD_IP_ENV = {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def web_container() -> dict:
    return {
        "name": "web", "image": "python:3.11-slim",
        "command": ["python", "-c", WEB_SERVER], "args": ["$(POD_IP)"],
        "env": [POD_IP_ENV],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }


# --- fixtures -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def kube(tmp_path_factory) -> Kubectl:
    base = tmp_path_factory.mktemp("node-agent")
    with start_test_cluster(base / "cluster", with_controllers=True) as cluster:
        with start_node_agent(cluster, base / "node", gpus=2) as agent:
            k = Kubectl(cluster, agent)
            k("create", "namespace", NS)
            # The ServiceAccount admission plugin rejects pods until "default" exists.
            k.wait_for("the default ServiceAccount", lambda: k("get", "sa", "default", "-n", NS, check=False).returncode == 0)
            yield k


@pytest.fixture(scope="module")
def web(kube: Kubectl) -> dict:
    kube.apply(deployment("web", web_container()), service("web", 80, "http"))
    return kube.wait_for("a ready web pod", lambda: kube.ready_pods("app=web"))[0]


# --- tests --------------------------------------------------------------------------

def test_expand_follows_kubernetes_rules():
    env = {"A": "1", "POD_IP": "10.0.0.2"}
    assert expand("$(A)-$(POD_IP)", env) == "1-10.0.0.2"
    assert expand("$$(A) $(MISSING) $(A", env) == "$(A) $(MISSING) $(A"
    assert expand("cost: $5", env) == "cost: $5"


def test_node_registered_ready_with_gpus_and_lease(kube: Kubectl):
    node = kube.get("node", kube.agent.node_name, namespace="default")
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert not [t for t in node["spec"].get("taints") or [] if t["effect"] == "NoSchedule"]
    lease = kube.get("lease", kube.agent.node_name, namespace="kube-node-lease")
    assert lease["spec"]["holderIdentity"] == kube.agent.node_name


def test_deployment_runs_ready_and_serves_through_its_service(kube: Kubectl, web: dict):
    assert web["status"]["phase"] == "Running"
    ip = web["status"]["podIP"]
    assert ip.startswith(kube.agent.pod_cidr.rsplit(".", 1)[0] + ".")
    assert web["status"]["hostIP"] and web["status"]["startTime"]
    status = web["status"]["containerStatuses"][0]
    assert status["ready"] and "running" in status["state"]
    assert {c["type"] for c in web["status"]["conditions"]} >= {"PodScheduled", "Initialized", "ContainersReady", "Ready"}
    # From the node: straight to the pod IP.
    assert urllib.request.urlopen(f"http://{ip}:8080/", timeout=10).read().decode() == web["metadata"]["name"]
    # From another pod: through the Service (port 80 -> targetPort http 8080), by every name form.
    urls = [f"http://{host}/" for host in ("web", f"web.{NS}", f"web.{NS}.svc", f"web.{NS}.svc.cluster.local")]
    kube.apply(job("web-client", {"name": "client", "image": "python", "command": ["python", "-c", HTTP_CLIENT, *urls]}))
    kube.job_condition("web-client", "Complete")
    client_pod = kube.pods("job-name=web-client")[0]
    log = kube.agent.container_log(NS, client_pod["metadata"]["name"], "client")
    assert log.count(f"-> {web['metadata']['name']}") == 4, log


def test_job_sees_env_volumes_and_claim(kube: Kubectl):
    script = r"""
import json, os, socket, sys
def writable(path):
    try:
        open(path, "w").write("x")
        return True
    except OSError:
        return False
keys = ["GREETING", "PASSWORD", "POD_NAME", "POD_NAMESPACE", "POD_IP", "NODE_NAME", "CFG_mode", "COMPOSED",
        "KUBERNETES_SERVICE_HOST", "HOSTNAME"]
open("/scratch/note", "w").write("scratch")
open("/etc/kn-e2e/data/written-by-pod", "w").write("persisted")
print("RESULT " + json.dumps({
    "env": {k: os.environ.get(k) for k in keys},
    "argv": sys.argv[1:],
    "cwd": os.getcwd(),
    "hostname": socket.gethostname(),
    "config": sorted(f for f in os.listdir("/etc/kn-e2e/config") if not f.startswith(".")),
    "config_yaml": open("/etc/kn-e2e/config/config.yaml").read(),
    "secret": open("/etc/kn-e2e/secret/password").read(),
    "secret_writable": writable("/etc/kn-e2e/secret/other"),
    "scratch": open("/scratch/note").read(),
}), flush=True)
"""
    kube.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": NS},
         "data": {"greeting": "hello", "mode": "fast", "config.yaml": "layers: 4\n"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": NS},
         "stringData": {"password": "s3cret"}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": NS},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Mi"}}}},
        job("inspect", {
            "name": "inspect", "image": "python",
            "command": ["python", "-c", script],
            "args": ["$(GREETING)", "$$(GREETING)", "$(UNDEFINED)"],
            "workingDir": "/etc/kn-e2e/config",
            "env": [
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}}},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "COMPOSED", "value": "$(GREETING)-world"},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                POD_IP_ENV,
            ],
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
            "volumeMounts": [
                {"name": "config", "mountPath": "/etc/kn-e2e/config"},
                {"name": "secret", "mountPath": "/etc/kn-e2e/secret", "readOnly": True},
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "data", "mountPath": "/etc/kn-e2e/data"},
            ],
        }, volumes=[
            {"name": "config", "configMap": {"name": "settings"}},
            {"name": "secret", "secret": {"secretName": "creds", "items": [{"key": "password", "path": "password"}]}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
        ]),
    )
    kube.job_condition("inspect", "Complete")
    pod = kube.pods("job-name=inspect")[0]
    name = pod["metadata"]["name"]
    log = kube.agent.container_log(NS, name, "inspect")
    result = json.loads(next(line for line in log.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    assert result["env"] == {
        "GREETING": "hello", "PASSWORD": "s3cret", "POD_NAME": name, "POD_NAMESPACE": NS,
        "POD_IP": pod["status"]["podIP"], "NODE_NAME": kube.agent.node_name, "CFG_mode": "fast",
        "COMPOSED": "hello-world", "KUBERNETES_SERVICE_HOST": "10.96.0.1", "HOSTNAME": name,
    }
    assert result["argv"] == ["hello", "$(GREETING)", "$(UNDEFINED)"]
    assert result["cwd"] == "/etc/kn-e2e/config"
    assert result["hostname"] == name
    assert result["config"] == ["config.yaml", "greeting", "mode"]
    assert result["config_yaml"] == "layers: 4\n"
    assert result["secret"] == "s3cret" and result["secret_writable"] is False
    assert result["scratch"] == "scratch"
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    # The claim was bound to a PersistentVolume on the node, where the file now is.
    claim = kube.get("pvc", "data")
    assert claim["status"]["phase"] == "Bound"
    pv = kube.get("pv", claim["spec"]["volumeName"], namespace="default")
    assert (Path(pv["spec"]["hostPath"]["path"]) / "written-by-pod").read_text() == "persisted"
    # The mounts were the process's own: nothing of them shows on the host.
    assert not Path("/scratch/note").exists()


def test_pod_uses_the_api_with_its_service_account(kube: Kubectl):
    script = r"""
import os
from kubernetes import client, config
config.load_incluster_config()
pod = client.CoreV1Api().read_namespaced_pod(os.environ["POD_NAME"], os.environ["POD_NAMESPACE"])
print("API", pod.metadata.name, pod.spec.node_name, flush=True)
"""
    kube("create", "role", "pod-reader", "-n", NS, "--verb=get", "--resource=pods")
    kube("create", "rolebinding", "default-pod-reader", "-n", NS, "--role=pod-reader", f"--serviceaccount={NS}:default")
    kube.apply(job("api-client", {
        "name": "api", "image": "python", "command": ["python", "-c", script],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
    }))
    kube.job_condition("api-client", "Complete")
    pod = kube.pods("job-name=api-client")[0]
    log = kube.agent.container_log(NS, pod["metadata"]["name"], "api")
    assert f"API {pod['metadata']['name']} {kube.agent.node_name}" in log, log


def test_failed_job_pod_fails_the_job(kube: Kubectl):
    kube.apply(job("fails", {"name": "main", "image": "python", "command": ["python", "-c", "raise SystemExit(3)"]},
                   backoff_limit=0))
    kube.job_condition("fails", "Failed")
    pod = kube.pods("job-name=fails")[0]
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3


def test_redis_server_pods_share_a_port_and_serve_through_services(kube: Kubectl):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server not installed (apt-get install redis-server)")
    password_env = {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "redis", "key": "password"}}}
    probe = {"tcpSocket": {"port": "redis"}, "periodSeconds": 1}
    ports = [{"name": "redis", "containerPort": 6379}]
    conf = "port 6379\nbind * -::*\nrequirepass s3cret\ndir /data\nappendonly no\nsave \"\"\n"
    kube.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis", "namespace": NS},
         "stringData": {"password": "s3cret", "redis.conf": conf}},
        # As the brief's pods run it: bound to the pod IP, password from a Secret via $(VAR).
        deployment("redis", {
            "name": "redis", "image": "redis:7",
            "command": ["redis-server", "--bind", "$(POD_IP)", "--port", "6379", "--requirepass", "$(REDIS_PASSWORD)",
                        "--save", "", "--appendonly", "no"],
            "env": [POD_IP_ENV, password_env], "ports": ports, "readinessProbe": probe,
        }),
        # As the operator builds it: args only, a config file from a Secret volume, bound to every address.
        deployment("redis-conf", {
            "name": "redis", "image": "redis:7", "args": ["redis-server", "/etc/redis/redis.conf"],
            "ports": ports, "readinessProbe": probe,
            "volumeMounts": [{"name": "config", "mountPath": "/etc/redis", "readOnly": True},
                             {"name": "data", "mountPath": "/data"}],
        }, volumes=[{"name": "config", "secret": {"secretName": "redis", "items": [
            {"key": "redis.conf", "path": "redis.conf"}]}}, {"name": "data", "emptyDir": {}}]),
        service("redis", 6379, "redis"),
        service("redis-conf", 6379, "redis"),
    )
    import redis

    for app in ("redis", "redis-conf"):
        pod = kube.wait_for(f"a ready {app} pod", lambda: kube.ready_pods(f"app={app}"))[0]
        client = redis.Redis(host=pod["status"]["podIP"], port=6379, password="s3cret", socket_timeout=5)
        assert client.ping()
        client.set("written-from", "the-node")
    script = r"""
import os, redis
for host in ("redis", "redis-conf." + os.environ["NS"] + ".svc"):
    r = redis.Redis(host=host, port=6379, password=os.environ["REDIS_PASSWORD"], socket_timeout=5)
    print(host, r.get("written-from").decode(), flush=True)
"""
    kube.apply(job("redis-client", {"name": "client", "image": "python", "command": ["python", "-c", script],
                                    "env": [password_env, {"name": "NS", "value": NS}]}))
    kube.job_condition("redis-client", "Complete")
    pod = kube.pods("job-name=redis-client")[0]
    log = kube.agent.container_log(NS, pod["metadata"]["name"], "client")
    assert "redis the-node" in log and f"redis-conf.{NS}.svc the-node" in log, log


def test_killed_process_is_restarted_in_place(kube: Kubectl, web: dict):
    pod = kube.wait_for("a ready web pod", lambda: kube.ready_pods("app=web"))[0]
    name, pid = pod["metadata"]["name"], pid_of(pod)
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    os.kill(pid, signal.SIGKILL)

    def restarted():
        p = kube.get("pod", name)
        s = p["status"]["containerStatuses"][0]
        return p if s["restartCount"] == restarts + 1 and is_ready(p) else None

    pod = kube.wait_for("the web container to restart", restarted)
    last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 137 and last["signal"] == signal.SIGKILL
    assert pid_of(pod) != pid and alive(pid_of(pod))
    assert urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/", timeout=10).read().decode() == name


def test_deleted_pod_is_stopped_and_replaced(kube: Kubectl, web: dict):
    pod = kube.wait_for("a ready web pod", lambda: kube.ready_pods("app=web"))[0]
    name, pid = pod["metadata"]["name"], pid_of(pod)
    kube("delete", "pod", name, "-n", NS, "--wait=false")
    new = kube.wait_for("a new ready web pod",
                        lambda: [p for p in kube.ready_pods("app=web") if p["metadata"]["name"] != name])[0]
    kube.wait_for("the old pod to be gone", lambda: kube("get", "pod", name, "-n", NS, check=False).returncode != 0)
    assert not alive(pid)
    assert urllib.request.urlopen(f"http://{new['status']['podIP']}:8080/", timeout=10).read().decode() \
        == new["metadata"]["name"]


def test_scale_to_zero_stops_the_processes(kube: Kubectl, web: dict):
    pods = kube.wait_for("a ready web pod", lambda: kube.ready_pods("app=web"))
    pids = [pid_of(p) for p in pods]
    kube("scale", "deployment", "web", "-n", NS, "--replicas=0")
    kube.wait_for("no web pods", lambda: not kube.pods("app=web"))
    assert not [pid for pid in pids if alive(pid)]


def test_agent_cleans_up_after_itself(tmp_path: Path):
    """A second cluster and agent (on its own subnet, beside the module's): with
    --etc-hosts, Service names resolve on the node; on exit nothing is left."""
    hosts_before = Path("/etc/hosts").read_text()
    with start_test_cluster(tmp_path / "cluster", with_controllers=True) as cluster:
        with start_node_agent(cluster, tmp_path / "node", node_name="cleanup-node", etc_hosts=True) as agent:
            k = Kubectl(cluster, agent)
            k("create", "namespace", NS)
            k.wait_for("the default ServiceAccount", lambda: k("get", "sa", "default", "-n", NS, check=False).returncode == 0)
            container = dict(web_container(), volumeMounts=[{"name": "tmp", "mountPath": "/kn-e2e-cleanup/tmp"}])
            k.apply(deployment("echo", container, volumes=[{"name": "tmp", "emptyDir": {}}]), service("echo", 8080, 8080))
            pod = k.wait_for("a ready echo pod", lambda: k.ready_pods("app=echo"))[0]
            pid = pid_of(pod)
            assert Path("/kn-e2e-cleanup/tmp").is_dir()  # the mount point, created on the host
            k.wait_for("echo in /etc/hosts", lambda: f"echo.{NS}.svc" in Path("/etc/hosts").read_text())
            assert socket.gethostbyname(f"echo.{NS}.svc") == pod["status"]["podIP"]
            body = urllib.request.urlopen(f"http://echo.{NS}.svc.cluster.local:8080/", timeout=10).read().decode()
            assert body == pod["metadata"]["name"]
            index = agent.pod_cidr.split(".")[2]
        assert agent.process.returncode == 0, agent.log_tail()
    assert not alive(pid)
    assert Path("/etc/hosts").read_text() == hosts_before
    assert not Path("/kn-e2e-cleanup").exists()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"kn{index}-" not in netns, netns
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"knbr{index}" not in links and f"kn{index}v" not in links, links
