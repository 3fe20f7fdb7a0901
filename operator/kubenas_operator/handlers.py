"""kopf handlers of the ArchitectureSearch operator: thin, they decide and call builders.

- create / resume / update -> `reconcile`: validate the spec, apply every child
  object (idempotent: server-side apply by deterministic name), write
  observedGeneration and the SpecValid condition, post lifecycle Events.
- a timer per search -> `poll`: read the controller's summary from the search's
  Redis, the trainers' readiness and the controller Job's outcome, and write
  the status only when it changed; on completion remove the trainers.

Both run under one lock per search, and read the object fresh before writing
its status, so the operator is a single, consistent status writer.

A spec the schema cannot reject but that makes no sense (an operation the
search space does not have; pod settings the API server refuses) gives the
condition SpecValid=False with the reason in its message, phase Failed, one
Warning Event, and no retries until the spec changes.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlsplit

import kopf
import kubernetes
import redis
from kubernetes.client.rest import ApiException
from redis.backoff import NoBackoff
from redis.retry import Retry
from pydantic import ValidationError

from kubenas import metrics
from kubenas.errors import InvalidSpec
from kubenas.queue.keys import SearchKeys
from kubenas.spec import API_VERSION, GROUP, KIND, PLURAL, VERSION, ArchitectureSearch, SearchSummary, parse_manifest

from kubenas_operator import builders, status as st
from kubenas_operator.kube import Kube, api_message, bearer_token, load_client_configuration
from kubenas_operator.settings import OperatorSettings

log = logging.getLogger("kubenas.operator")
ANNOTATION_PREFIX = "kubenas.io"


def _poll_seconds() -> float:
    # Read at import: kopf fixes a timer's interval when the handler is registered.
    try:
        return max(float(os.environ.get("KUBENAS_OPERATOR_POLL_SECONDS", "") or 10), 0.5)
    except ValueError:
        return 10.0


POLL_SECONDS = _poll_seconds()


class _QuietTimer(logging.Filter):
    """Drop kopf's "Timer 'poll' succeeded." line: one per search every few seconds is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timer 'poll' succeeded")


logging.getLogger("kopf.objects").addFilter(_QuietTimer())


# --- per-operator state (kept in kopf's memo, so two operators in one process do not share it) ----

@dataclass
class Runtime:
    settings: OperatorSettings
    client_config: kubernetes.client.Configuration
    kube: Kube
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)
    _redis: dict[str, redis.Redis] = field(default_factory=dict)
    _warned: dict[tuple[str, str], str] = field(default_factory=dict)
    cleaned: set[str] = field(default_factory=set)

    @classmethod
    def create(cls, settings: OperatorSettings) -> "Runtime":
        config = load_client_configuration(settings.kubeconfig)
        return cls(settings, config, Kube(kubernetes.client.ApiClient(config)))

    def lock(self, uid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(uid, threading.Lock())

    def redis_client(self, url: str) -> redis.Redis:
        client = self._redis.get(url)
        if client is None:
            # Short timeouts and one retry: an unreachable Redis must not hold a worker for long.
            client = redis.Redis.from_url(
                url, socket_timeout=3, socket_connect_timeout=3, health_check_interval=30,
                retry=Retry(NoBackoff(), 1))
            self._redis[url] = client
        return client

    def drop_redis_client(self, url: str) -> None:
        client = self._redis.pop(url, None)
        if client is not None:
            client.close()

    def warn_once(self, body: Any, reason: str, message: str) -> None:
        """A Warning Event, once per distinct message: a condition that persists is no news."""
        key = (body["metadata"]["uid"], reason)
        if self._warned.get(key) != message:
            self._warned[key] = message
            kopf.warn(body, reason=reason, message=message)

    def forget_warning(self, body: Any, reason: str) -> None:
        self._warned.pop((body["metadata"]["uid"], reason), None)

    def forget(self, uid: str) -> None:
        """A deleted search: drop what the operator remembered of it."""
        with self._locks_guard:
            self._locks.pop(uid, None)
        self.cleaned.discard(uid)
        for key in [k for k in self._warned if k[0] == uid]:
            self._warned.pop(key, None)

    def close(self) -> None:
        for url in list(self._redis):
            self.drop_redis_client(url)
        self.kube.api_client.close()


def _runtime(memo: Any) -> Runtime:
    runtime = getattr(memo, "kubenas", None)
    if runtime is None:
        runtime = memo.kubenas = Runtime.create(OperatorSettings.from_env())
    return runtime


# --- startup, login, probes -------------------------------------------------------------

def configure_kopf(settings: kopf.OperatorSettings, config: OperatorSettings) -> None:
    """kopf settings that matter against a real API server."""
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


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: Any, logger: logging.Logger, **_: Any) -> None:
    config = OperatorSettings.from_env()
    config.require_password_key()
    configure_kopf(settings, config)
    if not hasattr(memo, "kubenas"):
        memo.kubenas = Runtime.create(config)
    logger.info("kubenas operator: controller image %s, trainer image %s, polling every %.1fs%s",
                config.controller_image, config.trainer_image, POLL_SECONDS,
                " (TEST SEAM: managed searches read KUBENAS_OPERATOR_REDIS_URL)" if config.redis_url_override else "")


