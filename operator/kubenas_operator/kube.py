"""The few Kubernetes API calls the operator makes, on plain dicts.

Create-or-update is server-side apply (`application/apply-patch+yaml`, field
manager `kubenas-operator`, force): it creates a missing object, rewrites only
the fields the operator owns, drops fields the operator stopped setting, and is
a no-op (no new resourceVersion) when nothing changed. Objects that must never
be rewritten (the Redis Secret, the PVC, the Job) are created, and 409
AlreadyExists counts as success.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Optional

import kubernetes
from kubernetes.client.rest import ApiException

from kubenas.spec import GROUP, PLURAL, VERSION

from kubenas_operator.settings import FIELD_MANAGER

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"

# kind -> (API class, method suffix)
_KINDS: dict[str, tuple[type, str]] = {
    "Secret": (kubernetes.client.CoreV1Api, "namespaced_secret"),
    "ConfigMap": (kubernetes.client.CoreV1Api, "namespaced_config_map"),
    "Service": (kubernetes.client.CoreV1Api, "namespaced_service"),
    "PersistentVolumeClaim": (kubernetes.client.CoreV1Api, "namespaced_persistent_volume_claim"),
    "Deployment": (kubernetes.client.AppsV1Api, "namespaced_deployment"),
    "Job": (kubernetes.client.BatchV1Api, "namespaced_job"),
    "NetworkPolicy": (kubernetes.client.NetworkingV1Api, "namespaced_network_policy"),
}


def load_client_configuration(kubeconfig: Optional[str] = None) -> kubernetes.client.Configuration:
    """In-cluster credentials, else the kubeconfig (KUBENAS_OPERATOR_KUBECONFIG, $KUBECONFIG, ~/.kube/config)."""
    config = kubernetes.client.Configuration()
    if kubeconfig:
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=config)
        return config
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)
    return config


def bearer_token(config: kubernetes.client.Configuration) -> Optional[str]:
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token if token else scheme


def api_message(exc: ApiException) -> str:
    """The API server's own message (e.g. a schema or admission error), not the HTTP dump."""
    try:
        body = json.loads(exc.body or "")
        if isinstance(body, dict) and body.get("message"):
            return str(body["message"])
    except (TypeError, ValueError):
        pass
    return f"{exc.status} {exc.reason}"


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient, field_manager: str = FIELD_MANAGER) -> None:
        self.api_client = api_client
        self.field_manager = field_manager
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self._apis: dict[type, Any] = {}

    def _method(self, kind: str, verb: str) -> Any:
        cls, suffix = _KINDS[kind]
        api = self._apis.get(cls)
        if api is None:
            api = self._apis[cls] = cls(self.api_client)
        return getattr(api, f"{verb}_{suffix}")

    @staticmethod
    def _json(response: Any) -> dict[str, Any]:
        return json.loads(response.data or b"{}")

    # --- children ------------------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply; returns the object as stored."""
        meta = obj["metadata"]
        response = self._method(obj["kind"], "patch")(
            meta["name"], meta["namespace"], obj,
            field_manager=self.field_manager, force=True,
            _content_type=APPLY, _preload_content=False,
        )
        return self._json(response)

    def merge_patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of a few fields (a Job's suspend: its template may not be re-applied)."""
        response = self._method(kind, "patch")(name, namespace, patch, _content_type="application/merge-patch+json",
                                                _preload_content=False)
        return self._json(response)

    def create(self, obj: dict[str, Any]) -> bool:
        """Create the object; False when it already existed (left as it is)."""
        try:
            self._method(obj["kind"], "create")(obj["metadata"]["namespace"], obj, _preload_content=False)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def get(self, kind: str, namespace: str, name: str) -> Optional[dict[str, Any]]:
        try:
            return self._json(self._method(kind, "read")(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete with background propagation (its pods follow); False when it was not there."""
        try:
            self._method(kind, "delete")(
                name, namespace, propagation_policy="Background", _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def read_secret_value(self, namespace: str, name: str, key: str) -> Optional[str]:
        """One key of a Secret (only for the external Redis URL, which the user grants access to)."""
        secret = self._json(self.core.read_namespaced_secret(name, namespace, _preload_content=False))
        value = (secret.get("data") or {}).get(key)
        return None if value is None else base64.b64decode(value).decode()

    # --- the ArchitectureSearch itself ------------------------------------------------

    def get_search(self, namespace: str, name: str) -> Optional[dict[str, Any]]:
        try:
            return self._json(self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_search_status(self, namespace: str, name: str, status_patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of the status subresource (None values remove fields)."""
        return self._json(self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status_patch},
            _content_type=MERGE, _preload_content=False))
