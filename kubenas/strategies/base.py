"""The strategy contract: ask for trials, tell results, save and restore state.

`Strategy` is the contract (its docstring has the call order and an example);
`Wrapper` stacks one strategy around another; `Trial`, `Result` and
`TrainingDecision` are the plain data that cross the contract.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Literal, Optional

from kubenas.errors import KubenasError
from kubenas.spaces import Genotype, SearchSpace

TrialStatus = Literal["succeeded", "failed", "stopped"]
CONTINUE, STOP, PROMOTE = "continue", "stop", "promote"
Action = Literal["continue", "stop", "promote"]
WarmStart = Literal["inherit", "resume"]


@dataclass
class Trial:
    id: str
    genotype: Genotype
    # Epochs to train towards; None means the search's default. A strategy that
    # sets it schedules the trial's epochs and answers `report` for it.
    fidelity: Optional[int] = None
    # The trial whose weights this one starts from (None: from scratch), and how:
    # "inherit" copies the weights of every part whose position and operation are
    # unchanged into a fresh network of this genotype (kubenas.nn.inherit);
    # "resume" loads the parent's full weights into the same architecture and
    # trains on, possibly with new hyperparameters (PBT's exploit).
    parent_id: Optional[str] = None
    warm_start: Optional[WarmStart] = None
    # The learning-rate schedule this trial is a part of: a cosine over `schedule_epochs`
    # epochs, entered at epoch `schedule_start` (PBT: an interval continues its member's
    # schedule over max_epochs). None: the trial's own epochs, from the start.
    schedule_epochs: Optional[int] = None
    schedule_start: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Trial":
        return cls(**data)  # states saved before parent_id/warm_start existed load with the defaults


@dataclass
class Result:
    """What a trained child network reports. `reward` is None only for failures
    and for trials stopped before their full budget (see `MultiFidelity`)."""

    reward: Optional[float]
    status: TrialStatus = "succeeded"
    curve: list[float] = field(default_factory=list)  # per-epoch validation metric
    cost: dict[str, float] = field(default_factory=dict)  # params, multiply_adds, latency...
    error: Optional[str] = None
    epochs: Optional[int] = None  # epochs actually trained (None: not known)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Result":
        return cls(**data)

    def trained_epochs(self) -> Optional[int]:
        """Epochs trained: as reported, else the curve's length, else unknown."""
        return self.epochs or len(self.curve) or None


@dataclass(frozen=True)
class TrainingDecision:
    """A scheduler's answer to a trial's epoch report."""

    action: Action  # continue, promote (train on to `fidelity`), stop
    fidelity: int  # epochs the trial trains to from now on
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class SearchExhausted(KubenasError):
    """No new trial can be proposed (the space is used up, or every proposal is rejected)."""


def rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


def numpy_rng_state(rng: Any) -> dict:
    """A numpy Generator's bit-generator state as JSON-safe data (ints stay exact)."""
    return _jsonable(rng.bit_generator.state)


def set_numpy_rng_state(rng: Any, state: dict) -> None:
    rng.bit_generator.state = state


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    return value


def derive_seed(*parts: Any) -> int:
    """A 32-bit seed from a seed and labels, stable across processes (no hash())."""
    text = "/".join(str(p) for p in parts)
    h = 2166136261
    for byte in text.encode():
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return h


