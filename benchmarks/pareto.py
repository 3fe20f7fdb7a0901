"""Multi-objective search strategies on NAS-Bench-201: accuracy against parameters.

    python benchmarks/pareto.py                 # the table in the issue: 30 seeds, 8 workers, 50 and 100 queries
    python benchmarks/pareto.py parameters      # (re)compute benchmarks/data/nb201-cifar10-parameters.csv

The NAS-Bench-201 table (/work/shared/data/nasbench201/cifar10-12epoch.csv) has
accuracies only. Every cell's parameter count is the project's own: `count_parameters`
of `build_model` for the cell at the benchmark's network size (N = 5 cells per stage,
F = 16, CIFAR-10: 3 input channels, 10 classes), computed once and cached in
benchmarks/data/nb201-cifar10-parameters.csv (index, parameters; a minute or two, see
`compute_parameters`). The script joins the two into a table with a `parameters` column and runs
`kubenas bench strategies --objectives validationAccuracy:max,parameters:min` on it.

Score: the hypervolume of every result a search saw, objectives scaled so that the table's
best value of each is 0, reference point the nadir of the table's true front (17 cells):
val_acc 73.902 %, 1,073,466 parameters, scaled to 1; given as a share of the true front's
hypervolume. Measured (seeds 0-29, 8 asynchronous workers; variants tuned on seeds 100-111):

| strategy                         | 50 queries    | 100 queries   |
|----------------------------------|---------------|---------------|
| random                           | 0.767 ± 0.077 | 0.849 ± 0.042 |
| nsga2 (Optuna, population 50)    | 0.794 ± 0.106 | 0.865 ± 0.051 |
| nsga2, population 20             | 0.801 ± 0.076 | 0.887 ± 0.047 |
| nsga2, population 10             | 0.805 ± 0.080 | 0.883 ± 0.047 |
| evolution, population 30/sample 10 | 0.819 ± 0.076 | 0.912 ± 0.036 |
| local-search (Pareto local search) | 0.853 ± 0.078 | 0.913 ± 0.048 |
| parego (initial 5)               | 0.838 ± 0.100 | 0.940 ± 0.029 |

ParEGO finds 8.7 % more hypervolume than Optuna's NSGA-II at its default population and
6.0 % more than at population 20, after 100 queries. With the reference point at the table's
worst values instead (val_acc 9.712 %, 1,531,546 parameters), where even random search scores
0.979, the same runs give nsga2 0.980, nsga2/20 0.983 and parego 0.992.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = Path(os.environ.get("TABLE", ROOT.parent / "shared" / "data" / "nasbench201" / "cifar10-12epoch.csv"))
PARAMETERS = ROOT / "benchmarks" / "data" / "nb201-cifar10-parameters.csv"
# Optuna's NSGA-II with its default population (50) and with 20, the better of 10, 20 and 50
# on 12 other seeds; evolution with a population of 30 (sample 10), the better of 10, 20, 30.
DEFAULT_STRATEGIES = ("random", "nsga2", "nsga2@p20", "evolution@p30", "local-search", "parego")
DEFAULT_PARAMS = ("nsga2@p20.population=20", "evolution@p30.population=30", "evolution@p30.sample=10")
# NAS-Bench-201's network for CIFAR-10: N = 5 cells per stage, F = 16 filters.
CELLS_PER_STAGE, CHANNELS, CLASSES = 5, 16, 10


def compute_parameters(table: Path = TABLE, out: Path = PARAMETERS, check: int = 300) -> None:
    """Every cell's parameter count, from `build_model` itself. The network's modules depend on
    each edge's operation only (every edge of a NAS-Bench-201 cell has the same width and
    stride), so cells with the same operations in any order have the same count: one network
    per such multiset (210 of them) is built, and `check` other cells, drawn at random, are
    built too and must agree (an exception otherwise)."""
    import random

    import torch

    from kubenas.nn.cost import count_parameters
    from kubenas.nn.networks import ModelConfig, build_model
    from kubenas.spaces.nasbench201 import parse_cellstr

    torch.set_num_threads(1)
    cfg = ModelConfig(channels=CHANNELS, cells_per_stage=CELLS_PER_STAGE, num_classes=CLASSES, in_channels=3)

    def count(cellstr: str) -> int:
        return count_parameters(build_model({"space": "nasbench201", "cell": cellstr, "hparams": {}}, cfg))

    start = time.perf_counter()
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    by_ops: dict[tuple[str, ...], int] = {}
    counts = []
    for row in rows:
        ops = tuple(sorted(parse_cellstr(row["cellstr"])))
        if ops not in by_ops:
            by_ops[ops] = count(row["cellstr"])
        counts.append(by_ops[ops])
    for k in random.Random(0).sample(range(len(rows)), min(check, len(rows))):
        if count(rows[k]["cellstr"]) != counts[k]:
            raise RuntimeError(f"{rows[k]['cellstr']}: its parameter count differs from its operations' multiset's")
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "parameters"])
        writer.writerows([row["index"], n] for row, n in zip(rows, counts))
    tmp.replace(out)
    print(f"{out}: {len(rows)} cells ({len(by_ops)} networks built, {check} cells checked) "
          f"in {time.perf_counter() - start:.0f}s")


def joined_table(directory: str, table: Path = TABLE) -> Path:
    """The accuracy table with a `parameters` column (what `kubenas bench` reads as a cost)."""
    if not PARAMETERS.is_file():
        compute_parameters(table)
    with open(PARAMETERS, newline="") as f:
        parameters = {row["index"]: row["parameters"] for row in csv.DictReader(f)}
    path = Path(directory) / "nb201-cifar10-with-parameters.csv"
    with open(table, newline="") as f, open(path, "w", newline="") as g:
        reader = csv.DictReader(f)
        writer = csv.DictWriter(g, fieldnames=[*reader.fieldnames, "parameters"])
        writer.writeheader()
        for row in reader:
            writer.writerow({**row, "parameters": parameters[row["index"]]})
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="run", choices=("run", "parameters"))
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--budget", default="50,100")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--strategies", default=None, help="default: random, nsga2 and the project's multi-objective strategies")
    parser.add_argument("--param", action="append", default=[])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.what == "parameters":
        compute_parameters()
        return 0
    strategies = args.strategies or ",".join(DEFAULT_STRATEGIES)
    params = [] if args.strategies else list(DEFAULT_PARAMS)
    with tempfile.TemporaryDirectory() as directory:
        table = joined_table(directory)
        command = [sys.executable, "-m", "kubenas.cli", "bench", "strategies", "--table", str(table),
                   "--objectives", "validationAccuracy:max,parameters:min", "--budget", args.budget,
                   "--workers", str(args.workers), "--seeds", str(args.seeds), "--processes", str(args.processes),
                   "--strategies", strategies]
        for item in params + args.param:
            command += ["--param", item]
        if args.json:
            command += ["--json", args.json]
        return subprocess.call(command, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
