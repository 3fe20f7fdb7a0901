"""The controller process without a Redis server: what its checkpoint may be resumed
under (the fingerprint), the live spec kept across restarts, its command line, and
strategy failures that must not crash it. `restore` reads only the directory."""

from __future__ import annotations

import pytest
import redis

from kubenas.queue.keys import SearchKeys
from kubenas.queue.live_spec import LiveSpec
from kubenas.search_state import CONTROLLER_ERROR
from kubenas.spec import ArchitectureSearchSpec
from kubenas_controller.checkpoint import CheckpointError
from kubenas_controller.controller import Controller
from kubenas_controller.fingerprint import differences, fingerprint_fields
from kubenas_controller.main import main

KEYS = SearchKeys("ns", "s")
NO_REDIS = redis.Redis(port=1)  # never contacted


def spec(**changes) -> ArchitectureSearchSpec:
    data = {"searchSpace": {"type": "nasbench201"}, "budget": {"maxTrials": 10, "parallelism": 2},
            "training": {"epochs": 2, "dataset": {"name": "digits"}}}
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = data
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return ArchitectureSearchSpec.model_validate(data)


def checkpointed(tmp_path, first: ArchitectureSearchSpec) -> Controller:
    controller = Controller(first, KEYS, NO_REDIS, str(tmp_path))
    controller.restore()
    controller._fill()
    controller._save_if_needed()
    controller.checkpoint.unlock()
    return controller


def resume(tmp_path, again: ArchitectureSearchSpec) -> Controller:
    controller = Controller(again, KEYS, NO_REDIS, str(tmp_path))
    controller.restore()
    controller.checkpoint.unlock()
    return controller


@pytest.mark.parametrize("field, value, named", [
    ("training.dataset.name", "cifar10", 'training.dataset.name: "digits" in the checkpoint, "cifar10" now'),
    ("training.dataset.validationFraction", 0.5, "training.dataset.validationFraction: 0.2 in the checkpoint, 0.5 now"),
    ("training.dataset.trainSubset", 400, "training.dataset.trainSubset: null in the checkpoint, 400 now"),
    ("training.learningRate", 0.1, "training.learningRate: 0.05 in the checkpoint, 0.1 now"),
    ("training.epochs", 4, "training.epochs: 2 in the checkpoint, 4 now"),
    ("training.seed", 7, "training.seed: 0 in the checkpoint, 7 now"),
    ("strategy.algorithm", "evolution", 'strategy.algorithm: "random" in the checkpoint, "evolution" now'),
])
def test_a_resume_that_would_mix_two_searches_is_refused_naming_the_field(tmp_path, field, value, named):
    checkpointed(tmp_path, spec())
    with pytest.raises(CheckpointError) as refused:
        resume(tmp_path, spec(**{field: value}))
    message = str(refused.value)
    assert named in message and "resuming would mix two searches" in message
    assert message.count(" in the checkpoint, ") == 1  # only what differs is named


def test_every_differing_field_is_named_and_an_added_penalty_once():
    before = fingerprint_fields(spec())
    after = fingerprint_fields(spec(**{"training.channels": 8, "objective.costPenalty": {"target": 1e6}}))
    assert differences(before, after) == [
        'objective.costPenalty: null in the checkpoint, {"metric": "multiplyAdds", "target": 1000000.0, '
        '"weight": -0.07} now',
        "training.channels: 16 in the checkpoint, 8 now",
    ]


def test_a_field_the_checkpoint_does_not_know_counts_only_when_not_at_its_default():
    current = fingerprint_fields(spec())
    older = {k: v for k, v in current.items() if k != "training.dropPath"}
    assert differences(older, current) == []
    changed = fingerprint_fields(spec(**{"training.dropPath": 0.2}))
    assert differences(older, changed) == ["training.dropPath: 0.0 in the checkpoint, 0.2 now"]


def test_the_budget_suspend_and_target_may_change_between_runs(tmp_path):
    first = checkpointed(tmp_path, spec())
    resumed = resume(tmp_path, spec(**{"budget.maxTrials": 50, "budget.parallelism": 8, "budget.maxDuration": "1h",
                                       "suspend": True, "objective.target": 0.9}))
    assert resumed.tally.created == first.tally.created and set(resumed.inflight) == set(first.inflight)
    assert resumed.state.budget.max_trials == 50 and resumed.state.suspended


def test_a_live_change_survives_a_restart_unless_the_spec_file_changed_since(tmp_path):
    first = Controller(spec(), KEYS, NO_REDIS, str(tmp_path))
    first.restore()
    live = LiveSpec(budget=spec().budget.model_copy(update={"parallelism": 6, "max_trials": 7}), suspend=False,
                    revision=3)
    assert first.live_budget.apply(live) == []
    assert first.state.target_in_flight == 6 + 1
    first._fill()
    first._save_if_needed()
    first.checkpoint.unlock()

    same_file = resume(tmp_path, spec())
    assert same_file.live.revision == 3 and same_file.state.budget.parallelism == 6
    assert same_file.state.budget.max_trials == 7

    edited = resume(tmp_path, spec(**{"budget.maxTrials": 20}))
    assert edited.live.revision == 3  # an older live record is not applied again
    assert edited.state.budget.max_trials == 20 and edited.state.budget.parallelism == 2  # the newer edit wins


def test_a_strategy_that_fails_to_propose_finishes_the_search_instead_of_crashing(tmp_path):
    controller = Controller(spec(), KEYS, NO_REDIS, str(tmp_path))
    controller.restore()

    def broken(n: int):
        raise ZeroDivisionError("float division by zero")

    controller.strategy.ask = broken
    assert controller._fill() == []
    assert controller.state.finishing == CONTROLLER_ERROR
    controller.checkpoint.unlock()


def test_an_objective_that_fails_keeps_the_accuracy_as_the_reward(tmp_path):
    controller = Controller(spec(), KEYS, NO_REDIS, str(tmp_path))

    def broken(trial_id, accuracy, cost):
        raise ZeroDivisionError("float division by zero")

    controller.strategy.objective = broken
    assert controller._objective("t000000", 0.8, {"params": 1.0}) == 0.8
    controller.strategy.objective = lambda trial_id, accuracy, cost: float("inf")
    assert controller._objective("t000000", 0.8, {}) == 0.8


@pytest.mark.parametrize("flag, value", [
    ("--metrics-port", "70000"), ("--metrics-port", "-2"), ("--lease-seconds", "-1"), ("--lease-seconds", "0"),
    ("--lease-seconds", "nan"), ("--max-attempts", "0"), ("--prefetch", "-1"), ("--finish-grace", "inf"),
    ("--max-attempts", "three"),
])
def test_bad_flags_are_one_line_naming_the_flag_and_exit_2(capsys, flag, value):
    with pytest.raises(SystemExit) as exited:
        main(["--spec", "search.yaml", flag, value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and repr(value) in err and "expected" in err
