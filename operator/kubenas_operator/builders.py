"""Pure builders: the Kubernetes objects of one ArchitectureSearch, as plain dicts.

Nothing here talks to the API server or Redis; the handlers decide which of
these to apply. Every object is named deterministically (`kubenas-<name>-...`),
labelled, and owned by the search (ownerReferences with controller: true), so
applying them again creates nothing twice and deleting the search deletes them.

Objects of a search called NAME:

    Secret        kubenas-NAME-redis        (managed) password, url, redis.conf
    PVC           kubenas-NAME-redis        (managed, redis.persistence.enabled)
    PVC           kubenas-NAME-controller   (redis.persistence.enabled) the controller's checkpoint
    PVC           kubenas-NAME-artifacts    (artifacts.enabled, no existingClaim) trial checkpoints, ReadWriteMany
    Deployment    kubenas-NAME-redis        (managed) one redis-server
    Service       kubenas-NAME-redis        (managed) port 6379
    NetworkPolicy kubenas-NAME-redis        (managed) only this search's pods and the operator reach Redis
    ConfigMap     kubenas-NAME-spec         the ArchitectureSearch manifest, for the controller
    Job           kubenas-NAME-controller   python -m kubenas_controller ...
    Deployment    kubenas-NAME-trainer      python -m kubenas_trainer ..., budget.parallelism replicas
    Service       kubenas-NAME-supernet     (enas, darts, spos) headless: the workers' stable names
    Job           kubenas-NAME-supernet     (enas, darts, spos) Indexed, oneShot.workers pods of
                                            python -m kubenas.oneshot: the supernet, data-parallel

No ServiceAccount or Role: neither the controller nor the trainers call the
Kubernetes API (the controller publishes its summary to Redis and the operator
copies it into the status), so their pods mount no API token at all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any, Optional

import yaml

from kubenas.metrics import DEFAULT_PORT as METRICS_PORT
from kubenas.spec import API_VERSION, KIND, ONE_SHOT_ALGORITHMS, ArchitectureSearch, PodSettings

REDIS_PORT = 6379
REDIS_URL_ENV = "KUBENAS_REDIS_URL"
SPEC_FILE = "/etc/kubenas/search.yaml"
SPEC_KEY = "search.yaml"
SUPERNET_SPEC_KEY = "spec.json"  # the one-shot workers' input: the spec as JSON
SUPERNET_PORT = 29500  # torch.distributed's rendezvous on rank 0 (torchrun's default port)
CHECKPOINT_DIR = "/var/lib/kubenas/checkpoints"
CHECKPOINT_SIZE = "1Gi"
ARTIFACTS_DIR = "/var/lib/kubenas/artifacts"
ARTIFACTS_ENV = "KUBENAS_ARTIFACTS"
DEFAULT_ARTIFACTS_SIZE = "10Gi"
IMAGE_GID = 10001  # the kubenas group of the controller and trainer images
REDIS_CONF_DIR = "/etc/kubenas-redis"
TEMPLATE_HASH_ANNOTATION = "kubenas.io/template-hash"
GENERATION_ANNOTATION = "kubenas.io/search-generation"
REDIS_UID = 999  # the redis user of the official redis images

# Labels: the recommended app.kubernetes.io set; the selector uses the first three.
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"


@dataclass(frozen=True)
class SearchRef:
    """Which search the objects belong to (from its metadata)."""

    name: str
    namespace: str
    uid: str
    generation: int = 1

    @classmethod
    def from_body(cls, body: Any) -> "SearchRef":
        meta = body["metadata"]
        return cls(meta["name"], meta["namespace"], meta["uid"], int(meta.get("generation") or 1))


@dataclass(frozen=True)
class Images:
    controller: str
    trainer: str


@dataclass(frozen=True)
class ArtifactDefaults:
    """The chart's defaults for a search's artifact claim (searchDefaults.artifacts)."""

    size: str = DEFAULT_ARTIFACTS_SIZE
    storage_class_name: Optional[str] = None


# --- names and labels ----------------------------------------------------------------

def child_name(search: str, component: str) -> str:
    """`kubenas-<search>-<component>`, shortened with a hash to stay a DNS label (63)."""
    name = f"kubenas-{search}-{component}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(search.encode()).hexdigest()[:8]
    keep = 63 - len("kubenas--") - len(component) - len(digest) - 1
    return f"kubenas-{search[:keep].rstrip('-')}-{digest}-{component}"


def redis_name(search: str) -> str:
    return child_name(search, "redis")


def spec_configmap_name(search: str) -> str:
    return child_name(search, "spec")


def controller_name(search: str) -> str:
    return child_name(search, "controller")


def trainer_name(search: str) -> str:
    return child_name(search, "trainer")


def selector_labels(search: str, component: str) -> dict[str, str]:
    return {NAME_LABEL: "kubenas", INSTANCE_LABEL: search, COMPONENT_LABEL: component}


def build_labels(search: str, component: str) -> dict[str, str]:
    return {
        **selector_labels(search, component),
        "app.kubernetes.io/part-of": "kubenas",
        "app.kubernetes.io/managed-by": "kubenas-operator",
        "kubenas.io/search": search,
    }


def trainer_selector(search: str) -> str:
    """The label selector of the trainer pods, as the scale subresource reports it."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(search, "trainer").items())


