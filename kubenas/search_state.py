"""A search's bookkeeping, pure: no Redis, no files, no clock.

The controller process wires it to the outside. Every change of the trials'
fate is an *event* (a JSON-safe dict), and one function applies events:

    {"e": "trial",  "id", "genotype", "fidelity", "hash", "created"}   a trial was created
                    (+ "parent", "warmStart" when it starts from another's weights,
                     "scheduleEpochs", "scheduleStart" when it continues a longer LR schedule)
    {"e": "result", "id", "status", "reward", ...}                      its result was applied
    {"e": "cancel", "id", "reason"}                                      it was withdrawn for good
    {"e": "finalStage" | "finalModel", ...}, and trials and results marked "final": true
                    the final stage (spec.final; kubenas/final_stage.py), counted apart

Live operation records each event (applies it and keeps it for the next
checkpoint); a restart replays the checkpointed log through the same function,
so a replayed state is the live one by construction.

Besides the tally and the trials in flight, the state holds the finish rules
(maxTrials, maxDuration, target, maxFailedTrials, exhausted) and the live
budget: parallelism, maxTrials, maxDuration, maxFailedTrials and suspend may
change while the search runs. A suspended search hands nothing out: its
queued-but-not-started trials are *withdrawn* (kept here, with their ids, out
of the queue) and handed out again on resume, so no trial is lost or counted
twice and the counts stay exact.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Callable, Optional

from kubenas.final_stage import Candidate, FinalStage, Leaderboard, final_trial_ids
from kubenas.objectives import Objectives
from kubenas.pareto_archive import ParetoArchive
from kubenas.queue.messages import ProgressMessage, ResultMessage, TrialMessage
from kubenas.spec import BudgetSpec, FinalModel, RecentTrial, SearchSummary, TrialCounts
from kubenas.strategies.base import Trial

RECENT = 10  # trials in the summary's recent history

# Why a search finished: condition-style reasons the operator can map to a phase.
MAX_TRIALS, MAX_DURATION, TARGET, TOO_MANY_FAILED, EXHAUSTED = (
    "MaxTrialsReached", "MaxDurationReached", "TargetReached", "TooManyFailedTrials", "SearchSpaceExhausted")
CONTROLLER_ERROR = "ControllerError"  # the strategy failed: the operator reads it as a failure

# A result's status on the wire -> the trial's status in the tally.
STATUS_OF_OUTCOME = {"succeeded": "succeeded", "diverged": "succeeded", "stopped": "stopped"}


@dataclass
class InFlight:
    """A created trial whose result has not been applied yet."""

    message: TrialMessage
    entry_id: Optional[str] = None  # its entry in the trial queue, once published
    started: Optional[float] = None  # when a trainer reported starting it
    trainer: Optional[str] = None
    attempt: int = 0
    epoch: int = 0
    acknowledged_since: Optional[float] = None  # its entry was acknowledged, no result seen yet
    genotype_hash: Optional[str] = None

    @property
    def final(self) -> bool:
        return self.message.final

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

    @property
    def total(self) -> int:
        """Trials that count against maxTrials: created and not cancelled."""
        return self.created - self.cancelled

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.stopped


@dataclass(frozen=True)
class Verdict:
    """What a result means for the search: its status, the accuracy it reports, its error."""

    status: str  # succeeded | failed | stopped
    accuracy: Optional[float]
    error: Optional[str]

    @classmethod
    def of(cls, msg: ResultMessage) -> "Verdict":
        status = STATUS_OF_OUTCOME.get(msg.status, "failed")
        if msg.status == "diverged":  # a network that diverged is a (bad) architecture, not a failure
            return cls(status, 0.0, msg.error or "diverged")
        return cls(status, msg.reward if status != "failed" else None, msg.error)


MakeMessage = Callable[[Trial, float], TrialMessage]
MakeFinalMessage = Callable[[dict], TrialMessage]  # a final trial's message from its event


class SearchState:
    """The tally, the trials in flight, the finish rules and the live budget of one search."""

    def __init__(self, budget: BudgetSpec, make_message: MakeMessage, target: Optional[float] = None,
                 prefetch: Optional[int] = None, suspended: bool = False, final_top_k: Optional[int] = None,
                 make_final_message: Optional[MakeFinalMessage] = None, objectives: Optional[Objectives] = None):
        self.budget = budget
        self.suspended = suspended
        self.target = target
        self.prefetch = prefetch  # trials queued beyond parallelism; None: 1 + parallelism // 8
        self.make_message = make_message
        self.tally = Tally()
        self.inflight: dict[str, InFlight] = {}  # handed out: queued or running
        self.withdrawn: dict[str, InFlight] = {}  # created, held out of the queue while suspended
        self.elapsed = 0.0  # seconds the search has run, suspensions excluded
        self.exhausted = False
        self.finishing: Optional[str] = None
        self.finished = False
        self.unsaved: list[dict] = []  # events recorded since the last checkpoint
        # The final stage (spec.final): None when the spec has none; its candidates come from the
        # leaderboard, kept from every result (replayed too), so a restart rebuilds it.
        self.final_top_k = final_top_k
        self.make_final_message = make_final_message
        self.leaderboard = Leaderboard(final_top_k or 0)
        self.final: Optional[FinalStage] = None
        # Several objectives: the non-dominated trials (bounded), rebuilt from the results on replay.
        self.pareto = ParetoArchive(objectives) if objectives is not None and objectives.is_multi else None

    # --- events -------------------------------------------------------------------------
    def apply(self, event: dict) -> None:
        """The one place events change the state (live and replayed alike)."""
        kind, trial_id = event.get("e"), event.get("id")
        if kind == "trial" and event.get("final"):  # the final stage's: not counted against the budget
            assert self.make_final_message is not None, "a final trial in the log of a search without spec.final"
            self.inflight[trial_id] = InFlight(self.make_final_message(event), genotype_hash=event.get("hash"))
        elif kind == "trial":
            self.tally.created += 1
            trial = Trial(trial_id, event["genotype"], event.get("fidelity"), parent_id=event.get("parent"),
                          warm_start=event.get("warmStart"), schedule_epochs=event.get("scheduleEpochs"),
                          schedule_start=event.get("scheduleStart", 0))
            self.inflight[trial_id] = InFlight(self.make_message(trial, event.get("created", 0.0)),
                                               genotype_hash=event.get("hash"))
        elif kind == "result" and event.get("final"):
            self._forget(trial_id)
            if self.final is not None:
                self.final.note_result(event)
        elif kind == "result":
            flight = self._forget(trial_id)
            genotype = flight.message.genotype if flight else event.get("genotype")
            self._count(event, genotype)
            if event["status"] == "succeeded" and flight is not None:
                self.leaderboard.note(trial_id, flight.genotype_hash, genotype, event.get("reward"))
            if event["status"] == "succeeded" and self.pareto is not None:
                self.pareto.note(trial_id, event.get("accuracy"), event.get("cost"))
        elif kind == "cancel":
            flight = self._forget(trial_id)
            if flight is not None and flight.final:
                if self.final is not None:
                    self.final.note_cancel(trial_id)
            elif flight is not None:
                self.tally.cancelled += 1
        elif kind in ("finalStage", "finalModel"):
            # The search had finished: a restart must not apply its finish rules again (they would
            # count the final trials as the search's and stop them).
            self.finished, self.finishing = True, self.finishing or event.get("reason") or "Finished"
            if kind == "finalStage":
                self.final = FinalStage.begin([Candidate.from_json(c) for c in event["candidates"]])
            else:
                if self.final is None:  # skipped: the stage never began
                    self.final = FinalStage()
                model = event.get("model")
                self.final.end(FinalModel.model_validate(model) if model else None, event.get("error"))

    def record(self, event: dict) -> dict:
        """Apply a live event and keep it for the next checkpoint."""
        self.apply(event)
        self.unsaved.append(event)
        return event

    def take_unsaved(self) -> list[dict]:
        events, self.unsaved = self.unsaved, []
        return events

    def _forget(self, trial_id: str) -> Optional[InFlight]:
        flight = self.inflight.pop(trial_id, None)
        return flight if flight is not None else self.withdrawn.pop(trial_id, None)

    def _count(self, event: dict, genotype: Optional[dict]) -> None:
        t = self.tally
        status = event["status"]
        setattr(t, status, getattr(t, status) + 1)
        reward = event.get("reward")
        if status == "succeeded" and reward is not None and (t.best_reward is None or reward > t.best_reward):
            t.best_reward, t.best_trial, t.best_genotype = reward, event["id"], genotype
        t.recent.append(RecentTrial(id=event["id"], status=status, reward=reward))

    # --- trials -------------------------------------------------------------------------
    def pending(self, trial_id: str) -> Optional[InFlight]:
        """The trial if its result is still awaited (in flight or withdrawn); None: applied or unknown."""
        return self.inflight.get(trial_id) or self.withdrawn.get(trial_id)

    def create(self, trial: Trial, genotype_hash: str, now: float) -> InFlight:
        event = {"e": "trial", "id": trial.id, "genotype": trial.genotype, "fidelity": trial.fidelity,
                 "hash": genotype_hash, "created": now}
        if trial.parent_id is not None:  # starts from that trial's weights
            event.update(parent=trial.parent_id, warmStart=trial.warm_start)
        if trial.schedule_epochs is not None:  # part of a longer learning-rate schedule (PBT)
            event.update(scheduleEpochs=trial.schedule_epochs, scheduleStart=trial.schedule_start)
        self.record(event)
        return self.inflight[trial.id]

    def apply_result(self, msg: ResultMessage, verdict: Verdict, reward: Optional[float], now: float) -> dict:
        flight = self.pending(msg.trial_id)
        created = flight.message.created if flight else None
        if flight is not None and flight.final:
            return self.record({
                "e": "result", "final": True, "id": msg.trial_id, "status": verdict.status, "outcome": msg.status,
                "reward": verdict.accuracy, "accuracy": verdict.accuracy, "test_accuracy": msg.test_accuracy,
                "test_images": msg.test_images, "export_path": msg.export_path, "curve": list(msg.curve),
                "cost": dict(msg.cost), "epochs": msg.epochs, "error": verdict.error, "trainer": msg.trainer,
                "attempt": msg.attempt, "device": msg.device, "resumed_from_epoch": msg.resumed_from_epoch,
                "attempts": msg.attempts, "created": created, "started": msg.started, "finished": msg.finished,
                "applied": now})
        return self.record({
            "e": "result", "id": msg.trial_id, "status": verdict.status, "outcome": msg.status, "reward": reward,
            "accuracy": verdict.accuracy, "curve": list(msg.curve), "cost": dict(msg.cost), "epochs": msg.epochs,
            "error": verdict.error, "trainer": msg.trainer, "attempt": msg.attempt, "device": msg.device,
            "resumed_from_epoch": msg.resumed_from_epoch, "attempts": msg.attempts,
            "created": created, "started": msg.started, "finished": msg.finished, "applied": now})

    def cancel(self, trial_id: str, reason: str, now: float) -> None:
        self.record({"e": "cancel", "id": trial_id, "reason": reason, "applied": now})

    def progress(self, msg: ProgressMessage, now: float) -> tuple[Optional[InFlight], bool]:
        """Note a trainer's report: (the trial if in flight, whether this is a new attempt)."""
        flight = self.pending(msg.trial_id)
        if flight is None:
            return None, False
        new_attempt = flight.started is None or msg.attempt != flight.attempt
        if new_attempt:
            flight.started, flight.trainer, flight.attempt = msg.time or now, msg.trainer, msg.attempt
        if msg.epoch:
            flight.epoch = msg.epoch
        return flight, new_attempt

    # --- budget -------------------------------------------------------------------------
    @property
    def target_in_flight(self) -> int:
        """Trials to keep queued or running: one per trainer plus a few prefetched."""
        parallelism = self.budget.parallelism
        return parallelism + (self.prefetch if self.prefetch is not None else 1 + parallelism // 8)

    def room(self) -> int:
        """How many trials to create now."""
        if self.finishing or self.suspended or self.exhausted:
            return 0
        return max(0, min(self.target_in_flight - len(self.inflight), self.budget.max_trials - self.tally.total))

    def advance(self, seconds: float) -> None:
        """The search ran for `seconds` more (a suspended search's clock stands still)."""
        if not self.suspended:
            self.elapsed += max(0.0, seconds)

    def change_budget(self, budget: BudgetSpec) -> dict[str, tuple]:
        """Take a new live budget; field -> (old, new) of what changed."""
        old = self.budget.model_dump(by_alias=True)
        new = budget.model_dump(by_alias=True)
        self.budget = budget
        return {name: (old[name], new[name]) for name in new if old.get(name) != new[name]}

    def over_budget(self, now: float) -> list[str]:
        """Cancel trials not yet started (newest first) beyond a lowered maxTrials; their ids.
        Running trials finish: their work counts."""
        excess = self.tally.total - self.budget.max_trials
        cancelled: list[str] = []
        if excess <= 0 or self.finishing:
            return cancelled
        waiting = [f for f in self.withdrawn.values()] + [f for f in self.inflight.values() if f.started is None]
        for flight in sorted(waiting, key=lambda f: f.trial_id, reverse=True)[:excess]:
            self.cancel(flight.trial_id, "maxTrials lowered", now)
            cancelled.append(flight.trial_id)
        return cancelled

    def suspend(self, delivered: frozenset[str] = frozenset()) -> list[str]:
        """Hand nothing out; withdraw the trials no trainer has started (nor taken:
        `delivered`). Returns the withdrawn ids (their queue entries are to be deleted)."""
        self.suspended = True
        withdrawn = [f for f in self.inflight.values() if f.started is None and f.trial_id not in delivered]
        for flight in withdrawn:
            del self.inflight[flight.trial_id]
            flight.entry_id = flight.acknowledged_since = None
            self.withdrawn[flight.trial_id] = flight
        return [f.trial_id for f in withdrawn]

    def resume(self) -> list[InFlight]:
        """Hand out again; returns the withdrawn trials, back in flight (to publish), oldest first."""
        self.suspended = False
        returned = sorted(self.withdrawn.values(), key=lambda f: f.trial_id)
        self.withdrawn.clear()
        for flight in returned:
            self.inflight[flight.trial_id] = flight
        return returned

    # --- finishing ----------------------------------------------------------------------
    def finish_reason(self) -> Optional[str]:
        """Why the search should finish now, if it should."""
        budget, t = self.budget, self.tally
        waiting = self.inflight or self.withdrawn
        if t.failed > budget.max_failed_trials:
            return TOO_MANY_FAILED
        if self.target is not None and t.best_reward is not None and t.best_reward >= self.target:
            return TARGET
        if budget.max_duration_seconds is not None and self.elapsed >= budget.max_duration_seconds:
            return MAX_DURATION
        if not waiting and t.total >= budget.max_trials:
            return MAX_TRIALS
        if not waiting and self.exhausted:
            return EXHAUSTED
        return None

    def begin_finish(self, reason: str) -> None:
        if not self.finishing:
            self.finishing = reason

    def finish_step(self, grace_over: bool, now: float) -> tuple[list[str], list[str]]:
        """Withdraw what waits (everything once the grace is over); (cancelled ids, ids to stop).
        The search is finished when nothing is left in flight."""
        cancelled, to_stop = [], []
        for flight in list(self.withdrawn.values()) + list(self.inflight.values()):
            if flight.started is None or grace_over or flight.trial_id in self.withdrawn:
                self.cancel(flight.trial_id, self.finishing or "finishing", now)
                cancelled.append(flight.trial_id)
            else:
                to_stop.append(flight.trial_id)
        if not self.inflight and not self.withdrawn:
            self.finished = True
        return cancelled, to_stop

    # --- the final stage ----------------------------------------------------------------
    @property
    def in_final_stage(self) -> bool:
        """The search has finished and its final stage has not ended yet."""
        return self.finished and self.final_top_k is not None and not (self.final is not None and self.final.ended)

    @property
    def done(self) -> bool:
        """Nothing is left to do: the search finished, and its final stage too if it has one."""
        return self.finished and not self.in_final_stage

    def begin_final_stage(self, now: float) -> list[InFlight]:
        """Record the stage's candidates (the leaderboard's top-k) and create their final trials."""
        candidates = self.leaderboard.top(self.final_top_k)
        self.record({"e": "finalStage", "candidates": [c.to_json() for c in candidates], "reason": self.finishing,
                     "created": now})
        flights = []
        for trial_id, c in zip(final_trial_ids(candidates), candidates):
            self.record({"e": "trial", "final": True, "id": trial_id, "genotype": c.genotype, "hash": c.genotype_hash,
                         "source": c.trial_id, "created": now})
            flights.append(self.inflight[trial_id])
        return flights

    def end_final_stage(self, model: Optional[FinalModel], error: Optional[str], now: float) -> None:
        self.record({"e": "finalModel", "model": None if model is None else model.model_dump(mode="json"),
                     "error": error, "reason": self.finishing, "applied": now})

    # --- the summary --------------------------------------------------------------------
    def summary(self, updated: Optional[str] = None, deduplicated: int = 0) -> SearchSummary:
        t = self.tally
        search_flights = [f for f in list(self.inflight.values()) + list(self.withdrawn.values()) if not f.final]
        running = sum(1 for f in search_flights if f.started is not None and f.trial_id in self.inflight)
        waiting = len(search_flights) - running
        final, final_counts = self.final, None
        if final is not None:
            final_counts = final.counts(running=sum(1 for f in self.inflight.values() if f.final and f.started))
        return SearchSummary(
            trials=TrialCounts(total=t.total, pending=waiting, running=running, succeeded=t.succeeded,
                               failed=t.failed, stopped=t.stopped, deduplicated=deduplicated),
            best_reward=t.best_reward, best_trial=t.best_trial, best_genotype=t.best_genotype,
            finished=self.done, finish_reason=self.finishing if self.finished else None,
            stage="finalTraining" if self.finished and self.final_top_k is not None else "searching",
            final_trials=final_counts, final_model=final.model if final else None,
            final_error=final.error if final else None,
            updated=updated, recent=list(t.recent),
            **({} if self.pareto is None else dict(pareto_front=self.pareto.status_members(),
                                                   pareto_front_size=self.pareto.size,
                                                   hypervolume=self.pareto.hypervolume())))
