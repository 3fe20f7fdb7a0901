"""Benchmarks of search strategies on tabular benchmarks (NAS-Bench-201 and alike)."""

from kubenas.bench.harness import RunResult, Spec, markdown, replay, run_benchmark, simulate, summarize
from kubenas.bench.table import Table, load_table

__all__ = ["RunResult", "Spec", "Table", "load_table", "markdown", "replay", "run_benchmark", "simulate", "summarize"]