def build_owner_reference(ref: SearchRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(ref: SearchRef, name: str, component: str, annotations: Optional[dict[str, str]] = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": ref.namespace,
        "labels": build_labels(ref.name, component),
        "ownerReferences": [build_owner_reference(ref)],
    }
    if annotations:
        meta["annotations"] = annotations
    return meta


# --- Redis ---------------------------------------------------------------------------

def derive_redis_password(key: bytes, namespace: str, name: str) -> str:
    """The managed Redis password of a search: HMAC-SHA256 of its namespace/name (hex)."""
    return hmac.new(key, f"{namespace}/{name}".encode(), hashlib.sha256).hexdigest()


def managed_redis_host(ref: SearchRef) -> str:
    return f"{redis_name(ref.name)}.{ref.namespace}.svc"


def managed_redis_url(ref: SearchRef, password: str) -> str:
    return f"redis://:{password}@{managed_redis_host(ref)}:{REDIS_PORT}/0"


def build_redis_conf(password: str, persistent: bool) -> str:
    lines = [
        f"port {REDIS_PORT}",
        "bind * -::*",
        "protected-mode yes",
        f"requirepass {password}",
        "dir /data",
        # The trial queue must never lose entries to eviction.
        "maxmemory-policy noeviction",
    ]
    if persistent:
        lines += ["appendonly yes", "appendfsync everysec"]
    else:
        lines += ["appendonly no", 'save ""']
    return "\n".join(lines) + "\n"


def build_redis_secret_spec(ref: SearchRef, manifest: ArchitectureSearch, password: str) -> dict[str, Any]:
    """The password, the URL the pods use (env from this Secret) and the server's config."""
    persistent = manifest.spec.redis.persistence.enabled
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(ref, redis_name(ref.name), "redis"),
        "type": "Opaque",
        "stringData": {
            "password": password,
            "url": managed_redis_url(ref, password),
            "redis.conf": build_redis_conf(password, persistent),
        },
    }


def _pvc(ref: SearchRef, manifest: ArchitectureSearch, name: str, component: str, size: str) -> dict[str, Any]:
    persistence = manifest.spec.redis.persistence
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
    if persistence.storage_class_name:
        spec["storageClassName"] = persistence.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(ref, name, component),
        "spec": spec,
    }


def build_redis_pvc_spec(ref: SearchRef, manifest: ArchitectureSearch) -> dict[str, Any]:
    return _pvc(ref, manifest, redis_name(ref.name), "redis", manifest.spec.redis.persistence.size)


def build_checkpoint_pvc_spec(ref: SearchRef, manifest: ArchitectureSearch) -> dict[str, Any]:
    """The controller's checkpoint (strategy state and trial log): the search's durable state."""
    return _pvc(ref, manifest, controller_name(ref.name), "controller", CHECKPOINT_SIZE)


def artifacts_claim_name(ref: SearchRef, manifest: ArchitectureSearch) -> str:
    return manifest.spec.artifacts.existing_claim or child_name(ref.name, "artifacts")


def build_artifacts_pvc_spec(ref: SearchRef, manifest: ArchitectureSearch,
                             defaults: ArtifactDefaults = ArtifactDefaults()) -> Optional[dict[str, Any]]:
    """The trial checkpoints' ReadWriteMany claim, owned by the search (None: artifacts off,
    or the manifest names an existing claim, which the search then neither owns nor deletes)."""
    artifacts = manifest.spec.artifacts
    if not artifacts.enabled or artifacts.existing_claim:
        return None
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"],
                            "resources": {"requests": {"storage": artifacts.size or defaults.size}}}
    storage_class = artifacts.storage_class_name or defaults.storage_class_name
    if storage_class:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(ref, artifacts_claim_name(ref, manifest), "artifacts"),
        "spec": spec,
    }


