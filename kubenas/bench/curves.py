"""Learning curves of NAS-Bench-201 cells on a real offline task, for the replay benchmark.

The task is made from scikit-learn's bundled digits (1,797 8x8 images, no
download): the images are split by image into train, validation and test, and
every image is distorted once, deterministically (rotation, scaling, shift
and pixel noise), so that the task is hard enough for the cell to matter. Validation and test hold several distorted copies of each of
their images, which averages out which few images a network happens to get
right. The task itself is kubenas.training.distorted_digits (also the
trainer's dataset `distorted-digits`, so searches see the same images). Each cell trains with several seeds (each seed its own initialisation,
data order and augmentation) and every epoch's validation and test accuracy
is recorded, so a search that trains a cell for e epochs can read epoch e.

The training loop is the proxy's (kubenas.training.proxy: SGD with Nesterov
momentum, cosine schedule per step, gradient clipping, random shifts) on the
network kubenas builds for the cell (kubenas.nn.build_model); it is repeated
here because the table also needs the test accuracy of every epoch, and
because the seeds of a cell train side by side as one batched network.
"""

from __future__ import annotations

import copy
import csv
import fcntl
import itertools
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.optimization import fuse as fuse_conv_bn

from kubenas.nn import ModelConfig, build_model, count_parameters, multiply_adds
from kubenas.spaces.nasbench201 import NB201_OPERATIONS, format_cellstr
from kubenas.training.distorted_digits import TASK, CurveTask, TaskData, make_task  # noqa: F401 - re-exported


@dataclass(frozen=True)
class CurveConfig:
    """The network and its training (the proxy's settings)."""

    channels: int = 8  # F
    cells_per_stage: int = 1  # N
    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    augment: bool = True


