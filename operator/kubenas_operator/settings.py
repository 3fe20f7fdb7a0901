"""Operator configuration, read once from the environment.

| variable                              | default                                   | meaning |
|---------------------------------------|-------------------------------------------|---------|
| KUBENAS_CONTROLLER_IMAGE              | ghcr.io/kubenas/controller:<version>      | image of the controller Job when spec.controller.image is unset |
| KUBENAS_TRAINER_IMAGE                 | ghcr.io/kubenas/trainer:<version>         | image of the trainers when spec.trainer.image is unset |
| KUBENAS_OPERATOR_NAMESPACE            | kubenas-system                            | where the operator runs (its pods may reach every managed Redis) |
| KUBENAS_OPERATOR_POD_LABELS           | app.kubernetes.io/name=kubenas-operator   | labels of the operator pods, for the NetworkPolicy |
| KUBENAS_OPERATOR_SERVICE_ACCOUNT      | kubenas-operator                          | the operator's ServiceAccount (named in grant hints) |
| KUBENAS_WATCH_NAMESPACES              | (empty: the whole cluster)                | comma-separated namespaces or globs to watch |
| KUBENAS_OPERATOR_PASSWORD_KEY_FILE    | (none)                                    | file with the key that derives managed Redis passwords |
| KUBENAS_OPERATOR_PASSWORD_KEY         | (none)                                    | the same key inline (the file wins) |
| KUBENAS_OPERATOR_POLL_SECONDS         | 10                                        | how often each search's summary is read from Redis |
| KUBENAS_OPERATOR_WATCH_SERVER_TIMEOUT | 300                                       | seconds the API server keeps one watch open |
| KUBENAS_OPERATOR_WATCH_CLIENT_TIMEOUT | 330                                       | seconds before the operator drops a watch that went quiet |
| KUBENAS_OPERATOR_CONNECT_TIMEOUT      | 30                                        | seconds to open a connection to the API server |
| KUBENAS_OPERATOR_KUBECONFIG           | (none: in-cluster, else $KUBECONFIG)      | kubeconfig the operator logs in with |
| KUBENAS_OPERATOR_LIVENESS             | http://0.0.0.0:8080/healthz               | kopf's liveness endpoint |
| KUBENAS_OPERATOR_METRICS_PORT         | 9090 (0: off)                             | Prometheus /metrics port |
| KUBENAS_DEFAULT_ARTIFACTS_SIZE        | 10Gi                                      | size of a search's trial-checkpoint claim when spec.artifacts.size is unset |
| KUBENAS_DEFAULT_ARTIFACTS_STORAGE_CLASS | (none: the cluster's default class)     | its storage class (ReadWriteMany) when spec.artifacts.storageClassName is unset |
| KUBENAS_OPERATOR_REDIS_URL            | (none)                                    | TEST SEAM, see below |

Managed Redis passwords are HMAC-SHA256(key, "namespace/name"): random to anyone
without the key, stored once in the search's Secret for the pods, and
re-derivable by the operator, which therefore needs no read access to Secrets
(its RBAC grants `create` on Secrets and nothing else).

KUBENAS_OPERATOR_REDIS_URL is a test seam: when set, the operator reads the
summary of every *managed* search from this Redis instead of the in-cluster
Service `kubenas-<name>-redis.<namespace>.svc:6379` (which a test host outside
the cluster cannot resolve, and which no pod serves on a bare API server).
External searches always use their Secret's URL. Never set it in a cluster.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from kubenas import __version__ as _version
from kubenas.spec import QUANTITY

DEFAULT_OPERATOR_NAMESPACE = "kubenas-system"
DEFAULT_OPERATOR_POD_LABELS = "app.kubernetes.io/name=kubenas-operator"
FIELD_MANAGER = "kubenas-operator"
ANNOTATION_PREFIX = "kubenas.io"


def _parse_labels(text: str) -> dict[str, str]:
    labels = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"KUBENAS_OPERATOR_POD_LABELS: {part!r} is not key=value")
        labels[key.strip()] = value.strip()
    return labels


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}: {text!r} is not a number of seconds") from None
    if value < 0:
        raise ValueError(f"{name}: {text!r} must not be negative")
    return value


@dataclass(frozen=True)
class OperatorSettings:
    controller_image: str = f"ghcr.io/kubenas/controller:{_version}"
    trainer_image: str = f"ghcr.io/kubenas/trainer:{_version}"
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE
    operator_pod_labels: dict[str, str] = field(default_factory=lambda: _parse_labels(DEFAULT_OPERATOR_POD_LABELS))
    service_account: str = "kubenas-operator"
    watch_namespaces: tuple[str, ...] = ()
    password_key: Optional[bytes] = field(default=None, repr=False)
    poll_seconds: float = 10.0
    watch_server_timeout: float = 300.0
    watch_client_timeout: float = 330.0
    connect_timeout: float = 30.0
    kubeconfig: Optional[str] = None
    liveness_endpoint: Optional[str] = "http://0.0.0.0:8080/healthz"
    metrics_port: int = 9090
    redis_url_override: Optional[str] = field(default=None, repr=False)
    artifacts_size: str = "10Gi"
    artifacts_storage_class: Optional[str] = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "OperatorSettings":
        env = os.environ if env is None else env
        defaults = cls()
        key: Optional[bytes] = None
        key_file = env.get("KUBENAS_OPERATOR_PASSWORD_KEY_FILE", "").strip()
        if key_file:
            try:
                with open(key_file, "rb") as fh:
                    key = fh.read().strip()
            except OSError as exc:
                raise ValueError(f"KUBENAS_OPERATOR_PASSWORD_KEY_FILE: cannot read {key_file}: {exc.strerror}") from None
        elif env.get("KUBENAS_OPERATOR_PASSWORD_KEY", "").strip():
            key = env["KUBENAS_OPERATOR_PASSWORD_KEY"].strip().encode()
        if key is not None and len(key) < 16:
            raise ValueError("the Redis password key must be at least 16 bytes long")
        namespaces = tuple(n.strip() for n in env.get("KUBENAS_WATCH_NAMESPACES", "").split(",") if n.strip())
        liveness = env.get("KUBENAS_OPERATOR_LIVENESS", defaults.liveness_endpoint or "").strip() or None
        try:
            metrics_port = int(env.get("KUBENAS_OPERATOR_METRICS_PORT", "").strip() or defaults.metrics_port)
        except ValueError:
            raise ValueError("KUBENAS_OPERATOR_METRICS_PORT: not a port number") from None
        artifacts_size = env.get("KUBENAS_DEFAULT_ARTIFACTS_SIZE", "").strip() or defaults.artifacts_size
        if not re.fullmatch(QUANTITY, artifacts_size):
            raise ValueError(f"KUBENAS_DEFAULT_ARTIFACTS_SIZE: {artifacts_size!r} is not a quantity such as 10Gi")
        return cls(
            artifacts_size=artifacts_size,
            artifacts_storage_class=env.get("KUBENAS_DEFAULT_ARTIFACTS_STORAGE_CLASS", "").strip() or None,
            controller_image=env.get("KUBENAS_CONTROLLER_IMAGE", "").strip() or defaults.controller_image,
            trainer_image=env.get("KUBENAS_TRAINER_IMAGE", "").strip() or defaults.trainer_image,
            operator_namespace=env.get("KUBENAS_OPERATOR_NAMESPACE", "").strip() or defaults.operator_namespace,
            operator_pod_labels=_parse_labels(env.get("KUBENAS_OPERATOR_POD_LABELS", "") or DEFAULT_OPERATOR_POD_LABELS),
            service_account=env.get("KUBENAS_OPERATOR_SERVICE_ACCOUNT", "").strip() or defaults.service_account,
            watch_namespaces=namespaces,
            password_key=key,
            poll_seconds=max(_float(env, "KUBENAS_OPERATOR_POLL_SECONDS", defaults.poll_seconds), 0.5),
            watch_server_timeout=_float(env, "KUBENAS_OPERATOR_WATCH_SERVER_TIMEOUT", defaults.watch_server_timeout),
            watch_client_timeout=_float(env, "KUBENAS_OPERATOR_WATCH_CLIENT_TIMEOUT", defaults.watch_client_timeout),
            connect_timeout=_float(env, "KUBENAS_OPERATOR_CONNECT_TIMEOUT", defaults.connect_timeout),
            kubeconfig=env.get("KUBENAS_OPERATOR_KUBECONFIG", "").strip() or None,
            liveness_endpoint=liveness,
            metrics_port=metrics_port,
            redis_url_override=env.get("KUBENAS_OPERATOR_REDIS_URL", "").strip() or None,
        )

    def require_password_key(self) -> bytes:
        if self.password_key is None:
            raise ValueError(
                "no key for managed Redis passwords: set KUBENAS_OPERATOR_PASSWORD_KEY_FILE to a file "
                "holding at least 16 random bytes (the Helm chart mounts one from a Secret)"
            )
        return self.password_key


def configure_kopf(settings: Any, config: OperatorSettings) -> None:
    """kopf's settings (a kopf.OperatorSettings) that matter against a real API server."""
    import kopf

    # Handler progress and the last-handled spec live in annotations: status.kopf
    # is not declared in the CRD, so the API server would prune it (kopf#574).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    settings.persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"
    # Watches that go quiet are closed by the server and, failing that, by the client,
    # then re-established (kopf#585, #787).
    settings.watching.server_timeout = int(config.watch_server_timeout)  # the API server wants whole seconds
    settings.watching.client_timeout = config.watch_client_timeout
    settings.watching.connect_timeout = config.connect_timeout
    settings.networking.connect_timeout = config.connect_timeout
    settings.networking.request_timeout = max(config.watch_client_timeout, 60)
    settings.posting.enabled = True
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "kubenas-operator"
    settings.execution.max_workers = 8
    # A failing handler retries after a minute unless it says otherwise: no retry storms.
    settings.execution.default_backoff = 60
    settings.peering.standalone = True
