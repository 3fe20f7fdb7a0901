"""`kubenas bench strategies`: search strategies side by side on a tabular benchmark.

    kubenas bench strategies --table cifar10-12epoch.csv --budget 100 --workers 8 --seeds 50 \\
        --strategies random,evolution,local-search,tpe,gp-bo --param evolution.population=10

Prints one markdown table per budget: one row per strategy, the test accuracy
(mean±sd over seeds) of the architecture with the best validation accuracy
each search saw. `name@tag` runs a strategy a second time under another label
(`--strategies tpe,tpe@independent --param tpe@independent.multivariate=false`).
Parameters are named as in a manifest's strategy.parameters (camelCase:
`--param tpe.nStartupTrials=20`).

On a learning-curve table (columns val_acc_e1 .. val_acc_eE, e.g. the one
benchmarks/learning_curves.py writes) the searches are replayed epoch by
epoch: a trial trained for e epochs reads epoch e, `--budget B` means B * E
epochs in all, and `name+asha`, `name+hyperband` or `name+median` add early
stopping as `training.earlyStopping` does (`--param random+asha.minEpochs=2`,
`reductionFactor`, `minTrials`), so multi-fidelity searches are compared
with full-fidelity ones at equal total epochs:

    kubenas bench strategies --table benchmarks/data/digits-curves.csv --budget 50 --seeds 30 \
        --strategies random,evolution,gp-bo,random+asha,random+hyperband,bohb

With `--objectives validationAccuracy:max,parameters:min` (a table with a parameters or
multiply_adds column; benchmarks/pareto.py builds one for NAS-Bench-201 from the project's
own parameter counts) the strategies that optimise several metrics learn from both, and
each search is scored by the hypervolume of every result it saw: objectives scaled so that
the table's best value is 0, the reference point the nadir of the table's true front, the
score a share of the true front's hypervolume (1 = the whole front found).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from kubenas.errors import KubenasError

SUBCOMMANDS = ("strategies", "oneshot")


def add_arguments(command_name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=SUBCOMMANDS, help="what to benchmark")
    parser.add_argument("--table", default=None,
                        help="CSV with columns cellstr, val_acc, test_acc (a learning-curve table also "
                             "val_acc_e1 .. val_acc_eE, test_acc_e1 .. test_acc_eE); oneshot: default "
                             "benchmarks/data/digits-curves.csv")
    parser.add_argument("--budget", default="100",
                        help="trained children per search (on a learning-curve table: their epochs, budget * E); "
                             "a comma list prints one table each (default 100)")
    parser.add_argument("--workers", type=int, default=8, help="simulated parallel trainers (default 8)")
    parser.add_argument("--seeds", type=int, default=None, help="searches per strategy (default 50; oneshot: 5)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed+seeds-1")
    parser.add_argument("--strategies", default=None,
                        help="comma-separated names, name+asha / name+hyperband / name+median on a learning-curve "
                             "table (default: every registered strategy)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME.KEY=VALUE",
                        help="a strategy parameter named as in strategy.parameters (camelCase: tpe.nStartupTrials=20), "
                             "VALUE read as JSON when it parses (repeatable)")
    parser.add_argument("--processes", type=int, default=2, help="local worker processes (default 2)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write every run's numbers here")
    parser.add_argument("--objectives", default=None, metavar="NAME:max|min,...",
                        help="several objectives, e.g. validationAccuracy:max,parameters:min (the table's parameters "
                             "or multiply_adds column): each search is scored by the normalised hypervolume of the "
                             "results it saw (reference point: the nadir of the table's true Pareto front), as a "
                             "share of the true front's")
    parser.add_argument("--missing", choices=("fail", "nearest"), default="fail",
                        help="strategies: what a proposed NAS-Bench-201 cell the table lacks gets: fail (a failed "
                             "trial at no cost: the search is confined to the table's cells) or nearest (the row "
                             "of the table's cell with the fewest differing edges: a nearest-neighbour surrogate "
                             "of the whole space, for tables of part of it; default fail)")
    parser.add_argument("--reward", choices=("mean", "one-seed"), default="mean",
                        help="strategies: what a trial reads: mean (the table's accuracy, a mean over its training "
                             "seeds; default) or one-seed (one seed's final accuracy, drawn per trial: the noise of "
                             "a single training, as a real search sees it; needs columns val_acc_s0, ..). Runs are "
                             "scored by the mean of the cell they picked either way")
    # oneshot (kubenas/bench/oneshot.py): supernets' ranking against the learning-curve table
    parser.add_argument("--algorithms", default="enas,darts,spos", help="oneshot: comma-separated (default all three)")
    parser.add_argument("--epochs", type=int, default=None, help="oneshot: supernet epochs (default: the table's)")
    parser.add_argument("--cells", default=None, metavar="START:END",
                        help="oneshot: rank the table's rows START..END-1 only (default: every row)")
    parser.add_argument("--standalone-seeds", type=int, default=4,
                        help="oneshot: seeds that train a derived cell the table lacks (default 4)")


def _point(objectives, minimised) -> str:
    """A point in the metrics' own units (accuracy back to its sign)."""
    return ", ".join(f"{name} {v:g}" for name, v in zip(objectives.names, objectives.minimized(minimised)))


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
    if args.what == "oneshot":
        return _run_oneshot(args)
    if args.table is None:
        print("kubenas bench strategies: --table is required", file=sys.stderr)
        return 2
    args.seeds = 50 if args.seeds is None else args.seeds
    from kubenas.bench import Spec, load_table, markdown, run_benchmark, summarize
    from kubenas.bench.harness import SCHEDULER_PARAMETERS, SCHEDULERS
    from kubenas.spec import camel_case_hint, strategy_parameter_name
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
    if args.strategies:
        labels = [s.strip() for s in args.strategies.split(",")]
    else:  # every registered strategy (with --objectives, those that optimise several)
        from kubenas.strategies import MULTI_OBJECTIVE_STRATEGIES

        labels = list(MULTI_OBJECTIVE_STRATEGIES if args.objectives else STRATEGIES)
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
        objectives = None
        if args.objectives is not None:  # an empty --objectives is refused, not ignored
            from kubenas.objectives import Objectives

            try:
                objectives = Objectives.parse(args.objectives)
            except ValueError as exc:
                raise KubenasError(f"--objectives: {str(exc).removeprefix('objectives: ')}") from None
            from kubenas.strategies import MULTI_OBJECTIVE_STRATEGIES

            single = [spec.name for spec in specs if spec.name not in MULTI_OBJECTIVE_STRATEGIES]
            if objectives.is_multi and single:
                raise KubenasError(f"--strategies: {single[0]} optimises one metric; with several --objectives "
                                   f"choose from {', '.join(MULTI_OBJECTIVE_STRATEGIES)}")
        table = load_table(args.table)
        if objectives is not None:
            from kubenas.bench.harness import table_front

            if table.epochs is not None:
                raise KubenasError(f"--objectives: {args.table} is a learning-curve table; several objectives are "
                                   "benchmarked on tables without curves")
            front = table_front(table, objectives)
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
            accepted = {*map(strategy_parameter_name, strategy_parameters(spec.name)),
                        *(SCHEDULER_PARAMETERS if spec.scheduler else ())}
            unknown_params = sorted(set(spec.params) - accepted)
            for name in unknown_params:  # the same hint as for a manifest
                camel = camel_case_hint(name, accepted)
                if camel:
                    raise KubenasError(f"--param {spec.label}.{name}: did you mean {spec.label}.{camel}? "
                                       f"(parameter names are camelCase, as in strategy.parameters)")
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
            results = run_benchmark(args.table, specs, seeds, budget, args.workers, args.processes, objectives,
                                    missing=args.missing, reward=args.reward)
        except KubenasError as exc:
            print(f"kubenas bench: {exc}", file=sys.stderr)
            return 1
        rows = summarize(results, labels)
        workers = "1 worker (sequential)" if args.workers == 1 else f"{args.workers} asynchronous workers"
        if objectives is not None:
            names = ", ".join(objectives.names)
            print(f"\n{budget} queries, {workers}, {args.seeds} seeds: hypervolume of every result seen, as a share "
                  f"of the table's true front's ({front['size']} cells). Objectives ({names}) minimised and scaled "
                  f"so that the table's best value of each is 0; reference point: the true front's nadir "
                  f"({_point(objectives, front['reference'])}); wide: the table's worst values "
                  f"({_point(objectives, front['worst'])}). {time.perf_counter() - start:.0f}s\n")
        elif table.epochs:
            print(f"\n{budget * table.epochs} epochs ({budget} full trainings' worth), {workers}, {args.seeds} seeds "
                  f"(test_acc of the best-val architecture trained for all {table.epochs} epochs; "
                  f"{time.perf_counter() - start:.0f}s)\n")
        else:
            print(f"\n{budget} queries, {workers}, {args.seeds} seeds "
                  f"(test_acc of the best-val architecture seen; {time.perf_counter() - start:.0f}s)\n")
        if args.reward == "one-seed":
            print("Rewards: one training seed's accuracy per trial; each run's pick (its best reward seen) "
                  "is scored by the table's mean over all seeds.\n")
        print(markdown(rows), flush=True)
        dump.append({"budget": budget, "workers": args.workers, "summary": rows,
                     "runs": [r.__dict__ for r in results]})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"table": args.table, "params": params, "results": dump}, f, indent=1)
    return 0


