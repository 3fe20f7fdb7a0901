"""An embedded redis-server: a child process on a free loopback port, data in a
directory of its own, AOF on. Used by `kubenas run`, the tests and the benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from kubenas.errors import KubenasError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_redis_server() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise KubenasError("redis-server is not on the PATH: install it (Debian/Ubuntu: apt-get install redis-server; "
                           "macOS: brew install redis), or pass --redis-url to use a Redis you run")
    return path


class RedisServer:
    def __init__(self, directory: str | Path, port: Optional[int] = None, appendonly: bool = True,
                 password: Optional[str] = None, extra: tuple[str, ...] = (), die_with_parent: bool = False):
        self.dir = Path(directory).absolute()  # redis-server resolves --logfile after chdir to --dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.password = password
        self.extra = extra
        self.die_with_parent = die_with_parent  # SIGKILL when the process that started it dies (Linux)
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        cmd = [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
               "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
               "--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd + list(self.extra)

    def start(self, timeout: float = 15.0) -> "RedisServer":
        # Its own session: a Ctrl-C in the terminal reaches the runner, which stops Redis last.
        # Started again after a crash, it keeps its port and directory, so its append-only file.
        from kubenas.local.processes import die_with_parent

        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=die_with_parent() if self.die_with_parent else None)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_ready(self, timeout: float = 15.0) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1.0, socket_connect_timeout=1.0)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                log_tail = self.log_tail()
                raise KubenasError(f"redis-server exited with status {self.proc.returncode}: {log_tail}")
            try:
                if client.ping():
                    client.close()
                    return
            except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError):
                pass
            if time.monotonic() > deadline:
                raise KubenasError(f"redis-server did not answer on port {self.port} within {timeout:g}s: "
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join((self.dir / "redis.log").read_text().strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "RedisServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
