"""Every Redis key kubenas uses, in one place.

Keys are namespaced per search, `kubenas:{namespace}/{name}:...`, so several
searches can share one Redis.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SearchKeys:
    namespace: str
    name: str

    @property
    def prefix(self) -> str:
        return f"kubenas:{self.namespace}/{self.name}"

    @property
    def summary(self) -> str:
        """JSON of kubenas.spec.SearchSummary, written by the controller, read by the operator."""
        return f"{self.prefix}:summary"
