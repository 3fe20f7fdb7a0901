"""The live spec as the controller applies it (the record: `kubenas.queue.live_spec`).

Polled about twice a second; a newer revision is applied at once: the budget
(the trials kept in flight follow parallelism; a lowered maxTrials cancels
what waits beyond it, in the search state) and suspend. Suspending withdraws
from the queue the trials no trainer has taken (they keep their ids and are
handed out again on resume); running ones finish. Each change is logged once.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from kubenas.queue.controller_side import ControllerQueue
from kubenas.queue.live_spec import LiveSpec, read_live_spec, write_live_spec
from kubenas.search_state import InFlight, SearchState
from kubenas.spec import ArchitectureSearchSpec

log = logging.getLogger("kubenas.controller")


class LiveBudget:
    def __init__(self, spec: ArchitectureSearchSpec, state: SearchState, queue: ControllerQueue,
                 poll_seconds: float = 0.5):
        self.state = state
        self.queue = queue
        self.search = queue.keys.search
        self.poll_seconds = poll_seconds
        self.applied = LiveSpec(budget=spec.budget, suspend=spec.suspend, revision=0)  # 0: the spec's own
        self._poll_at = 0.0
        self._drained_logged = False

    def restored(self, live: LiveSpec, holds: bool) -> None:
        """From the checkpoint: the live spec applied last, and whether it still holds (the spec
        file did not change since; else the newer edit wins). Its revision is kept either way,
        so the same record is not applied again."""
        if not holds:
            self.applied = self.applied.model_copy(update={"revision": live.revision})
            return
        self.applied = live
        self.state.change_budget(live.budget)
        self.state.suspended = live.suspend
        log.info("search %s: live spec revision %d kept (parallelism %d, maxTrials %d%s)", self.search,
                 live.revision, live.budget.parallelism, live.budget.max_trials, ", suspended" if live.suspend else "")

    def connected(self) -> None:
        """After (re)connecting, before anything is published: put the record back if Redis lost it
        (writers add one to the revision they read), and withdraw again if suspended (after a
        restart no trial is known to run: all are withdrawn; a running one is handed out on resume)."""
        if self.applied.revision:
            current = read_live_spec(self.queue.r, self.queue.keys)
            if current is None or current.revision < self.applied.revision:
                write_live_spec(self.queue.r, self.queue.keys, self.applied)
        if self.state.suspended:
            self._withdraw_queued()

    def poll(self) -> Optional[list[InFlight]]:
        """None when nothing changed; else the trials to hand out again (after a resume)."""
        now = time.monotonic()
        if now < self._poll_at:
            return None
        self._poll_at = now + self.poll_seconds
        live = read_live_spec(self.queue.r, self.queue.keys)
        if live is None or live.revision <= self.applied.revision:
            return None
        return self.apply(live)

    def apply(self, live: LiveSpec) -> list[InFlight]:
        for name, (old, new) in self.state.change_budget(live.budget).items():
            log.info("search %s: budget.%s %s -> %s (live spec revision %d)", self.search, name, old, new,
                     live.revision)
        returned: list[InFlight] = []
        if live.suspend and not self.state.suspended:
            withdrawn = self._withdraw_queued()
            log.info("search %s: suspended (live spec revision %d): %d queued trials withdrawn, %d running finish",
                     self.search, live.revision, len(withdrawn), len(self.state.inflight))
        elif not live.suspend and self.state.suspended:
            returned = self.state.resume()
            self._drained_logged = False
            log.info("search %s: resumed (live spec revision %d): %d withdrawn trials handed out again",
                     self.search, live.revision, len(returned))
        self.applied = live
        return returned

    def _withdraw_queued(self) -> list[str]:
        # Checked and deleted in one step per entry: a trainer reading the queue meanwhile gets
        # either the trial (which then runs) or nothing (it is withdrawn), never both.
        waiting = [f.trial_id for f in self.state.inflight.values() if f.started is None]
        taken_back = self.queue.withdraw(waiting)  # nothing is logged for a withdrawal: safe before the checkpoint
        return self.state.suspend(delivered=frozenset(waiting) - frozenset(taken_back))

    def note_drained(self) -> None:
        """Say once when a suspended search has nothing left in flight."""
        state = self.state
        if state.suspended and not state.inflight and not state.finished and not self._drained_logged:
            self._drained_logged = True
            log.info("search %s: suspended with nothing in flight (%d trials withdrawn, %d done)",
                     self.search, len(state.withdrawn), state.tally.done)