def one_shot_parameters(algorithm: str, chosen: dict) -> dict:
    """--param values checked as a manifest's strategy.parameters are (names, types, ranges),
    as the constructors' keywords."""
    from pydantic import ValidationError

    from kubenas.spec import StrategySpec, strategy_keyword_arguments

    if "supernetEpochs" in chosen:
        raise KubenasError(f"--param {algorithm}.supernetEpochs: the supernet's epochs are set with --epochs")
    try:
        StrategySpec(algorithm=algorithm, parameters=chosen)
    except ValidationError as exc:
        error = exc.errors()[0]
        if "error" in error.get("ctx", {}):  # the spec's own message, which names the parameter
            raise KubenasError(str(error["ctx"]["error"]).replace("strategy.parameters.", f"--param {algorithm}.")) from None
        name = error["loc"][1]  # ("parameters", name, ...): a value that is no JSON scalar
        raise KubenasError(f"--param {algorithm}.{name}: {chosen[name]!r} is not accepted; "
                           "expected a number, true/false or a string") from None
    return strategy_keyword_arguments(chosen)


def _run_oneshot(args: argparse.Namespace) -> int:
    """`kubenas bench oneshot`: see kubenas/bench/oneshot.py."""
    from dataclasses import asdict
    from pathlib import Path

    from kubenas.bench.oneshot import ALGORITHMS, read_table, run_one, summary, table_agreement

    table_path = Path(args.table or "benchmarks/data/digits-curves.csv")
    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    seeds = 5 if args.seeds is None else args.seeds
    bad = [a for a in algorithms if a not in ALGORITHMS]
    if bad or not algorithms:
        print(f"kubenas bench oneshot: --algorithms: {bad or algorithms} not accepted; choose from "
              f"{', '.join(ALGORITHMS)}", file=sys.stderr)
        return 2
    for flag, value in (("seeds", seeds), ("epochs", args.epochs), ("standalone-seeds", args.standalone_seeds)):
        if value is not None and value < 1:
            print(f"kubenas bench oneshot: --{flag}: must be at least 1 (got {value})", file=sys.stderr)
            return 2
    try:
        table = read_table(table_path)
    except (OSError, KeyError, ValueError) as exc:
        print(f"kubenas bench oneshot: --table {table_path}: cannot be read as a learning-curve table "
              f"(columns cellstr, val_acc): {exc}", file=sys.stderr)
        return 2
    if args.cells is not None:
        start, colon, end = args.cells.partition(":")
        try:
            rows = list(table.items())[int(start or 0):int(end) if end else None]
        except ValueError:
            rows = None
        if not colon or rows is None:
            print(f"kubenas bench oneshot: --cells {args.cells!r}: expected START:END (row numbers, e.g. 300:500)",
                  file=sys.stderr)
            return 2
        table = dict(rows)
    try:
        parameters = {algorithm: one_shot_parameters(algorithm, chosen)
                      for algorithm, chosen in parse_params(args.param, algorithms).items()}
    except KubenasError as exc:
        print(f"kubenas bench oneshot: {exc}", file=sys.stderr)
        return 2
    if len(table) < 3:
        print(f"kubenas bench oneshot: --table {table_path}: {len(table)} cells; a rank correlation needs "
              "at least 3 (the issue asks for 100)", file=sys.stderr)
        return 2
    runs = []
    for seed in range(args.first_seed, args.first_seed + seeds):
        for algorithm in algorithms:
            started = time.perf_counter()
            result = run_one(algorithm, seed, table, epochs=args.epochs, standalone_seeds=args.standalone_seeds,
                             parameters=parameters[algorithm])
            runs.append(result)
            print(f"{algorithm} seed {seed}: tau {result.tau:.3f} (accuracy {result.tau_accuracy:.3f}), "
                  f"top cell {result.top_cell} "
                  f"val_acc {result.top_val_acc:.2f}% ({'table' if result.top_from_table else 'trained here'}), "
                  f"supernet {result.seconds:.0f}s, skip/none {result.parameter_free_share:.2f} "
                  f"({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps([asdict(r) for r in runs], indent=1))
    print(f"{len(table)} cells of {table_path}")
    print(summary(runs, table_agreement(table_path)))
    return 0

