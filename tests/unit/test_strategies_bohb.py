"""BOHB: Hyperband brackets, a Parzen model per budget (the highest with enough observations),
asynchronous promotions, exact checkpoints."""

from __future__ import annotations

import json
import random
import statistics

import numpy as np
import pytest

from kubenas.errors import InvalidSpec
from kubenas.spaces import build_space
from kubenas.strategies import Result, make_strategy
from kubenas.strategies.bohb import Parzen
from kubenas.strategies.multifidelity import CONTINUE, PROMOTE, STOP
from tests.unit.test_strategies import synthetic

NB201 = build_space("nasbench201")
HP_SPACE = build_space({
    "type": "nasbench201",
    "hyperparameters": [
        {"name": "learningRate", "type": "float", "low": 1e-3, "high": 1.0, "log": True},
        {"name": "batchSize", "type": "categorical", "choices": [64, 128, 256]},
    ],
})


def toy(space, seed=7):
    """Final quality: the weighted share of decisions equal to a hidden target (the strategies'
    synthetic objective, normalised); curves rise towards it."""
    reward, total, _ = synthetic(space, seed)

    def quality(genotype) -> float:
        return reward(genotype) / total

    def at_epoch(genotype, epoch: int) -> float:
        return quality(genotype) * (1 - 0.5 ** epoch)

    return quality, at_epoch


def simulate(strategy, at_epoch, trials, max_epochs, workers=4, seed=0, epochs=None):
    """Trainers advancing one epoch at a time in random order, reporting every epoch and
    honouring the decisions, until `trials` were started (or `epochs` spent); returns the
    trials finished at max_epochs and the epochs spent."""
    order, running, issued, full, spent = random.Random(seed), {}, 0, [], 0

    def more() -> bool:
        return issued < trials and (epochs is None or spent < epochs)

    while more() or running:
        while more() and len(running) < workers:
            for t in strategy.ask(1):
                running[t.id] = (t, [])
                issued += 1
        trial_id = order.choice(sorted(running))
        trial, curve = running[trial_id]
        curve.append(at_epoch(trial.genotype, len(curve) + 1))
        spent += 1
        decision = strategy.report(trial_id, len(curve), curve[-1])
        if decision.action == STOP:
            del running[trial_id]
            status = "succeeded" if len(curve) >= max_epochs else "stopped"
            if status == "succeeded":
                full.append(trial)
            strategy.tell(trial_id, Result(reward=curve[-1], status=status, curve=list(curve), epochs=len(curve)))
        else:
            assert decision.action in (CONTINUE, PROMOTE) and decision.fidelity > len(curve) - 1
    return full, spent


@pytest.mark.parametrize("space_name", ["nasbench201", "nasnet", "darts", "hparams"])
def test_proposes_only_valid_genotypes_at_a_rung(space_name):
    space = HP_SPACE if space_name == "hparams" else build_space(space_name)
    _, at_epoch = toy(space)
    bohb = make_strategy("bohb", space, seed=1, max_epochs=9, min_points=3)
    seen = []
    original_ask = bohb.ask

    def ask(n=1):
        trials = original_ask(n)
        seen.extend(trials)
        return trials

    bohb.ask = ask
    simulate(bohb, at_epoch, trials=40, max_epochs=9)
    assert bohb.model_budget is not None  # the model proposed some of them
    for t in seen:
        assert space.validate(t.genotype) == t.genotype
    assert {t.fidelity for t in seen} <= {1, 3, 9}


def test_brackets_start_trials_at_higher_rungs_in_hyperband_proportions():
    bohb = make_strategy("bohb", NB201, seed=0, max_epochs=27, min_epochs=1, eta=3)
    starts = [t.fidelity for t in bohb.ask(98)]
    counts = {r: starts.count(r) for r in (1, 3, 9, 27)}
    assert counts == {1: 54, 3: 24, 9: 12, 27: 8}  # Hyperband's n_i = 27, 12, 6, 4 per round of brackets


def test_promotes_the_best_of_a_rung_and_stops_the_rest():
    bohb = make_strategy("bohb", NB201, seed=0, max_epochs=9, eta=3, brackets=1)
    trials = bohb.ask(6)
    assert {t.fidelity for t in trials} == {1}
    values = [0.30, 0.20, 0.10, 0.90, 0.25, 0.05]
    actions = [bohb.report(t.id, 1, v).action for t, v in zip(trials, values)]
    # In arrival order, a trial in the top 1/3 of its rung so far goes on; 0.90 is the best of all.
    assert actions == [PROMOTE, STOP, STOP, PROMOTE, STOP, STOP]
    best = trials[3]
    assert best.fidelity == 3 and bohb.report(best.id, 2, 0.92).action == CONTINUE
    assert set(bohb.observations[1]) == {t.id for t in trials}


