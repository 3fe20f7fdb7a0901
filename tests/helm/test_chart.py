"""The Helm chart helm/kubenas, rendered by the real helm and installed into a real
kube-apiserver (kubenas-testcluster).

Rendering: helm lint, helm template with the defaults and with GPU/monitoring
values; the operator Deployment (one replica, Recreate, probes, security
contexts, images, env the operator's settings accept), RBAC equal to
operator/rbac/operator-rules.yaml, the dashboard ConfigMap. Drift: the chart's
CRD and rules files are byte-identical copies of their single sources.

Install (marked kube): helm install into a bare API server (no pod runs there:
the objects are asserted), helm upgrade keeps the password key, a search is
accepted and printed with the CRD's columns, and the operator itself, run here
as a process with the installed Deployment's environment and logged in as the
chart's ServiceAccount, reconciles a search: the chart's RBAC and env are enough.

A missing helm or kubenas-testcluster fails these tests (never skips them):
run ./dev test, or bash scripts/build-go-tools.sh.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.kube_cluster import KUBECTL, RunningCluster, cache_dir, start_test_cluster  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

CHART = ROOT / "helm" / "kubenas"
CRD_SOURCE = ROOT / "crds" / "architecturesearches.kubenas.io.yaml"
RULES_SOURCE = ROOT / "operator" / "rbac" / "operator-rules.yaml"
NAMESPACE = "kubenas-system"
RELEASE = "kubenas"
CRD_NAME = "architecturesearches.kubenas.io"


def helm_binary() -> str:
    found = shutil.which("helm") or str(cache_dir() / "bin" / "helm")
    if not os.access(found, os.X_OK):
        pytest.fail("helm not found on the PATH nor in ~/.cache/kubenas/bin: build it with "
                    "`bash scripts/build-go-tools.sh` (./dev test does)")
    return found


def helm(*args: str, kubeconfig: Optional[Path] = None, check: bool = True,
         timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [helm_binary(), *args]
    if kubeconfig is not None:
        cmd += ["--kubeconfig", str(kubeconfig)]
    # A private helm home: no repositories or plugins of the user's leak in.
    home = cache_dir() / "helm-test-home"
    env = dict(os.environ, HELM_CONFIG_HOME=str(home / "config"), HELM_CACHE_HOME=str(home / "cache"),
               HELM_DATA_HOME=str(home / "data"))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n"
                             f"stdout: {result.stdout}\nstderr: {result.stderr}")
    return result


def render(*args: str) -> list[dict]:
    out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: list[dict]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}  # the API server drops ""


def source_rules() -> list[dict]:
    return yaml.safe_load(RULES_SOURCE.read_text())["rules"]


# --- drift: the chart's copies of single sources --------------------------------------

def test_chart_crd_is_the_generated_crd() -> None:
    chart_crd = CHART / "crds" / CRD_SOURCE.name
    assert chart_crd.read_bytes() == CRD_SOURCE.read_bytes(), (
        f"{chart_crd} differs from {CRD_SOURCE}: copy it again (cp {CRD_SOURCE.relative_to(ROOT)} "
        f"{chart_crd.relative_to(ROOT)})")
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == [CRD_SOURCE.name]


def test_chart_rbac_rules_are_the_operators() -> None:
    chart_rules = CHART / "files" / "operator-rules.yaml"
    assert chart_rules.read_bytes() == RULES_SOURCE.read_bytes(), (
        f"{chart_rules} differs from {RULES_SOURCE}: copy it again")


# --- lint and render --------------------------------------------------------------------

def test_helm_lint_default_and_every_feature() -> None:
    out = helm("lint", "--strict", str(CHART)).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out
    out = helm("lint", "--strict", str(CHART), "--set", "metrics.serviceMonitor.enabled=true",
               "--set", "metrics.podMonitor.enabled=true", "--set", "prometheusRule.enabled=true",
               "--set", "operator.passwordKey.existingSecret=mine").stdout
    assert "0 chart(s) failed" in out


def test_template_defaults() -> None:
    docs = render()
    assert kinds(docs) == sorted(["ServiceAccount", "Secret", "ConfigMap", "ClusterRole", "ClusterRoleBinding",
                                  "Service", "Deployment"])
    deploy = one(docs, "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert set(spec["selector"]["matchLabels"].items()) <= set(spec["template"]["metadata"]["labels"].items())
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/kubenas/operator:0.1.0"
    assert container.get("args") is None

    # Security: non-root, read-only root filesystem, no capabilities, no escalation.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the images' user
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsNonRoot"] is True

    # The liveness probe hits kopf's endpoint, where the operator is told to serve it.
    env = env_of(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert env["KUBENAS_OPERATOR_LIVENESS"] == f"http://0.0.0.0:{ports[probe['port']]}/healthz"
    assert ports["metrics"] == int(env["KUBENAS_OPERATOR_METRICS_PORT"])

    # Images of the searches, the operator's identity and its key.
    assert env["KUBENAS_CONTROLLER_IMAGE"] == "ghcr.io/kubenas/controller:0.1.0"
    assert env["KUBENAS_TRAINER_IMAGE"] == "ghcr.io/kubenas/trainer:0.1.0"
    assert env["KUBENAS_OPERATOR_NAMESPACE"] == NAMESPACE
    assert env["KUBENAS_WATCH_NAMESPACES"] == ""
    sa = one(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"] == env["KUBENAS_OPERATOR_SERVICE_ACCOUNT"]
    pod_labels = dict(p.split("=", 1) for p in env["KUBENAS_OPERATOR_POD_LABELS"].split(","))
    assert set(pod_labels.items()) <= set(spec["template"]["metadata"]["labels"].items())
    secret = one(docs, "Secret")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    key_file = env["KUBENAS_OPERATOR_PASSWORD_KEY_FILE"]
    key_volume = next(n for n, path in mounts.items() if key_file.startswith(path + "/"))
    assert volumes[key_volume]["secret"]["secretName"] == secret["metadata"]["name"]
    key = base64.b64decode(secret["data"][Path(key_file).name])
    assert len(key) >= 16
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert "/tmp" in mounts.values()  # the only writable path

    # RBAC: exactly the operator's rules, bound to its ServiceAccount.
    role = one(docs, "ClusterRole")
    assert role["rules"] == source_rules()
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": NAMESPACE}]

    # The dashboard, for Grafana's sidecar; the JSON is the chart file's, intact.
    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (data,) = cm["data"].values()
    assert json.loads(data) == json.loads((CHART / "files" / "grafana-dashboard.json").read_text())

    # The metrics Service reaches the operator pod's metrics port.
    svc = one(docs, "Service")
    assert svc["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"


GPU_VALUES = {
    "image": {
        "operator": {"repository": "registry.example.com/kubenas/operator", "tag": "1.2.3", "pullPolicy": "Always"},
        "controller": {"repository": "registry.example.com/kubenas/controller", "tag": "1.2.3"},
        "trainer": {"repository": "registry.example.com/kubenas/trainer", "tag": "1.2.3-cuda"},
        "pullSecrets": [{"name": "registry-cred"}],
    },
    "searchDefaults": {"gpuResourceName": "amd.com/gpu"},
    "watchNamespaces": ["research", "nas-*"],
    "operator": {
        "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
                         "effect": "NoSchedule"}],
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "passwordKey": {"existingSecret": "kubenas-key", "secretKey": "hmac"},
    },
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                "podMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
    "grafanaDashboard": {"namespace": "monitoring", "folder": "ML"},
}


def test_template_gpu_and_monitoring_values(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(GPU_VALUES))
    docs = render("--values", str(values))
    assert kinds(docs) == sorted(["ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Service",
                                  "Deployment", "ServiceMonitor", "PodMonitor", "PrometheusRule"])
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = env_of(container)
    assert container["image"] == "registry.example.com/kubenas/operator:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "registry-cred"}]
    assert env["KUBENAS_CONTROLLER_IMAGE"] == "registry.example.com/kubenas/controller:1.2.3"
    assert env["KUBENAS_TRAINER_IMAGE"] == "registry.example.com/kubenas/trainer:1.2.3-cuda"
    assert env["KUBENAS_DEFAULT_GPU_RESOURCE_NAME"] == "amd.com/gpu"
    assert env["KUBENAS_WATCH_NAMESPACES"] == "research,nas-*"
    assert pod["nodeSelector"] == GPU_VALUES["operator"]["nodeSelector"]
    assert pod["tolerations"] == GPU_VALUES["operator"]["tolerations"]
    assert container["resources"] == GPU_VALUES["operator"]["resources"]
    # The user's Secret, not a generated one.
    key_volume = next(v for v in pod["volumes"] if "secret" in v)["secret"]
    assert key_volume["secretName"] == "kubenas-key"
    assert env["KUBENAS_OPERATOR_PASSWORD_KEY_FILE"].endswith("/hmac")

    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["selector"]["matchLabels"] == one(docs, "Service")["spec"]["selector"]
    pm = one(docs, "PodMonitor")
    assert pm["spec"]["selector"]["matchExpressions"] == [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["controller", "trainer"]}]
    assert pm["spec"]["namespaceSelector"] == {"any": True}  # a glob among watchNamespaces
    relabel = pm["spec"]["podMetricsEndpoints"][0]["relabelings"][0]  # every declared metrics port
    assert relabel == {"sourceLabels": ["__meta_kubernetes_pod_container_port_name"],
                       "regex": "metrics(-[0-9]+)?", "action": "keep"}

    # The alert rules are the rule file promtool checks, as they are.
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "alert-rules.yaml").read_text())
    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "ML"


def test_pod_monitor_names_plain_watch_namespaces() -> None:
    docs = render("--set", "metrics.podMonitor.enabled=true", "--set-json", 'watchNamespaces=["a","b"]')
    assert one(docs, "PodMonitor")["spec"]["namespaceSelector"] == {"matchNames": ["a", "b"]}


def test_more_than_one_operator_replica_is_refused() -> None:
    result = helm("template", RELEASE, str(CHART), "--set", "operator.replicas=2", check=False)
    assert result.returncode != 0
    assert "one replica at most" in result.stderr


def test_rendered_environment_is_accepted_by_the_operator(tmp_path: Path) -> None:
    """The operator parses the env the chart gives it (OperatorSettings.from_env)."""
    from kubenas_operator.settings import OperatorSettings

    docs = render("--set-json", 'watchNamespaces=["research","nas-*"]')
    deploy = one(docs, "Deployment")
    env = env_of(deploy["spec"]["template"]["spec"]["containers"][0])
    secret = one(docs, "Secret")
    key_file = tmp_path / "key"
    key_file.write_bytes(base64.b64decode(secret["data"]["key"]))
    env["KUBENAS_OPERATOR_PASSWORD_KEY_FILE"] = str(key_file)  # where the volume would be
    settings = OperatorSettings.from_env(env)
    assert settings.require_password_key() == key_file.read_bytes()
    assert settings.controller_image == "ghcr.io/kubenas/controller:0.1.0"
    assert settings.trainer_image == "ghcr.io/kubenas/trainer:0.1.0"
    assert settings.watch_namespaces == ("research", "nas-*")
    assert settings.operator_namespace == NAMESPACE
    assert settings.service_account == one(docs, "ServiceAccount")["metadata"]["name"]
    assert set(settings.operator_pod_labels.items()) <= set(deploy["spec"]["template"]["metadata"]["labels"].items())
    assert settings.liveness_endpoint == "http://0.0.0.0:8080/healthz"
    assert settings.metrics_port == 9090
    assert settings.redis_url_override is None  # the test seam is never set by the chart


# --- helm install into a real API server ------------------------------------------------

def get(cluster: RunningCluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", "-o", "json", *args).stdout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCluster]:
    if not Path(KUBECTL).exists() and shutil.which(KUBECTL) is None:
        pytest.fail(f"kubectl not found ({KUBECTL}): bash scripts/build-go-tools.sh builds it")
    try:
        with start_test_cluster(tmp_path_factory.mktemp("kube")) as running:
            yield running
    except RuntimeError as exc:  # binary missing or not starting: a failure, never a skip
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def installed(cluster: RunningCluster) -> RunningCluster:
    out = helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
               kubeconfig=cluster.kubeconfig).stdout
    assert "STATUS: deployed" in out
    return cluster


@pytest.mark.kube
def test_install_creates_the_operators_objects(installed: RunningCluster) -> None:
    c = installed
    crd = wait_for("the CRD to be established", lambda: (lambda o: o if any(
        x["type"] == "Established" and x["status"] == "True" for x in o.get("status", {}).get("conditions", []))
        else None)(get(c, "crd", CRD_NAME)))
    assert crd["spec"]["names"]["shortNames"] == ["archsearch", "nas"]

    deploy = get(c, "-n", NAMESPACE, "deployment", "kubenas-operator")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"]["type"] == "Recreate"
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "kubenas-operator"
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/healthz"

    get(c, "-n", NAMESPACE, "serviceaccount", "kubenas-operator")
    role = get(c, "clusterrole", "kubenas-operator")
    # The API server stores the rules it was given (it drops nothing it accepts).
    assert [{k: r[k] for k in ("apiGroups", "resources", "verbs")} for r in role["rules"]] == source_rules()
    binding = get(c, "clusterrolebinding", "kubenas-operator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubenas-operator", "namespace": NAMESPACE}]
    cms = get(c, "-n", NAMESPACE, "configmap", "-l", "grafana_dashboard=1")["items"]
    assert [cm["metadata"]["name"] for cm in cms] == ["kubenas-dashboard"]
    get(c, "-n", NAMESPACE, "service", "kubenas-metrics")
    secret = get(c, "-n", NAMESPACE, "secret", "kubenas-password-key")
    assert len(base64.b64decode(secret["data"]["key"])) >= 16

    # The ServiceAccount can do what its rules say, and no more (Secrets: create only).
    user = f"system:serviceaccount:{NAMESPACE}:kubenas-operator"
    can = lambda *a: c.kubectl("auth", "can-i", "--as", user, *a, check=False).stdout.strip()  # noqa: E731
    assert can("watch", "architecturesearches.kubenas.io", "--all-namespaces") == "yes"
    assert can("patch", "architecturesearches.kubenas.io/status", "-n", "default") == "yes"
    assert can("create", "secrets", "-n", "default") == "yes"
    assert can("get", "secrets", "-n", "default") == "no"
    assert can("create", "pods", "-n", "default") == "no"


@pytest.mark.kube
def test_upgrade_keeps_the_password_key(installed: RunningCluster) -> None:
    c = installed
    before = get(c, "-n", NAMESPACE, "secret", "kubenas-password-key")["data"]
    helm("upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--set", "operator.verbose=true",
         kubeconfig=c.kubeconfig)
    assert get(c, "-n", NAMESPACE, "secret", "kubenas-password-key")["data"] == before
    deploy = get(c, "-n", NAMESPACE, "deployment", "kubenas-operator")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["args"] == ["--verbose"]
    assert deploy["metadata"]["generation"] == 2


@pytest.mark.kube
def test_searches_are_accepted_and_listed(installed: RunningCluster) -> None:
    c = installed
    c.kubectl("apply", "-f", str(ROOT / "examples" / "search-gpu.yaml"))
    out = c.kubectl("get", "archsearch").stdout
    header = out.splitlines()[0].split()
    assert header == ["NAME", "PHASE", "TRIALS", "BEST", "AGE"]
    assert out.splitlines()[1].split()[0] == "cifar10-nasnet"


@contextlib.contextmanager
def _process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.kube
def test_operator_runs_with_the_charts_identity_and_environment(installed: RunningCluster, tmp_path: Path) -> None:
    """No pod runs on a bare API server, so the operator image's command runs here instead,
    with the env of the installed Deployment, the key of the installed Secret, and a token of
    the chart's ServiceAccount: what the pod would have."""
    c = installed
    c.kubectl("create", "namespace", "helm-search")
    c.kubectl("apply", "-n", "helm-search", "-f", str(ROOT / "examples" / "quickstart.yaml"))

    deploy = get(c, "-n", NAMESPACE, "deployment", "kubenas-operator")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBENAS_")}
    env.update(env_of(container))
    key_file = tmp_path / "key"
    secret = get(c, "-n", NAMESPACE, "secret", "kubenas-password-key")
    key_file.write_bytes(base64.b64decode(secret["data"]["key"]))
    key_file.chmod(0o400)
    token = c.kubectl("-n", NAMESPACE, "create", "token", "kubenas-operator", "--duration", "1h").stdout.strip()
    admin = yaml.safe_load(c.kubeconfig.read_text())
    kubeconfig = tmp_path / "operator.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "test", "user": "operator"}}],
        "current-context": "operator"}))
    health_port, metrics_port = free_port(), free_port()
    # Only what differs from a pod: files and ports on this host, the kubeconfig instead of in-cluster login.
    env.update(KUBENAS_OPERATOR_PASSWORD_KEY_FILE=str(key_file), KUBENAS_OPERATOR_KUBECONFIG=str(kubeconfig),
               KUBENAS_OPERATOR_LIVENESS=f"http://127.0.0.1:{health_port}/healthz",
               KUBENAS_OPERATOR_METRICS_PORT=str(metrics_port), HOME=str(tmp_path))
    log = tmp_path / "operator.log"
    cmd = [sys.executable, "-m", "kubenas_operator", *container.get("args", [])]
    with _process(cmd, env, log) as proc:
        try:
            wait_for("the operator's liveness endpoint", lambda: proc.poll() is None and _http_ok(
                f"http://127.0.0.1:{health_port}/healthz"), timeout=90)
            search = wait_for("the search's status", lambda: get(c, "-n", "helm-search", "archsearch", "quickstart")
                              .get("status", {}).get("phase") and get(c, "-n", "helm-search", "archsearch",
                                                                      "quickstart"), timeout=60)
            assert search["status"]["phase"] == "Pending"  # no pod runs here, so no Redis answers
            job = wait_for("the controller Job", lambda: c.kubectl(
                "get", "-n", "helm-search", "job", "kubenas-quickstart-controller", "-o", "json",
                check=False).stdout, timeout=30)
            image = json.loads(job)["spec"]["template"]["spec"]["containers"][0]["image"]
            assert image == env["KUBENAS_CONTROLLER_IMAGE"]  # the chart's image reached the search
            trainer = get(c, "-n", "helm-search", "deployment", "kubenas-quickstart-trainer")
            assert trainer["spec"]["template"]["spec"]["containers"][0]["image"] == env["KUBENAS_TRAINER_IMAGE"]
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                assert 'kubenas_operator_reconciles_total{result="ok",search="helm-search/quickstart"}' \
                    in r.read().decode()
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noperator log:\n{log.read_text(errors='replace')[-4000:]}") from None


