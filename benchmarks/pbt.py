"""Population-based training against random search on digits, at equal total epochs.

    python benchmarks/pbt.py                   # 3 seeds, the settings below
    python benchmarks/pbt.py --seeds 5 --population 8 --interval 2 --max-epochs 8

The joint space is NAS-Bench-201 cells with the learning rate, momentum, weight
decay and batch size searched. PBT (`make_strategy("pbt", ...)`) runs with
`--workers` intervals in flight that finish in a seeded random order; each
interval resumes its parent's weights in this process (the trainer's
`warm_start="resume"`: weights loaded, a fresh optimiser with the member's
hyperparameters) and trains `trial.fidelity` epochs, continuing a cosine
schedule over `--max-epochs` at the checkpoint's epoch. Random search trains architectures of the same space from
scratch for `--max-epochs` epochs each until it has spent the epochs PBT spent.
Both report the best validation accuracy of a model trained `--max-epochs`
epochs; mean ± sd over seeds. One process, one torch thread.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from typing import Optional

import torch

# benchmarks/ is on sys.path when this runs as a script: share the training recipe.
from inheritance import Recipe, mean_sd, new_model, train

from kubenas.spaces import build_space
from kubenas.strategies import Result, SearchExhausted, make_strategy
from kubenas.strategies.base import derive_seed
from kubenas.training.datasets import Splits, load_dataset

SPACE = {
    "type": "nasbench201",
    "hyperparameters": [
        {"name": "learningRate", "type": "float", "low": 0.003, "high": 0.5, "log": True},
        {"name": "momentum", "type": "float", "low": 0.0, "high": 0.95},
        {"name": "weightDecay", "type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        {"name": "batchSize", "type": "categorical", "choices": [32, 64, 128]},
    ],
}


def run_pbt(data: Splits, recipe: Recipe, args: argparse.Namespace, seed: int) -> tuple[float, int, int]:
    """Best accuracy of a member that finished, epochs spent, exploits."""
    space = build_space(SPACE)
    pbt = make_strategy("pbt", space, seed=seed, population=args.population, perturbation_interval=args.interval,
                        max_epochs=args.max_epochs, quantile_fraction=args.quantile_fraction,
                        resample_probability=args.resample_probability)
    order = random.Random(seed)
    checkpoints: dict[str, tuple[dict, int]] = {}  # trial id -> (weights, epochs trained)
    running, spent, best = [], 0, 0.0
    while True:
        try:
            running += pbt.ask(args.workers - len(running))
        except SearchExhausted:
            pass
        if not running:
            break
        trial = running.pop(order.randrange(len(running)))
        model = new_model(trial.genotype, data, recipe, seed=derive_seed(seed, trial.id))
        start = 0
        if trial.warm_start == "resume" and trial.parent_id is not None:
            weights, start = checkpoints[trial.parent_id]
            model.load_state_dict(weights)
        acc = train(model, data, recipe, trial.fidelity, seed=derive_seed(seed, trial.id, "data"),
                    start_epoch=start, total_epochs=args.max_epochs, hparams=trial.genotype["hparams"])
        spent += trial.fidelity
        checkpoints[trial.id] = ({k: v.clone() for k, v in model.state_dict().items()}, start + trial.fidelity)
        pbt.tell(trial.id, Result(reward=acc, epochs=trial.fidelity))
        if start + trial.fidelity >= args.max_epochs:
            best = max(best, acc)
        # Keep only what a member may still resume from, or an issued interval will load.
        needed = pbt.checkpoints_needed() | {t.parent_id for t in running}
        checkpoints = {k: v for k, v in checkpoints.items() if k in needed}
    return best, spent, int(pbt.stats()["pbt_exploits"])


def run_random(data: Splits, recipe: Recipe, args: argparse.Namespace, seed: int, epochs: int) -> tuple[float, int]:
    space = build_space(SPACE)
    search = make_strategy("random", space, seed=seed)
    spent, best, trials = 0, 0.0, 0
    while spent < epochs:
        trial = search.ask(1)[0]
        model = new_model(trial.genotype, data, recipe, seed=derive_seed(seed, trial.id))
        acc = train(model, data, recipe, args.max_epochs, seed=derive_seed(seed, trial.id, "data"),
                    hparams=trial.genotype["hparams"])
        spent += args.max_epochs
        trials += 1
        best = max(best, acc)
        search.tell(trial.id, Result(reward=acc, epochs=args.max_epochs))
    return best, trials


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--interval", type=int, default=2, help="perturbation_interval (epochs)")
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--quantile-fraction", type=float, default=0.25)
    parser.add_argument("--resample-probability", type=float, default=0.25)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--channels", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = load_dataset("digits")
    recipe = Recipe(channels=args.channels)
    pbt_best, rs_best, spent_all, exploits_all, rs_trials = [], [], [], [], []
    started = time.perf_counter()
    for seed in range(args.seeds):
        best, spent, exploits = run_pbt(data, recipe, args, seed)
        rs, trials = run_random(data, recipe, args, seed, spent)
        pbt_best.append(best), rs_best.append(rs), spent_all.append(spent), exploits_all.append(exploits)
        rs_trials.append(trials)
        print(f"  seed {seed}: pbt {best:.3f} ({spent} epochs, {exploits} exploits), random {rs:.3f} "
              f"({trials} trials); {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    print(f"digits, NB201 cells + learningRate, momentum, weightDecay, batchSize; F={args.channels}, N=1; "
          f"PBT population {args.population}, interval {args.interval}, max {args.max_epochs} epochs, "
          f"{args.workers} in flight; {args.seeds} seeds, mean ± sd")
    print("| search | best val acc at max epochs | epochs spent | trials | exploits |")
    print("|---|---|---|---|---|")
    print(f"| pbt | {mean_sd(pbt_best)} | {statistics.fmean(spent_all):.0f} | "
          f"{args.population} members | {statistics.fmean(exploits_all):.1f} |")
    print(f"| random | {mean_sd(rs_best)} | {statistics.fmean(r * args.max_epochs for r in rs_trials):.0f} | "
          f"{statistics.fmean(rs_trials):.1f} | - |")
    print(f"paired (pbt - random): {mean_sd([p - r for p, r in zip(pbt_best, rs_best)])}")


if __name__ == "__main__":
    main()
