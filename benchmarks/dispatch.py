"""Dispatch overhead of the trial queue, with zero-work trials.

    ./dev python benchmarks/dispatch.py [--trainers 1 8 64 256] [--pod-per-trial 1 8] [--no-fsync]

(a) per trial: the strategy's ask -> a trainer starts it -> its result is applied
    by the controller (after the checkpoint), p50 and p99, for each number of
    simulated trainers (the real Trainer loop as threads in a few processes);
(b) controller throughput: results applied per second;
(c) the same zero-work trials with one fresh Python process per trial (the
    pod-per-trial model of Katib: Trial -> Job -> pod), and the ratio. A real pod
    adds scheduling, image pull and container start-up on top, and a real trainer
    imports torch (also measured here), so the ratio is a lower bound.

A real redis-server and a real controller process (checkpoint fsync on unless
--no-fsync) run on this machine; numbers depend on its cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.runtime_harness import (  # noqa: E402
    PY,
    percentile,
    start_controller,
    start_workers,
    stop,
    trial_timings,
    write_manifest,
)
from kubenas.local.redis_server import RedisServer  # noqa: E402
from tests.support import fake_trainer  # noqa: E402


def summarize(timings: list[dict]) -> dict:
    e2e = [t["applied"] - t["created"] for t in timings]
    wait = [t["started"] - t["created"] for t in timings]
    apply = [t["applied"] - t["finished"] for t in timings]
    span = max(t["applied"] for t in timings) - min(t["created"] for t in timings)
    ms = lambda xs, q: round(1000 * percentile(xs, q), 2)  # noqa: E731
    return {"trials": len(timings), "p50_ms": ms(e2e, 0.5), "p99_ms": ms(e2e, 0.99),
            "ask_to_start_p50_ms": ms(wait, 0.5), "result_to_applied_p50_ms": ms(apply, 0.5),
            "applied_per_second": round(len(timings) / span, 1), "seconds": round(span, 2)}


def long_lived(url: str, work: Path, trainers: int, trials: int, fsync: bool) -> dict:
    name = f"dispatch-{trainers}"
    manifest = write_manifest(work / f"{name}.yaml", name, trials, trainers)
    controller = start_controller(manifest, url, work / name, work / f"{name}.controller.log",
                                  *([] if fsync else ["--no-fsync"]))
    workers = start_workers(url, name, trainers, processes=min(4, trainers), log=work / f"{name}.workers.log")
    try:
        if controller.wait(600) != 0:
            raise SystemExit(f"controller failed: {(work / f'{name}.controller.log').read_text()[-2000:]}")
    finally:
        stop(workers + [controller])
    return summarize(trial_timings(work / name))


def pod_per_trial(url: str, work: Path, concurrency: int, trials: int, fsync: bool) -> dict:
    name = f"pods-{concurrency}"
    manifest = write_manifest(work / f"{name}.yaml", name, trials, concurrency)
    controller = start_controller(manifest, url, work / name, work / f"{name}.controller.log",
                                  *([] if fsync else ["--no-fsync"]))
    log = open(work / f"{name}.pods.log", "ab")
    running: list[subprocess.Popen] = []
    try:
        while controller.poll() is None:
            running = [p for p in running if p.poll() is None]
            while len(running) < concurrency:
                # One fresh interpreter per trial: import, connect, claim one trial, post, exit.
                running.append(subprocess.Popen(
                    [*fake_trainer.command(PY), "--redis-url", url, "--namespace", "bench", "--name", name,
                     "--fake-work", "0", "--max-trials", "1", "--metrics-port", "-1", "--log-level", "WARNING"],
                    stdout=log, stderr=subprocess.STDOUT))
            time.sleep(0.002)
    finally:
        stop(running + [controller])
    return summarize(trial_timings(work / name))


def import_seconds(module: str, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        subprocess.run([PY, "-c", f"import {module}"], check=True)
        best = min(best, time.perf_counter() - began)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trainers", type=int, nargs="+", default=[1, 8, 64, 256])
    p.add_argument("--trials", type=int, default=None, help="trials per run (default: max(300, 8 x trainers))")
    p.add_argument("--pod-per-trial", type=int, nargs="*", default=[1, 8],
                   help="concurrencies for the one-process-per-trial comparison")
    p.add_argument("--pod-trials", type=int, default=60)
    p.add_argument("--no-fsync", action="store_true", help="controller checkpoints without fsync")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args()
    fsync = not args.no_fsync
    report: dict = {"fsync": fsync, "long_lived": {}, "pod_per_trial": {}}
    with tempfile.TemporaryDirectory(prefix="kubenas-bench-") as tmp:
        work = Path(tmp)
        with RedisServer(work / "redis", appendonly=True) as server:
            for n in args.trainers:
                trials = args.trials or max(300, 8 * n)
                report["long_lived"][n] = r = long_lived(server.url, work, n, trials, fsync)
                print(f"(a,b) {n:4d} long-lived trainers, {r['trials']} trials: ask->applied p50 {r['p50_ms']} ms, "
                      f"p99 {r['p99_ms']} ms (ask->start p50 {r['ask_to_start_p50_ms']} ms, result->applied p50 "
                      f"{r['result_to_applied_p50_ms']} ms); {r['applied_per_second']} results applied/s",
                      flush=True)
            for c in args.pod_per_trial:
                report["pod_per_trial"][c] = r = pod_per_trial(server.url, work, c, args.pod_trials, fsync)
                base = report["long_lived"].get(c)
                ratio = f"; long-lived is {base['applied_per_second'] / r['applied_per_second']:.0f}x the throughput " \
                        f"and {r['p50_ms'] / base['p50_ms']:.0f}x lower p50" if base else ""
                print(f"(c) {c:4d} concurrent process-per-trial, {r['trials']} trials: p50 {r['p50_ms']} ms, "
                      f"p99 {r['p99_ms']} ms; {r['applied_per_second']} trials/s{ratio}", flush=True)
    report["import_torch_seconds"] = round(import_seconds("torch"), 2)
    report["import_trainer_seconds"] = round(import_seconds("kubenas_trainer.trainer"), 2)
    print(f"per-trial process start-up not counted above for a real trainer: import torch "
          f"{report['import_torch_seconds']} s (the trainer package alone: {report['import_trainer_seconds']} s)")
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
