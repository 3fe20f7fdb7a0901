"""The few steps of the queue protocol that must be atomic, as Lua scripts.

Each script names its KEYS and ARGV in locals at its top; Python calls it through
a method of `QueueScripts` with keyword arguments only, so no call site depends
on argument positions. Every step a trainer takes on its trial (heartbeat,
settle, hand back) first checks that the trial's entry is still pending for
that trainer: a trainer whose lease was taken over can no longer touch the
new owner's run.
"""

from __future__ import annotations

from typing import Any, Optional

import redis

from kubenas.queue.keys import PAYLOAD_FIELD

_FIELD = PAYLOAD_FIELD.decode()

# Publish a trial unless its entry exists already (idempotent publishing).
_PUBLISH = """
local dispatched, trials = KEYS[1], KEYS[2]
local trial_id, payload, maxlen, replace = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local sid = redis.call('HGET', dispatched, trial_id)
if sid then
  if replace then
    redis.call('XDEL', trials, sid)
  elseif #redis.call('XRANGE', trials, sid, sid, 'COUNT', 1) > 0 then
    return {sid, 0}
  end
end
sid = redis.call('XADD', trials, 'MAXLEN', '~', maxlen, '*', '%(field)s', payload)
redis.call('HSET', dispatched, trial_id, sid)
return {sid, 1}
""" % {"field": _FIELD}

# Forget a trial's records: its dispatch record, control and last error.
_FORGET = """
local function forget(dispatched, control, errors, trial_id)
  redis.call('HDEL', dispatched, trial_id)
  redis.call('HDEL', control, trial_id)
  redis.call('HDEL', errors, trial_id)
end
"""

# Retire a trial whose result was applied (or which was cancelled): delete its entry
# (acknowledging it, so a trainer still on it learns at its next heartbeat) and its records.
_RETIRE = _FORGET + """
local dispatched, trials, control, errors = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, trial_id = ARGV[1], ARGV[2]
local sid = redis.call('HGET', dispatched, trial_id)
if sid then
  redis.call('XACK', trials, group, sid)
  redis.call('XDEL', trials, sid)
end
forget(dispatched, control, errors, trial_id)
return sid and 1 or 0
"""

# Withdraw a trial no trainer has taken (a suspend): retire it only while its entry is still
# queued, past the trainers' group's last delivered id (or gone); 1 when withdrawn, 0 when a
# trainer has read it. One step, so no trainer can read the entry between the check and the delete.
_WITHDRAW = _FORGET + """
local dispatched, trials, control, errors = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, trial_id = ARGV[1], ARGV[2]
local sid = redis.call('HGET', dispatched, trial_id)
if sid and #redis.call('XRANGE', trials, sid, sid, 'COUNT', 1) > 0 then
  local last = '0-0'
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', trials)) do
    local fields = {}
    for i = 1, #info - 1, 2 do fields[info[i]] = info[i + 1] end
    if fields['name'] == group then last = fields['last-delivered-id'] end
  end
  -- Entries go to the group in id order: one at or before `last` has been read by a trainer.
  if #redis.call('XRANGE', trials, '(' .. last, sid, 'COUNT', 1) == 0 then return 0 end
  redis.call('XDEL', trials, sid)
end
forget(dispatched, control, errors, trial_id)
return 1
"""

# Whether `consumer` owns entry `entry` of `trials` (it is in the consumer's pending list).
_OWNS = """
local function owns(trials, group, consumer, entry)
  return #redis.call('XPENDING', trials, group, entry, entry, 1, consumer) > 0
end
"""

# Heartbeat: reset the entry's idle time if this consumer still owns it; return the trial's control.
_HEARTBEAT = _OWNS + """
local trials, control = KEYS[1], KEYS[2]
local group, consumer, entry, trial_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if not owns(trials, group, consumer, entry) then return {0, ''} end
redis.call('XCLAIM', trials, group, consumer, 0, entry, 'JUSTID')
local c = redis.call('HGET', control, trial_id)
if not c then c = '' end
return {1, c}
"""

# Settle an owned entry: post its result and dead letter (each optional), then acknowledge it.
# A consumer that no longer owns the entry acknowledges nothing; it posts its result only
# with `post_if_lost` (a finished trial's result: the controller applies the first per trial).
_SETTLE = _OWNS + """
local trials, results, dead_letter = KEYS[1], KEYS[2], KEYS[3]
local group, consumer, entry = ARGV[1], ARGV[2], ARGV[3]
local has_result, result, results_maxlen = ARGV[4] == '1', ARGV[5], ARGV[6]
local has_letter, letter, letters_maxlen = ARGV[7] == '1', ARGV[8], ARGV[9]
local post_if_lost = ARGV[10] == '1'
if not owns(trials, group, consumer, entry) then
  if has_result and post_if_lost then
    redis.call('XADD', results, 'MAXLEN', '~', results_maxlen, '*', '%(field)s', result)
  end
  return 0
end
if has_letter then
  redis.call('XADD', dead_letter, 'MAXLEN', '~', letters_maxlen, '*', '%(field)s', letter)
end
if has_result then
  redis.call('XADD', results, 'MAXLEN', '~', results_maxlen, '*', '%(field)s', result)
end
redis.call('XACK', trials, group, entry)
return 1
""" % {"field": _FIELD}

