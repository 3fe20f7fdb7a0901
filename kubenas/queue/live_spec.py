"""Budget and suspend changes for a running search: one JSON record in the search's Redis.

    kubenas:{namespace}/{name}:live-spec   LiveSpec as JSON (camelCase, like the manifest)

Writers: the operator (when spec.budget, spec.suspend or the scale subresource
change) and `kubenas scale|suspend|resume DIR` for a local run. A writer reads
the record and writes the whole budget with the revision it read plus one
(1 when there is none). The controller polls the record (about twice a
second), applies a newer revision within a second, logs each change once and
keeps the applied record in its checkpoint; after a restart it puts the
record back if Redis lost it, so revisions keep increasing. A fresh search
(no checkpoint) starts from its spec: the controller clears the search's keys,
this one included. A ConfigMap update alone would reach the controller only
after the kubelet's sync period (a minute or more).

Only what may change while a search runs travels here: the budget
(parallelism, maxTrials, maxDuration, maxFailedTrials) and suspend.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import redis
from pydantic import Field, ValidationError

from kubenas.errors import describe_validation_error
from kubenas.queue.keys import SearchKeys
from kubenas.spaces.config import CamelModel
from kubenas.spec import BudgetSpec

log = logging.getLogger("kubenas.queue")

LIVE_SPEC_STREAM = "live-spec"  # its label in kubenas_messages_rejected_total


class LiveSpec(CamelModel):
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    suspend: bool = False
    revision: int = Field(ge=0, description="Increases with every write; the controller applies a newer one.")


def write_live_spec(client: redis.Redis, keys: SearchKeys, live: LiveSpec) -> None:
    client.set(keys.live_spec, live.model_dump_json(by_alias=True))


def update_live_spec(client: redis.Redis, keys: SearchKeys, base: BudgetSpec, *, suspend: Optional[bool] = None,
                     **budget: Any) -> LiveSpec:
    """Change some fields the way writers must: on top of the current record (or of `base`,
    the spec's budget, when there is none), with the next revision; atomic (WATCH/MULTI).
    `budget` takes BudgetSpec's field names: update_live_spec(r, keys, spec.budget, parallelism=6)."""
    written: list[LiveSpec] = []

    def change(pipe: Any) -> None:
        current = read_live_spec(pipe, keys)
        old = current or LiveSpec(budget=base, suspend=False, revision=0)
        new_budget = BudgetSpec.model_validate({**old.budget.model_dump(), **budget})
        new = LiveSpec(budget=new_budget, suspend=old.suspend if suspend is None else suspend,
                       revision=old.revision + 1)
        pipe.multi()
        pipe.set(keys.live_spec, new.model_dump_json(by_alias=True))
        written[:] = [new]

    client.transaction(change, keys.live_spec)
    return written[0]


def read_live_spec(client: redis.Redis, keys: SearchKeys) -> Optional[LiveSpec]:
    """The record, or None when there is none or it is garbage (logged once per value, counted)."""
    raw = client.get(keys.live_spec)
    if raw is None:
        return None
    try:
        return LiveSpec.model_validate_json(raw)
    except ValidationError as exc:
        if _last_rejected.get(keys.live_spec) != raw:
            _last_rejected[keys.live_spec] = raw
            from kubenas import metrics

            metrics.MESSAGES_REJECTED.labels(keys.search, LIVE_SPEC_STREAM).inc()
            log.warning("ignoring the live spec of %s in %s: %s", keys.search, keys.live_spec,
                        describe_validation_error(exc, "liveSpec"))
        return None


_last_rejected: dict[str, bytes] = {}  # key -> the last garbage logged, so a bad record is reported once
