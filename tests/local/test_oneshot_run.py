"""`kubenas run` with a one-shot algorithm: the supernet's worker group, its elastic restart,
and the hand-off of the derived genotypes to stand-alone training by the ordinary trainers.

The first test runs the real workers (`python -m kubenas.oneshot`). The restart-limit test runs
tests/support/oneshot_standin.py instead (KUBENAS_ONESHOT_COMMAND; a test stand-in that keeps
the worker's contract), whose pace it sets, so that it can kill one rank on every start.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from kubenas.local.results import read_trials
from tests.local.support import (alive, descendants, pids_of, require_redis_server, run_cli, tiny_spec,
                                 write_manifest)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(300)]

STANDIN = Path(__file__).resolve().parents[1] / "support" / "oneshot_standin.py"


@pytest.fixture(autouse=True)
def _redis_server_present():
    require_redis_server()


def oneshot_spec(**overrides) -> dict:
    """A tiny enas search: two supernet workers, then the derived genotypes trained stand-alone."""
    spec = tiny_spec(max_trials=10, parallelism=2, strategy={"algorithm": "enas"}, oneShot={"workers": 2})
    spec.update(overrides)
    return spec


def standin_env(monkeypatch, epochs: int = 3, step_seconds: float = 0.6) -> None:
    monkeypatch.setenv("KUBENAS_ONESHOT_COMMAND", f"{sys.executable} {STANDIN}")
    monkeypatch.setenv("KUBENAS_STANDIN_EPOCHS", str(epochs))
    monkeypatch.setenv("KUBENAS_STANDIN_STEP_SECONDS", str(step_seconds))
    monkeypatch.setenv("KUBENAS_ONESHOT_TIMEOUT", "20")


def supernet_epochs(out: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (out / "artifacts" / "supernet").glob("epoch-*.json"))


def test_a_worker_killed_mid_epoch_restarts_the_group_from_its_checkpoint_and_the_derived_cells_train(
        tmp_path, clis, monkeypatch):
    # The real supernet worker (python -m kubenas.oneshot): ENAS, 6 epochs of about a second each.
    monkeypatch.delenv("KUBENAS_ONESHOT_COMMAND", raising=False)
    monkeypatch.setenv("KUBENAS_ONESHOT_TIMEOUT", "20")
    spec = oneshot_spec()
    spec["strategy"]["parameters"] = {"topK": 2, "supernetEpochs": 6, "policySteps": 2, "policySamples": 4}
    spec["training"]["dataset"]["trainSubset"] = 600
    path = write_manifest(tmp_path / "s.yaml", "enas-local", spec)
    out = tmp_path / "out"
    run = clis("run", str(path), "--output", str(out), "--no-progress")

    wait_for("the first supernet checkpoint", lambda: supernet_epochs(out), 150, interval=0.05,
             logs=[out / "logs" / "supernet-1.log"])
    workers = wait_for("two workers", lambda: len(ws := pids_of(run.pid, "supernet-spec.json")) == 2 and ws, 30)
    done_at_kill = max(supernet_epochs(out))  # which epoch it dies in depends on the machine's load
    assert done_at_kill < 6, "the supernet finished before the kill: give it more epochs"
    os.kill(workers[1], signal.SIGKILL)  # rank 1, in the middle of an epoch
    info = json.loads((out / "run.json").read_text())
    assert sorted(info["supernetWorkers"]) == workers  # the runner says which processes they are
    assert not pids_of(run.pid, "--trainer-id")  # the workers have the trainers' place meanwhile

    assert run.finish(240) == 0, run.text
    assert "supernet-1 exited (killed by SIGKILL); restarting all 2 workers from the last checkpoint (1/3)" in run.stderr
    assert "Traceback" not in run.text
    assert not alive(workers[0])  # the survivor was stopped with the group, not left behind
    assert supernet_epochs(out) == [6]  # the worker keeps the latest checkpoint only
    # Restarted from its checkpoint, not from scratch (rank 0 may still have checkpointed the epoch
    # whose last step rank 1 had finished when it died).
    starts = [line for line in (out / "logs" / "supernet-0.log").read_text().splitlines() if "event=start" in line]
    assert len(starts) == 2 and "resumed_from=0" in starts[0], starts
    assert any(f"resumed_from={e} " in starts[1] + " " for e in (done_at_kill, done_at_kill + 1)), starts
    # The derived genotypes were trained stand-alone by the ordinary trainers, and are the result.
    derived = json.loads((out / "artifacts" / "supernet" / "derived.json").read_text())
    trials = read_trials(out / "checkpoint")
    trained = [t for t in trials if t.get("status") == "succeeded"]
    assert sorted(json.dumps(t["genotype"], sort_keys=True) for t in trained) == \
        sorted(json.dumps(g["genotype"], sort_keys=True) for g in derived["genotypes"])
    assert all(t["curve"] for t in trained)  # real stand-alone training, epoch by epoch
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["bestReward"] == max(t["reward"] for t in trained)
    assert summary["finishReason"] == "DerivedGenotypesTrained"
    assert not descendants(run.pid)


def test_a_worker_group_past_its_restart_limit_stops_the_run_saying_why(tmp_path, clis, monkeypatch):
    standin_env(monkeypatch, epochs=50)
    spec = oneshot_spec(oneShot={"workers": 2, "maxRestarts": 1})
    path = write_manifest(tmp_path / "s.yaml", "enas-crash", spec)
    out = tmp_path / "out"
    run = clis("run", str(path), "--output", str(out), "--no-progress")
    killed: set[int] = set()

    def kill_rank_one() -> bool:  # rank 1 dies as soon as it is (re)started, as an OOM-killed one would
        for pid, cmd in descendants(run.pid).items():
            if "supernet-spec.json" in cmd and pid not in killed and _rank(pid) == "1":
                killed.add(pid)
                os.kill(pid, signal.SIGKILL)
        return run.proc.poll() is not None

    wait_for("the run to give up", kill_rank_one, 120, interval=0.05)
    assert run.finish(60) == 1, run.text
    assert len(killed) == 2  # the first start and one restart
    assert "the supernet's worker group failed 2 times (oneShot.maxRestarts 1)" in run.stderr
    assert "run the same command again to resume" in run.stdout
    assert "Traceback" not in run.text
    assert not descendants(run.pid)


def _rank(pid: int) -> str:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return ""
    return next((e[5:].decode() for e in env if e.startswith(b"RANK=")), "")


def test_suspend_stops_the_workers_and_resume_starts_them_again_from_the_checkpoint(tmp_path, clis, monkeypatch):
    standin_env(monkeypatch, epochs=4)
    path = write_manifest(tmp_path / "s.yaml", "enas-suspend", oneshot_spec())
    out = tmp_path / "out"
    run = clis("run", str(path), "--output", str(out), "--no-progress")
    wait_for("the first supernet checkpoint", lambda: supernet_epochs(out), 120)

    code, stdout, stderr = run_cli("suspend", str(out))
    assert code == 0, stderr
    wait_for("no worker process", lambda: not pids_of(run.pid, "supernet-spec.json"), 30)
    assert json.loads((out / "run.json").read_text())["supernetWorkers"] == []
    assert run.proc.poll() is None and not pids_of(run.pid, "--trainer-id")  # waiting for resume
    code, stdout, stderr = run_cli("resume", str(out))
    assert code == 0, stderr

    assert run.finish(240) == 0, run.text
    starts = [line for line in (out / "logs" / "supernet-0.log").read_text().splitlines() if "starting at" in line]
    assert len(starts) == 2 and "starting at epoch 1 of 4" in starts[0], starts
    assert "starting at epoch 1 " not in starts[1], starts  # resumed from its checkpoint
    assert len([t for t in read_trials(out / "checkpoint") if t.get("status") == "succeeded"]) == 2
    assert not descendants(run.pid)
