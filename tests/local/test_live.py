"""`kubenas scale|suspend|resume DIR` on a running `kubenas run`, trainers really training."""

from __future__ import annotations

import json

import pytest
import redis

from kubenas.queue.keys import SearchKeys
from kubenas.queue.live_spec import read_live_spec
from tests.local.support import (assert_exactly, require_redis_server, results_applied, run_cli, tiny_spec,
                                 trainer_pids, write_manifest)
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(400)]


def test_scale_up_suspend_and_resume_a_running_search(tmp_path, clis):
    require_redis_server()
    path = write_manifest(tmp_path / "s.yaml", "live", tiny_spec(max_trials=60, parallelism=2))
    out = tmp_path / "out"
    run = clis("run", str(path), "--output", str(out), "--no-progress")
    wait_for("a first result", lambda: results_applied(out) >= 1, 150)
    assert len(trainer_pids(run.pid)) == 2
    info = json.loads((out / "run.json").read_text())
    client = redis.Redis.from_url(info["redisUrl"])
    keys = SearchKeys(info["namespace"], info["name"])

    code, stdout, stderr = run_cli("scale", str(out), "6")
    assert code == 0, stdout + stderr
    assert "6 trainers (revision 1)" in stdout and "applied by the run" in stdout
    live = read_live_spec(client, keys)
    assert live.revision == 1 and live.budget.parallelism == 6 and not live.suspend
    assert live.budget.max_trials == 60  # the rest of the budget as the run started
    wait_for("6 trainer processes", lambda: len(trainer_pids(run.pid)) == 6, 30)

    code, stdout, stderr = run_cli("suspend", str(out))
    assert code == 0, stdout + stderr
    assert "suspended" in stdout and "(revision 2)" in stdout
    wait_for("no trainer process", lambda: not trainer_pids(run.pid), 60)

    def nothing_running() -> bool:
        summary = json.loads(client.get(keys.summary) or b"{}")
        return summary.get("trials", {}).get("running") == 0

    wait_for("no trial in flight", nothing_running, 30)
    assert results_applied(out) < 60, "the search finished before it could be suspended"
    assert run.proc.poll() is None  # suspended, not finished: it waits for resume

    code, stdout, stderr = run_cli("resume", str(out))
    assert code == 0, stdout + stderr
    assert "resumed with 6 trainers (revision 3)" in stdout
    wait_for("6 trainer processes again", lambda: len(trainer_pids(run.pid)) == 6, 30)
    assert run.finish(600) == 0, run.text
    assert "scaled to 6 trainers (revision 1)" in run.stdout
    assert "suspended (revision 2)" in run.stdout and "resumed (revision 3)" in run.stdout
    done = assert_exactly(out, 60)  # nothing lost or trained twice across scale, suspend, resume
    # Trainer ids are never reused: 0-1 at the start, 2-5 scaled up, 6-11 after the resume,
    # which started all 6 at once, and each of them trained.
    resumed = {f"trainer-{i}" for i in range(6, 12)}
    assert resumed <= {t["trainer"] for t in done}, sorted({t["trainer"] for t in done})


def test_live_changes_need_a_running_search(tmp_path):
    code, _, stderr = run_cli("scale", str(tmp_path), "3")
    assert code == 2 and "no `kubenas run` is using it now" in stderr and "Traceback" not in stderr
    code, _, stderr = run_cli("suspend", str(tmp_path / "missing"))
    assert code == 2 and "no such directory" in stderr and "Traceback" not in stderr
    code, _, stderr = run_cli("scale", str(tmp_path), "0")
    assert code == 2 and "0 is not accepted; use 1 to 1024" in stderr and "Traceback" not in stderr


def test_a_rerun_keeps_the_scale_the_controller_applied(tmp_path, clis):
    require_redis_server()
    path = write_manifest(tmp_path / "s.yaml", "kept", tiny_spec(max_trials=200, parallelism=2))
    out = tmp_path / "out"
    run = clis("run", str(path), "--output", str(out), "--no-progress", fake_work=1)
    wait_for("a first result", lambda: results_applied(out) >= 1, 60)
    assert run_cli("scale", str(out), "3")[0] == 0
    wait_for("3 trainers", lambda: len(trainer_pids(run.pid)) == 3, 30)
    run.proc.send_signal(2)  # Ctrl-C
    assert run.finish(60) == 130, run.text

    # The controller's checkpoint holds the applied live spec; the rerun's trainers follow it.
    again = clis("run", str(path), "--output", str(out), "--no-progress", fake_work=1)
    again.wait_for_text("scaled to 3 trainers (revision 1)", 60)
    wait_for("3 trainers again", lambda: len(trainer_pids(again.pid)) == 3, 30)
    assert run_cli("suspend", str(out))[0] == 0
    wait_for("no trainer", lambda: not trainer_pids(again.pid), 60)
    again.proc.send_signal(2)
    assert again.finish(60) == 130, again.text