class Strategy(ABC):
    """A search strategy: proposes trials, learns from their results.

    A strategy is a class with one abstract method, `ask` (one that proposes a
    genotype at a time writes it as `self._ask_each(n, self._propose)`), and
    learns in `_observe`; everything else has a default. The call order, the
    same for every strategy and every wrapper:

    1. `ask(n)` proposes up to n new trials (ids "t000000", "t000001", ...);
       they stay in `pending` until their result is told. Fewer, even none,
       means nothing to propose for now (PBT while every member trains): ask
       again after a result; `SearchExhausted` means nothing ever again. A
       trial may name a finished trial to start from (`parent_id`, `warm_start`).
    2. `inject(genotype)` registers a trial the strategy did not propose (a warm
       start, a wrapper's fallback); its result is told like any other.
    3. While a trial trains: `report(trial_id, epoch, value)` after every epoch;
       a strategy that schedules epochs (multi-fidelity) answers with a
       `TrainingDecision`, the others with None.
    4. `objective(trial_id, accuracy, cost)` turns a finished trial's accuracy
       into the search's reward (the cost penalty, when there is one); call it
       before `tell`, while the trial's estimated costs are still known.
    5. `tell(trial_id, result)` once per trial, in any order (results arrive when
       trainers finish); a repeat or an unknown id is ignored. `result.epochs`
       says how long the trial trained; a strategy that is not `fidelity_aware`
       is never told a partial accuracy as a reward (see `MultiFidelity`).
    6. `state_dict()` at any time, JSON-safe (tensors allowed, no pickle);
       `load_state_dict` on a fresh strategy built with the same arguments
       restores it so that it proposes exactly what the uninterrupted one would.

    `known_hash(trial_id)` and `stats()` let the process running the search read
    what the strategy already knows (a genotype's hash, deduplication counts, the
    policy's entropy) without looking inside wrappers.

    >>> from kubenas.spaces import build_space
    >>> from kubenas.strategies import Result, make_strategy
    >>> space = build_space("nasbench201")
    >>> strategy = make_strategy("random", space, seed=0)
    >>> trials = strategy.ask(2)
    >>> warm = strategy.inject(trials[0].genotype)
    >>> strategy.report(trials[0].id, 1, 0.42) is None  # random search schedules no epochs
    True
    >>> for trial in reversed(trials + [warm]):
    ...     reward = strategy.objective(trial.id, 0.9, {"params": 1e5})
    ...     strategy.tell(trial.id, Result(reward=reward, epochs=12))
    >>> strategy.pending
    {}
    >>> restored = make_strategy("random", space, seed=0)
    >>> restored.load_state_dict(strategy.state_dict())
    >>> restored.ask(1)[0].genotype == strategy.ask(1)[0].genotype
    True
    """

    name: ClassVar[str]
    # True: told every result with the epochs it was trained for, partial ones
    # included. False: told only final results; a trial stopped early arrives
    # as status "stopped" with no reward.
    fidelity_aware: ClassVar[bool] = False
    # True: proposes a genotype again on purpose (PBT trains a member in intervals),
    # so deduplication must not answer a repeat from an earlier result.
    repeats: ClassVar[bool] = False

    def __init__(self, space: SearchSpace, seed: int = 0):
        self.space = space
        self.seed = seed
        self.rng = random.Random(seed)
        self.next_id = 0
        self.pending: dict[str, Trial] = {}

    # --- proposing -------------------------------------------------------------
    @abstractmethod
    def ask(self, n: int = 1) -> list[Trial]:
        """Up to `n` new trials (registered with `_new_trial`), from everything told so far."""

    def _new_trial(self, genotype: Genotype, fidelity: Optional[int] = None, parent_id: Optional[str] = None,
                   warm_start: Optional[WarmStart] = None, schedule_epochs: Optional[int] = None,
                   schedule_start: int = 0) -> Trial:
        """Register a proposal; `warm_start` applies only when a parent is named."""
        trial = Trial(id=f"t{self.next_id:06d}", genotype=genotype, fidelity=fidelity, parent_id=parent_id,
                      warm_start=warm_start if parent_id is not None else None, schedule_epochs=schedule_epochs,
                      schedule_start=schedule_start)
        self.next_id += 1
        self.pending[trial.id] = trial
        return trial

    def _ask_each(self, n: int, propose: Callable[[], Genotype]) -> list[Trial]:
        """`ask` for strategies that propose one genotype at a time, each
        proposal seeing the ones before it."""
        return [self._new_trial(propose()) for _ in range(max(n, 0))]

    def _ask_children(self, n: int, propose: Callable[[], tuple[Genotype, Optional[str]]],
                      inherit_weights: bool) -> list[Trial]:
        """`ask` for strategies that derive each proposal from an earlier trial (`propose`
        returns the genotype and that trial's id): the parent is named, for a warm start
        from its weights, only when the search inherits weights."""
        trials = []
        for _ in range(max(n, 0)):
            genotype, parent_id = propose()
            trials.append(self._new_trial(genotype, parent_id=parent_id if inherit_weights else None,
                                          warm_start="inherit"))
        return trials

    def inject(self, genotype: Genotype, fidelity: Optional[int] = None) -> Trial:
        """Register a trial this strategy did not propose (a warm start, or a
        wrapper's fallback); its result is then told like any other."""
        trial = self._new_trial(self.space.validate(genotype), fidelity)
        self._injected(trial)
        return trial

    def _injected(self, trial: Trial) -> None:
        """Hook for strategies that keep per-trial bookkeeping from `ask`."""

    # --- while training and when finished -----------------------------------------
    def report(self, trial_id: str, epoch: int, value: float) -> Optional[TrainingDecision]:
        """A trial's validation `value` after `epoch` epochs; None: no scheduler, train on."""
        return None

    def objective(self, trial_id: str, accuracy: Optional[float], cost: dict[str, float]) -> Optional[float]:
        """The search's reward for a trial's accuracy and measured costs (the accuracy itself here)."""
        return accuracy

    def tell(self, trial_id: str, result: Result) -> None:
        trial = self.pending.pop(trial_id, None)
        if trial is None:
            return  # unknown or already told: results are idempotent by trial id
        self._observe(trial, result)

    def _observe(self, trial: Trial, result: Result) -> None:
        """Learn from one finished trial (called once per trial); learns nothing by default."""

    # --- what the search process may read ---------------------------------------------
    def known_hash(self, trial_id: str) -> Optional[str]:
        """The space's hash of a pending trial's genotype, if already computed."""
        return None

    def stats(self) -> dict[str, float]:
        """Counters and gauges for the search's metrics (e.g. deduplicated, policy_entropy)."""
        return {}

    def checkpoints_needed(self) -> set[str]:
        """Finished trials a later proposal may name as its parent: their checkpoints must be
        kept (the others may be deleted once their trials finish)."""
        return set()

    # --- state -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "rng": rng_state(self.rng),
            "next_id": self.next_id,
            "pending": [t.to_dict() for t in self.pending.values()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"checkpoint is for strategy {state.get('name')!r}, not {self.name!r}")
        self.seed = state["seed"]
        set_rng_state(self.rng, state["rng"])
        self.next_id = state["next_id"]
        self.pending = {t["id"]: Trial.from_dict(t) for t in state["pending"]}


