"""The dedup layer and constraints: no GPU time on repeats, violations never reach training."""

from __future__ import annotations

import random

import pytest

from kubenas.spaces import build_space
from kubenas.strategies import Result, SearchExhausted, Strategy, make_strategy
from kubenas.strategies.constraints import Constrained, SoftCost, mnas_reward, torch_cost_fn, violations
from kubenas.strategies.dedup import Deduplicated

SPACE = build_space("nasbench201")
SMALL = build_space({"type": "nasbench201", "operations": ["none", "skip_connect"]})  # 64 cells


class Scripted(Strategy):
    """Proposes a fixed cycle of genotypes and records what it is told."""

    name = "scripted"

    def __init__(self, space, genotypes, seed=0):
        super().__init__(space, seed)
        self.genotypes = genotypes
        self.k = 0
        self.told: list[tuple[str, Result]] = []

    def ask(self, n=1):
        return self._ask_each(n, self._propose)

    def _propose(self):
        g = self.genotypes[self.k % len(self.genotypes)]
        self.k += 1
        return g

    def _observe(self, trial, result):
        self.told.append((trial.id, result))


def cell(*ops):
    from kubenas.spaces.nasbench201 import format_cellstr

    return {"space": "nasbench201", "cell": format_cellstr(list(ops)), "hparams": {}}


A = cell("nor_conv_3x3", "none", "none", "skip_connect", "none", "nor_conv_3x3")
B = cell("skip_connect", "none", "none", "skip_connect", "none", "nor_conv_3x3")
C = cell("avg_pool_3x3", "none", "none", "skip_connect", "none", "nor_conv_3x3")


def test_an_evaluated_architecture_is_answered_from_the_book():
    inner = Scripted(SPACE, [A, B, A, A, C])
    d = Deduplicated(inner)
    t1, t2 = d.ask(2)
    d.tell(t1.id, Result(reward=70.0))
    d.tell(t2.id, Result(reward=60.0))
    t3 = d.ask(1)[0]  # A, A are repeats: answered from the book, then C is issued
    assert t3.genotype == C
    assert d.hits == 2
    reused = [r for tid, r in inner.told if tid not in (t1.id, t2.id)]
    assert [r.reward for r in reused] == [70.0, 70.0]
    assert set(d.pending) == {t3.id}


def test_a_repeat_of_a_trial_in_flight_waits_for_its_result():
    inner = Scripted(SPACE, [A, A, B])
    d = Deduplicated(inner)
    t1, t2 = d.ask(2)
    assert (t1.genotype, t2.genotype) == (A, B)
    assert len(inner.pending) == 3  # the waiting repeat is pending in the inner strategy
    d.tell(t1.id, Result(reward=55.0))
    assert [r.reward for _, r in inner.told] == [55.0, 55.0]
    d.tell(t1.id, Result(reward=99.0))  # duplicate delivery changes nothing
    assert len(inner.told) == 2


def test_failed_results_are_not_reused():
    inner = Scripted(SPACE, [A])
    d = Deduplicated(inner, max_attempts=3)
    t1 = d.ask(1)[0]
    d.tell(t1.id, Result(reward=None, status="failed", error="node lost"))
    t2 = d.ask(1)[0]
    assert t2.genotype == A  # trained again


def test_endless_repeats_fall_back_to_an_unseen_random_architecture():
    inner = Scripted(SPACE, [A])
    d = Deduplicated(inner, max_attempts=5)
    t1 = d.ask(1)[0]
    d.tell(t1.id, Result(reward=1.0))
    t2 = d.ask(1)[0]
    assert t2.genotype != A and d.fallbacks == 1
    assert t2.id in inner.pending  # injected: the inner strategy will hear its result
    d.tell(t2.id, Result(reward=2.0))
    assert inner.told[-1] == (t2.id, Result(reward=2.0))


def test_an_exhausted_space_says_so():
    d = Deduplicated(make_strategy("random", SMALL, seed=0), max_attempts=20)
    seen = set()
    with pytest.raises(SearchExhausted, match="not evaluated"):
        for _ in range(200):
            for t in d.ask(1):
                assert SMALL.hash(t.genotype) not in seen
                seen.add(SMALL.hash(t.genotype))
                d.tell(t.id, Result(reward=1.0))
    assert len(seen) == 64


def test_repeat_mode_trains_repeats():
    d = Deduplicated(Scripted(SPACE, [A]), repeat=True)
    t1 = d.ask(1)[0]
    d.tell(t1.id, Result(reward=1.0))
    assert d.ask(1)[0].genotype == A


