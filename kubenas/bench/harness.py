"""Strategies on a tabular benchmark, with simulated asynchronous workers.

K workers train in parallel; each trial's training time is drawn from an
exponential distribution (seeded), so results come back in random order while
other trials are still pending, as on a cluster. Whenever a worker frees, its
result is told and the strategy is asked for the next trial, until `budget`
children have been trained. Every strategy runs behind the dedup layer: a
repeated architecture is answered from the trial book, costs no query and
takes no worker. The search reads `val_acc` only; a run's score is the
`test_acc` of the architecture with the best `val_acc` it saw.

On a learning-curve table (`val_acc_e1` .. `val_acc_eE`) `replay` trains
epoch by epoch instead: a trial trained for e epochs reads epoch e, reports
every epoch to the strategy (so early stopping and Hyperband brackets act as
in a real search), and the budget is counted in epochs, so multi-fidelity
searches are compared with full-fidelity ones at equal total epochs. Its
score is the `test_acc` of the best-`val_acc` architecture among those
trained for all E epochs (among the longest trained when none was).

A table of part of the space (a learning-curve table of 1,000 of NAS-Bench-201's
15,625 cells) leaves most of a mutation's neighbours out. `missing` says what a
proposed cell the table lacks gets: "fail" (a failed trial at no cost; the search is
confined to the table's cells, which starves evolution and model-based proposals), or
"nearest" (the curve of the table's cell with the fewest differing edges: a
nearest-neighbour surrogate of the whole space, so every strategy searches all of it).

`reward` says what a trial reads: "mean" (the table's accuracy, a mean over the
training seeds it was measured with) or "one-seed" (one of those seeds' final
accuracy, drawn per trial: the noise of the single training a real search gives
each child). Either way a run is scored by the mean (the truth) of the cell it
picked, so "one-seed" measures how well a strategy copes with noisy rewards. The
table keeps each seed's last epoch only, so "one-seed" serves full trainings
(early stopping would read earlier epochs, which are means).
"""

from __future__ import annotations

import heapq
import itertools
import math
import multiprocessing
import os
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

from kubenas.bench.table import COST_COLUMNS, Table, TableRow, load_table
from kubenas.errors import KubenasError
from kubenas.objectives import Objectives, normalised_hypervolume, pareto_front
from kubenas.spec import strategy_keyword_arguments
from kubenas.strategies import make_strategy, strategy_parameters
from kubenas.strategies.base import STOP, Result, SearchExhausted, Strategy, Trial, derive_seed
from kubenas.strategies.dedup import Deduplicated

MISSING = ("fail", "nearest")  # what a proposed cell the table lacks gets (see the module's docstring)
REWARDS = ("mean", "one-seed")  # what a trial reads (see the module's docstring)
# Early stopping a label may add with `+` (random+asha): the controller's
# schedulers, built as the controller builds them from training.earlyStopping.
SCHEDULERS = ("asha", "hyperband", "median")
# Named as in the manifest (training.earlyStopping), like the strategies' parameters.
SCHEDULER_PARAMETERS = {"minEpochs": 1, "reductionFactor": 3, "minTrials": 5}


@dataclass
class RunResult:
    label: str
    seed: int
    budget: int
    queries: int  # children trained (started, on a curve table): the budget, or fewer when the table ran out
    best_val: float
    best_test: float
    found_best: bool  # saw the table's best-val architecture
    hits: int  # repeats answered by the dedup layer
    misses: int  # architectures missing from the table (failed trials)
    seconds: float
    epochs: Optional[int] = None  # epochs trained in all (curve tables)
    full: Optional[int] = None  # trials trained for all epochs (curve tables)
    hypervolume: Optional[float] = None  # several objectives: normalised hypervolume of what the search saw
    hypervolume_wide: Optional[float] = None  # the same, reference point at the table's worst values
    front: Optional[int] = None  # several objectives: the size of the Pareto front it found
    substituted: int = 0  # missing="nearest": trials answered by the nearest cell the table has


