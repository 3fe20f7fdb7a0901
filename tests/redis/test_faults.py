"""Fault tests with real processes: the controller and trainers as `python -m ...`
against a real redis-server; processes and Redis are killed, paused, restarted."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from kubenas.local.redis_server import free_port
from kubenas.spaces import build_space
from tests.redis.harness import (
    by_kind,
    controller_cmd,
    done,
    events,
    log_lines,
    make_spec,
    read_summary,
    spawn,
    stop_all,
    trainer_cmd,
    write_manifest,
)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.timeout(180)]


def started_trials(logs: list[Path]) -> Counter:
    """(trial id, attempt) -> how many times a trainer started it, from the trainers' logs."""
    seen: Counter = Counter()
    for path in logs:
        for line in log_lines(path, "started trial"):
            m = re.search(r"started trial (\S+) attempt (\d+)", line)
            seen[(m.group(1), int(m.group(2)))] += 1
    return seen


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_trainer_killed_mid_trial_loses_nothing(redis_server, keys, tmp_path):
    url, lease = redis_server.url, 2.0
    manifest = write_manifest(tmp_path / "search.yaml", keys, max_trials=4, parallelism=2, epochs=3)
    cport, tport = free_port(), free_port()
    logs = {n: tmp_path / f"{n}.log" for n in ("controller", "a", "b")}
    procs = {"controller": spawn(controller_cmd(manifest, url, tmp_path / "ck", "--lease-seconds", str(lease),
                                                "--prefetch", "0") + ["--metrics-port", str(cport)],
                                 logs["controller"])}
    procs["a"] = spawn(trainer_cmd(url, keys, "a", 3.0, lease), logs["a"])
    procs["b"] = spawn(trainer_cmd(url, keys, "b", 3.0, lease) + ["--metrics-port", str(tport)], logs["b"])
    try:
        line = wait_for("trainer a to start a trial", lambda: log_lines(logs["a"], "started trial"), 60, interval=0.05)[0]
        victim = re.search(r"started trial (\S+)", line).group(1)
        time.sleep(0.5)
        procs["a"].send_signal(signal.SIGKILL)

        status, body = get(f"http://127.0.0.1:{cport}/healthz")
        assert status == 200 and "redis reachable" in body
        status, body = get(f"http://127.0.0.1:{cport}/metrics")
        assert status == 200 and "kubenas_trials_dispatched_total" in body
        assert procs["controller"].wait(90) == 0
        status, body = get(f"http://127.0.0.1:{tport}/metrics")
        assert 'kubenas_trainer_trials_total{outcome="succeeded",search="%s"}' % keys.search in body
        assert "kubenas_trials_reclaimed_total" in body and "kubenas_trainer_busy_seconds_total" in body
    finally:
        stop_all(list(procs.values()))
    summary = read_summary(url, keys)
    assert summary["trials"]["total"] == summary["trials"]["succeeded"] == 4
    results = by_kind(events(tmp_path / "ck"), "result")
    assert Counter(e["id"] for e in results) == Counter({f"t00000{i}": 1 for i in range(4)})  # counted once
    redone = next(e for e in results if e["id"] == victim)
    assert redone["trainer"] == "b" and redone["attempt"] == 2
    assert log_lines(logs["b"], f"started trial {victim} attempt 2 (taken over)")


def test_a_killed_and_restarted_controller_repeats_and_loses_nothing(redis_server, keys, tmp_path):
    url = redis_server.url
    kwargs = dict(max_trials=40, parallelism=4, epochs=1)
    manifest = write_manifest(tmp_path / "search.yaml", keys, **kwargs)
    ck = tmp_path / "ck"
    trainer_logs = [tmp_path / f"t{i}.log" for i in range(3)]
    trainers = [spawn(trainer_cmd(url, keys, f"t{i}", 0.15, 5.0), trainer_logs[i]) for i in range(3)]
    controllers = []
    try:
        for threshold in (8, 22):
            controllers.append(spawn(controller_cmd(manifest, url, ck, "--lease-seconds", "5"),
                                     tmp_path / "controller.log"))
            wait_for(f"{threshold} trials done", lambda: done(read_summary(url, keys)) >= threshold, 60, interval=0.05)
            controllers[-1].send_signal(signal.SIGKILL)
            controllers[-1].wait(10)
            time.sleep(0.3)
        controllers.append(spawn(controller_cmd(manifest, url, ck, "--lease-seconds", "5"),
                                 tmp_path / "controller.log"))
        assert controllers[-1].wait(90) == 0
        assert all(t.poll() is None for t in trainers)
    finally:
        stop_all(trainers + controllers)
    assert len(log_lines(tmp_path / "controller.log", "resumed from")) == 2

    summary = read_summary(url, keys)
    assert summary["finished"] and summary["trials"]["total"] == summary["trials"]["succeeded"] == 40
    evs = events(ck)
    trials, results = by_kind(evs, "trial"), by_kind(evs, "result")
    ids = [f"t{i:06d}" for i in range(40)]
    assert [e["id"] for e in trials] == ids  # each trial created once, in order
    assert sorted(e["id"] for e in results) == ids  # each result applied once
    # Every trial was started exactly once, by one trainer: nothing was published twice.
    assert started_trials(trainer_logs) == Counter({(i, 1): 1 for i in ids})

    # The proposals and the strategy's state are those of a search that was never interrupted.
    from kubenas_controller.strategy import build_strategy

    spec = make_spec(**kwargs)
    uninterrupted = build_strategy(spec, build_space(spec.search_space))
    proposed = uninterrupted.ask(40)
    assert [e["genotype"] for e in trials] == [t.genotype for t in proposed]
    state = json.loads((ck / "state.json").read_text())["strategy"]
    expected = uninterrupted.state_dict()
    assert state["inner"]["rng"] == expected["inner"]["rng"]
    assert state["inner"]["next_id"] == expected["inner"]["next_id"] == 40
    assert state["pending"] == [] and state["inner"]["pending"] == []