def _shift_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to size/8 pixels (pad and crop), as the proxy does."""
    n, c, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    # Offsets from the seed's generator on the CPU: the same draws on any device.
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])[:, None, :, None].expand(n, c, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])[:, None, None, :].expand(n, c, h, w)
    return out.gather(3, cols)


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 1024):
            correct += (model(x[i:i + 1024]).argmax(1) == y[i:i + 1024]).sum().item()
    return correct / len(x)


@dataclass
class CellCurve:
    cellstr: str
    parameters: int
    multiply_adds: int
    val: list[list[float]] = field(default_factory=list)  # [seed][epoch] accuracy in [0, 1]
    test: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0


def train_cell(cellstr: str, data: TaskData, cfg: CurveConfig, seed: int) -> tuple[list[float], list[float], int, int]:
    """One seed of one cell: validation and test accuracy after each epoch, parameters, multiply-adds."""
    torch.manual_seed(seed)
    genotype = {"space": "nasbench201", "cell": cellstr, "hparams": {}}
    model = build_model(genotype, ModelConfig(channels=cfg.channels, cells_per_stage=cfg.cells_per_stage,
                                              num_classes=10, in_channels=data.input_shape[0]))
    params, madds = count_parameters(model), multiply_adds(model, data.input_shape)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    steps = max(1, math.ceil(len(data.train_x) / cfg.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps)
    val, test = [], []
    for _ in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(data.train_x), generator=gen)
        for step in range(steps):
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            xb, yb = data.train_x[idx], data.train_y[idx]
            if cfg.augment:
                xb = _shift_augment(xb, gen)
            loss = F.cross_entropy(model(xb), yb)
            if not torch.isfinite(loss):  # a diverged network scores chance from here on
                val += [0.1] * (cfg.epochs - len(val))
                test += [0.1] * (cfg.epochs - len(test))
                return val, test, params, madds
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
        val.append(_accuracy(model, data.val_x, data.val_y))
        test.append(_accuracy(model, data.test_x, data.test_y))
    return val, test, params, madds


def train_curves(cellstr: str, data: TaskData, cfg: CurveConfig, seeds: list[int],
                 every_epoch: bool = True) -> CellCurve:
    """Every seed of one cell, trained side by side as one network whose layers hold all
    seeds' layers as groups (`_side_by_side`): the same computation as `train_cell` for each
    seed (its own initialisation, data order, augmentation and gradient clipping). One large
    grouped operation per layer instead of one per seed; channels-last, where the 3x3 pooling
    is ten times faster than in the default layout. Runs on the device `data` is on
    (initialisation and random draws stay on the CPU)."""
    start = time.perf_counter()
    genotype = {"space": "nasbench201", "cell": cellstr, "hparams": {}}
    model_cfg = ModelConfig(channels=cfg.channels, cells_per_stage=cfg.cells_per_stage, num_classes=10,
                            in_channels=data.input_shape[0])
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_model(genotype, model_cfg))
    curve = CellCurve(cellstr, count_parameters(models[0]), multiply_adds(models[0], data.input_shape))
    device = data.train_x.device
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    model = _side_by_side(models).to(device=device, memory_format=layout)
    n = len(seeds)
    weights = list(model.parameters())
    optimizer = torch.optim.SGD(weights, lr=cfg.learning_rate, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    steps = max(1, math.ceil(len(data.train_x) / cfg.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps)
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    alive = torch.ones(n, dtype=torch.bool, device=device)
    val = [[] for _ in seeds]
    test = [[] for _ in seeds]

    def accuracy(folded: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        correct = torch.zeros(n, device=device)
        with torch.no_grad():
            for i in range(0, len(x), 1024):  # every seed sees the same images: repeat them per group
                xb = x[i:i + 1024].repeat(1, n, 1, 1).contiguous(memory_format=layout)
                correct += (folded(xb).argmax(2) == y[i:i + 1024, None]).sum(0)
        return [c / len(x) if ok else 0.1 for c, ok in zip(correct.tolist(), alive.tolist())]

    for _ in range(cfg.epochs):
        model.train()
        orders = [torch.randperm(len(data.train_x), generator=g) for g in gens]
        for step in range(steps):
            batches = [order[step * cfg.batch_size:(step + 1) * cfg.batch_size].to(device) for order in orders]
            xb = [data.train_x[idx] for idx in batches]
            if cfg.augment:
                xb = [_shift_augment(x, g) for x, g in zip(xb, gens)]
            yb = torch.stack([data.train_y[idx] for idx in batches], 1)  # (batch, seed)
            logits = model(torch.cat(xb, 1).contiguous(memory_format=layout))  # seed s: channels of group s
            losses = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(-1, n).mean(0)
            alive &= torch.isfinite(losses).detach()  # a diverged seed scores chance from here on
            optimizer.zero_grad(set_to_none=True)
            torch.where(alive, losses, torch.zeros_like(losses)).sum().backward()
            _clip_per_seed(weights, cfg.grad_clip, n)
            optimizer.step()
            scheduler.step()
        # A pilot reads only the last epoch: the others are NaN there, and evaluating them is
        # most of the cost of a cell.
        last = len(val[0]) == cfg.epochs - 1
        model.eval()
        # Batch norm folded into the convolution before it (a copy, for this epoch's evaluation):
        # the same function up to float rounding, a third faster.
        folded = fuse_conv_bn(model) if every_epoch or last else None
        for x, y, into in ((data.val_x, data.val_y, val), (data.test_x, data.test_y, test)):
            acc = accuracy(folded, x, y) if folded is not None else [math.nan] * n
            for per_seed, a in zip(into, acc):
                per_seed.append(a)
    curve.val, curve.test = val, test
    curve.seconds = time.perf_counter() - start
    return curve


class _SeedLinear(nn.Module):
    """The classifiers of all seeds: (batch, seeds * c) -> (batch, seeds, classes)."""

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))  # (seeds, out, in)
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]))
        self.seeds, self.features = len(layers), layers[0].in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unflatten(1, (self.seeds, self.features))
        return torch.einsum("bsi,soi->bso", x, self.weight) + self.bias


def _side_by_side(models: list[nn.Module]) -> nn.Module:
    """One network holding the seeds' networks as groups: seed s owns channels
    [s * c, (s + 1) * c) of every layer of width c (convolutions grouped by seed, batch
    norm per channel, so each seed keeps its own batch statistics), and the classifier
    gives (batch, seed, class). Layers without weights act per channel and stay as they are."""
    wide = copy.deepcopy(models[0])
    n = len(models)
    for name, module in list(wide.named_modules()):
        if not name:
            continue
        peers = [m.get_submodule(name) for m in models]
        if isinstance(module, nn.Conv2d):
            new = nn.Conv2d(n * module.in_channels, n * module.out_channels, module.kernel_size, module.stride,
                            module.padding, module.dilation, groups=n * module.groups,
                            bias=module.bias is not None, padding_mode=module.padding_mode)
            new.weight = nn.Parameter(torch.cat([p.weight.detach() for p in peers]))
            if module.bias is not None:
                new.bias = nn.Parameter(torch.cat([p.bias.detach() for p in peers]))
        elif isinstance(module, nn.BatchNorm2d):
            new = nn.BatchNorm2d(n * module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
            for key, value in module.named_parameters(recurse=False):
                setattr(new, key, nn.Parameter(torch.cat([p.get_parameter(key).detach() for p in peers])))
            for key in ("running_mean", "running_var"):
                if getattr(module, key) is not None:
                    setattr(new, key, torch.cat([p.get_buffer(key) for p in peers]))
            if module.num_batches_tracked is not None:
                new.num_batches_tracked = module.num_batches_tracked.clone()
        elif isinstance(module, nn.Linear):
            new = _SeedLinear(peers)
        elif next(module.parameters(recurse=False), None) is not None:
            raise TypeError(f"{name}: {type(module).__name__} has weights that cannot be laid side by side")
        else:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(wide.get_submodule(parent) if parent else wide, leaf, new)
    return wide


def _clip_per_seed(weights: list[torch.Tensor], max_norm: float, seeds: int) -> None:
    """clip_grad_norm_ for each seed's share of the side-by-side parameters (seed-major)."""
    grads = [w.grad for w in weights if w.grad is not None]
    norms = torch.stack([g.reshape(seeds, -1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:  # dim 0 is seed-major in every layer (channels-last moves only the others)
        g.mul_(coef.repeat_interleave(len(g) // seeds).view(-1, *([1] * (g.dim() - 1))))


def all_cells(seed: int = 0) -> list[str]:
    """The 15,625 NAS-Bench-201 cells in a seeded order: any prefix is a uniform sample."""
    cells = [format_cellstr(list(ops)) for ops in itertools.product(NB201_OPERATIONS, repeat=6)]
    random.Random(seed).shuffle(cells)
    return cells


# The table: one row per cell. Accuracies in percent (as NAS-Bench-201's tables).
# val_acc/test_acc are the last epoch's mean over seeds (what `load_table` reads),
# val_acc_eE/test_acc_eE the mean over seeds after E epochs, val_acc_sS/test_acc_sS
# seed S's last epoch (to check that seeds agree).

def header(epochs: int, seeds: int) -> list[str]:
    return (["index", "cellstr", "parameters", "multiply_adds", "seconds", "val_acc", "test_acc"]
            + [f"val_acc_e{e}" for e in range(1, epochs + 1)] + [f"test_acc_e{e}" for e in range(1, epochs + 1)]
            + [f"val_acc_s{s}" for s in range(seeds)] + [f"test_acc_s{s}" for s in range(seeds)])


def row(index: int, curve: CellCurve) -> list:
    def pct(v: float) -> str:
        return f"{100 * v:.2f}"

    val_mean = np.mean(curve.val, axis=0)
    test_mean = np.mean(curve.test, axis=0)
    return ([index, curve.cellstr, curve.parameters, curve.multiply_adds, f"{curve.seconds:.1f}",
             pct(val_mean[-1]), pct(test_mean[-1])] + [pct(v) for v in val_mean] + [pct(v) for v in test_mean]
            + [pct(v[-1]) for v in curve.val] + [pct(v[-1]) for v in curve.test])


def done_cells(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    with open(path, newline="") as f:
        return {r["cellstr"] for r in csv.DictReader(f)}


def generate(path: Path, cells: int, task: CurveTask, cfg: CurveConfig, seeds: list[int], order_seed: int = 0,
             log: Callable[[str], None] = print, device: str = "cpu", every_epoch: bool = True,
             shard: tuple[int, int] = (0, 1)) -> int:
    """Append rows for the first `cells` cells of the seeded order that `path` lacks; resumable.
    The setting is kept beside the table (`setting_path`), and a table is only ever resumed
    with the setting that began it: rows of two settings never share a file. Shard (k, n)
    takes the missing cells at places k, k + n, k + 2n, ... of the order: n processes fill
    one table side by side, each row appended under an exclusive lock (a cell found in the
    file by then, written by a process of another sharding, is not written twice)."""
    setting = {**settings(task, cfg, seeds), "order_seed": order_seed, "every_epoch": every_epoch}
    kept = setting_path(path)
    if kept.is_file() and json.loads(kept.read_text()) != setting:
        raise ValueError(f"{path} was begun with another setting ({kept}); resume it with that setting, "
                         "or write a new file")
    data = make_task(task).to(device)
    if path.is_file():
        with open(path, newline="") as f:
            found = next(csv.reader(f), [])
        if found != header(cfg.epochs, len(seeds)):
            raise ValueError(f"{path}: its columns are not those of {cfg.epochs} epochs and {len(seeds)} seeds; "
                             "resume it with the setting that wrote it, or write a new file")
    done = done_cells(path)
    # A shard owns the cells whose place in the order is k mod n: the split does not depend
    # on what was done when each process started, so two shards never train the same cell.
    todo = [(i, c) for i, c in enumerate(all_cells(order_seed)[:cells])
            if c not in done and i % shard[1] == shard[0]]
    new_file = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not kept.is_file():
        kept.write_text(json.dumps(setting, indent=1) + "\n")
    log(f"{len(done)} cells done, {len(todo)} to go -> {path}")
    with open(path, "a", newline="") as f:
        out = csv.writer(f)
        if new_file:
            out.writerow(header(cfg.epochs, len(seeds)))
            f.flush()
        for n, (index, cell) in enumerate(todo, start=1):
            curve = train_curves(cell, data, cfg, seeds, every_epoch=every_epoch)
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                if cell in done_cells(path):
                    log(f"{cell} is in the table already (another process wrote it): not written again")
                    continue
                out.writerow(row(index, curve))
                f.flush()
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
            log(f"{len(done) + n}/{cells} {cell} val {100 * np.mean([v[-1] for v in curve.val]):.2f} "
                f"{curve.seconds:.1f}s")
    return len(todo)


# The setting of benchmarks/data/digits-curves.csv (measured in its README).
# TASK: the task's own module (it is also the trainer's dataset distorted-digits).
TRAINING = CurveConfig(channels=4, cells_per_stage=1, epochs=12, batch_size=64, learning_rate=0.05)
SEEDS = tuple(range(32))  # 16 per half: seed-to-seed tau 0.84 predicted from 55 cells with 16 seeds


def setting_path(table: Path) -> Path:
    """Where the setting of a table is kept: digits-curves.csv -> digits-curves.setting.json."""
    return table.with_suffix(".setting.json")


def settings(task: CurveTask, cfg: CurveConfig, seeds: list[int]) -> dict:
    return {"task": asdict(task), "training": asdict(cfg), "seeds": seeds}


def seed_agreement(val_by_seed: np.ndarray) -> dict[str, float]:
    """Kendall tau-b between the mean of the first and of the second half of the seeds
    (val_by_seed: cells x seeds), over all cells and over the better half by the overall mean."""
    from scipy.stats import kendalltau

    half = val_by_seed.shape[1] // 2
    a, b = val_by_seed[:, :half].mean(1), val_by_seed[:, half:2 * half].mean(1)
    top = np.argsort(-val_by_seed.mean(1))[: len(val_by_seed) // 2]
    single = kendalltau(val_by_seed[:, 0], val_by_seed[:, 1])[0]
    return {"tau_all": float(kendalltau(a, b)[0]), "tau_better_half": float(kendalltau(a[top], b[top])[0]),
            "tau_single_seed": float(single)}


def predicted_agreement(val_by_seed: np.ndarray, per_half: int) -> dict[str, float]:
    """Kendall tau between two halves of `per_half` seeds each, predicted from the spread:
    the seed variance (within cells) and the cells' variance (of their true means) give the
    reliability r of a mean of k seeds, and tau = 2/pi * asin(r) for normal scores. Lets a
    pilot with few seeds say what more seeds would give."""
    n = val_by_seed.shape[1]
    seed_var = float(val_by_seed.var(1, ddof=1).mean())
    cell_var = max(float(val_by_seed.mean(1).var(ddof=1)) - seed_var / n, 0.0)
    r = cell_var / (cell_var + seed_var / per_half) if cell_var + seed_var > 0 else 0.0
    top = np.argsort(-val_by_seed.mean(1))[: len(val_by_seed) // 2]
    top_var = max(float(val_by_seed[top].mean(1).var(ddof=1)) - float(val_by_seed[top].var(1, ddof=1).mean()) / n, 0.0)
    top_seed = float(val_by_seed[top].var(1, ddof=1).mean())
    r_top = top_var / (top_var + top_seed / per_half) if top_var + top_seed > 0 else 0.0
    return {"tau_all": float(2 / np.pi * np.arcsin(r)), "tau_better_half": float(2 / np.pi * np.arcsin(r_top)),
            "seed_sd": seed_var ** 0.5, "cell_sd": cell_var ** 0.5}


def iter_rows(path: Path) -> Iterator[dict]:
    with open(path, newline="") as f:
        yield from csv.DictReader(f)
