"""Every Redis key kubenas uses, in one place.

Keys are namespaced per search, `kubenas:{namespace}/{name}:...`, so several
searches can share one Redis. Every key is bounded: streams are capped with
MAXLEN and emptied as entries are applied; the hashes hold one field per
trial in flight and lose it when the trial's result is applied.
"""

from __future__ import annotations

from dataclasses import dataclass

# Consumer groups.
TRAINERS_GROUP = "trainers"  # on `trials`: every trainer reads as a consumer of this group
CONTROLLER_GROUP = "controller"  # on `results` and `progress`: the one controller
CONTROLLER_CONSUMER = "controller"

# Field of a stream entry holding the message's JSON (the only field).
PAYLOAD_FIELD = b"m"


@dataclass(frozen=True)
class SearchKeys:
    namespace: str
    name: str

    @property
    def prefix(self) -> str:
        return f"kubenas:{self.namespace}/{self.name}"

    @property
    def search(self) -> str:
        """The search's label in metrics and messages: `namespace/name`."""
        return f"{self.namespace}/{self.name}"

    @property
    def summary(self) -> str:
        """JSON of kubenas.spec.SearchSummary, written by the controller, read by the operator."""
        return f"{self.prefix}:summary"

    @property
    def trials(self) -> str:
        """Stream of TrialMessage; consumer group `trainers`. An entry lives until its result is applied."""
        return f"{self.prefix}:trials"

    @property
    def results(self) -> str:
        """Stream of ResultMessage; consumer group `controller`. Acknowledged after apply + checkpoint."""
        return f"{self.prefix}:results"

    @property
    def progress(self) -> str:
        """Stream of ProgressMessage (trial started, each epoch); consumer group `controller`."""
        return f"{self.prefix}:progress"

    @property
    def dead_letter(self) -> str:
        """Stream of DeadLetterMessage: trials failed past the retry limit, for inspection (capped)."""
        return f"{self.prefix}:deadletter"

    @property
    def dispatched(self) -> str:
        """Hash trial id -> entry id in `trials`: makes publishing idempotent across controller restarts."""
        return f"{self.prefix}:dispatched"

    @property
    def control(self) -> str:
        """Hash trial id -> ControlMessage JSON: stop, or the epochs to train to (early stopping)."""
        return f"{self.prefix}:control"

    @property
    def errors(self) -> str:
        """Hash trial id -> the last infrastructure error of the trial (what a dead letter reports)."""
        return f"{self.prefix}:errors"

    def all(self) -> list[str]:
        """Every key of this search (for cleanup)."""
        return [self.summary, self.trials, self.results, self.progress, self.dead_letter,
                self.dispatched, self.control, self.errors]