@dataclass
class Spec:
    """One strategy to run: `label` is `name`, `name+scheduler` (early stopping, on a
    curve table) and either with `@tag` (same name, other parameters). Parameters are
    named as in a manifest (camelCase); those in SCHEDULER_PARAMETERS go to the scheduler,
    the others to the strategy as its keyword arguments."""

    label: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.label.split("@", 1)[0].split("+", 1)[0]

    @property
    def scheduler(self) -> Optional[str]:
        _, plus, scheduler = self.label.split("@", 1)[0].partition("+")
        return scheduler if plus else None

    @property
    def strategy_params(self) -> dict[str, Any]:
        """The strategy's keyword arguments (snake_case, as strategy.parameters become them)."""
        if self.scheduler is None:
            return strategy_keyword_arguments(self.params)
        return strategy_keyword_arguments({k: v for k, v in self.params.items() if k not in SCHEDULER_PARAMETERS})

    @property
    def scheduler_params(self) -> dict[str, Any]:
        if self.scheduler is None:
            return {}
        return {**SCHEDULER_PARAMETERS, **{k: v for k, v in self.params.items() if k in SCHEDULER_PARAMETERS}}


_TABLES: dict[str, Table] = {}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def cached_table(path: str) -> Table:
    if path not in _TABLES:
        _TABLES[path] = load_table(path)
    return _TABLES[path]


def answer(table: Table, genotype: dict, missing: str) -> tuple[Optional[TableRow], bool]:
    """The row that answers a proposed genotype, and whether it is another cell's (nearest)."""
    entry = table.lookup(genotype)
    if entry is None and missing == "nearest":
        return table.nearest(genotype), True
    return entry, False


def observer(reward: str, seed: int):
    """What a trial that trained for all epochs reads from its row: the mean, or one training
    seed's accuracy drawn from the run's own generator (the same draws for the same seed)."""
    if reward == "mean":
        return lambda entry: entry.val_acc
    draws = random.Random(derive_seed(seed, "training-seeds"))
    return lambda entry: draws.choice(entry.val_seeds)


def simulate(table: Table, spec: Spec, seed: int, budget: int, workers: int,
             objectives: Optional[Objectives] = None, missing: str = "fail", reward: str = "mean") -> RunResult:
    """One search: `budget` trained children on `workers` asynchronous workers. With several
    `objectives` the strategy learns from the table's costs too, and the run is scored by the
    normalised hypervolume of every result it saw (`table_front`)."""
    start = time.perf_counter()
    strategy = Deduplicated(make_strategy(spec.name, table.space, seed=seed, objectives=objectives,
                                          **spec.strategy_params))
    seen: list[tuple[float, ...]] = []  # several objectives: the values of every result
    if objectives is not None:
        table_front(table, objectives)  # a table without the metrics fails before the search
    clock = random.Random(derive_seed(seed, "worker-times"))
    running: list[tuple[float, int, Any]] = []  # (finish time, issue order, trial)
    issued = misses = substituted = 0
    exhausted = False  # every architecture of a small table evaluated: the run ends early
    best: Optional[TableRow] = None
    best_observed = -math.inf
    observe = observer(reward, seed)

    def launch(now: float) -> None:
        nonlocal issued, exhausted
        try:
            trials = strategy.ask(1)
        except SearchExhausted:
            exhausted = True
            return
        for trial in trials:
            issued += 1
            heapq.heappush(running, (now + clock.expovariate(1.0), issued, trial))

    for _ in range(min(workers, budget)):
        launch(0.0)
    while running:
        now, _, trial = heapq.heappop(running)
        entry, stand_in = answer(table, trial.genotype, missing)
        substituted += stand_in
        if entry is None:
            misses += 1
            result = Result(reward=None, status="failed", error="architecture not in the table")
        else:
            observed = observe(entry)
            result = Result(reward=observed, cost=dict(entry.cost or {}))
            if objectives is not None:
                # Scored by the truth: the table's mean, whatever reward the strategy was told.
                seen.append(objectives.minimized(objectives.values(entry.val_acc, result.cost)))
            if observed > best_observed:  # picked by what the search saw, scored by the table's mean
                best, best_observed = entry, observed
        strategy.tell(trial.id, result)
        if issued < budget and not exhausted:
            launch(now)
    top = table.best_val
    return RunResult(
        label=spec.label, seed=seed, budget=budget, queries=issued,
        best_val=best.val_acc if best else float("nan"), best_test=best.test_acc if best else float("nan"),
        found_best=best is not None and best.cellstr == top.cellstr, hits=strategy.hits, misses=misses,
        substituted=substituted,
        seconds=time.perf_counter() - start,
        **(_pareto_scores(table, objectives, seen) if objectives is not None else {}),
    )


