"""ASHA / Hyperband and median stopping, on hand-made learning curves."""

from __future__ import annotations

import pytest

from kubenas.spaces import build_space
from kubenas.strategies import Result, Strategy, make_strategy
from kubenas.strategies.dedup import Deduplicated
from kubenas.strategies.multifidelity import (
    ASHA,
    CONTINUE,
    PROMOTE,
    STOP,
    MedianStopping,
    MultiFidelity,
    quantile,
    rung_epochs,
)


def test_rungs_grow_by_eta_and_end_at_max_epochs():
    assert rung_epochs(1, 27, 3) == [1, 3, 9, 27]
    assert rung_epochs(1, 20, 3) == [1, 3, 9, 20]
    assert rung_epochs(2, 16, 2) == [2, 4, 8, 16]
    assert rung_epochs(5, 5, 3) == [5]
    with pytest.raises(ValueError, match="eta"):
        rung_epochs(1, 9, 1)


def test_quantile_matches_linear_interpolation():
    assert quantile([0.5, 0.6, 0.7, 0.55], 2 / 3) == pytest.approx(0.6)
    assert quantile([3.0], 0.5) == 3.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5


def test_asha_promotes_the_top_third_and_stops_the_rest():
    asha = ASHA(max_epochs=9, min_epochs=1, eta=3)
    for t in "abcd":
        assert asha.start(t) == 1
    # Rung 1 (1 epoch): a alone is promoted (nothing to compare with yet).
    assert asha.decide("a", 1, 0.50).action == PROMOTE
    assert asha.decide("b", 1, 0.60).action == PROMOTE  # [0.5, 0.6]: cutoff 0.567
    assert asha.decide("c", 1, 0.70).action == PROMOTE  # [.5,.6,.7]: cutoff 0.633
    d = asha.decide("d", 1, 0.55)  # [.5,.6,.7,.55]: cutoff 0.6 -> stop
    assert d.action == STOP and "top 1/3" in d.reason
    e = ASHA(max_epochs=9, min_epochs=1, eta=3)
    for t, v in zip("abc", (0.5, 0.6, 0.7)):
        e.start(t)
        e.decide(t, 1, v)
    e.start("z")
    promoted = e.decide("z", 1, 0.8)  # [.5,.6,.7,.8]: cutoff 0.7 -> promote to 3 epochs
    assert promoted.action == PROMOTE and promoted.fidelity == 3


def test_asha_continues_between_rungs_and_finishes_at_max_epochs():
    asha = ASHA(max_epochs=9, min_epochs=1, eta=3)
    asha.start("a")
    first = asha.decide("a", 1, 0.5)
    assert (first.action, first.fidelity) == (PROMOTE, 3)
    assert asha.decide("a", 1, 0.5).action == CONTINUE  # a re-sent report: now training towards 3
    assert asha.decide("a", 2, 0.6).action == CONTINUE
    assert asha.decide("a", 3, 0.7).action == PROMOTE
    for epoch in range(4, 9):
        assert asha.decide("a", epoch, 0.8).action == CONTINUE
    last = asha.decide("a", 9, 0.9)
    assert last.action == STOP and "finished" in last.reason


def test_asha_for_losses_keeps_the_lowest():
    asha = ASHA(max_epochs=4, min_epochs=1, eta=2, mode="min")
    for t, v in zip("abc", (1.0, 2.0, 3.0)):
        asha.start(t)
        asha.decide(t, 1, v)
    asha.start("good"), asha.start("bad")
    assert asha.decide("good", 1, 0.5).action == PROMOTE
    assert asha.decide("bad", 1, 5.0).action == STOP


def test_hyperband_brackets_start_at_higher_rungs_in_hyperband_proportions():
    hb = ASHA(max_epochs=27, min_epochs=1, eta=3, brackets=3)
    starts = [hb.start(f"t{i}") for i in range(60)]
    counts = {r: starts.count(r) for r in set(starts)}
    assert set(counts) == {1, 3, 9}
    assert counts[1] > counts[3] > counts[9] > 0
    # Brackets are judged separately: a bracket-1 trial is not compared with bracket-0 ones.
    first_of = {r: f"t{starts.index(r)}" for r in (1, 3)}
    for i, r in enumerate(starts):
        if r == 1 and f"t{i}" != first_of[1]:
            hb.decide(f"t{i}", 1, 0.9)
    assert hb.decide(first_of[3], 3, 0.1).action == PROMOTE  # alone in its bracket's rung


