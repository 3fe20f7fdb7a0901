"""Several trainer processes in one pod: `python -m kubenas_trainer --processes K ...`.

spec.trainer.trialsPerGPU packs K small trials onto one GPU. Each trial runs in a
trainer process of its own (its own CUDA context, its own queue consumer), so a
crash or an out-of-memory error costs one trial, not the pod. This supervisor is
the pod's main process: it starts the K trainers with the flags it was given,
each with a trainer id and metrics port of its own, and

- forwards SIGTERM/SIGINT to them (each hands its trial back) and exits when they have;
- restarts a trainer that crashed, at most RESTARTS_PER_PROCESS times each; past that
  it stops the others and exits 1, so Kubernetes restarts the pod;
- exits when every trainer exited by itself (--exit-when-done, --max-trials), with
  the worst status among them;
- takes its trainers with it when it dies: each asks the kernel for SIGKILL when the
  supervisor dies (PR_SET_PDEATHSIG), as the local runner's children do.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional

from kubenas.local.processes import die_with_parent
from kubenas.signals import act_on_signal

log = logging.getLogger("kubenas.trainer.supervisor")

RESTARTS_PER_PROCESS = 5
STOP_GRACE_SECONDS = 50.0  # under the trainer pods' terminationGracePeriodSeconds (60)
POLL_SECONDS = 0.5
# A trainer that exits with this refused its flags: starting it again cannot help.
BAD_FLAG_STATUS = 2


def child_argv(argv: list[str], trainer_id: str, metrics_port: int, threads: Optional[int]) -> list[str]:
    """The supervisor's own flags, less --processes, with this child's trainer id, port and threads."""
    own = {"--processes", "--trainer-id", "--metrics-port", "--threads"}
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in own:
            skip = "=" not in arg  # "--flag value": drop the value too
            continue
        out.append(arg)
    # --processes 1 explicitly: KUBENAS_TRAINER_PROCESSES, inherited, must not make it a supervisor too.
    out += ["--processes", "1", "--trainer-id", trainer_id, "--metrics-port", str(metrics_port)]
    if threads is not None:
        out += ["--threads", str(threads)]
    return out


def child_metrics_port(base: int, index: int) -> int:
    """-1 stays off and 0 any free port for every child; otherwise child i serves on base + i."""
    return base if base <= 0 else base + index


def child_threads(threads: Optional[int], processes: int, environ: Optional[dict[str, str]] = None) -> int:
    """Torch threads per child, unless given: the pod's OMP_NUM_THREADS (its CPU request, as the user
    set it), else the cores it may run on, divided among the children (K x all would oversubscribe)."""
    if threads is not None:
        return threads
    text = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "")
    if text.isdigit() and int(text) > 0:
        cores = int(text)
    else:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
    return max(1, cores // processes)


class Supervisor:
    def __init__(self, args: argparse.Namespace, argv: list[str]):
        self.args, self.argv = args, argv
        self.base_id = args.trainer_id or socket.gethostname()
        self.threads = child_threads(args.threads, args.processes)
        self.procs: list[Optional[subprocess.Popen]] = [None] * args.processes
        self.restarts = [0] * args.processes
        self.stopping = threading.Event()

    def _start(self, index: int) -> None:
        # A restarted trainer is a new queue consumer: its predecessor's trial is taken over by lease.
        suffix = f"{index}" if self.restarts[index] == 0 else f"{index}.{self.restarts[index]}"
        argv = child_argv(self.argv, f"{self.base_id}-{suffix}",
                          child_metrics_port(self.args.metrics_port, index), self.threads)
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
        # Started from the main thread: the death signal follows the thread that forked the child.
        self.procs[index] = subprocess.Popen([sys.executable, "-m", "kubenas_trainer", *argv], env=env,
                                             stdin=subprocess.DEVNULL, preexec_fn=die_with_parent())
        log.info("started trainer %s-%s (pid %d)", self.base_id, suffix, self.procs[index].pid)

    def stop(self, signum: int, _frame: object = None) -> None:
        log.info("received %s: the trainers hand their trials back", signal.Signals(signum).name)
        act_on_signal(self.stopping.set)

    def _signal_all(self, sig: int) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                try:
                    proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def _stop_all(self) -> int:
        """SIGTERM to every trainer, SIGKILL to any still there after the grace period; their worst status."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        worst = 0
        for index, proc in enumerate(self.procs):
            if proc is None:
                continue
            try:
                code = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("trainer %d did not exit within %.0fs of SIGTERM: killing it", index, STOP_GRACE_SECONDS)
                proc.kill()
                code = proc.wait()
            worst = max(worst, abs(code))
        return worst

    def run(self) -> int:
        for index in range(len(self.procs)):
            self._start(index)
        while not self.stopping.wait(POLL_SECONDS):
            for index, proc in enumerate(self.procs):
                if proc is None or (code := proc.poll()) is None:
                    continue
                self.procs[index] = None
                if code == 0:  # done by its own rule (--exit-when-done, --max-trials)
                    continue
                if code == BAD_FLAG_STATUS or self.restarts[index] >= RESTARTS_PER_PROCESS:
                    log.error("trainer %d exited with status %d%s: stopping the others", index, code,
                              "" if code == BAD_FLAG_STATUS else f" after {self.restarts[index]} restarts")
                    self._stop_all()
                    return BAD_FLAG_STATUS if code == BAD_FLAG_STATUS else 1
                self.restarts[index] += 1
                log.warning("trainer %d exited with status %d: restarting it (%d of %d)", index, code,
                            self.restarts[index], RESTARTS_PER_PROCESS)
                self._start(index)
            if all(proc is None for proc in self.procs):
                return 0  # every trainer done by its own rule (any other exit returned above)
        return self._stop_all()


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Supervise args.processes trainers started with `argv` (the flags already checked)."""
    trainer_id = args.trainer_id or socket.gethostname()
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO), stream=sys.stderr,
                        format=f"%(asctime)s {trainer_id} supervisor %(levelname)s %(message)s")
    supervisor = Supervisor(args, argv)
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    log.info("%d trainer processes sharing this pod's device (%s), %d thread(s) each", args.processes,
             args.device, supervisor.threads)
    return supervisor.run()
