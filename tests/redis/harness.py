"""Helpers for the Redis tests: specs, the controller and trainers in threads or
as real processes, and readers of what they leave behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional

import redis
import yaml

from kubenas.queue.keys import SearchKeys
from kubenas.spec import ArchitectureSearchSpec
from tests.support import fake_trainer


def spec_dict(max_trials: int = 10, parallelism: int = 2, epochs: int = 2, algorithm: str = "random",
              parameters: Optional[dict] = None, space: str = "nasbench201", early_stopping: Optional[dict] = None,
              max_failed: int = 10, target: Optional[float] = None, max_duration: Optional[str] = None,
              training: Optional[dict] = None) -> dict:
    spec: dict[str, Any] = {
        "searchSpace": {"type": space},
        "strategy": {"algorithm": algorithm, "parameters": parameters or {}},
        "budget": {"maxTrials": max_trials, "parallelism": parallelism, "maxFailedTrials": max_failed},
        "training": {"epochs": epochs, **(training or {})},
    }
    if early_stopping:
        spec["training"]["earlyStopping"] = early_stopping
    if target is not None:
        spec["objective"] = {"target": target}
    if max_duration:
        spec["budget"]["maxDuration"] = max_duration
    return spec


def make_spec(**kwargs: Any) -> ArchitectureSearchSpec:
    return ArchitectureSearchSpec.model_validate(spec_dict(**kwargs))


def write_manifest(path: Path, keys: SearchKeys, **kwargs: Any) -> Path:
    manifest = {"apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch",
                "metadata": {"name": keys.name, "namespace": keys.namespace}, "spec": spec_dict(**kwargs)}
    path.write_text(yaml.safe_dump(manifest))
    return path


def read_summary(url: str, keys: SearchKeys) -> Optional[dict]:
    try:
        raw = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2).get(keys.summary)
    except redis.RedisError:
        return None
    return json.loads(raw) if raw else None


def done(summary: Optional[dict]) -> int:
    if not summary:
        return 0
    t = summary["trials"]
    return t["succeeded"] + t["failed"] + t["stopped"]


def events(checkpoint_dir: Path) -> list[dict]:
    path = Path(checkpoint_dir) / "trials.jsonl"
    if not path.exists():
        return []
    limit = json.loads((Path(checkpoint_dir) / "state.json").read_bytes())["log_bytes"]
    return [json.loads(line) for line in path.read_bytes()[:limit].splitlines() if line.strip()]


def by_kind(evs: list[dict], kind: str) -> list[dict]:
    return [e for e in evs if e["e"] == kind]


# --- in-process: the controller and trainers as threads --------------------------------------

class InProcess:
    """A controller and trainers in threads of this process (fast: no interpreter start-ups)."""

    def __init__(self, url: str, keys: SearchKeys, spec: ArchitectureSearchSpec, checkpoint_dir: Path,
                 trainers: int = 2, fake_work: float = 0.0, lease: float = 2.0, fail: tuple[str, ...] = (),
                 trainer_options: Optional[dict] = None, controller_options: Optional[dict] = None):
        from kubenas.queue.connection import connect
        from kubenas_controller.controller import Controller, ControllerOptions
        from kubenas_trainer.trainer import TrainerOptions
        from tests.support.fake_trainer import FakeTrainer

        self.url, self.keys = url, keys
        self.errors: list[BaseException] = []
        copts = dict(lease_seconds=lease, block_ms=50, finish_grace=10.0, fsync=False, reconcile_seconds=1.0)
        copts.update(controller_options or {})
        self.controller = Controller(spec, keys, connect(url), str(checkpoint_dir), ControllerOptions(**copts))
        self.trainers = []
        for i in range(trainers):
            topts = dict(lease_seconds=lease, block_ms=100)
            topts.update(trainer_options or {})
            topts["consumer"] = f"trainer-{i}"
            self.trainers.append(FakeTrainer(connect(url), keys, TrainerOptions(**topts), fake_work, fail))
        self.threads: list[threading.Thread] = []
        self.controller_rc: Optional[int] = None

    def _guard(self, fn: Callable[[], Any], store: bool = False) -> Callable[[], None]:
        def run() -> None:
            try:
                rc = fn()
                if store:
                    self.controller_rc = rc
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(exc)
        return run

    def start(self, controller: bool = True) -> "InProcess":
        if controller:
            self.threads.append(threading.Thread(target=self._guard(self.controller.run, True), daemon=True))
        for t in self.trainers:
            self.threads.append(threading.Thread(target=self._guard(t.run), daemon=True))
        for thread in self.threads:
            thread.start()
        return self

    def wait(self, timeout: float = 60.0) -> dict:
        controller_thread = self.threads[0]
        controller_thread.join(timeout)
        assert not controller_thread.is_alive(), f"the search did not finish within {timeout}s"
        self.stop()
        assert not self.errors, f"a thread crashed: {self.errors!r}"
        return read_summary(self.url, self.keys)

    def stop(self) -> None:
        self.controller.stopping.set()
        for t in self.trainers:
            t.terminate()
        for thread in self.threads:
            thread.join(10)


# --- real processes ------------------------------------------------------------------------

PY = sys.executable


def spawn(cmd: list[str], log_path: Path, env: Optional[dict] = None) -> subprocess.Popen:
    out = open(log_path, "ab")
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})), start_new_session=True)
    finally:
        out.close()


def controller_cmd(manifest: Path, url: str, checkpoint_dir: Path, *extra: str) -> list[str]:
    return [PY, "-m", "kubenas_controller", "--spec", str(manifest), "--redis-url", url,
            "--checkpoint-dir", str(checkpoint_dir), "--metrics-port", "-1", "--no-fsync", *extra]


def trainer_cmd(url: str, keys: SearchKeys, trainer_id: str, fake_work: float, lease: float, *extra: str) -> list[str]:
    """A zero-work trainer process (tests/support/fake_trainer.py): the real trainer's protocol."""
    return [*fake_trainer.command(PY), "--redis-url", url, "--namespace", keys.namespace, "--name", keys.name,
            "--trainer-id", trainer_id, "--fake-work", str(fake_work), "--lease-seconds", str(lease),
            "--metrics-port", "-1", *extra]


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGCONT)
                p.terminate()
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def log_lines(path: Path, needle: str) -> list[str]:
    try:
        return [line for line in path.read_text(errors="replace").splitlines() if needle in line]
    except OSError:
        return []
