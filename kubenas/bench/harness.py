"""Strategies on a tabular benchmark, with simulated asynchronous workers.

K workers train in parallel; each trial's training time is drawn from an
exponential distribution (seeded), so results come back in random order while
other trials are still pending, as on a cluster. Whenever a worker frees, its
result is told and the strategy is asked for the next trial, until `budget`
children have been trained. Every strategy runs behind the dedup layer: a
repeated architecture is answered from the trial book, costs no query and
takes no worker. The search reads `val_acc` only; a run's score is the
`test_acc` of the architecture with the best `val_acc` it saw.
"""

from __future__ import annotations

import heapq
import multiprocessing
import os
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

from kubenas.bench.table import Entry, Table, load_table
from kubenas.strategies import make_strategy
from kubenas.strategies.base import Result, SearchExhausted, derive_seed
from kubenas.strategies.dedup import Deduplicated


@dataclass
class RunResult:
    label: str
    seed: int
    budget: int
    queries: int  # children trained: the budget, or fewer when the table ran out
    best_val: float
    best_test: float
    found_best: bool  # saw the table's best-val architecture
    hits: int  # repeats answered by the dedup layer
    misses: int  # architectures missing from the table (failed trials)
    seconds: float


@dataclass
class Spec:
    """One strategy to run: `label` is `name` or `name@tag` (same name, other parameters)."""

    label: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.label.split("@", 1)[0]


_TABLES: dict[str, Table] = {}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def cached_table(path: str) -> Table:
    if path not in _TABLES:
        _TABLES[path] = load_table(path)
    return _TABLES[path]


def simulate(table: Table, spec: Spec, seed: int, budget: int, workers: int) -> RunResult:
    """One search: `budget` trained children on `workers` asynchronous workers."""
    start = time.perf_counter()
    strategy = Deduplicated(make_strategy(spec.name, table.space, seed=seed, **spec.params))
    clock = random.Random(derive_seed(seed, "worker-times"))
    running: list[tuple[float, int, Any]] = []  # (finish time, issue order, trial)
    issued = misses = 0
    exhausted = False  # every architecture of a small table evaluated: the run ends early
    best: Optional[Entry] = None

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
        entry = table.lookup(trial.genotype)
        if entry is None:
            misses += 1
            result = Result(reward=None, status="failed", error="architecture not in the table")
        else:
            result = Result(reward=entry.val_acc)
            if best is None or entry.val_acc > best.val_acc:
                best = entry
        strategy.tell(trial.id, result)
        if issued < budget and not exhausted:
            launch(now)
    top = table.best_val
    return RunResult(
        label=spec.label, seed=seed, budget=budget, queries=issued,
        best_val=best.val_acc if best else float("nan"), best_test=best.test_acc if best else float("nan"),
        found_best=best is not None and best.cellstr == top.cellstr, hits=strategy.hits, misses=misses,
        seconds=time.perf_counter() - start,
    )


def _run_task(task: tuple) -> dict:
    path, label, params, seed, budget, workers = task
    return asdict(simulate(cached_table(path), Spec(label, params), seed, budget, workers))


def run_benchmark(path: str, specs: list[Spec], seeds: Iterable[int], budget: int, workers: int,
                  processes: int = 2) -> list[RunResult]:
    """Every (strategy, seed) run; results in a fixed order whatever the process scheduling."""
    cached_table(path)  # fail early, in this process, on a malformed table
    tasks = [(path, s.label, s.params, seed, budget, workers) for s in specs for seed in seeds]
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
        test = [r.best_test for r in runs]
        val = [r.best_val for r in runs]
        rows.append({
            "label": label, "runs": len(runs),
            "test_mean": statistics.fmean(test), "test_sd": statistics.stdev(test) if len(test) > 1 else 0.0,
            "val_mean": statistics.fmean(val), "val_sd": statistics.stdev(val) if len(val) > 1 else 0.0,
            "found_best": sum(r.found_best for r in runs) / len(runs),
            "queries": statistics.fmean(r.queries for r in runs),
            "hits": statistics.fmean(r.hits for r in runs), "misses": statistics.fmean(r.misses for r in runs),
            "seconds": statistics.fmean(r.seconds for r in runs),
        })
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| name | mean±sd | val_acc mean±sd | found best-val cell | dedup hits/run | seconds/run |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['test_mean']:.2f}±{r['test_sd']:.2f} | {r['val_mean']:.2f}±{r['val_sd']:.2f} "
                     f"| {100 * r['found_best']:.0f}% | {r['hits']:.1f} | {r['seconds']:.2f} |")
    return "\n".join(lines)