@kopf.on.cleanup()
def cleanup(memo: Any, **_: Any) -> None:
    runtime = getattr(memo, "kubenas", None)
    if runtime is not None:
        runtime.close()


@kopf.on.login()
def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """Log kopf in with the same credentials as the operator's own client."""
    config = _runtime(memo).client_config
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        token=bearer_token(config),
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )


@kopf.on.probe(id="searches")
def probe_searches(memo: Any, **_: Any) -> int:
    return len(_runtime(memo)._locks)


# --- helpers ---------------------------------------------------------------------------

def _manifest(body: Any) -> ArchitectureSearch:
    """The stored object as the spec models see it; raises InvalidSpec naming the field."""
    from kubenas.spaces import build_space

    meta = body["metadata"]
    manifest = parse_manifest(
        {"apiVersion": API_VERSION, "kind": KIND,
         "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
         "spec": body.get("spec") or {}},
        source=f"{KIND} {meta['namespace']}/{meta['name']}",
    )
    try:
        build_space(manifest.spec.search_space)
    except (InvalidSpec, ValueError) as exc:
        raise InvalidSpec(f"spec.{exc}") from None
    return manifest


def _observation(ref: builders.SearchRef, body: Any, **kwargs: Any) -> st.Observation:
    spec = body.get("spec") or {}
    return st.Observation(
        now=st.now_rfc3339(),
        generation=ref.generation,
        suspended=bool(spec.get("suspend")),
        selector=builders.trainer_selector(ref.name),
        **kwargs,
    )


def _write_status(runtime: Runtime, body: Any, obs: st.Observation) -> dict[str, Any]:
    """Merge the observation into the object's current status; patch only what changed."""
    current = body.get("status") or {}
    new = st.compute_status(current, obs)
    patch = st.status_patch(current, new)
    meta = body["metadata"]
    search = f"{meta['namespace']}/{meta['name']}"
    if patch:
        runtime.kube.patch_search_status(meta["namespace"], meta["name"], patch)
        metrics.OPERATOR_STATUS_WRITES.labels(search).inc()
    _export_phase(search, new.get("phase"))
    return new


PHASES = ("Pending", "Running", "Suspended", "Succeeded", "Failed")


def _export_phase(search: str, phase: Optional[str]) -> None:
    """kubenas_search_phase: 1 for the current phase (the search-failed alert reads it)."""
    for name in PHASES:
        metrics.SEARCH_PHASE.labels(search, name).set(1.0 if name == phase else 0.0)


