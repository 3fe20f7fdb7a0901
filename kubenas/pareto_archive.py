"""The controller's Pareto front: the non-dominated trials of a multi-objective search.

Pure: the search state feeds it every succeeded result (live and replayed alike, so
a restart rebuilds it from the trial log) and asks it for the summary's part.

Bounded: past `capacity` members the most crowded one goes (NSGA-II's crowding
distance; the extremes are never dropped), so a long search keeps an evenly spread
front in bounded memory. The capacity (256) is far above what a search's front
usually holds; past it `size` is the number kept.

Hypervolume: each cost (parameters, multiply-adds, seconds) divided by the largest
value any succeeded trial had so far, accuracy as it is, up to the reference point
(accuracy 0, every scaled cost 1). While the front fits the capacity a new trial only
ever raises it (a larger cost scales the others down), so it is a fair progress curve
for a dashboard.
"""

from __future__ import annotations

from typing import Optional

from kubenas.objectives import Objectives, crowding_distance, dominates, hypervolume
from kubenas.spec import PARETO_ARCHIVE_CAPACITY, PARETO_STATUS_MEMBERS, ParetoMember


class ParetoArchive:
    def __init__(self, objectives: Objectives, capacity: int = PARETO_ARCHIVE_CAPACITY):
        self.objectives = objectives
        self.capacity = capacity
        self.members: dict[str, tuple[float, ...]] = {}  # trial id -> its values (metrics' own units), in order
        self.largest: list[float] = [0.0] * len(objectives.metrics)  # per metric, over every trial seen
        self._hypervolume: Optional[float] = None  # cached: the summary asks every second or so

    def note(self, trial_id: str, accuracy: Optional[float], cost: Optional[dict]) -> bool:
        """Take a succeeded trial's result; whether it joined the front (and stayed: past the capacity
        the newcomer may itself be the most crowded member, and go at once)."""
        values = self.objectives.values(accuracy, cost or {})
        if values is None:
            return False
        largest = [max(a, abs(v)) for a, v in zip(self.largest, values)]
        if largest != self.largest:
            self.largest, self._hypervolume = largest, None
        point = self.objectives.minimized(values)
        if any(dominates(self.objectives.minimized(v), point) or self.objectives.minimized(v) == point
               for v in self.members.values()):
            return False  # dominated, or a duplicate of a member (the earlier trial stays)
        self.members = {t: v for t, v in self.members.items() if not dominates(point, self.objectives.minimized(v))}
        self.members[trial_id] = values
        self._hypervolume = None
        if len(self.members) > self.capacity:
            self._drop_most_crowded()
        return trial_id in self.members

    def _drop_most_crowded(self) -> None:
        ids = list(self.members)
        points = [self.objectives.minimized(self.members[t]) for t in ids]
        distance = crowding_distance(points, range(len(ids)))
        victim = min(range(len(ids)), key=lambda i: (distance[i], ids[i]))
        del self.members[ids[victim]]

    @property
    def size(self) -> int:
        return len(self.members)

    def scaled(self, values: tuple[float, ...]) -> tuple[float, ...]:
        """Minimised values with every cost divided by its largest so far (accuracy as it is)."""
        out = []
        for v, (name, goal), largest in zip(values, self.objectives.metrics, self.largest):
            out.append(-v if goal == "maximize" else (v / largest if largest > 0 else 0.0))
        return tuple(out)

    def reference(self) -> tuple[float, ...]:
        return tuple(0.0 if goal == "maximize" else 1.0 for _, goal in self.objectives.metrics)

    def hypervolume(self) -> Optional[float]:
        if not self.members:
            return None
        if self._hypervolume is None:
            self._hypervolume = hypervolume([self.scaled(v) for v in self.members.values()], self.reference())
        return self._hypervolume

    def ordered(self) -> list[tuple[str, tuple[float, ...]]]:
        """The members along the front: by the first metric (best first), then the others."""
        return sorted(self.members.items(), key=lambda item: (self.objectives.minimized(item[1]), item[0]))

    def status_members(self, limit: int = PARETO_STATUS_MEMBERS) -> list[ParetoMember]:
        """At most `limit` members, evenly spaced along the front, both ends included."""
        ordered = self.ordered()
        if len(ordered) > limit:
            step = (len(ordered) - 1) / (limit - 1)
            ordered = [ordered[round(i * step)] for i in range(limit)]
        names = self.objectives.names
        return [ParetoMember(trial=t, values=dict(zip(names, v))) for t, v in ordered]
