"""`kubenas run` with trainer.trialsPerGPU: 2: each trainer it starts is a supervisor of two
real trainer processes (as in a pod), and both train trials of a real search on digits."""

from __future__ import annotations

import pytest

from tests.local.support import require_redis_server, result_trainers, run_cli, tiny_spec, trials, write_manifest

pytestmark = pytest.mark.timeout(300)


def test_one_trainer_runs_two_trainer_processes_that_both_train(tmp_path):
    require_redis_server()
    manifest = write_manifest(tmp_path / "packed.yaml", "packed",
                              tiny_spec(max_trials=6, parallelism=1, trainer={"trialsPerGPU": 2}))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("run", str(manifest), "--output", str(out), "--device", "cpu", timeout=240)
    assert code == 0, stdout + stderr
    assert "1 trainer x 2 processes x" in stdout + stderr
    assert result_trainers(out) == {"trainer-0-0", "trainer-0-1"}
    assert len(trials(out)) == 6 and all(t["status"] == "succeeded" for t in trials(out))
