"""BOHB (Falkner et al. 2018): Hyperband's brackets, with new trials drawn from
a Parzen-estimator model of the results at the highest budget that has enough.

Brackets and promotions. Budgets are epochs, the rungs min_epochs * eta^k up
to max_epochs; brackets start at successively higher rungs and share new
trials in Hyperband's proportions. Inside a bracket a trial reaching a rung is
promoted (trains on to the next rung) when its value is in the top 1/eta of
those recorded at that rung so far, and stopped otherwise: successive halving
made asynchronous as in ASHA (Li et al. 2020), so that no trainer waits for a
rung to fill and any number of trainers stay busy. The scheduler is
`multifidelity.ASHA` itself; this strategy answers `report` with it.

The model (the paper's Algorithm 2). Every rung value a trial reaches is an
observation at that budget (the validation value it reports there; at the
trial's final budget, its reward, cost penalty included); a failed trial is
the worst observation at the budget it trained towards. A fraction `random_fraction` (1/3) of new trials is
drawn uniformly; the others use the highest budget b holding at least
min_points + 2 observations with a value (min_points: the number of decisions
plus one, unless set): its best max(min_points, top_fraction * N_b) form the
good set, its worst max(min_points, N_b - good) the bad set, one Parzen
estimator is fitted to each, `samples` (64) candidates are drawn from the good
one with bandwidths widened by `bandwidth_factor` (3), and the candidate with
the largest ratio good/bad density (not already proposed, when one is left)
becomes the trial.

The estimator is our own, over the decision indices of `Encoding`, rather
than Optuna's TPE: BOHB needs a model of one budget's observations only,
refitted as budgets fill, which Optuna's sampler has no notion of (it would
mean a fresh study per budget and per proposal); its kernels are exactly
the paper's (Aitchison-Aitken for unordered choices, a Gaussian over the bins
of numeric decisions, normal-reference bandwidths, the minimum bandwidth and
the widening factor); and a few lines of numpy with one seeded generator make
the checkpoint exact. For unordered choices the normal-reference rule reads
the spread of the one-hot code: sqrt(1 - sum_k p_k^2), the root of its total
variance.

BOHB is `fidelity_aware`: it sees every result with the epochs trained, and
is not wrapped in `MultiFidelity` (it schedules its own epochs).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from kubenas.spaces import SearchSpace
from kubenas.strategies.base import (
    STOP,
    Result,
    Strategy,
    TrainingDecision,
    Trial,
    numpy_rng_state,
    set_numpy_rng_state,
)
from kubenas.strategies.encoding import Encoding
from kubenas.strategies.multifidelity import ASHA, rung_epochs

Observation = tuple[list[int], Optional[float]]  # decision indices, value (None: failed)


class BOHB(Strategy):
    name = "bohb"
    fidelity_aware = True

    def __init__(self, space: SearchSpace, seed: int = 0, max_epochs: int = 27, min_epochs: int = 1, eta: int = 3,
                 brackets: Optional[int] = None, random_fraction: float = 1 / 3, min_points: Optional[int] = None,
                 top_fraction: float = 0.15, samples: int = 64, bandwidth_factor: float = 3.0,
                 min_bandwidth: float = 1e-3):
        """
        max_epochs, min_epochs, eta: the rungs min_epochs * eta^k up to max_epochs (the search's epochs).
        brackets: Hyperband brackets (default: one per rung, as Hyperband).
        random_fraction: the share of new trials drawn uniformly, whatever the model.
        min_points: observations a Parzen estimator needs (default: decisions + 1).
        top_fraction: the share of a budget's observations that forms the good set.
        samples: candidates drawn from the good estimator per proposal.
        bandwidth_factor: widens the good estimator's bandwidths to draw candidates.
        min_bandwidth: the least bandwidth, so that a value seen in every good trial is not fixed forever.
        """
        super().__init__(space, seed)
        self.encoding = Encoding(space)
        if not 0.0 <= random_fraction <= 1.0:
            raise ValueError(f"bohb: random_fraction must be in [0, 1] (got {random_fraction})")
        if not 0.0 < top_fraction < 1.0:
            raise ValueError(f"bohb: top_fraction must be in (0, 1) (got {top_fraction})")
        if min_points is not None and min_points < 1:
            raise ValueError(f"bohb: min_points must be >= 1 (got {min_points})")
        if samples < 1 or not bandwidth_factor > 0 or not 0 < min_bandwidth < 1:
            raise ValueError(f"bohb: need samples >= 1, bandwidth_factor > 0 and 0 < min_bandwidth < 1 "
                             f"(got {samples}, {bandwidth_factor}, {min_bandwidth})")
        rungs = rung_epochs(min_epochs, max_epochs, eta)
        self.scheduler = ASHA(max_epochs, min_epochs=min_epochs, eta=eta,
                              brackets=len(rungs) if brackets is None else brackets)
        self.random_fraction = random_fraction
        self.min_points = len(self.encoding.sizes) + 1 if min_points is None else min_points
        self.top_fraction = top_fraction
        self.samples = samples
        self.bandwidth_factor = bandwidth_factor
        self.min_bandwidth = min_bandwidth
        self.np_rng = np.random.default_rng(seed)
        # budget (epochs) -> {trial id: observation}, in arrival order
        self.observations: dict[int, dict[str, Observation]] = {r: {} for r in self.scheduler.rungs}
        self.model_budget: Optional[int] = None  # the budget the last model-based proposal used

    # --- proposing ---------------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Trial]:
        trials = []
        for _ in range(max(n, 0)):
            trial = self._new_trial(self.encoding.genotype(self._propose()))
            trial.fidelity = self.scheduler.start(trial.id)
            trials.append(trial)
        return trials

    def _injected(self, trial: Trial) -> None:
        trial.fidelity = self.scheduler.start(trial.id)

    def _propose(self) -> list[int]:
        if self.np_rng.random() < self.random_fraction:
            return self._random()
        budget = self._model_budget()
        if budget is None:
            return self._random()
        good, bad = self._split(budget)
        sizes, ordered = self.encoding.sizes, self.encoding.numeric
        lo = Parzen(good, sizes, ordered, self.min_bandwidth)
        hi = Parzen(bad, sizes, ordered, self.min_bandwidth)
        candidates = lo.sample(self.samples, self.np_rng, self.bandwidth_factor)
        score = lo.log_density(candidates) - hi.log_density(candidates)
        taken = self._taken()
        fresh = np.array([tuple(c) not in taken for c in candidates.tolist()])
        if fresh.any():
            score = np.where(fresh, score, -np.inf)
        self.model_budget = budget
        return [int(v) for v in candidates[int(np.argmax(score))]]

    def _random(self) -> list[int]:
        return [int(self.np_rng.integers(n)) for n in self.encoding.sizes]

    def _model_budget(self) -> Optional[int]:
        """The highest budget with min_points + 2 observations that have a value."""
        for budget in reversed(self.scheduler.rungs):
            valued = sum(v is not None for _, v in self.observations[budget].values())
            if valued >= self.min_points + 2:
                return budget
        return None

    def _split(self, budget: int) -> tuple[np.ndarray, np.ndarray]:
        """The good and the bad configurations at `budget` (they overlap while few)."""
        points = [ind for ind, _ in self.observations[budget].values()]
        values = np.array([-np.inf if v is None else v for _, v in self.observations[budget].values()])
        order = np.argsort(-values, kind="stable")  # best first; failures last
        valued = int(np.isfinite(values).sum())
        n_good = max(self.min_points, int(self.top_fraction * valued))
        n_bad = max(self.min_points, len(values) - n_good)
        rows = np.asarray(points, dtype=np.int64)
        return rows[order[:n_good]], rows[order[len(values) - n_bad:]]

    def _taken(self) -> set[tuple[int, ...]]:
        taken = {tuple(ind) for obs in self.observations.values() for ind, _ in obs.values()}
        taken.update(tuple(self.encoding.indices(t.genotype)) for t in self.pending.values())
        return taken

    # --- while training and when finished ------------------------------------------------------
    def report(self, trial_id: str, epoch: int, value: float) -> TrainingDecision:
        trial = self.pending.get(trial_id)
        if trial is None:
            return TrainingDecision(STOP, epoch, "unknown or finished trial")
        if epoch in self.scheduler.rungs:
            self._record(epoch, trial, value)
        decision = self.scheduler.decide(trial_id, epoch, value)
        if decision.action != STOP:
            trial.fidelity = decision.fidelity
        return decision

    def _observe(self, trial: Trial, result: Result) -> None:
        self.scheduler.finish(trial.id, result.status, result.curve)
        rungs = self.scheduler.rungs
        for budget in rungs:  # rung values not reported while training (a replayed curve)
            if budget <= len(result.curve):
                self._record(budget, trial, result.curve[budget - 1])
        if result.status == "succeeded" and result.reward is not None:
            trained = result.trained_epochs() or trial.fidelity or rungs[0]
            self._record(max([r for r in rungs if r <= trained], default=rungs[0]), trial, result.reward)
        elif result.status == "failed":
            budget = trial.fidelity if trial.fidelity in self.observations else rungs[0]
            if trial.id not in self.observations[budget]:
                self._record(budget, trial, None)

    def _record(self, budget: int, trial: Trial, value: Optional[float]) -> None:
        ok = value is not None and math.isfinite(value)
        self.observations[budget][trial.id] = (self.encoding.indices(trial.genotype), float(value) if ok else None)

    def stats(self) -> dict[str, float]:
        return {} if self.model_budget is None else {"bohb_model_budget": float(self.model_budget)}

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            scheduler=self.scheduler.state_dict(),
            observations={str(b): {t: [list(ind), v] for t, (ind, v) in obs.items()}
                          for b, obs in self.observations.items()},
            np_rng=numpy_rng_state(self.np_rng),
            model_budget=self.model_budget,
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.scheduler.load_state_dict(state["scheduler"])
        saved = {int(b): obs for b, obs in state["observations"].items()}
        if sorted(saved) != self.scheduler.rungs:
            raise ValueError(f"checkpoint has budgets {sorted(saved)}, this search {self.scheduler.rungs}")
        self.observations = {b: {t: ([int(i) for i in ind], None if v is None else float(v))
                                 for t, (ind, v) in saved[b].items()} for b in self.scheduler.rungs}
        set_numpy_rng_state(self.np_rng, state["np_rng"])
        self.model_budget = state["model_budget"]


class Parzen:
    """A product-kernel density over decision indices.

    Per decision, each point spreads its probability over the decision's values:
    Aitchison-Aitken for unordered choices (1 - lam on its own value, lam shared
    by the others), a Gaussian over the bins for ordered (numeric) ones,
    normalised over the bins. Bandwidths follow the normal-reference rule.
    """

    def __init__(self, points: np.ndarray, sizes: list[int], ordered: list[bool], min_bandwidth: float):
        self.points = np.asarray(points, dtype=np.int64)
        self.sizes, self.ordered = sizes, ordered
        m, d = self.points.shape
        shrink = 1.06 * m ** (-1.0 / (4 + d))
        self.bandwidths = []
        for j, (size, is_ordered) in enumerate(zip(sizes, ordered)):
            column = self.points[:, j]
            if is_ordered:
                spread = float(np.std(column / max(size - 1, 1)))
            else:
                share = np.bincount(column, minlength=size) / m
                spread = math.sqrt(max(0.0, 1.0 - float(share @ share)))
            self.bandwidths.append(max(shrink * spread, min_bandwidth))

    def _kernels(self, j: int, factor: float) -> np.ndarray:
        """(points, values) probabilities of decision j's values around each point."""
        size, centre = self.sizes[j], self.points[:, j]
        bw = self.bandwidths[j] * factor
        if self.ordered[j]:
            grid = np.arange(size) / max(size - 1, 1)
            z = (grid[None, :] - (centre / max(size - 1, 1))[:, None]) / bw
            weights = np.exp(-0.5 * z * z)
            return weights / weights.sum(1, keepdims=True)
        lam = min(bw, (size - 1) / size)
        probs = np.full((len(centre), size), lam / max(size - 1, 1))
        probs[np.arange(len(centre)), centre] = 1.0 - lam
        return probs

    def log_density(self, x: np.ndarray, factor: float = 1.0) -> np.ndarray:
        x = np.asarray(x, dtype=np.int64)
        logs = np.zeros((len(self.points), len(x)))
        for j in range(len(self.sizes)):
            logs += np.log(np.maximum(self._kernels(j, factor)[:, x[:, j]], 1e-300))
        top = logs.max(0)
        return top + np.log(np.exp(logs - top).mean(0))

    def sample(self, n: int, rng: np.random.Generator, factor: float = 1.0) -> np.ndarray:
        """n draws: a point at random, then each decision from its (widened) kernel."""
        centres = rng.integers(len(self.points), size=n)
        out = np.empty((n, len(self.sizes)), dtype=np.int64)
        for j in range(len(self.sizes)):
            probs = self._kernels(j, factor)[centres]
            u = rng.random(n)[:, None]
            out[:, j] = np.minimum((np.cumsum(probs, 1) < u).sum(1), self.sizes[j] - 1)
        return out
