"""Trials resume from their checkpoints: real trainer processes training for real on
digits (NAS-Bench-201 cell, N=1, F=8), a real redis-server, real faults.

The test plays the controller: it publishes one trial and reads what the trainers
post (progress and result streams), and for a scheduled trial answers each epoch
with a decision as the controller's ASHA would. Each fault happens after epoch 2's
checkpoint (or at a rung), and the trial must finish on another trainer with the
epochs before the fault not trained again and a continuous 5-entry curve.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Optional

import pytest
import redis

from kubenas.queue.connection import connect
from kubenas.queue.controller_side import ControllerQueue
from kubenas.queue.keys import PAYLOAD_FIELD, SearchKeys
from kubenas.queue.messages import ControlMessage, ProgressMessage, ResultMessage, TrialMessage, decode
from kubenas.spec import TrainingSpec
from tests.redis.harness import PY, spawn, stop_all
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(600)

CELL = {"space": "nasbench201",
        "cell": "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"}
TRAINING = TrainingSpec.model_validate({"epochs": 5, "channels": 8, "cellsPerStage": 1, "dataset": {"name": "digits"}})
LEASE = 3.0


def _trainer(url: str, keys: SearchKeys, name: str, artifacts: Path, log: Path):
    return spawn([PY, "-m", "kubenas_trainer", "--redis-url", url, "--namespace", keys.namespace,
                  "--name", keys.name, "--trainer-id", name, "--lease-seconds", str(LEASE), "--metrics-port", "-1",
                  "--device", "cpu", "--threads", "1", "--artifacts", str(artifacts), "--max-trials", "1"],
                 log, env={"OMP_NUM_THREADS": "1"})


def _publish(url: str, keys: SearchKeys, trial_id: str = "t1", **fields) -> TrialMessage:
    queue = ControllerQueue(connect(url), keys)
    queue.ensure_groups()
    trial = TrialMessage(search=keys.search, trial_id=trial_id, genotype=CELL, epochs=5, training=TRAINING,
                         created=time.time(), **fields)
    queue.publish([trial])
    return trial


def _progress(client: redis.Redis, keys: SearchKeys) -> list[ProgressMessage]:
    return [decode(f[PAYLOAD_FIELD], ProgressMessage) for _, f in client.xrange(keys.progress)]


def _result(client: redis.Redis, keys: SearchKeys) -> Optional[ResultMessage]:
    entries = client.xrange(keys.results)
    return decode(entries[0][1][PAYLOAD_FIELD], ResultMessage) if entries else None


def _epochs_of(progress: list[ProgressMessage], trainer: str) -> list[int]:
    return [p.epoch for p in progress if p.trainer == trainer and p.epoch > 0]


def _reached(client: redis.Redis, keys: SearchKeys, trainer: str, epoch: int) -> bool:
    return epoch in _epochs_of(_progress(client, keys), trainer)


def _assert_resumed(client, keys, result: ResultMessage, first: str, second: str, from_epoch: int,
                    epochs: int = 5) -> None:
    progress = _progress(client, keys)
    assert result.trainer == second and result.status in ("succeeded", "stopped")
    assert result.resumed_from_epoch == from_epoch and result.attempts == 2
    assert result.epochs == epochs and len(result.curve) == epochs
    # The second trainer never trained the epochs before the fault: it re-announced the
    # checkpoint's epoch (for the scheduler) and went on from there.
    assert _epochs_of(progress, second) == list(range(from_epoch, epochs + 1))
    # Continuous: the first epochs of the curve are the ones the first trainer reported.
    reported = {p.epoch: p.val_acc for p in progress if p.trainer == first and p.epoch > 0}
    assert result.curve[:from_epoch] == [reported[e] for e in range(1, from_epoch + 1)]
    assert result.reward == result.curve[-1] and result.reward > 0.5  # it really trained (chance is 0.1)


@pytest.fixture()
def client(redis_server) -> redis.Redis:
    return connect(redis_server.url)


def test_a_trainer_killed_in_epoch_3_the_trial_resumes_from_epoch_2(redis_server, client, keys, tmp_path):
    url, artifacts = redis_server.url, tmp_path / "artifacts"
    _publish(url, keys)
    procs = [_trainer(url, keys, "a", artifacts, tmp_path / "a.log")]
    try:
        wait_for("trainer a to finish epoch 2", lambda: _reached(client, keys, "a", 2), 240, logs=[tmp_path / "a.log"])
        procs[0].send_signal(signal.SIGKILL)  # in epoch 3: its checkpoint is epoch 2's
        procs[0].wait(10)
        assert not _reached(client, keys, "a", 3)
        procs.append(_trainer(url, keys, "b", artifacts, tmp_path / "b.log"))
        wait_for("the trial's result", lambda: _result(client, keys) is not None, 300, logs=[tmp_path / "b.log"])
        assert procs[1].wait(30) == 0
    finally:
        stop_all(procs)
    _assert_resumed(client, keys, _result(client, keys), "a", "b", from_epoch=2)
    assert "resuming trial t1 from its checkpoint after epoch 2" in (tmp_path / "b.log").read_text()
    # The finished trial's checkpoint stays until the controller prunes it (a parent for inheritance).
    assert sorted(p.name for p in (artifacts / "trials" / "t1").iterdir()) == ["epoch-5.json", "epoch-5.safetensors"]


def test_a_trainer_terminated_in_epoch_3_hands_back_and_the_trial_resumes(redis_server, client, keys, tmp_path):
    url, artifacts = redis_server.url, tmp_path / "artifacts"
    _publish(url, keys)
    procs = [_trainer(url, keys, "a", artifacts, tmp_path / "a.log")]
    try:
        wait_for("trainer a to finish epoch 2", lambda: _reached(client, keys, "a", 2), 240, logs=[tmp_path / "a.log"])
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(60) == 0
        assert "handed trial t1 back" in (tmp_path / "a.log").read_text()
        procs.append(_trainer(url, keys, "b", artifacts, tmp_path / "b.log"))
        wait_for("the trial's result", lambda: _result(client, keys) is not None, 300, logs=[tmp_path / "b.log"])
    finally:
        stop_all(procs)
    result = _result(client, keys)
    _assert_resumed(client, keys, result, "a", "b", from_epoch=2)
    assert result.attempt == 1  # a hand-back uses up no attempt; `attempts` still counts both runs


def test_a_trial_promoted_at_its_rung_continues_from_the_rungs_checkpoint(redis_server, client, keys, tmp_path):
    """ASHA keeps a promoted trial on its trainer; when that trainer is lost while the trial
    waits at the rung, the promotion is carried out from the rung's checkpoint elsewhere."""
    url, artifacts = redis_server.url, tmp_path / "artifacts"
    _publish(url, keys, fidelity=1, scheduled=True)
    procs = [_trainer(url, keys, "a", artifacts, tmp_path / "a.log")]

    def decide(epoch: int, action: str, epochs: Optional[int] = None) -> None:
        control = ControlMessage(action=action, epoch=epoch, epochs=epochs, reason=f"test: {action} at {epoch}")
        client.hset(keys.control, "t1", control.encode())

    try:
        wait_for("trainer a at the first rung", lambda: _reached(client, keys, "a", 1), 240, logs=[tmp_path / "a.log"])
        procs[0].send_signal(signal.SIGKILL)  # lost while it waits for the rung's decision
        procs[0].wait(10)
        decide(1, "continue", epochs=3)  # promoted to the next rung
        procs.append(_trainer(url, keys, "b", artifacts, tmp_path / "b.log"))
        wait_for("trainer b to train epoch 2", lambda: _reached(client, keys, "b", 2), 240, logs=[tmp_path / "b.log"])
        decide(2, "continue")
        wait_for("trainer b to train epoch 3", lambda: _reached(client, keys, "b", 3), 240, logs=[tmp_path / "b.log"])
        decide(3, "stop")  # not promoted again at the rung of 3 epochs
        wait_for("the trial's result", lambda: _result(client, keys) is not None, 120, logs=[tmp_path / "b.log"])
    finally:
        stop_all(procs)
    result = _result(client, keys)
    assert result.status == "stopped"
    _assert_resumed(client, keys, result, "a", "b", from_epoch=1, epochs=3)