def test_median_stopping_on_hand_made_curves():
    ms = MedianStopping(max_epochs=10, min_trials=3, start_epoch=2)
    completed = {"a": [0.5, 0.6, 0.7, 0.8], "b": [0.4, 0.5, 0.6, 0.7], "c": [0.3, 0.4, 0.5, 0.6]}
    for t, curve in completed.items():
        ms.start(t)
        for e, v in enumerate(curve, 1):
            ms.decide(t, e, v)
        ms.finish(t, "succeeded", curve)
    ms.start("x"), ms.start("y"), ms.start("z")
    # Running averages at epoch 2: a .55, b .45, c .35 -> median .45.
    assert ms.decide("x", 1, 0.0).action == CONTINUE  # before start_epoch
    stop = ms.decide("x", 2, 0.44)  # best .44 < .45
    assert stop.action == STOP and "median" in stop.reason
    assert ms.decide("y", 1, 0.46).action == CONTINUE
    assert ms.decide("y", 2, 0.30).action == CONTINUE  # best so far .46 >= .45
    assert ms.decide("z", 1, 0.2).action == CONTINUE
    assert ms.decide("z", 2, 0.45).action == CONTINUE  # equal to the median is not strictly worse


def test_median_stopping_waits_for_min_trials_and_counts_only_completed_ones():
    ms = MedianStopping(max_epochs=10, min_trials=3, start_epoch=1)
    for t, v in (("a", 0.9), ("b", 0.8)):
        ms.start(t)
        ms.decide(t, 1, v)
        ms.finish(t, "succeeded", [v])
    ms.start("running")
    ms.decide("running", 1, 0.95)  # reported, not completed: does not count
    ms.start("failed")
    ms.decide("failed", 1, 0.99)
    ms.finish("failed", "failed", [0.99])
    ms.start("x")
    assert ms.decide("x", 1, 0.1).action == CONTINUE  # only 2 completed trials
    ms.start("c")
    ms.finish("c", "succeeded", [0.7])  # a curve known only from the final result
    assert ms.decide("x", 1, 0.1).action == STOP


def test_wrapper_sets_fidelity_and_answers_reports():
    space = build_space("nasbench201")
    mf = MultiFidelity(make_strategy("random", space, seed=0), ASHA(max_epochs=9, min_epochs=1, eta=3))
    trials = mf.ask(4)
    assert [t.fidelity for t in trials] == [1, 1, 1, 1]
    values = [0.5, 0.6, 0.7, 0.55]
    decisions = [mf.report(t.id, 1, v) for t, v in zip(trials, values)]
    assert [d.action for d in decisions] == [PROMOTE, PROMOTE, PROMOTE, STOP]
    assert [t.fidelity for t in trials] == [3, 3, 3, 1]
    mf.tell(trials[3].id, Result(reward=0.55, status="stopped", curve=[0.55]))
    assert trials[3].id not in mf.pending and trials[3].id not in mf.inner.pending
    assert mf.report(trials[3].id, 2, 0.9).action == STOP  # finished trials are told to stop
    for t in trials[:3]:
        mf.tell(t.id, Result(reward=0.6))
    assert not mf.pending


def test_wrapper_with_median_stopping_runs_to_max_epochs():
    space = build_space("nasbench201")
    mf = MultiFidelity(make_strategy("evolution", space, seed=0, population=4, sample=2),
                       MedianStopping(max_epochs=5, min_trials=2, start_epoch=2))
    (t,) = mf.ask(1)
    assert t.fidelity == 5
    for e in range(1, 5):
        assert mf.report(t.id, e, 0.1 * e).action == CONTINUE
    assert mf.report(t.id, 5, 0.5).action == STOP


