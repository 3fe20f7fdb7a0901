"""What one running operator holds: its settings, its API client, a lock per
search, its Redis clients and the warnings it already posted.

Created by the startup handler and kept in kopf's memo, so nothing is read or
built at import time and two operators in one process share nothing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Optional

import kopf
import kubernetes
import redis

from kubenas import metrics
from kubenas.queue.connection import connect

from kubenas_operator import builders, status as st
from kubenas_operator.kube import Kube, load_client_configuration
from kubenas_operator.settings import OperatorSettings

PHASES = st.PHASES


@dataclass
class Runtime:
    settings: OperatorSettings
    client_config: kubernetes.client.Configuration
    kube: Kube
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)
    _redis: dict[str, redis.Redis] = field(default_factory=dict)
    _warned: dict[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: OperatorSettings) -> "Runtime":
        config = load_client_configuration(settings.kubeconfig)
        return cls(settings, config, Kube(kubernetes.client.ApiClient(config)))

    @property
    def images(self) -> builders.Images:
        return builders.Images(controller=self.settings.controller_image, trainer=self.settings.trainer_image)

    @property
    def artifact_defaults(self) -> builders.ArtifactDefaults:
        return builders.ArtifactDefaults(size=self.settings.artifacts_size,
                                         storage_class_name=self.settings.artifacts_storage_class)

    @property
    def searches(self) -> int:
        return len(self._locks)

    def lock(self, uid: str) -> threading.Lock:
        """One lock per search: the handlers and the status poll never write its status at once."""
        with self._locks_guard:
            return self._locks.setdefault(uid, threading.Lock())

    # --- the search's Redis ---------------------------------------------------------

    def redis_client(self, url: str) -> redis.Redis:
        client = self._redis.get(url)
        if client is None:
            # Short timeouts: an unreachable Redis must not hold a worker for long.
            client = self._redis[url] = connect(url, client_name="kubenas-operator", socket_timeout=3.0)
        return client

    def drop_redis_client(self, url: str) -> None:
        client = self._redis.pop(url, None)
        if client is not None:
            client.close()

    # --- the ArchitectureSearch ---------------------------------------------------------

    def fresh(self, ref: builders.SearchRef) -> Optional[dict[str, Any]]:
        """The object as stored now; None when it was deleted (or replaced by a new one of the same name)."""
        body = self.kube.get_search(ref.namespace, ref.name)
        if body is None or body["metadata"].get("uid") != ref.uid:
            return None
        return body

    def write_status(self, body: Any, obs: st.Observation) -> dict[str, Any]:
        """Merge the observation into the object's current status; patch only what changed."""
        current = body.get("status") or {}
        new = st.compute_status(current, obs)
        patch = st.status_patch(current, new)
        meta = body["metadata"]
        search = f"{meta['namespace']}/{meta['name']}"
        if patch:
            self.kube.patch_search_status(meta["namespace"], meta["name"], patch)
            metrics.OPERATOR_STATUS_WRITES.labels(search).inc()
        export_phase(search, new.get("phase"))
        return new

    # --- Events: a condition that persists is no news --------------------------------

    def warn_once(self, body: Any, reason: str, message: str) -> None:
        """A Warning Event, once per distinct message."""
        key = (body["metadata"]["uid"], reason)
        if self._warned.get(key) != message:
            self._warned[key] = message
            kopf.warn(body, reason=reason, message=message)

    def forget_warnings(self, body: Any, *reasons: str) -> None:
        for reason in reasons:
            self._warned.pop((body["metadata"]["uid"], reason), None)

    def forget(self, uid: str) -> None:
        """A deleted search: drop what the operator remembered of it."""
        with self._locks_guard:
            self._locks.pop(uid, None)
        for key in [k for k in self._warned if k[0] == uid]:
            self._warned.pop(key, None)

    def close(self) -> None:
        for url in list(self._redis):
            self.drop_redis_client(url)
        self.kube.api_client.close()


def export_phase(search: str, phase: Optional[str]) -> None:
    """kubenas_search_phase: 1 for the current phase (the search-failed alert reads it)."""
    for name in PHASES:
        metrics.SEARCH_PHASE.labels(search, name).set(1.0 if name == phase else 0.0)


def forget_phase(search: str) -> None:
    """A deleted search leaves no phase series behind."""
    for name in PHASES:
        try:
            metrics.SEARCH_PHASE.remove(search, name)
        except KeyError:
            pass
