"""`kubenas run`: the same ArchitectureSearch manifest, on one machine.

Starts an embedded redis-server (unless a URL is given), one controller and N
trainer processes, exactly the processes a cluster runs, shows a live
progress bar, and writes a results directory. The controller's checkpoint
lives in OUTPUT/checkpoint, so running the same command again resumes: the
controller re-publishes the trials that were in flight and goes on.

Before anything starts, everything that can be checked is: the manifest, the
strategy, the dataset (readable, enough images), the device, the output
directory (writable, not held by another run, not another search's). The run
then holds OUTPUT/run.lock (an flock: released by the kernel however the run
ends) and describes itself in OUTPUT/run.json (pid, host, start time, the
Redis URL without its password), which `kubenas scale|suspend|resume OUTPUT`
read to change the running search.

Faults: trainers that exit are restarted (RESTARTS_PER_TRAINER times each); an
embedded redis-server that dies is restarted on its port from its append-only
file (REDIS_RESTARTS times); past either limit, or when the controller dies,
the run stops, says why and how to resume. Every child is started with a
request to die with the runner (kubenas.local.processes), so a SIGKILL of the
runner leaves no orphans.

Ctrl-C stops cleanly: trainers hand their trials back (SIGTERM), the
controller finishes its step (everything it acknowledged is checkpointed),
Redis stops last, and the results so far are written. A second Ctrl-C kills.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

from kubenas.errors import KubenasError
from kubenas.files import write_atomic
from kubenas.local.processes import Child
from kubenas.local.redis_server import RedisServer
from kubenas.local.run_directory import DirectoryInUse, RunDirectory
from kubenas.local.supernet_group import SupernetGroup, derived_is_for, derived_path, oneshot_command_from_environment
from kubenas.manifest import load_manifest
from kubenas.objectives import Objectives
from kubenas.queue.keys import SearchKeys
from kubenas.signals import act_on_signal
from kubenas.spec import ONE_SHOT_ALGORITHMS, ArchitectureSearch

log = logging.getLogger("kubenas.run")

RESTARTS_PER_TRAINER = 5
REDIS_RESTARTS = 3
RESULTS_RETRY_SECONDS = 120.0  # how long an unwritable output directory is waited for at the end
STOP_GRACE_SECONDS = 30.0
DEVICE = re.compile(r"^(auto|cpu|cuda(:[0-9]{1,3})?)$")
# Replaces `python -m kubenas_trainer` (split like a shell would): a profiler wrapper, or the
# project's tests' trainer that follows the protocol without training.
TRAINER_COMMAND_VARIABLE = "KUBENAS_TRAINER_COMMAND"


def trainer_command_from_environment() -> list[str]:
    text = os.environ.get(TRAINER_COMMAND_VARIABLE, "").strip()
    return shlex.split(text) if text else [sys.executable, "-m", "kubenas_trainer"]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """GPU ids the trainers may share out: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


