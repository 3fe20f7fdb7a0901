"""The controller loop: one process, one thread (plus the metrics endpoint's).

The bookkeeping is `kubenas.search_state.SearchState` (pure); this module
wires it to Redis, the strategy and the checkpoint. Each `step` keeps the
crash-consistency order in plain sight:

    read results -> apply -> checkpoint -> acknowledge -> publish

A crash anywhere leaves a checkpoint from which a restart re-reads the
unacknowledged results and re-publishes (idempotently) the trials in flight,
so no trial is lost, applied twice or proposed twice. Budget and suspend
changes arrive through the live spec (`live_budget.py`), polled about twice
a second; the applied one is checkpointed too (`search_checkpoint.py`).

In memory: the trials in flight and aggregates (counts, best, recent history);
finished trials live only in the log, so memory stays flat over long searches.

With spec.final, the search's end begins the final stage (kubenas/final_stage.py):
the top-k architectures are handed out again as final trials with the final recipe,
through the same queue, checkpoint and reconcile; once all have ended, the winner's
export is copied to `final_dir` and the summary says finished.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import redis
from redis.exceptions import ResponseError

from kubenas import metrics
from kubenas.errors import InvalidSpec
from kubenas.queue.connection import RETRYABLE, Outage, is_transient
from kubenas.queue.controller_side import ControllerQueue, Entry, RejectedEntry
from kubenas.queue.keys import SearchKeys
from kubenas.queue.live_spec import LiveSpec
from kubenas.queue.messages import ControlMessage, ProgressMessage, ResultMessage, TrialMessage, clip_error
from kubenas.final_stage import final_genotype, final_training
from kubenas.nn.latency_table import LatencyTableError, check_prices_space, load_table, predict_latency
from kubenas.objectives import Objectives
from kubenas.search_state import CONTROLLER_ERROR, EXHAUSTED, TOO_MANY_FAILED, InFlight, Verdict, SearchState, Tally
from kubenas.spaces import build_space
from kubenas.spec import ArchitectureSearchSpec, FinalModel, SearchSummary, SupernetProgress
from kubenas.strategies.base import Result, SearchExhausted, Strategy, Trial
from kubenas.strategies.one_shot import one_shot_of
from kubenas.training.checkpoints import CheckpointRetention, TrialCheckpointStore

from kubenas_controller.live_budget import LiveBudget
from kubenas_controller.search_checkpoint import SearchCheckpoint, now_iso
from kubenas_controller.strategy import build_strategy, schedules_epochs
from kubenas_controller.supernet_watch import SupernetWatch

log = logging.getLogger("kubenas.controller")


DERIVED_UNUSABLE = "DerivedGenotypesUnusable"
DERIVED_TRAINED = "DerivedGenotypesTrained"


def load_latency_table(spec: ArchitectureSearchSpec, space) -> Optional[dict]:
    """spec.objective.latency's table, checked to price every genotype of the search's space; None: no table."""
    if spec.objective.latency is None:
        return None
    where = "spec.objective.latency.table"
    try:
        table = load_table(spec.objective.latency.table)
        check_prices_space(table, space)
    except LatencyTableError as exc:
        raise InvalidSpec(f"{where}: {exc}") from None
    return table


@dataclass
class ControllerOptions:
    prefetch: Optional[int] = None  # trials queued beyond parallelism; None: 1 + parallelism // 8
    lease_seconds: float = 30.0
    max_attempts: int = 3
    decision_timeout: float = 60.0  # how long a trainer waits for an early-stopping decision
    finish_grace: float = 60.0  # how long a finishing search waits for running trials to stop
    block_ms: int = 200
    batch: int = 512
    reconcile_seconds: float = 5.0
    summary_seconds: float = 0.5
    live_spec_seconds: float = 0.5  # how often the live spec is polled
    checkpoint_retry_cap: float = 30.0  # the longest wait between attempts to save a failing checkpoint
    fsync: bool = True
    artifacts: Optional[str] = None  # the search's artifact store: trial checkpoints to prune
    keep_top_k: int = 5  # the best finished trials whose checkpoints stay (later stages, inheritance)
    final_dir: Optional[str] = None  # where the final stage's winner is copied (default: it stays where its trainer wrote it)


@dataclass
class Step:
    """What one step read, and what it will acknowledge and hand out once checkpointed."""

    results: list[str] = field(default_factory=list)  # result entry ids to acknowledge
    progress: list[str] = field(default_factory=list)  # progress entry ids to acknowledge
    retired: list[str] = field(default_factory=list)  # trial ids whose queue records go
    controls: dict[str, ControlMessage] = field(default_factory=dict)
    new: list[InFlight] = field(default_factory=list)  # trials to publish
    applied: int = 0


class Controller:
    def __init__(self, spec: ArchitectureSearchSpec, keys: SearchKeys, client: redis.Redis,
                 checkpoint_dir: str, options: ControllerOptions = ControllerOptions(),
                 stopping: Optional[threading.Event] = None):
        self.spec = spec
        self.keys = keys
        self.search = keys.search
        self.options = options
        self.queue = ControllerQueue(client, keys)
        self.checkpoint = SearchCheckpoint(checkpoint_dir, keys.search, spec, fsync=options.fsync,
                                           retry_cap=options.checkpoint_retry_cap)
        self.stopping = stopping or threading.Event()
        self.space = build_space(spec.search_space)
        self.strategy: Strategy = build_strategy(spec, self.space)
        self.one_shot = one_shot_of(self.strategy)  # enas, darts, spos: waits for the supernet's genotypes
        self.supernet: Optional[SupernetWatch] = None
        if self.one_shot is not None:
            if not options.artifacts:
                raise InvalidSpec(f"strategy.algorithm {spec.strategy.algorithm}: a one-shot search needs the "
                                  "artifact store (--artifacts, env KUBENAS_ARTIFACTS), where its supernet "
                                  "workers write the derived genotypes")
            self.supernet = SupernetWatch(options.artifacts, search=self.search, spec=self.spec)
        self.state = SearchState(spec.budget, self._trial_message, target=spec.objective.target,
                                 prefetch=options.prefetch, suspended=spec.suspend,
                                 final_top_k=spec.final.top_k if spec.final else None,
                                 make_final_message=self._final_message,
                                 objectives=Objectives.from_spec(spec.objective))
        self._final_training = final_training(spec) if spec.final else None
        self.live_budget = LiveBudget(spec, self.state, self.queue, poll_seconds=options.live_spec_seconds)
        self.fresh = False
        self.finish_deadline = 0.0
        self.last_tick = time.monotonic()
        self.redis_ok = False
        self._clock = time.monotonic()
        self._dirty = False  # state to checkpoint beyond the events (strategy reports, live spec, exhausted)
        self._summary_at = 0.0
        self._summary_cache: Optional[bytes] = None
        self._reconcile_at = 0.0
        self._prune_at = time.monotonic() + 600
        self._scheduled = schedules_epochs(spec)
        self.latency_table = load_latency_table(spec, self.space)  # None: latency measured by the trainers
        self._latency = spec.objective.uses_latency and self.latency_table is None
        self.retention: Optional[CheckpointRetention] = None
        if options.artifacts:
            self.retention = CheckpointRetention(TrialCheckpointStore(options.artifacts), top_k=options.keep_top_k)

    # The state's tally and trials in flight, as the tests and tools read them.
    @property
    def tally(self) -> Tally:
        return self.state.tally

    @property
    def inflight(self) -> dict[str, InFlight]:
        return self.state.inflight

    @property
    def finished(self) -> bool:
        """The search has finished, and its final stage too when the spec has one."""
        return self.state.done

    @property
    def live(self) -> LiveSpec:
        """The live spec applied last (revision 0: the spec file's own budget and suspend)."""
        return self.live_budget.applied

    # --- restore ------------------------------------------------------------------------
    def restore(self) -> None:
        self.checkpoint.lock()
        try:
            self._restore()
        except BaseException:
            self.checkpoint.unlock()
            raise

    def _restore(self) -> None:
        saved = self.checkpoint.restore(self.state, self.strategy)
        self.fresh = saved is None
        if saved is None:
            log.info("search %s: fresh start (no checkpoint in %s)", self.search, self.checkpoint.dir)
            return
        live, holds = self.checkpoint.saved_live(saved)
        if live is not None:
            self.live_budget.restored(live, holds)
        log.info("search %s: resumed from %s: %d trials created, %d done, %d in flight, best %s",
                 self.search, self.checkpoint.dir, self.tally.created, self.tally.done, len(self.inflight),
                 self.tally.best_reward)

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
                    self._connect()
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
                     self.search, self.tally.done, len(self.inflight) + len(self.state.withdrawn))
        try:
            self.publish_summary(force=True)
        except RETRYABLE:
            pass
        return 0

    def _connect(self) -> None:
        if self.fresh:
            # Nothing of this search was ever acknowledged: whatever Redis holds under its
            # keys is from an earlier search of the same name; start from a clean slate.
            self.queue.purge()
            self.fresh = False
        self.queue.ensure_groups()
        self.queue.reread_backlog()
        self.live_budget.connected()  # before reconcile publishes anything
        self.reconcile()

    def step(self) -> bool:
        """One round, in the order that makes a crash at any point harmless."""
        step = Step()
        returned = self.live_budget.poll()  # budget and suspend changes
        if returned is not None:
            step.new += returned
            self._dirty = True
        idle = bool(self.state.finishing) or self.state.room() == 0
        entries, rejected = self.queue.read(  # 1. read results and progress (blocking briefly when idle)
            count=self.options.batch, block_ms=self.options.block_ms if idle else 1)
        started = time.perf_counter()
        self._apply(entries, rejected, step)  # 2. apply them; then the budget: finish, cancel, create
        self._apply_budget(step)
        self._save_if_needed()  # 3. checkpoint: the trial log and the strategy state, durably
        self.queue.set_control(step.controls)  # 4. only then acknowledge results, retire finished trials
        self.queue.ack(results=step.results, progress=step.progress, finished=step.retired)
        self._publish([f for f in step.new if f.trial_id in self.inflight])  # 5. and publish new trials
        if step.applied:
            metrics.APPLY_SECONDS.labels(self.search).observe(time.perf_counter() - started)
        self._housekeeping()
        return self.finished

    # --- 2. apply results and progress reports ------------------------------------------------
    def _apply(self, entries: list[Entry], rejected: list[RejectedEntry], step: Step) -> None:
        for item in rejected:
            metrics.MESSAGES_REJECTED.labels(self.search, item.stream).inc()
            log.warning("rejected entry %s in %s: %s", item.entry_id, item.stream, item.reason)
            (step.results if item.stream == "results" else step.progress).append(item.entry_id)
        for entry in entries:
            if entry.stream == "progress":
                self._on_progress(entry.message, step)
                step.progress.append(entry.entry_id)
            else:
                self._apply_result(entry.message, step)
                step.results.append(entry.entry_id)

    def _apply_result(self, msg: ResultMessage, step: Step) -> None:
        step.retired.append(msg.trial_id)  # a duplicate too: its queue records may have outlived a crash
        flight = self.state.pending(msg.trial_id)
        if flight is None:
            metrics.RESULTS_DUPLICATE.labels(self.search).inc()
            log.info("result for %s from %s (attempt %d) ignored: already applied or unknown",
                     msg.trial_id, msg.trainer, msg.attempt)
            return
        verdict = Verdict.of(msg)
        if flight.final:  # the final stage's: neither the strategy nor the search's reward sees it
            self.state.apply_result(msg, verdict, verdict.accuracy, time.time())
            step.applied += 1
            log.log(logging.WARNING if verdict.status == "failed" else logging.INFO,
                    "final trial %s %s: validation accuracy %s, test accuracy %s, exported to %s%s", msg.trial_id,
                    msg.status, verdict.accuracy, msg.test_accuracy, msg.export_path,
                    f" ({verdict.error})" if verdict.error else "")
            return
        if self.latency_table is not None:  # the target device's latency, whatever device trained it
            self._predict_latency(flight.message.genotype, msg)
        reward = self._objective(msg.trial_id, verdict.accuracy, msg.cost)
        result = Result(reward=verdict.accuracy, status=verdict.status, curve=list(msg.curve), cost=dict(msg.cost),
                        error=verdict.error, epochs=msg.epochs)
        try:
            self.strategy.tell(msg.trial_id, result)
        except Exception:  # noqa: BLE001 - a strategy bug must not crash-loop the controller
            log.exception("strategy %s failed to take the result of %s; the result is recorded anyway",
                          self.strategy.name, msg.trial_id)
        now = time.time()
        self.state.apply_result(msg, verdict, reward, now)
        if self.retention is not None and verdict.status == "succeeded":
            self.retention.note(msg.trial_id, reward)
        step.applied += 1
        metrics.TRIALS_COMPLETED.labels(self.search, msg.status).inc()
        if verdict.status == "succeeded" and reward is not None:
            metrics.TRIAL_REWARD.labels(self.search).observe(reward)
        if flight.message.created:
            metrics.TRIAL_SECONDS.labels(self.search).observe(max(0.0, now - flight.message.created))
        level = logging.WARNING if verdict.status == "failed" else logging.INFO
        log.log(level, "trial %s %s%s on %s (attempt %d)%s", msg.trial_id, msg.status,
                "" if reward is None else f" reward {reward:.4f}", msg.trainer, msg.attempt,
                f": {verdict.error}" if verdict.error else "")

    def _predict_latency(self, genotype: dict, msg: ResultMessage) -> None:
        try:
            msg.cost["latency_seconds"] = predict_latency(self.latency_table, genotype)
        except (LatencyTableError, KeyError, ValueError) as exc:  # checked at start; a genotype it cannot price
            log.warning("trial %s: no latency predicted: %s", msg.trial_id, exc)

    def _objective(self, trial_id: str, accuracy: Optional[float], cost: dict) -> Optional[float]:
        """The search's reward (accuracy, penalised by cost when the spec says so): the strategy
        computes it; a failure there costs the penalty, never the result."""
        if accuracy is None:
            return None
        try:
            reward = self.strategy.objective(trial_id, accuracy, dict(cost))
        except Exception as exc:  # noqa: BLE001 - e.g. a cost penalty that cannot be computed
            log.warning("trial %s: cost penalty not applied: %s: %s", trial_id, type(exc).__name__, exc)
            return accuracy
        if reward is None or not math.isfinite(reward):
            log.warning("trial %s: the objective gave %r; the accuracy is recorded as the reward", trial_id, reward)
            return accuracy
        return float(reward)

    def _on_progress(self, msg: ProgressMessage, step: Step) -> None:
        flight, new_attempt = self.state.progress(msg, time.time())
        if flight is None:
            return
        if new_attempt and msg.attempt > 1:
            log.info("trial %s: attempt %d on %s", msg.trial_id, msg.attempt, msg.trainer)
        if not (msg.epoch and self._scheduled and flight.message.scheduled and msg.val_acc is not None):
            return
        if self.state.finishing:
            return
        try:
            decision = self.strategy.report(msg.trial_id, msg.epoch, msg.val_acc)
        except Exception as exc:  # noqa: BLE001 - the trial trains on; the scheduler is the one at fault
            log.warning("trial %s: the early-stopping scheduler failed at epoch %d (%s: %s); it trains on",
                        msg.trial_id, msg.epoch, type(exc).__name__, exc)
            return
        if decision is None:
            return
        self._dirty = True
        action = "stop" if decision.action == "stop" else "continue"
        step.controls[msg.trial_id] = ControlMessage(action=action, epoch=msg.epoch, epochs=decision.fidelity,
                                                     reason=clip_error(decision.reason)[:500])

    # --- then the budget: finish rules, cancellations, new trials ------------------------------
    def _apply_budget(self, step: Step) -> None:
        state = self.state
        now = time.monotonic()
        state.advance(now - self._clock)
        self._clock = now
        if state.finished:
            step.new += self._final_stage_step()
            return
        step.retired += state.over_budget(time.time())
        if not state.finishing:
            reason = state.finish_reason()
            if reason:
                self._begin_finish(reason)
        if state.finishing:
            step.retired += self._finish_step(step)
        else:
            step.new += self._fill()

    def _begin_finish(self, reason: str) -> None:
        if reason == EXHAUSTED and self.one_shot is not None:
            reason = DERIVED_TRAINED  # not a space used up: every cell the supernet derived was trained
        if reason == TOO_MANY_FAILED:
            log.error("search %s: %d trials failed, more than maxFailedTrials=%d", self.search, self.tally.failed,
                      self.state.budget.max_failed_trials)
        self.state.begin_finish(reason)
        self.finish_deadline = time.monotonic() + self.options.finish_grace
        if self.inflight:
            log.info("search %s finishing (%s): stopping %d trials in flight", self.search, reason, len(self.inflight))

    def _finish_step(self, step: Step) -> list[str]:
        """Stop what runs, withdraw what waits; finished when nothing is left or the grace is over."""
        state = self.state
        cancelled, to_stop = state.finish_step(time.monotonic() >= self.finish_deadline, time.time())
        for trial_id in to_stop:
            step.controls[trial_id] = ControlMessage(action="stop", reason=f"the search is finishing: {state.finishing}")
        if state.finished:
            t = self.tally
            metrics.SEARCH_FINISHED.labels(self.search).set(1)
            log.info("search %s finished (%s): %d trials, %d succeeded, %d failed, %d stopped, best %s (%s)",
                     self.search, state.finishing, t.total, t.succeeded, t.failed, t.stopped, t.best_reward,
                     t.best_trial)
        return cancelled

    # --- the final stage (spec.final), once the search has finished ----------------------------
    def _final_stage_step(self) -> list[InFlight]:
        """Begin the stage (its final trials), or, once they have all ended, choose the winner."""
        state = self.state
        if not state.in_final_stage:
            return []
        now = time.time()
        if state.final is None:
            if state.finishing in (TOO_MANY_FAILED, CONTROLLER_ERROR):
                state.end_final_stage(None, f"skipped: the search ended with {state.finishing}", now)
            elif not state.leaderboard.best:
                state.end_final_stage(None, "skipped: no architecture of the search finished training", now)
            else:
                flights = state.begin_final_stage(now)
                log.info("search %s: final stage: training %d architectures at the final size (%s)", self.search,
                         len(flights), ", ".join(f.trial_id for f in flights))
                return flights
            log.warning("search %s: final stage %s", self.search, state.final.error if state.final else "")
            return []
        if state.final.trained:
            model, error = state.final.decide()
            if model is not None:
                model = self._place_final_model(model)
                log.info("search %s: final model %s (from %s): validation accuracy %.4f, test accuracy %s; in %s",
                         self.search, model.trial, model.source_trial, model.validation_accuracy,
                         model.test_accuracy, model.path)
            else:
                log.error("search %s: the final stage produced no model: %s", self.search, error)
            state.end_final_stage(model, error, now)
        return []

    def _place_final_model(self, model: FinalModel) -> FinalModel:
        """Copy the winner's export to final_dir (the search's results); where that fails, the
        model stays where its trainer wrote it, and the status says so."""
        target = self.options.final_dir
        if not target or not model.path or os.path.abspath(model.path) == os.path.abspath(target):
            return model
        staging = f"{target.rstrip('/')}.incoming"
        try:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(model.path, staging)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        except OSError as exc:
            log.warning("search %s: the final model could not be copied from %s to %s (%s); it stays there",
                        self.search, model.path, target, exc)
            return model
        return model.model_copy(update={"path": target})

    def _final_message(self, event: dict) -> TrialMessage:
        assert self._final_training is not None
        training = self._final_training
        return TrialMessage(search=self.search, trial_id=event["id"],
                            genotype=final_genotype(event["genotype"], self.spec.final), epochs=training.epochs,
                            training=training, max_attempts=self.options.max_attempts,
                            decision_timeout=self.options.decision_timeout, created=event.get("created", 0.0),
                            final=True)

    def _fill(self) -> list[InFlight]:
        self._take_derived()
        room = self.state.room()
        if room <= 0:
            return []
        try:
            trials = self.strategy.ask(room)
        except SearchExhausted as exc:
            log.warning("search %s: the strategy has nothing new to propose: %s", self.search, exc)
            self.state.exhausted = True
            self._dirty = True
            return []
        except Exception:  # noqa: BLE001 - finish clearly instead of crash-looping on a strategy bug
            log.exception("search %s: strategy %s failed to propose trials; finishing the search",
                          self.search, self.strategy.name)
            self._begin_finish(CONTROLLER_ERROR)
            return []
        now = time.time()
        return [self.state.create(trial, self.strategy.known_hash(trial.id) or self.space.hash(trial.genotype), now)
                for trial in trials]

    def _trial_message(self, trial: Trial, created: float) -> TrialMessage:
        training = self.spec.training
        scheduled = self._scheduled and trial.fidelity is not None
        epochs = training.epochs if scheduled else (trial.fidelity or training.epochs)
        return TrialMessage(search=self.search, trial_id=trial.id, genotype=trial.genotype, epochs=epochs,
                            fidelity=trial.fidelity if scheduled else None, scheduled=scheduled,
                            training=training, measure_latency=self._latency,
                            max_attempts=self.options.max_attempts,
                            decision_timeout=self.options.decision_timeout, created=created,
                            parent_trial_id=trial.parent_id, warm_start=trial.warm_start,
                            schedule_epochs=trial.schedule_epochs, schedule_start=trial.schedule_start)

    # --- 3. checkpoint ------------------------------------------------------------------------
    def _save_if_needed(self) -> None:
        if self.state.unsaved or self._dirty:
            self.checkpoint.save(self.state, self.strategy, self.live, self.stopping, waiting=self._tick)
            self._dirty = False

    def _tick(self) -> None:
        self.last_tick = time.monotonic()  # alive while it waits (the health check says why)

    # --- 5. publish ---------------------------------------------------------------------------
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

    def _housekeeping(self) -> None:
        self.live_budget.note_drained()
        self._prune_checkpoints()
        if time.monotonic() >= self._reconcile_at:
            self.reconcile()
        self.publish_summary(force=self.finished)

    def _prune_checkpoints(self) -> None:
        """Remove the trial checkpoints nothing needs any more (bounded disk): kept are the trials
        in flight or withdrawn (to resume), their parents, what the strategy still needs, the top-k."""
        now = time.monotonic()
        if self.retention is None or not self.retention.due(now):
            return
        flights = list(self.state.inflight.values()) + list(self.state.withdrawn.values())
        in_flight = {f.trial_id: f.message.parent_trial_id for f in flights}
        needed = getattr(self.strategy, "checkpoints_needed", None)
        try:
            keep = list(needed()) if callable(needed) else []
            if self.tally.best_trial:
                keep.append(self.tally.best_trial)
            freed = self.retention.prune(in_flight, keep, now)
            used = self.retention.store.bytes_used()
        except Exception as exc:  # noqa: BLE001 - an unreachable volume or a strategy bug: keep everything
            log.warning("search %s: trial checkpoints not pruned: %s: %s", self.search, type(exc).__name__, exc)
            return
        if freed:
            metrics.TRIAL_CHECKPOINT_FREED_BYTES.labels(self.search).inc(freed)
            log.debug("search %s: removed %d bytes of trial checkpoints no longer needed", self.search, freed)
        metrics.TRIAL_CHECKPOINT_BYTES.labels(self.search).set(used)

    # --- keeping Redis in line with the checkpoint --------------------------------------
    def reconcile(self) -> None:
        """Make sure every trial in flight has a live queue entry: publish idempotently
        (re-adds entries Redis lost) and re-publish trials whose entry was acknowledged
        by a trainer but whose result never arrived."""
        self._reconcile_at = time.monotonic() + self.options.reconcile_seconds
        flights = list(self.inflight.values())
        if not flights or (self.state.finishing and not self.state.finished):  # a final stage reconciles
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
        summary = self.state.summary(updated=now_iso(), deduplicated=int(self._stats().get("deduplicated", 0)))
        if self.supernet is not None and self.one_shot.waiting_for_supernet and not summary.finished:
            summary.stage = self.supernet.stage  # type: ignore[assignment]
        if self.supernet is not None and self.supernet.progress() is not None:
            summary.supernet = SupernetProgress.model_validate(self.supernet.progress())
        return summary

    def _take_derived(self) -> None:
        """One-shot: hand the worker group's derived genotypes to the strategy once they are there."""
        if self.supernet is None or not self.one_shot.waiting_for_supernet:
            return
        payload = self.supernet.poll()
        if payload is None:
            return
        try:
            count = self.one_shot.take_derived(payload)
        except ValueError as exc:
            log.error("search %s: the supernet's derived genotypes cannot be used: %s", self.search, exc)
            self._begin_finish(DERIVED_UNUSABLE)
            return
        self._dirty = True  # the genotypes are part of the strategy's state from now on
        log.info("search %s: the supernet derived %d genotype%s; training them stand-alone", self.search, count,
                 "" if count == 1 else "s")

    def _stats(self) -> dict[str, float]:
        try:
            return self.strategy.stats()
        except Exception as exc:  # noqa: BLE001 - statistics are never worth a crash
            log.debug("strategy statistics unavailable: %s", exc)
            return {}

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
        if summary.pareto_front_size is not None:
            metrics.PARETO_FRONT_SIZE.labels(self.search).set(summary.pareto_front_size)
            if summary.hypervolume is not None:
                metrics.PARETO_HYPERVOLUME.labels(self.search).set(summary.hypervolume)
        elif summary.best_reward is not None:  # one objective: its front is the best trial, up to reward 0
            metrics.PARETO_FRONT_SIZE.labels(self.search).set(1)
            metrics.PARETO_HYPERVOLUME.labels(self.search).set(max(0.0, summary.best_reward))
        entropy = self._stats().get("policy_entropy")
        if entropy is not None:
            metrics.POLICY_ENTROPY.labels(self.search).set(entropy)

    def healthy(self) -> tuple[bool, str]:
        stale = time.monotonic() - self.last_tick
        ok = stale < max(60.0, 10 * self.options.block_ms / 1000)
        redis_state = "reachable" if self.redis_ok else "unreachable (retrying)"
        text = f"{'ok' if ok else 'stalled'}: loop ran {stale:.1f}s ago; redis {redis_state}"
        if self.checkpoint.problem:
            text += f"; {self.checkpoint.problem} (retrying)"
        return ok, text
