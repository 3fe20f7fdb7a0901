"""The strategy contract: one abstract method, the documented call order, and the methods the
controller reads instead of reaching into wrappers (objective, known_hash, stats, report)."""

from __future__ import annotations

import ast
import doctest
import importlib
import logging
import math
from pathlib import Path

import pytest

import kubenas.strategies as strategies
from kubenas.spaces import build_space
from kubenas.strategies import Result, Strategy, Trial, make_strategy
from kubenas.strategies.base import Wrapper
from kubenas.strategies.constraints import Constrained, SoftCost
from kubenas.strategies.dedup import Deduplicated
from kubenas.strategies.multifidelity import ASHA, PROMOTE, MultiFidelity

SPACE = build_space("nasbench201")
SOURCES = Path(strategies.__file__).parent


def test_the_documented_example_runs():
    import kubenas.strategies.base as base

    outcome = doctest.testmod(base, raise_on_error=False)
    assert outcome.attempted >= 8 and outcome.failed == 0


def test_ask_is_the_only_abstract_method_and_no_stub_is_left():
    assert Strategy.__abstractmethods__ == frozenset({"ask"})
    assert Wrapper.__abstractmethods__ == frozenset()
    stubs = []
    for path in sorted(SOURCES.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None and "NotImplementedError" in ast.unparse(node.exc):
                stubs.append(f"{path.name}:{node.lineno}")
    assert stubs == []


def test_a_strategy_needs_only_ask():
    class First(Strategy):
        name = "first"

        def ask(self, n=1):
            return self._ask_each(n, lambda: self.space.sample(self.rng))

    s = First(SPACE, seed=0)
    trials = s.ask(3)
    assert [t.id for t in trials] == ["t000000", "t000001", "t000002"] and s.ask(0) == []
    s.tell(trials[1].id, Result(reward=0.5))
    assert set(s.pending) == {trials[0].id, trials[2].id}
    assert s.objective(trials[0].id, 0.7, {"params": 5.0}) == 0.7
    assert s.report(trials[0].id, 1, 0.3) is None and s.known_hash(trials[0].id) is None and s.stats() == {}


def test_the_rl_policy_lives_in_policy_gradient_not_controller():
    from kubenas.strategies.policy_gradient import PolicyGradient, PolicyLSTM

    assert issubclass(make_strategy("ppo", SPACE, seed=0).__class__, PolicyGradient)
    assert isinstance(make_strategy("reinforce", SPACE, seed=0).model, PolicyLSTM)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("kubenas.strategies.controller")


# --- objective: the one place the cost penalty is computed -------------------------------------
def params_cost(genotype):
    return {"params": 1000.0 * genotype["cell"].count("conv_3x3") + 1.0}


class Recorder(Strategy):
    """Random proposals; records what it is told."""

    name = "recorder"

    def __init__(self, space, seed=0):
        super().__init__(space, seed)
        self.told: list[tuple[str, Result]] = []

    def ask(self, n=1):
        return self._ask_each(n, lambda: self.space.sample(self.rng))

    def _observe(self, trial, result):
        self.told.append((trial.id, result))


def test_objective_is_the_penalised_reward_the_strategy_learns_from():
    inner = Recorder(SPACE, seed=1)
    soft = SoftCost("params", target=1000.0, alpha=-0.07, beta=-0.3)
    stack = MultiFidelity(Deduplicated(Constrained(inner, params_cost, soft=soft)), ASHA(max_epochs=3))
    trials = stack.ask(4)
    rewards = {}
    for k, t in enumerate(trials):
        measured = {"params": 4000.0} if k == 0 else {}
        rewards[t.id] = stack.objective(t.id, 0.8, measured)  # before tell, as the controller does
        estimate = params_cost(t.genotype)["params"] if k else 4000.0
        weight = -0.07 if estimate <= 1000.0 else -0.3
        assert rewards[t.id] == pytest.approx(0.8 * (estimate / 1000.0) ** weight)
        stack.tell(t.id, Result(reward=0.8, cost=measured, epochs=3))
    assert {tid: r.reward for tid, r in inner.told} == pytest.approx(rewards)
    assert stack.objective("t999999", None, {}) is None


def test_a_cost_the_penalty_cannot_use_leaves_the_accuracy_and_the_trial_is_still_told(caplog):
    inner = Recorder(SPACE, seed=1)
    stack = Constrained(inner, params_cost, soft=SoftCost("latency_seconds", target=0.01))
    (t,) = stack.ask(1)
    with caplog.at_level(logging.WARNING):
        assert stack.objective(t.id, 0.9, {}) == 0.9
        stack.tell(t.id, Result(reward=0.9))
    assert "latency_seconds" in caplog.text
    assert inner.told[0][1].reward == 0.9 and not inner.pending and not stack.pending


@pytest.mark.parametrize("target", [math.inf, 0.0, -5.0, math.nan])
def test_a_soft_cost_target_that_would_divide_by_zero_is_refused_when_built(target):
    with pytest.raises(ValueError, match=r"costPenalty\.target: .* finite cost above 0"):
        SoftCost("params", target=target)


# --- known_hash, stats, report through any stack -----------------------------------------------
def test_known_hash_comes_from_the_dedup_layer_through_other_wrappers():
    stack = MultiFidelity(Deduplicated(make_strategy("random", SPACE, seed=0)), ASHA(max_epochs=3))
    t = stack.ask(1)[0]
    assert stack.known_hash(t.id) == SPACE.hash(t.genotype)
    assert make_strategy("random", SPACE, seed=0).known_hash(t.id) is None


def test_stats_merge_every_layer():
    inner = make_strategy("ppo", SPACE, seed=0, batch=2)
    stack = MultiFidelity(Deduplicated(Constrained(inner, params_cost, limits={"params": 1500.0})),
                          ASHA(max_epochs=3))
    assert stack.stats() == {"deduplicated": 0.0, "dedup_fallbacks": 0.0, "constraint_rejected": 0.0}
    for _ in range(6):
        for t in stack.ask(2):
            stack.tell(t.id, Result(reward=0.5, epochs=3))
    stats = stack.stats()
    assert stats["constraint_rejected"] == float(stack.inner.inner.rejected) > 0
    assert stats["policy_entropy"] == pytest.approx(inner.policy_entropy) and stats["policy_entropy"] > 0
    assert all(isinstance(v, float) for v in stats.values())


def test_report_is_answered_by_the_layer_that_schedules():
    plain = Deduplicated(make_strategy("random", SPACE, seed=0))
    t = plain.ask(1)[0]
    assert t.fidelity is None and plain.report(t.id, 1, 0.5) is None
    bohb = Deduplicated(make_strategy("bohb", SPACE, seed=0, max_epochs=9))
    t = bohb.ask(1)[0]
    assert t.fidelity in (1, 3, 9)
    decision = bohb.report(t.id, t.fidelity, 0.5)
    assert decision is not None and decision.action in (PROMOTE, "stop")


def test_a_strategy_that_schedules_its_own_epochs_cannot_run_under_early_stopping():
    stack = MultiFidelity(make_strategy("bohb", SPACE, seed=0, max_epochs=9), ASHA(max_epochs=9))
    with pytest.raises(ValueError, match="schedules its own epochs"):
        stack.ask(1)


def test_trials_and_results_round_trip_with_epochs():
    r = Result(reward=0.5, status="stopped", curve=[0.1, 0.5], epochs=2)
    assert Result.from_dict(r.to_dict()) == r
    assert Result.from_dict({"reward": 0.5}).epochs is None  # checkpoints written before the field
    assert Result(reward=None, curve=[0.2, 0.3]).trained_epochs() == 2
    assert Trial.from_dict(Trial("t1", {"x": 1}, 3).to_dict()) == Trial("t1", {"x": 1}, 3)
