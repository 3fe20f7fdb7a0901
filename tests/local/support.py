"""Helpers for the `kubenas run` tests: tiny real searches on digits, the CLI in a
subprocess with its output collected as it comes, and the processes it started."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

from kubenas.local.processes import die_with_parent
from tests.support import fake_trainer
from tests.support.waiting import wait_for

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on the PATH: these tests need a real one (apt-get install redis-server)")


def tiny_spec(max_trials: int = 6, parallelism: int = 2, **overrides: Any) -> dict:
    """A real search that trains for real, as cheaply as possible: NAS-Bench-201 cells with
    N=1, F=4, one epoch on 200 digits images (a few seconds per trial on one core)."""
    spec: dict[str, Any] = {
        "searchSpace": {"type": "nasbench201"},
        "strategy": {"algorithm": "random"},
        "budget": {"maxTrials": max_trials, "parallelism": parallelism},
        "training": {"dataset": {"name": "digits", "trainSubset": 200}, "epochs": 1, "channels": 4,
                     "cellsPerStage": 1, "batchSize": 32},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec


def write_manifest(path: Path, name: str, spec: dict) -> Path:
    path.write_text(yaml.safe_dump({"apiVersion": "kubenas.io/v1alpha1", "kind": "ArchitectureSearch",
                                    "metadata": {"name": name}, "spec": spec}))
    return path


def _preexec(drop_dac: bool):
    die = die_with_parent()

    def preexec() -> None:
        if die is not None:
            die()
        if drop_dac and os.geteuid() == 0:  # root writes anywhere; without these it obeys permissions
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
                if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                    os._exit(97)

    return preexec


class Cli:
    """`python -m kubenas.cli ARGS` in a subprocess; stdout and stderr collected by threads."""

    def __init__(self, *args: str, drop_dac: bool = False, cwd: Optional[Path] = None,
                 fake_work: Optional[float] = None):
        """fake_work: seconds per epoch of trainers that follow the protocol without training."""
        env = dict(os.environ, COLUMNS="200", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        if fake_work is not None:
            env.update(fake_trainer.run_environment(fake_work))
        self.proc = subprocess.Popen([sys.executable, "-m", "kubenas.cli", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                                     preexec_fn=_preexec(drop_dac))
        self.pid = self.proc.pid
        self._out: list[str] = []
        self._err: list[str] = []
        self._threads = [threading.Thread(target=self._pump, args=(s, b), daemon=True)
                         for s, b in ((self.proc.stdout, self._out), (self.proc.stderr, self._err))]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    @property
    def text(self) -> str:
        return self.stdout + self.stderr

    def wait_for_text(self, text: str, timeout: float) -> None:
        wait_for(f"{text!r} on the console", lambda: text in self.text or self.proc.poll() is not None, timeout)
        assert text in self.text, f"exited ({self.proc.returncode}) without saying {text!r}:\n{self.text}"

    def finish(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"did not finish within {timeout}s:\n{self.text}") from None
        for t in self._threads:
            t.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def run_cli(*args: str, timeout: float = 120, drop_dac: bool = False) -> tuple[int, str, str]:
    cli = Cli(*args, drop_dac=drop_dac)
    code = cli.finish(timeout)
    return code, cli.stdout, cli.stderr


# --- processes ----------------------------------------------------------------------------

def _processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, command line) of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry)] = (int(fields[1]), fields[0], cmdline)
    return table


def descendants(pid: int) -> dict[int, str]:
    """Living descendants of pid: pid -> command line."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for child, (parent, state, _) in table.items():
        if state != "Z":
            children.setdefault(parent, []).append(child)
    found, stack = {}, [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found[child] = table[child][2]
            stack.append(child)
    return found


def alive(pid: int) -> bool:
    info = _processes().get(pid)
    return info is not None and info[1] != "Z"


def trainer_pids(runner_pid: int) -> list[int]:
    return sorted(p for p, cmd in descendants(runner_pid).items() if "--trainer-id" in cmd)


def pids_of(runner_pid: int, needle: str) -> list[int]:
    return sorted(p for p, cmd in descendants(runner_pid).items() if needle in cmd)


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --- what a run leaves -----------------------------------------------------------------------

def checkpoint_events(out: Path) -> list[dict]:
    path = out / "checkpoint" / "trials.jsonl"
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return events


def results_applied(out: Path) -> int:
    return sum(e.get("e") == "result" for e in checkpoint_events(out))


def result_trainers(out: Path) -> set[str]:
    return {e.get("trainer") for e in checkpoint_events(out) if e.get("e") == "result"}


def trials(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]


def assert_exactly(out: Path, count: int) -> list[dict]:
    """Every trial t000000.. once, all succeeded, each applied exactly once by the controller."""
    done = trials(out)
    assert [t["id"] for t in done] == [f"t{i:06d}" for i in range(count)]
    assert all(t["status"] == "succeeded" for t in done), [(t["id"], t["status"], t.get("error")) for t in done]
    applied = Counter(e["id"] for e in checkpoint_events(out) if e.get("e") == "result")
    assert all(n == 1 for n in applied.values()) and len(applied) == count, applied
    return done


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (size, mtime_ns) of everything under directory."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*"))}
