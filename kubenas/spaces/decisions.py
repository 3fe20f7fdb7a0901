"""Decisions: the flat sequence of choices every search space exposes.

Strategies never look inside a genotype. They see an ordered list of
decisions (categorical, integer or float) and an assignment `{name: value}`;
each space maps assignments to genotypes and back. This is what lets one LSTM
policy, one evolution loop and one Optuna adapter serve every space.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Union

from kubenas.errors import InvalidGenotype

Value = Union[int, float, str]


@dataclass(frozen=True)
class Categorical:
    name: str
    choices: tuple[Any, ...]

    @property
    def size(self) -> int:
        return len(self.choices)

    def sample(self, rng: random.Random) -> Any:
        return self.choices[rng.randrange(len(self.choices))]

    def index(self, value: Any) -> int:
        try:
            return self.choices.index(value)
        except ValueError:
            raise InvalidGenotype(
                f"{self.name}: {value!r} is not accepted; choose one of {list(self.choices)}"
            ) from None

    def validate(self, value: Any) -> Any:
        self.index(value)
        return value


@dataclass(frozen=True)
class Numeric:
    """An integer or float range; `log` samples uniformly in log space."""

    name: str
    low: float
    high: float
    log: bool = False
    integer: bool = False
    # Bins used where a strategy needs categories (the LSTM policy of ppo and reinforce).
    bins: int = 8

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"{self.name}: low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"{self.name}: a log range needs low > 0 (got {self.low})")

    def from_unit(self, u: float) -> Value:
        """Map u in [0, 1] onto the range."""
        u = min(max(u, 0.0), 1.0)
        if self.log:
            x = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            x = self.low + u * (self.high - self.low)
        x = min(max(x, self.low), self.high)  # exp/log round-off must not leave the range
        return int(round(x)) if self.integer else float(x)

    def to_unit(self, value: float) -> float:
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def sample(self, rng: random.Random) -> Value:
        return self.from_unit(rng.random())

    def validate(self, value: Any) -> Value:
        ok_type = isinstance(value, int) if self.integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok_type:
            kind = "an integer" if self.integer else "a number"
            raise InvalidGenotype(f"{self.name}: expected {kind}, got {value!r}")
        if not (self.low <= value <= self.high):
            raise InvalidGenotype(
                f"{self.name}: {value!r} is outside the accepted range [{self.low}, {self.high}]"
            )
        return int(value) if self.integer else float(value)

    # Categorical view for strategies that only speak categories.
    @property
    def size(self) -> int:
        return self.bins

    def bin_value(self, i: int) -> Value:
        return self.from_unit((i + 0.5) / self.bins)

    def bin_index(self, value: float) -> int:
        return min(int(self.to_unit(value) * self.bins), self.bins - 1)


Decision = Union[Categorical, Numeric]
Assignment = dict[str, Any]


def sample_assignment(decisions: list[Decision], rng: random.Random) -> Assignment:
    return {d.name: d.sample(rng) for d in decisions}


def to_indices(decisions: list[Decision], assignment: Assignment) -> list[int]:
    """Categorical indices of an assignment (numeric decisions are binned)."""
    return [d.index(assignment[d.name]) if isinstance(d, Categorical) else d.bin_index(assignment[d.name])
            for d in decisions]


def from_indices(decisions: list[Decision], indices: list[int]) -> Assignment:
    return {d.name: d.choices[i] if isinstance(d, Categorical) else d.bin_value(i)
            for d, i in zip(decisions, indices, strict=True)}
