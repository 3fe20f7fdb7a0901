"""`kubenas run`'s supernet worker group (strategy.algorithm enas, darts, spos).

N local processes of `python -m kubenas.oneshot`, started the way torchrun starts them: each
with RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1 and a free MASTER_PORT, each dying
with the runner (kubenas.local.processes). They train the supernet data-parallel and
checkpoint it every epoch in OUTPUT/artifacts/supernet; rank 0 ends by writing derived.json,
which the controller hands on to stand-alone training.

Faults, with torchrun's elastic semantics: when one worker dies the whole group is stopped
and all N are started again (on a fresh port), each resuming from the last supernet
checkpoint, so at most the epoch in progress is lost; at most `max_restarts` times, then the
group has failed for good and the run stops, saying why. A worker that exits 2 (bad input, or
a training that diverged) is not restarted: the same input would fail again.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from kubenas.local.processes import Child
from kubenas.oneshot import supernet_fingerprint

# Replaces `python -m kubenas.oneshot` (split like a shell would), as KUBENAS_TRAINER_COMMAND does
# for the trainers: a profiler wrapper, or the tests' stand-in that keeps the worker's contract.
ONESHOT_COMMAND_VARIABLE = "KUBENAS_ONESHOT_COMMAND"
STOP_GRACE_SECONDS = 10.0
BAD_INPUT = 2


def oneshot_command_from_environment() -> list[str]:
    text = os.environ.get(ONESHOT_COMMAND_VARIABLE, "").strip()
    return shlex.split(text) if text else [sys.executable, "-m", "kubenas.oneshot"]


def free_port() -> int:
    """A port nobody listens on now (the rendezvous of one group start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def derived_path(artifacts: Path) -> Path:
    return artifacts / "supernet" / "derived.json"


def derived_is_for(artifacts: Path, spec) -> bool:
    """Whether derived.json was made by a supernet of this spec (the fingerprint the worker
    writes into it); False when it was not, does not say, or cannot be read."""
    try:
        data = json.loads(derived_path(artifacts).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("fingerprint") == supernet_fingerprint(spec)


def rank_environment(rank: int, workers: int, gpus: list[str]) -> dict[str, str]:
    """torchrun's variables for one worker, and its GPU (round-robin over `gpus`; none on CPU).
    The worker takes NCCL unless its LOCAL_WORLD_SIZE exceeds the GPUs it sees (NCCL refuses
    two ranks on one GPU): a worker alone on its GPU is a local world of one, while workers
    that share GPUs keep the whole group as their local world and talk over gloo."""
    env = {"RANK": str(rank), "WORLD_SIZE": str(workers), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(workers)}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[rank % len(gpus)]
        if workers <= len(gpus):
            env.update(LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    return env


def worker_error(child: Child) -> Optional[str]:
    """The worker's own one-line reason for failing (`kubenas-oneshot rank=R error: ...`), if it gave one."""
    for line in reversed(child.tail(60).splitlines()):
        if " error: " in line:
            return line.split(" error: ", 1)[1].strip()
    return None


class SupernetGroup:
    """The worker group: start, watch (restart all on the loss of one), stop."""

    def __init__(self, command: list[str], spec_path: Path, artifacts: Path, workers: int, max_restarts: int,
                 logs: Path, env: dict[str, str], threads: int, device: str, gpus: list[str],
                 say: Callable[[str, bool], None]):
        self.command, self.spec_path, self.artifacts = command, spec_path, artifacts
        self.workers, self.max_restarts = workers, max_restarts
        self.logs, self.env, self.threads, self.gpus, self.say = logs, env, threads, gpus, say
        # The worker takes cpu or cuda; a particular GPU is chosen by CUDA_VISIBLE_DEVICES.
        self.device = "cuda" if device.startswith("cuda") or (device == "auto" and gpus) else "cpu"
        self.children: list[Child] = []
        self.restarts = 0
        self.done = False
        self.paused = False  # suspended (kubenas suspend): stopped, started again on resume
        self.problem: Optional[str] = None  # set once the group has failed for good

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self.children if c.pid is not None]

    def start(self) -> None:
        port = str(free_port())
        self.children = []
        for rank in range(self.workers):
            env = dict(self.env, **rank_environment(rank, self.workers, self.gpus if self.device == "cuda" else []),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                       OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
            cmd = [*self.command, "--spec", str(self.spec_path), "--artifacts", str(self.artifacts),
                   "--device", self.device]
            child = Child(f"supernet-{rank}", cmd, self.logs / f"supernet-{rank}.log", env)
            child.start()
            self.children.append(child)

    def check(self) -> bool:
        """Restart the group if a worker died; False once it has failed for good (see `problem`).
        Sets `done` when every worker has exited 0."""
        if self.done or self.paused or self.problem is not None:
            return self.problem is None
        codes = [c.poll() for c in self.children]
        if all(code == 0 for code in codes):
            self.done = True
            self.say(f"supernet: trained by {self.workers} worker{'s' if self.workers != 1 else ''}"
                     f"{f' ({self.restarts} restarts)' if self.restarts else ''}; its genotypes go to "
                     "stand-alone training", False)
            return True
        failures = [(c, code) for c, code in zip(self.children, codes) if code not in (None, 0)]
        if not failures:
            return True  # running (a worker that finished waits for the others)
        # Name the cause, not its echo: a worker killed by a signal first, since its peers exit 1
        # ("lost the worker group") a moment later and may be seen in the same round.
        failed, code = min(failures, key=lambda failure: failure[1] >= 0)
        from kubenas.local.runner import describe_exit

        why = f"{failed.name} exited ({describe_exit(code)})"
        self.stop()
        error = worker_error(failed) or failed.last_error() or failed.tail(5)
        if code == BAD_INPUT:
            self.problem = (f"the supernet's workers stopped on their input or settings: {why}; {error} "
                            f"(log: {failed.log_path})")
            return False
        if self.restarts >= self.max_restarts:
            self.problem = (f"the supernet's worker group failed {self.restarts + 1} times (oneShot.maxRestarts "
                            f"{self.max_restarts}); the last time {why}; its last lines ({failed.log_path}):\n{error}")
            return False
        self.restarts += 1
        self.say(f"supernet: {why}; restarting all {self.workers} workers from the last checkpoint "
                 f"({self.restarts}/{self.max_restarts}); log: {failed.log_path}", True)
        self.start()
        return True

    def pause(self) -> None:
        """Suspended: stop the workers (the last checkpoint keeps their work); `resume` starts them again."""
        if not self.paused and not self.done:
            self.paused = True
            self.stop()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self.start()

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM every worker, SIGKILL what is left after the grace (a peer stuck in a collective)."""
        for child in self.children:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            while child.poll() is None and time.monotonic() < deadline:
                child.wait(0.2)
            child.signal(signal.SIGKILL)
            child.wait(5)
