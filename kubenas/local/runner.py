"""`kubenas run`: the same ArchitectureSearch manifest, on one machine.

Starts an embedded redis-server (unless a URL is given), one controller and N
trainer processes, exactly the processes a cluster runs, shows a live
progress bar, and writes a results directory. The controller's checkpoint
lives in OUTPUT/checkpoint, so running the same command again resumes: the
controller re-publishes the trials that were in flight and goes on.

Ctrl-C stops cleanly: trainers hand their trials back (SIGTERM), the
controller finishes its step (everything it acknowledged is checkpointed),
Redis stops last, and the results so far are written. A second Ctrl-C kills.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from kubenas.errors import KubenasError
from kubenas.local.redis_server import RedisServer
from kubenas.queue.keys import SearchKeys
from kubenas.spec import ArchitectureSearch, load_manifest

log = logging.getLogger("kubenas.run")

RESTARTS_PER_TRAINER = 5


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
    fake_work: Optional[float] = None  # tests only
    progress: Optional[bool] = None  # default: when stdout is a terminal
    controller_args: list[str] = field(default_factory=list)
    trainer_args: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    code: int
    finished: bool
    interrupted: bool
    summary: Optional[dict]
    results: Optional[dict]
    seconds: float


class Child:
    def __init__(self, name: str, cmd: list[str], log_path: Path, env: dict[str, str]):
        self.name, self.cmd, self.log_path, self.env = name, cmd, log_path, env
        self.proc: Optional[subprocess.Popen] = None
        self.restarts = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            # A session of its own: the terminal's Ctrl-C reaches only the runner, which stops
            # the children in order (trainers first, Redis last).
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)

    def poll(self) -> Optional[int]:
        return None if self.proc is None else self.proc.poll()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> Optional[int]:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class LocalRunner:
    def __init__(self, options: RunOptions, console: Any = None):
        self.o = options
        self.console = console
        self.interrupts = 0
        self.stop_requested = threading.Event()

    # --- setup --------------------------------------------------------------------------
    def _commands(self, manifest: ArchitectureSearch, url: str, trainers: int, threads: int
                  ) -> tuple[Child, list[Child]]:
        o = self.o
        ns, name = manifest.metadata.namespace, manifest.metadata.name
        logs = o.output / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
                   KUBENAS_REDIS_URL=url)
        env.pop("KUBENAS_NAME", None)
        port = (lambda i: str(o.metrics_port + i)) if o.metrics_port is not None else (lambda i: "-1")
        py = sys.executable
        controller = Child("controller", [
            py, "-m", "kubenas_controller", "--spec", str(o.manifest), "--namespace", ns, "--name", name,
            "--redis-url", url, "--checkpoint-dir", str(o.output / "checkpoint"), "--metrics-port", port(0),
            "--lease-seconds", str(o.lease_seconds), *o.controller_args], logs / "controller.log", env)
        workers = []
        gpus = visible_gpus() if o.device in ("auto", "cuda") and o.fake_work is None else []
        for i in range(trainers):
            cmd = [py, "-m", "kubenas_trainer", "--redis-url", url, "--namespace", ns, "--name", name,
                   "--trainer-id", f"trainer-{i}", "--threads", str(threads), "--device", o.device,
                   "--metrics-port", port(1 + i), "--lease-seconds", str(o.lease_seconds), *o.trainer_args]
            if o.fake_work is not None:
                cmd += ["--fake-work", str(o.fake_work)]
            # One GPU per trainer, round-robin, as a cluster gives each trainer pod its own.
            trainer_env = dict(env, CUDA_VISIBLE_DEVICES=gpus[i % len(gpus)]) if gpus else env
            workers.append(Child(f"trainer-{i}", cmd, logs / f"trainer-{i}.log", trainer_env))
        return controller, workers

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.interrupts += 1
        self.stop_requested.set()

    # --- the run ------------------------------------------------------------------------
    def run(self) -> Outcome:
        o = self.o
        manifest = load_manifest(o.manifest)
        spec = manifest.spec
        keys = SearchKeys(manifest.metadata.namespace, manifest.metadata.name)
        # Fail here, with one readable line, rather than in the controller's log: the strategy and
        # its parameters must build (this imports the strategy, not the network code).
        from kubenas.spaces import build_space
        from kubenas_controller.strategy import build_strategy

        build_strategy(spec, build_space(spec.search_space))
        trainers = o.trainers or spec.budget.parallelism
        if trainers < 1:
            raise KubenasError(f"--trainers: {trainers} is not accepted; at least 1")
        threads = o.threads or max(1, cpu_count() // trainers)
        o.output.mkdir(parents=True, exist_ok=True)
        resumed = (o.output / "checkpoint" / "state.json").exists()

        redis_dir = None
        server = None
        url = o.redis_url
        if url is None:
            redis_dir = tempfile.mkdtemp(prefix="kubenas-redis-")
            server = RedisServer(redis_dir, appendonly=True).start()
            url = server.url
        else:
            self._check_redis(url)

        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, self._on_signal)
        started = time.monotonic()
        controller, workers = self._commands(manifest, url, trainers, threads)
        summary: Optional[dict] = None
        code = 0
        try:
            self._say(f"{'resuming' if resumed else 'starting'} search {keys.search}: {spec.strategy.algorithm} on "
                      f"{spec.search_space.type}, {spec.budget.max_trials} trials, {trainers} trainer"
                      f"{'s' if trainers != 1 else ''} x {threads} thread{'s' if threads != 1 else ''}"
                      f"{', redis ' + ('embedded' if server else 'external')}; results in {o.output}")
            controller.start()
            for w in workers:
                w.start()
            summary = self._watch(keys, url, spec.budget.max_trials, controller, workers)
            rc = controller.poll()
            if rc not in (0, None):
                code = rc
                self._say(f"the controller exited with status {rc}; its last log lines "
                          f"({controller.log_path}):\n{controller.tail()}", error=True)
        finally:
            self._shutdown(controller, workers)
            summary = self._read_summary(url, keys) or summary
            if server is not None:
                server.stop()
            if redis_dir is not None:
                shutil.rmtree(redis_dir, ignore_errors=True)
            for s, handler in previous.items():
                signal.signal(s, handler)
        results = None
        if (o.output / "checkpoint" / "state.json").exists():
            from kubenas.local.results import write_results

            results = write_results(o.output, o.output / "checkpoint", summary)
        finished = bool(summary and summary.get("finished"))
        interrupted = self.stop_requested.is_set() and not finished
        if interrupted:
            code = 130
        elif code == 0 and finished and summary.get("finishReason") == "TooManyFailedTrials":
            code = 1
        elif code == 0 and not finished:
            code = 1
        return Outcome(code, finished, interrupted, summary, results, time.monotonic() - started)

    def _check_redis(self, url: str) -> None:
        import redis

        from kubenas.queue.redis_queue import connect, redact

        try:
            connect(url).ping()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise KubenasError(f"--redis-url {redact(url)}: not reachable ({exc})") from None
        except redis.AuthenticationError as exc:
            raise KubenasError(f"--redis-url {redact(url)}: authentication failed ({exc})") from None

    def _read_summary(self, url: str, keys: SearchKeys) -> Optional[dict]:
        import redis

        try:
            raw = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).get(keys.summary)
            return json.loads(raw) if raw else None
        except (redis.RedisError, ValueError):
            return None

    def _watch(self, keys: SearchKeys, url: str, max_trials: int, controller: Child,
               workers: list[Child]) -> Optional[dict]:
        """Show progress until the controller exits or Ctrl-C; restart trainers that die."""
        from kubenas.local.progress import ProgressView

        view = ProgressView(keys.name, max_trials, self.console, self.o.progress)
        summary = None
        with view:
            while True:
                if self.stop_requested.is_set():
                    self._say("stopping: trainers hand their trials back, the controller checkpoints "
                              "(Ctrl-C again to kill)")
                    break
                if controller.poll() is not None:
                    break
                for w in workers:
                    rc = w.poll()
                    if rc is not None and controller.poll() is None:
                        if w.restarts >= RESTARTS_PER_TRAINER:
                            continue
                        w.restarts += 1
                        self._say(f"{w.name} exited with status {rc}; restarting it ({w.restarts}/"
                                  f"{RESTARTS_PER_TRAINER}); log: {w.log_path}", error=True)
                        w.start()
                summary = self._read_summary(url, keys) or summary
                if summary is not None:
                    view.update(summary)
                self.stop_requested.wait(0.5)
            if summary is not None:
                view.update(summary)
        return summary

    def _shutdown(self, controller: Child, workers: list[Child]) -> None:
        """Trainers first (they hand trials back), then the controller (it checkpoints)."""
        grace = 30.0
        for w in workers:
            w.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for w in workers:
            while w.poll() is None and self.interrupts < 2 and time.monotonic() < deadline:
                w.wait(0.2)
            w.signal(signal.SIGKILL)
            w.wait(5)
        controller.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while controller.poll() is None and self.interrupts < 2 and time.monotonic() < deadline:
            controller.wait(0.2)
        controller.signal(signal.SIGKILL)
        controller.wait(5)

    def _say(self, text: str, error: bool = False) -> None:
        if self.console is not None:
            self.console.print(text, style="red" if error else None, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr if error else sys.stdout, flush=True)
