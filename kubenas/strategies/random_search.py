"""Random search: the whole contract in one page, and the baseline to beat."""

from __future__ import annotations

from kubenas.spaces import Genotype
from kubenas.strategies.base import Result, Strategy, Trial


class RandomSearch(Strategy):
    name = "random"

    def _propose(self) -> Genotype:
        return self.space.sample(self.rng)

    def _observe(self, trial: Trial, result: Result) -> None:
        pass  # random search learns nothing