def _artifacts(ref: SearchRef, manifest: ArchitectureSearch) -> tuple[list[dict], list[dict], list[dict]]:
    """(volumes, mounts, env) that give a pod the search's artifact store, if it has one."""
    if not manifest.spec.artifacts.enabled:
        return [], [], []
    return ([{"name": "artifacts", "persistentVolumeClaim": {"claimName": artifacts_claim_name(ref, manifest)}}],
            [{"name": "artifacts", "mountPath": ARTIFACTS_DIR}],
            [{"name": ARTIFACTS_ENV, "value": ARTIFACTS_DIR}])


def build_redis_deployment_spec(ref: SearchRef, manifest: ArchitectureSearch) -> dict[str, Any]:
    redis = manifest.spec.redis
    name = redis_name(ref.name)
    data_volume: dict[str, Any] = (
        {"name": "data", "persistentVolumeClaim": {"claimName": name}}
        if redis.persistence.enabled
        else {"name": "data", "emptyDir": {}}
    )
    container = {
        "name": "redis",
        "image": redis.image,
        # Only args: the image's entrypoint still runs; the config (with the password) is a file.
        "args": ["redis-server", f"{REDIS_CONF_DIR}/redis.conf"],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "redis"}, "initialDelaySeconds": 15, "periodSeconds": 20},
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": REDIS_CONF_DIR, "readOnly": True},
            {"name": "data", "mountPath": "/data"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(ref, name, "redis"),
        "spec": {
            "replicas": 1,
            # One writer on one volume: never two Redis servers at once.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector_labels(ref.name, "redis")},
            "template": {
                "metadata": {"labels": build_labels(ref.name, "redis")},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": REDIS_UID,
                        "runAsGroup": REDIS_UID,
                        "fsGroup": REDIS_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "secret": {
                            "secretName": name, "items": [{"key": "redis.conf", "path": "redis.conf"}],
                            "defaultMode": 0o440,
                        }},
                        data_volume,
                    ],
                },
            },
        },
    }


def build_redis_service_spec(ref: SearchRef) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ref, redis_name(ref.name), "redis"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(ref.name, "redis"),
            "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis", "protocol": "TCP"}],
        },
    }


def build_network_policy_spec(
    ref: SearchRef, operator_namespace: str, operator_pod_labels: dict[str, str]
) -> dict[str, Any]:
    """Only this search's controller and trainers, and the operator (it reads the summary), reach its Redis."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(ref, redis_name(ref.name), "redis"),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(ref.name, "redis")},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {"podSelector": {
                            "matchLabels": {NAME_LABEL: "kubenas", INSTANCE_LABEL: ref.name},
                            "matchExpressions": [
                                {"key": COMPONENT_LABEL, "operator": "In", "values": ["controller", "trainer"]},
                            ],
                        }},
                        {
                            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": operator_namespace}},
                            "podSelector": {"matchLabels": dict(operator_pod_labels)},
                        },
                    ],
                    "ports": [{"protocol": "TCP", "port": REDIS_PORT}],
                }
            ],
        },
    }


# --- the controller and the trainers -------------------------------------------------

def manifest_document(ref: SearchRef, manifest: ArchitectureSearch) -> dict[str, Any]:
    """The manifest the controller loads (kubenas.manifest.load_manifest): the full spec, defaults filled in."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": ref.name, "namespace": ref.namespace},
        "spec": manifest.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def build_spec_configmap_spec(ref: SearchRef, manifest: ArchitectureSearch) -> dict[str, Any]:
    """The spec the controller reads when it starts. Updated in place on every spec change, so a
    restarted controller starts from the current budget; a running one hears of budget and
    suspend changes through the live spec record in Redis (the kubelet refreshes a mounted
    ConfigMap only after its sync period)."""
    document = manifest_document(ref, manifest)
    data = {SPEC_KEY: yaml.safe_dump(document, sort_keys=False)}
    if is_one_shot(manifest):
        data[SUPERNET_SPEC_KEY] = manifest.spec.model_dump_json(by_alias=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(ref, spec_configmap_name(ref.name), "controller",
                              {GENERATION_ANNOTATION: str(ref.generation)}),
        "data": data,
    }


