"""Budget and suspend changes reach a running controller through the live spec.

Real processes: a real redis-server, the controller as `python -m kubenas_controller`
and trainers as `python -m kubenas_trainer`, really training tiny NAS-Bench-201
networks on digits (one thread each). Changes are written as the operator and
`kubenas scale|suspend|resume` write them (kubenas.queue.live_spec).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from kubenas.queue.keys import CONTROLLER_GROUP, SearchKeys
from kubenas.queue.live_spec import LiveSpec, read_live_spec, update_live_spec, write_live_spec
from tests.redis.harness import (
    PY,
    by_kind,
    controller_cmd,
    done,
    events,
    log_lines,
    make_spec,
    read_summary,
    spawn,
    stop_all,
    write_manifest,
)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.timeout(420)]

# A tiny network on a slice of digits: a trial trains for real in about a second.
TINY = {"dataset": {"name": "digits", "trainSubset": 300}, "channels": 4, "cellsPerStage": 1, "batchSize": 32}


def real_trainer(url: str, keys: SearchKeys, trainer_id: str, lease: float = 10.0) -> list[str]:
    return [PY, "-m", "kubenas_trainer", "--redis-url", url, "--namespace", keys.namespace, "--name", keys.name,
            "--trainer-id", trainer_id, "--lease-seconds", str(lease), "--metrics-port", "-1", "--threads", "1",
            "--device", "cpu"]


class Search:
    """A controller and real trainers for one search, and a client to change it live."""

    def __init__(self, url: str, keys: SearchKeys, tmp: Path, trainers: int, prefetch: int, **spec):
        spec = {"epochs": 1, "training": TINY, **spec}
        self.url, self.keys, self.spec = url, keys, spec
        self.ck = tmp / "ck"
        self.manifest = write_manifest(tmp / "search.yaml", keys, **spec)
        self.controller_log = tmp / "controller.log"
        self.trainer_logs = [tmp / f"t{i}.log" for i in range(trainers)]
        self.r = redis.Redis.from_url(url)
        self.controller = spawn(controller_cmd(self.manifest, url, self.ck, "--prefetch", str(prefetch),
                                               "--lease-seconds", "10"), self.controller_log)
        self.trainers = [spawn(real_trainer(url, keys, f"t{i}"), log) for i, log in enumerate(self.trainer_logs)]

    def change(self, suspend: bool | None = None, **budget) -> int:
        """As the operator and `kubenas scale|suspend|resume` do."""
        return update_live_spec(self.r, self.keys, make_spec(**self.spec).budget, suspend=suspend, **budget).revision

    def summary(self) -> dict:
        return read_summary(self.url, self.keys) or {}

    def wait_done(self, n: int, timeout: float = 240) -> dict:
        return wait_for(f"{n} trials done", lambda: done(self.summary()) >= n and self.summary(), timeout,
                        logs=[self.controller_log, *self.trainer_logs[:2]])

    def controller_says(self, needle: str, timeout: float = 10) -> str:
        return wait_for(f"the controller to log {needle!r}", lambda: log_lines(self.controller_log, needle),
                        timeout, logs=[self.controller_log])[0]

    def finish(self, timeout: float = 300) -> dict:
        try:
            assert self.controller.wait(timeout) == 0, self.controller_log.read_text()[-3000:]
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the search did not finish: {self.summary()}") from None
        assert all(t.poll() is None for t in self.trainers), "a trainer exited"
        return self.summary()

    def stop(self) -> None:
        stop_all([self.controller, *self.trainers])

    def applied(self) -> int:
        """Results in the checkpoint's trial log."""
        return len(by_kind(events(self.ck), "result"))

    def started_trials(self) -> int:
        return sum(len(log_lines(log, "started trial")) for log in self.trainer_logs)


def most_at_once(results: list[dict]) -> int:
    """The most trials that were training at the same moment (from the trainers' timestamps)."""
    edges = sorted([(e["started"], 1) for e in results] + [(e["finished"], -1) for e in results])
    running = best = 0
    for _, step in edges:
        running += step
        best = max(best, running)
    return best


