"""The Pareto arithmetic (kubenas/objectives.py) against brute force, and objective.metrics in the spec."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from kubenas.errors import InvalidSpec
from kubenas.manifest import parse_manifest
from kubenas.objectives import (
    METRIC_GOALS, Objectives, crowding_distance, dominates, hypervolume, non_dominated_sort, normalised_hypervolume,
    pareto_front, pareto_ranks,
)


def random_points(rng: random.Random, n: int, d: int, grid: int = 0) -> list[tuple[float, ...]]:
    """Uniform points; on a grid of `grid` values per objective (ties and duplicates) when grid > 0."""
    if grid:
        return [tuple(float(rng.randrange(grid)) for _ in range(d)) for _ in range(n)]
    return [tuple(rng.random() for _ in range(d)) for _ in range(n)]


def brute_front(points):
    return [i for i, p in enumerate(points)
            if not any(all(q[k] <= p[k] for k in range(len(p))) and q != p for q in points)]


def inclusion_exclusion(points, reference):
    """The exact hypervolume as the union of boxes, by inclusion-exclusion (small sets only)."""
    total = 0.0
    for size in range(1, len(points) + 1):
        for subset in itertools.combinations(points, size):
            box = math.prod(max(0.0, r - max(p[k] for p in subset)) for k, r in enumerate(reference))
            total += (-1) ** (size + 1) * box
    return total


def test_dominance_is_strict_and_needs_one_better_objective():
    assert dominates((1, 2), (2, 2)) and dominates((1, 1), (2, 3))
    assert not dominates((1, 2), (1, 2))  # equal: neither dominates
    assert not dominates((1, 3), (2, 2)) and not dominates((2, 2), (1, 3))


@pytest.mark.parametrize("d, grid", [(2, 0), (3, 0), (2, 4), (3, 3), (4, 3)])
def test_fronts_match_brute_force(d, grid):
    rng = random.Random(d * 10 + grid)
    for _ in range(20):
        points = random_points(rng, rng.randrange(1, 40), d, grid)
        fronts = non_dominated_sort(points)
        assert sorted(itertools.chain(*fronts)) == list(range(len(points)))  # a partition
        assert sorted(fronts[0]) == brute_front(points) == pareto_front(points)
        remaining = list(range(len(points)))
        for front in fronts:  # peeling the first front off again and again gives the same fronts
            sub = [points[i] for i in remaining]
            assert sorted(front) == sorted(remaining[j] for j in brute_front(sub))
            remaining = [i for i in remaining if i not in front]
        ranks = pareto_ranks(points)
        for i, j in itertools.permutations(range(len(points)), 2):
            if dominates(points[i], points[j]):
                assert ranks[i] < ranks[j]


def test_crowding_distance_by_hand():
    points = [(0.0, 4.0), (1.0, 2.0), (3.0, 1.0), (4.0, 0.0), (2.0, 2.0)]
    front = [0, 1, 2, 3]  # point 4 is dominated by 1
    distance = crowding_distance(points, front)
    assert distance[0] == distance[3] == math.inf
    # point 1: neighbours 0 and 2 -> (3 - 0) / 4 + (4 - 1) / 4; point 2: neighbours 1 and 3
    assert distance[1] == pytest.approx(3 / 4 + 3 / 4)
    assert distance[2] == pytest.approx(3 / 4 + 2 / 4)
    assert crowding_distance(points, [1, 2]) == {1: math.inf, 2: math.inf}


def test_hypervolume_by_hand():
    assert hypervolume([(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)], (4.0, 4.0)) == pytest.approx(3 + 2 + 1)
    assert hypervolume([(1.0, 1.0, 1.0)], (2.0, 3.0, 4.0)) == pytest.approx(1 * 2 * 3)
    assert hypervolume([(5.0, 0.0), (0.0, 5.0)], (4.0, 4.0)) == 0.0  # outside the reference box
    assert hypervolume([], (1.0, 1.0)) == 0.0
    assert normalised_hypervolume([(0.5, 0.5)], ideal=(0.0, 0.0), reference=(1.0, 2.0)) == pytest.approx(0.5 * 0.75)


@pytest.mark.parametrize("d", [2, 3, 4])
def test_hypervolume_is_exact_against_inclusion_exclusion(d):
    rng = random.Random(d)
    for _ in range(15):
        grid = rng.choice([0, 4])
        points = random_points(rng, rng.randrange(1, 9), d, grid=grid)
        reference = (3.0,) * d if grid else (0.8,) * d  # some points beyond it, which add nothing
        assert hypervolume(points, reference) == pytest.approx(inclusion_exclusion(points, reference), abs=1e-9)


@pytest.mark.parametrize("d", [2, 3, 4])
def test_hypervolume_agrees_with_monte_carlo(d):
    rng = random.Random(100 + d)
    points = random_points(rng, 60, d)
    exact = hypervolume(points, (1.0,) * d)
    samples = 100_000
    z = np.random.default_rng(d).random((samples, d))
    estimate = float((np.asarray(points)[None, :, :] <= z[:, None, :]).all(-1).any(-1).mean())
    sd = math.sqrt(estimate * (1 - estimate) / samples)
    assert abs(exact - estimate) < 4 * sd, (exact, estimate, sd)


def test_objectives_read_the_trainers_cost_keys():
    objectives = Objectives((("validationAccuracy", "maximize"), ("parameters", "minimize"),
                             ("multiplyAdds", "minimize"), ("trainingSeconds", "minimize")))
    cost = {"params": 1e5, "multiply_adds": 2e6, "train_seconds": 30.0}
    assert objectives.values(0.9, cost) == (0.9, 1e5, 2e6, 30.0)
    assert objectives.minimized((0.9, 1e5, 2e6, 30.0)) == (-0.9, 1e5, 2e6, 30.0)
    assert objectives.values(None, cost) is None  # failed
    assert objectives.values(0.9, {"params": 1e5}) is None  # a metric the trainer did not measure
    latency = Objectives.parse("validationAccuracy:max,latency:min")
    assert latency.values(0.8, {"latency_seconds": 0.002}) == (0.8, 0.002)
    assert latency.is_multi and not Objectives().is_multi


def test_objectives_refuse_nonsense():
    with pytest.raises(ValueError, match="unknown metric 'flops'"):
        Objectives.parse("validationAccuracy:max,flops:min")
    with pytest.raises(ValueError, match="parameters can only be minimized"):
        Objectives.parse("parameters:max")
    with pytest.raises(ValueError, match="named twice"):
        Objectives.parse("parameters:min,parameters:min")
    with pytest.raises(ValueError, match="NAME:max or NAME:min"):
        Objectives.parse("parameters:smaller")
    with pytest.raises(ValueError, match="unknown metric 'flops'"):  # the name is checked before the goal
        Objectives.parse("flops")
    with pytest.raises(ValueError, match="at most 4 metrics, got 5"):
        Objectives.parse("validationAccuracy,parameters,multiplyAdds,latency,trainingSeconds")
    # A cost alone would be ignored: every strategy maximises the accuracy.
    for costs in ("parameters:min", "latency:min", "parameters:min,multiplyAdds:min"):
        with pytest.raises(ValueError, match="validationAccuracy must be one of the metrics"):
            Objectives.parse(costs)


# --- objective.metrics in a manifest ---------------------------------------------------------

ACCURACY = {"name": "validationAccuracy", "goal": "maximize"}
PARAMETERS = {"name": "parameters", "goal": "minimize"}


def manifest(spec: dict) -> dict:
    return {"apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch", "metadata": {"name": "x"}, "spec": spec}


BAD = [
    ("unknown-metric", {"objective": {"metrics": [ACCURACY, {"name": "flops", "goal": "minimize"}]}},
     ["objective.metrics.1.name", "'flops'", "multiplyAdds"]),
    ("duplicate", {"objective": {"metrics": [ACCURACY, PARAMETERS, PARAMETERS]}},
     ["objective.metrics", "parameters is named 2 times"]),
    ("contrary-goal", {"objective": {"metrics": [ACCURACY, {"name": "parameters", "goal": "maximize"}]}},
     ["objective.metrics", "parameters can only be minimized"]),
    ("accuracy-minimized", {"objective": {"metrics": [{"name": "validationAccuracy", "goal": "minimize"}]}},
     ["validationAccuracy can only be maximized"]),
    ("single-metric-strategy", {"strategy": {"algorithm": "tpe"}, "objective": {"metrics": [ACCURACY, PARAMETERS]}},
     ["strategy.algorithm", "tpe optimises one metric", "nsga2"]),
    ("with-cost-penalty", {"objective": {"metrics": [ACCURACY, PARAMETERS], "costPenalty": {"target": 1e5}}},
     ["objective.costPenalty", "several objective.metrics"]),
    ("cost-alone", {"strategy": {"algorithm": "tpe"}, "objective": {"metrics": [PARAMETERS]}},
     ["objective.metrics", "validationAccuracy must be one of the metrics"]),
    ("costs-without-accuracy", {"strategy": {"algorithm": "nsga2"},
                                "objective": {"metrics": [PARAMETERS, {"name": "latency", "goal": "minimize"}]}},
     ["objective.metrics", "validationAccuracy must be one of the metrics"]),
    ("five-metrics", {"objective": {"metrics": [ACCURACY, PARAMETERS, {"name": "multiplyAdds", "goal": "minimize"},
                                                {"name": "latency", "goal": "minimize"},
                                                {"name": "trainingSeconds", "goal": "minimize"}]}},
     ["objective.metrics", "at most 4"]),
]


@pytest.mark.parametrize("case_id, spec, names", BAD, ids=[c[0] for c in BAD])
def test_bad_metrics_are_refused_naming_the_field(case_id, spec, names):
    with pytest.raises(InvalidSpec) as info:
        parse_manifest(manifest(spec))
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message, message


@pytest.mark.parametrize("algorithm", ["random", "evolution", "local-search", "nsga2", "parego"])
def test_multi_objective_manifests_are_accepted(algorithm):
    search = parse_manifest(manifest({"strategy": {"algorithm": algorithm},
                                      "objective": {"metrics": [ACCURACY, PARAMETERS]}}))
    objectives = Objectives.from_spec(search.spec.objective)
    assert objectives.metrics == (("validationAccuracy", "maximize"), ("parameters", "minimize"))


def test_the_single_metric_manifest_is_unchanged():
    search = parse_manifest(manifest({"strategy": {"algorithm": "tpe"},
                                      "objective": {"metric": "validationAccuracy", "goal": "maximize",
                                                    "costPenalty": {"target": 1e5}}}))
    assert search.spec.objective.metrics is None
    assert Objectives.from_spec(search.spec.objective) == Objectives()
    # One metric in the list is a single-objective search too, so any strategy may run it.
    one = parse_manifest(manifest({"strategy": {"algorithm": "tpe"}, "objective": {"metrics": [ACCURACY]}}))
    assert not Objectives.from_spec(one.spec.objective).is_multi


def test_every_metric_the_spec_accepts_has_a_goal_and_a_cost_key():
    from typing import get_args

    from kubenas.objectives import COST_KEYS
    from kubenas.spec import MetricSpec

    names = get_args(MetricSpec.model_fields["name"].annotation)
    assert set(names) == set(METRIC_GOALS)
    assert set(COST_KEYS) == set(METRIC_GOALS) - {"validationAccuracy"}