def table_front(table: Table, objectives: Objectives) -> dict[str, Any]:
    """The scale of a table's hypervolume. Every objective is minimised and scaled so that
    its best value in the table is 0; the reference point is the nadir of the table's true
    Pareto front (each objective's worst value among the front's members), scaled to 1, so
    that the hypervolume measures the trade-off region, where the front is (a run's result
    is given as a share of the true front's hypervolume). `wide` is the same with the
    reference point at the worst value of every objective over the whole table, where even
    a poor front scores close to 1."""
    key = (table.path, objectives)
    if key not in _FRONTS:
        points = []
        for entry in table.entries.values():
            values = objectives.values(entry.val_acc, dict(entry.cost or {}))
            if values is None:
                missing = [n for n in objectives.names if n != "validationAccuracy"]
                raise KubenasError(f"{table.path}: --objectives {','.join(objectives.names)}: the table has no "
                                   f"value for {', '.join(missing)} (columns: {', '.join(COST_COLUMNS)})")
            points.append(objectives.minimized(values))
        dims = range(len(objectives.names))
        front = sorted({points[i] for i in pareto_front(points)})
        ideal = [min(p[k] for p in points) for k in dims]
        nadir = [max(p[k] for p in front) for k in dims]
        worst = [max(p[k] for p in points) for k in dims]
        if any(n <= i for n, i in zip(nadir, ideal)):
            nadir = worst  # a front of one point: no trade-off region
        _FRONTS[key] = {"ideal": ideal, "reference": nadir, "worst": worst, "size": len(front), "members": front,
                        "hypervolume": normalised_hypervolume(front, ideal, nadir),
                        "hypervolume_wide": normalised_hypervolume(front, ideal, worst)}
    return _FRONTS[key]


_FRONTS: dict[tuple, dict[str, Any]] = {}


def _pareto_scores(table: Table, objectives: Objectives, seen: list[tuple[float, ...]]) -> dict[str, Any]:
    scale = table_front(table, objectives)
    return {"hypervolume": normalised_hypervolume(seen, scale["ideal"], scale["reference"]) / scale["hypervolume"],
            "hypervolume_wide": normalised_hypervolume(seen, scale["ideal"], scale["worst"]) / scale["hypervolume_wide"],
            "front": len({seen[i] for i in pareto_front(seen)})}


def build_search(table: Table, spec: Spec, seed: int) -> Strategy:
    """The strategy stacked as the controller stacks it: MultiFidelity(Deduplicated(<algorithm>))."""
    params = spec.strategy_params
    schedules_epochs = "max_epochs" in strategy_parameters(spec.name)  # bohb: its own brackets
    if spec.scheduler is not None and schedules_epochs:
        raise KubenasError(f"{spec.label}: {spec.name} schedules its own epochs; run it without '+{spec.scheduler}'")
    if table.epochs is not None and schedules_epochs:
        params.setdefault("max_epochs", table.epochs)
    strategy: Strategy = Deduplicated(make_strategy(spec.name, table.space, seed=seed, **params))
    if spec.scheduler is None:
        return strategy
    from kubenas.strategies.multifidelity import ASHA, MedianStopping, MultiFidelity, rung_epochs

    if table.epochs is None:
        raise KubenasError(f"{spec.label}: early stopping needs a learning-curve table "
                           f"(columns val_acc_e1 .. val_acc_eE); {table.path} has none")
    p, epochs = spec.scheduler_params, table.epochs
    min_epochs = min(p["minEpochs"], epochs)
    try:
        if spec.scheduler == "median":
            scheduler = MedianStopping(epochs, min_trials=p["minTrials"], start_epoch=min_epochs)
        elif spec.scheduler in ("asha", "hyperband"):
            brackets = len(rung_epochs(min_epochs, epochs, p["reductionFactor"])) if spec.scheduler == "hyperband" else 1
            scheduler = ASHA(epochs, min_epochs=min_epochs, eta=p["reductionFactor"], brackets=brackets)
        else:
            raise KubenasError(f"{spec.label}: early stopping {spec.scheduler!r} is not known; "
                               f"choose from {', '.join(SCHEDULERS)}")
    except ValueError as exc:
        raise KubenasError(f"{spec.label}: {exc}") from None
    return MultiFidelity(strategy, scheduler)