@pytest.mark.kube
def test_uninstall_keeps_the_crd_and_the_key(installed: RunningCluster) -> None:
    c = installed
    helm("uninstall", RELEASE, "--namespace", NAMESPACE, kubeconfig=c.kubeconfig)
    assert c.kubectl("get", "-n", NAMESPACE, "deployment", "kubenas-operator", check=False).returncode != 0
    assert c.kubectl("get", "clusterrole", "kubenas-operator", check=False).returncode != 0
    get(c, "crd", CRD_NAME)  # crds/: Helm never deletes it (nor the searches with it)
    get(c, "-n", NAMESPACE, "secret", "kubenas-password-key")  # resource-policy: keep


def test_dev_images_commands_and_the_install_that_uses_them() -> None:
    """`./dev images REGISTRY TAG` without a builder prints the build commands for every
    Dockerfile and a `helm install` whose --set flags really point the chart at them."""
    env = {**os.environ, "KUBENAS_IMAGES_PRINT": "1"}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "images.sh"), "registry.example.com/ml", "1.2.3"],
                         capture_output=True, text=True, env=env, timeout=60, check=True).stdout
    for name, dockerfile in [("operator", "operator/Dockerfile"), ("controller", "controller_image/Dockerfile"),
                             ("trainer", "trainer_image/Dockerfile")]:
        ref = f"registry.example.com/ml/kubenas-{name}:1.2.3"
        for builder in ("docker build", "buildah bud"):
            assert f"{builder} -f {dockerfile} -t {ref} ." in out
        assert f"--dockerfile {dockerfile} --destination {ref}" in out
        assert (ROOT / dockerfile).is_file()
    sets = re.findall(r"--set (\S+)", out)
    assert len(sets) == 6
    docs = render(*[arg for s in sets for arg in ("--set", s)])
    operator = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert operator["image"] == "registry.example.com/ml/kubenas-operator:1.2.3"
    env_vars = env_of(operator)
    assert env_vars["KUBENAS_CONTROLLER_IMAGE"] == "registry.example.com/ml/kubenas-controller:1.2.3"
    assert env_vars["KUBENAS_TRAINER_IMAGE"] == "registry.example.com/ml/kubenas-trainer:1.2.3"


def test_dev_images_refuses_a_bad_registry_or_tag() -> None:
    for args, field in [(["not a registry"], "REGISTRY"), (["r.example.com", "bad tag!"], "TAG")]:
        result = subprocess.run(["bash", str(ROOT / "scripts" / "images.sh"), *args], capture_output=True,
                                text=True, env={**os.environ, "KUBENAS_IMAGES_PRINT": "1"}, timeout=60)
        assert result.returncode == 2 and field in result.stderr
