"""Apply the objects of one search (built by `builders`) to the API server.

Every call is idempotent: server-side apply by deterministic name, or create
for what must never be rewritten (the Redis Secret, the claims). The
controller Job is replaced only when its pod template changed (a Job's
template is immutable); budget and suspend changes never replace it: they
travel through the search's Redis (see `search_redis.push_live_spec`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import kopf
from kubernetes.client.rest import ApiException

from kubenas.spec import ArchitectureSearch

from kubenas_operator import builders
from kubenas_operator.kube import api_message
from kubenas_operator.runtime import Runtime


class ChildObjectRefused(Exception):
    """The API server refused an object built from the spec (400/422): the user must fix the spec."""


@dataclass(frozen=True)
class Applied:
    """What `apply_children` did, for the Events."""

    trainers: int
    controller: str = "unchanged"  # created | replaced | unchanged
    trainers_removed: bool = False


def apply_children(runtime: Runtime, ref: builders.SearchRef, manifest: ArchitectureSearch,
                   finished: bool) -> Applied:
    """Create or update every child; a finished search only loses its trainers.

    Raises ChildObjectRefused for a spec the API server will not take, and
    kopf.TemporaryError for what a retry may fix (RBAC, a conflict, an outage)."""
    current: Optional[dict[str, Any]] = None
    try:
        for current in _durable_objects(runtime, ref, manifest):
            if current["kind"] in ("Secret", "PersistentVolumeClaim"):
                runtime.kube.create(current)  # a password is never rewritten; a bound claim's spec is immutable
            else:
                runtime.kube.apply(current)
        trainer = builders.trainer_name(ref.name)
        if finished:
            _stop_supernet(runtime, ref, manifest)
            return Applied(trainers=0, trainers_removed=runtime.kube.delete("Deployment", ref.namespace, trainer))
        current = builders.build_controller_job_spec(ref, manifest, runtime.images)
        controller = _ensure_job(runtime, current)
        replicas = builders.trainer_replicas(manifest, finished=False,
                                             supernet_training=supernet_training(runtime, ref, manifest))
        current = builders.build_trainer_deployment_spec(ref, manifest, runtime.images, replicas)
        runtime.kube.apply(current)
        if builders.is_one_shot(manifest):  # the supernet's worker group: rendezvous names, then the workers
            current = builders.build_supernet_service_spec(ref)
            runtime.kube.apply(current)
            current = builders.build_supernet_job_spec(ref, manifest, runtime.images)
            _ensure_job(runtime, current)
            _suspend_job(runtime, current)
        return Applied(trainers=replicas, controller=controller)
    except ApiException as exc:
        what = f"{current['kind']} {current['metadata']['name']}" if current else "a child object"
        if exc.status in (400, 422):
            raise ChildObjectRefused(f"the API server rejected {what}: {api_message(exc)}") from None
        if exc.status == 403:
            raise kopf.TemporaryError(
                f"the operator may not write {what} ({api_message(exc)}); check its RBAC", delay=60) from None
        raise kopf.TemporaryError(f"writing {what} failed: {api_message(exc)}", delay=10) from None


def _durable_objects(runtime: Runtime, ref: builders.SearchRef, manifest: ArchitectureSearch) -> list[dict[str, Any]]:
    """What outlives the search's end: its Redis, the controller's checkpoint claim, the trial
    checkpoints' claim and the spec."""
    settings = runtime.settings
    objects = []
    if manifest.spec.redis.mode == "managed":
        password = builders.derive_redis_password(settings.require_password_key(), ref.namespace, ref.name)
        objects.append(builders.build_redis_secret_spec(ref, manifest, password))
        objects += builders.build_managed_redis_objects(
            ref, manifest, settings.operator_namespace, settings.operator_pod_labels)
    if manifest.spec.redis.persistence.enabled:
        objects.append(builders.build_checkpoint_pvc_spec(ref, manifest))
    artifacts = builders.build_artifacts_pvc_spec(ref, manifest, runtime.artifact_defaults)
    if artifacts is not None:
        objects.append(artifacts)
    objects.append(builders.build_spec_configmap_spec(ref, manifest))
    return objects


