"""What a reward means: the spec fields a checkpoint may only be resumed under.

Everything that changes what a trial's reward means, or what the strategy
state depends on, is fingerprinted: the space, the strategy, the objective's
constraints and cost penalty, the dataset and every training setting, the
seed and early stopping. What may change while a search runs is not: the
budget and suspend (the live spec), the objective's target (a finish rule),
pod settings, Redis and where artifacts are stored. A new spec field is
fingerprinted unless named below: refusing a resume is the safer mistake.
The checkpoint stores the fingerprinted values themselves, so a refusal can
name the fields that differ.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kubenas.spec import ArchitectureSearchSpec

_ABSENT = object()

# Dotted field paths (camelCase, as in the manifest) left out of the fingerprint.
NOT_FINGERPRINTED = ("budget", "suspend", "trainer", "controller", "redis", "artifacts", "objective.target",
                     "training.dataset.download")


def fingerprint_fields(spec: ArchitectureSearchSpec) -> dict[str, Any]:
    """Dotted field path -> value (a leaf: a scalar, a list or None)."""
    return _flatten(spec.model_dump(mode="json", by_alias=True))


def fingerprint(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`field: checkpoint X, now Y` for every field that differs. A field the checkpoint
    does not know (added to the spec since) differs only if it is not at its default."""
    defaults = fingerprint_fields(ArchitectureSearchSpec())
    absent = _ABSENT
    lines: list[str] = []
    reported: list[str] = []
    for path in sorted(set(saved) | set(current)):
        before = saved.get(path, defaults.get(path, absent))
        after = current.get(path, absent)
        if before == after or any(path.startswith(p + ".") for p in reported):
            continue
        reported.append(path)
        before = _subtree(saved, path) if before is absent else before
        after = _subtree(current, path) if after is absent else after
        lines.append(f"{path}: {_show(before, absent)} in the checkpoint, {_show(after, absent)} now")
    return lines


def _subtree(fields: dict[str, Any], path: str) -> Any:
    """The fields under `path` (an object that was null on the other side), or absent."""
    inner = {k[len(path) + 1:]: v for k, v in fields.items() if k.startswith(path + ".")}
    return inner or _ABSENT


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if prefix in NOT_FINGERPRINTED:
        return {}
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: value}


def _show(value: Any, absent: object) -> str:
    if value is absent:
        return "unset"
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
