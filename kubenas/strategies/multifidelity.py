"""Multi-fidelity: stop poor trials early, give good ones more epochs.

Schedulers are pure decision logic on learning curves. A trainer reports the
validation metric after every epoch; the scheduler answers
- `continue`: keep training towards the trial's current fidelity;
- `promote`: the trial reached its fidelity and earned more epochs
  (`TrainingDecision.fidelity` is the new target);
- `stop`: end the trial now (early stopped, or the last epoch is done).

`ASHA` is asynchronous successive halving (Li et al. 2020): rungs at
min_epochs * eta^k; a trial reaching a rung is promoted when its value is in
the top 1/eta of the values recorded at that rung so far, and stopped
otherwise, so no trial ever waits for others. `brackets > 1` makes it
asynchronous Hyperband: brackets start at successively higher rungs and share
new trials in Hyperband's proportions.

`MedianStopping` is the rule of Vizier (Golovin et al. 2017) and Katib's
medianstop: from `start_epoch` on, stop a trial whose best value so far is
strictly worse than the median of the running averages of completed trials
up to the same epoch, once `min_trials` have completed.

`MultiFidelity` wraps any strategy: its trials carry `fidelity`, and its
`report(trial_id, epoch, value)` answers with the scheduler's decision. An
early-stopped trial's accuracy is not a final reward: a strategy that is not
`fidelity_aware` is told only results trained to `max_epochs`; a trial
stopped before reaches it as status "stopped" with no reward. A fidelity-aware
strategy is told every result with its epochs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal, Optional

from kubenas.spaces import Genotype
from kubenas.strategies.base import (
    CONTINUE,
    PROMOTE,
    STOP,
    Result,
    Strategy,
    Trial,
    TrainingDecision,
    Wrapper,
)

Mode = Literal["max", "min"]
__all__ = ["ASHA", "CONTINUE", "PROMOTE", "STOP", "MedianStopping", "MultiFidelity", "Scheduler",
           "TrainingDecision", "quantile", "rung_epochs"]


def rung_epochs(min_epochs: int, max_epochs: int, eta: int) -> list[int]:
    """min_epochs * eta^k below max_epochs, then max_epochs itself."""
    if not 1 <= min_epochs <= max_epochs:
        raise ValueError(f"need 1 <= min_epochs <= max_epochs (got {min_epochs}, {max_epochs})")
    if eta < 2:
        raise ValueError(f"eta must be >= 2 (got {eta})")
    rungs, r = [], min_epochs
    while r < max_epochs:
        rungs.append(r)
        r *= eta
    return rungs + [max_epochs]


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), without numpy."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class Scheduler(ABC):
    """Decides per epoch; state is JSON-safe."""

    name: ClassVar[str]

    def __init__(self, max_epochs: int, mode: Mode = "max"):
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1 (got {max_epochs})")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min' (got {mode!r})")
        self.max_epochs = max_epochs
        self.mode = mode
        self.fidelity: dict[str, int] = {}  # running trial -> current target epochs

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def _score(self, value: float) -> float:
        """Larger is better, whatever the mode."""
        return value if self.mode == "max" else -value

    def start(self, trial_id: str) -> int:
        """The fidelity (epochs) a new trial starts with."""
        self.fidelity[trial_id] = self._first_fidelity(trial_id)
        return self.fidelity[trial_id]

    def _first_fidelity(self, trial_id: str) -> int:
        return self.max_epochs

    @abstractmethod
    def decide(self, trial_id: str, epoch: int, value: float) -> TrainingDecision:
        """The answer to a trial's report of `value` after `epoch` (1-based) epochs."""

    def finish(self, trial_id: str, status: str, curve: Optional[list[float]] = None) -> None:
        self.fidelity.pop(trial_id, None)

    def _end_or_continue(self, trial_id: str, epoch: int) -> Optional[TrainingDecision]:
        target = self.fidelity.setdefault(trial_id, self._first_fidelity(trial_id))
        if epoch >= self.max_epochs:
            return TrainingDecision(STOP, epoch, f"finished: reached max_epochs={self.max_epochs}")
        if epoch < target:
            return TrainingDecision(CONTINUE, target)
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"fidelity": dict(self.fidelity)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fidelity = dict(state["fidelity"])


