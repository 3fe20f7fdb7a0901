"""How fast budget and suspend changes reach a running search: a real controller and 6 real
trainers on digits, a real redis-server, changes written to the live-spec record as the operator
and `kubenas scale|suspend|resume` write them. Prints seconds from the write to the effect.

    ./dev python benchmarks/live_changes.py
"""
import re
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' process helpers
from kubenas.local.redis_server import RedisServer
from kubenas.queue.keys import SearchKeys
from tests.redis.harness import log_lines, read_summary, done
from tests.redis.test_live_spec import Search, TINY

def log_time(line):
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()

def wait_line(search, needle, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        lines = log_lines(search.controller_log, needle)
        if lines:
            return log_time(lines[-1])
        time.sleep(0.02)
    raise SystemExit(f"no {needle!r}")

tmp = Path(tempfile.mkdtemp())
server = RedisServer(tmp / "redis"); server.start()
keys = SearchKeys("bench", f"s-{uuid.uuid4().hex[:6]}")
training = {**TINY, "dataset": {"name": "digits", "trainSubset": 800}}
search = Search(server.url, keys, tmp, trainers=6, prefetch=0, max_trials=80, parallelism=2, epochs=2, training=training)
try:
    search.wait_done(6)
    t = time.time(); search.change(parallelism=6)
    applied = wait_line(search, "budget.parallelism 2 -> 6")
    while (read_summary(server.url, keys) or {}).get("trials", {}).get("running", 0) < 6:
        time.sleep(0.02)
    print(f"scale 2->6: applied {applied - t:.2f} s after the write; 6 trials running {time.time() - t:.2f} s after")
    time.sleep(5)
    t = time.time(); search.change(suspend=True)
    applied = wait_line(search, "suspended (live spec")
    drained = wait_line(search, "suspended with nothing in flight")
    line = log_lines(search.controller_log, "suspended (live spec")[-1]
    what = re.search(r"(\d+) queued trials withdrawn, (\d+) running", line).group(0)
    print(f"suspend: applied {applied - t:.2f} s after the write; drained {drained - t:.2f} s after ({what})")
    n_started = sum(len(log_lines(l, 'started trial')) for l in search.trainer_logs)
    t = time.time(); search.change(suspend=False)
    applied = wait_line(search, "resumed (live spec")
    while sum(len(log_lines(l, 'started trial')) for l in search.trainer_logs) == n_started:
        time.sleep(0.02)
    print(f"resume: applied {applied - t:.2f} s after the write; first trial started {time.time() - t:.2f} s after")
    s = search.finish()
    print("final:", s["trials"], s["finishReason"])
finally:
    search.stop(); server.stop()
