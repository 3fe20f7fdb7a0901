"""A PBT member has one cosine learning-rate schedule over its max_epochs: an interval
enters it where the member's checkpoint left it instead of restarting it, and an explored
learning rate scales it from there. Real training on digits through the trainer's own
path (strategy -> controller's trial message -> trainer -> train_proxy)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kubenas.spaces import build_space
from kubenas.spec import TrainingSpec
from kubenas.strategies import Result, make_strategy
from kubenas.strategies.base import Trial

torch.set_num_threads(1)
SPACE = build_space({"type": "nasbench201", "hyperparameters": [
    {"name": "learningRate", "type": "float", "low": 0.01, "high": 0.2, "log": True}]})
TRAINING = TrainingSpec.model_validate({"epochs": 4, "channels": 4, "cellsPerStage": 1, "batchSize": 64,
                                        "dataset": {"name": "digits", "trainSubset": 128}})
STEPS_PER_EPOCH = 2  # 128 images in batches of 64


def test_entering_a_schedule_gives_the_learning_rate_of_that_point():
    from kubenas.training.proxy import _enter_schedule

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=40)
    _enter_schedule(scheduler, 20)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * (1 + math.cos(math.pi / 2)) / 2, rel=1e-12)
    assert scheduler.last_epoch == 20


def test_a_pbt_interval_carries_its_members_place_in_the_schedule():
    pbt = make_strategy("pbt", SPACE, seed=0, population=2, perturbation_interval=2, max_epochs=4,
                        resample_probability=0.0)
    a, b = pbt.ask(2)
    assert [(t.schedule_start, t.schedule_epochs) for t in (a, b)] == [(0, 4), (0, 4)]
    pbt.tell(a.id, Result(reward=0.9, epochs=2))
    pbt.tell(b.id, Result(reward=0.1, epochs=2))  # bottom: copies a's checkpoint at epoch 2
    for t in pbt.ask(2):
        assert (t.parent_id, t.schedule_start, t.schedule_epochs) == (a.id, 2, 4)
    restored = make_strategy("pbt", SPACE, seed=0, population=2, perturbation_interval=2, max_epochs=4)
    restored.load_state_dict(pbt.state_dict())
    assert {(t.schedule_start, t.schedule_epochs) for t in restored.pending.values()} == {(2, 4)}


def test_the_search_log_replays_a_trials_place_in_the_schedule():
    from kubenas.search_state import SearchState
    from kubenas.spec import BudgetSpec

    sent = []
    state = SearchState(BudgetSpec(max_trials=4), lambda trial, created: sent.append(trial) or _message(trial))
    state.create(Trial("t000003", _genotype(0.05), 2, parent_id="t000001", warm_start="resume",
                       schedule_epochs=4, schedule_start=2), "h", now=1.0)
    replayed = SearchState(BudgetSpec(max_trials=4), lambda trial, created: _message(trial))
    for event in state.unsaved:
        replayed.apply(event)
    message = replayed.inflight["t000003"].message
    assert (message.schedule_start, message.schedule_epochs, message.epochs) == (2, 4, 2)


def _genotype(learning_rate: float) -> dict:
    genotype = SPACE.sample(__import__("random").Random(7))
    return SPACE.validate({**genotype, "hparams": {"learningRate": learning_rate}})


def _message(trial: Trial):
    """The controller's own trial message (Controller._trial_message) for `trial`."""
    from kubenas_controller.controller import Controller

    controller = SimpleNamespace(spec=SimpleNamespace(training=TRAINING), _scheduled=False, search="ns/s",
                                 _latency=False, options=SimpleNamespace(max_attempts=3, decision_timeout=60.0))
    return Controller._trial_message(controller, trial, 0.0)


@pytest.fixture()
def trainer(tmp_path: Path):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from kubenas.queue.keys import SearchKeys
    from kubenas_trainer.trainer import Trainer, TrainerOptions

    # No Redis is reached (port 1, no retries): only training and its checkpoints run. A
    # checkpoint after every step (within an epoch too) records the learning rate all along.
    return Trainer(redis.Redis(port=1, retry=Retry(NoBackoff(), 0)), SearchKeys("ns", "s"),
                   TrainerOptions(consumer="t0", artifacts=str(tmp_path / "artifacts"), checkpoint_seconds=1e-9))


def _learning_rates(trainer, monkeypatch, trial: Trial) -> dict[int, float]:
    """Train `trial` as a trainer claims it; the learning rate after each step, keyed by the
    step of the member's whole schedule."""
    from kubenas.training.checkpoints import TrialCheckpoint

    rates: dict[int, float] = {}
    save = type(trainer)._save.__get__(trainer)  # the trainer's own, not an earlier call's recorder

    def record(claim, genotype, genotype_hash, attempts, state: TrialCheckpoint):
        step = (trial.schedule_start + state.epoch) * STEPS_PER_EPOCH + state.step
        rates[step] = state.scheduler["_last_lr"][0]
        save(claim, genotype, genotype_hash, attempts, state)

    monkeypatch.setattr(trainer, "_save", record)
    claim = SimpleNamespace(trial=_message(trial), attempt=1, reclaimed=False, entry_id="1-0")
    outcome = trainer._train(claim)
    assert outcome.status == "succeeded" and outcome.epochs == trial.fidelity
    return rates


def test_interval_two_continues_the_members_schedule_with_the_explored_learning_rate(trainer, monkeypatch):
    pbt = make_strategy("pbt", SPACE, seed=0, population=2, perturbation_interval=2, max_epochs=4,
                        resample_probability=0.0)
    a, b = pbt.ask(2)
    base = a.genotype["hparams"]["learningRate"]
    first = _learning_rates(trainer, monkeypatch, a)
    pbt.tell(a.id, Result(reward=0.9, epochs=2))
    pbt.tell(b.id, Result(reward=0.1, epochs=2))  # b exploits a: a's weights at epoch 2, a perturbed rate
    second = {t.id: t for t in pbt.ask(2)}
    a2 = next(t for t in second.values() if t.genotype["hparams"]["learningRate"] == base)
    b2 = next(t for t in second.values() if t is not a2)
    factor = b2.genotype["hparams"]["learningRate"] / base
    assert factor == pytest.approx(1.2) or factor == pytest.approx(0.8)

    # One uninterrupted run of a's genotype over the member's 4 epochs: the reference.
    whole = _learning_rates(trainer, monkeypatch, Trial("t-whole", a.genotype, fidelity=4))
    assert whole[4 * STEPS_PER_EPOCH] == pytest.approx(0.0, abs=1e-12) and whole[1] < base

    assert first == {step: whole[step] for step in first}, "interval 1 is the first half of the member's schedule"
    resumed = _learning_rates(trainer, monkeypatch, a2)
    explored = _learning_rates(trainer, monkeypatch, b2)
    start = 2 * STEPS_PER_EPOCH + 1  # after interval 2's first step
    assert min(resumed) == min(explored) == start
    assert resumed[start] == pytest.approx(whole[start], rel=1e-12), "not restarted at the base rate"
    assert resumed[start] < 0.6 * base
    for step, rate in resumed.items():
        assert rate == pytest.approx(whole[step], rel=1e-12), step
    for step, rate in explored.items():
        assert rate == pytest.approx(factor * whole[step], rel=1e-9, abs=1e-15), step