class ASHA(Scheduler):
    name = "asha"

    def __init__(self, max_epochs: int, min_epochs: int = 1, eta: int = 3, brackets: int = 1,
                 mode: Mode = "max"):
        super().__init__(max_epochs, mode)
        self.eta = eta
        self.rungs = rung_epochs(min_epochs, max_epochs, eta)
        if not 1 <= brackets <= len(self.rungs):
            raise ValueError(f"brackets must be in 1..{len(self.rungs)} for rungs {self.rungs} (got {brackets})")
        self.brackets = brackets
        top = len(self.rungs) - 1
        # Hyperband's number of configurations for a bracket starting at rung b.
        self.weights = [math.ceil((top + 1) / (top - b + 1) * eta ** (top - b)) for b in range(brackets)]
        self.credit = [0.0] * brackets  # smooth weighted round-robin, deterministic
        self.bracket: dict[str, int] = {}
        # recorded[bracket][rung index] = {trial id: value at that rung}
        self.recorded: list[list[dict[str, float]]] = [[{} for _ in self.rungs] for _ in range(brackets)]

    def _first_fidelity(self, trial_id: str) -> int:
        if trial_id not in self.bracket:
            total = sum(self.weights)
            self.credit = [c + w for c, w in zip(self.credit, self.weights)]
            b = max(range(self.brackets), key=lambda i: (self.credit[i], -i))
            self.credit[b] -= total
            self.bracket[trial_id] = b
        return self.rungs[self.bracket[trial_id]]

    def decide(self, trial_id: str, epoch: int, value: float) -> TrainingDecision:
        early = self._end_or_continue(trial_id, epoch)
        b = self.bracket.get(trial_id, 0)
        if epoch in self.rungs and epoch < self.max_epochs:
            self.recorded[b][self.rungs.index(epoch)][trial_id] = value
        if early is not None:
            return early
        k = self.rungs.index(self.fidelity[trial_id])
        values = [self._score(v) for v in self.recorded[b][k].values()]
        cutoff = quantile(values, 1 - 1 / self.eta)
        if self._score(value) >= cutoff:
            self.fidelity[trial_id] = self.rungs[k + 1]
            return TrainingDecision(PROMOTE, self.rungs[k + 1],
                                    f"in the top 1/{self.eta} of {len(values)} at {epoch} epochs")
        return TrainingDecision(STOP, epoch, f"below the top 1/{self.eta} of {len(values)} at {epoch} epochs "
                                             f"(cutoff {self._score(cutoff):g})")

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(credit=list(self.credit), bracket=dict(self.bracket),
                     recorded=[[dict(r) for r in rungs] for rungs in self.recorded])
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.credit = list(state["credit"])
        self.bracket = dict(state["bracket"])
        self.recorded = [[dict(r) for r in rungs] for rungs in state["recorded"]]


