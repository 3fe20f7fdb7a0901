"""From what the operator observed to the ArchitectureSearch status (pure).

One writer: the controller publishes a SearchSummary to Redis; the operator is
the only process that writes the CR status. `compute_status` merges the current
status with one observation (fields the observation does not cover are kept);
`status_patch` turns the difference into a JSON merge patch, empty when nothing
changed, so an unchanged summary costs no write.

Phase:
    Failed     the spec makes no sense (SpecValid False: fixable, so not sticky), the
               controller Job or the supernet's worker Job failed, or the summary finished with a failure reason
    Succeeded  the summary finished with any other reason (sticky from then on)
    Suspended  spec.suspend
    FinalTraining  the search finished; spec.final trains its best architectures again
    Supernet   one-shot (enas, darts, spos): the supernet's worker group trains (summary stage supernet)
    Deriving   one-shot: its last epoch is checkpointed; the workers derive the genotypes
    Searching  the controller has published a summary
    Pending    otherwise
A finished summary whose final stage produced no model (finalError, no finalModel) is
Failed with reason FinalTrainingFailed.

Conditions (metav1.Condition): SpecValid, RedisReachable, Suspended, and
Complete or Failed once the search ended.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from kubenas.spec import SearchSummary

PENDING, SEARCHING, FINAL_TRAINING, SUSPENDED, SUCCEEDED, FAILED = (
    "Pending", "Searching", "FinalTraining", "Suspended", "Succeeded", "Failed")
SUPERNET, DERIVING = "Supernet", "Deriving"
PHASES = (PENDING, SUPERNET, DERIVING, SEARCHING, FINAL_TRAINING, SUSPENDED, SUCCEEDED, FAILED)
TERMINAL = (SUCCEEDED, FAILED)

SPEC_VALID = "SpecValid"
REDIS_REACHABLE = "RedisReachable"
SUSPENDED_CONDITION = "Suspended"
COMPLETE = "Complete"
FAILED_CONDITION = "Failed"
CONDITION_ORDER = (SPEC_VALID, REDIS_REACHABLE, SUSPENDED_CONDITION, COMPLETE, FAILED_CONDITION)

INVALID_SPEC = "InvalidSpec"
CONTROLLER_FAILED = "ControllerFailed"
SUPERNET_FAILED = "SupernetFailed"
FINAL_TRAINING_FAILED = "FinalTrainingFailed"
# finishReason values of the controller's summary that mean the search failed;
# any other reason (MaxTrialsReached, TargetReached, MaxDurationReached, ...) is a success.
FAILURE_REASONS = frozenset({
    "TooManyFailedTrials", "MaxFailedTrialsExceeded", "MaxFailedTrialsReached",
    "Failed", "Error", "ControllerError", CONTROLLER_FAILED, INVALID_SPEC, SUPERNET_FAILED,
    "DerivedGenotypesUnusable",
})
# Every field of the summary is copied (the CRD declares them all: tests/unit/test_crd.py).
SUMMARY_FIELDS = tuple(f.alias or n for n, f in SearchSummary.model_fields.items())
MAX_MESSAGE = 32768


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_failure(reason: Optional[str]) -> bool:
    return bool(reason) and reason in FAILURE_REASONS


@dataclass(frozen=True)
class Problem:
    """A condition's reason (CamelCase) and a message a person can act on."""

    reason: str
    message: str


@dataclass(frozen=True)
class Observation:
    """What one handler or timer run saw. None means "not looked at": keep the current value."""

    now: str
    generation: int
    suspended: bool
    selector: str
    spec_problem: Optional[Problem] = None
    spec_checked: bool = False
    reconciled: bool = False  # the children were applied for this generation
    summary: Optional[SearchSummary] = None
    redis_problem: Optional[Problem] = None
    redis_checked: bool = False
    trainer_ready: Optional[int] = None
    controller_failure: Optional[str] = None
    supernet_failure: Optional[str] = None  # one-shot: why the worker Job failed for good


def _condition(current: dict[str, dict[str, Any]], obs: Observation, type_: str, status: str,
               reason: str, message: str) -> dict[str, Any]:
    old = current.get(type_)
    changed = old is None or old.get("status") != status
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "lastTransitionTime": obs.now if changed else old["lastTransitionTime"],
        "observedGeneration": obs.generation,
    }