MAX_MISSES_IN_A_ROW = 10_000  # then the search counts as exhausted


@dataclass
class _Running:
    trial: Trial
    entry: TableRow
    epoch: int = 0  # epochs trained so far
    target: int = 0  # epochs to train towards
    stopped: bool = False  # by the scheduler before the last epoch, or by the end of the budget


def replay(table: Table, spec: Spec, seed: int, budget: int, workers: int, missing: str = "fail",
           reward: str = "mean") -> RunResult:
    """One search on a learning-curve table with `budget` * E epochs to spend on `workers`
    asynchronous workers; each epoch takes a worker an exponentially distributed time
    (mean 1/E, so a full training takes 1 on average, as in `simulate`)."""
    if table.epochs is None:
        raise KubenasError(f"{table.path}: replay needs a learning-curve table (columns val_acc_e1 .. val_acc_eE)")
    start = time.perf_counter()
    epochs = table.epochs
    limit = budget * epochs
    strategy = build_search(table, spec, seed)
    clock = random.Random(derive_seed(seed, "worker-times"))
    running: list[tuple[float, int, _Running]] = []  # (end of its next epoch, issue order, trial)
    spent = issued = misses = full = substituted = 0
    order = itertools.count()  # ties in time go in issue order
    exhausted = False
    finished: list[tuple[int, float, TableRow]] = []  # (epochs trained, last accuracy seen, entry) of every success
    observe = observer(reward, seed)

    def end(run: _Running) -> None:
        nonlocal full
        trial, entry, e = run.trial, run.entry, run.epoch
        curve = list(entry.val_curve[:e])
        if e == epochs and reward == "one-seed":
            curve[-1] = observe(entry)
        status = "stopped" if run.stopped and e < epochs else "succeeded"
        cost = dict(entry.cost or {})
        value = strategy.objective(trial.id, curve[-1], cost)
        strategy.tell(trial.id, Result(reward=value, status=status, curve=curve, cost=cost, epochs=e))
        full += e == epochs
        if status == "succeeded" or e == epochs:
            finished.append((e, curve[-1], entry))

    def step(now: float, run: _Running) -> None:
        """Train the trial's next epoch, if the budget has one left."""
        nonlocal spent
        if spent >= limit:
            run.stopped = True
            end(run)
            return
        spent += 1
        heapq.heappush(running, (now + clock.expovariate(epochs), next(order), run))

    def launch(now: float) -> None:
        """Start the next trial. A cell the table lacks fails at once, costing no epochs, and the
        strategy is asked again: on a table of part of the space the search is confined to its cells."""
        nonlocal issued, misses, exhausted, substituted
        for _ in range(MAX_MISSES_IN_A_ROW):
            try:
                trials = strategy.ask(1)
            except SearchExhausted:
                break
            if not trials:
                return
            trial = trials[0]
            entry, stand_in = answer(table, trial.genotype, missing)
            substituted += stand_in
            if entry is None:
                misses += 1
                strategy.tell(trial.id, Result(reward=None, status="failed", error="architecture not in the table"))
                continue
            issued += 1
            step(now, _Running(trial, entry, target=trial.fidelity or epochs))
            return
        exhausted = True

    for _ in range(workers):
        if spent < limit and not exhausted:
            launch(0.0)
    while running:
        now, _, run = heapq.heappop(running)
        run.epoch += 1
        decision = strategy.report(run.trial.id, run.epoch, run.entry.val_curve[run.epoch - 1])
        if decision is not None and decision.action == STOP:
            run.target, run.stopped = run.epoch, True
        elif decision is not None:
            run.target = max(decision.fidelity, run.epoch)
        if run.epoch < min(run.target, epochs):
            step(now, run)
            continue
        end(run)
        if spent < limit and not exhausted:
            launch(now)

    longest = max((e for e, _, _ in finished), default=0)
    # Picked by what the search saw, scored by the table's mean.
    best = max(((seen, entry) for e, seen, entry in finished if e == longest), key=lambda pair: pair[0],
               default=(None, None))[1]
    top = table.best_val
    return RunResult(
        label=spec.label, seed=seed, budget=budget, queries=issued,
        best_val=best.val_curve[longest - 1] if best else float("nan"),
        best_test=best.test_curve[longest - 1] if best else float("nan"),
        found_best=best is not None and best.cellstr == top.cellstr, hits=_hits(strategy), misses=misses,
        substituted=substituted,
        seconds=time.perf_counter() - start, epochs=spent, full=full,
    )


