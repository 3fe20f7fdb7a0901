"""ParEGO (Knowles 2006): multi-objective Bayesian optimisation by random scalarisations.

Every proposal draws a weight vector at random and turns each observed trial's
objectives into one number with the augmented Tchebycheff function

    f(x) = max_j w_j g_j(x) + rho * sum_j w_j g_j(x)

where g_j is objective j normalised so that 0 is its best value seen so far and 1
its worst on the front found so far (every objective minimised: accuracy enters as
its negative). Knowles normalises by each objective's whole range; a few broken
architectures (accuracy near chance) would then squeeze the whole front into a
sliver of the accuracy scale, and most weight vectors would only trade parameters. The existing
Gaussian-process model (`kubenas.strategies.gp_bo.GPBayesOpt`: its kernel, rank
warping, exhaustive expected improvement, pending trials fantasised at the
posterior mean) then maximises -f. A new weight vector per proposal moves the
search along the whole front; the max term reaches non-convex stretches of it
that a weighted sum cannot, the small sum term breaks its ties.

Weights are uniform on the simplex (Knowles draws from a lattice of s + 1 points
per objective, a discretisation of the same). Trials without values (failed, a
metric not measured) count as the worst result, as in GP-BO. Asynchronous,
deterministic given the seed; the state adds the observed values to GP-BO's.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from kubenas.objectives import Objectives
from kubenas.spaces import SearchSpace
from kubenas.strategies.base import Result, Trial
from kubenas.strategies.gp_bo import GPBayesOpt


class ParEGO(GPBayesOpt):
    name = "parego"

    def __init__(self, space: SearchSpace, seed: int = 0, rho: float = 0.05, initial: int = 5,
                 objectives: Optional[Objectives] = None, **gp_options: Any):
        """rho: weight of the augmentation term; initial: results before the model is used (fewer
        than GP-BO's 10: on NAS-Bench-201 with 8 workers 5 gave a better front after 50 queries and
        the same after 100); every other parameter is GP-BO's."""
        super().__init__(space, seed=seed, initial=initial, **gp_options)
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"parego: rho must be within [0, 1] (got {rho})")
        self.rho = rho
        self.objectives = objectives or Objectives()
        self.points: list[list[float]] = []  # minimised values of each observation in self.z (same order)
        self.weights: Optional[list[float]] = None  # the last proposal's scalarisation

    def ask(self, n: int = 1) -> list[Trial]:
        trials = []
        for _ in range(max(n, 0)):
            self._scalarise()
            trials += super().ask(1)
        return trials

    def _random_weights(self) -> np.ndarray:
        w = np.array([self.rng.expovariate(1.0) for _ in self.objectives.metrics])
        return w / w.sum()

    def _scalarise(self) -> None:
        """GP-BO's rewards (self.y) for a fresh random weight vector."""
        if not self.points:
            return
        weights = self._random_weights()
        self.weights = [float(v) for v in weights]
        self.y = [float(v) for v in -tchebycheff(np.asarray(self.points), weights, self.rho)]

    def _observe(self, trial: Trial, result: Result) -> None:
        z = self.pending_z.pop(trial.id, None) or self._z_of(trial.genotype)
        values = None if result.reward is None else self.objectives.values(result.reward, result.cost)
        if values is None:
            self.failed.append(z)
            return
        self.z.append(z)
        self.points.append(list(self.objectives.minimized(values)))
        self.y.append(0.0)  # set for real by the next proposal's scalarisation

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(points=[list(p) for p in self.points], weights=self.weights)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.points = [list(p) for p in state["points"]]
        self.weights = state["weights"]


def tchebycheff(points: np.ndarray, weights: np.ndarray, rho: float) -> np.ndarray:
    """The augmented Tchebycheff scalarisation of minimised `points` (rows), each objective
    scaled so that its best value is 0 and the worst on the rows' Pareto front 1 (the whole
    range where the front has one value; a constant objective counts 0)."""
    from kubenas.objectives import pareto_front

    front = points[pareto_front(points.tolist())]
    low, high = points.min(axis=0), front.max(axis=0)
    high = np.where(high > low, high, points.max(axis=0))
    span = np.where(high > low, high - low, 1.0)
    g = (points - low) / span * weights
    return g.max(axis=1) + rho * g.sum(axis=1)
