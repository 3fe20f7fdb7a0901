"""Every Redis key kubenas uses, in one place.

Keys are namespaced per search, `kubenas:{namespace}/{name}:...`, so several
searches can share one Redis. Every key is bounded: streams are capped with
MAXLEN and emptied as entries are applied; the hashes hold one field per
trial in flight and lose it when the trial's result is applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kubenas.errors import InvalidSpec

# Consumer groups.
TRAINERS_GROUP = "trainers"  # on `trials`: every trainer reads as a consumer of this group
CONTROLLER_GROUP = "controller"  # on `results` and `progress`: the one controller
CONTROLLER_CONSUMER = "controller"

# Field of a stream entry holding the message's JSON (the only field).
PAYLOAD_FIELD = b"m"


# A search is named like its Kubernetes object: the namespace a DNS label, the name a DNS
# subdomain. Anything else could break keys and the client names Redis accepts (no spaces).
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_NAME = re.compile(r"[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class SearchKeys:
    namespace: str
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.namespace, str) or not _NAMESPACE.fullmatch(self.namespace):
            raise InvalidSpec(f"namespace: {_shown(self.namespace)} is not accepted: use lowercase letters, digits and '-', "
                              "starting and ending with a letter or digit, at most 63 characters "
                              "(a Kubernetes namespace)")
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise InvalidSpec(f"name: {_shown(self.name)} is not accepted: use lowercase letters, digits, '-' and '.', "
                              "starting and ending with a letter or digit, at most 253 characters "
                              "(a Kubernetes object name)")

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

    @property
    def live_spec(self) -> str:
        """JSON of kubenas.queue.live_spec.LiveSpec: budget and suspend changes for a running controller."""
        return f"{self.prefix}:live-spec"

    def all(self) -> list[str]:
        """Every key of this search (for cleanup)."""
        return [self.summary, self.trials, self.results, self.progress, self.dead_letter,
                self.dispatched, self.control, self.errors, self.live_spec]
