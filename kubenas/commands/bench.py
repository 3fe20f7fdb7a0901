"""`kubenas bench strategies`: search strategies side by side on a tabular benchmark.

    kubenas bench strategies --table cifar10-12epoch.csv --budget 100 --workers 8 --seeds 50 \\
        --strategies random,evolution,local-search,tpe,gp-bo --param evolution.population=10

Prints one markdown table per budget: one row per strategy, the test accuracy
(mean±sd over seeds) of the architecture with the best validation accuracy
each search saw. `name@tag` runs a strategy a second time under another label
(`--strategies tpe,tpe@independent --param tpe@independent.multivariate=false`).

On a learning-curve table (columns val_acc_e1 .. val_acc_eE, e.g. the one
benchmarks/learning_curves.py writes) the searches are replayed epoch by
epoch: a trial trained for e epochs reads epoch e, `--budget B` means B * E
epochs in all, and `name+asha`, `name+hyperband` or `name+median` add early
stopping as `training.earlyStopping` does (`--param random+asha.min_epochs=2`,
`reduction_factor`, `min_trials`), so multi-fidelity searches are compared
with full-fidelity ones at equal total epochs:

    kubenas bench strategies --table benchmarks/data/digits-curves.csv --budget 50 --seeds 30 \
        --strategies random,evolution,gp-bo,random+asha,random+hyperband,bohb
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from kubenas.errors import KubenasError

SUBCOMMANDS = ("strategies",)


def add_arguments(command_name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=SUBCOMMANDS, help="what to benchmark")
    parser.add_argument("--table", required=True, help="CSV with columns cellstr, val_acc, test_acc (a learning-curve table also "
                                                       "val_acc_e1 .. val_acc_eE, test_acc_e1 .. test_acc_eE)")
    parser.add_argument("--budget", default="100",
                        help="trained children per search (on a learning-curve table: their epochs, budget * E); "
                             "a comma list prints one table each (default 100)")
    parser.add_argument("--workers", type=int, default=8, help="simulated parallel trainers (default 8)")
    parser.add_argument("--seeds", type=int, default=50, help="searches per strategy (default 50)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed+seeds-1")
    parser.add_argument("--strategies", default=None,
                        help="comma-separated names, name+asha / name+hyperband / name+median on a learning-curve "
                             "table (default: every registered strategy)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME.KEY=VALUE",
                        help="a strategy parameter, VALUE read as JSON when it parses (repeatable)")
    parser.add_argument("--processes", type=int, default=2, help="local worker processes (default 2)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write every run's numbers here")


def parse_params(items: list[str], labels: list[str]) -> dict[str, dict]:
    params: dict[str, dict] = {label: {} for label in labels}
    for item in items:
        target, eq, raw = item.partition("=")
        label, dot, key = target.rpartition(".")
        if not eq or not dot or not label or not key:
            raise KubenasError(f"--param {item!r}: expected NAME.KEY=VALUE, e.g. evolution.population=10")
        if label not in params:
            raise KubenasError(f"--param {item!r}: {label!r} is not among the strategies run ({', '.join(labels)})")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params[label][key] = value
    return params


def run(command_name: str, args: argparse.Namespace) -> int:
    from kubenas.bench import Spec, load_table, markdown, run_benchmark, summarize
    from kubenas.bench.harness import SCHEDULER_PARAMETERS, SCHEDULERS
    from kubenas.strategies import STRATEGIES, strategy_parameters

    try:
        budgets = [int(b) for b in str(args.budget).split(",")]
        if any(b < 1 for b in budgets):
            raise ValueError
    except ValueError:
        print(f"kubenas bench: --budget: expected positive integers, got {args.budget!r}", file=sys.stderr)
        return 2
    for flag in ("workers", "seeds", "processes"):
        if getattr(args, flag) < 1:
            print(f"kubenas bench: --{flag}: must be at least 1 (got {getattr(args, flag)})", file=sys.stderr)
            return 2
    labels = [s.strip() for s in args.strategies.split(",")] if args.strategies else list(STRATEGIES)
    try:
        if len(set(labels)) != len(labels):
            raise KubenasError(f"--strategies: a label appears twice in {labels}; use name@tag for variants")
        specs = [Spec(label) for label in labels]
        unknown = [spec.name for spec in specs if spec.name not in STRATEGIES]
        if unknown:
            raise KubenasError(f"--strategies: {unknown[0]!r} is not known; "
                               f"choose from {', '.join(sorted(STRATEGIES))}")
        odd = [spec.label for spec in specs if spec.scheduler is not None and spec.scheduler not in SCHEDULERS]
        if odd:
            raise KubenasError(f"--strategies: {odd[0]!r}: early stopping after '+' must be one of "
                               f"{', '.join(SCHEDULERS)}")
        params = parse_params(args.param, labels)
        table = load_table(args.table)
        specs = [Spec(label, params[label]) for label in labels]
        for spec in specs:
            if spec.scheduler is not None and "max_epochs" in strategy_parameters(spec.name):
                raise KubenasError(f"--strategies: {spec.label}: {spec.name} schedules its own epochs; "
                                   f"run it without '+{spec.scheduler}'")
        staged = [spec.label for spec in specs if spec.scheduler is not None]
        if staged and table.epochs is None:
            raise KubenasError(f"--strategies: {staged[0]} needs a learning-curve table (columns val_acc_e1 .. "
                               f"val_acc_eE); {args.table} has none")
        for spec in specs:  # unknown parameters fail before any run
            if not spec.params:
                continue
            accepted = {**strategy_parameters(spec.name), **(SCHEDULER_PARAMETERS if spec.scheduler else {})}
            unknown_params = sorted(set(spec.params) - set(accepted))
            if unknown_params:
                raise KubenasError(f"--param: {spec.label} has no parameter {unknown_params}; accepted: "
                                   f"{sorted(accepted) or 'none'}")
    except KubenasError as exc:
        print(f"kubenas bench: {exc}", file=sys.stderr)
        return 2

    top = table.best_val
    curves = f", learning curves of {table.epochs} epochs" if table.epochs else ""
    print(f"table {args.table}: {len(table)} architectures{curves}, space {table.space.name}; "
          f"best val_acc {top.val_acc:g} has test_acc {top.test_acc:g}")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    dump = []
    for budget in budgets:
        start = time.perf_counter()
        try:
            results = run_benchmark(args.table, specs, seeds, budget, args.workers, args.processes)
        except KubenasError as exc:
            print(f"kubenas bench: {exc}", file=sys.stderr)
            return 1
        rows = summarize(results, labels)
        workers = "1 worker (sequential)" if args.workers == 1 else f"{args.workers} asynchronous workers"
        if table.epochs:
            print(f"\n{budget * table.epochs} epochs ({budget} full trainings' worth), {workers}, {args.seeds} seeds "
                  f"(test_acc of the best-val architecture trained for all {table.epochs} epochs; "
                  f"{time.perf_counter() - start:.0f}s)\n")
        else:
            print(f"\n{budget} queries, {workers}, {args.seeds} seeds "
                  f"(test_acc of the best-val architecture seen; {time.perf_counter() - start:.0f}s)\n")
        print(markdown(rows), flush=True)
        dump.append({"budget": budget, "workers": args.workers, "summary": rows,
                     "runs": [r.__dict__ for r in results]})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"table": args.table, "params": params, "results": dump}, f, indent=1)
    return 0
