"""Trainer-seconds of the one-shot searches against the evolution quickstart, at equal accuracy.

    python benchmarks/oneshot_vs_evolution.py --oneshot /tmp/oneshot.json --quickstart /tmp/qvr.json

Reads what two other benchmarks wrote: `kubenas bench oneshot --json` (per algorithm and seed:
the top derived cell's stand-alone validation accuracy and the supernet's seconds) and
`benchmarks/quickstart_vs_random.py --json` (per evolution run: after each trial, the
cumulative trainer-seconds and the best cell so far by observed reward, with that cell's
ground truth from the learning-curve table's setting). Both on the same task (distorted
digits, N=1, F=4, 12 epochs).

For each one-shot algorithm: its accuracy A (mean over its seeds of the top cell's stand-alone
val_acc) and its trainer-seconds (supernet and derivation, plus the stand-alone training of
its top-k derived cells, each costed at the quickstart's mean seconds per trial, since the
search sends them through the same trial queue). For evolution: per run, the trainer-seconds
after which its best cell so far first has a ground-truth val_acc of at least A (runs that
never get there are counted apart). The issue's aim: A in at most a fifth of evolution's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Optional


def seconds_to_reach(run: dict, accuracy: float) -> Optional[float]:
    """Trainer-seconds after which the run's best cell so far has ground truth >= accuracy."""
    truth = run["truth_of_best_so_far"]
    for point in run["trajectory"]:
        known = truth.get(point["best_cell"])
        if known is not None and known["val_acc"] >= accuracy:
            return point["trainer_seconds"]
    return None


def seconds_per_trial(runs: list[dict]) -> float:
    return sum(r["trainer_seconds"] for r in runs) / sum(r["trials"] for r in runs)


def compare(oneshot: list[dict], quickstart: dict, top_k: int) -> list[dict]:
    evolution = [r for r in quickstart["runs"] if r["strategy"] != "random"]
    if not evolution:
        raise ValueError("the quickstart benchmark holds no evolution run")
    per_trial = seconds_per_trial(evolution)
    rows = []
    for algorithm in dict.fromkeys(r["algorithm"] for r in oneshot):
        mine = [r for r in oneshot if r["algorithm"] == algorithm]
        accuracy = statistics.fmean(r["top_val_acc"] for r in mine)
        seconds = statistics.fmean(r["seconds"] for r in mine) + top_k * per_trial
        reached = [s for s in (seconds_to_reach(r, accuracy) for r in evolution) if s is not None]
        rows.append({"algorithm": algorithm, "seeds": len(mine), "accuracy": accuracy, "seconds": seconds,
                     "evolution_runs": len(evolution), "evolution_reached": len(reached),
                     "evolution_seconds": statistics.median(reached) if reached else None,
                     "ratio": seconds / statistics.median(reached) if reached else None})
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oneshot", type=Path, required=True, help="kubenas bench oneshot --json output")
    parser.add_argument("--quickstart", type=Path, required=True, help="quickstart_vs_random.py --json output")
    parser.add_argument("--top-k", type=int, default=3, help="derived cells trained stand-alone (default 3, "
                                                            "the bench's and the strategies' topK)")
    args = parser.parse_args(argv)
    try:
        rows = compare(json.loads(args.oneshot.read_text()), json.loads(args.quickstart.read_text()), args.top_k)
    except (OSError, ValueError, KeyError) as exc:
        print(f"oneshot_vs_evolution: {exc}", file=sys.stderr)
        return 2
    print("| algorithm | seeds | top cell val_acc % | trainer-seconds | evolution runs reaching it | "
          "evolution trainer-seconds (median) | one-shot / evolution |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        evo = f"{r['evolution_seconds']:.0f}" if r["evolution_seconds"] is not None else "never"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "n/a"
        print(f"| {r['algorithm']} | {r['seeds']} | {r['accuracy']:.2f} | {r['seconds']:.0f} | "
              f"{r['evolution_reached']}/{r['evolution_runs']} | {evo} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