def test_the_controller_keeps_only_the_checkpoints_still_needed(redis_server, keys, tmp_path):
    """Bounded disk: the controller (the one that knows what is in flight and what the strategy
    needs) removes every other trial's checkpoints; the best finished ones stay."""
    from kubenas import metrics
    from kubenas.training.checkpoints import TrialCheckpointStore
    from kubenas_controller.controller import Controller, ControllerOptions
    from tests.redis.harness import make_spec

    artifacts = tmp_path / "artifacts"
    controller = Controller(make_spec(max_trials=10, parallelism=2), keys, connect(redis_server.url),
                            str(tmp_path / "checkpoint"),
                            ControllerOptions(fsync=False, block_ms=20, artifacts=str(artifacts)))
    controller.retention.every_seconds = 0.0  # prune at every step, not every 5 s
    controller.restore()
    try:
        controller._connect()
        controller.step()  # creates and publishes the first trials (no trainer takes them)
        in_flight = sorted(controller.inflight)
        assert in_flight
        for trial_id in [*in_flight, "old-1", "old-2", "old-3"]:
            (artifacts / "trials" / trial_id).mkdir(parents=True)
            (artifacts / "trials" / trial_id / "epoch-1.safetensors").write_bytes(b"x" * 1000)
        controller.retention.note("old-2", 0.9)  # among the best finished trials
        controller._prune_checkpoints()
    finally:
        controller.checkpoint.unlock()
    store = TrialCheckpointStore(artifacts)
    assert store.trial_ids() == sorted([*in_flight, "old-2"])
    assert metrics.TRIAL_CHECKPOINT_BYTES.labels(keys.search)._value.get() == 1000 * (len(in_flight) + 1)
    assert metrics.TRIAL_CHECKPOINT_FREED_BYTES.labels(keys.search)._value.get() == 2000
