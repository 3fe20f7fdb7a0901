"""The kopf handlers of the ArchitectureSearch operator: each decides, then calls
the pure builders (`builders`, `status`, `events`, `validation`) and the few
I/O helpers (`children`, `search_redis`).

    startup              settings from the environment (or kopf's memo) -> Runtime in the memo
    create/resume/update reconcile: check the spec, apply the children, push the live spec,
                         write SpecValid and observedGeneration
    spec.suspend changed an Event (the trainers and the live spec follow from reconcile)
    spec.budget changed  Events: Scaled (kubectl scale), BudgetChanged
    a daemon per search  every poll: live spec out, summary in, status written only when it
                         changed; on completion the trainers go
    delete               forget the search (its children go with it: ownerReferences)

A spec the CRD could not refuse but that cannot run (see `validation`), or
whose objects the API server refuses, gives SpecValid=False naming the field,
phase Failed, ONE Warning Event, and nothing created until the spec changes.
Handlers and the poll of one search run under one lock and read the object
fresh before writing its status: the operator is the status' only writer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional

import kopf
from kubernetes.client.rest import ApiException

from kubenas import metrics
from kubenas.errors import InvalidSpec
from kubenas.spec import GROUP, ONE_SHOT_ALGORITHMS, PLURAL, VERSION

from kubenas_operator import builders, events, status as st
from kubenas_operator.children import (ChildObjectRefused, apply_children, job_failure, ready_trainers,
                                       supernet_failure, trainers_after_supernet)
from kubenas_operator.kube import api_message, bearer_token
from kubenas_operator.runtime import Runtime, forget_phase
from kubenas_operator.search_redis import REDIS_PROBLEMS, exchange, push_live_spec
from kubenas_operator.settings import OperatorSettings, configure_kopf
from kubenas_operator.validation import read_spec

SEARCHES = dict(group=GROUP, version=VERSION, plural=PLURAL)
CHILD_REFUSED = "Rejected"  # the SpecValid reason when the API server refuses a child object


def _runtime(memo: Any) -> Runtime:
    return memo.kubenas


def _observation(body: Any, **seen: Any) -> st.Observation:
    ref = builders.SearchRef.from_body(body)
    return st.Observation(now=st.now_rfc3339(), generation=ref.generation,
                          suspended=bool((body.get("spec") or {}).get("suspend")),
                          selector=builders.trainer_selector(ref.name), **seen)


# --- the operator's life -----------------------------------------------------------------

@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: Any, logger: logging.Logger, **_: Any) -> None:
    config = getattr(memo, "settings", None) or OperatorSettings.from_env()
    config.require_password_key()
    configure_kopf(settings, config)
    memo.kubenas = Runtime.create(config)
    logger.info("kubenas operator: controller image %s, trainer image %s, polling every %.1fs%s",
                config.controller_image, config.trainer_image, config.poll_seconds,
                " (TEST SEAM: managed searches read KUBENAS_OPERATOR_REDIS_URL)" if config.redis_url_override else "")


@kopf.on.cleanup()
def cleanup(memo: Any, **_: Any) -> None:
    if hasattr(memo, "kubenas"):
        memo.kubenas.close()


@kopf.on.login()
def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """Log kopf in with the same credentials as the operator's own client."""
    config = _runtime(memo).client_config
    return kopf.ConnectionInfo(
        server=config.host, ca_path=config.ssl_ca_cert, insecure=not config.verify_ssl,
        username=config.username or None, password=config.password or None, token=bearer_token(config),
        certificate_path=config.cert_file, private_key_path=config.key_file,
    )


@kopf.on.probe(id="searches")
def probe_searches(memo: Any, **_: Any) -> int:
    return _runtime(memo).searches


# --- the spec -> the children ------------------------------------------------------------

