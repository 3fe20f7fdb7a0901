"""`kubenas run MANIFEST.yaml`: an ArchitectureSearch on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from kubenas.commands.common import fail
from kubenas.errors import KubenasError


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="the ArchitectureSearch manifest (the one you would kubectl apply)")
    parser.add_argument("--output", "-o", default=None,
                        help="results directory (default: results/NAME); run again with the same one to resume")
    parser.add_argument("--trainers", "-n", type=int, default=None,
                        help="trainer processes (default: the manifest's budget.parallelism)")
    parser.add_argument("--redis-url", default=None,
                        help="use this Redis (redis://[:password@]host:port/db, rediss:// for TLS) "
                             "instead of an embedded redis-server")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per trainer (default: cores / trainers)")
    parser.add_argument("--device", default="auto", help="trainers' device: auto, cpu, cuda, cuda:N")
    parser.add_argument("--lease-seconds", type=float, default=30.0,
                        help="a trial whose trainer stops heartbeating this long goes to another trainer")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics: the controller on PORT, trainer i on PORT+1+i (default: off)")
    parser.add_argument("--no-progress", action="store_true", help="plain progress lines instead of a live bar")
    parser.add_argument("--fake-work", type=float, default=None, help=argparse.SUPPRESS)  # tests only


def run(command: str, args: argparse.Namespace) -> int:
    from rich.console import Console

    from kubenas.local.progress import format_seconds
    from kubenas.local.runner import LocalRunner, RunOptions
    from kubenas.spec import load_manifest

    console = Console()
    try:
        manifest = load_manifest(args.manifest)
        output = Path(args.output) if args.output else Path("results") / manifest.metadata.name
        runner = LocalRunner(RunOptions(
            manifest=Path(args.manifest), output=output, trainers=args.trainers, redis_url=args.redis_url,
            threads=args.threads, device=args.device, lease_seconds=args.lease_seconds,
            metrics_port=args.metrics_port, fake_work=args.fake_work,
            progress=False if args.no_progress else None), console=console)
        outcome = runner.run()
    except (KubenasError, OSError) as exc:
        return fail(str(exc))
    summary = outcome.summary or {}
    counts = summary.get("trials", {})
    results = outcome.results or {}
    best = results.get("best") or {}
    line = (f"{'finished' if outcome.finished else 'stopped'} in {format_seconds(outcome.seconds)}"
            f"{' (' + summary['finishReason'] + ')' if outcome.finished else ''}: "
            f"{counts.get('total', 0)} trials, {counts.get('succeeded', 0)} succeeded, {counts.get('failed', 0)} failed, "
            f"{counts.get('stopped', 0)} stopped")
    console.print(line, markup=False, highlight=False)
    if best:
        worst = results.get("worst_reward")
        console.print(f"best reward {best['reward']:.4f} ({best['id']})"
                      + (f", worst {worst:.4f}" if worst is not None else ""), markup=False, highlight=False)
    for name, path in sorted(results.get("files", {}).items()):
        console.print(f"  {name:14s} {path}", markup=False, highlight=False)
    if outcome.interrupted:
        console.print(f"run the same command again to resume (checkpoint in {output / 'checkpoint'})",
                      markup=False, highlight=False)
    return outcome.code