def _ensure_job(runtime: Runtime, desired: dict[str, Any]) -> str:
    meta = desired["metadata"]
    existing = runtime.kube.get("Job", meta["namespace"], meta["name"])
    if existing is None:
        runtime.kube.create(desired)
        return "created"
    want = meta["annotations"][builders.TEMPLATE_HASH_ANNOTATION]
    have = (existing["metadata"].get("annotations") or {}).get(builders.TEMPLATE_HASH_ANNOTATION)
    if have == want or job_finished(existing):
        return "unchanged"
    # The controller resumes from its checkpoint and Redis in the new Job.
    runtime.kube.delete("Job", meta["namespace"], meta["name"])
    if not runtime.kube.create(desired):
        raise kopf.TemporaryError(f"Job {meta['name']} is still being deleted; replacing it shortly", delay=5)
    return "replaced"


def _suspend_job(runtime: Runtime, desired: dict[str, Any]) -> None:
    """spec.suspend reaches a Job that exists already (suspend is one of the few fields a Job may change)."""
    meta = desired["metadata"]
    existing = runtime.kube.get("Job", meta["namespace"], meta["name"])
    want = bool(desired["spec"].get("suspend"))
    if existing is not None and not job_finished(existing) and bool(existing["spec"].get("suspend")) != want:
        runtime.kube.merge_patch("Job", meta["namespace"], meta["name"], {"spec": {"suspend": want}})


def _stop_supernet(runtime: Runtime, ref: builders.SearchRef, manifest: ArchitectureSearch) -> None:
    """A search that ended (say by maxDuration) while its supernet trained: its workers go too."""
    if not builders.is_one_shot(manifest):
        return
    job = runtime.kube.get("Job", ref.namespace, builders.supernet_name(ref.name))
    if job is not None and not job_finished(job):
        runtime.kube.delete("Job", ref.namespace, builders.supernet_name(ref.name))


def supernet_training(runtime: Runtime, ref: builders.SearchRef, manifest: ArchitectureSearch) -> bool:
    """A one-shot search whose worker Job has not completed (or not been created yet): the workers
    have the trainers' place. Once it completes, `trainers_after_supernet` brings the trainers."""
    if not builders.is_one_shot(manifest):
        return False
    job = runtime.kube.get("Job", ref.namespace, builders.supernet_name(ref.name))
    return not _complete(job)


def _complete(job: Optional[dict[str, Any]]) -> bool:
    return any(c.get("type") == "Complete" and c.get("status") == "True"
               for c in ((job or {}).get("status") or {}).get("conditions") or [])


def trainers_after_supernet(runtime: Runtime, ref: builders.SearchRef, manifest: ArchitectureSearch) -> bool:
    """Scale the trainers up once the supernet's Job completed (its derived cells need them); True if it did."""
    if not builders.is_one_shot(manifest) or supernet_training(runtime, ref, manifest):
        return False
    deployment = runtime.kube.get("Deployment", ref.namespace, builders.trainer_name(ref.name))
    wanted = builders.trainer_replicas(manifest, finished=False)
    if deployment is None or (deployment.get("spec") or {}).get("replicas") == wanted:
        return False
    runtime.kube.apply(builders.build_trainer_deployment_spec(ref, manifest, runtime.images, wanted))
    return True


def supernet_failure(job: Optional[dict[str, Any]]) -> Optional[str]:
    """Why the supernet's worker Job failed for good (its backoff limit, or a worker refusing its input)."""
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Failed" and c.get("status") == "True":
            return (f"the supernet's worker Job failed: {c.get('reason') or 'Failed'}: {c.get('message') or ''}"
                    .rstrip(": ") + "; the workers' logs say why (kubectl logs -l "
                    f"app.kubernetes.io/component=supernet,app.kubernetes.io/instance="
                    f"{(job['metadata'].get('labels') or {}).get(builders.INSTANCE_LABEL)})")
    return None


def job_finished(job: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def job_failure(job: Optional[dict[str, Any]]) -> Optional[str]:
    """Why the controller Job failed, or None while it has not."""
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Failed" and c.get("status") == "True":
            return f"the controller Job failed: {c.get('reason') or 'Failed'}: {c.get('message') or ''}".rstrip(": ")
    return None


def ready_trainers(runtime: Runtime, ref: builders.SearchRef) -> int:
    deployment = runtime.kube.get("Deployment", ref.namespace, builders.trainer_name(ref.name))
    return int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
