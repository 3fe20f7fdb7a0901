"""Faults of `kubenas run`, with real trainers training on digits (tiny NAS-Bench-201 cells).

Each test breaks one part of a running search as it breaks in practice (a process
killed, a directory made unwritable, a second run into the same directory) and
checks that the run neither hangs nor loses or double-counts a trial, and that
the console says what happened and what to do.
"""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from kubenas.local.results import count_trials, read_trials
from tests.local.support import (alive, assert_exactly, descendants, pids_of, require_redis_server, results_applied,
                                 snapshot, tiny_spec, trainer_pids, trials, write_manifest)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(autouse=True)
def _redis_server_present():
    require_redis_server()


def test_a_killed_redis_server_is_restarted_and_the_search_finishes_exactly(tmp_path, clis):
    path = write_manifest(tmp_path / "s.yaml", "redis-killed", tiny_spec(max_trials=12))  # room for the kill
    out = tmp_path / "out"
    run = clis("run", str(path), "--output", str(out), "--no-progress")
    wait_for("2 results", lambda: results_applied(out) >= 2, 150)
    [redis_pid] = pids_of(run.pid, "redis-server")
    os.kill(redis_pid, signal.SIGKILL)

    assert run.finish(200) == 0, run.text
    assert "redis-server exited (killed by SIGKILL); restarting it on port" in run.stderr
    assert "Traceback" not in run.text
    assert_exactly(out, 12)  # nothing lost, nothing counted twice
    assert "12 trials, 12 succeeded" in run.stdout


def test_trainers_past_their_restart_limit_stop_the_run_with_a_resume_hint(tmp_path, clis):
    path = write_manifest(tmp_path / "s.yaml", "crash-loop", tiny_spec(max_trials=40, parallelism=1))
    out = tmp_path / "out"
    run = clis("run", str(path), "--output", str(out), "--no-progress")
    wait_for("a first result", lambda: results_applied(out) >= 1, 150)
    # From now on the trainer dies as soon as it is (re)started, as an OOM-killed one would.
    killed: set[int] = set()

    def kill_trainers() -> bool:
        for pid in trainer_pids(run.pid):
            if pid not in killed:
                killed.add(pid)
                os.kill(pid, signal.SIGKILL)
        return run.proc.poll() is not None

    wait_for("the run to give up", kill_trainers, 150, interval=0.05)
    assert run.finish(60) == 1, run.text
    assert len(killed) == 6  # the first start and 5 restarts
    assert "restarting it (5/5)" in run.stderr
    assert "every trainer exited more than 5 times, so no trial can run" in run.stderr
    assert "run the same command again to resume" in run.stdout
    assert "Traceback" not in run.text
    assert not descendants(run.pid)


def test_sigkill_of_the_runner_takes_its_children_and_a_second_run_is_refused_first(tmp_path, clis):
    path = write_manifest(tmp_path / "s.yaml", "runner-killed", tiny_spec(max_trials=12))
    out = tmp_path / "out"
    first = clis("run", str(path), "--output", str(out), "--no-progress")
    wait_for("a first result", lambda: results_applied(out) >= 1, 150)
    holder = json.loads((out / "run.json").read_text())
    assert holder["pid"] == first.pid and "password" not in holder["redisUrl"] and "@" not in holder["redisUrl"]

    # A second run into the same directory is refused before it starts anything or writes a file.
    live = ("checkpoint", "logs", "redis", "artifacts")  # what the first run itself keeps writing
    before = {k: v for k, v in snapshot(out).items() if not k.startswith(live)}
    second = clis("run", str(path), "--output", str(out), "--no-progress")
    assert second.finish(120) == 2, second.text
    assert first.proc.poll() is None, "the first run finished too soon for this test"
    assert f"is in use by another `kubenas run` (pid {first.pid} on {holder['host']}, started " \
           f"{holder['started']}" in second.stderr
    assert "Traceback" not in second.text and "trials" not in second.stdout and "best" not in second.text
    assert {k: v for k, v in snapshot(out).items() if not k.startswith(live)} == before
    assert len(pids_of(first.pid, "redis-server")) == 1

    children = descendants(first.pid)
    assert any("redis-server" in c for c in children.values()) and any("kubenas_controller" in c
                                                                        for c in children.values())
    # Its redis-server keeps its data in OUTPUT: no temporary directory elsewhere to be left behind.
    assert (out / "redis" / "appendonlydir").is_dir()
    os.kill(first.pid, signal.SIGKILL)
    wait_for("every child of the killed run to die", lambda: not any(alive(p) for p in children), 20)

    again = clis("run", str(path), "--output", str(out), "--no-progress")
    assert again.finish(200) == 0, again.text
    assert "resuming" in again.stdout
    assert_exactly(out, 12)
    assert not (out / "redis").exists() and not (out / "run.json").exists()


