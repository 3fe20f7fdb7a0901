"""The trial queue protocol over Redis Streams (redis-py).

Streams and their consumer groups (key names in `kubenas.queue.keys`):

    trials    controller --XADD--> group `trainers` --XREADGROUP--> trainers
    results   trainers   --XADD--> group `controller`
    progress  trainers   --XADD--> group `controller`

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

A trainer posts its result and acknowledges the trial in one MULTI. The
controller applies a result, checkpoints, and only then acknowledges and
deletes the result and the trial's entry, so every stream holds only what is
in flight; MAXLEN caps each as a safety net. Results are idempotent by trial
id (the controller's job). Publishing is idempotent too: a trial id maps to its
entry in the `dispatched` hash, and publishing a trial whose entry exists is a
no-op, which makes controller restarts safe.

Every Redis failure surfaces as redis.ConnectionError / TimeoutError; the
processes' loops retry with `Backoff` and the protocol's operations are safe
to repeat.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional, Union
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import ReadOnlyError, ResponseError
from redis.retry import Retry

from kubenas.errors import InvalidSpec
from kubenas.queue.keys import CONTROLLER_CONSUMER, CONTROLLER_GROUP, PAYLOAD_FIELD, TRAINERS_GROUP, SearchKeys
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

log = logging.getLogger("kubenas.queue")

# What a process retries with backoff (BusyLoadingError is a ConnectionError;
# ReadOnlyError comes from a replica during a failover).
RETRYABLE = (redis.ConnectionError, redis.TimeoutError, ReadOnlyError)

# Error replies that pass (a full Redis, a failover): retried with backoff like a lost connection.
TRANSIENT_REPLIES = ("OOM", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "LOADING", "READONLY", "NOREPLICAS", "BUSY")


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, RETRYABLE):
        return True
    return isinstance(exc, ResponseError) and str(exc).split(" ", 1)[0].upper() in TRANSIENT_REPLIES


HANDED_BACK_IDLE_MS = 365 * 24 * 3600 * 1000  # "idle for a year": past any lease, taken over at once


# --- connections --------------------------------------------------------------------

def redact(url: str) -> str:
    """The URL with its password replaced by ***, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def connect(url: str, *, password: Optional[str] = None, client_name: Optional[str] = None,
            socket_timeout: float = 5.0) -> redis.Redis:
    """A client for `redis://[user:password@]host:port/db` or `rediss://` (TLS; e.g.
    `?ssl_cert_reqs=required&ssl_ca_certs=/etc/redis/ca.crt`). The password may instead
    come from `password` or the environment variable KUBENAS_REDIS_PASSWORD.
    Connects lazily: an unreachable Redis shows up on the first command."""
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise InvalidSpec(f"--redis-url: {redact(url)!r} is not accepted; use redis://[:password@]host:port/db, "
                          "rediss://... for TLS, or unix:///path/to/socket")
    kwargs: dict[str, Any] = dict(
        socket_timeout=socket_timeout, socket_connect_timeout=5.0, socket_keepalive=True,
        health_check_interval=15, client_name=client_name,
        # One immediate retry covers a pooled connection that died with a Redis restart;
        # outages are handled by the processes' own backoff, which logs and counts them.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )
    password = password or os.environ.get("KUBENAS_REDIS_PASSWORD") or None
    if password and not urlsplit(url).password:
        kwargs["password"] = password
    try:
        return redis.Redis.from_url(url, **kwargs)
    except (ValueError, TypeError) as exc:
        raise InvalidSpec(f"--redis-url: {redact(url)!r} cannot be used: {exc}") from None


class Backoff:
    """Exponential backoff with jitter: base, 2*base, ... up to cap seconds."""

    def __init__(self, base: float = 0.1, cap: float = 5.0, rng: Optional[random.Random] = None):
        self.base, self.cap = base, cap
        self.attempt = 0
        self.rng = rng or random.Random()

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return delay * (0.5 + 0.5 * self.rng.random())

    def reset(self) -> None:
        self.attempt = 0


class Outage:
    """One process's view of Redis being unreachable: logs when an outage starts
    and ends (not every retry), and sleeps with backoff between attempts."""

    def __init__(self, logger: logging.Logger, on_error: Optional[Any] = None, backoff: Optional[Backoff] = None):
        self.log = logger
        self.on_error = on_error
        self.backoff = backoff or Backoff()
        self.since: Optional[float] = None
        self.errors = 0

    def noticed(self, exc: BaseException) -> None:
        """Count and log a failed call (without waiting)."""
        self.errors += 1
        if self.on_error is not None:
            self.on_error()
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("Redis is unreachable (%s: %s); retrying with backoff", type(exc).__name__, exc)
        else:
            self.log.debug("Redis still unreachable (%s)", exc)

    def failed(self, exc: BaseException, stop: Optional[threading.Event] = None) -> None:
        """Count and log a failed call, then wait before the next attempt."""
        self.noticed(exc)
        delay = self.backoff.next_delay()
        if stop is not None:
            stop.wait(delay)
        else:
            time.sleep(delay)

    def ok(self) -> bool:
        """Call after a successful round trip; True when this ended an outage."""
        if self.since is None:
            return False
        self.log.warning("Redis is reachable again after %.1f s (%d failed attempts)",
                         time.monotonic() - self.since, self.errors)
        self.since = None
        self.errors = 0
        self.backoff.reset()
        return True


# --- Lua: the few steps that must be atomic --------------------------------------------

# Publish a trial unless its entry exists already (idempotent publishing).
# KEYS: dispatched, trials. ARGV: trial id, payload, maxlen, force ("1": replace the entry).
_PUBLISH = """
local sid = redis.call('HGET', KEYS[1], ARGV[1])
if sid then
  if ARGV[4] == '1' then
    redis.call('XDEL', KEYS[2], sid)
  elseif #redis.call('XRANGE', KEYS[2], sid, sid, 'COUNT', 1) > 0 then
    return {sid, 0}
  end
end
sid = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'm', ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], sid)
return {sid, 1}
"""

# Retire a trial whose result was applied (or which was cancelled): delete its entry
# (acknowledging it, so a trainer still on it learns at its next heartbeat) and its records.
# KEYS: dispatched, trials, control, errors. ARGV: group, trial id.
_RETIRE = """
local sid = redis.call('HGET', KEYS[1], ARGV[2])
if sid then
  redis.call('XACK', KEYS[2], ARGV[1], sid)
  redis.call('XDEL', KEYS[2], sid)
end
redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
return sid and 1 or 0
"""

# Heartbeat: reset the entry's idle time if this consumer still owns it; return the trial's control.
# KEYS: trials, control. ARGV: group, consumer, entry id, trial id.
_HEARTBEAT = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #p == 0 then return {0, ''} end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
local c = redis.call('HGET', KEYS[2], ARGV[4])
if not c then c = '' end
return {1, c}
"""

# Hand an owned entry back: idle "for a year", so the next XAUTOCLAIM takes it over at once.
# KEYS: trials, errors. ARGV: group, consumer, entry id, idle ms, retry count ('' keeps it),
# trial id, error ('' records none).
_HAND_BACK = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #p == 0 then return 0 end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[2], ARGV[6], ARGV[7]) end
if ARGV[5] ~= '' then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'RETRYCOUNT', ARGV[5], 'JUSTID')
else
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
end
return 1
"""


# --- the protocol ---------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """MAXLEN caps: a safety net, since entries are deleted once applied."""

    trials: int = 10_000
    results: int = 10_000
    progress: int = 10_000
    dead_letter: int = 1_000


@dataclass
class Claim:
    entry_id: str
    trial: TrialMessage
    attempt: int  # the entry's delivery count: 1 for the first delivery
    reclaimed: bool  # taken over after a lease expired or a hand-back


@dataclass
class Rejected:
    stream: str
    entry_id: str
    reason: str


@dataclass
class Entry:
    stream: str  # "results" or "progress"
    entry_id: str
    message: Union[ResultMessage, ProgressMessage]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class TrialQueue:
    """Both ends of the protocol for one search; each process uses its side."""

    def __init__(self, client: redis.Redis, keys: SearchKeys, lease_seconds: float = 30.0,
                 limits: Limits = Limits()):
        self.r = client
        self.keys = keys
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self.limits = limits
        self._publish = client.register_script(_PUBLISH)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._hand_back = client.register_script(_HAND_BACK)
        self._retire = client.register_script(_RETIRE)
        self._autoclaim_cursor = "0-0"
        self._autoclaim_at = 0.0
        self.autoclaim_interval = min(1.0, lease_seconds / 4)
        self._backlog = True  # controller: read its own pending entries first

    # --- both --------------------------------------------------------------------------
    def ensure_groups(self) -> None:
        """Create the streams and groups if missing (after a first start, or a Redis that lost its data)."""
        for stream, group in ((self.keys.trials, TRAINERS_GROUP), (self.keys.results, CONTROLLER_GROUP),
                              (self.keys.progress, CONTROLLER_GROUP)):
            try:
                self.r.xgroup_create(stream, group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def purge(self) -> int:
        """Delete every key of this search (a fresh controller clears an earlier search's leftovers)."""
        return int(self.r.delete(*self.keys.all()))

    def ping(self) -> None:
        self.r.ping()

    def read_summary(self) -> Optional[dict]:
        import json

        raw = self.r.get(self.keys.summary)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _ack_delete(self, pipe: Any, stream: str, group: str, entry_ids: list[str]) -> None:
        if entry_ids:
            pipe.xack(stream, group, *entry_ids)
            pipe.xdel(stream, *entry_ids)

    # --- controller side ----------------------------------------------------------------
    def publish(self, trials: list[TrialMessage], force: bool = False) -> dict[str, tuple[str, bool]]:
        """Publish trials (idempotently); trial id -> (entry id, newly added)."""
        if not trials:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for trial in trials:
            self._publish(keys=[self.keys.dispatched, self.keys.trials],
                          args=[trial.trial_id, trial.encode(), self.limits.trials, "1" if force else "0"],
                          client=pipe)
        out = pipe.execute()
        return {t.trial_id: (_s(sid), bool(int(new))) for t, (sid, new) in zip(trials, out)}

    def read(self, count: int = 512, block_ms: int = 100) -> tuple[list[Entry], list[Rejected]]:
        """The controller's next results and progress reports. After a (re)start, or after a
        Redis error, its own delivered-but-unacknowledged entries come first."""
        streams = (self.keys.results, self.keys.progress)
        if self._backlog:
            resp = self.r.xreadgroup(CONTROLLER_GROUP, CONTROLLER_CONSUMER, {s: "0" for s in streams}, count=count)
            if not any(entries for _, entries in (resp or [])):
                self._backlog = False
                resp = None
        else:
            resp = None
        if resp is None:
            resp = self.r.xreadgroup(CONTROLLER_GROUP, CONTROLLER_CONSUMER, {s: ">" for s in streams},
                                     count=count, block=block_ms)
        entries: list[Entry] = []
        rejected: list[Rejected] = []
        for stream, items in resp or []:
            stream = _s(stream)
            kind = "results" if stream == self.keys.results else "progress"
            model = ResultMessage if kind == "results" else ProgressMessage
            for entry_id, fields in items:
                entry_id = _s(entry_id)
                try:
                    message = decode_entry(fields, model)
                    if message.search != self.keys.search:
                        raise MessageRejected(f"for search {message.search!r}, not {self.keys.search!r}")
                except MessageRejected as exc:
                    rejected.append(Rejected(kind, entry_id, str(exc)))
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
            self._retire(keys=[self.keys.dispatched, self.keys.trials, self.keys.control, self.keys.errors],
                         args=[TRAINERS_GROUP, trial_id], client=pipe)
        if len(pipe):
            pipe.execute()

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
        running = {_s(p["message_id"]) for p in pending}
        last = next((_s(g["last-delivered-id"]) for g in groups if _s(g["name"]) == TRAINERS_GROUP), "0-0")
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

    # --- trainer side -------------------------------------------------------------------
    def claim(self, consumer: str, block_ms: int = 1000) -> Union[Claim, Rejected, None]:
        """The next trial for `consumer`: first one whose lease expired (looked for at most
        every `autoclaim_interval` seconds: leases last seconds), else a new one."""
        claimed = None
        now = time.monotonic()
        if now >= self._autoclaim_at:
            reply = self.r.xautoclaim(self.keys.trials, TRAINERS_GROUP, consumer, self.lease_ms,
                                      self._autoclaim_cursor, count=1)
            cursor, claimed = reply[0], reply[1]  # Redis 7 adds the ids of deleted entries: nothing to do
            self._autoclaim_cursor = _s(cursor)
            if not claimed and self._autoclaim_cursor == "0-0":
                self._autoclaim_at = now + self.autoclaim_interval  # scanned the whole list: rest a moment
        if claimed:
            entry_id, fields = claimed[0]
            entry_id = _s(entry_id)
            info = self.r.xpending_range(self.keys.trials, TRAINERS_GROUP, entry_id, entry_id, 1)
            if not info or _s(info[0]["consumer"]) != consumer:
                return None  # taken by someone else in between
            attempt, reclaimed = int(info[0]["times_delivered"]), True
        else:
            resp = self.r.xreadgroup(TRAINERS_GROUP, consumer, {self.keys.trials: ">"}, count=1, block=block_ms)
            if not resp or not resp[0][1]:
                return None
            entry_id, fields = resp[0][1][0]
            entry_id, attempt, reclaimed = _s(entry_id), 1, False
        try:
            trial = decode_entry(fields, TrialMessage)
            if trial.search != self.keys.search:
                raise MessageRejected(f"for search {trial.search!r}, not {self.keys.search!r}")
        except MessageRejected as exc:
            pipe = self.r.pipeline(transaction=False)
            self._ack_delete(pipe, self.keys.trials, TRAINERS_GROUP, [entry_id])
            pipe.execute()
            return Rejected("trials", entry_id, str(exc))
        return Claim(entry_id, trial, attempt, reclaimed)

    def heartbeat(self, claim: Claim, consumer: str) -> tuple[bool, Optional[ControlMessage]]:
        """Extend the lease; (still owned, the trial's control if any)."""
        owned, raw = self._heartbeat(keys=[self.keys.trials, self.keys.control],
                                     args=[TRAINERS_GROUP, consumer, claim.entry_id, claim.trial.trial_id])
        return bool(int(owned)), self._control(raw)

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

    def complete(self, claim: Claim, result: ResultMessage) -> None:
        """Post the result and acknowledge the trial, atomically."""
        pipe = self.r.pipeline(transaction=True)
        pipe.xadd(self.keys.results, {PAYLOAD_FIELD: result.encode()}, maxlen=self.limits.results, approximate=True)
        pipe.xack(self.keys.trials, TRAINERS_GROUP, claim.entry_id)
        pipe.execute()

    def acknowledge(self, claim: Claim) -> None:
        """Drop a claim without a result (a trial the controller cancelled)."""
        self.r.xack(self.keys.trials, TRAINERS_GROUP, claim.entry_id)

    def retry_later(self, claim: Claim, consumer: str, error: str) -> bool:
        """Record the error and hand the trial back; its next delivery uses up an attempt."""
        return bool(self._hand_back(keys=[self.keys.trials, self.keys.errors],
                                    args=[TRAINERS_GROUP, consumer, claim.entry_id, HANDED_BACK_IDLE_MS, "",
                                          claim.trial.trial_id, error or "unknown error"]))

    def hand_back(self, claim: Claim, consumer: str) -> bool:
        """Give the trial back at once (SIGTERM) without using up an attempt."""
        return bool(self._hand_back(keys=[self.keys.trials, self.keys.errors],
                                    args=[TRAINERS_GROUP, consumer, claim.entry_id, HANDED_BACK_IDLE_MS,
                                          max(0, claim.attempt - 1), claim.trial.trial_id, ""]))

    def last_error(self, trial_id: str) -> Optional[str]:
        raw = self.r.hget(self.keys.errors, trial_id)
        return None if raw is None else _s(raw)

    def dead_letter(self, claim: Claim, result: ResultMessage) -> bool:
        """A trial past its retry limit: keep it for inspection, post its failure, acknowledge it."""
        letter = DeadLetterMessage(search=self.keys.search, trial_id=claim.trial.trial_id,
                                   attempts=claim.attempt - 1 or 1, error=result.error or "failed",
                                   trial=claim.trial, time=time.time())
        pipe = self.r.pipeline(transaction=True)
        pipe.xadd(self.keys.dead_letter, {PAYLOAD_FIELD: letter.encode()}, maxlen=self.limits.dead_letter,
                  approximate=True)
        pipe.xadd(self.keys.results, {PAYLOAD_FIELD: result.encode()}, maxlen=self.limits.results, approximate=True)
        pipe.xack(self.keys.trials, TRAINERS_GROUP, claim.entry_id)
        pipe.execute()
        return True


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)