# Hand an owned entry back: idle "for a year", so the next XAUTOCLAIM takes it over at once;
# optionally record the error and reset the delivery count (a hand-back that uses up no attempt).
_HAND_BACK = _OWNS + """
local trials, errors = KEYS[1], KEYS[2]
local group, consumer, entry, idle_ms, trial_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local keep_count, retry_count = ARGV[6] == '1', ARGV[7]
local has_error, err = ARGV[8] == '1', ARGV[9]
if not owns(trials, group, consumer, entry) then return 0 end
if has_error then redis.call('HSET', errors, trial_id, err) end
if keep_count then
  redis.call('XCLAIM', trials, group, consumer, 0, entry, 'IDLE', idle_ms, 'JUSTID')
else
  redis.call('XCLAIM', trials, group, consumer, 0, entry, 'IDLE', idle_ms, 'RETRYCOUNT', retry_count, 'JUSTID')
end
return 1
"""


def _flag(value: Any) -> str:
    return "1" if value else "0"


class QueueScripts:
    """The scripts registered on one client; `client=` runs one in a pipeline instead."""

    def __init__(self, client: redis.Redis):
        self._publish = client.register_script(_PUBLISH)
        self._retire = client.register_script(_RETIRE)
        self._withdraw = client.register_script(_WITHDRAW)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._settle = client.register_script(_SETTLE)
        self._hand_back = client.register_script(_HAND_BACK)

    def publish(self, *, dispatched: str, trials: str, trial_id: str, payload: bytes, maxlen: int,
                replace: bool, client: Any = None) -> Any:
        """Add the trial unless its entry exists (`replace`: delete and add again); [entry id, added]."""
        return self._publish(keys=[dispatched, trials], args=[trial_id, payload, maxlen, _flag(replace)],
                             client=client)

    def retire(self, *, dispatched: str, trials: str, control: str, errors: str, group: str, trial_id: str,
               client: Any = None) -> Any:
        """Acknowledge and delete the trial's entry and forget its records; 1 when it had an entry."""
        return self._retire(keys=[dispatched, trials, control, errors], args=[group, trial_id], client=client)

    def withdraw(self, *, dispatched: str, trials: str, control: str, errors: str, group: str, trial_id: str,
                 client: Any = None) -> Any:
        """Retire the trial if no trainer has read its entry; 1 when withdrawn, 0 when taken."""
        return self._withdraw(keys=[dispatched, trials, control, errors], args=[group, trial_id], client=client)

    def heartbeat(self, *, trials: str, control: str, group: str, consumer: str, entry_id: str,
                  trial_id: str) -> tuple[bool, Any]:
        """Reset the lease if `consumer` owns the entry; (owned, the trial's raw control or b'')."""
        owned, raw = self._heartbeat(keys=[trials, control], args=[group, consumer, entry_id, trial_id])
        return bool(int(owned)), raw

    def settle(self, *, trials: str, results: str, dead_letter: str, group: str, consumer: str, entry_id: str,
               result: Optional[bytes], results_maxlen: int, letter: Optional[bytes] = None,
               dead_letter_maxlen: int = 1000, post_if_lost: bool = False) -> bool:
        """If `consumer` owns the entry: post `result` and `letter` (when given) and acknowledge it.
        False when the entry is not (or no longer) this consumer's: then nothing is acknowledged
        and only a `result` with `post_if_lost` is posted."""
        done = self._settle(keys=[trials, results, dead_letter],
                            args=[group, consumer, entry_id,
                                  _flag(result is not None), result or b"", results_maxlen,
                                  _flag(letter is not None), letter or b"", dead_letter_maxlen,
                                  _flag(post_if_lost)])
        return bool(int(done))

    def hand_back(self, *, trials: str, errors: str, group: str, consumer: str, entry_id: str, trial_id: str,
                  idle_ms: int, retry_count: Optional[int], error: Optional[str]) -> bool:
        """If `consumer` owns the entry: record `error` (when given), set the entry's idle time to
        `idle_ms` and its delivery count to `retry_count` (None keeps it). False when not owned."""
        done = self._hand_back(keys=[trials, errors],
                               args=[group, consumer, entry_id, idle_ms, trial_id,
                                     _flag(retry_count is None), retry_count or 0,
                                     _flag(error is not None), error or ""])
        return bool(int(done))
