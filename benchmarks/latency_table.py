"""How well a latency table predicts whole networks on this machine.

Builds a table (kubenas.nn.latency_table) for a space at a network size, then
measures the real forward-pass latency of random networks of that space and
compares: Pearson and Spearman correlation, median relative error.

    nice -n 10 python benchmarks/latency_table.py                       # NB201, N=5 F=16, 32x32, CPU, 1 thread
    nice -n 10 python benchmarks/latency_table.py --space darts --channels 16 --cells-per-stage 2
    python benchmarks/latency_table.py --device cuda --networks 100
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="nasbench201", choices=["nasbench201", "darts", "nasnet"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--cells-per-stage", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--networks", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time, not inflated by other work on a shared machine (1 thread)")
    parser.add_argument("--statistic", choices=["median", "min"], default="median",
                        help="of the timed runs, for the table and the networks alike (min: steadier on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibrate", type=int, default=8,
                        help="whole networks the table is calibrated on (other networks than those compared)")
    parser.add_argument("--copies", type=int, default=1,
                        help="time each table entry cycling through this many copies (colder caches, as in a network)")
    parser.add_argument("--json", metavar="FILE", help="also write every network's numbers to FILE")
    args = parser.parse_args(argv)

    import torch
    from scipy.stats import pearsonr, spearmanr

    from kubenas.nn.latency_table import NetworkSize, build_table, measure_network, predict_latency
    from kubenas.spaces import build_space

    torch.set_num_threads(args.threads)
    size = NetworkSize(space=args.space, resolution=args.resolution, channels=args.channels,
                       cells_per_stage=args.cells_per_stage, batch=args.batch)
    began = time.perf_counter()
    table = build_table(size, args.device, repeats=args.repeats, statistic=args.statistic, clock=args.clock,
                        copies=args.copies, calibrate=args.calibrate, seed=args.seed + 1)
    table_seconds = time.perf_counter() - began
    space = build_space(args.space)
    rng = random.Random(args.seed)
    rows = []
    seen = set()
    while len(rows) < args.networks:
        genotype = space.sample(rng)
        key = space.hash(genotype)
        if key in seen:
            continue
        seen.add(key)
        predicted = predict_latency(table, genotype)
        raw = predicted / table.get("calibration", {}).get("scale", 1.0)
        measured = measure_network(genotype, size, args.device, repeats=args.repeats, statistic=args.statistic,
                                   clock=args.clock)
        rows.append({"genotype": genotype, "predicted": predicted, "raw": raw, "measured": measured})
    predicted = [r["predicted"] for r in rows]
    measured = [r["measured"] for r in rows]
    errors = [abs(p - m) / m for p, m in zip(predicted, measured)]
    signed = [(p - m) / m for p, m in zip(predicted, measured)]
    raw_errors = [abs(r["raw"] - r["measured"]) / r["measured"] for r in rows]
    result = {
        "space": args.space, "device": args.device, "torch": torch.__version__, "threads": args.threads, "statistic": args.statistic, "clock": args.clock, "copies": args.copies,
        "resolution": args.resolution, "channels": args.channels, "cells_per_stage": args.cells_per_stage,
        "batch": args.batch, "networks": len(rows), "table_entries": len(table["entries"]),
        "table_seconds": round(table_seconds, 1),
        "pearson": round(float(pearsonr(predicted, measured)[0]), 4),
        "spearman": round(float(spearmanr(predicted, measured)[0]), 4),
        "median_relative_error": round(statistics.median(errors), 4),
        "median_signed_error": round(statistics.median(signed), 4),
        "scale": round(table.get("calibration", {}).get("scale", 1.0), 4),
        "median_relative_error_uncalibrated": round(statistics.median(raw_errors), 4),
        "measured_ms": [round(1000 * min(measured), 3), round(1000 * max(measured), 3)],
    }
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**result, "rows": rows}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