def _hits(strategy: Strategy) -> int:
    while not isinstance(strategy, Deduplicated):
        strategy = strategy.inner  # type: ignore[attr-defined]
    return strategy.hits


def _run_task(task: tuple) -> dict:
    path, label, params, seed, budget, workers, objectives, missing, reward = task
    table = cached_table(path)
    if objectives is not None:
        if table.epochs is not None:
            raise KubenasError(f"{path}: several objectives are benchmarked on tables without learning curves")
        return asdict(simulate(table, Spec(label, params), seed, budget, workers, Objectives.parse(objectives),
                               missing=missing, reward=reward))
    run = replay if table.epochs is not None else simulate
    return asdict(run(table, Spec(label, params), seed, budget, workers, missing=missing, reward=reward))


def run_benchmark(path: str, specs: list[Spec], seeds: Iterable[int], budget: int, workers: int,
                  processes: int = 2, objectives: Optional[Objectives] = None,
                  missing: str = "fail", reward: str = "mean") -> list[RunResult]:
    """Every (strategy, seed) run; results in a fixed order whatever the process scheduling."""
    if missing not in MISSING:
        raise KubenasError(f"missing: {missing!r} is not accepted; choose one of {', '.join(MISSING)}")
    if reward not in REWARDS:
        raise KubenasError(f"reward: {reward!r} is not accepted; choose one of {', '.join(REWARDS)}")
    table = cached_table(path)  # fail early, in this process, on a malformed table
    if missing == "nearest" and any(row.cellstr.startswith("{") for row in table.entries.values()):
        raise KubenasError(f"{path}: --missing nearest needs a table of NAS-Bench-201 cell strings")
    if reward == "one-seed":
        if any(not row.val_seeds for row in table.entries.values()):
            raise KubenasError(f"{path}: --reward one-seed needs each training seed's final accuracy "
                               "(columns val_acc_s0, val_acc_s1, ...); this table has only the mean")
        partial = [s.label for s in specs if s.scheduler or "max_epochs" in strategy_parameters(s.name)]
        if partial:
            raise KubenasError(f"--reward one-seed: {', '.join(partial)} stop(s) trials early, and the table keeps "
                               "each seed's last epoch only; run them with --reward mean")
    # Objectives travel as their command-line text (plain data) to the worker processes.
    text = None if objectives is None else ",".join(f"{n}:{g}" for n, g in objectives.metrics)
    tasks = [(path, s.label, s.params, seed, budget, workers, text, missing, reward)
             for s in specs for seed in seeds]
    if processes <= 1:
        rows = [_run_task(t) for t in tasks]
    else:
        # One BLAS/OpenMP/torch thread per process (read at import by the fresh
        # interpreters spawn starts): the pool is the parallelism.
        saved = {var: os.environ.get(var) for var in THREAD_VARIABLES}
        os.environ.update({var: "1" for var in THREAD_VARIABLES})
        try:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(processes) as pool:
                rows = list(pool.imap(_run_task, tasks, chunksize=1))
        finally:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
    return [RunResult(**r) for r in rows]


