"""The kubenas operator: reconciles ArchitectureSearch objects (kopf).

    python -m kubenas_operator          # in the operator image (see settings.py for its environment)

Modules: `builders` (pure: the child objects as dicts), `status` (pure: summary ->
status and conditions), `settings` (configuration from the environment),
`kube` (the API calls), `handlers` (the kopf handlers). No torch anywhere.
"""

__all__ = ["builders", "settings", "status"]