class MedianStopping(Scheduler):
    name = "median"

    def __init__(self, max_epochs: int, min_trials: int = 3, start_epoch: int = 4, mode: Mode = "max"):
        super().__init__(max_epochs, mode)
        if min_trials < 1 or start_epoch < 1:
            raise ValueError(f"median stopping: min_trials and start_epoch must be >= 1 "
                             f"(got {min_trials}, {start_epoch})")
        self.min_trials = min_trials
        self.start_epoch = start_epoch
        self.curves: dict[str, list[float]] = {}
        self.completed: list[str] = []

    def decide(self, trial_id: str, epoch: int, value: float) -> TrainingDecision:
        curve = self.curves.setdefault(trial_id, [])
        del curve[epoch - 1:]  # a re-sent report replaces what followed it
        curve.extend([value] * (epoch - len(curve)))
        early = self._end_or_continue(trial_id, epoch)
        if early is not None and early.action == STOP:
            return early
        target = self.fidelity[trial_id]
        if epoch < self.start_epoch:
            return TrainingDecision(CONTINUE, target, f"before start_epoch={self.start_epoch}")
        averages = [sum(c[:epoch]) / epoch for t, c in ((t, self.curves[t]) for t in self.completed)
                    if t != trial_id and len(c) >= epoch]
        if len(averages) < self.min_trials:
            return TrainingDecision(CONTINUE, target, f"{len(averages)} completed trials reached epoch {epoch}; "
                                                      f"min_trials={self.min_trials}")
        median = quantile([self._score(a) for a in averages], 0.5)
        best = max(self._score(v) for v in curve[:epoch])
        if best < median:
            return TrainingDecision(STOP, epoch, f"best {self._score(best):g} is worse than the median "
                                                 f"{self._score(median):g} of {len(averages)} completed trials "
                                                 f"at epoch {epoch}")
        return TrainingDecision(CONTINUE, target)

    def finish(self, trial_id: str, status: str, curve: Optional[list[float]] = None) -> None:
        super().finish(trial_id, status, curve)
        if curve and len(curve) > len(self.curves.get(trial_id, [])):
            self.curves[trial_id] = list(curve)
        if status == "succeeded" and trial_id in self.curves and trial_id not in self.completed:
            self.completed.append(trial_id)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(curves={k: list(v) for k, v in self.curves.items()}, completed=list(self.completed))
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.curves = {k: list(v) for k, v in state["curves"].items()}
        self.completed = list(state["completed"])


class MultiFidelity(Wrapper):
    """Any strategy, with its trials' epochs managed by a scheduler."""

    name = "multifidelity"

    def __init__(self, inner: Strategy, scheduler: Scheduler):
        super().__init__(inner)
        self.scheduler = scheduler

    def ask(self, n: int = 1) -> list[Trial]:
        trials = self.inner.ask(n)
        for trial in trials:
            if trial.fidelity is not None:
                raise ValueError(f"{self.inner.name} schedules its own epochs: it cannot run under early "
                                 f"stopping ({self.scheduler.name}) as well")
            trial.fidelity = self.scheduler.start(trial.id)
            self.pending[trial.id] = trial
        return trials

    def inject(self, genotype: Genotype, fidelity: Optional[int] = None) -> Trial:
        trial = super().inject(genotype, fidelity)
        trial.fidelity = self.scheduler.start(trial.id)
        return trial

    def report(self, trial_id: str, epoch: int, value: float) -> TrainingDecision:
        trial = self.pending.get(trial_id)
        if trial is None:
            return TrainingDecision(STOP, epoch, "unknown or finished trial")
        decision = self.scheduler.decide(trial_id, epoch, value)
        trial.fidelity = decision.fidelity if decision.action != STOP else trial.fidelity
        return decision

    def tell(self, trial_id: str, result: Result) -> None:
        trial = self.pending.pop(trial_id, None)
        if trial is None:
            return
        self.scheduler.finish(trial_id, result.status, result.curve)
        if not self.inner.fidelity_aware and self._partial(result):
            result = Result(reward=None, status="stopped", curve=list(result.curve), cost=dict(result.cost),
                            error=result.error or f"stopped after {result.trained_epochs()} of "
                                                  f"{self.scheduler.max_epochs} epochs",
                            epochs=result.epochs)
        self.inner.tell(trial_id, result)

    def _partial(self, result: Result) -> bool:
        """Stopped, or succeeded short of max_epochs: an accuracy that is not a final reward."""
        if result.status == "stopped":
            return True
        trained = result.trained_epochs()
        return result.status == "succeeded" and trained is not None and trained < self.scheduler.max_epochs

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.scheduler.load_state_dict(state["scheduler"])