def redis_url_env(ref: SearchRef, manifest: ArchitectureSearch) -> dict[str, Any]:
    """KUBENAS_REDIS_URL from a Secret: the managed one, or the user's (external). Never inline."""
    redis = manifest.spec.redis
    if redis.mode == "external":
        assert redis.url_secret is not None  # the schema and the model require it
        secret, key = redis.url_secret.name, redis.url_secret.key
    else:
        secret, key = redis_name(ref.name), "url"
    return {"name": REDIS_URL_ENV, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def build_resources(pod: PodSettings) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if pod.resources.requests:
        resources["requests"] = dict(pod.resources.requests)
    limits = dict(pod.resources.limits)
    if pod.gpus > 0:
        limits[pod.gpu_resource_name] = str(pod.gpus)
    if limits:
        resources["limits"] = limits
    return resources


def _env(ref: SearchRef, manifest: ArchitectureSearch, pod: PodSettings, pod_name_as: str,
         extra: Optional[list[dict[str, Any]]] = None) -> list[dict[str, Any]]:
    """The process's settings (the entrypoints read these), then the user's env (never overriding ours).
    The Redis URL (with its password) reaches the process only as an env var from a Secret:
    it is in neither the pod spec nor the process's command line."""
    ours = [
        redis_url_env(ref, manifest),
        {"name": "KUBENAS_NAMESPACE", "value": ref.namespace},
        {"name": "KUBENAS_NAME", "value": ref.name},
        {"name": pod_name_as, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        *(extra or []),
    ]
    reserved = {e["name"] for e in ours}
    return ours + [{"name": e.name, "value": e.value} for e in pod.env if e.name not in reserved]


def _pod_spec(
    pod: PodSettings,
    container: dict[str, Any],
    volumes: list[dict[str, Any]],
    restart_policy: str,
    termination_grace: int,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": restart_policy,
        # Neither the controller nor the trainers call the Kubernetes API.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes + [dict(v) for v in pod.volumes],
    }
    if pod.node_selector:
        spec["nodeSelector"] = dict(pod.node_selector)
    if pod.tolerations:
        spec["tolerations"] = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in pod.tolerations]
    if pod.affinity:
        spec["affinity"] = pod.affinity
    if pod.priority_class_name:
        spec["priorityClassName"] = pod.priority_class_name
    return spec


def metrics_ports(processes: int = 1) -> list[dict[str, Any]]:
    """The /metrics ports a controller or trainer container serves: its process's, or with a
    supervisor (trainer.trialsPerGPU) each child's, base + i. Declared so that the chart's
    PodMonitor scrapes every one of them."""
    return [{"name": "metrics" if i == 0 else f"metrics-{i}", "containerPort": METRICS_PORT + i, "protocol": "TCP"}
            for i in range(processes)]


def _container(name: str, image: str, pod: PodSettings, module: str, args: list[str],
               env: list[dict[str, Any]], mounts: list[dict[str, Any]], processes: int = 1) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": pod.image_pull_policy,
        "command": ["python", "-m", module],
        "args": args,
        "env": env,
        "ports": metrics_ports(processes),
        "volumeMounts": mounts + [dict(m) for m in pod.volume_mounts],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    resources = build_resources(pod)
    if resources:
        container["resources"] = resources
    return container


def _with_artifacts_group(spec: dict[str, Any], artifact_volumes: list[dict[str, Any]]) -> dict[str, Any]:
    # The images run as uid/gid 10001: volumes that honour fsGroup become writable by it.
    if artifact_volumes:
        spec["securityContext"]["fsGroup"] = IMAGE_GID
    return spec


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def build_controller_job_spec(ref: SearchRef, manifest: ArchitectureSearch, images: Images) -> dict[str, Any]:
    """The controller: one pod that runs the strategy; restarts resume from its checkpoint.

    A Job's pod template is immutable, so its hash is kept in an annotation: the
    handlers recreate the Job when spec.controller changes while it runs.
    """
    pod = manifest.spec.controller
    args = [
        "--spec", SPEC_FILE,
        "--namespace", ref.namespace,
        "--name", ref.name,
        "--checkpoint-dir", CHECKPOINT_DIR,
        # --redis-url defaults to $KUBENAS_REDIS_URL (from the Secret)
    ]
    mounts = [
        {"name": "spec", "mountPath": "/etc/kubenas", "readOnly": True},
        {"name": "checkpoints", "mountPath": CHECKPOINT_DIR},
    ]
    # With persistence the checkpoint outlives the pod (a drained node, a replaced Job);
    # without, it outlives container restarts only (restartPolicy OnFailure).
    checkpoints: dict[str, Any] = (
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": controller_name(ref.name)}}
        if manifest.spec.redis.persistence.enabled
        else {"name": "checkpoints", "emptyDir": {}}
    )
    volumes = [{"name": "spec", "configMap": {"name": spec_configmap_name(ref.name)}}, checkpoints]
    # The controller mounts the trial checkpoints too: it removes those no longer needed.
    artifact_volumes, artifact_mounts, artifact_env = _artifacts(ref, manifest)
    container = _container("controller", pod.image or images.controller, pod, "kubenas_controller",
                           args, _env(ref, manifest, pod, "KUBENAS_POD_NAME", artifact_env), mounts + artifact_mounts)
    template = {
        "metadata": {"labels": build_labels(ref.name, "controller")},
        # OnFailure: a crashed controller restarts in the same pod and finds its checkpoint (emptyDir).
        "spec": _with_artifacts_group(_pod_spec(pod, container, volumes + artifact_volumes, "OnFailure", 30),
                                      artifact_volumes),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(ref, controller_name(ref.name), "controller",
                              {TEMPLATE_HASH_ANNOTATION: template_hash(template)}),
        "spec": {
            # The controller resumes from its checkpoint; a crash loop still ends the search.
            "backoffLimit": 6,
            "completions": 1,
            "parallelism": 1,
            "template": template,
        },
    }


def trainer_replicas(manifest: ArchitectureSearch, finished: bool, supernet_training: bool = False) -> int:
    """0 while suspended, once the search finished, or while a one-shot search's supernet workers
    train in the trainers' place (their GPUs); budget.parallelism otherwise."""
    if finished or manifest.spec.suspend or supernet_training:
        return 0
    return manifest.spec.budget.parallelism


def build_trainer_deployment_spec(
    ref: SearchRef, manifest: ArchitectureSearch, images: Images, replicas: int
) -> dict[str, Any]:
    """The trainers: long-lived pods that pull trials from Redis (no pod per trial)."""
    pod = manifest.spec.trainer
    # --redis-url defaults to $KUBENAS_REDIS_URL (from the Secret), --trainer-id to $KUBENAS_TRAINER_ID
    args = ["--namespace", ref.namespace, "--name", ref.name]
    if pod.trials_per_gpu > 1:  # a supervisor in the pod runs that many trainers on its GPU(s)
        args += ["--processes", str(pod.trials_per_gpu)]
    # PyTorch's DataLoader workers share tensors through /dev/shm, which is 64 MiB by default.
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}]
    artifact_volumes, artifact_mounts, artifact_env = _artifacts(ref, manifest)
    if artifact_env:
        artifact_env.append({"name": "KUBENAS_CHECKPOINT_SECONDS",
                             "value": str(manifest.spec.artifacts.checkpoint_seconds)})
    container = _container("trainer", pod.image or images.trainer, pod, "kubenas_trainer",
                           args, _env(ref, manifest, pod, "KUBENAS_TRAINER_ID", artifact_env), mounts + artifact_mounts,
                           processes=pod.trials_per_gpu)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(ref, trainer_name(ref.name), "trainer"),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(ref.name, "trainer")},
            # GPUs are scarce: replace trainers one quarter at a time, never asking for extra GPUs.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": build_labels(ref.name, "trainer")},
                # A stopped trainer's lease runs out and its trial goes to another trainer; with
                # artifacts, whoever takes it over resumes from its last checkpoint.
                "spec": _with_artifacts_group(_pod_spec(pod, container, volumes + artifact_volumes, "Always", 60),
                                              artifact_volumes),
            },
        },
    }


