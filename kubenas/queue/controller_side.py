"""The controller's side of the trial queue.

The controller publishes trials, reads results and progress reports, and
acknowledges them only after it has applied and checkpointed them; a trial
whose result was applied is then retired (its entry and records deleted), so
every stream holds only what is in flight. Publishing is idempotent: a trial id
maps to its entry in the `dispatched` hash, and publishing a trial whose entry
exists is a no-op, which makes controller restarts safe. Results are idempotent
by trial id (the controller's job).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import redis

from kubenas.queue.keys import CONTROLLER_CONSUMER, CONTROLLER_GROUP, TRAINERS_GROUP, SearchKeys
from kubenas.queue.messages import ControlMessage, MessageRejected, ProgressMessage, ResultMessage, TrialMessage, \
    decode_entry
from kubenas.queue.streams import Limits, RejectedEntry, SearchStreams, text

__all__ = ["ControllerQueue", "Entry", "Limits", "RejectedEntry"]


@dataclass
class Entry:
    stream: str  # "results" or "progress"
    entry_id: str
    message: Union[ResultMessage, ProgressMessage]


class ControllerQueue(SearchStreams):
    """The controller's operations on one search's streams."""

    def __init__(self, client: redis.Redis, keys: SearchKeys, limits: Limits = Limits()):
        super().__init__(client, keys, limits)
        self._backlog = True  # read its own pending entries first

    def purge(self) -> int:
        """Delete every key of this search (a fresh controller clears an earlier search's leftovers)."""
        return int(self.r.delete(*self.keys.all()))

    def publish(self, trials: list[TrialMessage], force: bool = False) -> dict[str, tuple[str, bool]]:
        """Publish trials (idempotently); trial id -> (entry id, newly added)."""
        if not trials:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for trial in trials:
            self.scripts.publish(dispatched=self.keys.dispatched, trials=self.keys.trials, trial_id=trial.trial_id,
                                 payload=trial.encode(), maxlen=self.limits.trials, replace=force, client=pipe)
        out = pipe.execute()
        return {t.trial_id: (text(sid), bool(int(new))) for t, (sid, new) in zip(trials, out)}

    def read(self, count: int = 512, block_ms: int = 100) -> tuple[list[Entry], list[RejectedEntry]]:
        """The controller's next results and progress reports. After a (re)start, or after a
        Redis error, its own delivered-but-unacknowledged entries come first."""
        streams = (self.keys.results, self.keys.progress)
        resp = None
        if self._backlog:
            resp = self.r.xreadgroup(CONTROLLER_GROUP, CONTROLLER_CONSUMER, {s: "0" for s in streams}, count=count)
            if not any(entries for _, entries in (resp or [])):
                self._backlog = False
                resp = None
        if resp is None:
            resp = self.r.xreadgroup(CONTROLLER_GROUP, CONTROLLER_CONSUMER, {s: ">" for s in streams},
                                     count=count, block=block_ms)
        entries: list[Entry] = []
        rejected: list[RejectedEntry] = []
        for stream, items in resp or []:
            kind = "results" if text(stream) == self.keys.results else "progress"
            model = ResultMessage if kind == "results" else ProgressMessage
            for entry_id, fields in items:
                entry_id = text(entry_id)
                try:
                    message = decode_entry(fields, model)
                    if message.search != self.keys.search:
                        raise MessageRejected(f"for search {message.search!r}, not {self.keys.search!r}")
                except MessageRejected as exc:
                    rejected.append(RejectedEntry(kind, entry_id, str(exc)))
                    continue
                entries.append(Entry(kind, entry_id, message))
        return entries, rejected

    def reread_backlog(self) -> None:
        """After a Redis error: read own pending entries again before new ones."""
        self._backlog = True

    def ack(self, results: list[str] = (), progress: list[str] = (), finished: list[str] = ()) -> None:
        """Acknowledge and delete results and progress entries; retire finished trials
        (their queue entries, dispatch records, controls and errors)."""
        pipe = self.r.pipeline(transaction=False)
        self._ack_delete(pipe, self.keys.results, CONTROLLER_GROUP, list(results))
        self._ack_delete(pipe, self.keys.progress, CONTROLLER_GROUP, list(progress))
        for trial_id in finished:
            self.scripts.retire(dispatched=self.keys.dispatched, trials=self.keys.trials, control=self.keys.control,
                                errors=self.keys.errors, group=TRAINERS_GROUP, trial_id=trial_id, client=pipe)
        if len(pipe):
            pipe.execute()

    def withdraw(self, trial_ids: list[str]) -> list[str]:
        """Take back the trials whose entries no trainer has read (a suspend); the ids taken back.
        The others are running or done: their results will come."""
        if not trial_ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for trial_id in trial_ids:
            self.scripts.withdraw(dispatched=self.keys.dispatched, trials=self.keys.trials, control=self.keys.control,
                                  errors=self.keys.errors, group=TRAINERS_GROUP, trial_id=trial_id, client=pipe)
        return [trial_id for trial_id, taken in zip(trial_ids, pipe.execute()) if int(taken)]

    def set_control(self, controls: dict[str, ControlMessage]) -> None:
        if controls:
            self.r.hset(self.keys.control, mapping={k: v.encode() for k, v in controls.items()})

    def entry_states(self, entry_ids: list[str]) -> dict[str, str]:
        """For trials in flight: entry id -> missing | queued | running | acknowledged."""
        if not entry_ids:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xrange(self.keys.trials, entry_id, entry_id, count=1)
        pipe.xpending_range(self.keys.trials, TRAINERS_GROUP, "-", "+", max(len(entry_ids) * 4, 1000))
        pipe.xinfo_groups(self.keys.trials)
        *exists, pending, groups = pipe.execute()
        running = {text(p["message_id"]) for p in pending}
        last = next((text(g["last-delivered-id"]) for g in groups if text(g["name"]) == TRAINERS_GROUP), "0-0")
        states = {}
        for entry_id, found in zip(entry_ids, exists):
            if not found:
                states[entry_id] = "missing"
            elif entry_id in running:
                states[entry_id] = "running"
            elif _id_key(entry_id) > _id_key(last):
                states[entry_id] = "queued"
            else:
                states[entry_id] = "acknowledged"
        return states

    def publish_summary(self, summary_json: bytes) -> None:
        self.r.set(self.keys.summary, summary_json)

    def prune_consumers(self, idle_seconds: float = 3600.0) -> int:
        """Forget trainer consumers idle for long with nothing pending (restarted pods)."""
        removed = 0
        for consumer in self.r.xinfo_consumers(self.keys.trials, TRAINERS_GROUP):
            if consumer["pending"] == 0 and consumer["idle"] > idle_seconds * 1000:
                self.r.xgroup_delconsumer(self.keys.trials, TRAINERS_GROUP, consumer["name"])
                removed += 1
        return removed

    def stream_lengths(self) -> dict[str, int]:
        pipe = self.r.pipeline(transaction=False)
        for key in (self.keys.trials, self.keys.results, self.keys.progress, self.keys.dead_letter):
            pipe.xlen(key)
        return dict(zip(("trials", "results", "progress", "dead_letter"), pipe.execute()))


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)
