"""Shared parts of the runtime benchmarks (dispatch.py, scale.py): an embedded
Redis, a real controller process, and simulated zero-work trainers.

Simulated trainers are the real `kubenas_trainer.trainer.Trainer` loop doing no
work (`tests/support/fake_trainer.py`), run as threads in a few worker processes
(256 interpreters would not fit a small machine):
`python benchmarks/runtime_harness.py worker ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def write_manifest(path: Path, name: str, max_trials: int, parallelism: int, space: str = "nasbench201") -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"searchSpace": {"type": space}, "strategy": {"algorithm": "random"},
                 "budget": {"maxTrials": max_trials, "parallelism": parallelism, "maxFailedTrials": max_trials},
                 "training": {"epochs": 1}}}))
    return path


def start_controller(manifest: Path, url: str, checkpoint: Path, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "kubenas_controller", "--spec", str(manifest), "--redis-url", url,
                             "--checkpoint-dir", str(checkpoint), "--metrics-port", "-1", "--log-level", "WARNING",
                             *extra],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def start_workers(url: str, name: str, trainers: int, processes: int, log: Path) -> list[subprocess.Popen]:
    processes = max(1, min(processes, trainers))
    per = [trainers // processes + (1 if i < trainers % processes else 0) for i in range(processes)]
    return [subprocess.Popen([PY, __file__, "worker", "--redis-url", url, "--name", name, "--threads", str(n),
                              "--prefix", f"w{i}"], stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                             start_new_session=True) for i, n in enumerate(per)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def trial_timings(checkpoint: Path) -> list[dict]:
    """created/started/finished/applied per trial, from the controller's log."""
    created: dict[str, float] = {}
    out = []
    for line in (checkpoint / "trials.jsonl").read_bytes().splitlines():
        e = json.loads(line)
        if e["e"] == "trial":
            created[e["id"]] = e["created"]
        elif e["e"] == "result":
            out.append({"id": e["id"], "created": created[e["id"]], "started": e["started"],
                        "finished": e["finished"], "applied": e["applied"]})
    return out


def percentile(values: list[float], q: float) -> float:
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


# --- the worker process: N simulated trainers as threads ------------------------------------

def worker(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--redis-url", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--prefix", default="w")
    p.add_argument("--fake-work", type=float, default=0.0)
    args = p.parse_args(argv)
    from kubenas.queue.keys import SearchKeys
    from kubenas.queue.connection import connect
    from kubenas_trainer.trainer import TrainerOptions
    from tests.support.fake_trainer import FakeTrainer

    keys = SearchKeys("bench", args.name)
    trainers = [FakeTrainer(connect(args.redis_url), keys, TrainerOptions(consumer=f"{args.prefix}-{i}", block_ms=1000),
                            work_seconds=args.fake_work)
                for i in range(args.threads)]

    def terminate(*_: object) -> None:
        for t in trainers:
            t.terminate()

    signal.signal(signal.SIGTERM, terminate)
    threads = [threading.Thread(target=t.run, daemon=True) for t in trainers]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.exit(worker(sys.argv[2:]))
    print("usage: runtime_harness.py worker ... (used by dispatch.py and scale.py)")
    sys.exit(2)