def compute_status(current: Optional[dict[str, Any]], obs: Observation) -> dict[str, Any]:
    """The new status (camelCase keys, as in the CRD), from the current one and an observation."""
    cur = copy.deepcopy(dict(current or {}))
    new = {k: v for k, v in cur.items() if k != "kopf"}
    conditions = {c["type"]: c for c in cur.get("conditions") or [] if isinstance(c, dict) and "type" in c}
    conds = dict(conditions)

    def put(type_: str, status: str, reason: str, message: str) -> None:
        conds[type_] = _condition(conditions, obs, type_, status, reason, message)

    new["selector"] = obs.selector
    if obs.trainer_ready is not None:
        new["replicas"] = obs.trainer_ready
    if obs.reconciled:
        new["observedGeneration"] = obs.generation
        new.setdefault("startTime", obs.now)

    if obs.spec_checked:
        if obs.spec_problem:
            put(SPEC_VALID, "False", obs.spec_problem.reason, obs.spec_problem.message)
        else:
            put(SPEC_VALID, "True", "Valid", "the spec is valid")

    if obs.summary is not None:
        summary = obs.summary.model_dump(mode="json", by_alias=True)
        for key in SUMMARY_FIELDS:
            if summary.get(key) is None or summary.get(key) == []:
                new.pop(key, None)
            else:
                new[key] = summary[key]
    if obs.redis_checked:
        if obs.redis_problem:
            put(REDIS_REACHABLE, "False", obs.redis_problem.reason, obs.redis_problem.message)
        elif obs.summary is None:
            put(REDIS_REACHABLE, "True", "NoSummaryYet", "connected; the controller has not published a summary yet")
        else:
            put(REDIS_REACHABLE, "True", "SummaryRead", "the controller's summary is read from Redis")

    put(SUSPENDED_CONDITION, "True" if obs.suspended else "False",
        "Suspended" if obs.suspended else "NotSuspended",
        "spec.suspend is true: no new trials, trainers scaled to zero" if obs.suspended
        else "spec.suspend is false")

    # --- the phase ---------------------------------------------------------------
    old_phase = cur.get("phase")
    old_failed = conditions.get(FAILED_CONDITION, {})
    sticky = old_phase in TERMINAL and not (old_phase == FAILED and old_failed.get("reason") == INVALID_SPEC)
    spec_invalid = conds.get(SPEC_VALID, {}).get("status") == "False"

    if sticky:
        phase = old_phase
    elif spec_invalid:
        phase = FAILED
        problem = conds[SPEC_VALID]
        new["finishReason"] = INVALID_SPEC
        put(FAILED_CONDITION, "True", INVALID_SPEC, problem["message"])
        conds.pop(COMPLETE, None)
    elif obs.controller_failure:
        phase = FAILED
        new["finished"] = True
        new["finishReason"] = CONTROLLER_FAILED
        put(FAILED_CONDITION, "True", CONTROLLER_FAILED, obs.controller_failure)
    elif obs.supernet_failure and not new.get("finished"):
        phase = FAILED
        new["finished"] = True
        new["finishReason"] = SUPERNET_FAILED
        put(FAILED_CONDITION, "True", SUPERNET_FAILED, obs.supernet_failure)
    elif new.get("finished"):
        reason = new.get("finishReason") or "Finished"
        if new.get("finalError") and not new.get("finalModel") and not is_failure(reason):
            phase = FAILED
            put(FAILED_CONDITION, "True", FINAL_TRAINING_FAILED,
                f"the search finished ({reason}) but its final stage produced no model: {new['finalError']}")
        elif is_failure(reason):
            phase = FAILED
            put(FAILED_CONDITION, "True", reason, f"the search failed: {reason}")
        else:
            phase = SUCCEEDED
            put(COMPLETE, "True", reason, f"the search finished: {reason}")
    else:
        # A spec fixed after InvalidSpec comes back to life: drop that verdict.
        if old_failed.get("reason") == INVALID_SPEC:
            conds.pop(FAILED_CONDITION, None)
            if new.get("finishReason") == INVALID_SPEC:
                new.pop("finishReason", None)
        if obs.suspended:
            phase = SUSPENDED
        elif new.get("stage") == "finalTraining":
            phase = FINAL_TRAINING
        elif new.get("stage") in ("supernet", "deriving"):
            phase = SUPERNET if new["stage"] == "supernet" else DERIVING
        elif new.get("updated") or new.get("trials"):
            phase = SEARCHING
        else:
            phase = PENDING
    new["phase"] = phase
    if phase in TERMINAL and not spec_invalid:
        new.setdefault("completionTime", obs.now)

    order = {t: i for i, t in enumerate(CONDITION_ORDER)}
    new["conditions"] = sorted(conds.values(), key=lambda c: (order.get(c["type"], len(order)), c["type"]))
    return new


def status_patch(current: Optional[dict[str, Any]], new: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch of the status: changed keys, and None for keys to remove."""
    current = {k: v for k, v in (current or {}).items() if k != "kopf"}
    patch: dict[str, Any] = {k: v for k, v in new.items() if current.get(k) != v}
    patch.update({k: None for k in current if k not in new})
    return patch


def condition(status: dict[str, Any], type_: str) -> Optional[dict[str, Any]]:
    for c in status.get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def is_finished(status: dict[str, Any]) -> bool:
    """The search ended for good (a spec found invalid is fixable, so not finished)."""
    failed = condition(status, FAILED_CONDITION) or {}
    return status.get("phase") in TERMINAL and failed.get("reason") != INVALID_SPEC
