"""Entrypoint of the controller image.

    python -m kubenas_controller --spec /etc/kubenas/search.yaml --namespace NS --name NAME \
        --redis-url redis://:PASSWORD@redis:6379/0 --checkpoint-dir /var/lib/kubenas

The spec file is the ArchitectureSearch manifest (or just its `spec` section),
mounted from a ConfigMap by the operator. The checkpoint directory should be
a volume that outlives the pod (a PVC): it holds the strategy state and the
log of every trial. SIGTERM stops after the current step, fully checkpointed.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn, Optional

from pydantic import ValidationError

from kubenas import metrics
from kubenas.errors import InvalidSpec, KubenasError, describe_validation_error
from kubenas.queue.keys import SearchKeys
from kubenas.queue.connection import check, connect, redact
from kubenas.manifest import load_manifest, read_yaml_documents
from kubenas.signals import act_on_signal
from kubenas.spec import KIND, ArchitectureSearchSpec

log = logging.getLogger("kubenas.controller")


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line naming the flag (argparse's usage block buries it), exit 2."""
        self.exit(2, f"{self.prog}: {message}\n")


def number(kind: type, low: float, high: float = math.inf, accepted: str = "", exclusive_low: bool = False):
    """An argparse type: a finite number of `kind` in [low, high] ((low, high] when exclusive_low)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        too_low = value is not None and (value <= low if exclusive_low else value < low)
        if value is None or not math.isfinite(value) or too_low or value > high:
            raise argparse.ArgumentTypeError(f"{text!r} is not accepted; expected {accepted}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


PORT = number(int, -1, 65535, "a port 1..65535, 0 for any free port or -1 for none")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(text: str) -> str:
    """An argparse type: a logging level name (a typo would otherwise silently mean INFO)."""
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r} is not accepted; expected one of {', '.join(LOG_LEVELS)}")
    return text.upper()


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    env = os.environ.get
    p = ArgumentParser(prog="python -m kubenas_controller",
                                description="kubenas controller: runs the strategy, fills the trial queue, "
                                            "applies results, checkpoints, publishes the summary.")
    p.add_argument("--spec", required=True, help="ArchitectureSearch manifest (YAML), or its spec section")
    p.add_argument("--namespace", default=env("KUBENAS_NAMESPACE"), help="the search's namespace (default: the manifest's)")
    p.add_argument("--name", default=env("KUBENAS_NAME"), help="the search's name (default: the manifest's)")
    p.add_argument("--redis-url", default=env("KUBENAS_REDIS_URL", "redis://localhost:6379/0"),
                   help="redis://[:password@]host:port/db or rediss:// (TLS); env KUBENAS_REDIS_URL; "
                        "the password may come from KUBENAS_REDIS_PASSWORD")
    p.add_argument("--checkpoint-dir", default=env("KUBENAS_CHECKPOINT_DIR", "/var/lib/kubenas"),
                   help="a directory that outlives the process (a PVC in Kubernetes)")
    p.add_argument("--metrics-port", type=PORT, default=env("KUBENAS_METRICS_PORT", str(metrics.DEFAULT_PORT)),
                   help="serve /metrics and /healthz here (0: any free port, -1: off)")
    p.add_argument("--lease-seconds", type=number(float, 0, 86400, "seconds > 0", exclusive_low=True), default=30.0,
                   help="a trial whose trainer stops heartbeating for this long goes to another trainer")
    p.add_argument("--max-attempts", type=number(int, 1, 1000, "an integer 1..1000"), default=3, help="attempts per trial before it is failed (dead letter)")
    p.add_argument("--prefetch", type=number(int, 0, 10_000, "an integer 0..10000"), default=None, help="trials queued beyond parallelism (default 1 + parallelism/8)")
    p.add_argument("--finish-grace", type=number(float, 0, 86400, "seconds 0..86400"), default=60.0,
                   help="seconds a finishing search waits for running trials to stop")
    p.add_argument("--artifacts", default=env("KUBENAS_ARTIFACTS"), metavar="DIR",
                   help="the search's artifact store (env KUBENAS_ARTIFACTS): trial checkpoints no longer needed "
                        "are removed from it")
    p.add_argument("--final-dir", default=env("KUBENAS_FINAL_DIR"), metavar="DIR",
                   help="where the final stage's trained model is copied (default: ARTIFACTS/final/model)")
    p.add_argument("--no-fsync", action="store_true", help="do not fsync checkpoints (tests and benchmarks only)")
    p.add_argument("--log-level", type=log_level, default=env("KUBENAS_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def read_spec(path: str) -> tuple[ArchitectureSearchSpec, Optional[str], Optional[str]]:
    """(spec, namespace, name) from a manifest, or (spec, None, None) from a bare spec section."""
    # The CLI's reader: bounded size, UTF-8, no duplicate keys, alias bombs and deep nesting refused.
    docs = read_yaml_documents(Path(path))
    if any(isinstance(d, dict) and d.get("kind") == KIND for d in docs):
        manifest = load_manifest(path)
        return manifest.spec, manifest.metadata.namespace, manifest.metadata.name
    if len(docs) != 1 or not isinstance(docs[0], dict):
        raise InvalidSpec(f"{path}: expected an ArchitectureSearch manifest or its spec section (a mapping)")
    data = docs[0].get("spec", docs[0])
    try:
        return ArchitectureSearchSpec.model_validate(data), None, None
    except ValidationError as exc:
        raise InvalidSpec(f"{path}: {describe_validation_error(exc, 'spec')}") from None


def setup_logging(level: str, process: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format=f"%(asctime)s {process} %(levelname)s %(message)s")


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level, "controller")
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        log.info("received %s: stopping after this step", signal.Signals(signum).name)
        act_on_signal(stopping.set)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        spec, namespace, name = read_spec(args.spec)
        namespace = args.namespace or namespace or "default"
        name = args.name or name
        if not name:
            raise InvalidSpec("--name is required when --spec holds only the spec section")
        keys = SearchKeys(namespace, name)
        client = connect(args.redis_url, client_name=f"kubenas-controller:{keys.search}")
        check(client, args.redis_url)  # a bad database index or password fails now; an outage is retried later
        from kubenas_controller.controller import Controller, ControllerOptions

        controller = Controller(spec, keys, client, args.checkpoint_dir, ControllerOptions(
            prefetch=args.prefetch, lease_seconds=args.lease_seconds, max_attempts=args.max_attempts,
            finish_grace=args.finish_grace, fsync=not args.no_fsync, artifacts=args.artifacts,
            final_dir=args.final_dir or (os.path.join(args.artifacts, "final", "model") if args.artifacts else None)),
            stopping=stopping)
        try:
            server = metrics.serve(args.metrics_port, controller.healthy)
        except OSError as exc:
            raise InvalidSpec(f"--metrics-port {args.metrics_port}: cannot listen there ({exc.strerror or exc}); "
                              "choose a free port, 0 for any or -1 for none") from None
        if server is not None:
            log.info("metrics and health on port %d", server.server_address[1])
        log.info("search %s: %s strategy, %s space, redis %s, checkpoint %s", keys.search,
                 controller.strategy.name, spec.search_space.type, redact(args.redis_url), args.checkpoint_dir)
        return controller.run()
    except KubenasError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:  # e.g. a checkpoint directory that cannot be created or read
        where = f"{exc.filename}: " if exc.filename else ""
        log.error("%s%s", where, exc.strerror or exc)
        return 2