def _fresh(runtime: Runtime, ref: builders.SearchRef) -> Optional[dict[str, Any]]:
    body = runtime.kube.get_search(ref.namespace, ref.name)
    if body is None or body["metadata"].get("uid") != ref.uid:
        return None  # deleted (or replaced by a new object of the same name)
    return body


def _images(runtime: Runtime) -> builders.Images:
    return builders.Images(controller=runtime.settings.controller_image, trainer=runtime.settings.trainer_image)


def _job_failure(job: Optional[dict[str, Any]]) -> Optional[str]:
    for c in ((job or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Failed" and c.get("status") == "True":
            return f"the controller Job failed: {c.get('reason') or 'Failed'}: {c.get('message') or ''}".rstrip(": ")
    return None


def _job_finished(job: dict[str, Any]) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


# --- reconcile: create / resume / update ----------------------------------------------------

class Rejected(Exception):
    """The API server refused an object built from the spec (a 400/422): the user must fix the spec."""


def _ensure_controller_job(runtime: Runtime, ref: builders.SearchRef, manifest: ArchitectureSearch) -> str:
    desired = builders.build_controller_job_spec(ref, manifest, _images(runtime))
    name = desired["metadata"]["name"]
    existing = runtime.kube.get("Job", ref.namespace, name)
    if existing is None:
        runtime.kube.create(desired)
        return "created"
    want = desired["metadata"]["annotations"][builders.TEMPLATE_HASH_ANNOTATION]
    have = (existing["metadata"].get("annotations") or {}).get(builders.TEMPLATE_HASH_ANNOTATION)
    if have == want or _job_finished(existing):
        return "unchanged"
    # A Job's pod template is immutable: replace the Job (the controller resumes from Redis).
    runtime.kube.delete("Job", ref.namespace, name)
    if not runtime.kube.create(desired):
        raise kopf.TemporaryError(f"Job {name} is still being deleted; replacing it shortly", delay=5)
    return "replaced"


def _apply_children(runtime: Runtime, ref: builders.SearchRef, manifest: ArchitectureSearch,
                    finished: bool) -> dict[str, Any]:
    """Create or update every child; returns what was done, for the Events."""
    settings = runtime.settings
    done: dict[str, Any] = {}
    current: Optional[dict[str, Any]] = None
    try:
        if manifest.spec.redis.mode == "managed":
            password = builders.derive_redis_password(settings.require_password_key(), ref.namespace, ref.name)
            current = builders.build_redis_secret_spec(ref, manifest, password)
            done["secret"] = runtime.kube.create(current)
            for obj in builders.build_managed_redis_objects(
                    ref, manifest, settings.operator_namespace, settings.operator_pod_labels):
                current = obj
                if obj["kind"] == "PersistentVolumeClaim":
                    runtime.kube.create(obj)  # a claim's spec is immutable once bound
                else:
                    runtime.kube.apply(obj)
        if manifest.spec.redis.persistence.enabled:
            current = builders.build_checkpoint_pvc_spec(ref, manifest)
            runtime.kube.create(current)
        current = builders.build_spec_configmap_spec(ref, manifest)
        runtime.kube.apply(current)
        if finished:
            done["trainers"] = 0
            if runtime.kube.delete("Deployment", ref.namespace, builders.trainer_name(ref.name)):
                done["trainers_removed"] = True
            return done
        current = builders.build_controller_job_spec(ref, manifest, _images(runtime))
        done["controller"] = _ensure_controller_job(runtime, ref, manifest)
        replicas = builders.trainer_replicas(manifest, finished=False)
        current = builders.build_trainer_deployment_spec(ref, manifest, _images(runtime), replicas)
        runtime.kube.apply(current)
        done["trainers"] = replicas
    except ApiException as exc:
        what = f"{current['kind']} {current['metadata']['name']}" if current else "a child object"
        if exc.status in (400, 422):
            raise Rejected(f"the API server rejected {what}: {api_message(exc)}") from None
        if exc.status == 403:
            raise kopf.TemporaryError(
                f"the operator may not write {what} ({api_message(exc)}); check its RBAC", delay=60) from None
        raise kopf.TemporaryError(f"writing {what} failed: {api_message(exc)}", delay=10) from None
    return done


def _lifecycle_events(body: Any, reason: str, old: Any, new: Any, done: dict[str, Any]) -> None:
    spec = (new or {}).get("spec") or {}
    if reason == "create":
        redis_mode = (spec.get("redis") or {}).get("mode", "managed")
        kopf.info(body, reason="Created", message=(
            f"{'managed Redis, ' if redis_mode == 'managed' else ''}controller Job and "
            f"{done.get('trainers', 0)} trainer(s) created"))
        return
    if reason != "update":
        return
    before = (old or {}).get("spec") or {}
    old_budget, new_budget = before.get("budget") or {}, spec.get("budget") or {}
    if bool(before.get("suspend")) != bool(spec.get("suspend")):
        kopf.info(body, reason="Suspended" if spec.get("suspend") else "Resumed", message=(
            "suspended: trainers scaled to zero, no new trials" if spec.get("suspend")
            else f"resumed with {done.get('trainers', 0)} trainer(s)"))
    elif old_budget.get("parallelism") != new_budget.get("parallelism"):
        kopf.info(body, reason="Scaled", message=(
            f"trainers {old_budget.get('parallelism')} -> {new_budget.get('parallelism')}"))
    changed = sorted(k for k in set(old_budget) | set(new_budget)
                     if k != "parallelism" and old_budget.get(k) != new_budget.get(k))
    if changed:
        kopf.info(body, reason="BudgetChanged", message="budget " + ", ".join(
            f"{k} {old_budget.get(k)} -> {new_budget.get(k)}" for k in changed))
    if done.get("controller") == "replaced":
        kopf.info(body, reason="ControllerReplaced", message="spec.controller changed: the controller Job was replaced")


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile(body: Any, reason: str, old: Any, new: Any, memo: Any, logger: logging.Logger, **_: Any) -> None:
    runtime = _runtime(memo)
    ref = builders.SearchRef.from_body(body)
    search = f"{ref.namespace}/{ref.name}"
    with runtime.lock(ref.uid):
        fresh = _fresh(runtime, ref)
        if fresh is None:
            return
        ref = builders.SearchRef.from_body(fresh)
        try:
            manifest = _manifest(fresh)
        except InvalidSpec as exc:
            message = str(exc)
            logger.warning("invalid spec: %s", message)
            _write_status(runtime, fresh, _observation(
                ref, fresh, spec_checked=True, spec_problem=st.Problem(st.INVALID_SPEC, message)))
            runtime.warn_once(fresh, st.INVALID_SPEC, message)
            metrics.OPERATOR_RECONCILES.labels(search, "invalid").inc()
            return

        current = fresh.get("status") or {}
        failed_condition = st.condition(current, st.FAILED_CONDITION) or {}
        finished = current.get("phase") in st.TERMINAL and failed_condition.get("reason") != st.INVALID_SPEC
        try:
            done = _apply_children(runtime, ref, manifest, finished)
        except Rejected as exc:
            message = str(exc)
            logger.warning("%s", message)
            _write_status(runtime, fresh, _observation(
                ref, fresh, spec_checked=True, spec_problem=st.Problem("Rejected", message)))
            runtime.warn_once(fresh, "Rejected", message)
            metrics.OPERATOR_RECONCILES.labels(search, "invalid").inc()
            return
        except kopf.TemporaryError as exc:
            metrics.OPERATOR_RECONCILE_ERRORS.labels(search).inc()
            runtime.warn_once(fresh, "ReconcileError", str(exc))
            raise
        runtime.forget_warning(fresh, st.INVALID_SPEC)
        runtime.forget_warning(fresh, "Rejected")
        runtime.forget_warning(fresh, "ReconcileError")
        _write_status(runtime, fresh, _observation(ref, fresh, spec_checked=True, reconciled=True))
        metrics.OPERATOR_RECONCILES.labels(search, "ok").inc()
        _lifecycle_events(fresh, reason, old, new, done)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)  # optional: no finalizer, deletion never waits
def forget(body: Any, memo: Any, **_: Any) -> None:
    """The children go with the search (ownerReferences); only the operator's memory is left."""
    _runtime(memo).forget(body["metadata"]["uid"])
    search = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
    for name in PHASES:  # a deleted search leaves no phase series behind
        try:
            metrics.SEARCH_PHASE.remove(search, name)
        except KeyError:
            pass


# --- the summary: Redis -> status ----------------------------------------------------------

def _redis_url(runtime: Runtime, ref: builders.SearchRef, manifest: ArchitectureSearch) -> str:
    """Where the search's summary lives; raises _RedisProblem when that cannot be known."""
    redis_spec = manifest.spec.redis
    if redis_spec.mode == "managed":
        if runtime.settings.redis_url_override:  # the documented test seam
            return runtime.settings.redis_url_override
        password = builders.derive_redis_password(runtime.settings.require_password_key(), ref.namespace, ref.name)
        return builders.managed_redis_url(ref, password)
    assert redis_spec.url_secret is not None
    secret, key = redis_spec.url_secret.name, redis_spec.url_secret.key
    try:
        url = runtime.kube.read_secret_value(ref.namespace, secret, key)
    except ApiException as exc:
        if exc.status == 404:
            raise _RedisProblem("SecretNotFound", f"Secret {ref.namespace}/{secret} (redis.urlSecret) does not exist")
        if exc.status == 403:
            sa = f"{runtime.settings.operator_namespace}:{runtime.settings.service_account}"
            raise _RedisProblem("SecretForbidden", (
                f"the operator may not read Secret {ref.namespace}/{secret} (redis.urlSecret); grant it with: "
                f"kubectl -n {ref.namespace} create role kubenas-redis-url --verb=get --resource=secrets "
                f"--resource-name={secret} && kubectl -n {ref.namespace} create rolebinding kubenas-redis-url "
                f"--role=kubenas-redis-url --serviceaccount={sa}"))
        raise _RedisProblem("SecretUnreadable", f"reading Secret {ref.namespace}/{secret}: {api_message(exc)}")
    if not url:
        raise _RedisProblem("SecretKeyMissing", f"Secret {ref.namespace}/{secret} has no key {key!r} (redis.urlSecret.key)")
    return url


class _RedisProblem(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.problem = st.Problem(reason, message)


def _where(url: str) -> str:
    """host:port of a Redis URL, never its password."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port or 6379}"
    except ValueError:
        return "(unparseable URL)"


def read_summary(runtime: Runtime, ref: builders.SearchRef, manifest: ArchitectureSearch
                 ) -> tuple[Optional[SearchSummary], Optional[st.Problem]]:
    try:
        url = _redis_url(runtime, ref, manifest)
    except _RedisProblem as exc:
        return None, exc.problem
    try:
        raw = runtime.redis_client(url).get(SearchKeys(ref.namespace, ref.name).summary)
    except redis.AuthenticationError:
        runtime.drop_redis_client(url)
        return None, st.Problem("AuthenticationFailed", f"Redis at {_where(url)} refused the password")
    except (redis.ConnectionError, redis.TimeoutError, OSError, ValueError) as exc:
        runtime.drop_redis_client(url)
        text = str(exc).replace(url, _where(url))
        return None, st.Problem("Unreachable", f"cannot read the summary from Redis at {_where(url)}: {text}"[:1000])
    except redis.RedisError as exc:
        return None, st.Problem("RedisError", f"Redis at {_where(url)}: {type(exc).__name__}: {exc}"[:1000])
    if raw is None:
        return None, None
    try:
        return SearchSummary.model_validate_json(raw), None
    except ValidationError as exc:
        return None, st.Problem("SummaryInvalid", f"the controller's summary is not valid: {exc.errors()[0]['msg']}")


def _ready_trainers(runtime: Runtime, ref: builders.SearchRef) -> int:
    deployment = runtime.kube.get("Deployment", ref.namespace, builders.trainer_name(ref.name))
    return int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)


@kopf.timer(GROUP, VERSION, PLURAL, interval=POLL_SECONDS, initial_delay=min(POLL_SECONDS, 2.0), sharp=False)
def poll(body: Any, memo: Any, logger: logging.Logger, **_: Any) -> None:
    runtime = _runtime(memo)
    ref = builders.SearchRef.from_body(body)
    seen = body.get("status") or {}
    if seen.get("phase") in st.TERMINAL and ref.uid in runtime.cleaned:
        return  # finished and tidied: nothing left to watch
    search = f"{ref.namespace}/{ref.name}"
    with runtime.lock(ref.uid):
        try:
            fresh = _fresh(runtime, ref)
            if fresh is None:
                return
            ref = builders.SearchRef.from_body(fresh)
            current = fresh.get("status") or {}
            spec_valid = st.condition(current, st.SPEC_VALID)
            if spec_valid is None or spec_valid.get("status") != "True":
                return  # not reconciled yet, or the spec is wrong: nothing runs
            try:
                manifest = _manifest(fresh)
            except InvalidSpec:
                return  # the next reconcile reports it
            was_terminal = current.get("phase") in st.TERMINAL
            if was_terminal:
                obs = _observation(ref, fresh, trainer_ready=_ready_trainers(runtime, ref))
            else:
                summary, problem = read_summary(runtime, ref, manifest)
                job = runtime.kube.get("Job", ref.namespace, builders.controller_name(ref.name))
                obs = _observation(
                    ref, fresh, summary=summary, redis_checked=True, redis_problem=problem,
                    trainer_ready=_ready_trainers(runtime, ref), controller_failure=_job_failure(job))
                # A managed Redis that is still starting is no news; one that stops answering is.
                if problem and (problem.reason != "Unreachable" or current.get("updated")):
                    runtime.warn_once(fresh, problem.reason, problem.message)
                else:
                    for reason in ("SecretNotFound", "SecretForbidden", "SecretKeyMissing", "Unreachable",
                                   "AuthenticationFailed", "SummaryInvalid", "RedisError"):
                        runtime.forget_warning(fresh, reason)
            new = _write_status(runtime, fresh, obs)
            phase = new.get("phase")
            if phase in st.TERMINAL:
                if runtime.kube.delete("Deployment", ref.namespace, builders.trainer_name(ref.name)):
                    logger.info("search %s %s: trainers removed", search, phase)
                if not new.get("replicas"):
                    # Tidied only once status shows no trainer left: the poll that removed
                    # them still counted them, and later polls stop at `cleaned`.
                    runtime.cleaned.add(ref.uid)
                if not was_terminal:
                    reason = new.get("finishReason") or phase
                    best = new.get("bestReward")
                    message = (f"{phase.lower()}: {reason}; best reward {best} (trial {new.get('bestTrial')})"
                               if best is not None else f"{phase.lower()}: {reason}")
                    (kopf.info if phase == st.SUCCEEDED else kopf.warn)(body, reason=phase, message=message)
            elif phase == st.RUNNING and current.get("phase") in (None, st.PENDING):
                kopf.info(body, reason="Running", message="the controller published its first summary")
        except ApiException as exc:
            metrics.OPERATOR_RECONCILE_ERRORS.labels(search).inc()
            logger.warning("status refresh of %s failed: %s", search, api_message(exc))
