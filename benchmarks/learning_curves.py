"""Learning curves of NAS-Bench-201 cells on distorted digits (offline), for `kubenas bench strategies`.

    python benchmarks/learning_curves.py generate --cells 1000      # resumable: run it again to go on
    python benchmarks/learning_curves.py agree                        # do two halves of the seeds agree?
    python benchmarks/learning_curves.py pilot --cells 60 --seeds 4   # try a setting on a few cells

`generate` appends one row per cell to benchmarks/data/digits-curves.csv (the
first --cells cells of a seeded shuffle of all 15,625, so any prefix is a
uniform sample), skipping cells already there; stop it at any time. One
process, one thread: it shares the machine (`--shard 0/2` and `--shard 1/2` fill
it with two). The setting is
kubenas.bench.curves.TASK / TRAINING / SEEDS (see benchmarks/data/README.md),
kept beside the table in digits-curves.setting.json; a table is never resumed
with another setting. `agree` prints Kendall's tau-b between the mean of the
first half of the seeds and the mean of the second half, over all cells and
over the better half, and what more seeds per half would give. `pilot`
evaluates only the last epoch (most of a cell's cost is evaluation).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from kubenas.bench import curves

DEFAULT_TABLE = Path(__file__).resolve().parent / "data" / "digits-curves.csv"


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def agree(path: Path) -> dict:
    rows = list(curves.iter_rows(path))
    seeds = sorted(int(c[len("val_acc_s"):]) for c in rows[0] if c.startswith("val_acc_s"))
    val = np.array([[float(r[f"val_acc_s{s}"]) for s in seeds] for r in rows])
    out = {"cells": len(rows), "seeds": len(seeds), **curves.seed_agreement(val)}
    if len(seeds) >= 4:  # what fewer seeds would give: the mean of seeds {0, 1} against {2, 3}
        four = curves.seed_agreement(val[:, :4])
        out.update(tau_all_4_seeds=four["tau_all"], tau_better_half_4_seeds=four["tau_better_half"])
    for k in (8, 16):
        predicted = curves.predicted_agreement(val, k)
        out[f"predicted_{k}_per_half"] = {key: round(v, 3) for key, v in predicted.items()}
    out.update(median_val_acc=float(np.median(val.mean(1))),
               seed_sd=float(val.std(1, ddof=1).mean()),
               seconds_per_cell=float(np.mean([float(r["seconds"]) for r in rows])))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("generate", "agree", "pilot"))
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE, help=f"the CSV (default {DEFAULT_TABLE})")
    parser.add_argument("--cells", type=int, default=1000, help="cells the table should hold (default 1000)")
    parser.add_argument("--seeds", type=int, default=len(curves.SEEDS), help="pilot: seeds per cell")
    parser.add_argument("--task", default="{}", help="pilot: CurveTask fields as JSON, over the default")
    parser.add_argument("--training", default="{}", help="pilot: CurveConfig fields as JSON, over the default")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (a GPU runs the table in minutes)")
    parser.add_argument("--shard", default="0/1", help="generate: K/N, the K-th of N processes filling the table "
                        "side by side (default 0/1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    if args.what == "agree":
        print(json.dumps(agree(args.table), indent=1))
        return 0
    if args.what == "generate":
        task, cfg, seeds = curves.TASK, curves.TRAINING, list(curves.SEEDS)
        log(f"setting {json.dumps(curves.settings(task, cfg, seeds))}")
        k, _, n = args.shard.partition("/")
        if not (k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
            parser.error(f"--shard {args.shard!r}: expected K/N with 0 <= K < N, e.g. 1/2")
        curves.generate(args.table, args.cells, task, cfg, seeds, log=log, device=args.device,
                        shard=(int(k), int(n)))
        print(json.dumps(agree(args.table), indent=1))
        return 0
    task = replace(curves.TASK, **json.loads(args.task))
    cfg = replace(curves.TRAINING, **json.loads(args.training))
    path = args.table if args.table != DEFAULT_TABLE else Path("/tmp/kubenas-pilot.csv")
    log(f"pilot {json.dumps(curves.settings(task, cfg, list(range(args.seeds))))} -> {path}")
    curves.generate(path, args.cells, task, cfg, list(range(args.seeds)), log=log, device=args.device,
                    every_epoch=False)
    print(json.dumps(agree(path), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