def test_the_model_uses_the_highest_budget_with_enough_observations():
    bohb = make_strategy("bohb", NB201, seed=0, max_epochs=9, random_fraction=0.0, min_points=3)
    assert bohb.min_points == 3 and make_strategy("bohb", NB201).min_points == 7  # decisions + 1

    def observe(budget, n):
        for t in bohb.ask(n):
            curve = [0.5 + 0.01 * len(bohb.observations[1])] * budget
            bohb.tell(t.id, Result(reward=curve[-1], status="succeeded" if budget == 9 else "stopped",
                                   curve=curve, epochs=budget))

    observe(1, 4)
    assert bohb._model_budget() is None  # 4 < min_points + 2
    observe(1, 1)
    assert bohb._model_budget() == 1
    observe(3, 4)  # also fills budget 1
    assert bohb._model_budget() == 1
    observe(3, 1)
    assert bohb._model_budget() == 3 and len(bohb.observations[3]) == 5
    bohb.ask(1)
    assert bohb.model_budget == 3 and bohb.stats() == {"bohb_model_budget": 3.0}


def test_failed_trials_are_bad_observations_at_the_budget_they_trained_towards():
    bohb = make_strategy("bohb", NB201, seed=0, max_epochs=9, brackets=1)
    a, b = bohb.ask(2)
    bohb.report(a.id, 1, 0.5)  # promoted: now training towards 3
    bohb.tell(a.id, Result(reward=None, status="failed", error="OOM"))
    bohb.tell(b.id, Result(reward=None, status="failed", error="constraint: params"))
    assert bohb.observations[1][a.id][1] == 0.5 and bohb.observations[3][a.id][1] is None
    assert bohb.observations[1][b.id][1] is None
    assert not bohb.pending


def test_parzen_estimators_prefer_what_they_were_fitted_on():
    sizes, ordered = [5, 5, 8], [False, False, True]
    good = Parzen([[0, 1, 2], [0, 1, 3], [0, 2, 2]], sizes, ordered, min_bandwidth=1e-3)
    near, far = good.log_density([[0, 1, 2], [4, 4, 7]])
    assert near > far
    draws = good.sample(500, np.random.default_rng(0), factor=3.0)
    assert draws.min() >= 0 and (draws < sizes).all()
    assert (draws[:, 0] == 0).mean() > 0.5  # a widened kernel still centres on the data


def test_model_based_proposals_beat_random_ones_at_equal_budget():
    quality, at_epoch = toy(NB201)
    found = {}
    for label, fraction in (("model", 1 / 3), ("random", 1.0)):  # random: Hyperband alone
        best = []
        for seed in range(4):
            bohb = make_strategy("bohb", NB201, seed=seed, max_epochs=9, random_fraction=fraction)
            full, spent = simulate(bohb, at_epoch, trials=10**6, epochs=600, max_epochs=9, seed=seed)
            assert 600 <= spent < 600 + 4 * 9
            best.append(max(quality(t.genotype) for t in full))
        found[label] = statistics.fmean(best)
    assert found["model"] > found["random"] + 0.1, found


def test_checkpoint_restores_the_same_proposals_and_decisions():
    _, at_epoch = toy(HP_SPACE)

    def run(strategy, steps, state):
        """Deterministic async driver; `state` = (rng, running) carries over a restore."""
        rng, running = state
        log = []
        for _ in range(steps):
            for t in strategy.ask(rng.randint(0, 2)):
                running[t.id] = (t, [])
                log.append(("ask", t.id, HP_SPACE.to_json(t.genotype), t.fidelity))
            if not running:
                continue
            trial_id = rng.choice(sorted(running))
            trial, curve = running[trial_id]
            curve.append(at_epoch(trial.genotype, len(curve) + 1))
            d = strategy.report(trial_id, len(curve), curve[-1])
            log.append(("report", trial_id, d.action, d.fidelity))
            if d.action == STOP:
                del running[trial_id]
                strategy.tell(trial_id, Result(reward=curve[-1], status="stopped" if len(curve) < 9 else "succeeded",
                                               curve=list(curve), epochs=len(curve)))
        return log

    def build():
        return make_strategy("bohb", HP_SPACE, seed=3, max_epochs=9, min_points=3)

    a = build()
    rng, running = random.Random(5), {}
    run(a, 60, (rng, running))
    assert a.model_budget is not None
    state = json.loads(json.dumps(a.state_dict(), allow_nan=False))
    rng_b = random.Random()
    rng_b.setstate(rng.getstate())
    running_b = {k: (type(t)(**t.to_dict()), list(c)) for k, (t, c) in running.items()}
    expected = run(a, 60, (rng, running))

    b = build()
    b.load_state_dict(state)
    # The restored strategy's pending trials are the runtime's: keep one object per trial.
    running_b = {k: (b.pending[k], c) for k, (_, c) in running_b.items()}
    assert run(b, 60, (rng_b, running_b)) == expected
    assert any(e[0] == "ask" for e in expected) and any(e[2] == PROMOTE for e in expected if e[0] == "report")


@pytest.mark.parametrize("params, message", [
    ({"random_fraction": 1.5}, "random_fraction"),
    ({"min_epochs": 10, "max_epochs": 9}, "min_epochs"),
    ({"eta": 1}, "eta"),
    ({"top_fraction": 0.0}, "top_fraction"),
    ({"brackets": 9, "max_epochs": 9}, "brackets"),
])
def test_bad_parameters_are_named(params, message):
    with pytest.raises(InvalidSpec, match=f"strategy bohb: .*{message}"):
        make_strategy("bohb", NB201, **params)
