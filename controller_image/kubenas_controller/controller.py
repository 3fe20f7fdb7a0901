"""The controller loop: one process, one thread (plus the metrics endpoint's).

Each step:
  1. read a batch of results and progress reports (blocking briefly when idle);
  2. apply results to the strategy (a trial already applied is a duplicate: ignored)
     and progress reports to its early-stopping scheduler;
  3. check the budget (maxTrials, maxDuration, target, maxFailedTrials);
  4. ask the strategy for trials to keep parallelism + prefetch in flight;
  5. checkpoint: append the step's events to the trial log, save the strategy state;
  6. only then acknowledge the results and publish the new trials.
A crash anywhere leaves a checkpoint from which a restart re-reads the
unacknowledged results and re-publishes (idempotently) the trials in flight,
so no trial is lost, applied twice or proposed twice.

In memory: the trials in flight and aggregates (counts, best, recent history);
finished trials live only in the log, so memory stays flat over long searches.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

import redis
from redis.exceptions import ResponseError

from kubenas import metrics
from kubenas.queue.keys import SearchKeys
from kubenas.queue.messages import ControlMessage, ProgressMessage, ResultMessage, TrialMessage, clip_error
from kubenas.queue.redis_queue import RETRYABLE, Outage, TrialQueue, is_transient
from kubenas.spaces import build_space
from kubenas.spec import ArchitectureSearchSpec, RecentTrial, SearchSummary, TrialCounts
from kubenas.strategies.base import Result, SearchExhausted, Strategy, Trial

from kubenas_controller.checkpoint import Checkpoint, CheckpointError
from kubenas_controller.strategy import COST_KEYS, build_strategy, find_layer, fingerprint, measures_latency

log = logging.getLogger("kubenas.controller")

RECENT = 10  # trials in the summary's recent history

# Why a search finished: condition-style reasons the operator can map to a phase.
MAX_TRIALS, MAX_DURATION, TARGET, TOO_MANY_FAILED, EXHAUSTED = (
    "MaxTrialsReached", "MaxDurationReached", "TargetReached", "TooManyFailedTrials", "SearchSpaceExhausted")


@dataclass
class Options:
    prefetch: Optional[int] = None  # trials queued beyond parallelism; None: 1 + parallelism // 8
    lease_seconds: float = 30.0
    max_attempts: int = 3
    decision_timeout: float = 60.0  # how long a trainer waits for an early-stopping decision
    finish_grace: float = 60.0  # how long a finishing search waits for running trials to stop
    block_ms: int = 200
    batch: int = 512
    reconcile_seconds: float = 5.0
    summary_seconds: float = 0.5
    fsync: bool = True


@dataclass
class InFlight:
    message: TrialMessage
    entry_id: Optional[str] = None
    started: Optional[float] = None
    trainer: Optional[str] = None
    attempt: int = 0
    epoch: int = 0
    acknowledged_since: Optional[float] = None

    @property
    def trial_id(self) -> str:
        return self.message.trial_id


@dataclass
class Tally:
    created: int = 0
    cancelled: int = 0
    succeeded: int = 0
    failed: int = 0
    stopped: int = 0
    best_reward: Optional[float] = None
    best_trial: Optional[str] = None
    best_genotype: Optional[dict] = None
    recent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=RECENT))


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Controller:
    def __init__(self, spec: ArchitectureSearchSpec, keys: SearchKeys, client: redis.Redis,
                 checkpoint_dir: str, options: Options = Options(),
                 stopping: Optional[threading.Event] = None):
        self.spec = spec
        self.keys = keys
        self.search = keys.search
        self.options = options
        self.queue = TrialQueue(client, keys, lease_seconds=options.lease_seconds)
        self.checkpoint = Checkpoint(checkpoint_dir, fsync=options.fsync)
        self.stopping = stopping or threading.Event()
        self.space = build_space(spec.search_space)
        self.strategy: Strategy = build_strategy(spec, self.space)
        self.fingerprint = fingerprint(spec)
        budget = spec.budget
        self.target_in_flight = budget.parallelism + (
            options.prefetch if options.prefetch is not None else 1 + budget.parallelism // 8)
        self.inflight: dict[str, InFlight] = {}
        self.tally = Tally()
        self.elapsed_before = 0.0
        self.run_started = time.monotonic()
        self.exhausted = False
        self.fresh = False
        self.finishing: Optional[str] = None
        self.finish_deadline = 0.0
        self.finished = False
        self.last_tick = time.monotonic()
        self.redis_ok = False
        self._events: list[dict] = []
        self._dirty = False
        self._summary_at = 0.0
        self._summary_cache: Optional[bytes] = None
        self._reconcile_at = 0.0
        self._prune_at = time.monotonic() + 600
        self._constrained = find_layer(self.strategy, "constrained")
        self._dedup = find_layer(self.strategy, "dedup")
        self._scheduled = spec.training.early_stopping.algorithm != "none" and hasattr(self.strategy, "report")
        self._latency = measures_latency(spec)

    # --- restore ------------------------------------------------------------------------
    def restore(self) -> None:
        self.checkpoint.lock()
        try:
            self._restore()
        except BaseException:
            self.checkpoint.unlock()
            raise

    def _restore(self) -> None:
        state = self.checkpoint.load()
        self.fresh = state is None
        if state is None:
            log.info("search %s: fresh start (no checkpoint in %s)", self.search, self.checkpoint.dir)
            return
        if state.get("search") != self.search:
            raise CheckpointError(f"{self.checkpoint.dir} holds the checkpoint of search {state.get('search')!r}, "
                                  f"not {self.search!r}; point --checkpoint-dir (or --output) elsewhere")
        if state.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"{self.checkpoint.dir} was written for another search space, strategy, seed, early stopping or "
                "constraints; resuming would mix two searches. Use a new directory (or --output) for the new spec")
        try:
            self.strategy.load_state_dict(state["strategy"])
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{self.checkpoint.dir}: the strategy state cannot be restored ({exc})") from None
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self.exhausted = bool(state.get("exhausted", False))
        for event in self.checkpoint.events():
            self._replay(event)
        log.info("search %s: resumed from %s: %d trials created, %d done, %d in flight, best %s",
                 self.search, self.checkpoint.dir, self.tally.created, self._done(), len(self.inflight),
                 self.tally.best_reward)

    def _replay(self, event: dict) -> None:
        kind = event.get("e")
        if kind == "trial":
            self.tally.created += 1
            self.inflight[event["id"]] = InFlight(self._trial_message(
                Trial(event["id"], event["genotype"], event.get("fidelity")), created=event.get("created", 0.0)))
        elif kind == "result":
            flight = self.inflight.pop(event["id"], None)
            self._count(event, flight.message.genotype if flight else event.get("genotype"))
        elif kind == "cancel":
            if self.inflight.pop(event["id"], None) is not None:
                self.tally.cancelled += 1

    # --- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        """Run until the search finishes (0) or `stopping` is set (0); state is always checkpointed."""
        self.restore()
        outage = Outage(log, on_error=metrics.REDIS_ERRORS.labels(self.search, "controller").inc)
        connected = False
        while not self.stopping.is_set():
            self.last_tick = time.monotonic()
            try:
                if not connected:
                    if self.fresh:
                        # Nothing of this search was ever acknowledged: whatever Redis holds under its
                        # keys is from an earlier search of the same name; start from a clean slate.
                        self.queue.purge()
                        self.fresh = False
                    self.queue.ensure_groups()
                    self.queue.reread_backlog()
                    self.reconcile()
                    connected = True
                done = self.step()
                self.redis_ok = True
                outage.ok()
                if done:
                    break
            except RETRYABLE as exc:
                connected = self.redis_ok = False
                outage.failed(exc, self.stopping)
            except ResponseError as exc:
                connected = self.redis_ok = False
                if is_transient(exc):
                    outage.failed(exc, self.stopping)
                elif "NOGROUP" in str(exc):
                    log.warning("the queue's consumer groups are gone (Redis lost its data?); recreating them")
                else:
                    raise
        self._save_if_needed()
        if not self.finished:
            log.info("search %s: stopping on request; %d done, %d in flight (checkpointed; run again to resume)",
                     self.search, self._done(), len(self.inflight))
        try:
            self.publish_summary(force=True)
        except RETRYABLE:
            pass
        return 0

    def step(self) -> bool:
        idle = bool(self.finishing) or len(self.inflight) >= self._room_limit() or not self._can_create()
        entries, rejected = self.queue.read(count=self.options.batch, block_ms=self.options.block_ms if idle else 1)
        started = time.perf_counter()
        ack_results: list[str] = []
        ack_progress: list[str] = []
        retired: list[str] = []
        controls: dict[str, ControlMessage] = {}
        for item in rejected:
            metrics.MESSAGES_REJECTED.labels(self.search, item.stream).inc()
            log.warning("rejected entry %s in %s: %s", item.entry_id, item.stream, item.reason)
            (ack_results if item.stream == "results" else ack_progress).append(item.entry_id)
        for entry in entries:
            if entry.stream == "progress":
                self._on_progress(entry.message, controls)
                ack_progress.append(entry.entry_id)
            else:
                self._apply(entry.message, retired)
                ack_results.append(entry.entry_id)

        self._check_finish()
        new = self._fill() if not self.finishing else []
        if self.finishing:
            retired += self._finish_step(controls)
        self._save_if_needed()
        self.queue.set_control(controls)
        self.queue.ack(results=ack_results, progress=ack_progress, finished=retired)
        if new:
            self._publish(new)
        if ack_results:
            metrics.APPLY_SECONDS.labels(self.search).observe(time.perf_counter() - started)
        now = time.monotonic()
        if now >= self._reconcile_at:
            self.reconcile()
        self.publish_summary(force=self.finished)
        return self.finished

    # --- results ------------------------------------------------------------------------
    def _apply(self, msg: ResultMessage, retired: list[str]) -> None:
        flight = self.inflight.pop(msg.trial_id, None)
        retired.append(msg.trial_id)  # a duplicate too: its queue records may have outlived a crash
        if flight is None:
            metrics.RESULTS_DUPLICATE.labels(self.search).inc()
            log.info("result for %s from %s (attempt %d) ignored: already applied or unknown",
                     msg.trial_id, msg.trainer, msg.attempt)
            return
        status = {"succeeded": "succeeded", "diverged": "succeeded", "stopped": "stopped"}.get(msg.status, "failed")
        accuracy = msg.reward if status != "failed" else None
        error = msg.error
        if msg.status == "diverged":
            accuracy, error = 0.0, error or "diverged"
        reward = self._objective(msg.trial_id, accuracy, msg.cost)
        result = Result(reward=accuracy, status=status, curve=list(msg.curve), cost=dict(msg.cost), error=error)
        try:
            self.strategy.tell(msg.trial_id, result)
        except Exception:  # noqa: BLE001 - a strategy bug must not crash-loop the controller
            log.exception("strategy %s failed to take the result of %s; the result is recorded anyway",
                          self.strategy.name, msg.trial_id)
        now = time.time()
        event = {"e": "result", "id": msg.trial_id, "status": status, "outcome": msg.status, "reward": reward,
                 "accuracy": accuracy, "curve": list(msg.curve), "cost": dict(msg.cost), "epochs": msg.epochs,
                 "error": error, "trainer": msg.trainer, "attempt": msg.attempt, "device": msg.device,
                 "created": flight.message.created, "started": msg.started, "finished": msg.finished,
                 "applied": now}
        self._events.append(event)
        self._count(event, flight.message.genotype)
        metrics.TRIALS_COMPLETED.labels(self.search, msg.status).inc()
        if status == "succeeded" and reward is not None:
            metrics.TRIAL_REWARD.labels(self.search).observe(reward)
        entropy = policy_entropy(self.strategy)
        if entropy is not None:
            metrics.POLICY_ENTROPY.labels(self.search).set(entropy)
        if flight.message.created:
            metrics.TRIAL_SECONDS.labels(self.search).observe(max(0.0, now - flight.message.created))
        level = logging.WARNING if status == "failed" else logging.INFO
        log.log(level, "trial %s %s%s on %s (attempt %d)%s", msg.trial_id, msg.status,
                "" if reward is None else f" reward {reward:.4f}", msg.trainer, msg.attempt,
                f": {error}" if error else "")

    def _objective(self, trial_id: str, accuracy: Optional[float], cost: dict) -> Optional[float]:
        """The search's reward: accuracy, scaled by the cost penalty when the spec has one."""
        layer = self._constrained
        if accuracy is None or layer is None or getattr(layer, "soft", None) is None:
            return accuracy
        try:
            return float(layer.soft.reward(accuracy, {**layer.costs.get(trial_id, {}), **cost}))
        except (KeyError, ValueError) as exc:
            log.warning("trial %s: cost penalty not applied: %s", trial_id, exc)
            return accuracy

    def _count(self, event: dict, genotype: Optional[dict]) -> None:
        t = self.tally
        status = event["status"]
        setattr(t, status, getattr(t, status) + 1)
        reward = event.get("reward")
        if status == "succeeded" and reward is not None and (t.best_reward is None or reward > t.best_reward):
            t.best_reward, t.best_trial, t.best_genotype = reward, event["id"], genotype
        t.recent.append(RecentTrial(id=event["id"], status=status, reward=reward))

    def _done(self) -> int:
        return self.tally.succeeded + self.tally.failed + self.tally.stopped

    # --- progress and early stopping ----------------------------------------------------
    def _on_progress(self, msg: ProgressMessage, controls: dict[str, ControlMessage]) -> None:
        flight = self.inflight.get(msg.trial_id)
        if flight is None:
            return
        if flight.started is None or msg.attempt != flight.attempt:
            flight.started, flight.trainer, flight.attempt = msg.time or time.time(), msg.trainer, msg.attempt
            if msg.attempt > 1:
                log.info("trial %s: attempt %d on %s", msg.trial_id, msg.attempt, msg.trainer)
        if msg.epoch == 0:
            return
        flight.epoch = msg.epoch
        if self._scheduled and flight.message.scheduled and msg.val_acc is not None and not self.finishing:
            decision = self.strategy.report(msg.trial_id, msg.epoch, msg.val_acc)  # type: ignore[attr-defined]
            self._dirty = True
            action = "stop" if decision.action == "stop" else "continue"
            controls[msg.trial_id] = ControlMessage(action=action, epoch=msg.epoch, epochs=decision.fidelity,
                                                    reason=clip_error(decision.reason)[:500])

    # --- budget -------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + (time.monotonic() - self.run_started)

    def _room_limit(self) -> int:
        return 0 if self.spec.suspend else self.target_in_flight

    def _can_create(self) -> bool:
        return not self.exhausted and self.tally.created < self.spec.budget.max_trials

    def _check_finish(self) -> None:
        if self.finishing:
            return
        budget, t = self.spec.budget, self.tally
        target = self.spec.objective.target
        reason = None
        if t.failed > budget.max_failed_trials:
            reason = TOO_MANY_FAILED
            log.error("search %s: %d trials failed, more than maxFailedTrials=%d", self.search, t.failed,
                      budget.max_failed_trials)
        elif target is not None and t.best_reward is not None and t.best_reward >= target:
            reason = TARGET
        elif budget.max_duration_seconds is not None and self.elapsed() >= budget.max_duration_seconds:
            reason = MAX_DURATION
        elif not self.inflight and t.created >= budget.max_trials:
            reason = MAX_TRIALS
        elif not self.inflight and self.exhausted:
            reason = EXHAUSTED
        if reason:
            self._begin_finish(reason)

    def _begin_finish(self, reason: str) -> None:
        self.finishing = reason
        self.finish_deadline = time.monotonic() + self.options.finish_grace
        if self.inflight:
            log.info("search %s finishing (%s): stopping %d trials in flight", self.search, reason, len(self.inflight))

    def _finish_step(self, controls: dict[str, ControlMessage]) -> list[str]:
        """Stop what runs, withdraw what waits; finished when nothing is left or the grace is over."""
        retired: list[str] = []
        expired = time.monotonic() >= self.finish_deadline
        for trial_id, flight in list(self.inflight.items()):
            if flight.started is None or expired:
                self.inflight.pop(trial_id)
                self.tally.cancelled += 1
                self._events.append({"e": "cancel", "id": trial_id, "reason": self.finishing, "applied": time.time()})
                retired.append(trial_id)  # deletes its queue entry: no trainer starts it any more
            else:
                controls[trial_id] = ControlMessage(action="stop", reason=f"the search is finishing: {self.finishing}")
        if not self.inflight:
            self.finished = True
            metrics.SEARCH_FINISHED.labels(self.search).set(1)
            log.info("search %s finished (%s): %d trials, %d succeeded, %d failed, %d stopped, best %s (%s)",
                     self.search, self.finishing, self.tally.created - self.tally.cancelled, self.tally.succeeded,
                     self.tally.failed, self.tally.stopped, self.tally.best_reward, self.tally.best_trial)
        return retired

    # --- asking -------------------------------------------------------------------------
    def _fill(self) -> list[InFlight]:
        room = min(self._room_limit() - len(self.inflight), self.spec.budget.max_trials - self.tally.created)
        if room <= 0 or self.exhausted:
            return []
        try:
            trials = self.strategy.ask(room)
        except SearchExhausted as exc:
            log.warning("search %s: the strategy has nothing new to propose: %s", self.search, exc)
            self.exhausted = True
            self._dirty = True
            return []
        new = []
        now = time.time()
        for trial in trials:
            message = self._trial_message(trial, created=now)
            flight = InFlight(message)
            self.inflight[trial.id] = flight
            self.tally.created += 1
            known = getattr(self._dedup, "hashes", {}).get(trial.id)  # computed by the dedup layer already
            self._events.append({"e": "trial", "id": trial.id, "genotype": trial.genotype,
                                 "fidelity": trial.fidelity, "hash": known or self.space.hash(trial.genotype),
                                 "created": now})
            new.append(flight)
        return new

    def _trial_message(self, trial: Trial, created: float) -> TrialMessage:
        training = self.spec.training
        scheduled = self._scheduled and trial.fidelity is not None
        epochs = training.epochs if scheduled else (trial.fidelity or training.epochs)
        return TrialMessage(search=self.search, trial_id=trial.id, genotype=trial.genotype, epochs=epochs,
                            fidelity=trial.fidelity if scheduled else None, scheduled=scheduled,
                            training=training, measure_latency=self._latency,
                            max_attempts=self.options.max_attempts,
                            decision_timeout=self.options.decision_timeout, created=created)

    def _publish(self, flights: list[InFlight], force: bool = False) -> None:
        ids = self.queue.publish([f.message for f in flights], force=force)
        for flight in flights:
            entry_id, added = ids[flight.trial_id]
            if added and flight.entry_id is not None:
                metrics.TRIALS_REPUBLISHED.labels(self.search).inc()
                log.warning("trial %s: its queue entry %s was lost; published again as %s",
                            flight.trial_id, flight.entry_id, entry_id)
            if added:
                metrics.TRIALS_DISPATCHED.labels(self.search).inc()
            flight.entry_id = entry_id

    # --- checkpoint ---------------------------------------------------------------------
    def _save_if_needed(self) -> None:
        if not self._events and not self._dirty:
            return
        started = time.perf_counter()
        log_bytes = self.checkpoint.append(self._events)
        size = self.checkpoint.save({
            "search": self.search, "fingerprint": self.fingerprint, "strategy": self.strategy.state_dict(),
            "log_bytes": log_bytes, "elapsed": self.elapsed(), "exhausted": self.exhausted, "saved": now_iso(),
        })
        self._events = []
        self._dirty = False
        metrics.CHECKPOINT_SECONDS.labels(self.search).observe(time.perf_counter() - started)
        metrics.CHECKPOINT_BYTES.labels(self.search).set(size)

    # --- keeping Redis in line with the checkpoint --------------------------------------
    def reconcile(self) -> None:
        """Make sure every trial in flight has a live queue entry: publish idempotently
        (re-adds entries Redis lost) and re-publish trials whose entry was acknowledged
        by a trainer but whose result never arrived."""
        self._reconcile_at = time.monotonic() + self.options.reconcile_seconds
        flights = [f for f in self.inflight.values()]
        if not flights or self.finishing:
            return
        self._publish(flights)
        states = self.queue.entry_states([f.entry_id for f in flights if f.entry_id])
        stuck = []
        grace = 2 * self.options.reconcile_seconds + self.options.lease_seconds
        now = time.monotonic()
        for flight in flights:
            if states.get(flight.entry_id) != "acknowledged":
                flight.acknowledged_since = None
            elif flight.acknowledged_since is None:
                flight.acknowledged_since = now
            elif now - flight.acknowledged_since > grace:
                stuck.append(flight)
        if stuck:
            log.warning("trials %s were acknowledged without a result reaching the controller; publishing again",
                        [f.trial_id for f in stuck])
            for flight in stuck:
                flight.acknowledged_since = None
            self._publish(stuck, force=True)
        if now >= self._prune_at:
            self._prune_at = now + 600
            self.queue.prune_consumers()

    # --- summary ------------------------------------------------------------------------
    def summary(self) -> SearchSummary:
        t = self.tally
        running = sum(1 for f in self.inflight.values() if f.started is not None)
        return SearchSummary(
            trials=TrialCounts(total=t.created - t.cancelled, pending=len(self.inflight) - running, running=running,
                               succeeded=t.succeeded, failed=t.failed, stopped=t.stopped,
                               deduplicated=int(getattr(self._dedup, "hits", 0) or 0)),
            best_reward=t.best_reward, best_trial=t.best_trial, best_genotype=t.best_genotype,
            finished=self.finished, finish_reason=self.finishing if self.finished else None,
            updated=now_iso(), recent=list(t.recent))

    def publish_summary(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._summary_at < self.options.summary_seconds:
            return
        self._summary_at = now
        summary = self.summary()
        data = summary.model_dump_json(by_alias=True, exclude={"updated"}).encode()
        if force or data != self._summary_cache:
            self.queue.publish_summary(summary.model_dump_json(by_alias=True).encode())
            self._summary_cache = data
        counts = summary.trials
        metrics.TRIALS_IN_FLIGHT.labels(self.search, "pending").set(counts.pending)
        metrics.TRIALS_IN_FLIGHT.labels(self.search, "running").set(counts.running)
        if summary.best_reward is not None:
            metrics.BEST_REWARD.labels(self.search).set(summary.best_reward)

    def healthy(self) -> tuple[bool, str]:
        stale = time.monotonic() - self.last_tick
        ok = stale < max(60.0, 10 * self.options.block_ms / 1000)
        redis_state = "reachable" if self.redis_ok else "unreachable (retrying)"
        return ok, f"{'ok' if ok else 'stalled'}: loop ran {stale:.1f}s ago; redis {redis_state}"


def policy_entropy(strategy: Strategy) -> Optional[float]:
    """The RL policy's entropy, from whichever layer of the wrapper stack has one."""
    while strategy is not None:
        value = getattr(strategy, "policy_entropy", None)
        if value is not None:
            return value
        strategy = getattr(strategy, "inner", None)
    return None
