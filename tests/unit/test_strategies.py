"""Every strategy behind one ask/tell API: spaces, learning, out-of-order and repeated tells."""

from __future__ import annotations

import random
import statistics
import subprocess
import sys

import pytest

from kubenas.errors import InvalidSpec
from kubenas.spaces import build_space
from kubenas.spec import ONE_SHOT_ALGORITHMS
from kubenas.strategies import STRATEGIES, Result, make_strategy, strategy_parameters
from kubenas.strategies.dedup import Deduplicated
from kubenas.strategies.encoding import Encoding

# One-shot algorithms (enas, darts, spos) propose only the cells their supernet derived, once it
# has: tests/unit/test_one_shot_strategy.py tests their side of the contract.
ALL = sorted(n for n in STRATEGIES if n not in ONE_SHOT_ALGORITHMS)
NB201 = build_space("nasbench201")
HP_SPACE = build_space({
    "type": "nasbench201",
    "hyperparameters": [
        {"name": "learningRate", "type": "float", "low": 1e-3, "high": 1.0, "log": True},
        {"name": "batchSize", "type": "categorical", "choices": [64, 128, 256]},
        {"name": "epochs", "type": "int", "low": 5, "high": 50},
    ],
})
# Small settings so that learning shows within a test's budget.
FAST = {
    "evolution": {"population": 10, "sample": 3},
    "ppo": {"batch": 10, "lr": 0.003},
    "reinforce": {"batch": 10, "lr": 0.01},
    "tpe": {"n_startup_trials": 10},
    "gp-bo": {"refit_every": 5},
    "nsga2": {"population": 10},
    "parego": {"refit_every": 5},
}


def synthetic(space, seed=7):
    """A known optimum: reward = weighted count of decisions equal to a hidden target."""
    enc = Encoding(space)
    rng = random.Random(seed)
    target = enc.random(rng)
    weights = [1.0 + rng.random() for _ in target]

    def reward(genotype) -> float:
        ind = enc.indices(genotype)
        return sum(w for w, a, b in zip(weights, ind, target) if a == b)

    return reward, sum(weights), enc.genotype(target)


def run_search(strategy, reward, budget, workers=4, seed=0):
    """Asynchronous loop: `workers` trials in flight, finished in random order."""
    order = random.Random(seed)
    running, best, issued = [], float("-inf"), 0
    while issued < budget or running:
        while issued < budget and len(running) < workers:
            running += strategy.ask(1)
            issued += 1
        trial = running.pop(order.randrange(len(running)))
        r = reward(trial.genotype)
        best = max(best, r)
        strategy.tell(trial.id, Result(reward=r))
    return best


# PBT chooses cells only by selection among its initial population (weights cannot follow a
# changed cell); it searches hyperparameters during training: test_strategies_pbt.py.
@pytest.mark.parametrize("name", [n for n in ALL if n not in ("random", "pbt")])
def test_each_strategy_beats_random_on_a_synthetic_objective(name):
    reward, optimum, _ = synthetic(NB201)
    budget = 120 if name in ("ppo", "reinforce") else 60
    seeds = range(3)
    found = [run_search(make_strategy(name, NB201, seed=s, **FAST.get(name, {})), reward, budget, seed=s)
             for s in seeds]
    baseline = [run_search(make_strategy("random", NB201, seed=s), reward, budget, seed=s) for s in seeds]
    assert statistics.fmean(found) > statistics.fmean(baseline) + 0.5, (found, baseline, optimum)


@pytest.mark.parametrize("name, budget", [("evolution", 200), ("local-search", 100), ("gp-bo", 60)])
def test_strong_strategies_reach_the_known_optimum(name, budget):
    reward, optimum, _ = synthetic(NB201)
    best = run_search(Deduplicated(make_strategy(name, NB201, seed=1, **FAST.get(name, {}))), reward, budget)
    assert best == pytest.approx(optimum)


@pytest.mark.parametrize("space_name", ["nasnet", "darts", "hparams"])
@pytest.mark.parametrize("name", ALL)
def test_every_strategy_works_on_every_space(name, space_name):
    space = HP_SPACE if space_name == "hparams" else build_space(space_name)
    reward, _, _ = synthetic(space)
    strategy = make_strategy(name, space, seed=3, **FAST.get(name, {}))
    trials = strategy.ask(3)
    for _ in range(4):
        for t in trials:
            assert space.validate(t.genotype) == t.genotype
            strategy.tell(t.id, Result(reward=reward(t.genotype)))
        trials = strategy.ask(3)
    assert len({t.id for t in trials}) == 3


@pytest.mark.parametrize("name", ALL)
def test_tells_are_idempotent_and_may_come_out_of_order(name):
    strategy = make_strategy(name, NB201, seed=5, **FAST.get(name, {}))
    reward, _, _ = synthetic(NB201)
    trials = strategy.ask(6)
    assert set(strategy.pending) == {t.id for t in trials}
    for t in reversed(trials):  # last asked, first told
        strategy.tell(t.id, Result(reward=reward(t.genotype)))
    before = strategy.state_dict()
    strategy.tell(trials[0].id, Result(reward=1e9))  # a duplicate delivery
    strategy.tell("t999999", Result(reward=1e9))  # never asked
    after = strategy.state_dict()
    assert not strategy.pending
    assert _strip_tensors(before) == _strip_tensors(after)


