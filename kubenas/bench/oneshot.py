"""`kubenas bench oneshot`: how well each one-shot algorithm's supernet ranks NAS-Bench-201
cells on digits, against the stand-alone accuracies of the learning-curve table
(benchmarks/data/digits-curves.csv).

Per algorithm and seed, in this process (world size 1, the worker's own algorithm classes):
  1. train the supernet on the table's task and network setting (kubenas/bench/curves.py
     TASK and TRAINING: the same distorted digits, N, F, batch, learning rate; the table's
     epochs unless --epochs says otherwise);
  2. score every cell of the table (or of `--cells START:END`) as the worker scores its
     candidates (`OneShotAlgorithm.path_metrics`: `fineTuneSteps` steps of the cell's own path
     from the shared weights, batch norm recalibrated), and take Kendall's tau-b against the
     table's val_acc (the mean over its seeds), of the score (minus the validation loss) and of
     the validation accuracy;
  3. the algorithm's top derived cell: its stand-alone accuracy from the table when the table
     has it, else trained stand-alone here in the table's setting (`--standalone-seeds` seeds);
  4. trainer-seconds: the supernet's wall-clock seconds (one process) plus the derivation;
  5. DARTS: the share of skip_connect and none among the edges of its derived cells (the
     known collapse of DARTS towards parameter-free operations).
The ceiling of tau is the table's own seed-to-seed tau (`benchmarks/learning_curves.py agree`).
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

ALGORITHMS = ("enas", "darts", "spos")
PARAMETER_FREE = ("skip_connect", "none")


@dataclass
class OneShotRun:
    algorithm: str
    seed: int
    tau: float  # of the score (minus the path's validation loss)
    tau_accuracy: float  # of the path's validation accuracy instead
    top_cell: str
    top_val_acc: float  # stand-alone validation accuracy (%) of the top derived cell
    top_from_table: bool
    seconds: float  # supernet training + derivation
    standalone_seconds: float  # training the top cell alone, when the table lacks it
    parameter_free_share: float  # skip_connect/none among the derived cells' edges
    derived: list[str] = field(default_factory=list)
    arch_entropy: float = math.nan  # after the last epoch (darts: the alphas' softmax; enas: the policy)
    supernet_val_acc: float = math.nan  # after the last epoch


def read_table(path: Path) -> dict[str, float]:
    """cellstr -> val_acc (%) of the learning-curve table."""
    with open(path, newline="") as f:
        return {row["cellstr"]: float(row["val_acc"]) for row in csv.DictReader(f)}


def parameter_free_share(cells: list[str]) -> float:
    """Share of skip_connect and none among the edges of NAS-Bench-201 cell strings."""
    from kubenas.spaces.nasbench201 import parse_cellstr

    ops = [op for cell in cells for op in parse_cellstr(cell)]
    return sum(op in PARAMETER_FREE for op in ops) / len(ops) if ops else math.nan


def kendall_tau(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b)[0])


def run_one(algorithm: str, seed: int, table: dict[str, float], epochs: Optional[int] = None,
            parameters: Optional[dict] = None, standalone_seeds: int = 4, top_k: int = 3) -> OneShotRun:
    """One algorithm, one seed (see the module's docstring)."""
    import importlib

    import torch
    import torch.distributed as dist

    from kubenas.bench.curves import TASK, TRAINING, make_task, train_curves
    from kubenas.nn.networks import ModelConfig
    from kubenas.nn.supernet import build_supernet
    from kubenas.oneshot.base import top_distinct
    from kubenas.oneshot.common import OneShotSettings, Shards
    from kubenas.oneshot import ALGORITHM_MODULES
    from kubenas.spaces import build_space

    data = make_task(TASK)
    space = build_space({"type": "nasbench201"})
    settings = OneShotSettings(epochs=epochs or TRAINING.epochs, batch_size=TRAINING.batch_size,
                               learning_rate=TRAINING.learning_rate, momentum=TRAINING.momentum,
                               weight_decay=TRAINING.weight_decay, grad_clip=TRAINING.grad_clip, seed=seed,
                               top_k=top_k)
    settings = replace(settings, **(parameters or {}))
    torch.manual_seed(seed)
    cfg = ModelConfig(channels=TRAINING.channels, cells_per_stage=TRAINING.cells_per_stage, num_classes=10,
                      in_channels=data.input_shape[0])
    shards = Shards(data.train_x, data.train_y, data.val_x, data.val_y, 0, 1)
    device = torch.device("cpu")
    started = dist.is_initialized()
    if not started:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        module, cls_name = ALGORITHM_MODULES[algorithm].split(":")
        t0 = time.perf_counter()
        algo = getattr(importlib.import_module(module), cls_name)(build_supernet(space, cfg), space, settings,
                                                                   shards, device)
        report: dict[str, float] = {}
        for epoch in range(settings.epochs):
            report = algo.timed_epoch(epoch)
        derived = top_distinct(space, algo.derive(), settings.top_k, by_score=algo.rank_by_score)
        seconds = time.perf_counter() - t0
        cells = list(table)
        genotypes = [{"space": "nasbench201", "cell": c, "hparams": {}} for c in cells]
        metrics = algo.path_metrics(genotypes)
    finally:
        if not started:
            dist.destroy_process_group()
    truth = [table[c] for c in cells]
    tau = kendall_tau([-loss for loss, _ in metrics], truth)
    tau_accuracy = kendall_tau([accuracy for _, accuracy in metrics], truth)
    derived_cells = [d["genotype"]["cell"] for d in derived]
    top = derived_cells[0]
    standalone_seconds = 0.0
    if top in table:
        top_acc, from_table = table[top], True
    else:  # the table is a sample of the space: train the cell alone, in the table's setting
        t1 = time.perf_counter()
        curve = train_curves(top, data, TRAINING, list(range(standalone_seeds)), every_epoch=False)
        standalone_seconds = time.perf_counter() - t1
        top_acc, from_table = 100.0 * statistics.fmean(v[-1] for v in curve.val), False
    return OneShotRun(algorithm, seed, tau, tau_accuracy, top, top_acc, from_table, seconds,
                      standalone_seconds, parameter_free_share(derived_cells), derived_cells,
                      arch_entropy=float(report.get("arch_entropy", math.nan)),
                      supernet_val_acc=float(report.get("val_acc", math.nan)))


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def summary(runs: list[OneShotRun], table_agreement: Optional[dict[str, float]] = None) -> str:
    """The table: per algorithm, mean ± sd over its seeds."""
    lines = [f"{'algorithm':<10}{'seeds':>6}  {'tau (score)':>16}  {'tau (accuracy)':>16}  "
             f"{'top cell val_acc %':>20}  {'trainer-seconds':>18}  {'skip/none share':>16}"]
    for algorithm in sorted({r.algorithm for r in runs}, key=lambda a: ALGORITHMS.index(a)):
        mine = [r for r in runs if r.algorithm == algorithm]
        lines.append(f"{algorithm:<10}{len(mine):>6}  {mean_sd([r.tau for r in mine]):>16}  "
                     f"{mean_sd([r.tau_accuracy for r in mine]):>16}  "
                     f"{mean_sd([r.top_val_acc for r in mine]):>20}  {mean_sd([r.seconds for r in mine]):>18}  "
                     f"{mean_sd([r.parameter_free_share for r in mine]):>16}")
    if table_agreement:
        lines.append("table's own seed-to-seed tau (ceiling): "
                     + ", ".join(f"{k} {v:.3f}" for k, v in table_agreement.items()))
    return "\n".join(lines)


def table_agreement(path: Path) -> Optional[dict[str, float]]:
    """The table's seed-to-seed tau (its per-seed columns), as `learning_curves.py agree` prints it."""
    import numpy as np

    from kubenas.bench.curves import seed_agreement

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    seeds = sorted((k for k in rows[0] if k.startswith("val_acc_s")), key=lambda k: int(k[len("val_acc_s"):]))
    if len(rows) < 3 or len(seeds) < 2:
        return None
    return seed_agreement(np.array([[float(r[k]) for k in seeds] for r in rows]))
