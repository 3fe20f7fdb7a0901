"""Entrypoint of the trainer image.

    python -m kubenas_trainer --redis-url redis://:PASSWORD@redis:6379/0 --namespace NS --name NAME

A long-lived worker: it pulls trials of one search from Redis and trains them
on the GPU it was given (CUDA_VISIBLE_DEVICES) or on the CPU. SIGTERM (pod
preemption, scale-down) hands the running trial back at once and exits.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from typing import Optional

from kubenas import metrics
from kubenas.errors import KubenasError
from kubenas.queue.keys import SearchKeys
from kubenas.queue.redis_queue import connect, redact

log = logging.getLogger("kubenas.trainer")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m kubenas_trainer",
                                description="kubenas trainer: trains the trials of one search, one after another.")
    p.add_argument("--redis-url", default=env("KUBENAS_REDIS_URL", "redis://localhost:6379/0"),
                   help="redis://[:password@]host:port/db or rediss:// (TLS); env KUBENAS_REDIS_URL; "
                        "the password may come from KUBENAS_REDIS_PASSWORD")
    p.add_argument("--namespace", default=env("KUBENAS_NAMESPACE", "default"))
    p.add_argument("--name", default=env("KUBENAS_NAME"), required=env("KUBENAS_NAME") is None)
    p.add_argument("--trainer-id", default=env("KUBENAS_TRAINER_ID"),
                   help="this trainer's consumer name (default: host name and process id)")
    p.add_argument("--device", default=env("KUBENAS_DEVICE", "auto"), help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--lease-seconds", type=float, default=30.0,
                   help="must match the controller's: a trial not heartbeaten for this long is taken over")
    p.add_argument("--metrics-port", type=int, default=int(env("KUBENAS_METRICS_PORT", "8080")),
                   help="serve /metrics and /healthz here (0: any free port, -1: off)")
    p.add_argument("--exit-when-done", action="store_true", help="exit once the search has finished")
    p.add_argument("--max-trials", type=int, default=None, help="exit after this many trials")
    p.add_argument("--fake-work", type=float, default=None, metavar="SECONDS",
                   help="tests and benchmarks only: spend SECONDS per trial instead of training (no torch)")
    p.add_argument("--fake-fail", default="", metavar="IDS",
                   help="tests only, with --fake-work: comma-separated trial ids that raise an error")
    p.add_argument("--log-level", default=env("KUBENAS_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    trainer_id = args.trainer_id or f"{socket.gethostname()}-{os.getpid()}"
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO), stream=sys.stderr,
                        format=f"%(asctime)s {trainer_id} %(levelname)s %(message)s")
    from kubenas_trainer.trainer import Options, Trainer

    try:
        keys = SearchKeys(args.namespace, args.name)
        client = connect(args.redis_url, client_name=f"kubenas-trainer:{trainer_id}")
        trainer = Trainer(client, keys, Options(
            consumer=trainer_id, lease_seconds=args.lease_seconds, device=args.device, threads=args.threads,
            max_trials=args.max_trials, exit_when_done=args.exit_when_done, fake_work=args.fake_work,
            fake_fail=tuple(t for t in args.fake_fail.split(",") if t)))
    except KubenasError as exc:
        log.error("%s", exc)
        return 2

    def terminate(signum: int, _frame: object) -> None:
        log.info("received %s: handing the running trial back and exiting", signal.Signals(signum).name)
        trainer.terminate()

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    server = metrics.serve(args.metrics_port, trainer.healthy)
    if server is not None:
        log.info("metrics and health on port %d", server.server_address[1])
    log.info("trainer %s for search %s on redis %s (%s)", trainer_id, keys.search, redact(args.redis_url),
             "fake work" if args.fake_work is not None else f"device {args.device}")
    return trainer.run()