def build_managed_redis_objects(
    ref: SearchRef, manifest: ArchitectureSearch, operator_namespace: str, operator_pod_labels: dict[str, str]
) -> list[dict[str, Any]]:
    """Everything of a managed Redis except its Secret (created once, never rewritten)."""
    objects = []
    if manifest.spec.redis.persistence.enabled:
        objects.append(build_redis_pvc_spec(ref, manifest))
    objects += [
        build_redis_service_spec(ref),
        build_redis_deployment_spec(ref, manifest),
        build_network_policy_spec(ref, operator_namespace, operator_pod_labels),
    ]
    return objects


# --- one-shot: the supernet's worker group ---------------------------------------------

def is_one_shot(manifest: ArchitectureSearch) -> bool:
    return manifest.spec.strategy.algorithm in ONE_SHOT_ALGORITHMS


def supernet_name(search: str) -> str:
    """The worker Job's name and its headless Service's (a pod's subdomain must name the Service)."""
    return child_name(search, "supernet")


def supernet_master_addr(ref: SearchRef) -> str:
    """Rank 0's stable name: an Indexed Job's pod i is host <job>-<i>, under the Service's subdomain."""
    name = supernet_name(ref.name)
    return f"{name}-0.{name}"


def build_supernet_service_spec(ref: SearchRef) -> dict[str, Any]:
    """Headless: no ClusterIP, each worker pod gets a DNS name (the JobSet / Kubeflow trainer pattern).
    Not-ready pods are published too: the workers rendezvous before any of them is ready."""
    name = supernet_name(ref.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ref, name, "supernet"),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(ref.name, "supernet"),
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": SUPERNET_PORT, "targetPort": SUPERNET_PORT, "protocol": "TCP"}],
        },
    }


