"""Weight inheritance on digits: does a child that starts from its parent's weights
reach a better accuracy in the same number of epochs than one trained from scratch?

    python benchmarks/inheritance.py                       # both spaces, the settings below
    python benchmarks/inheritance.py --space nasbench201 --parents 10 --children 3

For each space: train `--parents` random parents for `--parent-epochs` epochs;
give each `--children` children that differ from it in one operation; train
every child for `--child-epochs` epochs twice, from scratch and with
`kubenas.nn.inherit.inherit_weights` (same genotype, same seed, same batches:
a paired comparison). Prints mean ± sd over the children of the accuracy
before training (epoch 0) and after, and of the paired difference. Everything
runs in this process on one torch thread (the machine is shared).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from kubenas.nn import ModelConfig, build_model
from kubenas.nn.inherit import inherit_weights
from kubenas.spaces import Genotype, SearchSpace, build_space
from kubenas.spaces.decisions import Categorical
from kubenas.training.datasets import Splits, load_dataset


@dataclass(frozen=True)
class Recipe:
    """The in-process training both benchmarks use (the proxy trainer's optimiser, no augmentation)."""

    channels: int = 8
    cells_per_stage: int = 1
    batch_size: int = 64
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 3e-4


def new_model(genotype: Genotype, data: Splits, recipe: Recipe, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = ModelConfig(channels=recipe.channels, cells_per_stage=recipe.cells_per_stage,
                      num_classes=data.num_classes, in_channels=data.input_shape[0])
    return build_model(genotype, cfg)


def accuracy(model: torch.nn.Module, data: Splits) -> float:
    model.eval()
    with torch.no_grad():
        return (model(data.val_x).argmax(1) == data.val_y).float().mean().item()


def train(model: torch.nn.Module, data: Splits, recipe: Recipe, epochs: int, seed: int, start_epoch: int = 0,
          total_epochs: Optional[int] = None, hparams: Optional[dict] = None) -> float:
    """Train epochs start_epoch+1 .. start_epoch+epochs of a cosine schedule over `total_epochs`
    (a resumed run continues its schedule); `hparams` (learningRate, momentum, weightDecay,
    batchSize) override the recipe. Returns the validation accuracy."""
    hp = hparams or {}
    lr0 = hp.get("learningRate", recipe.learning_rate)
    momentum = hp.get("momentum", recipe.momentum)
    batch = int(hp.get("batchSize", recipe.batch_size))
    total = total_epochs or epochs
    optimizer = torch.optim.SGD(model.parameters(), lr=lr0, momentum=momentum, nesterov=momentum > 0,
                                weight_decay=hp.get("weightDecay", recipe.weight_decay))
    gen = torch.Generator().manual_seed(seed)
    steps = max(1, math.ceil(len(data.train_x) / batch))
    for epoch in range(start_epoch, start_epoch + epochs):
        model.train()
        order = torch.randperm(len(data.train_x), generator=gen)
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * lr0 * (1 + math.cos(math.pi * (epoch * steps + step) / (total * steps)))
            idx = order[step * batch:(step + 1) * batch]
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            if not torch.isfinite(loss):
                return 0.0  # diverged, as the proxy trainer reports it
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
    return accuracy(model, data)


def mutate_one_operation(space: SearchSpace, genotype: Genotype, rng: random.Random) -> Genotype:
    """Change one operation decision (an edge's or an operand's op) to another value."""
    assignment = space.encode(genotype)
    ops = [d for d in space.cell_decisions if isinstance(d, Categorical) and d.size > 1
           and (d.name.startswith("edge.") or ".op_" in d.name)]
    decision = rng.choice(ops)
    assignment[decision.name] = rng.choice([c for c in decision.choices if c != assignment[decision.name]])
    return space.decode(assignment)


def mean_sd(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def run_space(space_name: str, data: Splits, args: argparse.Namespace) -> dict:
    spec = {"type": space_name}
    if space_name == "nasnet":
        spec["blocks"] = args.nasnet_blocks
    space = build_space(spec)
    recipe = Recipe(channels=args.channels)
    rng = random.Random(args.seed)
    rows: dict[str, list[float]] = {k: [] for k in ("parent", "scratch0", "inherit0", "scratch", "inherit",
                                                     "diff", "copied")}
    started = time.perf_counter()
    for p in range(args.parents):
        parent_genotype = space.sample(rng)
        parent = new_model(parent_genotype, data, recipe, seed=1000 + p)
        rows["parent"].append(train(parent, data, recipe, args.parent_epochs, seed=1000 + p))
        tensors = {k: v.clone() for k, v in parent.state_dict().items()}
        for c in range(args.children):
            child_genotype = mutate_one_operation(space, parent_genotype, rng)
            seed = 2000 + 100 * p + c
            scratch = new_model(child_genotype, data, recipe, seed)
            inherited = new_model(child_genotype, data, recipe, seed)  # the same fresh weights first
            counts = inherit_weights(inherited, child_genotype, tensors, parent_genotype)
            rows["copied"].append(counts["copied"] / (counts["copied"] + counts["fresh"]))
            rows["scratch0"].append(accuracy(scratch, data))
            rows["inherit0"].append(accuracy(inherited, data))
            rows["scratch"].append(train(scratch, data, recipe, args.child_epochs, seed))
            rows["inherit"].append(train(inherited, data, recipe, args.child_epochs, seed))
            rows["diff"].append(rows["inherit"][-1] - rows["scratch"][-1])
        print(f"  {space_name}: parent {p + 1}/{args.parents} done, {time.perf_counter() - started:.0f} s",
              file=sys.stderr, flush=True)
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", choices=["nasbench201", "nasnet", "darts", "both"], default="both")
    parser.add_argument("--parents", type=int, default=10)
    parser.add_argument("--children", type=int, default=3, help="children per parent")
    parser.add_argument("--parent-epochs", type=int, default=4)
    parser.add_argument("--child-epochs", type=int, default=2)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--nasnet-blocks", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = load_dataset("digits")
    spaces = ["nasbench201", "nasnet"] if args.space == "both" else [args.space]
    print(f"digits, {args.parents} parents x {args.children} children (one operation changed), parents "
          f"{args.parent_epochs} epochs, children {args.child_epochs}; F={args.channels}, N=1"
          f"{f', nasnet B={args.nasnet_blocks}' if 'nasnet' in spaces else ''}; mean ± sd over children")
    print("| space | children | parents' acc | child at epoch 0: scratch / inherited | after "
          f"{args.child_epochs} epoch(s): scratch | inherited | paired gain | tensors copied |")
    print("|---|---|---|---|---|---|---|---|")
    for name in spaces:
        r = run_space(name, data, args)
        print(f"| {name} | {len(r['diff'])} | {mean_sd(r['parent'])} | {mean_sd(r['scratch0'])} / "
              f"{mean_sd(r['inherit0'])} | {mean_sd(r['scratch'])} | {mean_sd(r['inherit'])} | "
              f"{mean_sd(r['diff'])} | {statistics.fmean(r['copied']):.0%} |", flush=True)


if __name__ == "__main__":
    main()