@kopf.on.resume(**SEARCHES)
@kopf.on.create(**SEARCHES)
@kopf.on.update(**SEARCHES)
def reconcile(body: Any, reason: str, memo: Any, logger: logging.Logger, **_: Any) -> None:
    runtime = _runtime(memo)
    ref = builders.SearchRef.from_body(body)
    search = f"{ref.namespace}/{ref.name}"
    with runtime.lock(ref.uid):
        fresh = runtime.fresh(ref)
        if fresh is None:
            return
        ref = builders.SearchRef.from_body(fresh)
        try:
            manifest = read_spec(fresh)
            applied = apply_children(runtime, ref, manifest, finished=st.is_finished(fresh.get("status") or {}))
        except (InvalidSpec, ChildObjectRefused) as exc:
            why = st.INVALID_SPEC if isinstance(exc, InvalidSpec) else CHILD_REFUSED
            logger.warning("%s: %s", why, exc)
            runtime.write_status(fresh, _observation(fresh, spec_checked=True, spec_problem=st.Problem(why, str(exc))))
            runtime.warn_once(fresh, why, str(exc))
            metrics.OPERATOR_RECONCILES.labels(search, "invalid").inc()
            return
        except kopf.TemporaryError as exc:
            metrics.OPERATOR_RECONCILE_ERRORS.labels(search).inc()
            runtime.warn_once(fresh, "ReconcileError", str(exc))
            raise
        runtime.forget_warnings(fresh, st.INVALID_SPEC, CHILD_REFUSED, "ReconcileError")
        push_live_spec(runtime, ref, manifest)
        runtime.write_status(fresh, _observation(fresh, spec_checked=True, reconciled=True))
        metrics.OPERATOR_RECONCILES.labels(search, "ok").inc()
    if reason == "create":
        kopf.info(fresh, reason="Created", message=events.created(manifest, applied.trainers))
    if applied.controller == "replaced":
        kopf.info(fresh, reason="ControllerReplaced", message="spec.controller changed: the controller Job was replaced")


@kopf.on.update(**SEARCHES, field="spec.suspend")
def suspend_changed(body: Any, new: Any, **_: Any) -> None:
    trainers = int(((body.get("spec") or {}).get("budget") or {}).get("parallelism") or 0)
    reason, message = events.suspended(bool(new), trainers)
    kopf.info(body, reason=reason, message=message)


@kopf.on.update(**SEARCHES, field="spec.budget")
def budget_changed(body: Any, diff: Any, **_: Any) -> None:
    for reason, message in events.budget_changes(diff):
        kopf.info(body, reason=reason, message=message)


@kopf.on.delete(**SEARCHES, optional=True)  # optional: no finalizer of its own, deletion never waits
def forget(body: Any, memo: Any, **_: Any) -> None:
    _runtime(memo).forget(body["metadata"]["uid"])
    forget_phase(f"{body['metadata']['namespace']}/{body['metadata']['name']}")


# --- the controller's summary -> the status -----------------------------------------------

@kopf.daemon(**SEARCHES, cancellation_timeout=5.0)
async def follow(body: Any, memo: Any, stopped: Any, logger: logging.Logger, **_: Any) -> None:
    """Poll the search until it finished and its trainers are gone (async: no thread held between polls)."""
    runtime = _runtime(memo)
    ref = builders.SearchRef.from_body(body)
    await stopped.wait(min(runtime.settings.poll_seconds, 2.0))
    while not stopped:
        if await asyncio.to_thread(refresh_status, runtime, ref, logger):
            return
        await stopped.wait(runtime.settings.poll_seconds)


def refresh_status(runtime: Runtime, ref: builders.SearchRef, logger: logging.Logger) -> bool:
    """One poll; True once there is nothing left to follow."""
    with runtime.lock(ref.uid):
        try:
            fresh = runtime.fresh(ref)
            if fresh is None:
                return True
            before = fresh.get("status") or {}
            obs = _observe(runtime, fresh, before)
            if obs is None:
                return False
            now = runtime.write_status(fresh, obs)
        except ApiException as exc:
            metrics.OPERATOR_RECONCILE_ERRORS.labels(f"{ref.namespace}/{ref.name}").inc()
            logger.warning("status refresh of %s/%s failed: %s", ref.namespace, ref.name, api_message(exc))
            return False
    return _after_refresh(runtime, builders.SearchRef.from_body(fresh), fresh, before, now, logger)