def finished(trials: list[dict]) -> int:
    counts = count_trials(trials)
    return counts["total"] - counts["unfinished"]


def test_after_the_controller_is_killed_the_runner_says_how_to_resume_with_fresh_counts(tmp_path, clis):
    # 12 trials, killed after 2: on a fast machine a trial takes a fraction of a second, and the
    # kill must still land before the search ends.
    path = write_manifest(tmp_path / "s.yaml", "controller-killed", tiny_spec(max_trials=12))
    out = tmp_path / "out"
    run = clis("run", str(path), "--output", str(out), "--no-progress")
    # Two results its checkpoint covers (the log runs ahead of the checkpoint by up to a step,
    # and what the runner counts after the kill is what the checkpoint covers).
    wait_for("2 checkpointed results", lambda: finished(read_trials(out / "checkpoint")) >= 2, 150)
    [controller] = pids_of(run.pid, "kubenas_controller")
    os.kill(controller, signal.SIGKILL)

    assert run.finish(120) == 1, run.text
    assert "the controller exited (killed by SIGKILL)" in run.stderr
    assert "run the same command again to resume" in run.stdout
    counts = count_trials(read_trials(out / "checkpoint"))
    assert f"{counts['total']} trials, {counts['succeeded']} succeeded" in run.stdout  # not the summary's
    assert finished(read_trials(out / "checkpoint")) >= 2

    again = clis("run", str(path), "--output", str(out), "--no-progress")
    assert again.finish(200) == 0, again.text
    assert_exactly(out, 12)


def test_finished_results_survive_an_output_directory_unwritable_for_a_while(tmp_path, clis):
    path = write_manifest(tmp_path / "s.yaml", "unwritable", tiny_spec(max_trials=8))
    out = tmp_path / "out"
    run = clis("run", str(path), "--output", str(out), "--no-progress", drop_dac=True)
    wait_for("a first result", lambda: results_applied(out) >= 1, 150)
    out.chmod(0o500)
    try:
        run.wait_for_text("cannot write the results to", 200)
    finally:
        out.chmod(0o755)
    assert run.finish(120) == 0, run.text
    assert "retrying for up to" in run.stderr and "every trial is safe in" in run.stderr
    assert "Traceback" not in run.text
    assert_exactly(out, 8)
    assert (out / "best_genotype.json").exists()


def test_a_search_without_a_usable_result_says_why_and_fails(tmp_path, clis):
    data = tmp_path / "corrupt.npz"  # every image NaN: every trial diverges in its first step
    np.savez(data, x=np.full((300, 8, 8), np.nan, dtype=np.float32), y=np.arange(300) % 10)
    spec = tiny_spec(max_trials=2, training={"dataset": {"name": "npz", "root": str(data)}})
    path = write_manifest(tmp_path / "s.yaml", "all-diverge", spec)
    out = tmp_path / "out"
    run = clis("run", str(path), "--output", str(out), "--no-progress")
    assert run.finish(200) == 1, run.text
    assert "no trial produced a usable result (of 2 finished); every one failed or diverged, e.g.: loss became nan" \
        in run.stderr
    assert "Traceback" not in run.text


def test_a_search_that_trained_nothing_says_so_and_fails(tmp_path, clis):
    # Trials of 2 epochs, 20 s, against a 1 s budget: the search ends, stopping every trial after
    # its first epoch, before any trial has trained to the end.
    spec = tiny_spec(max_trials=4, budget={"maxTrials": 4, "parallelism": 2, "maxDuration": "1s"},
                     training={"epochs": 2})
    path = write_manifest(tmp_path / "s.yaml", "too-short", spec)
    run = clis("run", str(path), "--output", str(tmp_path / "out"), "--no-progress", fake_work=20)
    assert run.finish(120) == 1, run.text
    assert "the search produced no result: no trial finished training before it ended (MaxDurationReached" \
        in run.stderr
    assert "best reward" not in run.text and "Traceback" not in run.text


