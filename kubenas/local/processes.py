"""Child processes that die with `kubenas run`.

The runner starts redis-server, the controller and the trainers each in a
session of their own (so a Ctrl-C in the terminal reaches only the runner,
which stops them in order). The price: a SIGKILL of the runner would leave them
running as orphans. On Linux each child therefore asks the kernel for SIGKILL
when its parent dies (PR_SET_PDEATHSIG), and checks that the parent did not die
before it asked. Elsewhere (macOS) there is no such call; the children live on.

The death signal follows the parent *thread* that forked the child: the runner
starts every child from its main thread.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger("kubenas.run")

PR_SET_PDEATHSIG = 1


def die_with_parent() -> Optional[Callable[[], None]]:
    """A preexec_fn for subprocess.Popen, or None where the kernel cannot do it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: async-signal-safe calls only
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return preexec


class Child:
    def __init__(self, name: str, cmd: list[str], log_path: Path, env: dict[str, str]):
        self.name, self.cmd, self.log_path, self.env = name, cmd, log_path, env
        self.proc: Optional[subprocess.Popen] = None
        self.restarts = 0
        self.gave_up = False
        self.retired_at: Optional[float] = None

    def start(self) -> None:
        try:
            out = open(self.log_path, "ab")
        except OSError as exc:  # the output directory is unwritable right now: run without a log
            log.warning("%s: cannot open %s (%s); its output is discarded", self.name, self.log_path, exc)
            out = open(os.devnull, "wb")
        with out:
            # A session of its own: the terminal's Ctrl-C reaches only the runner, which stops
            # the children in order (trainers first, Redis last). And it dies with the runner.
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True, preexec_fn=die_with_parent())

    @property
    def pid(self) -> Optional[int]:
        return None if self.proc is None else self.proc.pid

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

    def last_error(self) -> Optional[str]:
        """The last ERROR line of its log, without the timestamp and process prefix."""
        for line in reversed(self.tail(60).splitlines()):
            if " ERROR " in line:
                return line.split(" ERROR ", 1)[1].strip()
        return None
