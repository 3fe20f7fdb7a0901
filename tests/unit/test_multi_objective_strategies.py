"""The multi-objective strategies (nsga2, parego, evolution and local search with several
metrics) on a synthetic two-objective problem: they find a better front than random search,
work asynchronously, under the dedup layer, and restore from a checkpoint exactly."""

from __future__ import annotations

import json
import random
import statistics

import pytest

from kubenas.errors import InvalidSpec
from kubenas.objectives import Objectives, hypervolume
from kubenas.spaces import build_space
from kubenas.strategies import MULTI_OBJECTIVE_STRATEGIES, STRATEGIES, Result, make_strategy
from kubenas.strategies.dedup import Deduplicated
from kubenas.strategies.encoding import Encoding

NB201 = build_space("nasbench201")
TWO = Objectives.parse("validationAccuracy:max,parameters:min")
# Small settings so that learning shows within a test's budget.
FAST = {
    "evolution": {"population": 12, "sample": 4},
    "nsga2": {"population": 12},
    # Scoring sampled candidates, not the whole space, keeps the GP's proposals cheap in a test.
    "parego": {"refit_every": 5, "initial": 8, "exhaustive_limit": 0, "candidates": 300},
}
LEARNING = ["evolution", "local-search", "nsga2", "parego"]


def toy_problem(space=NB201, seed=3):
    """Accuracy rises with each edge's operation's quality (weighted per edge, plus a bonus
    for a hidden target operation), parameters with its cost: a front of many trade-offs.
    Returns (evaluate(genotype) -> (accuracy, cost), reference point for the hypervolume)."""
    enc = Encoding(space)
    rng = random.Random(seed)
    weights = [1.0 + rng.random() for _ in enc.sizes]
    target = enc.random(rng)
    quality = [rng.random() for _ in range(max(enc.sizes))]
    price = [rng.choice([0.0, 1.0, 9.0]) for _ in range(max(enc.sizes))]

    def evaluate(genotype):
        ind = enc.indices(genotype)
        accuracy = sum(w * (quality[i] + (0.5 if i == t else 0.0)) for w, i, t in zip(weights, ind, target))
        params = 1000.0 + sum(w * price[i] for w, i in zip(weights, ind))
        return accuracy / (2 * len(ind)), {"params": params}

    return evaluate, (0.0, 1000.0 + 9 * 2 * len(enc.sizes))


def run_search(strategy, evaluate, budget, workers=4, seed=0):
    """Asynchronous loop: `workers` trials in flight, finished in random order; returns the
    minimised (−accuracy, parameters) of every result."""
    order = random.Random(seed)
    running, seen, issued = [], [], 0
    while issued < budget or running:
        while issued < budget and len(running) < workers:
            running += strategy.ask(1)
            issued += 1
        trial = running.pop(order.randrange(len(running)))
        accuracy, cost = evaluate(trial.genotype)
        seen.append(TWO.minimized(TWO.values(accuracy, cost)))
        strategy.tell(trial.id, Result(reward=accuracy, cost=cost))
    return seen


def front_volume(seen, reference):
    return hypervolume(seen, (-reference[0], reference[1]))


@pytest.mark.parametrize("name", LEARNING)
def test_each_strategy_finds_a_better_front_than_random(name):
    evaluate, reference = toy_problem()
    budget, seeds = 60, range(3)
    found = [front_volume(run_search(Deduplicated(make_strategy(name, NB201, seed=s, objectives=TWO,
                                                                **FAST.get(name, {}))), evaluate, budget, seed=s),
                          reference) for s in seeds]
    baseline = [front_volume(run_search(Deduplicated(make_strategy("random", NB201, seed=s)), evaluate, budget, seed=s),
                             reference) for s in seeds]
    assert statistics.fmean(found) > 1.03 * statistics.fmean(baseline), (found, baseline)


@pytest.mark.parametrize("name", MULTI_OBJECTIVE_STRATEGIES)
def test_asynchronous_ask_and_tell_in_any_order(name):
    evaluate, _ = toy_problem()
    strategy = make_strategy(name, NB201, seed=2, objectives=TWO, **FAST.get(name, {}))
    first = strategy.ask(5)
    assert set(strategy.pending) == {t.id for t in first}
    for t in reversed(first[2:]):  # the last asked told first, two still training
        accuracy, cost = evaluate(t.genotype)
        strategy.tell(t.id, Result(reward=accuracy, cost=cost))
    more = strategy.ask(3)
    assert set(strategy.pending) == {t.id for t in first[:2] + more}
    strategy.tell(first[0].id, Result(reward=None, status="failed", error="out of memory"))
    strategy.tell(first[1].id, Result(reward=0.5, cost={}))  # a metric not measured: no values
    strategy.tell(first[1].id, Result(reward=0.5, cost={"params": 1.0}))  # a repeat is ignored
    assert set(strategy.pending) == {t.id for t in more}
    assert len(strategy.ask(2)) == 2


