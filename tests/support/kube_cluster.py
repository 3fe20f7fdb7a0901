"""Start the real Kubernetes test cluster (``kubenas-testcluster``) for tests.

The binary is built from ``tests/kube/testcluster`` by
``scripts/build-go-tools.sh`` and runs etcd and the real kube-apiserver (and,
optionally, kube-controller-manager and kube-scheduler) in one process.

    with start_test_cluster(tmp_path) as cluster:
        subprocess.run(["kubectl", "--kubeconfig", str(cluster.kubeconfig), ...])

Stdlib only. A missing binary is an error, never a skip: tests that need a
real component must fail when it is not there.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

BUILD_SCRIPT = "scripts/build-go-tools.sh"


def cache_dir() -> Path:
    return Path(os.environ.get("KUBENAS_CACHE") or Path.home() / ".cache" / "kubenas")


# The kubectl built with the cluster (same release), unless $KUBECTL names another.
KUBECTL = os.environ.get("KUBECTL") or (
    str(cache_dir() / "bin" / "kubectl") if (cache_dir() / "bin" / "kubectl").exists() else "kubectl")


def testcluster_binary() -> Path:
    """Where the binary is: $KUBENAS_TESTCLUSTER, else the cache's bin/."""
    override = os.environ.get("KUBENAS_TESTCLUSTER")
    path = Path(override) if override else cache_dir() / "bin" / "kubenas-testcluster"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise RuntimeError(
            f"kubenas-testcluster binary not found at {path}; build it with "
            f"`bash {BUILD_SCRIPT}` (or point KUBENAS_TESTCLUSTER at one)"
        )
    return path


@dataclass
class RunningCluster:
    kubeconfig: Path
    server: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess:
        """Run kubectl against this cluster; output is text."""
        cmd = [KUBECTL, "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _server_from_kubeconfig(path: Path) -> str:
    match = re.search(r"^\s*server:\s*(\S+)\s*$", path.read_text(), re.MULTILINE)
    if not match:
        raise RuntimeError(f"no server URL in {path}")
    return match.group(1)


def _stop(proc: subprocess.Popen, grace: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def start_test_cluster(
    data_dir: os.PathLike | str,
    with_controllers: bool = False,
    timeout: float = 120,
    *,
    port: int = 0,
    grace: float = 30,
    extra_args: Sequence[str] = (),
) -> Iterator[RunningCluster]:
    """Run kubenas-testcluster on ``data_dir`` until the block exits.

    Waits up to ``timeout`` seconds for its ``READY <kubeconfig>`` line; on
    exit sends SIGTERM and, after ``grace`` seconds, SIGKILL. The component
    logs (stderr) go to ``data_dir/testcluster.log``.
    """
    binary = testcluster_binary()
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    kubeconfig = data_dir / "admin.kubeconfig"
    log_path = data_dir / "testcluster.log"
    cmd = [str(binary), "--data-dir", str(data_dir), "--kubeconfig", str(kubeconfig)]
    if port:
        cmd += ["--port", str(port)]
    if with_controllers:
        cmd.append("--with-controllers")
    cmd += list(extra_args)

    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            # Its own process group: a Ctrl-C in the terminal reaches pytest,
            # which then stops the cluster in order instead of racing it.
            start_new_session=True,
        )
    try:
        # Read stdout in a thread so the wait can time out; the thread keeps
        # draining the pipe afterwards so the child never blocks on it.
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, name="testcluster-stdout", daemon=True).start()

        deadline = time.monotonic() + timeout
        ready_path: Path | None = None
        while ready_path is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"kubenas-testcluster not READY within {timeout:.0f}s; "
                    f"log {log_path}:\n{_log_tail(log_path)}"
                )
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                proc.wait(timeout=10)
                raise RuntimeError(
                    f"kubenas-testcluster exited with {proc.returncode} before READY; "
                    f"log {log_path}:\n{_log_tail(log_path)}"
                )
            if line.startswith("READY "):
                ready_path = Path(line[len("READY ") :].strip())

        yield RunningCluster(
            kubeconfig=ready_path,
            server=_server_from_kubeconfig(ready_path),
            data_dir=data_dir,
            log_path=log_path,
            process=proc,
        )
    finally:
        _stop(proc, grace)