def test_a_directory_holding_another_search_is_refused_without_showing_its_results(tmp_path, clis):
    out = tmp_path / "out"
    first = write_manifest(tmp_path / "a.yaml", "first", tiny_spec(max_trials=2))
    done = clis("run", str(first), "--output", str(out), "--no-progress", fake_work=0.1)
    assert done.finish(120) == 0, done.text
    before = snapshot(out)

    other = write_manifest(tmp_path / "b.yaml", "second", tiny_spec(max_trials=2))
    refused = clis("run", str(other), "--output", str(out), "--no-progress", fake_work=0.1)
    assert refused.finish(120) == 2, refused.text
    assert "holds the results of search default/first, not default/second" in refused.stderr
    assert "best reward" not in refused.text and "Traceback" not in refused.text
    assert snapshot(out) == before

    # Same name, another strategy: the controller refuses to mix the two; nothing of the old one is shown.
    changed = write_manifest(tmp_path / "c.yaml", "first", tiny_spec(max_trials=2, strategy={"algorithm": "evolution"}))
    mixed = clis("run", str(changed), "--output", str(out), "--no-progress", fake_work=0.1)
    assert mixed.finish(120) == 2, mixed.text
    assert "the controller refused to start" in mixed.stderr
    assert "best reward" not in mixed.text and "Traceback" not in mixed.text
    unchanged = {k: v for k, v in snapshot(out).items() if not k.startswith(("logs", "redis", "checkpoint/.lock"))}
    assert unchanged == {k: v for k, v in before.items() if not k.startswith(("logs", "checkpoint/.lock"))}
    assert [t["id"] for t in trials(out)] == ["t000000", "t000001"]


@pytest.mark.timeout(600)
def test_a_trainer_killed_in_epoch_3_of_5_the_trial_resumes_from_epoch_2_through_kubenas_run(tmp_path, clis):
    """Real training through `kubenas run`: the trainer is SIGKILLed while it trains epoch 3 of
    the trial's 5 (after epoch 2's checkpoint); the runner restarts it, the trial is delivered
    again and continues from that checkpoint: epochs 1-2 are not trained again and the curve
    holds the first run's epochs 1-2, then 3-5."""
    spec = tiny_spec(max_trials=1, parallelism=1,
                     training={"epochs": 5, "dataset": {"name": "digits", "trainSubset": 400}})
    path = write_manifest(tmp_path / "s.yaml", "trainer-killed-mid-trial", spec)
    out = tmp_path / "out"
    run = clis("run", str(path), "--output", str(out), "--no-progress", "--lease-seconds", "3")
    checkpoints = out / "artifacts" / "trials" / "t000000"
    wait_for("the trainer", lambda: len(trainer_pids(run.pid)) == 1 or run.proc.poll() is not None, 120)
    [trainer] = trainer_pids(run.pid)
    # The JSON is written last (after the tensors, atomically): once it is there, epoch 2 is saved.
    wait_for("epoch 2's checkpoint", lambda: (checkpoints / "epoch-2.json").exists() or run.proc.poll() is not None,
             240, interval=0.01)
    os.kill(trainer, signal.SIGKILL)
    assert not (checkpoints / "epoch-3.json").exists(), "the trainer finished epoch 3 before it was killed"
    first_epochs = [e["val_acc"] for e in json.loads((checkpoints / "epoch-2.json").read_text())["progress"]["curve"]]

    assert run.finish(300) == 0, run.text
    assert "exited (killed by SIGKILL); restarting it (1/5)" in run.stderr
    assert "Traceback" not in run.text
    [trial] = assert_exactly(out, 1)
    assert trial["resumed_from_epoch"] == 2 and trial["attempts"] == 2
    assert trial["epochs"] == 5 and len(trial["curve"]) == 5
    assert trial["curve"][:2] == first_epochs and trial["reward"] == trial["curve"][-1]
    logs = "".join(p.read_text() for p in (out / "logs").glob("trainer-*.log"))
    assert "resuming trial t000000 from its checkpoint after epoch 2" in logs