def build_supernet_job_spec(ref: SearchRef, manifest: ArchitectureSearch, images: Images) -> dict[str, Any]:
    """The supernet's data-parallel workers: an Indexed Job of oneShot.workers pods on the trainers' pod
    settings (image, GPUs, scheduling). Rank = the completion index (JOB_COMPLETION_INDEX, which the Job
    controller gives every pod); rank 0 is MASTER_ADDR. Every worker resumes from the last supernet
    checkpoint on the artifacts volume, so a lost worker costs the epoch in progress: its peers' collectives
    time out, they exit non-zero, the Job replaces the pods (each failure counts against the backoff limit:
    a group restart costs up to `workers` of it), and the new group rendezvouses again."""
    pod = manifest.spec.trainer
    one_shot = manifest.spec.one_shot
    name = supernet_name(ref.name)
    artifact_volumes, artifact_mounts, _ = _artifacts(ref, manifest)
    env = [
        {"name": "WORLD_SIZE", "value": str(one_shot.workers)},
        {"name": "MASTER_ADDR", "value": supernet_master_addr(ref)},
        {"name": "MASTER_PORT", "value": str(SUPERNET_PORT)},
        {"name": "KUBENAS_NAMESPACE", "value": ref.namespace},
        {"name": "KUBENAS_NAME", "value": ref.name},
    ]
    reserved = {e["name"] for e in env}
    env += [{"name": e.name, "value": e.value} for e in pod.env if e.name not in reserved]
    container: dict[str, Any] = {
        "name": "worker",
        "image": pod.image or images.trainer,  # the trainer image: torch and the supernets
        "imagePullPolicy": pod.image_pull_policy,
        "command": ["python", "-m", "kubenas.oneshot"],
        "args": ["--spec", f"/etc/kubenas/{SUPERNET_SPEC_KEY}", "--artifacts", ARTIFACTS_DIR,
                 "--device", "cuda" if pod.gpus > 0 else "cpu"],
        "env": env,
        "ports": [{"name": "rendezvous", "containerPort": SUPERNET_PORT, "protocol": "TCP"}],
        "volumeMounts": [{"name": "spec", "mountPath": "/etc/kubenas", "readOnly": True},
                         {"name": "dshm", "mountPath": "/dev/shm"}]
                        + artifact_mounts + [dict(m) for m in pod.volume_mounts],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    resources = build_resources(pod)
    if resources:
        container["resources"] = resources
    volumes = [{"name": "spec", "configMap": {"name": spec_configmap_name(ref.name)}},
               {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}]
    spec = _with_artifacts_group(_pod_spec(pod, container, volumes + artifact_volumes, "Never", 30), artifact_volumes)
    spec["subdomain"] = name  # <job>-<index>.<service> resolves to each worker
    template = {"metadata": {"labels": build_labels(ref.name, "supernet")}, "spec": spec}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(ref, name, "supernet", {TEMPLATE_HASH_ANNOTATION: template_hash(template)}),
        "spec": {
            "completionMode": "Indexed",
            # spec.suspend: the Job controller stops the workers; on resume they start from the checkpoint.
            "suspend": manifest.spec.suspend,
            "completions": one_shot.workers,
            "parallelism": one_shot.workers,
            # One group restart fails up to every worker's pod (the lost one, then its peers timing out).
            "backoffLimit": one_shot.workers * one_shot.max_restarts,
            "podFailurePolicy": {"rules": [
                # Exit 2: the worker refused its input or its training diverged (training.learningRate);
                # the same input fails again, so fail now.
                {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "In", "values": [2]}},
                # A preempted or evicted pod is no fault of the workers: not counted.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]},
            "template": template,
        },
    }
