"""Several objectives at once: which metrics a search optimises, and the Pareto arithmetic.

Pure: no I/O, no torch, no Optuna. Every function here works on minimisation
(`Objectives.minimized` turns a maximised metric into its negative first), on
points given as tuples of floats.

- `non_dominated_sort`: the fronts (Deb et al. 2002's fast non-dominated sort);
- `crowding_distance`: NSGA-II's spread measure within one front;
- `hypervolume`: the exact volume dominated by a set of points up to a reference
  point, by slicing along the last objective (Hypervolume by Slicing Objectives,
  While et al. 2006): simple and exact, fast enough for 2-4 objectives and a few
  hundred points, which is what a search's front holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

# Every metric a search may optimise, and the only goal that makes sense for it.
METRIC_GOALS: dict[str, str] = {
    "validationAccuracy": "maximize",
    "parameters": "minimize",
    "multiplyAdds": "minimize",
    "latency": "minimize",
    "trainingSeconds": "minimize",
}
# Metric name -> the key of a trial's cost dict (what the trainer measures and posts in its
# ResultMessage: kubenas_trainer.trainer builds params, multiply_adds, train_seconds and,
# when asked, latency_seconds). validationAccuracy is the trial's reward, not a cost.
COST_KEYS: dict[str, str] = {
    "parameters": "params",
    "multiplyAdds": "multiply_adds",
    "latency": "latency_seconds",
    "trainingSeconds": "train_seconds",
}
MAX_OBJECTIVES = 4
ACCURACY_NEEDED = ("validationAccuracy must be one of the metrics (a search maximises it, alone or traded "
                   "against parameters, multiplyAdds, latency or trainingSeconds)")
_GOAL_WORDS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}

Point = tuple[float, ...]


@dataclass(frozen=True)
class Objectives:
    """The metrics a search optimises, in order, each with its goal."""

    metrics: tuple[tuple[str, str], ...] = (("validationAccuracy", "maximize"),)

    def __post_init__(self) -> None:
        if not self.metrics:
            raise ValueError("objectives: at least one metric is needed")
        for name, goal in self.metrics:
            if name not in METRIC_GOALS:
                raise ValueError(f"objectives: unknown metric {name!r}; accepted: {sorted(METRIC_GOALS)}")
            if goal != METRIC_GOALS[name]:
                raise ValueError(f"objectives: {name} can only be {METRIC_GOALS[name]}d (got {goal!r})")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"objectives: a metric is named twice in {list(self.names)}")
        if len(self.metrics) > MAX_OBJECTIVES:
            raise ValueError(f"objectives: at most {MAX_OBJECTIVES} metrics, got {len(self.metrics)}")
        # Every strategy learns from the accuracy (the reward); a cost alone would be silently ignored.
        if "validationAccuracy" not in self.names:
            raise ValueError(f"objectives: {ACCURACY_NEEDED}")

    @classmethod
    def from_spec(cls, objective_spec: Any) -> "Objectives":
        """From `spec.objective`: its `metrics` list when given, else its single metric/goal."""
        metrics = getattr(objective_spec, "metrics", None)
        if metrics:
            return cls(tuple((m.name, m.goal) for m in metrics))
        return cls(((objective_spec.metric, objective_spec.goal),))

    @classmethod
    def parse(cls, text: str) -> "Objectives":
        """From a command-line list such as "validationAccuracy:max,parameters:min"."""
        metrics = []
        for item in text.split(","):
            name, _, goal = (part.strip() for part in item.partition(":"))
            if name not in METRIC_GOALS:  # before the goal: "flops" is an unknown metric, not a bad goal
                raise ValueError(f"objectives: unknown metric {name!r}; accepted: {sorted(METRIC_GOALS)}")
            goal = goal or METRIC_GOALS[name]
            if goal not in _GOAL_WORDS:
                raise ValueError(f"objectives: {item.strip()!r} is not NAME:max or NAME:min")
            metrics.append((name, _GOAL_WORDS[goal]))
        return cls(tuple(metrics))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.metrics)

    @property
    def is_multi(self) -> bool:
        return len(self.metrics) > 1

    def values(self, accuracy: Optional[float], cost: dict[str, float]) -> Optional[Point]:
        """Each metric's raw value (its own units) for one trial; None when any is missing."""
        out = []
        for name in self.names:
            value = accuracy if name == "validationAccuracy" else (cost or {}).get(COST_KEYS[name])
            if value is None or not math.isfinite(float(value)):
                return None
            out.append(float(value))
        return tuple(out)

    def minimized(self, values: Sequence[float]) -> Point:
        """The same values with every objective turned into one to minimise (-accuracy)."""
        return tuple(-v if goal == "maximize" else v for v, (_, goal) in zip(values, self.metrics))


# --- dominance and fronts (minimisation) ---------------------------------------------

def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """a is no worse than b in every objective and better in one (minimisation)."""
    better = False
    for x, y in zip(a, b):
        if x > y:
            return False
        if x < y:
            better = True
    return better


