"""trainer.trialsPerGPU: one trainer "pod" (the supervisor, `python -m kubenas_trainer --processes 2`)
runs two real trainer processes that train two real trials on digits at the same time, against a
real redis-server. SIGTERM to the supervisor hands both trials back (none is lost: a second pod
finishes them from their checkpoints); a crashed trainer is restarted; SIGKILL of the supervisor
takes its trainers with it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from kubenas.queue.connection import connect
from kubenas.queue.controller_side import ControllerQueue
from kubenas.queue.keys import PAYLOAD_FIELD, SearchKeys
from kubenas.queue.messages import ProgressMessage, ResultMessage, TrialMessage, decode
from kubenas.spec import TrainingSpec
from tests.redis.harness import PY, spawn, stop_all
from tests.support.waiting import wait_for

pytestmark = pytest.mark.timeout(600)

CELL = {"space": "nasbench201",
        "cell": "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"}
EPOCHS = 6  # long enough that SIGTERM usually lands with both trials unfinished
TRAINING = TrainingSpec.model_validate({"epochs": EPOCHS, "channels": 8, "cellsPerStage": 1,
                                        "dataset": {"name": "digits"}})


def _pod(url: str, keys: SearchKeys, name: str, artifacts: Path, log: Path, *extra: str):
    return spawn([PY, "-m", "kubenas_trainer", "--processes", "2", "--redis-url", url,
                  "--namespace", keys.namespace, "--name", keys.name, "--trainer-id", name, "--lease-seconds", "3",
                  "--metrics-port", "-1", "--device", "cpu", "--threads", "1", "--artifacts", str(artifacts),
                  *extra], log, env={"OMP_NUM_THREADS": "1"})


def _publish(url: str, keys: SearchKeys, *trial_ids: str) -> None:
    queue = ControllerQueue(connect(url), keys)
    queue.ensure_groups()
    queue.publish([TrialMessage(search=keys.search, trial_id=t, genotype=CELL, epochs=EPOCHS, training=TRAINING,
                                created=time.time()) for t in trial_ids])


def _progress(client, keys: SearchKeys) -> list[ProgressMessage]:
    return [decode(f[PAYLOAD_FIELD], ProgressMessage) for _, f in client.xrange(keys.progress)]


def _results(client, keys: SearchKeys) -> dict[str, ResultMessage]:
    results = [decode(f[PAYLOAD_FIELD], ResultMessage) for _, f in client.xrange(keys.results)]
    return {r.trial_id: r for r in results}


def _trained_by(client, keys: SearchKeys) -> dict[str, set[str]]:
    """Trainer -> the trials it reported a trained epoch of."""
    seen: dict[str, set[str]] = {}
    for p in _progress(client, keys):
        if p.epoch > 0:
            seen.setdefault(p.trainer, set()).add(p.trial_id)
    return seen


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose (its parent, the test's process, has not reaped it).
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def test_two_trainers_in_one_pod_train_two_trials_and_hand_both_back(redis_server, keys, tmp_path):
    url, artifacts, client = redis_server.url, tmp_path / "artifacts", connect(redis_server.url)
    _publish(url, keys, "t1", "t2")
    first, second = tmp_path / "pod-a.log", tmp_path / "pod-b.log"
    procs = [_pod(url, keys, "pod-a", artifacts, first)]
    try:
        # Both processes of the one pod train at the same time, each its own trial.
        trained = wait_for("both trainers of pod-a to train an epoch",
                           lambda: (lambda seen: seen if set(seen) == {"pod-a-0", "pod-a-1"} else None)(
                               _trained_by(client, keys)), 300, logs=[first])
        assert trained["pod-a-0"] | trained["pod-a-1"] == {"t1", "t2"}
        assert not trained["pod-a-0"] & trained["pod-a-1"]
        procs[0].send_signal(signal.SIGTERM)
        assert procs[0].wait(90) == 0
        log = first.read_text()
        unfinished = {"t1", "t2"} - set(_results(client, keys))
        assert unfinished, "both trials finished before SIGTERM: the test proves nothing"
        for trial in unfinished:
            assert f"handed trial {trial} back" in log
        # Nothing lost: another pod takes both over (one each: --max-trials 1) and finishes them.
        procs.append(_pod(url, keys, "pod-b", artifacts, second, "--max-trials", "1"))
        wait_for("both trials' results", lambda: len(_results(client, keys)) == 2, 300, logs=[second])
        if len(unfinished) == 1:
            # One trial finished before the SIGTERM (a fast machine): one of pod-b's trainers has
            # nothing to take and waits for a trial, so pod-b is stopped as a pod is.
            procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(60) == 0  # the supervisor exits once both of its trainers did (status 0)
    finally:
        stop_all(procs)
    results = _results(client, keys)
    assert all(r.status == "succeeded" and len(r.curve) == EPOCHS and r.reward > 0.3 for r in results.values())
    assert {results[t].trainer for t in unfinished} <= {"pod-b-0", "pod-b-1"}
    assert all(results[t].resumed_from_epoch >= 1 for t in unfinished)  # from the checkpoint, not from scratch


def test_a_crashed_trainer_is_restarted_and_all_die_with_the_supervisor(redis_server, keys, tmp_path):
    url, log = redis_server.url, tmp_path / "pod.log"
    ControllerQueue(connect(url), keys).ensure_groups()  # no trials: the trainers wait for one
    procs = [_pod(url, keys, "pod", tmp_path / "artifacts", log)]
    try:
        pid = procs[0].pid
        before = wait_for("two trainer processes", lambda: (lambda c: c if len(c) == 2 else None)(_children(pid)),
                          60, logs=[log])
        os.kill(before[0], signal.SIGKILL)
        after = wait_for("the crashed trainer restarted",
                         lambda: (lambda c: c if len(c) == 2 and before[0] not in c else None)(_children(pid)),
                         60, logs=[log])
        assert before[1] in after
        assert "exited with status -9: restarting it (1 of 5)" in log.read_text()
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        wait_for("the trainers to die with their supervisor", lambda: not any(_alive(c) for c in after), 30,
                 logs=[log])
    finally:
        stop_all(procs)