# --- rewards know their fidelity ---------------------------------------------------------------
def run_to_the_end(mf, trial, values):
    """Report `values` epoch by epoch until the scheduler stops the trial; tell the result as a trainer would."""
    curve = []
    for epoch, value in enumerate(values, 1):
        curve.append(value)
        decision = mf.report(trial.id, epoch, value)
        if decision.action == STOP:
            break
    status = "succeeded" if len(curve) == len(values) else "stopped"
    mf.tell(trial.id, Result(reward=curve[-1], status=status, curve=curve, epochs=len(curve)))
    return status


def test_evolution_never_takes_an_early_stopped_trial_into_its_population():
    space = build_space("nasbench201")
    evo = make_strategy("evolution", space, seed=0, population=50, sample=2)
    mf = MultiFidelity(evo, ASHA(max_epochs=9, min_epochs=1, eta=3))
    trials = mf.ask(8)
    finals, statuses = [], []
    for k, t in enumerate(trials):
        values = [0.1 * (k % 5) + 0.01 * e for e in range(1, 10)]
        statuses.append(run_to_the_end(mf, t, values))
        if statuses[-1] == "succeeded":
            finals.append(values[-1])
    assert "stopped" in statuses and "succeeded" in statuses
    assert [r for _, r in evo.population] == pytest.approx(finals)
    assert not mf.pending and not evo.pending


def test_a_stopped_trial_leaves_the_policy_baseline_unchanged():
    space = build_space("nasbench201")
    ppo = make_strategy("ppo", space, seed=0, batch=50)
    mf = MultiFidelity(ppo, ASHA(max_epochs=9, min_epochs=1, eta=3))
    good, poor = mf.ask(2)
    assert mf.report(good.id, 1, 0.5).action == PROMOTE
    assert run_to_the_end(mf, poor, [0.1] * 9) == "stopped"
    assert ppo.baseline is None and ppo.buffer == [] and poor.id not in ppo.pending and poor.id not in ppo.meta
    mf.tell(good.id, Result(reward=0.9, curve=[0.5] * 8 + [0.9], epochs=9))
    assert ppo.baseline == 0.9 and len(ppo.buffer) == 1


def test_a_result_short_of_max_epochs_reaches_a_plain_strategy_without_its_reward():
    space = build_space("nasbench201")
    evo = make_strategy("evolution", space, seed=0, population=5, sample=2)
    told = []
    evo._observe = lambda trial, result: told.append(result)  # noqa: SLF001 - spy on what it is told
    mf = MultiFidelity(evo, ASHA(max_epochs=9, min_epochs=1, eta=3))
    short, full, unknown = mf.ask(3)
    mf.tell(short.id, Result(reward=0.7, status="succeeded", curve=[0.6, 0.65, 0.7], epochs=3))
    mf.tell(full.id, Result(reward=0.8, epochs=9))
    mf.tell(unknown.id, Result(reward=0.75))  # no epochs, no curve: taken as trained to its budget
    assert [(r.status, r.reward, r.epochs) for r in told] == [("stopped", None, 3), ("succeeded", 0.8, 9),
                                                               ("succeeded", 0.75, None)]
    assert "3 of 9 epochs" in told[0].error and told[0].curve == [0.6, 0.65, 0.7]


@pytest.mark.parametrize("dedup", [False, True])
def test_a_fidelity_aware_strategy_sees_genotype_epochs_and_reward(dedup):
    space = build_space("nasbench201")

    class Aware(Strategy):
        name = "aware"
        fidelity_aware = True

        def __init__(self, space, seed=0):
            super().__init__(space, seed)
            self.seen = []

        def ask(self, n=1):
            return self._ask_each(n, lambda: space.sample(self.rng))

        def _observe(self, trial, result):
            self.seen.append((trial.genotype, result.epochs, result.reward, result.status))

    aware = Aware(space)
    mf = MultiFidelity(Deduplicated(aware) if dedup else aware, ASHA(max_epochs=9, min_epochs=1, eta=3))
    a, b = mf.ask(2)
    mf.report(a.id, 1, 0.6)
    assert run_to_the_end(mf, b, [0.2] * 9) == "stopped"
    mf.tell(a.id, Result(reward=0.9, epochs=9))
    assert aware.seen == [(b.genotype, 1, 0.2, "stopped"), (a.genotype, 9, 0.9, "succeeded")]