def non_dominated_sort(points: Sequence[Sequence[float]]) -> list[list[int]]:
    """The indices of `points` in fronts: the first front is dominated by no point, the
    second only by points of the first, and so on. Equal points share a front."""
    n = len(points)
    dominated_by_me: list[list[int]] = [[] for _ in range(n)]
    count = [0] * n  # how many points dominate each point
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j]):
                dominated_by_me[i].append(j)
                count[j] += 1
            elif dominates(points[j], points[i]):
                dominated_by_me[j].append(i)
                count[i] += 1
    fronts: list[list[int]] = []
    current = [i for i in range(n) if count[i] == 0]
    while current:
        fronts.append(current)
        following = []
        for i in current:
            for j in dominated_by_me[i]:
                count[j] -= 1
                if count[j] == 0:
                    following.append(j)
        current = sorted(following)
    return fronts


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points no other point dominates (minimisation), in ascending order."""
    # In lexicographic order a point can only be dominated by one before it, and if it is, then
    # by a member of the front found so far (dominance is transitive): one pass, n x front.
    front: list[int] = []
    for i in sorted(range(len(points)), key=lambda k: tuple(points[k])):
        if not any(dominates(points[j], points[i]) for j in front):
            front.append(i)
    return sorted(front)


def pareto_ranks(points: Sequence[Sequence[float]]) -> list[int]:
    """Each point's front number (0: non-dominated)."""
    ranks = [0] * len(points)
    for r, front in enumerate(non_dominated_sort(points)):
        for i in front:
            ranks[i] = r
    return ranks


def crowding_distance(points: Sequence[Sequence[float]], front: Iterable[int]) -> dict[int, float]:
    """NSGA-II's crowding distance of each member of `front`: per objective, the gap
    between its two neighbours over the front's range, summed; the extremes get inf."""
    members = list(front)
    distance = {i: 0.0 for i in members}
    if len(members) <= 2:
        return {i: math.inf for i in members}
    for k in range(len(points[members[0]])):
        ordered = sorted(members, key=lambda i: (points[i][k], i))
        low, high = points[ordered[0]][k], points[ordered[-1]][k]
        distance[ordered[0]] = distance[ordered[-1]] = math.inf
        if high == low:
            continue
        for before, here, after in zip(ordered, ordered[1:], ordered[2:]):
            distance[here] += (points[after][k] - points[before][k]) / (high - low)
    return distance


def rank_and_crowding(points: Sequence[Sequence[float]]) -> list[tuple[int, float]]:
    """A sort key per point, smaller is better: (front number, -crowding distance)."""
    keys: list[tuple[int, float]] = [(0, 0.0)] * len(points)
    for r, front in enumerate(non_dominated_sort(points)):
        for i, d in crowding_distance(points, front).items():
            keys[i] = (r, -d)
    return keys


# --- hypervolume (minimisation) ------------------------------------------------------

def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """The volume dominated by `points` and bounded by `reference` (exact); points not
    strictly better than the reference in every objective add nothing."""
    ref = tuple(float(r) for r in reference)
    inside = [tuple(float(x) for x in p) for p in points if all(x < r for x, r in zip(p, ref))]
    if any(len(p) != len(ref) for p in inside):
        raise ValueError(f"hypervolume: every point needs {len(ref)} objectives, as the reference point")
    return _slice(_non_dominated(inside), ref)


def _non_dominated(points: list[Point]) -> list[Point]:
    unique = sorted(set(points))
    return [p for p in unique if not any(dominates(q, p) for q in unique)]


def _slice(points: list[Point], ref: Point) -> float:
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    if len(ref) == 2:
        return _area(sorted(points), ref)
    if len(ref) == 3:
        return _volume3(points, ref)
    # Along the last objective: between consecutive values, the dominated region's
    # cross-section is the hypervolume of the points below the slab, one dimension down.
    ordered = sorted(points, key=lambda p: p[-1])
    volume = 0.0
    for i, p in enumerate(ordered):
        upper = ordered[i + 1][-1] if i + 1 < len(ordered) else ref[-1]
        if upper > p[-1]:
            volume += _slice(_non_dominated([q[:-1] for q in ordered[:i + 1]]), ref[:-1]) * (upper - p[-1])
    return volume


def _area(by_x: list[Point], ref: Point) -> float:
    """2-D: points sorted by x; each adds the strip under it down to the best y so far."""
    area, best_y = 0.0, ref[1]
    for x, y in by_x:
        if y < best_y:
            area += (ref[0] - x) * (best_y - y)
            best_y = y
    return area


def _volume3(points: list[Point], ref: Point) -> float:
    """3-D: slices along z, keeping the 2-D front of the points seen so far as a staircase
    (x ascending, y descending), so each slice costs one insertion and one area sum."""
    from bisect import bisect_right

    ordered = sorted(points, key=lambda p: p[2])
    stairs: list[tuple[float, float]] = []
    volume = 0.0
    for i, (x, y, z) in enumerate(ordered):
        at = bisect_right(stairs, (x, math.inf))
        if not (at > 0 and stairs[at - 1][1] <= y):  # not dominated by the staircase
            end = at
            while end < len(stairs) and stairs[end][1] >= y:
                end += 1  # points the new one dominates
            stairs[at:end] = [(x, y)]
        upper = ordered[i + 1][2] if i + 1 < len(ordered) else ref[2]
        if upper > z:
            volume += _area(stairs, ref) * (upper - z)
    return volume


def normalised_hypervolume(points: Sequence[Sequence[float]], ideal: Sequence[float],
                           reference: Sequence[float]) -> float:
    """Hypervolume after scaling every objective so that `ideal` -> 0 and `reference` -> 1:
    the share (0..1) of the box between the two that the points dominate."""
    span = [r - i for i, r in zip(ideal, reference)]
    if any(s <= 0 for s in span):
        raise ValueError("normalised_hypervolume: the reference point must be worse than the ideal in every objective")
    scaled = [tuple((x - i) / s for x, i, s in zip(p, ideal, span)) for p in points]
    return hypervolume(scaled, [1.0] * len(span))