def test_dedup_never_issues_an_architecture_twice_for_a_real_strategy():
    d = Deduplicated(make_strategy("evolution", SPACE, seed=0, population=5, sample=2))
    issued, running, rng = [], [], random.Random(0)
    for _ in range(80):
        running += d.ask(1)
        issued.append(SPACE.hash(running[-1].genotype))
        if len(running) > 4:
            t = running.pop(rng.randrange(len(running)))
            d.tell(t.id, Result(reward=t.genotype["cell"].count("conv_3x3") * 1.0))
    assert len(set(issued)) == len(issued)
    assert d.hits > 0


# --- constraints ----------------------------------------------------------------------
def conv_cost(genotype):
    c = genotype["cell"]
    return {"params": 1000.0 * c.count("conv_3x3") + 100.0 * c.count("conv_1x1") + 1.0,
            "multiply_adds": 5.0 * c.count("conv")}


def test_violations_name_the_limit():
    assert violations({"params": 5.0}, {"params": 10}) == []
    assert violations({"params": 50.0}, {"params": 10}) == ["params 50 exceeds the limit 10"]
    assert "no such cost" in violations({"params": 5.0}, {"latency": 1})[0]


@pytest.mark.parametrize("name", ["random", "evolution", "tpe", "reinforce", "gp-bo"])
def test_constraint_violations_never_reach_training(name):
    inner = make_strategy(name, SPACE, seed=0, **({"initial": 4} if name == "gp-bo" else {}))
    c = Constrained(inner, conv_cost, limits={"params": 2000.0, "multiply_adds": 15.0})
    for _ in range(8 if name == "gp-bo" else 25):
        for t in c.ask(2):
            assert not violations(conv_cost(t.genotype), c.limits)
            c.tell(t.id, Result(reward=50.0 + t.genotype["cell"].count("conv")))
    assert c.rejected > 0
    assert all(not violations(conv_cost(t.genotype), c.limits) for t in c.pending.values())


def test_rejections_are_told_to_the_inner_strategy_as_failures():
    inner = Scripted(SPACE, [A, A, B])  # A has two conv_3x3: 2001 params
    c = Constrained(inner, conv_cost, limits={"params": 1500.0})
    t = c.ask(1)[0]
    assert t.genotype == B
    assert [r.status for _, r in inner.told] == ["failed", "failed"]
    assert "params 2001 exceeds the limit 1500" in inner.told[0][1].error


def test_constraints_that_nothing_meets_fail_readably():
    c = Constrained(make_strategy("random", SPACE, seed=0), conv_cost, limits={"params": 0.5}, max_attempts=50)
    with pytest.raises(SearchExhausted, match="limits"):
        c.ask(1)


def test_mnas_reward_follows_the_paper():
    assert mnas_reward(0.8, 80e6, 80e6) == pytest.approx(0.8)
    assert mnas_reward(0.8, 160e6, 80e6, alpha=-0.07, beta=-0.07) == pytest.approx(0.8 * 2 ** -0.07)
    assert mnas_reward(0.8, 40e6, 80e6, alpha=-0.07, beta=-0.07) == pytest.approx(0.8 * 0.5 ** -0.07)
    # Hard constraint flavour: alpha = 0 below the target, beta = -1 above.
    assert mnas_reward(0.8, 40e6, 80e6, alpha=0.0, beta=-1.0) == pytest.approx(0.8)
    assert mnas_reward(0.8, 160e6, 80e6, alpha=0.0, beta=-1.0) == pytest.approx(0.4)


def test_soft_cost_rescales_rewards_and_prefers_measured_costs():
    inner = Scripted(SPACE, [A, B])
    c = Constrained(inner, conv_cost, soft=SoftCost("params", target=1000.0, alpha=-0.07, beta=-0.07))
    ta, tb = c.ask(2)
    c.tell(ta.id, Result(reward=0.9))
    c.tell(tb.id, Result(reward=0.9, cost={"params": 4000.0}))  # measured wins over the estimate
    (_, ra), (_, rb) = inner.told
    assert ra.reward == pytest.approx(0.9 * (2001 / 1000) ** -0.07)
    assert rb.reward == pytest.approx(0.9 * 4.0 ** -0.07)
    assert rb.cost["params"] == 4000.0


def test_torch_cost_function_counts_the_real_network():
    cost = torch_cost_fn(channels=8, cells_per_stage=1)
    small, big = cost(cell(*["none"] * 5, "skip_connect")), cost(cell(*["nor_conv_3x3"] * 6))
    assert 0 < small["params"] < big["params"]
    assert 0 < small["multiply_adds"] < big["multiply_adds"]
