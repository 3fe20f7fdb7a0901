"""What the controller saves and restores, on top of the checkpoint's files.

Saved with every step that changed something: the events since the last save
(appended to the trial log), the strategy state, the elapsed time, the
fingerprint of what the rewards mean (the values, so a refusal names the
fields), and the live spec applied last. A save that fails (a volume gone or
unwritable for a while) is retried with backoff, logged once when it starts
failing and once when it works again; nothing is acknowledged meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from pydantic import ValidationError

from kubenas import metrics
from kubenas.queue.connection import Backoff
from kubenas.queue.live_spec import LiveSpec
from kubenas.search_state import SearchState
from kubenas.spec import ArchitectureSearchSpec
from kubenas.strategies.base import Strategy

from kubenas_controller.checkpoint import Checkpoint, CheckpointError
from kubenas_controller.fingerprint import differences, fingerprint, fingerprint_fields

log = logging.getLogger("kubenas.controller")


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def spec_budget(spec: ArchitectureSearchSpec) -> dict:
    """The live-changeable part of the spec file, to tell whether the file changed since a live change."""
    return {"budget": spec.budget.model_dump(mode="json", by_alias=True), "suspend": spec.suspend}


class SearchCheckpoint:
    def __init__(self, directory: str | Path, search: str, spec: ArchitectureSearchSpec, fsync: bool = True,
                 retry_cap: float = 30.0):
        self.files = Checkpoint(directory, fsync=fsync)
        self.dir = self.files.dir
        self.search = search
        self.fields = fingerprint_fields(spec)
        self.spec_budget = spec_budget(spec)
        self.retry_cap = retry_cap
        self.problem: Optional[str] = None  # why saving fails right now, for the health check

    def lock(self) -> None:
        self.files.lock()

    def unlock(self) -> None:
        self.files.unlock()

    # --- restoring ----------------------------------------------------------------------
    def restore(self, state: SearchState, strategy: Strategy) -> Optional[dict]:
        """Replay the checkpoint into `state` and `strategy`; None for a fresh directory,
        else what it saved (its `live` entry is for the caller)."""
        saved = self.files.load()
        if saved is None:
            return None
        if saved.get("search") != self.search:
            raise CheckpointError(f"{self.dir} holds the checkpoint of search {saved.get('search')!r}, "
                                  f"not {self.search!r}; point --checkpoint-dir (or --output) elsewhere")
        self._check_fingerprint(saved.get("fingerprint_fields"))
        try:
            strategy.load_state_dict(saved["strategy"])
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{self.dir}: the strategy state cannot be restored ({exc})") from None
        state.elapsed = float(saved.get("elapsed", 0.0))
        state.exhausted = bool(saved.get("exhausted", False))
        for event in self.files.events():
            state.apply(event)
        return saved

    def _check_fingerprint(self, recorded: Any) -> None:
        if not isinstance(recorded, dict):
            raise CheckpointError(f"{self.dir} was written by an earlier kubenas that did not record what its "
                                  "rewards mean; resume it with that version, or use a new directory")
        changed = differences(recorded, self.fields)
        if changed:
            raise CheckpointError(
                f"{self.dir} was written for another search space, strategy, dataset or training setting; "
                f"resuming would mix two searches: {'; '.join(changed)}. Use a new directory (or --output) "
                "for the new spec, or put these fields back")

    def saved_live(self, saved: dict) -> tuple[Optional[LiveSpec], bool]:
        """(the live spec applied last, whether it still holds: the spec file is unchanged since)."""
        entry = saved.get("live")
        if not entry:
            return None, False
        try:
            live = LiveSpec.model_validate(entry["spec"])
        except (KeyError, TypeError, ValidationError) as exc:
            raise CheckpointError(f"{self.files.state_path}: the live spec cannot be restored ({exc})") from None
        return live, entry.get("base") == self.spec_budget

    # --- saving -------------------------------------------------------------------------
    def save(self, state: SearchState, strategy: Strategy, live: LiveSpec, stopping: threading.Event,
             waiting: Callable[[], None] = lambda: None) -> None:
        """Save durably, retrying with backoff while the directory fails (`waiting` is called
        between attempts). Raises CheckpointError when asked to stop before it could save."""
        backoff = Backoff(base=0.5, cap=self.retry_cap)
        failing_since: Optional[float] = None
        while True:
            try:
                self._save(state, strategy, live)
            except OSError as exc:
                self.problem = f"cannot save the checkpoint in {self.dir}: {exc.strerror or exc}"
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.error("search %s: %s; retrying with backoff (results stay unacknowledged in Redis "
                              "until it is saved)", self.search, self.problem)
                if stopping.is_set():
                    raise CheckpointError(f"{self.problem}; the results not checkpointed stay in Redis: fix the "
                                          "directory and run the same command again to resume") from None
                waiting()
                stopping.wait(backoff.next_delay())
                continue
            if failing_since is not None:
                log.warning("search %s: checkpoint saved again after %.1f s", self.search,
                            time.monotonic() - failing_since)
                self.problem = None
            return

    def _save(self, state: SearchState, strategy: Strategy, live: LiveSpec) -> None:
        started = time.perf_counter()
        log_bytes = self.files.append(state.unsaved)
        state.take_unsaved()  # in the log now: a retry only saves the state
        size = self.files.save({
            "search": self.search, "fingerprint": fingerprint(self.fields), "fingerprint_fields": self.fields,
            "strategy": strategy.state_dict(), "log_bytes": log_bytes, "elapsed": state.elapsed,
            "exhausted": state.exhausted, "saved": now_iso(),
            "live": {"spec": live.model_dump(mode="json", by_alias=True), "base": self.spec_budget},
        })
        metrics.CHECKPOINT_SECONDS.labels(self.search).observe(time.perf_counter() - started)
        metrics.CHECKPOINT_BYTES.labels(self.search).set(size)
