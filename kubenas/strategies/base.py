"""The strategy contract: ask for trials, tell results, save and restore state.

Results arrive asynchronously and out of order (trainers finish when they
finish), so `tell` may come for any pending trial, or twice for the same one.
`state_dict` holds everything in JSON-safe data (tensors allowed, no pickle),
so a restored strategy proposes exactly what the uninterrupted one would.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal, Optional

from kubenas.errors import KubenasError
from kubenas.spaces import Genotype, SearchSpace

TrialStatus = Literal["succeeded", "failed", "stopped"]


@dataclass
class Trial:
    id: str
    genotype: Genotype
    # Epochs to train; None means the search's default (multi-fidelity sets it).
    fidelity: Optional[int] = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Trial":
        return cls(**data)


@dataclass
class Result:
    """What a trained child network reports. `reward` is None only for failures."""

    reward: Optional[float]
    status: TrialStatus = "succeeded"
    curve: list[float] = field(default_factory=list)  # per-epoch validation metric
    cost: dict[str, float] = field(default_factory=dict)  # params, multiply_adds, latency...
    error: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Result":
        return cls(**data)


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
    name: ClassVar[str]

    def __init__(self, space: SearchSpace, seed: int = 0):
        self.space = space
        self.seed = seed
        self.rng = random.Random(seed)
        self.next_id = 0
        self.pending: dict[str, Trial] = {}

    def _new_trial(self, genotype: Genotype, fidelity: Optional[int] = None) -> Trial:
        trial = Trial(id=f"t{self.next_id:06d}", genotype=genotype, fidelity=fidelity)
        self.next_id += 1
        self.pending[trial.id] = trial
        return trial

    def ask(self, n: int = 1) -> list[Trial]:
        return [self._new_trial(self._propose()) for _ in range(n)]

    def tell(self, trial_id: str, result: Result) -> None:
        trial = self.pending.pop(trial_id, None)
        if trial is None:
            return  # unknown or already told: results are idempotent by trial id
        self._observe(trial, result)

    def inject(self, genotype: Genotype, fidelity: Optional[int] = None) -> Trial:
        """Register a trial this strategy did not propose (a warm start, or a
        wrapper's fallback); its result is then told like any other."""
        trial = self._new_trial(self.space.validate(genotype), fidelity)
        self._injected(trial)
        return trial

    def _injected(self, trial: Trial) -> None:
        """Hook for strategies that keep per-trial bookkeeping from `ask`."""

    @abstractmethod
    def _propose(self) -> Genotype:
        """One new genotype, from everything observed so far."""

    @abstractmethod
    def _observe(self, trial: Trial, result: Result) -> None:
        """Learn from one finished trial (called once per trial)."""

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
    the runtime never needs to know which wrappers are present.
    """

    def __init__(self, inner: Strategy):
        super().__init__(inner.space, inner.seed)
        self.inner = inner
        self.name = f"{type(self).name}({inner.name})"

    def _propose(self) -> Genotype:  # pragma: no cover - wrappers override ask
        raise NotImplementedError

    def _observe(self, trial: Trial, result: Result) -> None:  # pragma: no cover
        raise NotImplementedError

    def inject(self, genotype: Genotype, fidelity: Optional[int] = None) -> Trial:
        trial = self.inner.inject(genotype, fidelity)
        self.pending[trial.id] = trial
        return trial

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["inner"] = self.inner.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.inner.load_state_dict(state["inner"])
