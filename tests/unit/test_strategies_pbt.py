"""Population-based training: intervals that resume, exploit/explore, asynchrony, state."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from kubenas.errors import InvalidSpec
from kubenas.spaces import build_space
from kubenas.spec import StrategySpec
from kubenas.strategies import Result, SearchExhausted, make_strategy
from kubenas.strategies.constraints import Constrained
from kubenas.strategies.dedup import Deduplicated

SPACE = build_space({
    "type": "nasbench201",
    "hyperparameters": [
        {"name": "learningRate", "type": "float", "low": 1e-3, "high": 1.0, "log": True},
        {"name": "momentum", "type": "float", "low": 0.0, "high": 0.99},
        {"name": "batchSize", "type": "categorical", "choices": [32, 64, 128]},
    ],
})


class Simulated:
    """Training without torch: a checkpoint is the accuracy reached. The best learning rate
    falls as accuracy rises (an annealing schedule, as in Ray Tune's PBT example), so no fixed
    learning rate stays good for long; an epoch gains more the closer it is (log scale)."""

    def __init__(self):
        self.checkpoints: dict[str, tuple[float, dict]] = {}  # trial id -> (accuracy, genotype)
        self.epochs = 0

    def train(self, trial) -> Result:
        accuracy = 0.0
        if trial.warm_start == "resume" and trial.parent_id is not None:
            accuracy, parent_genotype = self.checkpoints[trial.parent_id]
            assert parent_genotype["cell"] == trial.genotype["cell"], "resume needs the same architecture"
        epochs = trial.fidelity
        self.epochs += epochs
        for _ in range(epochs):
            best_lr = 10 ** (-0.5 - 2.5 * accuracy)
            miss = math.log10(trial.genotype["hparams"]["learningRate"] / best_lr)
            accuracy += (1 - accuracy) * 0.1 * math.exp(-4 * miss * miss)
        self.checkpoints[trial.id] = (accuracy, trial.genotype)
        return Result(reward=accuracy, epochs=trial.fidelity)


def run_pbt(strategy, sim: Simulated, workers: int, seed: int) -> float:
    """Asynchronous driver: up to `workers` intervals in flight, finishing in random order."""
    order, running = random.Random(seed), []
    while True:
        try:
            running += strategy.ask(workers - len(running))
        except SearchExhausted:
            break
        if not running:
            break
        trial = running.pop(order.randrange(len(running)))
        strategy.tell(trial.id, sim.train(trial))
    return max(acc for acc, _ in sim.checkpoints.values())


def test_members_train_in_intervals_that_resume_their_own_checkpoint():
    pbt = make_strategy("pbt", SPACE, seed=0, population=4, perturbation_interval=3, max_epochs=9,
                        quantile_fraction=0.25)
    first = pbt.ask(10)
    assert len(first) == 4, "one interval per member at a time"
    assert all(t.fidelity == 3 and t.parent_id is None and t.warm_start is None for t in first)
    assert pbt.ask(1) == [], "every member trains: nothing to propose, not exhausted"
    # The best member reports first: it is in no bottom quantile, so it continues itself at once.
    pbt.tell(first[2].id, Result(reward=0.9, epochs=3))
    (nxt,) = pbt.ask(5)
    assert (nxt.parent_id, nxt.warm_start, nxt.fidelity) == (first[2].id, "resume", 3)
    assert nxt.genotype == first[2].genotype


def test_the_bottom_quantile_exploits_a_top_member_and_explores_its_hyperparameters():
    pbt = make_strategy("pbt", SPACE, seed=1, population=4, perturbation_interval=2, max_epochs=8,
                        resample_probability=0.0)
    first = pbt.ask(4)
    # Each reporter is above the bottom member of those scored so far: all three continue.
    for trial, reward in zip(first[:3], (0.5, 0.6, 0.9)):
        pbt.tell(trial.id, Result(reward=reward, epochs=2))
    continued = pbt.ask(3)
    assert pbt.stats()["pbt_exploits"] == 0
    # The last to report scores 0.1: ceil(4 * 0.25) = 1 member per quantile, so it copies the 0.9 one.
    pbt.tell(first[3].id, Result(reward=0.1, epochs=2))
    (copier,) = pbt.ask(1)
    top = first[2]
    assert (copier.parent_id, copier.warm_start, copier.fidelity) == (top.id, "resume", 2)
    assert copier.genotype["cell"] == top.genotype["cell"], "weights come with their architecture"
    hp, top_hp = copier.genotype["hparams"], top.genotype["hparams"]
    for name in ("learningRate", "momentum"):
        ratio = hp[name] / top_hp[name]
        assert ratio == pytest.approx(1.2) or ratio == pytest.approx(0.8) or hp[name] in (1e-3, 1.0, 0.0, 0.99)
    assert hp["batchSize"] == top_hp["batchSize"], "resample_probability 0: categoricals are kept"
    assert pbt.stats()["pbt_exploits"] == 1
    assert {t.parent_id for t in continued} == {t.id for t in first[:3]}


def test_resample_probability_one_draws_every_hyperparameter_afresh():
    pbt = make_strategy("pbt", SPACE, seed=2, population=2, perturbation_interval=1, max_epochs=50,
                        resample_probability=1.0)
    a, b = pbt.ask(2)
    pbt.tell(a.id, Result(reward=0.9, epochs=1))
    pbt.tell(b.id, Result(reward=0.1, epochs=1))
    seen = set()
    for _ in range(20):
        for trial in pbt.ask(2):
            seen.add(trial.genotype["hparams"]["batchSize"])
            pbt.tell(trial.id, Result(reward=0.9 if trial.parent_id == a.id else 0.1, epochs=trial.fidelity))
    assert seen == {32, 64, 128}


def test_members_stop_at_max_epochs_and_then_the_search_is_exhausted():
    pbt = make_strategy("pbt", SPACE, seed=3, population=3, perturbation_interval=4, max_epochs=10)
    told = []
    while True:
        try:
            trials = pbt.ask(3)
        except SearchExhausted:
            break
        for trial in trials:
            told.append(trial.fidelity)
            pbt.tell(trial.id, Result(reward=random.Random(trial.id).random(), epochs=trial.fidelity))
    assert sorted(set(told)) == [2, 4]  # 4 + 4 epochs, then the last interval is cut to 2
    assert pbt.stats()["pbt_members_done"] == 3


def test_a_failed_interval_copies_a_top_member_or_starts_over():
    pbt = make_strategy("pbt", SPACE, seed=4, population=3, perturbation_interval=2, max_epochs=6)
    a, b, c = pbt.ask(3)
    pbt.tell(a.id, Result(reward=None, status="failed", error="OOM"))
    (again,) = pbt.ask(1)
    assert again.parent_id is None and again.fidelity == 2, "nobody to copy yet: a fresh start"
    pbt.tell(b.id, Result(reward=0.8, epochs=2))
    pbt.tell(c.id, Result(reward=0.3, epochs=2))
    pbt.ask(2)
    pbt.tell(again.id, Result(reward=None, status="failed", error="OOM"))
    (copier,) = pbt.ask(1)
    assert copier.parent_id == b.id and copier.fidelity == 2
    assert pbt.stats()["pbt_failures"] == 2


def test_restored_pbt_proposes_exactly_what_the_uninterrupted_one_would():
    def drive(strategy, rng, running, steps):
        out = []
        for _ in range(steps):
            for trial in strategy.ask(rng.randint(1, 3)):
                running.append(trial)
                out.append(trial.to_dict())
            if running:
                trial = running.pop(rng.randrange(len(running)))
                strategy.tell(trial.id, Result(reward=rng.random(), epochs=trial.fidelity))
        return out

    params = dict(population=5, perturbation_interval=2, max_epochs=40, resample_probability=0.3)
    a = make_strategy("pbt", SPACE, seed=7, **params)
    rng_a, running_a = random.Random(1), []
    drive(a, rng_a, running_a, 15)
    state = a.state_dict()
    rng_b = random.Random()
    rng_b.setstate(rng_a.getstate())
    running_b = [type(t).from_dict(t.to_dict()) for t in running_a]
    expected = drive(a, rng_a, running_a, 25)

    b = make_strategy("pbt", SPACE, seed=7, **params)
    b.load_state_dict(state)
    assert drive(b, rng_b, running_b, 25) == expected
    assert a.stats()["pbt_exploits"] > 0 and any(t["warm_start"] == "resume" for t in expected)


def test_pbt_beats_random_search_at_equal_total_epochs():
    """Simulated training where the best learning rate changes as training goes on: PBT's
    members follow it (exploit + explore), a fixed random learning rate cannot."""
    pbt_best, random_best = [], []
    for seed in range(5):
        sim = Simulated()
        pbt = make_strategy("pbt", SPACE, seed=seed, population=8, perturbation_interval=2, max_epochs=20)
        pbt_best.append(run_pbt(pbt, sim, workers=4, seed=seed))
        budget = sim.epochs
        baseline = Simulated()
        search = make_strategy("random", SPACE, seed=seed)
        while baseline.epochs < budget:
            trial = search.ask(1)[0]
            trial.fidelity = 20
            search.tell(trial.id, baseline.train(trial))
        random_best.append(max(acc for acc, _ in baseline.checkpoints.values()))
    assert statistics.fmean(pbt_best) > statistics.fmean(random_best) + 0.05, (pbt_best, random_best)
    assert sum(p > r for p, r in zip(pbt_best, random_best)) >= 4, (pbt_best, random_best)


def test_wrappers_pass_member_intervals_through():
    pbt = make_strategy("pbt", SPACE, seed=5, population=2, perturbation_interval=1, max_epochs=3)
    wrapped = Deduplicated(Constrained(pbt, lambda g: {"params": 1.0}, limits={"params": 10}))
    a, b = wrapped.ask(2)
    assert wrapped.ask(1) == [], "both members train: nothing now, and no random fallback"
    wrapped.tell(a.id, Result(reward=0.5, epochs=1))
    (nxt,) = wrapped.ask(1)
    assert nxt.genotype == a.genotype and nxt.parent_id == a.id, "a member's next interval is no duplicate"
    assert wrapped.stats()["deduplicated"] == 0 and wrapped.stats()["dedup_fallbacks"] == 0


def test_pbt_in_the_spec_and_bad_parameters():
    spec = StrategySpec.model_validate({"algorithm": "pbt", "parameters": {
        "population": 6, "perturbationInterval": 2, "quantileFraction": 0.2, "resampleProbability": 0.1,
        "maxEpochs": 10, "burnInPeriod": 2}})
    assert spec.algorithm == "pbt"
    with pytest.raises(InvalidSpec, match="quantile_fraction must be in"):
        make_strategy("pbt", SPACE, quantile_fraction=0.7)
    with pytest.raises(InvalidSpec, match="perturbation_interval <= max_epochs"):
        make_strategy("pbt", SPACE, perturbation_interval=5, max_epochs=4)
    with pytest.raises(InvalidSpec, match="population must be >= 2"):
        make_strategy("pbt", SPACE, population=1)


def test_only_the_members_checkpoints_are_in_use():
    pbt = make_strategy("pbt", SPACE, seed=6, population=2, perturbation_interval=1, max_epochs=4)
    a, b = pbt.ask(2)
    pbt.tell(a.id, Result(reward=0.9, epochs=1))
    pbt.tell(b.id, Result(reward=0.1, epochs=1))  # bottom: copies a
    assert pbt.checkpoints_needed() == {a.id}
    nxt = pbt.ask(2)
    for t, reward in zip(nxt, (0.5, 0.6)):  # the last to report is on top: it keeps its own
        pbt.tell(t.id, Result(reward=reward, epochs=t.fidelity))
    assert pbt.checkpoints_needed() == {t.id for t in nxt}


def test_pbt_with_early_stopping_is_refused_naming_the_field():
    from pydantic import ValidationError

    from kubenas.spec import ArchitectureSearchSpec

    with pytest.raises(ValidationError, match="must be none with strategy.algorithm pbt"):
        ArchitectureSearchSpec.model_validate({"strategy": {"algorithm": "pbt"},
                                               "training": {"earlyStopping": {"algorithm": "asha"}}})
    assert ArchitectureSearchSpec.model_validate({"strategy": {"algorithm": "pbt"}}).strategy.algorithm == "pbt"


def test_the_controller_builds_pbt_with_the_searchs_epochs_per_member():
    from kubenas_controller.strategy import build_strategy

    from kubenas.spec import ArchitectureSearchSpec

    spec = ArchitectureSearchSpec.model_validate({
        "searchSpace": {"type": "nasbench201", "hyperparameters": [
            {"name": "learningRate", "type": "float", "low": 0.001, "high": 0.5, "log": True}]},
        "strategy": {"algorithm": "pbt", "parameters": {"population": 3, "perturbationInterval": 2}},
        "training": {"epochs": 5}})
    strategy = build_strategy(spec, build_space(spec.search_space))
    batch = strategy.ask(5)
    assert len(batch) == 3 and all(t.fidelity == 2 for t in batch)
    epochs = []
    for _ in range(10):  # each member trains training.epochs in all: 2 + 2 + 1
        for t in batch:
            epochs.append(t.fidelity)
            strategy.tell(t.id, Result(reward=0.5, epochs=t.fidelity))
        try:
            batch = strategy.ask(3)
        except SearchExhausted:
            break
    assert sorted(epochs) == [1, 1, 1, 2, 2, 2, 2, 2, 2]


def test_a_strategys_complaint_names_the_parameter_as_the_manifest_spells_it():
    from kubenas_controller.strategy import build_strategy

    from kubenas.spec import ArchitectureSearchSpec

    spec = ArchitectureSearchSpec.model_validate({
        "strategy": {"algorithm": "pbt", "parameters": {"perturbationInterval": 9}}, "training": {"epochs": 4}})
    with pytest.raises(InvalidSpec) as info:
        build_strategy(spec, build_space(spec.search_space))
    assert "need 1 <= perturbationInterval <= maxEpochs (got perturbationInterval=9, maxEpochs=4)" in str(info.value)