@pytest.mark.parametrize("name", LEARNING)
def test_under_dedup_no_architecture_is_trained_twice(name):
    evaluate, _ = toy_problem()
    strategy = Deduplicated(make_strategy(name, NB201, seed=4, objectives=TWO, **FAST.get(name, {})))
    issued = []

    class Recording:
        def ask(self, n):
            trials = strategy.ask(n)
            issued.extend(NB201.hash(t.genotype) for t in trials)
            return trials

        def tell(self, trial_id, result):
            strategy.tell(trial_id, result)

    run_search(Recording(), evaluate, budget=80)
    assert len(issued) == len(set(issued)) == 80


def drive(strategy, evaluate, steps, rng, running):
    """Keep three trials in flight; each step tells one (chosen by `rng`) and asks one."""
    proposals = []
    for _ in range(steps):
        while len(running) < 3:
            trial = strategy.ask(1)[0]
            running.append(trial)
            proposals.append(NB201.hash(trial.genotype))
        trial = running.pop(rng.randrange(len(running)))
        accuracy, cost = evaluate(trial.genotype)
        strategy.tell(trial.id, Result(reward=accuracy, cost=cost))
    return proposals


@pytest.mark.parametrize("name", MULTI_OBJECTIVE_STRATEGIES)
def test_a_restored_strategy_proposes_what_the_uninterrupted_one_would(name):
    evaluate, _ = toy_problem()

    def build():
        return make_strategy(name, NB201, seed=6, objectives=TWO, **FAST.get(name, {}))

    a, rng_a, running_a = build(), random.Random(1), []
    drive(a, evaluate, 30, rng_a, running_a)
    saved = json.loads(json.dumps(a.state_dict(), allow_nan=False))  # plain JSON: no pickle, no NaN
    rng_b = random.Random()
    rng_b.setstate(rng_a.getstate())
    running_b = [type(t)(**t.to_dict()) for t in running_a]
    expected = drive(a, evaluate, 15, rng_a, running_a)
    b = build()
    b.load_state_dict(saved)
    assert drive(b, evaluate, 15, rng_b, running_b) == expected


def test_nsga2_breeds_from_the_architectures_injected_into_it():
    """Trials the dedup layer injects join NSGA-II's current generation, and keep it across a restore."""
    evaluate, _ = toy_problem()

    def build():
        return make_strategy("nsga2", NB201, seed=0, objectives=TWO, population=4)

    strategy, rng = build(), random.Random(0)
    injected = [strategy.inject(NB201.sample(rng)) for _ in range(4)]

    def tell(trials):
        for trial in trials:
            accuracy, cost = evaluate(trial.genotype)
            strategy.tell(trial.id, Result(accuracy, cost=cost))

    tell(injected)
    tell(strategy.ask(4))  # generation 1, bred from the injected four
    sampler, study = strategy.study.sampler, strategy.study
    assert sorted(t.number for t in sampler.get_population(study, 0)) == [0, 1, 2, 3]
    parents = {t.number for t in sampler.get_parent_population(study, 1)}
    assert parents and parents <= {0, 1, 2, 3}
    saved = json.loads(json.dumps(strategy.state_dict()))
    assert [r["generation"] for r in saved["records"]] == [0, 0, 0, 0, 1, 1, 1, 1]
    restored = build()
    restored.load_state_dict(saved)
    assert restored.state_dict() == saved


def test_single_objective_behaviour_is_unchanged():
    """One metric: evolution and local search propose exactly what they proposed before objectives existed."""
    evaluate, _ = toy_problem()
    for name in ("evolution", "local-search"):
        runs = []
        for objectives in (None, Objectives()):
            kwargs = {} if objectives is None else {"objectives": objectives}
            strategy = make_strategy(name, NB201, seed=8, **FAST.get(name, {}), **kwargs)
            runs.append(drive(strategy, lambda g: (evaluate(g)[0], {}), 40, random.Random(0), []))
        assert runs[0] == runs[1], name


def test_multi_objective_local_search_keeps_a_non_dominated_archive():
    evaluate, _ = toy_problem()
    strategy = make_strategy("local-search", NB201, seed=1, objectives=TWO)
    run_search(strategy, evaluate, budget=60)
    points = [m["point"] for m in strategy.archive]
    assert len(points) > 1
    assert all(not (q != p and all(a <= b for a, b in zip(q, p))) for p in points for q in points)


@pytest.mark.parametrize("name", sorted(set(STRATEGIES) - set(MULTI_OBJECTIVE_STRATEGIES)))
def test_a_single_metric_strategy_refuses_several_objectives(name):
    with pytest.raises(InvalidSpec, match=f"objective.metrics: {name} optimises one metric"):
        make_strategy(name, NB201, seed=0, objectives=TWO)


