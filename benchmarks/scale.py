"""A 20,000-trial search (NASNet's scale) with zero-work trainers: does anything grow?

    ./dev python benchmarks/scale.py [--trials 20000] [--trainers 16] [--no-fsync]

Runs a real controller process (random search in the NASNet space, with the
deduplication layer: it remembers every architecture, as it must) against a
real redis-server, with simulated zero-work trainers, and samples every half
second: the controller's resident memory, Redis' used_memory and the streams'
lengths. Prints them at checkpoints of the run, the peaks, and the size of the
summary the operator copies into the resource's status (Katib hit etcd's
~1.5 MiB object limit by keeping every trial in its status).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis  # noqa: E402

from benchmarks.runtime_harness import rss_kib, start_controller, start_workers, stop, write_manifest  # noqa: E402
from kubenas.local.redis_server import RedisServer  # noqa: E402
from kubenas.queue.keys import SearchKeys  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20_000)
    p.add_argument("--trainers", type=int, default=16)
    p.add_argument("--no-fsync", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    keys = SearchKeys("bench", "scale")
    marks = sorted({m for m in (1000, 2000, 5000, 10_000, args.trials) if m <= args.trials})
    rows = []
    with tempfile.TemporaryDirectory(prefix="kubenas-scale-") as tmp:
        work = Path(tmp)
        with RedisServer(work / "redis", appendonly=True) as server:
            r = redis.Redis.from_url(server.url)
            baseline_redis = r.info("memory")["used_memory"]
            manifest = write_manifest(work / "scale.yaml", keys.name, args.trials, args.trainers, space="nasnet")
            controller = start_controller(manifest, server.url, work / "ck", work / "controller.log",
                                          *(["--no-fsync"] if args.no_fsync else []))
            workers = start_workers(server.url, keys.name, args.trainers, processes=4, log=work / "workers.log")
            began = time.monotonic()
            peak_rss = peak_redis = 0
            max_streams = {"trials": 0, "results": 0, "progress": 0}
            summary_bytes = 0
            try:
                while controller.poll() is None:
                    try:
                        rss, hwm = rss_kib(controller.pid)
                    except OSError:
                        break
                    mem = r.info("memory")["used_memory"]
                    raw = r.get(keys.summary) or b"{}"
                    summary = json.loads(raw)
                    summary_bytes = max(summary_bytes, len(raw))
                    t = summary.get("trials", {})
                    done = t.get("succeeded", 0) + t.get("failed", 0) + t.get("stopped", 0)
                    for name, key in (("trials", keys.trials), ("results", keys.results), ("progress", keys.progress)):
                        max_streams[name] = max(max_streams[name], r.xlen(key))
                    peak_rss, peak_redis = max(peak_rss, hwm), max(peak_redis, mem)
                    while marks and done >= marks[0]:
                        rows.append({"trials": marks.pop(0), "seconds": round(time.monotonic() - began, 1),
                                     "controller_rss_mib": round(rss / 1024, 1),
                                     "redis_used_memory_mib": round(mem / 2 ** 20, 2),
                                     "summary_bytes": len(raw)})
                        print(f"{rows[-1]['trials']:6d} trials  {rows[-1]['seconds']:7.1f} s  controller RSS "
                              f"{rows[-1]['controller_rss_mib']:6.1f} MiB  redis used_memory "
                              f"{rows[-1]['redis_used_memory_mib']:6.2f} MiB  summary {len(raw)} B", flush=True)
                    time.sleep(0.5)
                rc = controller.wait(60)
            finally:
                stop(workers + [controller])
            elapsed = time.monotonic() - began
            raw = r.get(keys.summary)
            final = json.loads(raw)
            leftover = {k.decode(): r.type(k).decode() for k in r.keys(keys.prefix + ":*")}
            report = {
                "controller_exit": rc, "trials": final["trials"], "seconds": round(elapsed, 1),
                "results_per_second": round(args.trials / elapsed, 1),
                "peak_controller_rss_mib": round(peak_rss / 1024, 1),
                "peak_redis_used_memory_mib": round(peak_redis / 2 ** 20, 2),
                "redis_baseline_mib": round(baseline_redis / 2 ** 20, 2),
                "max_stream_lengths": max_streams,
                "summary_bytes_final": len(raw), "summary_bytes_max": summary_bytes,
                "checkpoint_state_bytes": (work / "ck" / "state.json").stat().st_size,
                "trial_log_bytes": (work / "ck" / "trials.jsonl").stat().st_size,
                "keys_left": leftover, "at": rows,
            }
    print(f"{args.trials} trials in {report['seconds']} s ({report['results_per_second']}/s); peak controller RSS "
          f"{report['peak_controller_rss_mib']} MiB; peak redis used_memory {report['peak_redis_used_memory_mib']} MiB "
          f"(empty: {report['redis_baseline_mib']}); longest streams {max_streams}; summary "
          f"{report['summary_bytes_max']} B at most; controller state {report['checkpoint_state_bytes']} B, "
          f"trial log {report['trial_log_bytes']} B (on the volume, not in memory)")
    if args.json:
        print(json.dumps(report))
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