def without_password(url: str) -> str:
    """The URL with any user and password left out (run.json is readable by anyone who can read OUTPUT)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"status {code}"


@dataclass
class RunOptions:
    manifest: Path
    output: Path
    trainers: Optional[int] = None  # default: the manifest's parallelism
    redis_url: Optional[str] = None  # default: an embedded redis-server
    threads: Optional[int] = None  # torch threads per trainer; default: cores // trainers
    device: str = "auto"
    lease_seconds: float = 30.0
    metrics_port: Optional[int] = None  # controller on it, trainer i on it + 1 + i; default: off
    trainer_command: list[str] = field(default_factory=lambda: trainer_command_from_environment())
    oneshot_command: list[str] = field(default_factory=lambda: oneshot_command_from_environment())
    progress: Optional[bool] = None  # default: when stdout is a terminal
    controller_args: list[str] = field(default_factory=list)
    trainer_args: list[str] = field(default_factory=list)


@dataclass
class RunOutcome:
    code: int
    finished: bool
    interrupted: bool
    summary: Optional[dict]
    results: Optional[dict]
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)  # from the checkpoint's log: never stale
    problems: list[str] = field(default_factory=list)  # why it stopped or failed, for the console
    resume_hint: bool = False  # "run the same command again to resume"


# --- the runner -------------------------------------------------------------------------

class LocalRunner:
    def __init__(self, options: RunOptions, console: Any = None, error_console: Any = None):
        self.o = options
        self.console = console
        self.error_console = error_console or console
        self.interrupts = 0
        self.stop_requested = threading.Event()
        self.problems: list[str] = []
        self.trainers: list[Child] = []  # the ones meant to run
        self.retiring: list[Child] = []  # asked to stop (scale down, suspend), not yet gone
        self.next_trainer = 0
        self.redis_restarts = 0
        self.applied_revision = 0
        self.suspended = False
        self.draining_since: Optional[float] = None  # suspended, trainers kept until nothing runs
        self.idle_reads = 0
        self.saw_summary = False
        self.group: Optional[SupernetGroup] = None  # one-shot: the supernet's worker group
        self.wanted_trainers = 0

    # --- checks before anything starts ----------------------------------------------------
    def preflight(self, manifest: ArchitectureSearch) -> None:
        """Everything that can be refused before a process starts or a file is written."""
        o, spec = self.o, manifest.spec
        # The strategy and its parameters must build (this imports the strategy, not the network code).
        from kubenas.spaces import build_space
        from kubenas_controller.strategy import build_strategy

        build_strategy(spec, build_space(spec.search_space))
        trainers = o.trainers if o.trainers is not None else spec.budget.parallelism
        if trainers < 1 or trainers > 1024:
            raise KubenasError(f"--trainers: {trainers} is not accepted; use 1 to 1024")
        if o.threads is not None and not 1 <= o.threads <= 1024:
            raise KubenasError(f"--threads: {o.threads} is not accepted; use 1 to 1024 (torch threads per trainer)")
        if not (math.isfinite(o.lease_seconds) and 0 < o.lease_seconds <= 86400):
            raise KubenasError(f"--lease-seconds: {o.lease_seconds:g} is not accepted; use a number of seconds "
                               "above 0, at most 86400")
        processes = trainers * spec.trainer.trials_per_gpu
        if o.metrics_port is not None and not (0 <= o.metrics_port and o.metrics_port + processes <= 65535):
            raise KubenasError(f"--metrics-port: {o.metrics_port} is not accepted; the controller uses it and "
                               f"trainer process i PORT+1+i, so use 0 to {65535 - processes}")
        if not DEVICE.match(o.device):
            raise KubenasError(f"--device: {o.device!r} is not accepted; use auto, cpu, cuda or cuda:N")
        if o.device.startswith("cuda"):
            self._check_cuda(o.device)
        from kubenas.training.datasets import preflight_dataset

        preflight_dataset(spec.training.dataset, spec.training.skeleton)
        if spec.objective.latency is not None:
            # The controller's own check of the table (it imports torch, so only when there is one).
            from kubenas_controller.controller import load_latency_table

            load_latency_table(spec, build_space(spec.search_space))
        if o.redis_url is not None:
            self._check_redis(o.redis_url)
        self._check_output(manifest)

    @staticmethod
    def _check_cuda(device: str) -> None:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if count == 0:
            raise KubenasError(f"--device: {device!r} is not accepted: no CUDA GPU is visible on this machine; "
                               "use --device cpu (or auto)")
        if index >= count:
            raise KubenasError(f"--device: {device!r} is not accepted: this machine has {count} CUDA GPU(s), "
                               f"cuda:0 to cuda:{count - 1}")

    def _check_output(self, manifest: ArchitectureSearch) -> None:
        out = self.o.output
        if out.exists() and not out.is_dir():
            raise KubenasError(f"--output: {out} exists and is not a directory")
        existing = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
        if not os.access(existing, os.W_OK | os.X_OK):
            raise KubenasError(f"--output: {existing} is not writable; choose a directory you can write")
        state = out / "checkpoint" / "state.json"
        if state.exists():
            try:
                search = json.loads(state.read_bytes()).get("search")
            except (OSError, ValueError, AttributeError):
                search = None  # the controller says what is wrong with it
            ours = SearchKeys(manifest.metadata.namespace, manifest.metadata.name).search
            if search is not None and search != ours:
                raise KubenasError(f"--output: {out} holds the results of search {search}, not {ours}; "
                                   "choose another --output (nothing was changed)")
        # A finished supernet is not trained again (_start_supernet): its genotypes must be this spec's.
        artifacts = out / "artifacts"
        if (manifest.spec.strategy.algorithm in ONE_SHOT_ALGORITHMS and derived_path(artifacts).exists()
                and not derived_is_for(artifacts, manifest.spec)):
            raise KubenasError(f"--output: {out} holds a supernet made for another spec ({derived_path(artifacts)}: "
                               "strategy, searchSpace or training differ); choose another --output, or put the "
                               "spec back (nothing was changed)")

    # --- the run ----------------------------------------------------------------------------
    def run(self) -> RunOutcome:
        manifest = load_manifest(self.o.manifest)
        directory = RunDirectory(self.o.output)
        if directory.held_by_someone():  # first, and cheaply: the checks below take seconds
            raise DirectoryInUse(directory.describe_holder())
        self.preflight(manifest)
        directory.acquire()  # refuses, naming the holder, before anything is started or written
        try:
            return self._run(manifest, directory)
        finally:
            directory.release()

    def _run(self, manifest: ArchitectureSearch, directory: RunDirectory) -> RunOutcome:
        o, spec = self.o, manifest.spec
        keys = SearchKeys(manifest.metadata.namespace, manifest.metadata.name)
        trainers = o.trainers or spec.budget.parallelism
        # trainer.trialsPerGPU: each trainer is a supervisor of that many trainer processes (as in a pod).
        self._processes = spec.trainer.trials_per_gpu
        threads = o.threads or max(1, cpu_count() // (trainers * self._processes))
        resumed = (o.output / "checkpoint" / "state.json").exists()
        (o.output / "logs").mkdir(parents=True, exist_ok=True)

        server: Optional[RedisServer] = None
        redis_dir = o.output / "redis"
        url = o.redis_url
        if url is None:
            # In OUTPUT, not /tmp: nothing is left elsewhere if the run is killed, and a restarted
            # redis-server finds its append-only file. What a killed run left here is stale.
            shutil.rmtree(redis_dir, ignore_errors=True)
            server = RedisServer(redis_dir, appendonly=True, die_with_parent=True).start()
            url = server.url
        directory.write(pid=os.getpid(), host=socket.gethostname(),
                        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        search=keys.search, namespace=keys.namespace, name=keys.name,
                        redisUrl=without_password(url), manifest=str(o.manifest.resolve()),
                        budget=spec.budget.model_dump(mode="json", by_alias=True), suspend=spec.suspend,
                        trainers=trainers, appliedRevision=0)

        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, self._on_signal)
        started = time.monotonic()
        self._env = dict(os.environ, PYTHONUNBUFFERED="1", KUBENAS_REDIS_URL=url)
        self._env.pop("KUBENAS_NAME", None)
        self._url, self._keys, self._threads = url, keys, threads
        self._gpus = visible_gpus() if o.device in ("auto", "cuda") else []
        controller = self._controller_child(keys, url)
        summary: Optional[dict] = None
        stopped_by: Optional[str] = None
        try:
            self._say(f"{'resuming' if resumed else 'starting'} search {keys.search}: {spec.strategy.algorithm} on "
                      f"{spec.search_space.type}, {spec.budget.max_trials} trials, {trainers} trainer"
                      f"{'s' if trainers != 1 else ''}"
                      f"{f' x {self._processes} processes' if self._processes > 1 else ''}"
                      f" x {threads} thread{'s' if threads != 1 else ''}"
                      f"{', redis ' + ('embedded' if server else 'external')}; results in {o.output}")
            controller.start()
            self._start_supernet(manifest, directory)
            # One-shot: the supernet's workers have the trainers' place (cores, GPUs) until they are done.
            self.wanted_trainers = trainers
            self._scale_to(0 if spec.suspend or self.group is not None else trainers)
            self.suspended = spec.suspend
            summary, stopped_by = self._watch(keys, url, spec.budget.max_trials, controller, server, directory)
        finally:
            self._shutdown(controller)
            fresh = self._read_summary(url, keys)
            if fresh is not None:
                self.saw_summary = True
                summary = fresh
            if server is not None:
                server.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self._outcome(controller, summary, stopped_by, started, redis_dir if server else None,
                             Objectives.from_spec(spec.objective))

    def _outcome(self, controller: Child, summary: Optional[dict], stopped_by: Optional[str], started: float,
                 redis_dir: Optional[Path], objectives: Objectives) -> RunOutcome:
        o = self.o
        from kubenas.local.results import count_trials, read_trials

        checkpoint = o.output / "checkpoint"
        rc = controller.poll()
        # Exit status 2 before any summary: the controller refused to start (a checkpoint of another
        # search or spec, say). What OUTPUT holds is not this run's: write and show nothing of it.
        refused = rc == 2 and not self.saw_summary
        if refused:
            self.problems.append(f"the controller refused to start: {controller.last_error() or controller.tail(5)} "
                                 f"(log: {controller.log_path})")
        elif stopped_by is None and rc not in (0, None):
            self.problems.append(f"the controller exited ({describe_exit(rc)}); its last log lines "
                                 f"({controller.log_path}):\n{controller.tail()}")
        results = None
        counts: dict[str, int] = {}
        trials: list[dict] = []
        if not refused and (checkpoint / "state.json").exists():
            results = self._write_results(checkpoint, summary, objectives)
            try:
                trials = read_trials(checkpoint)
            except OSError:
                trials = []
            counts = count_trials(trials)
        # A diverged trial "succeeds" with reward 0 (a signal for the strategy), but teaches nothing.
        learned = [t for t in trials if t.get("status") == "succeeded" and t.get("outcome") != "diverged"]
        if redis_dir is not None:
            shutil.rmtree(redis_dir, ignore_errors=True)

        finished = bool(summary and summary.get("finished")) and not refused
        interrupted = stopped_by == "interrupt" and not finished
        resume_hint = False
        if refused:
            code = 2
        elif interrupted:
            code, resume_hint = 130, True
        elif not finished:
            code, resume_hint = 1, True
            if not self.problems:
                self.problems.append("the search stopped before it finished")
        else:
            code = 0
            reason = summary.get("finishReason")
            if not learned:
                code = 1
                self.problems.append(self._why_nothing_succeeded(trials, reason))
            elif reason == "TooManyFailedTrials":
                code = 1
                self.problems.append(f"too many trials failed ({counts.get('failed', 0)}); "
                                     f"{self._common_error(trials)}")
            elif summary.get("finalError") and not summary.get("finalModel"):
                code = 1
                self.problems.append(f"the final stage produced no model: {summary['finalError']} (logs: "
                                     f"{self.o.output / 'logs'})")
            if results is None and code == 0:
                code = 1  # finished, but the results could not be written (said in problems)
        return RunOutcome(code, finished, interrupted, None if refused else summary, results,
                          time.monotonic() - started, counts, self.problems, resume_hint)

    def _why_nothing_succeeded(self, trials: list[dict], reason: Optional[str]) -> str:
        broken = [t for t in trials if t.get("status") == "failed" or t.get("outcome") == "diverged"]
        if not broken:
            from kubenas.local.results import count_trials

            counts = count_trials(trials)
            left = ", ".join(f"{counts[k]} {k}" for k in ("stopped", "cancelled", "unfinished") if counts[k])
            return (f"the search produced no result: no trial finished training before it ended ({reason}"
                    f"{'; ' + left if left else ''}); raise budget.maxDuration or budget.maxTrials")
        done = [t for t in trials if t.get("status") in ("succeeded", "failed", "stopped")]
        return f"no trial produced a usable result (of {len(done)} finished); {self._common_error(trials)}"

    def _common_error(self, trials: list[dict]) -> str:
        """The most common first line of the failed and diverged trials' errors."""
        errors = [str(t.get("error") or "").strip().splitlines() for t in trials
                  if t.get("status") == "failed" or t.get("outcome") == "diverged"]
        first = [e[0][:300] for e in errors if e]
        if not first:
            return f"see {self.o.output / 'trials.jsonl'} and {self.o.output / 'logs'}"
        # Numbers differ from trial to trial ("in epoch 1, step 3"): count the messages without them.
        shapes = collections.Counter(re.sub(r"[0-9]+", "N", e) for e in first)
        shape, n = shapes.most_common(1)[0]
        example = next(e for e in first if re.sub(r"[0-9]+", "N", e) == shape)
        return (f"{'every one' if n == len(errors) else f'{n} of {len(errors)}'} failed or diverged, e.g.: {example} "
                f"(details: {self.o.output / 'trials.jsonl'}, {self.o.output / 'logs'})")

    def _write_results(self, checkpoint: Path, summary: Optional[dict], objectives: Objectives) -> Optional[dict]:
        """Write the results directory; an unwritable output is retried for a while, never lost."""
        from kubenas.local.results import write_results

        o = self.o
        deadline = time.monotonic() + RESULTS_RETRY_SECONDS
        delay, warned = 1.0, False
        interrupts = self.interrupts
        while True:
            try:
                return write_results(o.output, checkpoint, summary, objectives)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                if time.monotonic() >= deadline or self.interrupts > interrupts:
                    self.problems.append(
                        f"the results could not be written to {o.output} ({reason}); every trial is safe in "
                        f"{checkpoint}: make {o.output} writable and run the same command again, which writes "
                        "them without training anything again")
                    return None
                if not warned:
                    warned = True
                    self._say(f"cannot write the results to {o.output} ({reason}); retrying for up to "
                              f"{RESULTS_RETRY_SECONDS:g}s (every trial is safe in {checkpoint}; Ctrl-C gives up)",
                              error=True)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _check_redis(self, url: str) -> None:
        from kubenas.queue.connection import check, connect, redact

        if not check(connect(url, socket_timeout=3.0), url):
            raise KubenasError(f"--redis-url {redact(url)}: not reachable")

    def _read_summary(self, url: str, keys: SearchKeys) -> Optional[dict]:
        import redis

        try:
            raw = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).get(keys.summary)
            return json.loads(raw) if raw else None
        except (redis.RedisError, ValueError):
            return None

    # --- processes --------------------------------------------------------------------------
    def _controller_child(self, keys: SearchKeys, url: str) -> Child:
        o = self.o
        env = dict(self._env, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        return Child("controller", [
            sys.executable, "-m", "kubenas_controller", "--spec", str(o.manifest), "--namespace", keys.namespace,
            "--name", keys.name, "--redis-url", url, "--checkpoint-dir", str(o.output / "checkpoint"),
            "--metrics-port", self._port(0), "--lease-seconds", str(o.lease_seconds),
            "--artifacts", str(o.output / "artifacts"), "--final-dir", str(o.output / "final"), *o.controller_args],
            o.output / "logs" / "controller.log", env)

    def _port(self, offset: int) -> str:
        port = self.o.metrics_port
        return "-1" if port is None or port + offset > 65535 else str(port + offset)

    def _trainer_child(self) -> Child:
        o, i = self.o, self.next_trainer
        self.next_trainer += 1  # never reused: a trainer id is its queue consumer name
        threads = self._threads
        cmd = [*o.trainer_command, "--redis-url", self._url, "--namespace", self._keys.namespace,
               "--name", self._keys.name, "--trainer-id", f"trainer-{i}", "--threads", str(threads),
               "--device", o.device, "--metrics-port", self._port(1 + i * self._processes),
               "--lease-seconds", str(o.lease_seconds),
               # trial checkpoints: a trial handed back or re-delivered resumes on any trainer
               "--artifacts", str(o.output / "artifacts"), *o.trainer_args]
        if self._processes > 1:  # its processes serve metrics on PORT+1+i*K ... (one block per trainer)
            cmd += ["--processes", str(self._processes)]
        env = dict(self._env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        if self._gpus:  # one GPU per trainer, round-robin, as a cluster gives each trainer pod its own
            env["CUDA_VISIBLE_DEVICES"] = self._gpus[i % len(self._gpus)]
        return Child(f"trainer-{i}", cmd, o.output / "logs" / f"trainer-{i}.log", env)

    def _start_supernet(self, manifest: ArchitectureSearch, directory: RunDirectory) -> None:
        """One-shot: start the supernet's worker group, unless it already derived its genotypes."""
        o, spec = self.o, manifest.spec
        if spec.strategy.algorithm not in ONE_SHOT_ALGORITHMS:
            return
        artifacts = o.output / "artifacts"
        if derived_path(artifacts).exists():
            # Resumed after the supernet finished (of this spec: _check_output): the controller has
            # (or reads) its genotypes.
            return
        spec_path = o.output / "supernet-spec.json"  # the workers' input: the spec as JSON
        write_atomic(spec_path, spec.model_dump_json(by_alias=True).encode())
        workers = spec.one_shot.workers
        self.group = SupernetGroup(o.oneshot_command, spec_path, artifacts, workers, spec.one_shot.max_restarts,
                                   o.output / "logs", self._env, max(1, cpu_count() // workers), o.device,
                                   self._gpus, lambda text, error: self._say(text, error=error))
        if spec.suspend:  # started by `kubenas resume`
            self.group.paused = True
            return
        self._say(f"supernet: {workers} data-parallel worker{'s' if workers != 1 else ''} "
                  f"({spec.strategy.algorithm}); checkpoints in {artifacts / 'supernet'}")
        self.group.start()
        directory.write(supernetWorkers=self.group.pids)

    def _keep_supernet(self, directory: RunDirectory) -> bool:
        """Watch the worker group (it restarts itself on the loss of a worker); False once it failed for good."""
        group = self.group
        if group is None:
            return True
        before = group.pids
        if not group.check():
            self.problems.append(group.problem or "the supernet's worker group failed")
            return False
        if group.done:
            self.group = None
            directory.write(supernetWorkers=[])
            if not self.suspended:
                self._scale_to(self.wanted_trainers)
        elif group.pids != before:
            directory.write(supernetWorkers=group.pids)
        return True

    def _scale_to(self, wanted: int) -> None:
        """Start or stop trainer processes until `wanted` run; stopped ones hand their trials back."""
        while len(self.trainers) > wanted:
            child = self.trainers.pop()
            child.signal(signal.SIGTERM)
            child.retired_at = time.monotonic()
            self.retiring.append(child)
        while len(self.trainers) < wanted:
            child = self._trainer_child()
            child.start()
            self.trainers.append(child)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.interrupts += 1
        act_on_signal(self.stop_requested.set)

    def _watch(self, keys: SearchKeys, url: str, max_trials: int, controller: Child,
               server: Optional[RedisServer], directory: RunDirectory) -> tuple[Optional[dict], Optional[str]]:
        """Show progress until the controller exits, Ctrl-C, or a fault it cannot outlive.
        Returns the last summary and what stopped the run early (None: the controller exited)."""
        from kubenas.local.progress import ProgressView
        from kubenas.queue.connection import connect

        view = ProgressView(keys.name, max_trials, self.console, self.o.progress)
        client = connect(url, client_name=f"kubenas-run:{keys.search}", socket_timeout=2.0)
        summary = None
        stopped_by: Optional[str] = None
        with view:
            while True:
                if self.stop_requested.is_set():
                    self._say("stopping: trainers hand their trials back, the controller checkpoints "
                              "(Ctrl-C again to kill)")
                    stopped_by = "interrupt"
                    break
                if controller.poll() is not None:
                    break
                if server is not None and server.proc is not None and server.proc.poll() is not None:
                    if not self._restart_redis(server):
                        stopped_by = "redis"
                        break
                self._apply_live_spec(client, keys, view, directory)
                if not self._keep_trainers(controller):
                    stopped_by = "trainers"
                    break
                if not self._keep_supernet(directory):
                    stopped_by = "supernet"
                    break
                fresh = self._read_summary(url, keys)
                if fresh is not None:
                    summary, self.saw_summary = fresh, True
                    view.update(summary)
                self._stop_trainers_once_drained(fresh)
                self.stop_requested.wait(0.5)
            if summary is not None:
                view.update(summary)
        return summary, stopped_by

    def _restart_redis(self, server: RedisServer) -> bool:
        status = describe_exit(server.proc.returncode if server.proc else None)
        if self.redis_restarts >= REDIS_RESTARTS:
            self.problems.append(f"redis-server exited ({status}) {self.redis_restarts + 1} times; stopped the "
                                 f"search (its log: {server.dir / 'redis.log'})")
            return False
        self.redis_restarts += 1
        self._say(f"redis-server exited ({status}); restarting it on port {server.port} from its append-only file "
                  f"({self.redis_restarts}/{REDIS_RESTARTS})", error=True)
        try:
            server.start()
        except KubenasError as exc:
            self.problems.append(f"redis-server exited ({status}) and could not be restarted: {exc}")
            return False
        return True

    def _apply_live_spec(self, client: Any, keys: SearchKeys, view: Any, directory: RunDirectory) -> None:
        """`kubenas scale|suspend|resume`: start or stop trainers to match the live spec's parallelism."""
        import redis

        from kubenas.queue.live_spec import read_live_spec

        try:
            live = read_live_spec(client, keys)
        except redis.RedisError:
            return
        if live is None or live.revision <= self.applied_revision:
            return
        self.applied_revision = live.revision
        wanted = live.budget.parallelism
        if live.suspend and not self.suspended:
            # The controller hands out nothing more and lets the running trials finish: the
            # trainers stop once nothing runs (_stop_trainers_once_drained), so nothing is redone.
            self._say(f"suspended (revision {live.revision}): the running trials finish, then the trainers stop; "
                      f"`kubenas resume {self.o.output}` continues")
            self.draining_since, self.idle_reads = time.monotonic(), 0
        elif not live.suspend and self.suspended:
            self._say(f"resumed (revision {live.revision}): {wanted} trainer{'s' if wanted != 1 else ''}")
            self.draining_since = None
        elif wanted != len(self.trainers) and not live.suspend:
            self._say(f"scaled to {wanted} trainer{'s' if wanted != 1 else ''} (revision {live.revision})")
        self.suspended = live.suspend
        view.set_total(live.budget.max_trials)
        self.wanted_trainers = wanted
        if self.group is not None:  # the supernet's workers have the trainers' place for now
            if live.suspend:
                self.group.pause()
            else:
                self.group.resume()
            directory.write(supernetWorkers=self.group.pids if not self.group.paused else [])
        if not live.suspend and self.group is None:
            self._scale_to(wanted)
        elif self.draining_since is not None and wanted < len(self.trainers):
            self._scale_to(wanted)  # scaled down while draining
        directory.write(trainers=0 if live.suspend else wanted, suspend=live.suspend, appliedRevision=live.revision,
                        budget=live.budget.model_dump(mode="json", by_alias=True))

    def _stop_trainers_once_drained(self, summary: Optional[dict]) -> None:
        """Suspended: stop the trainers once the controller's summary shows nothing running
        twice in a row, a second after the suspension (an older summary may still say 0)."""
        if self.draining_since is None or summary is None:
            return
        running = summary.get("trials", {}).get("running", 0)
        self.idle_reads = self.idle_reads + 1 if running == 0 else 0
        if self.idle_reads >= 2 and time.monotonic() - self.draining_since > 1.0:
            self.draining_since = None
            self._scale_to(0)
            self._say("suspended: nothing runs; the trainers have stopped")

    def _keep_trainers(self, controller: Child) -> bool:
        """Restart trainers that exited; False once every trainer is past its restart limit."""
        now = time.monotonic()
        for child in list(self.retiring):
            if child.poll() is not None:
                self.retiring.remove(child)
            elif now - (child.retired_at or now) > STOP_GRACE_SECONDS:
                child.signal(signal.SIGKILL)
        if controller.poll() is not None:
            return True
        for child in self.trainers:
            rc = child.poll()
            if rc is None or child.gave_up:
                continue
            if child.restarts >= RESTARTS_PER_TRAINER:
                child.gave_up = True
                self._say(f"{child.name} exited ({describe_exit(rc)}) after {RESTARTS_PER_TRAINER} restarts; not "
                          f"restarting it again; log: {child.log_path}", error=True)
                continue
            child.restarts += 1
            self._say(f"{child.name} exited ({describe_exit(rc)}); restarting it ({child.restarts}/"
                      f"{RESTARTS_PER_TRAINER}); log: {child.log_path}", error=True)
            child.start()
        if self.trainers and all(c.gave_up for c in self.trainers):
            last = self.trainers[0]
            error = last.last_error()
            self.problems.append(
                f"every trainer exited more than {RESTARTS_PER_TRAINER} times, so no trial can run; "
                + (f"the last error of {last.name}: {error}" if error else
                   f"the last lines of {last.log_path}:\n{last.tail(8)}"))
            return False
        return True

    def _shutdown(self, controller: Child) -> None:
        """Supernet workers and trainers first (they hand trials back), then the controller (it checkpoints)."""
        if self.group is not None:
            self.group.stop()
        everyone = self.trainers + self.retiring
        for w in everyone:
            w.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for w in everyone:
            while w.poll() is None and self.interrupts < 2 and time.monotonic() < deadline:
                w.wait(0.2)
            w.signal(signal.SIGKILL)
            w.wait(5)
        controller.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while controller.poll() is None and self.interrupts < 2 and time.monotonic() < deadline:
            controller.wait(0.2)
        controller.signal(signal.SIGKILL)
        controller.wait(5)

    def _say(self, text: str, error: bool = False) -> None:
        console = self.error_console if error else self.console
        if console is not None:
            console.print(text, style="red" if error else None, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr if error else sys.stdout, flush=True)
