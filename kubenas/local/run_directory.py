"""The output directory of `kubenas run`: who holds it, and how to reach that run.

    OUTPUT/run.lock   held (flock) by the run using OUTPUT; the kernel releases it however
                      the run ends, even by SIGKILL. Never removed (that would race a new run).
    OUTPUT/run.json   that run: pid, host, start time, search, its Redis URL without the
                      password, the budget as applied; removed when the run ends.

A second `kubenas run` into OUTPUT is refused naming the holder; `kubenas scale|suspend|
resume OUTPUT` find the running search here.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from kubenas.errors import KubenasError

log = logging.getLogger("kubenas.run")

RUN_INFO = "run.json"
RUN_LOCK = "run.lock"


class DirectoryInUse(KubenasError):
    """The output directory is held by another `kubenas run`."""


class RunDirectory:
    """OUTPUT/run.lock, held (flock) by the run using OUTPUT, and OUTPUT/run.json describing it."""

    def __init__(self, output: Path):
        self.output = output
        self.info_path = output / RUN_INFO
        self._lock: Any = None
        self.info: dict[str, Any] = {}

    def holder(self) -> Optional[dict]:
        try:
            data = json.loads(self.info_path.read_text())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def describe_holder(self) -> str:
        info = self.holder()
        if not info:
            return f"{self.output} is in use by another `kubenas run` (it is starting: no {RUN_INFO} yet)"
        pid = info.get("pid")
        return (f"{self.output} is in use by another `kubenas run` (pid {pid} on {info.get('host')}, started "
                f"{info.get('started')}, search {info.get('search')}; see {self.info_path}): wait for it to finish, "
                f"stop it (Ctrl-C in its terminal, or kill {pid}), or choose another --output")

    def acquire(self) -> None:
        import fcntl

        try:
            self.output.mkdir(parents=True, exist_ok=True)
            lock = open(self.output / RUN_LOCK, "a+")  # never removed: removing it would race with a new run
        except OSError as exc:  # e.g. under /proc, or a read-only file system
            raise KubenasError(f"--output: cannot use {self.output}: {exc.strerror or exc}; "
                               "choose a directory you can write") from None
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise DirectoryInUse(self.describe_holder()) from None
        self._lock = lock

    def held_by_someone(self) -> bool:
        """True when a run holds OUTPUT now (for the live-change commands)."""
        import fcntl

        try:
            lock = open(self.output / RUN_LOCK, "r")
        except OSError:
            return False
        with lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return True
            return False

    def write(self, **changes: Any) -> bool:
        self.info.update(changes)
        tmp = self.info_path.with_name(f".{RUN_INFO}.tmp")
        try:
            tmp.write_text(json.dumps(self.info, indent=2) + "\n")
            os.replace(tmp, self.info_path)
            return True
        except OSError as exc:  # an unwritable output for a while: run.json is informative only
            log.warning("could not update %s: %s", self.info_path, exc)
            return False

    def release(self) -> None:
        if self._lock is None:
            return
        try:
            self.info_path.unlink()
        except OSError:
            pass
        self._lock.close()  # closing releases the flock
        self._lock = None


def running_search(output: Path) -> dict:
    """The run.json of the `kubenas run` holding OUTPUT now; KubenasError when none does."""
    directory = RunDirectory(output)
    if not output.is_dir():
        raise KubenasError(f"{output}: no such directory; give the --output of a running `kubenas run`")
    if not directory.held_by_someone():
        raise KubenasError(f"{output}: no `kubenas run` is using it now (start the search with kubenas run "
                           f"MANIFEST --output {output}; changes apply to a running search)")
    info = directory.holder()
    if not info or "redisUrl" not in info:
        raise KubenasError(f"{output}: the run using it is still starting ({RUN_INFO} not written yet); "
                           "try again in a few seconds")
    return info
