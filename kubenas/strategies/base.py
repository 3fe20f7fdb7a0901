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


def rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: list) -> None:
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


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
