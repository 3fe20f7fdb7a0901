"""`kubenas run`: the whole local runtime, from the command line, as a user runs it."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import yaml

from kubenas.spaces import space_of
from tests.support import fake_trainer
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.timeout(240)]


def manifest(path: Path, name: str, spec: dict) -> Path:
    path.write_text(yaml.safe_dump({"apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch",
                                    "metadata": {"name": name}, "spec": spec}))
    return path


def kubenas_run(*args: str, fake_work: Optional[float] = None, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, COLUMNS="200", **(fake_trainer.run_environment(fake_work) if fake_work is not None else {}))
    return subprocess.Popen([sys.executable, "-m", "kubenas.cli", "run", *args, "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, **kwargs)


def test_real_training_on_digits_end_to_end_then_resume_is_a_no_op(tmp_path):
    spec = {"searchSpace": {"type": "nasbench201"}, "strategy": {"algorithm": "random"},
            "budget": {"maxTrials": 4, "parallelism": 2},
            "training": {"dataset": {"name": "digits", "trainSubset": 400}, "epochs": 2, "channels": 4,
                         "cellsPerStage": 1, "batchSize": 32}}
    path = manifest(tmp_path / "digits.yaml", "digits-e2e", spec)
    out = tmp_path / "results"
    proc = kubenas_run(str(path), "--output", str(out))
    stdout, _ = proc.communicate(timeout=200)
    assert proc.returncode == 0, stdout
    assert "finished" in stdout and "MaxTrialsReached" in stdout

    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [t["id"] for t in trials] == ["t000000", "t000001", "t000002", "t000003"]
    for t in trials:
        assert t["status"] == "succeeded" and 0.0 <= t["reward"] <= 1.0
        assert len(t["curve"]) == 2 and t["params"] > 0 and t["device"] == "cpu"
    assert max(t["reward"] for t in trials) > 0.3  # real learning: 10 classes, chance is 0.1
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["id"] for r in rows] == [t["id"] for t in trials]
    best = max(trials, key=lambda t: t["reward"])
    genotype = json.loads((out / "best_genotype.json").read_text())
    assert genotype == best["genotype"] and space_of(genotype).validate(genotype)
    assert json.loads((out / "summary.json").read_text())["bestTrial"] == best["id"]
    for png in ("rewards.png", "best_cells.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png

    again = kubenas_run(str(path), "--output", str(out))
    stdout, _ = again.communicate(timeout=120)
    assert again.returncode == 0, stdout
    assert "resuming" in stdout
    assert len((out / "trials.jsonl").read_text().splitlines()) == 4  # nothing trained again


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path):
    spec = {"searchSpace": {"type": "nasnet"}, "strategy": {"algorithm": "evolution",
                                                           "parameters": {"population": 5, "sample": 2}},
            "budget": {"maxTrials": 24, "parallelism": 2}, "training": {"epochs": 2}}
    path = manifest(tmp_path / "fake.yaml", "interrupted", spec)
    out = tmp_path / "results"
    proc = kubenas_run(str(path), "--output", str(out), fake_work=0.4, start_new_session=True)
    log = out / "checkpoint" / "trials.jsonl"
    wait_for("5 results", lambda: log.exists() and log.read_text().count('"e":"result"') >= 5, 90, interval=0.05)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's whole process group
    began = time.monotonic()
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout
    assert time.monotonic() - began < 20
    assert "run the same command again to resume" in stdout
    partial = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert 5 <= sum(t["status"] == "succeeded" for t in partial) < 24

    again = kubenas_run(str(path), "--output", str(out), fake_work=0.4)
    stdout, _ = again.communicate(timeout=120)
    assert again.returncode == 0, stdout
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [t["id"] for t in trials] == [f"t{i:06d}" for i in range(24)]
    assert all(t["status"] == "succeeded" for t in trials)
    # What finished before Ctrl-C is kept as it was, not trained again.
    before = {t["id"]: t["finished"] for t in partial if t["status"] == "succeeded"}
    assert all(next(t for t in trials if t["id"] == i)["finished"] == f for i, f in before.items())