def summarize(results: list[RunResult], labels: list[str]) -> list[dict[str, Any]]:
    rows = []
    for label in labels:
        runs = [r for r in results if r.label == label]
        # A run that finished no trial has no best (NaN): left out of the mean, never a crash.
        test = [r.best_test for r in runs if math.isfinite(r.best_test)] or [math.nan]
        val = [r.best_val for r in runs if math.isfinite(r.best_val)] or [math.nan]
        rows.append({
            "label": label, "runs": len(runs),
            "test_mean": statistics.fmean(test), "test_sd": statistics.stdev(test) if len(test) > 1 else 0.0,
            "val_mean": statistics.fmean(val), "val_sd": statistics.stdev(val) if len(val) > 1 else 0.0,
            "found_best": sum(r.found_best for r in runs) / len(runs),
            "queries": statistics.fmean(r.queries for r in runs),
            "hits": statistics.fmean(r.hits for r in runs), "misses": statistics.fmean(r.misses for r in runs),
            "substituted": statistics.fmean(r.substituted for r in runs),
            "seconds": statistics.fmean(r.seconds for r in runs),
            "epochs": statistics.fmean(r.epochs for r in runs) if runs[0].epochs is not None else None,
            "full": statistics.fmean(r.full for r in runs) if runs[0].full is not None else None,
            "hv_mean": statistics.fmean(r.hypervolume for r in runs) if runs[0].hypervolume is not None else None,
            "hv_sd": (statistics.stdev(r.hypervolume for r in runs) if len(runs) > 1 else 0.0)
            if runs[0].hypervolume is not None else None,
            "front": statistics.fmean(r.front for r in runs) if runs[0].front is not None else None,
            "hv_wide_mean": statistics.fmean(r.hypervolume_wide for r in runs)
            if runs[0].hypervolume_wide is not None else None,
            "hv_wide_sd": (statistics.stdev(r.hypervolume_wide for r in runs) if len(runs) > 1 else 0.0)
            if runs[0].hypervolume_wide is not None else None,
        })
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    if any(r.get("hv_mean") is not None for r in rows):  # several objectives: the front's hypervolume
        lines = ["| name | hypervolume mean±sd (reference: the true front's nadir) | (reference: the table's worst) "
                 "| front size | best val_acc mean±sd | dedup hits/run | seconds/run |",
                 "|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['label']} | {r['hv_mean']:.4f}±{r['hv_sd']:.4f} "
                         f"| {r['hv_wide_mean']:.4f}±{r['hv_wide_sd']:.4f} | {r['front']:.1f} "
                         f"| {r['val_mean']:.2f}±{r['val_sd']:.2f} | {r['hits']:.1f} | {r['seconds']:.2f} |")
        return "\n".join(lines)
    curves = any(r.get("epochs") is not None for r in rows)
    stand_ins = any(r.get("substituted") for r in rows)  # missing="nearest" answered some trials
    extra = " stand-ins/run |" if stand_ins else ""
    if curves:  # a replay of learning curves: what the epochs bought
        lines = ["| name | mean±sd | val_acc mean±sd | found best-val cell | trials/run | full trainings/run "
                 f"| epochs/run |{extra} seconds/run |", "|---" * (8 + stand_ins) + "|"]
    else:
        lines = [f"| name | mean±sd | val_acc mean±sd | found best-val cell | dedup hits/run |{extra} seconds/run |",
                 "|---" * (6 + stand_ins) + "|"]
    for r in rows:
        head = (f"| {r['label']} | {r['test_mean']:.2f}±{r['test_sd']:.2f} | {r['val_mean']:.2f}±{r['val_sd']:.2f} "
                f"| {100 * r['found_best']:.0f}% |")
        tail = (f" {r['substituted']:.1f} |" if stand_ins else "") + f" {r['seconds']:.2f} |"
        if curves:
            lines.append(f"{head} {r['queries']:.1f} | {r['full']:.1f} | {r['epochs']:.0f} |{tail}")
        else:
            lines.append(f"{head} {r['hits']:.1f} |{tail}")
    return "\n".join(lines)