def _observe(runtime: Runtime, body: Any, before: dict[str, Any]) -> Optional[st.Observation]:
    """What the search looks like now; None while nothing runs (not reconciled yet, or the spec is wrong)."""
    valid = st.condition(before, st.SPEC_VALID)
    if valid is None or valid.get("status") != "True":
        return None
    try:
        manifest = read_spec(body)
    except InvalidSpec:
        return None  # the next reconcile reports it
    ref = builders.SearchRef.from_body(body)
    if before.get("phase") in st.TERMINAL:
        return _observation(body, trainer_ready=ready_trainers(runtime, ref))
    summary, problem = exchange(runtime, ref, manifest)
    job = runtime.kube.get("Job", ref.namespace, builders.controller_name(ref.name))
    supernet = None
    if builders.is_one_shot(manifest):
        supernet = supernet_failure(runtime.kube.get("Job", ref.namespace, builders.supernet_name(ref.name)))
    # A managed Redis that is still starting is no news; one that stops answering is.
    if problem and (problem.reason != "Unreachable" or before.get("updated")):
        runtime.warn_once(body, problem.reason, problem.message)
    elif not problem:
        runtime.forget_warnings(body, *REDIS_PROBLEMS)
    return _observation(body, summary=summary, redis_checked=True, redis_problem=problem,
                        trainer_ready=ready_trainers(runtime, ref), controller_failure=job_failure(job),
                        supernet_failure=supernet)


def _trainers_after_supernet(runtime: Runtime, ref: builders.SearchRef, body: Any, logger: logging.Logger) -> None:
    """One-shot: the trainers take their place back once the supernet's workers are done."""
    if ((body.get("spec") or {}).get("strategy") or {}).get("algorithm") not in ONE_SHOT_ALGORITHMS:
        return
    try:
        manifest = read_spec(body)
        if trainers_after_supernet(runtime, ref, manifest):
            logger.info("search %s/%s: the supernet is trained; %d trainers for its derived cells", ref.namespace,
                        ref.name, manifest.spec.budget.parallelism)
    except (InvalidSpec, ApiException) as exc:  # the next poll tries again; reconcile reports a bad spec
        logger.warning("search %s/%s: trainers not scaled after the supernet: %s", ref.namespace, ref.name, exc)


def _after_refresh(runtime: Runtime, ref: builders.SearchRef, body: Any, before: dict[str, Any],
                   now: dict[str, Any], logger: logging.Logger) -> bool:
    """Events for a phase change; a finished search loses its trainers. True once all is tidied."""
    phase = now.get("phase")
    if phase == st.SEARCHING and before.get("phase") in (None, st.PENDING):
        kopf.info(body, reason="Searching", message="the controller published its first summary")
    if phase == st.SUPERNET and before.get("phase") in (None, st.PENDING):
        kopf.info(body, reason="Supernet", message=f"the supernet's workers train (Indexed Job "
                                                   f"{builders.supernet_name(ref.name)})")
    if phase == st.SEARCHING and before.get("phase") in (st.SUPERNET, st.DERIVING):
        kopf.info(body, reason="Searching", message="the supernet derived its cells; training them stand-alone")
    if phase == st.FINAL_TRAINING and before.get("phase") != st.FINAL_TRAINING:
        kopf.info(body, reason="FinalTraining", message=f"the search finished ({now.get('finishReason')}); "
                                                        "training its best architectures at the final size")
    if phase not in st.TERMINAL:
        _trainers_after_supernet(runtime, ref, body, logger)
        return False
    if before.get("phase") not in st.TERMINAL:
        warning, reason, message = events.finished(now)
        (kopf.warn if warning else kopf.info)(body, reason=reason, message=message)
    try:
        if runtime.kube.delete("Deployment", ref.namespace, builders.trainer_name(ref.name)):
            logger.info("search %s/%s %s: trainers removed", ref.namespace, ref.name, phase)
        # Its supernet failed for good: no derived cell will ever reach the controller, which would wait on.
        if now.get("finishReason") == st.SUPERNET_FAILED and runtime.kube.delete(
                "Job", ref.namespace, builders.controller_name(ref.name)):
            logger.info("search %s/%s: the supernet failed; the controller Job removed", ref.namespace, ref.name)
    except ApiException as exc:
        logger.warning("removing the trainers of %s/%s failed: %s", ref.namespace, ref.name, api_message(exc))
        return False
    # Done only once the status shows no trainer left: the poll that removed them still counted them.
    return not now.get("replicas")
