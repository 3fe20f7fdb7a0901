"""The messages of the search's lifecycle Events (pure: the handlers post them)."""

from __future__ import annotations

from typing import Any, Optional

from kubenas.spec import ArchitectureSearch

from kubenas_operator import status as st


def created(manifest: ArchitectureSearch, trainers: int) -> str:
    redis = "managed Redis, " if manifest.spec.redis.mode == "managed" else ""
    return f"{redis}controller Job and {trainers} trainer(s) created"


def suspended(suspend: bool, trainers: int) -> tuple[str, str]:
    """(reason, message) for a change of spec.suspend."""
    if suspend:
        return "Suspended", "suspended: trainers scaled to zero, no new trials"
    return "Resumed", f"resumed with {trainers} trainer(s)"


def budget_changes(diff: Any) -> list[tuple[str, str]]:
    """(reason, message) per kind of change in kopf's diff of spec.budget: Scaled for
    the parallelism (kubectl scale), BudgetChanged for the limits."""
    changes: dict[str, tuple[Any, Any]] = {}
    for _, path, old, new in diff:
        if path:  # a field of the budget changed
            changes[path[0]] = (old, new)
        else:  # the whole budget appeared or went: compare field by field
            for key in set(old or {}) | set(new or {}):
                if (old or {}).get(key) != (new or {}).get(key):
                    changes[key] = ((old or {}).get(key), (new or {}).get(key))
    events = []
    if "parallelism" in changes:
        old, new = changes.pop("parallelism")
        events.append(("Scaled", f"trainers {old} -> {new}"))
    if changes:
        events.append(("BudgetChanged", "budget " + ", ".join(
            f"{k} {old} -> {new}" for k, (old, new) in sorted(changes.items()))))
    return events


def finished(status: dict[str, Any]) -> tuple[bool, str, str]:
    """(is it a warning, reason, message) once the search reached a terminal phase."""
    phase: Optional[str] = status.get("phase")
    reason = status.get("finishReason") or phase
    best = status.get("bestReward")
    message = (f"{str(phase).lower()}: {reason}; best reward {best} (trial {status.get('bestTrial')})"
               if best is not None else f"{str(phase).lower()}: {reason}")
    final = status.get("finalModel")
    if final:  # the final stage's model: where it is and how it tests
        message += (f"; final model {final.get('trial')}: validation accuracy {final.get('validationAccuracy')}, "
                    f"test accuracy {final.get('testAccuracy')}, in {final.get('path')}")
    elif status.get("finalError"):
        message += f"; final stage: {status['finalError']}"
    return phase != st.SUCCEEDED, str(phase), message
