"""The Pareto front of a multi-objective search, as files: pareto.csv and pareto.png.

    pareto.csv   every trial with a value for each objective: its metrics, its front
                 number (0: on the Pareto front), whether it is on the front, hash, genotype
    pareto.png   every trial as a dot, the front's members highlighted, one panel per pair
                 of objectives (the front in 2-D is also drawn as a staircase)

`pareto_table` is pure (trial records in, rows out); the writers do the I/O. Trial
records are those of kubenas/local/results.py's `read_trials` (accuracy, cost, ...).
Matplotlib without pyplot, as kubenas/viz.py.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from kubenas.files import write_atomic
from kubenas.objectives import Objectives, pareto_front, pareto_ranks

# Axis labels: the metric and its unit.
LABELS = {"validationAccuracy": "validation accuracy", "parameters": "parameters",
          "multiplyAdds": "multiply-adds", "latency": "latency (s)", "trainingSeconds": "training (s)"}
FRONT_COLOR, OTHER_COLOR = "#d62828", "#8d99ae"


@dataclass(frozen=True)
class ParetoRow:
    trial: str
    values: tuple[float, ...]  # each metric in its own units, in the objectives' order
    rank: int  # 0: on the front
    hash: Optional[str]
    genotype: Optional[dict]

    @property
    def on_front(self) -> bool:
        return self.rank == 0


def trial_values(trial: dict, objectives: Objectives) -> Optional[tuple[float, ...]]:
    """A finished trial's value for each objective, or None (failed, or a metric missing)."""
    if trial.get("status") != "succeeded":
        return None
    accuracy = trial.get("accuracy")
    if accuracy is None:
        accuracy = trial.get("reward")
    return objectives.values(accuracy, trial.get("cost") or {})


def pareto_table(trials: list[dict], objectives: Objectives) -> list[ParetoRow]:
    """Every succeeded trial with all its metrics, with its front number; in trial order."""
    scored = [(t, v) for t in trials if (v := trial_values(t, objectives)) is not None]
    ranks = pareto_ranks([objectives.minimized(v) for _, v in scored])
    return [ParetoRow(t["id"], v, r, t.get("hash"), t.get("genotype")) for (t, v), r in zip(scored, ranks)]


def write_pareto_csv(path: str | Path, rows: list[ParetoRow], objectives: Objectives) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["trial", *objectives.names, "front", "on_front", "hash", "genotype"])
    for row in rows:
        writer.writerow([row.trial, *(repr(v) for v in row.values), row.rank, int(row.on_front),
                         row.hash or "", json.dumps(row.genotype, separators=(",", ":"))])
    write_atomic(Path(path), text.getvalue().encode())


def plot_pareto(path: str | Path, rows: list[ParetoRow], objectives: Objectives, title: str = "") -> tuple[int, int]:
    """pareto.png: one panel per pair of objectives; returns its (width, height) in pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = objectives.names
    pairs = list(itertools.combinations(range(len(names)), 2))
    columns = min(3, len(pairs))
    lines = (len(pairs) + columns - 1) // columns
    fig = Figure(figsize=(4.6 * columns, 4.0 * lines), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    front = [r for r in rows if r.on_front]
    others = [r for r in rows if not r.on_front]
    for k, (a, b) in enumerate(pairs):
        ax = fig.add_subplot(lines, columns, k + 1)
        ax.scatter([r.values[a] for r in others], [r.values[b] for r in others], s=14, color=OTHER_COLOR,
                   alpha=0.6, label=f"trials ({len(rows)})", linewidths=0)
        ax.scatter([r.values[a] for r in front], [r.values[b] for r in front], s=30, color=FRONT_COLOR,
                   edgecolors="black", linewidths=0.5, zorder=3, label=f"Pareto front ({len(front)})" if len(pairs) == 1
                   else f"Pareto front of all {len(names)} ({len(front)})")
        _staircase(ax, rows, objectives, a, b, label="front of these two" if len(pairs) > 1 else "front")
        for axis, index in ((ax.set_xscale, a), (ax.set_yscale, b)):
            values = [r.values[index] for r in rows if r.values[index] > 0]
            if names[index] != "validationAccuracy" and values and max(values) > 20 * min(values):
                axis("log")  # sizes and latencies span decades
        for limits, index in ((ax.set_xlim, a), (ax.set_ylim, b)):
            if names[index] == "validationAccuracy":
                low = _accuracy_floor([r.values[index] for r in rows], [r.values[index] for r in front])
                if low is not None:
                    limits(low, None)
        ax.set_xlabel(LABELS.get(names[a], names[a]))
        ax.set_ylabel(LABELS.get(names[b], names[b]))
        ax.grid(True, alpha=0.3)
        if k == 0:
            ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, format="png")
    return fig.canvas.get_width_height()


def _accuracy_floor(values: list[float], front: list[float]) -> Optional[float]:
    """Where the accuracy axis starts: below the front and most trials, but not down at the
    few networks that learned nothing (they would squeeze everything else into a corner)."""
    if len(values) < 10:
        return None
    ordered = sorted(values)
    floor = min(ordered[len(ordered) // 10], min(front, default=ordered[0]))
    span = max(ordered) - floor
    return None if floor <= ordered[0] else floor - 0.05 * max(span, 1e-3)


def _staircase(ax, rows: list[ParetoRow], objectives: Objectives, a: int, b: int, label: str) -> None:
    """The 2-D front of objectives a and b, as the step line it dominates to."""
    def minimized(values: tuple[float, float]) -> tuple[float, float]:
        # Not Objectives((a, b)): a pair of costs is not a search's objectives (no accuracy).
        return tuple(-v if objectives.metrics[i][1] == "maximize" else v for v, i in zip(values, (a, b)))

    points = [minimized((r.values[a], r.values[b])) for r in rows]
    members = sorted({(rows[i].values[a], rows[i].values[b]) for i in pareto_front(points)}, key=minimized)
    if len(members) > 1:
        ax.step([m[0] for m in members], [m[1] for m in members], where="post", color=FRONT_COLOR, alpha=0.5,
                linewidth=1, label=label)


def write_pareto(output: str | Path, trials: list[dict], objectives: Objectives, title: str = "") -> dict[str, str]:
    """pareto.csv (and pareto.png when any trial has every metric); the paths written."""
    output = Path(output)
    rows = pareto_table(trials, objectives)
    files = {}
    write_pareto_csv(output / "pareto.csv", rows, objectives)
    files["pareto_csv"] = str(output / "pareto.csv")
    if rows and len(objectives.names) > 1:
        plot_pareto(output / "pareto.png", rows, objectives, title)
        files["pareto_png"] = str(output / "pareto.png")
    return files