def _strip_tensors(state):
    if isinstance(state, dict):
        return {k: _strip_tensors(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_strip_tensors(v) for v in state]
    if hasattr(state, "tolist"):
        return state.tolist()
    return state


def test_failed_results_are_accepted_by_every_strategy():
    for name in ALL:
        strategy = make_strategy(name, NB201, seed=0, **FAST.get(name, {}))
        for _ in range(3):
            trials = strategy.ask(7)
            for t in trials:
                strategy.tell(t.id, Result(reward=None, status="failed", error="OOM"))
        assert len(strategy.ask(2)) == 2


def test_evolution_ages_out_the_oldest_member():
    evo = make_strategy("evolution", NB201, seed=0, population=3, sample=2)
    trials = evo.ask(5)
    for k, t in enumerate(trials):
        evo.tell(t.id, Result(reward=float(100 - k)))  # the first is best, but oldest
    assert [r for _, r in evo.population] == [98.0, 97.0, 96.0]
    # After the random phase, children are one mutation away from a member.
    members = [ind for ind, _ in evo.population]
    child = Encoding(NB201).indices(evo.ask(1)[0].genotype)
    assert min(sum(a != b for a, b in zip(child, m)) for m in members) == 1


def test_local_search_climbs_from_the_best_result():
    ls = make_strategy("local-search", NB201, seed=0)
    enc = Encoding(NB201)
    first = ls.ask(1)[0]
    ls.tell(first.id, Result(reward=50.0))
    centre = enc.indices(first.genotype)
    for _ in range(10):
        nb = enc.indices(ls.ask(1)[0].genotype)
        assert sum(a != b for a, b in zip(nb, centre)) == 1


def test_make_strategy_names_unknown_parameters_and_strategies():
    with pytest.raises(InvalidSpec, match="population.*accepted"):
        make_strategy("local-search", NB201, population=3)
    with pytest.raises(InvalidSpec, match="choose one of"):
        make_strategy("hill-climbing", NB201)
    with pytest.raises(InvalidSpec, match="sample"):
        make_strategy("evolution", NB201, population=3, sample=5)
    assert strategy_parameters("ppo")["lr"] == pytest.approx(3.5e-4)
    assert strategy_parameters("ppo")["entropy_weight"] == pytest.approx(1e-5)


def test_rl_policy_keeps_the_nasnet_settings():
    ppo = make_strategy("ppo", build_space("nasnet"), seed=0)
    assert ppo.model.cell.hidden_size == 100
    assert [h.out_features for h in ppo.model.heads][:5] == [2, 2, 13, 13, 2]  # inputs, ops, combine
    assert len(ppo.model.heads) == 2 * 5 * 5
    assert ppo.batch == 20 and ppo.clip == 0.2 and ppo.baseline_decay == 0.95


def test_rl_updates_once_per_full_minibatch():
    import torch

    ppo = make_strategy("ppo", NB201, seed=0, batch=4)
    start = [p.detach().clone() for p in ppo.model.parameters()]
    trials = ppo.ask(7)
    for t in trials[:3]:
        ppo.tell(t.id, Result(reward=random.random()))
    assert ppo.updates == 0 and all(torch.equal(a, b) for a, b in zip(start, ppo.model.parameters()))
    for t in trials[3:]:
        ppo.tell(t.id, Result(reward=random.random()))
    assert ppo.updates == 1 and len(ppo.buffer) == 3
    assert not all(torch.equal(a, b) for a, b in zip(start, ppo.model.parameters()))


def test_ppo_and_reinforce_differ_after_an_update():
    import torch

    models = []
    for name in ("ppo", "reinforce"):
        s = make_strategy(name, NB201, seed=0, batch=3)
        for t in s.ask(3):
            s.tell(t.id, Result(reward=float(len(t.id))))
        models.append(list(s.model.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(*models))


def test_importing_strategies_loads_neither_torch_nor_optuna():
    code = ("import sys, kubenas.strategies as s; from kubenas.spaces import build_space; "
            "s.make_strategy('evolution', build_space('nasbench201')); "
            "print('torch' in sys.modules, 'optuna' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_policy_advantage_is_measured_against_earlier_rewards_only():
    ppo = make_strategy("ppo", NB201, seed=0, batch=50)
    first, second, third = ppo.ask(3)
    ppo.tell(first.id, Result(reward=0.5))
    ppo.tell(second.id, Result(reward=0.9))
    ppo.tell(third.id, Result(reward=0.9))
    baseline_before_third = 0.95 * 0.5 + 0.05 * 0.9
    assert [b["advantage"] for b in ppo.buffer] == pytest.approx([0.0, 0.4, 0.9 - baseline_before_third])
    assert ppo.baseline == pytest.approx(0.95 * baseline_before_third + 0.05 * 0.9)