def _search_with(url, keys, tmp_path, max_trials, trainers=3, fake_work=0.3, lease=2.0):
    manifest = write_manifest(tmp_path / "search.yaml", keys, max_trials=max_trials, parallelism=trainers, epochs=3)
    logs = [tmp_path / "controller.log"] + [tmp_path / f"t{i}.log" for i in range(trainers)]
    procs = [spawn(controller_cmd(manifest, url, tmp_path / "ck", "--lease-seconds", str(lease)), logs[0])]
    procs += [spawn(trainer_cmd(url, keys, f"t{i}", fake_work, lease), logs[1 + i]) for i in range(trainers)]
    return procs, logs


def _check_counted_once(url, keys, tmp_path, max_trials):
    summary = read_summary(url, keys)
    assert summary["finished"] and summary["trials"]["total"] == summary["trials"]["succeeded"] == max_trials
    results = by_kind(events(tmp_path / "ck"), "result")
    assert sorted(e["id"] for e in results) == [f"t{i:06d}" for i in range(max_trials)]


def test_redis_killed_and_restarted_with_aof_the_search_continues(own_redis, keys, tmp_path):
    url = own_redis.url
    procs, logs = _search_with(url, keys, tmp_path, max_trials=30)
    try:
        wait_for("8 trials done", lambda: done(read_summary(url, keys)) >= 8, 60, interval=0.05)
        own_redis.kill()  # SIGKILL: appendfsync everysec may lose the last second
        time.sleep(1.5)
        own_redis.start()
        assert procs[0].wait(120) == 0
        assert all(p.poll() is None for p in procs[1:]), "a trainer exited"
    finally:
        stop_all(procs)
    _check_counted_once(url, keys, tmp_path, 30)
    assert log_lines(logs[0], "Redis is unreachable") and log_lines(logs[0], "reachable again")


def test_redis_unreachable_for_30_seconds_every_process_recovers(own_redis, keys, tmp_path):
    url = own_redis.url
    procs, logs = _search_with(url, keys, tmp_path, max_trials=20, trainers=2, fake_work=0.5)
    try:
        wait_for("4 trials done", lambda: done(read_summary(url, keys)) >= 4, 60, interval=0.05)
        own_redis.pause()  # SIGSTOP: connections hang and time out, like a network partition
        began = time.monotonic()
        while time.monotonic() - began < 30:
            assert all(p.poll() is None for p in procs), "a process gave up while Redis was away"
            time.sleep(1)
        own_redis.resume()
        assert procs[0].wait(120) == 0
        assert all(p.poll() is None for p in procs[1:]), "a trainer exited"
    finally:
        own_redis.resume()
        stop_all(procs)
    _check_counted_once(url, keys, tmp_path, 20)
    for log in logs:
        assert log_lines(log, "Redis is unreachable"), f"{log.name} did not notice the outage"
        assert log_lines(log, "reachable again"), f"{log.name} did not recover"


def test_sigterm_hands_the_trial_back_at_once(redis_server, keys, tmp_path):
    url, lease = redis_server.url, 30.0  # a long lease: a quick takeover cannot be a lease expiry
    manifest = write_manifest(tmp_path / "search.yaml", keys, max_trials=1, parallelism=1, epochs=4)
    logs = {n: tmp_path / f"{n}.log" for n in ("controller", "a", "b")}
    procs = [spawn(controller_cmd(manifest, url, tmp_path / "ck", "--lease-seconds", str(lease)), logs["controller"]),
             spawn(trainer_cmd(url, keys, "a", 40.0, lease), logs["a"])]
    try:
        wait_for("trainer a to start", lambda: log_lines(logs["a"], "started trial t000000"), 60, interval=0.05)
        procs.append(spawn(trainer_cmd(url, keys, "b", 1.0, lease), logs["b"]))
        wait_for("trainer b to be up", lambda: log_lines(logs["b"], "trainer b for search"), 60, interval=0.05)
        began = time.monotonic()
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(10) == 0
        wait_for("trainer b to take the trial over", lambda: log_lines(logs["b"], "started trial t000000"), 10,
                 interval=0.05)
        assert time.monotonic() - began < 5  # handed back, not waited out (the lease is 30 s)
        assert procs[0].wait(60) == 0
    finally:
        stop_all(procs)
    assert log_lines(logs["a"], "handed trial t000000 back")
    assert log_lines(logs["b"], "started trial t000000 attempt 1 (taken over)")  # preemption costs no attempt
    (result,) = by_kind(events(tmp_path / "ck"), "result")
    assert result["trainer"] == "b" and result["status"] == "succeeded" and result["attempt"] == 1
