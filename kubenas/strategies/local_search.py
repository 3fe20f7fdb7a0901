"""Local search (White et al. 2021, "Local search is state of the art for NAS benchmarks").

Hill climbing on the one-change neighbourhood: evaluate the neighbours of the
current architecture in random order and move to the first one that beats
it; at a local optimum (every neighbour evaluated, none better), restart from
a random architecture. Asynchronous: an improving result arriving at any time
moves the centre, and the queue is rebuilt from the new centre's neighbours.
With `inherit_weights`, a neighbour names the centre's trial as its parent
(`Trial.parent_id`, `warm_start="inherit"`).

With several objectives (`objectives.is_multi`) it is Pareto local search
(Paquete et al. 2004): an archive keeps the non-dominated architectures found;
the centre is the unexplored archive member with the largest crowding distance
(the front's ends first, then its sparsest stretches), its neighbours are
evaluated, and every result the archive does not dominate joins it (dropping the
members it dominates; one that dominates the centre becomes the centre at once,
as an improvement does with one objective). When every member has been explored,
the search restarts from a random architecture. One objective behaves exactly as before.
"""

from __future__ import annotations

from typing import Any, Optional

from kubenas.objectives import Objectives, crowding_distance, dominates
from kubenas.spaces import Genotype, SearchSpace
from kubenas.strategies.base import Result, Strategy, Trial
from kubenas.strategies.encoding import Encoding


