"""Hard limits before any training, and MnasNet's soft-cost reward.

Costs come from an injected `cost_fn(genotype) -> {"params": ..., "multiply_adds": ...}`
so this module stays torch-free; the runtime passes a function that builds the
model and counts (`kubenas.nn.count_parameters` / `multiply_adds`). A measured
cost a trainer reports in `Result.cost` (latency, say) overrides the
estimate for the reward.

MnasNet (Tan et al. 2019): reward = acc * (cost / target) ** w, with
w = alpha when cost <= target and beta otherwise; alpha = beta = -0.07 is the
paper's soft constraint, alpha = 0, beta = -1 its hard one.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from kubenas.spaces import Genotype
from kubenas.strategies.base import Result, SearchExhausted, Strategy, Trial, Wrapper

CostFn = Callable[[Genotype], Mapping[str, float]]
log = logging.getLogger(__name__)


def violations(cost: Mapping[str, float], limits: Mapping[str, float]) -> list[str]:
    """One readable line per limit the cost exceeds (empty: within limits)."""
    out = []
    for metric, limit in limits.items():
        if metric not in cost:
            out.append(f"{metric}: no such cost was computed (have {sorted(cost)})")
        elif cost[metric] > limit:
            out.append(f"{metric} {cost[metric]:g} exceeds the limit {limit:g}")
    return out


def mnas_reward(accuracy: float, cost: float, target: float, alpha: float = -0.07, beta: float = -0.07) -> float:
    """MnasNet's multi-objective reward acc * (cost / target) ** w."""
    if not (0 < target < math.inf and 0 < cost < math.inf):
        raise ValueError(f"mnas_reward: cost and target must be finite and positive (got cost={cost}, target={target})")
    w = alpha if cost <= target else beta
    return accuracy * (cost / target) ** w


@dataclass(frozen=True)
class SoftCost:
    """The cost that scales the reward: `metric` in params, multiply_adds, latency..."""

    metric: str
    target: float
    alpha: float = -0.07
    beta: float = -0.07

    def __post_init__(self) -> None:
        # Checked here, not at the first result: a bad target must not crash every resume.
        if not 0 < self.target < math.inf:
            raise ValueError(f"costPenalty.target: {self.target!r} is not accepted; give a finite cost above 0")
        for field_name in ("alpha", "beta"):
            value = getattr(self, field_name)
            if not math.isfinite(value):
                raise ValueError(f"costPenalty.weight: {value!r} is not accepted; give a finite number")

    def reward(self, accuracy: float, cost: Mapping[str, float]) -> float:
        if self.metric not in cost:
            raise KeyError(f"soft cost {self.metric!r} was neither estimated nor measured (have {sorted(cost)})")
        return mnas_reward(accuracy, float(cost[self.metric]), self.target, self.alpha, self.beta)


class Constrained(Wrapper):
    """Rejects over-limit proposals before they are issued; applies the soft cost to rewards.

    A rejected proposal is told to the inner strategy at once as a failed
    result naming the violated limit (so learning strategies can steer away),
    and the inner strategy is asked again, `max_attempts` times at most.
    """

    name = "constrained"

    def __init__(self, inner: Strategy, cost_fn: CostFn, limits: Optional[Mapping[str, float]] = None,
                 soft: Optional[SoftCost] = None, max_attempts: int = 1000):
        super().__init__(inner)
        self.cost_fn = cost_fn
        self.limits = dict(limits or {})
        self.soft = soft
        self.max_attempts = max_attempts
        self.costs: dict[str, dict[str, float]] = {}  # issued trial id -> estimated cost
        self.rejected = 0
        self.inner_idle = False  # the last inner ask proposed nothing (it waits for results)

    def _cost(self, genotype: Genotype) -> dict[str, float]:
        return {k: float(v) for k, v in self.cost_fn(genotype).items()}

    def ask(self, n: int = 1) -> list[Trial]:
        trials = []
        for _ in range(n):
            trial = self._ask_one()
            if trial is None:
                if not trials and not self.inner_idle:
                    raise SearchExhausted(
                        f"{self.inner.name}: {self.max_attempts} proposals in a row broke the limits "
                        f"{self.limits}; loosen them or restrict the search space")
                break
            trials.append(trial)
        return trials

    def _ask_one(self) -> Optional[Trial]:
        self.inner_idle = False
        for _ in range(self.max_attempts):
            proposed = self.inner.ask(1)
            if not proposed:
                self.inner_idle = True  # nothing to propose for now (PBT: every member training)
                return None
            trial = proposed[0]
            cost = self._cost(trial.genotype)
            problems = violations(cost, self.limits)
            if problems:
                self.rejected += 1
                self.inner.tell(trial.id, Result(reward=None, status="failed", cost=cost,
                                                 error="constraint: " + "; ".join(problems)))
                continue
            self.costs[trial.id] = cost
            self.pending[trial.id] = trial
            return trial
        return None

    def inject(self, genotype: Genotype, fidelity: Optional[int] = None) -> Trial:
        cost = self._cost(genotype)
        problems = violations(cost, self.limits)
        if problems:
            raise ValueError("constraint: " + "; ".join(problems))
        trial = super().inject(genotype, fidelity)
        self.costs[trial.id] = cost
        return trial

    def objective(self, trial_id: str, accuracy: Optional[float], cost: dict[str, float]) -> Optional[float]:
        """MnasNet's reward, on the measured costs over the estimated ones; the one
        place the cost penalty is computed."""
        accuracy = self.inner.objective(trial_id, accuracy, cost)
        if self.soft is None or accuracy is None:
            return accuracy
        try:
            return float(self.soft.reward(accuracy, {**self.costs.get(trial_id, {}), **cost}))
        except (KeyError, ValueError) as exc:
            log.warning("trial %s: cost penalty not applied: %s", trial_id, exc)
            return accuracy

    def tell(self, trial_id: str, result: Result) -> None:
        trial = self.pending.get(trial_id)
        if trial is None:
            return
        reward = self.objective(trial_id, result.reward, result.cost)
        del self.pending[trial_id]
        cost = {**self.costs.pop(trial_id, {}), **result.cost}
        self.inner.tell(trial_id, Result(reward=reward, status=result.status, curve=list(result.curve),
                                         cost=cost, error=result.error, epochs=result.epochs))

    def _own_stats(self) -> dict[str, float]:
        return {"constraint_rejected": float(self.rejected)}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(costs={k: dict(v) for k, v in self.costs.items()}, rejected=self.rejected)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.costs = {k: dict(v) for k, v in state["costs"].items()}
        self.rejected = state["rejected"]


def torch_cost_fn(input_shape: tuple[int, int, int] = (3, 32, 32), **model_config: Any) -> CostFn:
    """The runtime's cost function: build the child network and count it (imports torch on use)."""

    def cost(genotype: Genotype) -> dict[str, float]:
        from kubenas.nn import ModelConfig, build_model, count_parameters, multiply_adds

        model = build_model(genotype, ModelConfig(**model_config))
        return {"params": float(count_parameters(model)),
                "multiply_adds": float(multiply_adds(model, input_shape))}

    return cost