def test_scaling_2_to_6_mid_search_puts_all_6_trainers_to_work(redis_server, keys, tmp_path):
    # Trials of a couple of seconds, so that six at once is what the trainers do when they can.
    training = {**TINY, "dataset": {"name": "digits", "trainSubset": 800}}
    search = Search(redis_server.url, keys, tmp_path, trainers=6, prefetch=0, max_trials=50, parallelism=2,
                    epochs=2, training=training)
    try:
        search.wait_done(6)
        before = by_kind(events(search.ck), "result")
        assert most_at_once(before) <= 2  # six trainers, but two trials in flight

        scaled_at = time.time()
        search.change(parallelism=6)
        search.controller_says("budget.parallelism 2 -> 6 (live spec revision 1)", timeout=5)
        summary = search.finish()
    finally:
        search.stop()
    assert summary["finished"] and summary["finishReason"] == "MaxTrialsReached"
    assert summary["trials"]["total"] == summary["trials"]["succeeded"] == 50
    evs = events(search.ck)
    results = by_kind(evs, "result")
    after = [e for e in results if e["finished"] > scaled_at]
    assert {e["trainer"] for e in after} == {f"t{i}" for i in range(6)}  # every trainer trained
    assert most_at_once(after) >= 5  # and they trained side by side
    assert sorted(e["id"] for e in results) == sorted(e["id"] for e in by_kind(evs, "trial"))  # applied once
    assert len(log_lines(search.controller_log, "budget.parallelism")) == 1  # logged once
    saved = read_live_spec(search.r, keys)
    assert saved.revision == 1 and saved.budget.parallelism == 6


def test_suspend_drains_to_zero_loses_nothing_and_resume_runs_to_the_exact_count(redis_server, keys, tmp_path):
    search = Search(redis_server.url, keys, tmp_path, trainers=3, prefetch=2, max_trials=40, parallelism=3)
    try:
        search.wait_done(2)
        search.change(suspend=True)
        line = search.controller_says("suspended (live spec revision 1)", timeout=5)
        withdrawn = int(re.search(r"(\d+) queued trials withdrawn", line).group(1))
        search.controller_says("suspended with nothing in flight", timeout=120)
        summary = wait_for("the summary to show nothing running",
                           lambda: search.summary()["trials"]["running"] == 0 and search.summary(), 10)
        assert search.r.xlen(keys.trials) == 0 and search.r.hlen(keys.dispatched) == 0  # nothing handed out
        held = summary["trials"]["pending"]
        assert held == withdrawn >= 1
        assert summary["trials"]["total"] == done(summary) + held  # the withdrawn trials still count
        started, applied = search.started_trials(), search.applied()
        assert applied == done(summary)
        time.sleep(3)  # suspended: nothing may start or finish meanwhile
        assert search.started_trials() == started and search.applied() == applied

        search.change(suspend=False)
        search.controller_says(f"resumed (live spec revision 2): {withdrawn} withdrawn trials handed out again")
        summary = search.finish()
    finally:
        search.stop()
    assert summary["finishReason"] == "MaxTrialsReached"
    assert summary["trials"]["total"] == summary["trials"]["succeeded"] == 40
    evs = events(search.ck)
    ids = [f"t{i:06d}" for i in range(40)]
    assert [e["id"] for e in by_kind(evs, "trial")] == ids  # created once each: withdrawn trials kept their ids
    assert sorted(e["id"] for e in by_kind(evs, "result")) == ids  # and each was trained and applied once
    assert by_kind(evs, "cancel") == []


def test_a_controller_restarted_while_suspended_stays_suspended_from_its_checkpoint(redis_server, keys, tmp_path):
    search = Search(redis_server.url, keys, tmp_path, trainers=2, prefetch=2, max_trials=40, parallelism=2)
    try:
        search.wait_done(2)
        search.change(suspend=True)
        search.controller_says("suspended with nothing in flight", timeout=120)
        search.controller.send_signal(signal.SIGKILL)
        search.controller.wait(10)
        search.r.delete(keys.live_spec)  # Redis lost the record: the checkpoint alone must keep the suspension
        search.controller = spawn(controller_cmd(search.manifest, search.url, search.ck, "--prefetch", "2",
                                                 "--lease-seconds", "10"), search.controller_log)
        search.controller_says("live spec revision 1 kept (parallelism 2, maxTrials 40, suspended)", timeout=60)
        search.controller_says("resumed from", timeout=10)
        wait_for("the controller to put the live record back", lambda: read_live_spec(search.r, keys), 10)
        assert read_live_spec(search.r, keys).suspend and read_live_spec(search.r, keys).revision == 1
        started, applied = search.started_trials(), search.applied()
        time.sleep(3)  # suspended: nothing may start or finish meanwhile
        assert search.started_trials() == started and search.applied() == applied
        assert search.r.xlen(keys.trials) == 0
        search.change(suspend=False)
        search.controller_says("resumed (live spec revision 2)")
        summary = search.finish()
    finally:
        search.stop()
    assert summary["trials"]["total"] == summary["trials"]["succeeded"] == 40
    evs = events(search.ck)
    ids = [f"t{i:06d}" for i in range(40)]
    assert [e["id"] for e in by_kind(evs, "trial")] == ids
    assert sorted(e["id"] for e in by_kind(evs, "result")) == ids


