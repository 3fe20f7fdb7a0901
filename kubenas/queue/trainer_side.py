"""The trainer's side of the trial queue.

Delivery is at least once. A trainer's claim on a trial is its entry in the
group's pending list (PEL); the entry's idle time is the lease. The trainer
heartbeats by re-claiming its own entry (XCLAIM ... JUSTID resets the idle
time), guarded by a check that it still owns the entry, so a trainer that lost
its lease learns so on its next heartbeat and abandons the trial. A trainer
looking for work first takes over entries idle past the lease (XAUTOCLAIM),
which bumps their delivery count; past the trial's `max_attempts` the trial is
dead-lettered: a failed result carrying the last recorded error. An error
inside a trainer records that error and hands the entry back with a huge idle
time, so the next trainer takes it over at once; SIGTERM hands it back the
same way without using up an attempt (RETRYCOUNT).

Whatever a trainer does to its trial's entry (acknowledge, complete,
dead-letter, hand back) happens only while it still owns the entry, checked
atomically with the step itself: a trainer whose lease was taken over cannot
acknowledge the new owner's run away. Such a step returns False and leaves the
entry alone (`complete` still posts the finished result).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Optional, Union

import redis

from kubenas.queue.keys import PAYLOAD_FIELD, TRAINERS_GROUP, SearchKeys
from kubenas.queue.messages import (
    ControlMessage,
    DeadLetterMessage,
    MessageRejected,
    ProgressMessage,
    ResultMessage,
    TrialMessage,
    decode,
    decode_entry,
)
from kubenas.queue.streams import Limits, RejectedEntry, SearchStreams, text

__all__ = ["Claim", "HANDED_BACK_IDLE_MS", "Limits", "RejectedEntry", "TrainerQueue"]

log = logging.getLogger("kubenas.queue")

HANDED_BACK_IDLE_MS = 365 * 24 * 3600 * 1000  # "idle for a year": past any lease, taken over at once


@dataclass
class Claim:
    entry_id: str
    trial: TrialMessage
    attempt: int  # the entry's delivery count: 1 for the first delivery
    reclaimed: bool  # taken over after a lease expired or a hand-back


class TrainerQueue(SearchStreams):
    """A trainer's operations on one search's streams; `consumer` is its name in the group."""

    def __init__(self, client: redis.Redis, keys: SearchKeys, consumer: str, lease_seconds: float = 30.0,
                 limits: Limits = Limits()):
        super().__init__(client, keys, limits)
        self.consumer = consumer
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self._autoclaim_cursor = "0-0"
        self._autoclaim_at = 0.0
        self.autoclaim_interval = min(1.0, lease_seconds / 4)

    def claim(self, block_ms: int = 1000) -> Union[Claim, RejectedEntry, None]:
        """The next trial: first one whose lease expired (looked for at most every
        `autoclaim_interval` seconds: leases last seconds), else a new one."""
        claimed = None
        now = time.monotonic()
        if now >= self._autoclaim_at:
            reply = self.r.xautoclaim(self.keys.trials, TRAINERS_GROUP, self.consumer, self.lease_ms,
                                      self._autoclaim_cursor, count=1)
            cursor, claimed = reply[0], reply[1]  # Redis 7 adds the ids of deleted entries: nothing to do
            self._autoclaim_cursor = text(cursor)
            if not claimed and self._autoclaim_cursor == "0-0":
                self._autoclaim_at = now + self.autoclaim_interval  # scanned the whole list: rest a moment
        if claimed:
            entry_id, fields = claimed[0]
            entry_id = text(entry_id)
            info = self.r.xpending_range(self.keys.trials, TRAINERS_GROUP, entry_id, entry_id, 1)
            if not info or text(info[0]["consumer"]) != self.consumer:
                return None  # taken by someone else in between
            attempt, reclaimed = int(info[0]["times_delivered"]), True
        else:
            resp = self.r.xreadgroup(TRAINERS_GROUP, self.consumer, {self.keys.trials: ">"}, count=1, block=block_ms)
            if not resp or not resp[0][1]:
                return None
            entry_id, fields = resp[0][1][0]
            entry_id, attempt, reclaimed = text(entry_id), 1, False
        try:
            trial = decode_entry(fields, TrialMessage)
            if trial.search != self.keys.search:
                raise MessageRejected(f"for search {trial.search!r}, not {self.keys.search!r}")
        except MessageRejected as exc:
            pipe = self.r.pipeline(transaction=False)
            self._ack_delete(pipe, self.keys.trials, TRAINERS_GROUP, [entry_id])
            pipe.execute()
            return RejectedEntry("trials", entry_id, str(exc))
        return Claim(entry_id, trial, attempt, reclaimed)

    def heartbeat(self, claim: Claim) -> tuple[bool, Optional[ControlMessage]]:
        """Extend the lease; (still owned, the trial's control if any)."""
        owned, raw = self.scripts.heartbeat(trials=self.keys.trials, control=self.keys.control, group=TRAINERS_GROUP,
                                            consumer=self.consumer, entry_id=claim.entry_id,
                                            trial_id=claim.trial.trial_id)
        return owned, self._control(raw)

    def report_progress(self, message: ProgressMessage) -> Optional[ControlMessage]:
        """Post a progress report; returns the trial's control, if any."""
        pipe = self.r.pipeline(transaction=False)
        pipe.xadd(self.keys.progress, {PAYLOAD_FIELD: message.encode()}, maxlen=self.limits.progress,
                  approximate=True)
        pipe.hget(self.keys.control, message.trial_id)
        _, raw = pipe.execute()
        return self._control(raw)

    def control(self, trial_id: str) -> Optional[ControlMessage]:
        return self._control(self.r.hget(self.keys.control, trial_id))

    def _control(self, raw: Any) -> Optional[ControlMessage]:
        if not raw:
            return None
        try:
            return decode(raw, ControlMessage)
        except MessageRejected as exc:
            log.warning("ignoring a malformed control entry: %s", exc)
            return None

    def _settle(self, claim: Claim, result: Optional[ResultMessage], letter: Optional[DeadLetterMessage] = None,
                post_if_lost: bool = False) -> bool:
        return self.scripts.settle(
            trials=self.keys.trials, results=self.keys.results, dead_letter=self.keys.dead_letter,
            group=TRAINERS_GROUP, consumer=self.consumer, entry_id=claim.entry_id,
            result=None if result is None else result.encode(), results_maxlen=self.limits.results,
            letter=None if letter is None else letter.encode(), dead_letter_maxlen=self.limits.dead_letter,
            post_if_lost=post_if_lost)

    def complete(self, claim: Claim, result: ResultMessage) -> bool:
        """Post the result and acknowledge the trial, atomically. False when the trial is no
        longer this trainer's: the result is posted all the same (finished work is worth
        keeping; the controller applies the first result of a trial and ignores the rest),
        but the new owner's entry is left alone."""
        return self._settle(claim, result, post_if_lost=True)

    def acknowledge(self, claim: Claim) -> bool:
        """Drop a claim without a result (a trial the controller cancelled), if still owned."""
        return self._settle(claim, None)

    def retry_later(self, claim: Claim, error: str) -> bool:
        """Record the error and hand the trial back; its next delivery uses up an attempt."""
        return self.scripts.hand_back(trials=self.keys.trials, errors=self.keys.errors, group=TRAINERS_GROUP,
                                      consumer=self.consumer, entry_id=claim.entry_id, trial_id=claim.trial.trial_id,
                                      idle_ms=HANDED_BACK_IDLE_MS, retry_count=None,
                                      error=error or "unknown error")

    def hand_back(self, claim: Claim) -> bool:
        """Give the trial back at once (SIGTERM) without using up an attempt."""
        return self.scripts.hand_back(trials=self.keys.trials, errors=self.keys.errors, group=TRAINERS_GROUP,
                                      consumer=self.consumer, entry_id=claim.entry_id, trial_id=claim.trial.trial_id,
                                      idle_ms=HANDED_BACK_IDLE_MS, retry_count=max(0, claim.attempt - 1), error=None)

    def last_error(self, trial_id: str) -> Optional[str]:
        raw = self.r.hget(self.keys.errors, trial_id)
        return None if raw is None else text(raw)

    def dead_letter(self, claim: Claim, result: ResultMessage) -> bool:
        """A trial past its retry limit: keep it for inspection, post its failure, acknowledge it
        (if still owned)."""
        letter = DeadLetterMessage(search=self.keys.search, trial_id=claim.trial.trial_id,
                                   attempts=claim.attempt - 1 or 1, error=result.error or "failed",
                                   trial=claim.trial, time=time.time())
        return self._settle(claim, result, letter)