class Wrapper(Strategy):
    """A strategy around another one (dedup, constraints, multi-fidelity).

    Trials keep the inner strategy's ids, so wrappers stack in any order and
    the runtime never needs to know which wrappers are present: every contract
    method a wrapper does not answer itself goes to the inner strategy, and
    `stats` merges the layers' counters.
    """

    def __init__(self, inner: Strategy):
        super().__init__(inner.space, inner.seed)
        self.inner = inner
        self.name = f"{type(self).name}({inner.name})"

    @property  # type: ignore[override]
    def fidelity_aware(self) -> bool:
        return self.inner.fidelity_aware

    @property  # type: ignore[override]
    def repeats(self) -> bool:
        return self.inner.repeats

    def ask(self, n: int = 1) -> list[Trial]:
        trials = self.inner.ask(n)
        for trial in trials:
            self.pending[trial.id] = trial
        return trials

    def inject(self, genotype: Genotype, fidelity: Optional[int] = None) -> Trial:
        trial = self.inner.inject(genotype, fidelity)
        self.pending[trial.id] = trial
        return trial

    def report(self, trial_id: str, epoch: int, value: float) -> Optional[TrainingDecision]:
        return self.inner.report(trial_id, epoch, value)

    def objective(self, trial_id: str, accuracy: Optional[float], cost: dict[str, float]) -> Optional[float]:
        return self.inner.objective(trial_id, accuracy, cost)

    def tell(self, trial_id: str, result: Result) -> None:
        if self.pending.pop(trial_id, None) is not None:
            self.inner.tell(trial_id, result)

    def known_hash(self, trial_id: str) -> Optional[str]:
        return self.inner.known_hash(trial_id)

    def checkpoints_needed(self) -> set[str]:
        return self.inner.checkpoints_needed()

    def stats(self) -> dict[str, float]:
        return {**self.inner.stats(), **self._own_stats()}

    def _own_stats(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["inner"] = self.inner.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.inner.load_state_dict(state["inner"])
        # One object per trial through the stack, as after `ask`: a layer that updates a
        # pending trial (its fidelity, on a promotion) updates the one the runtime holds.
        self.pending = {k: self.inner.pending.get(k, t) for k, t in self.pending.items()}