class LocalSearch(Strategy):
    name = "local-search"

    def __init__(self, space: SearchSpace, seed: int = 0, initial: int = 1, inherit_weights: bool = False,
                 objectives: Optional[Objectives] = None):
        """`initial`: random architectures evaluated before the first climb starts;
        `inherit_weights`: neighbours start from the centre's weights."""
        super().__init__(space, seed)
        if initial < 1:
            raise ValueError(f"local-search: initial must be >= 1 (got {initial})")
        self.initial = initial
        self.inherit_weights = inherit_weights
        self.encoding = Encoding(space)
        self.seen: set[tuple[int, ...]] = set()  # proposed index vectors
        self.centre: Optional[list[int]] = None
        self.centre_reward = float("-inf")
        self.centre_id: Optional[str] = None  # the trial that evaluated the centre
        self.queue: list[list[int]] = []
        self.to_start = initial  # random proposals still to make before/after a restart
        self.restarts = 0
        self.objectives = objectives or Objectives()
        # Several objectives: the non-dominated archive, each member
        # {"ind": indices, "point": minimised values, "id": trial id, "explored": bool}.
        self.archive: list[dict[str, Any]] = []

    def _random_unseen(self) -> list[int]:
        for _ in range(1000):
            ind = self.encoding.random(self.rng)
            if tuple(ind) not in self.seen:
                return ind
        return ind  # nearly exhausted space: a repeat (the dedup layer answers it)

    def ask(self, n: int = 1) -> list[Trial]:
        return self._ask_children(n, self._propose, self.inherit_weights)

    def _propose(self) -> tuple[Genotype, Optional[str]]:
        """A genotype and the trial it is a neighbour of (None: a random start)."""
        if self.objectives.is_multi:
            return self._propose_pareto()
        ind: Optional[list[int]] = None
        parent_id: Optional[str] = None
        if self.to_start > 0 or self.centre is None:
            self.to_start = max(0, self.to_start - 1)
        else:
            while self.queue:
                candidate = self.queue.pop()
                if tuple(candidate) not in self.seen:
                    ind, parent_id = candidate, self.centre_id
                    break
            else:
                # Local optimum (or its last neighbours still training): restart.
                self.restarts += 1
                self.centre, self.centre_reward, self.centre_id = None, float("-inf"), None
                self.to_start = self.initial - 1
        if ind is None:
            ind = self._random_unseen()
        self.seen.add(tuple(ind))
        return self.encoding.genotype(ind), parent_id

    def _propose_pareto(self) -> tuple[Genotype, Optional[str]]:
        ind: Optional[list[int]] = None
        parent_id: Optional[str] = None
        if self.to_start > 0:
            self.to_start -= 1
        else:
            while ind is None:
                while self.queue:
                    candidate = self.queue.pop()
                    if tuple(candidate) not in self.seen:
                        ind, parent_id = candidate, self.centre_id
                        break
                if ind is not None:
                    break
                had_centre = self.centre is not None
                if not self._next_centre():
                    if had_centre:  # every member's neighbourhood explored: restart from random ones
                        self.restarts += 1
                        self.to_start = self.initial - 1
                    break
        if ind is None:
            ind = self._random_unseen()
        self.seen.add(tuple(ind))
        return self.encoding.genotype(ind), parent_id

    def _next_centre(self) -> bool:
        """Move to the unexplored archive member with the largest crowding distance; False if none."""
        if self.centre is not None:
            for member in self.archive:
                if member["ind"] == self.centre:
                    member["explored"] = True
        self.centre, self.centre_id, self.queue = None, None, []
        open_members = [k for k, m in enumerate(self.archive) if not m["explored"]]
        if not open_members:
            return False
        crowding = crowding_distance([m["point"] for m in self.archive], range(len(self.archive)))
        best = max(open_members, key=lambda k: (crowding[k], -k))
        self._move_to(self.archive[best])
        return True

    def _move_to(self, member: dict[str, Any]) -> None:
        self.centre, self.centre_id = list(member["ind"]), member["id"]
        self.queue = [nb for nb in self.encoding.neighbours(member["ind"]) if tuple(nb) not in self.seen]
        self.rng.shuffle(self.queue)

    def _observe_pareto(self, trial: Trial, result: Result) -> None:
        values = self.objectives.values(result.reward, result.cost)
        if values is None:
            return
        point = self.objectives.minimized(values)
        if any(dominates(m["point"], point) or m["point"] == point for m in self.archive):
            return
        beaten = [m for m in self.archive if dominates(point, m["point"])]
        member = {"ind": self.encoding.indices(trial.genotype), "point": point, "id": trial.id, "explored": False}
        self.archive = [m for m in self.archive if m not in beaten] + [member]
        if self.centre is None or any(m["ind"] == self.centre for m in beaten):
            member["explored"] = True  # explored from now on (as the centre)
            self._move_to(member)

    def _observe(self, trial: Trial, result: Result) -> None:
        if result.reward is None:
            return
        if self.objectives.is_multi:
            self.seen.add(tuple(self.encoding.indices(trial.genotype)))
            self._observe_pareto(trial, result)
            return
        ind = self.encoding.indices(trial.genotype)
        self.seen.add(tuple(ind))
        if result.reward > self.centre_reward:
            self.centre, self.centre_reward, self.centre_id = ind, float(result.reward), trial.id
            self.queue = [nb for nb in self.encoding.neighbours(ind) if tuple(nb) not in self.seen]
            self.rng.shuffle(self.queue)

    def checkpoints_needed(self) -> set[str]:
        return {self.centre_id} if self.inherit_weights and self.centre_id is not None else set()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            seen=sorted(list(s) for s in self.seen), centre=self.centre,
            centre_reward=None if self.centre is None or self.objectives.is_multi else self.centre_reward,
            queue=self.queue, to_start=self.to_start, restarts=self.restarts, centre_id=self.centre_id,
        )
        if self.objectives.is_multi:
            state["archive"] = [dict(m, point=list(m["point"])) for m in self.archive]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.seen = {tuple(s) for s in state["seen"]}
        self.centre = state["centre"]
        self.centre_reward = float("-inf") if state["centre_reward"] is None else float(state["centre_reward"])
        self.queue = [list(q) for q in state["queue"]]
        self.to_start = state["to_start"]
        self.restarts = state["restarts"]
        self.centre_id = state.get("centre_id")  # absent from states saved before inheritance
        self.archive = [dict(m, point=tuple(m["point"])) for m in state.get("archive", [])]
