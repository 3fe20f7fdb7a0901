"""The kubenas operator: reconciles ArchitectureSearch objects (kopf).

    python -m kubenas_operator          # in the operator image (see settings.py for its environment)

Modules: `handlers` (the kopf handlers: they decide), the pure pieces they call
(`validation`, `builders`, `status`, `events`), the I/O they call (`children`:
the API server, `search_redis`: the search's Redis), `runtime` (what one
operator holds, in kopf's memo), `settings` and `kube`. No torch anywhere.
"""

__all__ = ["builders", "events", "settings", "status", "validation"]
