"""Regularized (aging) evolution (Real et al. 2019, AmoebaNet).

The population is the `population` most recently finished trials. A new
trial mutates the best of `sample` members drawn at random; the oldest member
dies when a new one arrives, whatever its reward. Until `population` trials
have been proposed (or while no result is in yet), proposals are random.
Asynchronous by nature: results join the population in completion order.
With `inherit_weights`, a child names its parent (`Trial.parent_id`) and
starts from the parent's weights where the mutation left the network
unchanged (`warm_start="inherit"`, Real et al. 2017).

With several objectives (`objectives.is_multi`) "best" is the member with the
lowest non-dominated rank in the population, then the largest crowding distance
(NSGA-II's order, Deb et al. 2002), so tournaments favour the front and its less
crowded stretches; aging is unchanged. One objective behaves exactly as before.
"""

from __future__ import annotations

from typing import Any, Optional

from kubenas.objectives import Objectives, rank_and_crowding
from kubenas.spaces import Genotype, SearchSpace
from kubenas.strategies.base import Result, Strategy, Trial
from kubenas.strategies.encoding import Encoding


class RegularizedEvolution(Strategy):
    name = "evolution"

    def __init__(self, space: SearchSpace, seed: int = 0, population: int = 100, sample: int = 25,
                 inherit_weights: bool = False, objectives: Optional[Objectives] = None):
        super().__init__(space, seed)
        if population < 1 or not 1 <= sample <= population:
            raise ValueError(f"evolution: need population >= 1 and 1 <= sample <= population "
                             f"(got population={population}, sample={sample})")
        self.population_size = population
        self.sample_size = sample
        self.encoding = Encoding(space)
        self.inherit_weights = inherit_weights
        self.population: list[tuple[list[int], float]] = []  # oldest first
        self.member_ids: list[Optional[str]] = []  # the trial of each member: a child's parent
        self.proposed = 0
        self.objectives = objectives or Objectives()
        # Several objectives: each member's values (minimised), and the order they give (cached).
        self.points: list[tuple[float, ...]] = []
        self._order: Optional[list[tuple[int, float]]] = None

    def ask(self, n: int = 1) -> list[Trial]:
        return self._ask_children(n, self._propose, self.inherit_weights)

    def _propose(self) -> tuple[Genotype, Optional[str]]:
        """A genotype and the id of the trial it mutates (None: a random one)."""
        self.proposed += 1
        if self.proposed <= self.population_size or not self.population:
            return self.encoding.genotype(self.encoding.random(self.rng)), None
        k = min(self.sample_size, len(self.population))
        contenders = self.rng.sample(range(len(self.population)), k)
        if self.objectives.is_multi:
            if self._order is None:
                self._order = rank_and_crowding(self.points)
            parent = min(contenders, key=lambda i: (self._order[i], i))
        else:
            parent = max(contenders, key=lambda i: (self.population[i][1], -i))
        child = self.encoding.mutate(self.population[parent][0], self.rng)
        return self.encoding.genotype(child), self.member_ids[parent]

    def _observe(self, trial: Trial, result: Result) -> None:
        if result.reward is None:
            return  # a failed child does not join the population
        if self.objectives.is_multi:
            values = self.objectives.values(result.reward, result.cost)
            if values is None:
                return  # a metric was not measured: nothing to rank it by
            self.points.append(self.objectives.minimized(values))
            self._order = None
        self.population.append((self.encoding.indices(trial.genotype), float(result.reward)))
        self.member_ids.append(trial.id)
        if len(self.population) > self.population_size:
            self.population.pop(0)  # aging: the oldest dies
            self.member_ids.pop(0)
            if self.objectives.is_multi:
                self.points.pop(0)

    def checkpoints_needed(self) -> set[str]:
        return {i for i in self.member_ids if i is not None} if self.inherit_weights else set()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(population=[[list(ind), r] for ind, r in self.population], member_ids=list(self.member_ids),
                     proposed=self.proposed)
        if self.objectives.is_multi:
            state["points"] = [list(p) for p in self.points]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.population = [(list(ind), float(r)) for ind, r in state["population"]]
        # States saved before members' trial ids were kept: no parent to name.
        self.member_ids = list(state.get("member_ids", [None] * len(self.population)))
        self.proposed = state["proposed"]
        self.points = [tuple(p) for p in state.get("points", [])]
        self._order = None
