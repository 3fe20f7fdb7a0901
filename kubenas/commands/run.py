"""`kubenas run MANIFEST.yaml`: an ArchitectureSearch on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from kubenas.commands.common import fail, number_in, whole_number_in
from kubenas.errors import KubenasError


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", help="the ArchitectureSearch manifest (the one you would kubectl apply)")
    parser.add_argument("--output", "-o", default=None,
                        help="results directory (default: results/NAME); run again with the same one to resume")
    parser.add_argument("--trainers", "-n", type=whole_number_in(1, 1024), default=None,
                        help="trainer processes (default: the manifest's budget.parallelism)")
    parser.add_argument("--redis-url", default=None,
                        help="use this Redis (redis://[:password@]host:port/db, rediss:// for TLS) "
                             "instead of an embedded redis-server")
    parser.add_argument("--threads", type=whole_number_in(1, 1024), default=None,
                        help="torch threads per trainer (default: cores / trainers)")
    parser.add_argument("--device", default="auto", help="trainers' device: auto, cpu, cuda, cuda:N")
    parser.add_argument("--lease-seconds", type=number_in(0, 86400, low_open=True), default=30.0,
                        help="a trial whose trainer stops heartbeating this long goes to another trainer")
    parser.add_argument("--metrics-port", type=whole_number_in(0, 65535), default=None,
                        help="serve Prometheus metrics: the controller on PORT, trainer i on PORT+1+i (default: off)")
    parser.add_argument("--no-progress", action="store_true", help="plain progress lines instead of a live bar")


def run(command: str, args: argparse.Namespace) -> int:
    from rich.console import Console

    from kubenas.local.progress import format_seconds
    from kubenas.local.runner import LocalRunner, RunOptions
    from kubenas.manifest import load_manifest

    console = Console(soft_wrap=True)
    errors = Console(stderr=True, soft_wrap=True)
    try:
        manifest = load_manifest(args.manifest)
        output = Path(args.output) if args.output else Path("results") / manifest.metadata.name
        runner = LocalRunner(RunOptions(
            manifest=Path(args.manifest), output=output, trainers=args.trainers, redis_url=args.redis_url,
            threads=args.threads, device=args.device, lease_seconds=args.lease_seconds,
            metrics_port=args.metrics_port,
            progress=False if args.no_progress else None), console=console, error_console=errors)
        outcome = runner.run()
    except KubenasError as exc:
        return fail(str(exc))
    except OSError as exc:  # e.g. the output directory cannot be created
        return fail(f"{exc.filename or 'output'}: {exc.strerror or exc}" if exc.filename else str(exc))

    def say(text: str, error: bool = False) -> None:
        (errors if error else console).print(text, style="red" if error else None, markup=False, highlight=False)

    counts = outcome.counts or (outcome.summary or {}).get("trials", {})
    if outcome.summary is not None or counts:
        reason = (outcome.summary or {}).get("finishReason")
        say(f"{'finished' if outcome.finished else 'stopped'} in {format_seconds(outcome.seconds)}"
            f"{' (' + reason + ')' if outcome.finished and reason else ''}: "
            f"{counts.get('total', 0)} trials, {counts.get('succeeded', 0)} succeeded, {counts.get('failed', 0)} "
            f"failed, {counts.get('stopped', 0)} stopped")
    results = outcome.results or {}
    best = results.get("best") or {}
    if best:
        worst = results.get("worst_reward")
        say(f"best reward {best['reward']:.4f} ({best['id']})" + (f", worst {worst:.4f}" if worst is not None else ""))
    final = results.get("final_model")
    if final:
        test = final.get("testAccuracy")
        say(f"final model {final['trial']} ({final.get('candidates', 0)} trained): validation accuracy "
            f"{final['validationAccuracy']:.4f}, test accuracy "
            f"{'n/a (no test split)' if test is None else format(test, '.4f')}"
            + (f" on {final['testImages']} images" if final.get("testImages") else "") + f"; in {final['path']}")
    elif results.get("final_error"):
        say(f"final stage: {results['final_error']}", error=True)
    for name, path in sorted(results.get("files", {}).items()):
        say(f"  {name:14s} {path}")
    for problem in outcome.problems:
        say(problem, error=True)
    if outcome.resume_hint:
        say(f"run the same command again to resume (checkpoint in {output / 'checkpoint'})")
    return outcome.code
