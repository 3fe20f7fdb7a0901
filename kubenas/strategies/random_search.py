"""Random search: the whole contract in one page, and the baseline to beat."""

from __future__ import annotations

from kubenas.strategies.base import Strategy, Trial


class RandomSearch(Strategy):
    """Uniform over the space. It learns nothing, so the base class's `tell`
    (which retires the trial) is all it needs."""

    name = "random"

    def ask(self, n: int = 1) -> list[Trial]:
        return self._ask_each(n, lambda: self.space.sample(self.rng))