def test_the_controller_builds_the_strategy_with_the_manifests_objectives():
    from kubenas.manifest import parse_manifest
    from kubenas_controller.strategy import build_strategy

    search = parse_manifest({
        "apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch", "metadata": {"name": "x"},
        "spec": {"strategy": {"algorithm": "nsga2", "parameters": {"population": 8, "mutationProbability": 0.2}},
                 "objective": {"metrics": [{"name": "validationAccuracy", "goal": "maximize"},
                                           {"name": "latency", "goal": "minimize"}]}}})
    strategy = build_strategy(search.spec, NB201)
    inner = strategy.inner  # under the dedup layer
    assert inner.name == "nsga2" and inner.objectives.names == ("validationAccuracy", "latency")
    assert inner.ga_options["population_size"] == 8 and inner.ga_options["mutation_prob"] == 0.2
    assert search.spec.objective.uses_latency  # the trainers must measure what the search optimises


@pytest.mark.parametrize("metric, cost_key", [("parameters", "params"), ("multiplyAdds", "multiply_adds"),
                                              ("latencySeconds", "latency_seconds")])
def test_the_cost_penalty_reads_the_cost_the_trainers_post(metric, cost_key):
    from kubenas.manifest import parse_manifest
    from kubenas_controller.strategy import build_strategy

    search = parse_manifest({
        "apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch", "metadata": {"name": "x"},
        "spec": {"objective": {"costPenalty": {"metric": metric, "target": 1e5}}}})
    constrained = build_strategy(search.spec, NB201).inner  # under the dedup layer
    assert constrained.soft.metric == cost_key


# --- the benchmark: `kubenas bench strategies --objectives` ------------------------------------

@pytest.fixture
def cost_table(tmp_path):
    """All 729 cells over three operations, with accuracy rising and parameters growing with
    the number of convolutions (a front of trade-offs)."""
    import itertools

    from kubenas.spaces.nasbench201 import format_cellstr

    rng = random.Random(0)
    lines = ["index,cellstr,val_acc,test_acc,parameters"]
    for i, ops in enumerate(itertools.product(("skip_connect", "nor_conv_1x1", "nor_conv_3x3"), repeat=6)):
        score = sum(op == "nor_conv_3x3" for op in ops) + 0.6 * sum(op == "nor_conv_1x1" for op in ops)
        params = 1000 + 90 * sum(op == "nor_conv_3x3" for op in ops) + 10 * sum(op == "nor_conv_1x1" for op in ops)
        lines.append(f"{i},{format_cellstr(list(ops))},{50 + 5 * score + 3 * rng.random():.3f},"
                     f"{50 + 5 * score + 3 * rng.random():.3f},{params}")
    path = tmp_path / "costs.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_the_harness_scores_a_search_by_the_share_of_the_true_fronts_hypervolume(cost_table):
    from kubenas.bench import Spec, load_table, simulate
    from kubenas.bench.harness import _pareto_scores, table_front

    table = load_table(cost_table)
    scale = table_front(table, TWO)
    assert scale["reference"] == [max(p[0] for p in scale["members"]), max(p[1] for p in scale["members"])]
    every = [TWO.minimized(TWO.values(e.val_acc, e.cost)) for e in table.entries.values()]
    scores = _pareto_scores(table, TWO, every)  # a search that saw every cell
    assert scores["hypervolume"] == pytest.approx(1.0) and scores["hypervolume_wide"] == pytest.approx(1.0)
    assert scores["front"] == scale["size"] > 3
    few = simulate(table, Spec("random"), seed=0, budget=20, workers=4, objectives=TWO)
    assert 0.0 <= few.hypervolume < 1.0 and few.hypervolume <= few.hypervolume_wide < 1.0


def test_bench_cli_prints_the_hypervolume_table(cost_table, capsys):
    from kubenas.cli import main

    code = main(["bench", "strategies", "--table", cost_table, "--objectives", "validationAccuracy:max,parameters:min",
                 "--budget", "30", "--workers", "4", "--seeds", "2", "--processes", "1",
                 "--strategies", "random,nsga2,evolution", "--param", "evolution.population=10",
                 "--param", "evolution.sample=3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "reference point: the true front's nadir" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| name")]
    assert [r.split("|")[1].strip() for r in rows] == ["random", "nsga2", "evolution"]


@pytest.mark.parametrize("argv, message", [
    (["--objectives", "validationAccuracy:max,flops:min"], "--objectives: unknown metric 'flops'"),
    (["--objectives", "validationAccuracy:max,parameters:min", "--strategies", "tpe"], "tpe optimises one metric"),
    (["--objectives", "validationAccuracy:max,latency:min", "--strategies", "random"], "the table has no value for latency"),
])
def test_bench_cli_objective_errors_are_one_line(cost_table, capsys, argv, message):
    from kubenas.cli import main

    code = main(["bench", "strategies", "--table", cost_table, "--seeds", "1", "--budget", "5"] + argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err, err