def test_max_trials_lowered_below_the_trials_created_finishes_cleanly(redis_server, keys, tmp_path):
    # Trials of a couple of seconds: few finish between reading the counts and the change taking effect.
    training = {**TINY, "dataset": {"name": "digits", "trainSubset": 800}}
    search = Search(redis_server.url, keys, tmp_path, trainers=2, prefetch=3, max_trials=40, parallelism=2,
                    epochs=2, training=training)
    try:
        summary = search.wait_done(3)
        lowered = summary["trials"]["total"] - 2  # below what was created: queued trials must go
        search.change(max_trials=lowered)
        search.controller_says(f"budget.maxTrials 40 -> {lowered}", timeout=5)
        summary = search.finish()
    finally:
        search.stop()
    counts = summary["trials"]
    assert summary["finished"] and summary["finishReason"] == "MaxTrialsReached"
    assert counts["pending"] == counts["running"] == 0
    assert counts["total"] == counts["succeeded"] + counts["failed"] + counts["stopped"]
    evs = events(search.ck)
    trials, results, cancels = by_kind(evs, "trial"), by_kind(evs, "result"), by_kind(evs, "cancel")
    assert cancels and all(e["reason"] == "maxTrials lowered" for e in cancels)
    assert len(trials) - len(cancels) == len(results) == counts["total"]
    assert {e["id"] for e in results} | {e["id"] for e in cancels} == {e["id"] for e in trials}
    assert not {e["id"] for e in results} & {e["id"] for e in cancels}
    # Running trials were let finish; nothing beyond them was trained.
    assert lowered <= counts["total"] <= lowered + 2


def test_an_unwritable_checkpoint_directory_is_waited_out_and_nothing_unsaved_is_acknowledged(
        redis_server, keys, tmp_path):
    # Enough trials that the search cannot end between the second result and the rename
    # (a trial of this size takes about 0.1 s).
    trials = 60
    search = Search(redis_server.url, keys, tmp_path, trainers=2, prefetch=0, max_trials=trials, parallelism=2)
    away = tmp_path / "ck-away"
    try:
        search.wait_done(2)
        search.ck.rename(away)  # the volume is gone for a while
        search.controller_says("cannot save the checkpoint", timeout=120)
        assert search.controller.poll() is None
        # The results of the step that could not be saved are read but not acknowledged.
        assert search.r.xpending(keys.results, CONTROLLER_GROUP)["pending"] >= 1
        away.rename(search.ck)
        search.controller_says("checkpoint saved again", timeout=60)
        summary = search.finish()
    finally:
        if away.exists():
            shutil.move(str(away), str(search.ck))
        search.stop()
    assert summary["trials"]["total"] == summary["trials"]["succeeded"] == trials
    results = by_kind(events(search.ck), "result")
    assert sorted(e["id"] for e in results) == [f"t{i:06d}" for i in range(trials)]
    assert "Traceback" not in search.controller_log.read_text()


def test_garbage_in_the_live_spec_is_ignored_and_a_later_good_one_applies(redis_server, keys, tmp_path):
    search = Search(redis_server.url, keys, tmp_path, trainers=1, prefetch=0, max_trials=30, parallelism=1)
    try:
        search.wait_done(1)
        search.r.set(keys.live_spec, b'{"budget": {"maxTrials": -3}, "revision": 5}')
        search.controller_says("ignoring the live spec", timeout=5)
        budget = make_spec(**search.spec).budget.model_copy(update={"max_trials": 3})
        write_live_spec(search.r, keys, LiveSpec(budget=budget, revision=6))
        search.controller_says("budget.maxTrials 30 -> 3 (live spec revision 6)", timeout=5)
        summary = search.finish()
    finally:
        search.stop()
    assert summary["finishReason"] == "MaxTrialsReached" and summary["trials"]["total"] < 30
    assert len(log_lines(search.controller_log, "ignoring the live spec")) == 1  # logged once, not every poll
