"""Whole searches with the controller and trainers in threads (fake work, real Redis)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from prometheus_client import REGISTRY

from kubenas.queue.keys import CONTROLLER_GROUP
from kubenas.queue.messages import ResultMessage
from tests.redis.harness import InProcess, by_kind, done, events, make_spec, read_summary
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.timeout(120)]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_search_runs_to_max_trials_and_leaves_redis_clean(redis_server, keys, tmp_path):
    spec = make_spec(max_trials=25, parallelism=3, algorithm="evolution", parameters={"population": 6, "sample": 2})
    run = InProcess(redis_server.url, keys, spec, tmp_path / "ck", trainers=3, fake_work=0.02).start()
    summary = run.wait(60)
    assert summary["finished"] and summary["finishReason"] == "MaxTrialsReached"
    assert summary["trials"]["total"] == summary["trials"]["succeeded"] == 25
    evs = events(tmp_path / "ck")
    assert sorted(e["id"] for e in by_kind(evs, "result")) == sorted(e["id"] for e in by_kind(evs, "trial"))
    assert len(by_kind(evs, "trial")) == 25
    best = max(by_kind(evs, "result"), key=lambda e: e["reward"])
    assert summary["bestTrial"] == best["id"] and summary["bestReward"] == best["reward"]
    assert len(summary["recent"]) == 10
    r = run.controller.queue.r
    for stream in (keys.trials, keys.results, keys.progress):
        assert r.xlen(stream) == 0, stream  # everything applied was deleted
    for h in (keys.dispatched, keys.control, keys.errors):
        assert r.hlen(h) == 0, h


def test_malformed_messages_are_rejected_and_the_search_goes_on(redis_server, keys, tmp_path):
    spec = make_spec(max_trials=20, parallelism=2)
    run = InProcess(redis_server.url, keys, spec, tmp_path / "ck", trainers=2, fake_work=0.1).start()
    r = run.controller.queue.r
    wait_for("first results", lambda: done(read_summary(redis_server.url, keys)) >= 3, 30, interval=0.05)
    garbage = [b"not json", b'{"v": 1, "kind": "result", "trial_id": "t0000', b"\xff" * 64, b"[" * 100_000,
               b"x" * (1 << 20), json.dumps({"v": 1, "kind": "result", "search": keys.search}).encode(),
               json.dumps({"v": 1, "kind": "result", "search": keys.search, "trial_id": "t000001", "trainer": "x",
                           "attempt": 1, "status": "succeeded", "reward": float("nan")}).encode()]
    for payload in garbage:
        for stream in (keys.trials, keys.results, keys.progress):
            r.xadd(stream, {b"m": payload})
    r.xadd(keys.results, {b"other": b"fields", b"m": b"{}"})
    r.hset(keys.control, "t000019", b"garbage control")
    # A well-formed duplicate of a result that was already applied: must count once.
    first = by_kind(events(tmp_path / "ck"), "result")[0]
    duplicate = ResultMessage(search=keys.search, trial_id=first["id"], trainer="impostor", attempt=1,
                              status="succeeded", reward=0.99)
    r.xadd(keys.results, {b"m": duplicate.encode()})
    summary = run.wait(60)
    assert summary["trials"]["succeeded"] == 20 and summary["trials"]["total"] == 20
    assert summary["bestReward"] != 0.99
    assert metric("kubenas_messages_rejected_total", search=keys.search, stream="results") == len(garbage) + 1
    assert metric("kubenas_messages_rejected_total", search=keys.search, stream="progress") == len(garbage)
    assert metric("kubenas_messages_rejected_total", search=keys.search, stream="trials") == len(garbage)
    assert metric("kubenas_results_duplicate_total", search=keys.search) >= 1
    assert r.xpending(keys.results, CONTROLLER_GROUP)["pending"] == 0


def test_a_redelivered_trial_finished_twice_counts_once(redis_server, keys, tmp_path):
    # Heartbeats far apart: the lease (0.5 s) expires during each 1.5 s trial, so the other trainer
    # takes every trial over and both finish it.
    spec = make_spec(max_trials=3, parallelism=1, epochs=1)
    run = InProcess(redis_server.url, keys, spec, tmp_path / "ck", trainers=2, fake_work=1.5, lease=0.5,
                    trainer_options={"heartbeat_seconds": 100.0}, controller_options={"prefetch": 0})
    summary = run.start().wait(60)
    assert summary["trials"]["succeeded"] == 3 and summary["trials"]["total"] == 3
    assert metric("kubenas_results_duplicate_total", search=keys.search) >= 1
    assert metric("kubenas_trials_reclaimed_total", search=keys.search) >= 1
    results = by_kind(events(tmp_path / "ck"), "result")
    assert sorted(e["id"] for e in results) == ["t000000", "t000001", "t000002"]


def test_a_trial_failing_every_attempt_is_dead_lettered(redis_server, keys, tmp_path):
    spec = make_spec(max_trials=6, parallelism=2, max_failed=1)
    run = InProcess(redis_server.url, keys, spec, tmp_path / "ck", trainers=2, fake_work=0.05,
                    fail=("t000002",), controller_options={"max_attempts": 2})
    summary = run.start().wait(60)
    assert summary["finishReason"] == "MaxTrialsReached"
    assert summary["trials"]["failed"] == 1 and summary["trials"]["succeeded"] == 5
    failed = [e for e in by_kind(events(tmp_path / "ck"), "result") if e["status"] == "failed"]
    assert [e["id"] for e in failed] == ["t000002"]
    assert "failed 2 attempts" in failed[0]["error"] and "injected failure of t000002" in failed[0]["error"]
    assert run.controller.queue.r.xlen(keys.dead_letter) == 1


def test_too_many_failed_trials_fail_the_search(redis_server, keys, tmp_path):
    spec = make_spec(max_trials=20, parallelism=2, max_failed=1)
    fail = tuple(f"t{i:06d}" for i in range(20))
    run = InProcess(redis_server.url, keys, spec, tmp_path / "ck", trainers=2, fake_work=0.0,
                    fail=fail, controller_options={"max_attempts": 1})
    summary = run.start().wait(60)
    assert summary["finished"] and summary["finishReason"] == "TooManyFailedTrials"
    assert summary["trials"]["failed"] >= 2 and summary["trials"]["total"] < 20  # trials in flight may fail too


def test_reaching_the_target_stops_the_search_and_its_running_trials(redis_server, keys, tmp_path):
    spec = make_spec(max_trials=200, parallelism=2, epochs=20, target=0.5)
    run = InProcess(redis_server.url, keys, spec, tmp_path / "ck", trainers=2, fake_work=0.4)
    summary = run.start().wait(60)
    assert summary["finishReason"] == "TargetReached" and summary["bestReward"] >= 0.5
    assert summary["trials"]["total"] < 200
    evs = events(tmp_path / "ck")
    stopped = [e for e in by_kind(evs, "result") if e["status"] == "stopped"]
    assert all(e["epochs"] < 20 for e in stopped)
    assert len(by_kind(evs, "result")) + len(by_kind(evs, "cancel")) == len(by_kind(evs, "trial"))


def test_max_duration_finishes_the_search(redis_server, keys, tmp_path):
    spec = make_spec(max_trials=10_000, parallelism=2, max_duration="2s")
    run = InProcess(redis_server.url, keys, spec, tmp_path / "ck", trainers=2, fake_work=0.05)
    began = time.monotonic()
    summary = run.start().wait(30)
    assert summary["finishReason"] == "MaxDurationReached" and time.monotonic() - began < 15


@pytest.mark.parametrize("algorithm", ["asha", "median"])
def test_early_stopping_decisions_take_effect_at_the_epoch_they_answer(redis_server, keys, tmp_path, algorithm):
    early = {"algorithm": algorithm, "minEpochs": 1, "reductionFactor": 3, "minTrials": 2}
    spec = make_spec(max_trials=16, parallelism=2, epochs=9, early_stopping=early)
    run = InProcess(redis_server.url, keys, spec, tmp_path / "ck", trainers=2, fake_work=0.09)
    summary = run.start().wait(90)
    assert summary["trials"]["total"] == 16
    results = by_kind(events(tmp_path / "ck"), "result")
    stopped = [e for e in results if e["status"] == "stopped"]
    assert stopped, "the scheduler stopped nothing"
    if algorithm == "asha":
        # Rungs at 1, 3 and 9 epochs: a stopped trial stops exactly at a rung, not an epoch later.
        assert {e["epochs"] for e in stopped} <= {1, 3}
    assert all(len(e["curve"]) == e["epochs"] for e in results)
    assert any(e["status"] == "succeeded" and e["epochs"] == 9 for e in results)


def test_bohb_runs_its_own_brackets_through_the_controller(redis_server, keys, tmp_path):
    # Rungs at 1, 3 and 9 epochs from training.epochs, minEpochs and reductionFactor: BOHB's trials
    # report every epoch and are stopped at a rung or promoted, with no earlyStopping configured.
    spec = make_spec(max_trials=20, parallelism=2, epochs=9, algorithm="bohb",
                     training={"earlyStopping": {"algorithm": "none", "minEpochs": 1, "reductionFactor": 3}})
    run = InProcess(redis_server.url, keys, spec, tmp_path / "ck", trainers=2, fake_work=0.05)
    summary = run.start().wait(120)
    assert summary["trials"]["total"] == 20
    results = by_kind(events(tmp_path / "ck"), "result")
    assert all(len(e["curve"]) == e["epochs"] for e in results)
    assert {e["epochs"] for e in results if e["status"] == "stopped"} <= {1, 3} and any(
        e["status"] == "stopped" for e in results), "BOHB's brackets stopped nothing"
    assert any(e["status"] == "succeeded" and e["epochs"] == 9 for e in results)


def test_bohb_with_a_second_scheduler_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="training.earlyStopping.algorithm: must be none with strategy.algorithm bohb"):
        make_spec(algorithm="bohb", early_stopping={"algorithm": "asha"})


def test_a_fresh_controller_clears_the_leftovers_of_an_earlier_search_of_the_same_name(redis_server, keys, tmp_path):
    from kubenas.queue.messages import TrialMessage
    from kubenas.queue.connection import connect
    from kubenas.queue.controller_side import ControllerQueue
    from kubenas.spec import TrainingSpec
    from tests.support.fake_trainer import fake_reward

    stale = ControllerQueue(connect(redis_server.url), keys)
    stale.ensure_groups()
    old = {"space": "nasbench201", "cell": "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "hparams": {}}
    stale.publish([TrialMessage(search=keys.search, trial_id="t000000", genotype=old, epochs=1,
                                training=TrainingSpec())])
    stale.publish_summary(b'{"finished": true}')
    run = InProcess(redis_server.url, keys, make_spec(max_trials=3, parallelism=1), tmp_path / "ck",
                    trainers=1, fake_work=0.0)
    summary = run.start().wait(60)
    assert summary["finished"] and summary["trials"]["succeeded"] == 3
    evs = events(tmp_path / "ck")
    first = by_kind(evs, "trial")[0]
    assert first["genotype"] != old
    result = next(e for e in by_kind(evs, "result") if e["id"] == "t000000")
    assert result["accuracy"] == pytest.approx(fake_reward(first["genotype"]))  # this search's trial was trained
