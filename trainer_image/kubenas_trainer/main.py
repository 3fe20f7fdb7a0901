"""Entrypoint of the trainer image.

    python -m kubenas_trainer --redis-url redis://:PASSWORD@redis:6379/0 --namespace NS --name NAME

A long-lived worker: it pulls trials of one search from Redis and trains them
on the GPU it was given (CUDA_VISIBLE_DEVICES) or on the CPU. SIGTERM (pod
preemption, scale-down) hands the running trial back at once and exits.

Flags are checked before anything starts: a bad one is refused with one line
naming the flag, the value and what is accepted, and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import signal
import socket
import sys
from typing import Any, Callable, Optional

from kubenas import metrics
from kubenas.errors import KubenasError
from kubenas.queue.connection import check, connect, redact
from kubenas.queue.keys import SearchKeys
from kubenas.signals import act_on_signal

log = logging.getLogger("kubenas.trainer")

PROG = "python -m kubenas_trainer"


class BadFlag(KubenasError):
    """A command-line flag whose value cannot be used."""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(prog=prog,
                                description="kubenas trainer: trains the trials of one search, one after another.")
    p.add_argument("--redis-url", default=env("KUBENAS_REDIS_URL", "redis://localhost:6379/0"),
                   help="redis://[:password@]host:port/db or rediss:// (TLS); env KUBENAS_REDIS_URL; "
                        "the password may come from KUBENAS_REDIS_PASSWORD")
    p.add_argument("--namespace", default=env("KUBENAS_NAMESPACE", "default"))
    p.add_argument("--name", default=env("KUBENAS_NAME"), required=env("KUBENAS_NAME") is None)
    p.add_argument("--trainer-id", default=env("KUBENAS_TRAINER_ID"),
                   help="this trainer's consumer name (default: host name and process id)")
    p.add_argument("--device", default=env("KUBENAS_DEVICE", "auto"), help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads, 1 or more (default: torch's choice)")
    p.add_argument("--lease-seconds", type=float, default=30.0,
                   help="must match the controller's: a trial not heartbeaten for this long is taken over")
    p.add_argument("--metrics-port", type=int, default=int(env("KUBENAS_METRICS_PORT", str(metrics.DEFAULT_PORT))),
                   help="serve /metrics and /healthz here (0: any free port, -1: off)")
    p.add_argument("--exit-when-done", action="store_true", help="exit once the search has finished")
    p.add_argument("--max-trials", type=int, default=None, help="exit after this many trials")
    p.add_argument("--artifacts", default=env("KUBENAS_ARTIFACTS"), metavar="DIR",
                   help="the search's artifact store, shared by its trainers: trial checkpoints go there and "
                        "handed-back or re-delivered trials resume from them; env KUBENAS_ARTIFACTS "
                        "(default: none, trials restart from scratch)")
    p.add_argument("--checkpoint-seconds", type=float, default=env("KUBENAS_CHECKPOINT_SECONDS", "300"),
                   help="besides after every epoch, checkpoint at most this often within a long epoch "
                        "(env KUBENAS_CHECKPOINT_SECONDS, default 300)")
    p.add_argument("--log-level", default=env("KUBENAS_LOG_LEVEL", "INFO"))
    p.add_argument("--processes", type=int, default=env("KUBENAS_TRAINER_PROCESSES", "1"),
                   help="run this many trainer processes sharing this device, each on a trial of its own "
                        "(spec.trainer.trialsPerGPU; env KUBENAS_TRAINER_PROCESSES, default 1): a supervisor "
                        "starts them with ids TRAINER_ID-0, -1, ... and metrics ports PORT, PORT+1, ...")
    return p


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def check_args(args: argparse.Namespace) -> None:
    """Refuse flags no trainer can use (BadFlag), before anything starts."""
    if args.threads is not None and args.threads < 1:
        raise BadFlag(f"--threads: {args.threads} is not accepted: give 1 or more CPU threads "
                      "(or leave it out for torch's choice)")
    if not -1 <= args.metrics_port <= 65535:
        raise BadFlag(f"--metrics-port: {args.metrics_port} is not accepted: use a TCP port 1-65535, "
                      "0 for any free port, or -1 for none")
    if not (math.isfinite(args.lease_seconds) and args.lease_seconds > 0):
        raise BadFlag(f"--lease-seconds: {args.lease_seconds:g} is not accepted: use a number of seconds above 0 "
                      "(the controller's lease)")
    if args.max_trials is not None and args.max_trials < 1:
        raise BadFlag(f"--max-trials: {args.max_trials} is not accepted: use 1 or more (or leave it out)")
    if not _DEVICE.match(args.device):
        raise BadFlag(f"--device: {args.device!r} is not accepted: use auto, cpu, cuda or cuda:N")
    if args.log_level.upper() not in _LOG_LEVELS:
        raise BadFlag(f"--log-level: {args.log_level!r} is not accepted: use one of {', '.join(_LOG_LEVELS)}")
    if not (math.isfinite(args.checkpoint_seconds) and args.checkpoint_seconds > 0):
        raise BadFlag(f"--checkpoint-seconds: {args.checkpoint_seconds:g} is not accepted: use a number of seconds "
                      "above 0")
    if args.artifacts is not None:
        check_artifacts(args.artifacts)
    if not 1 <= args.processes <= 64:
        raise BadFlag(f"--processes: {args.processes} is not accepted: use 1 to 64 trainer processes")
    if args.processes > 1 and args.metrics_port > 0 and args.metrics_port + args.processes - 1 > 65535:
        raise BadFlag(f"--metrics-port: {args.metrics_port} is not accepted with --processes {args.processes}: "
                      f"process i serves on PORT+i, so use at most {65536 - args.processes}")
    if args.trainer_id is not None and not re.fullmatch(r"[!-~]{1,200}", args.trainer_id):
        raise BadFlag(f"--trainer-id: {args.trainer_id!r} is not accepted: use 1-200 printable ASCII characters "
                      "without spaces (it names the trainer in Redis)")


def check_artifacts(path: str) -> None:
    """The artifact store must be a writable directory (created if missing)."""
    if not path:
        raise BadFlag("--artifacts: an empty path is not accepted: give a directory shared by the search's trainers")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise BadFlag(f"--artifacts: {path!r} is not accepted: cannot create the directory "
                      f"({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise BadFlag(f"--artifacts: {path!r} is not accepted: the directory is not writable by this trainer "
                      f"(uid {os.getuid()})")


def check_device(device: str) -> None:
    """Refuse a CUDA device this machine does not have (imports torch)."""
    if not device.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise BadFlag(f"--device: {device!r} is not accepted: this machine has no CUDA GPU visible "
                      f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); use auto or cpu")
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= count:
        raise BadFlag(f"--device: {device!r} is not accepted: this machine has {count} CUDA GPU(s), "
                      f"cuda:0 to cuda:{count - 1}")


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.processes > 1:
        try:  # refused once here, not K times by the trainers
            check_args(args)
            check_device(args.device)
        except BadFlag as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        from kubenas_trainer import supervisor

        return supervisor.run(args, argv)
    return run(args, checks=(check_device,))


def run(args: argparse.Namespace, make_trainer: Optional[Callable[..., Any]] = None,
        checks: tuple[Callable[[str], None], ...] = ()) -> int:
    """Check the flags, connect, and run a trainer until it exits. `make_trainer(client, keys,
    options)` builds it (default: the real Trainer; tests pass one that does no work)."""
    try:
        check_args(args)
        for check_one in checks:
            check_one(args.device)
    except BadFlag as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    trainer_id = args.trainer_id or f"{socket.gethostname()}-{os.getpid()}"
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO), stream=sys.stderr,
                        format=f"%(asctime)s {trainer_id} %(levelname)s %(message)s")
    from kubenas_trainer.trainer import Trainer, TrainerOptions

    try:
        keys = SearchKeys(args.namespace, args.name)
        client = connect(args.redis_url, client_name=f"kubenas-trainer:{trainer_id}")
        check(client, args.redis_url)  # unreachable is fine (the loop waits); misconfigured is not
        options = TrainerOptions(consumer=trainer_id, lease_seconds=args.lease_seconds, device=args.device,
                                 threads=args.threads, max_trials=args.max_trials,
                                 exit_when_done=args.exit_when_done, artifacts=args.artifacts,
                                 checkpoint_seconds=args.checkpoint_seconds)
        trainer = (make_trainer or Trainer)(client, keys, options)
    except KubenasError as exc:
        log.error("%s", exc)
        return 2

    def terminate(signum: int, _frame: object) -> None:
        log.info("received %s: handing the running trial back and exiting", signal.Signals(signum).name)
        act_on_signal(trainer.terminate)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    try:
        server = metrics.serve(args.metrics_port, trainer.healthy)
    except OSError as exc:
        log.error("--metrics-port: cannot serve on port %d: %s", args.metrics_port, exc.strerror or exc)
        return 2
    if server is not None:
        log.info("metrics and health on port %d", server.server_address[1])
    log.info("trainer %s for search %s on redis %s (%s, device %s)", trainer_id, keys.search,
             redact(args.redis_url), type(trainer).__name__, args.device)
    return trainer.run()
