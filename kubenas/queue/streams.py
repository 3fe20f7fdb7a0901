"""What both sides of the trial queue share: the streams' caps, a rejected entry,
creating the consumer groups, and the search's summary.

Streams and their consumer groups (key names in `kubenas.queue.keys`):

    trials    controller --XADD--> group `trainers` --XREADGROUP--> trainers
    results   trainers   --XADD--> group `controller`
    progress  trainers   --XADD--> group `controller`

The controller's side is `kubenas.queue.controller_side.ControllerQueue`, the
trainer's `kubenas.queue.trainer_side.TrainerQueue`; the atomic steps are the
Lua scripts of `kubenas.queue.scripts`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

import redis
from redis.exceptions import ResponseError

from kubenas.queue.keys import CONTROLLER_GROUP, TRAINERS_GROUP, SearchKeys
from kubenas.queue.scripts import QueueScripts


@dataclass(frozen=True)
class Limits:
    """MAXLEN caps: a safety net, since entries are deleted once applied."""

    trials: int = 10_000
    results: int = 10_000
    progress: int = 10_000
    dead_letter: int = 1_000


@dataclass
class RejectedEntry:
    """A stream entry that could not be decoded or belongs to another search (acknowledged and dropped)."""

    stream: str
    entry_id: str
    reason: str


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SearchStreams:
    """One search's streams on one client; the base of both sides."""

    def __init__(self, client: redis.Redis, keys: SearchKeys, limits: Limits = Limits()):
        self.r = client
        self.keys = keys
        self.limits = limits
        self.scripts = QueueScripts(client)

    def ensure_groups(self) -> None:
        """Create the streams and groups if missing (after a first start, or a Redis that lost its data)."""
        for stream, group in ((self.keys.trials, TRAINERS_GROUP), (self.keys.results, CONTROLLER_GROUP),
                              (self.keys.progress, CONTROLLER_GROUP)):
            try:
                self.r.xgroup_create(stream, group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def ping(self) -> None:
        self.r.ping()

    def read_summary(self) -> Optional[dict]:
        raw = self.r.get(self.keys.summary)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    @staticmethod
    def _ack_delete(pipe: Any, stream: str, group: str, entry_ids: list[str]) -> None:
        if entry_ids:
            pipe.xack(stream, group, *entry_ids)
            pipe.xdel(stream, *entry_ids)
