"""`python -m kubenas_operator`: run the operator (kopf) with a liveness endpoint and /metrics.

Watches the whole cluster, or the namespaces in KUBENAS_WATCH_NAMESPACES
(comma-separated, globs allowed). Runs standalone: one replica, no peering
(the Helm chart deploys it with strategy Recreate).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubenas-operator", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)

    import kopf

    kopf.configure(verbose=args.verbose)

    from kubenas import metrics
    from kubenas_operator.settings import OperatorSettings

    try:
        config = OperatorSettings.from_env()
        config.require_password_key()
    except ValueError as exc:
        print(f"kubenas-operator: {exc}", file=sys.stderr)
        return 2
    if config.metrics_port > 0:
        metrics.serve(config.metrics_port, healthy=lambda: (True, "ok"))

    import kubenas_operator.handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        memo=kopf.Memo(settings=config),  # the startup handler takes the settings read here
        standalone=True,
        clusterwide=not config.watch_namespaces,
        namespaces=config.watch_namespaces,
        liveness_endpoint=config.liveness_endpoint,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
