"""Learning curves of NAS-Bench-201 cells on a real offline task, for the replay benchmark.

The task is made from scikit-learn's bundled digits (1,797 8x8 images, no
download): the images are split by image into train, validation and test, and
every image is distorted once, deterministically (rotation, scaling, shift
and pixel noise), so that the task is hard enough for the cell to matter. Validation and test hold several distorted copies of each of
their images, which averages out which few images a network happens to get
right. Each cell trains with several seeds (each seed its own initialisation,
data order and augmentation) and every epoch's validation and test accuracy
is recorded, so a search that trains a cell for e epochs can read epoch e.

The training loop is the proxy's (kubenas.training.proxy: SGD with Nesterov
momentum, cosine schedule per step, gradient clipping, random shifts) on the
network kubenas builds for the cell (kubenas.nn.build_model); it is repeated
here because the table also needs the test accuracy of every epoch, and
because the seeds of a cell train side by side as one batched network.
"""

from __future__ import annotations

import csv
import itertools
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from kubenas.nn import ModelConfig, build_model, count_parameters, multiply_adds
from kubenas.spaces.nasbench201 import NB201_OPERATIONS, format_cellstr


@dataclass(frozen=True)
class CurveTask:
    """The images: how many of each split, and how they are distorted."""

    train_images: int = 500
    val_images: int = 600  # distinct digits; each appears `eval_copies` times
    test_images: int = 697
    eval_copies: int = 3
    train_copies: int = 1  # distortions of each training digit (more steps per epoch)
    size: int = 8  # side of the (resampled) image
    rotation: float = 0.0  # degrees, uniform in +-rotation
    scale: float = 0.0  # uniform in 1 +- scale
    shift: float = 0.0  # pixels, uniform in +-shift
    noise: float = 0.0  # Gaussian pixel noise (images in [0, 1])
    seed: int = 0


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


@dataclass
class TaskData:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    def to(self, device: str | torch.device) -> "TaskData":
        return TaskData(*(t.to(device) for t in (self.train_x, self.train_y, self.val_x, self.val_y,
                                                  self.test_x, self.test_y)))


def _distort(images: torch.Tensor, task: CurveTask, gen: torch.Generator) -> torch.Tensor:
    """One random affine distortion and noise per image: (n, 1, 8, 8) -> (n, 1, size, size)."""
    n = len(images)
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(task.rotation)
    scale = 1 + (torch.rand(n, generator=gen) * 2 - 1) * task.scale
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * task.shift * 2 / task.size
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [n, 1, task.size, task.size], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if task.noise:
        out = out + task.noise * torch.randn(out.shape, generator=gen)
    return out


def make_task(task: CurveTask) -> TaskData:
    """The three splits, distorted and normalised with the training statistics."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no network

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    y = torch.from_numpy(digits.target.astype(np.int64))
    needed = task.train_images + task.val_images + task.test_images
    if needed > len(x):
        raise ValueError(f"task: {needed} images asked for; digits has {len(x)}")
    gen = torch.Generator().manual_seed(task.seed)
    order = torch.randperm(len(x), generator=gen)
    a, b = task.train_images, task.train_images + task.val_images
    parts = {"train": order[:a], "val": order[a:b], "test": order[b:needed]}
    out = {}
    for name, idx in parts.items():
        copies = task.train_copies if name == "train" else task.eval_copies
        xs = x[idx].repeat(copies, 1, 1, 1)
        out[name] = (_distort(xs, task, gen), y[idx].repeat(copies))
    mean, std = out["train"][0].mean(), out["train"][0].std().clamp_min(1e-6)
    norm = {k: ((v[0] - mean) / std, v[1]) for k, v in out.items()}
    return TaskData(*norm["train"], *norm["val"], *norm["test"])


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


def train_curves(cellstr: str, data: TaskData, cfg: CurveConfig, seeds: list[int]) -> CellCurve:
    """Every seed of one cell, trained side by side as one batched network (torch.func.vmap):
    the same computation as `train_cell` for each seed (its own initialisation, data order,
    augmentation and gradient clipping), 1.5-2.5x faster on a CPU for these small networks.
    Runs on the device `data` is on (initialisation and random draws stay on the CPU)."""
    from torch.func import functional_call, stack_module_state, vmap

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
    params, buffers = stack_module_state(models)
    params = {k: v.detach().to(device).requires_grad_() for k, v in params.items()}
    buffers = {k: v.to(device) for k, v in buffers.items()}
    skeleton = models[0].to(device)

    def forward(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(skeleton, (p, b), (x,))

    train_forward = vmap(forward)
    eval_forward = vmap(forward, in_dims=(0, 0, None))
    weights = list(params.values())
    optimizer = torch.optim.SGD(weights, lr=cfg.learning_rate, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    steps = max(1, math.ceil(len(data.train_x) / cfg.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * steps)
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    alive = torch.ones(len(seeds), dtype=torch.bool, device=device)
    val = [[] for _ in seeds]
    test = [[] for _ in seeds]

    def accuracy(x: torch.Tensor, y: torch.Tensor) -> list[float]:
        skeleton.eval()
        correct = torch.zeros(len(seeds), device=device)
        with torch.no_grad():
            for i in range(0, len(x), 1024):
                logits = eval_forward(params, buffers, x[i:i + 1024])
                correct += (logits.argmax(2) == y[i:i + 1024]).sum(1)
        return [c / len(x) if ok else 0.1 for c, ok in zip(correct.tolist(), alive.tolist())]

    for _ in range(cfg.epochs):
        skeleton.train()
        orders = [torch.randperm(len(data.train_x), generator=g) for g in gens]
        for step in range(steps):
            batches = [order[step * cfg.batch_size:(step + 1) * cfg.batch_size].to(device) for order in orders]
            xb = [data.train_x[idx] for idx in batches]
            if cfg.augment:
                xb = [_shift_augment(x, g) for x, g in zip(xb, gens)]
            yb = torch.stack([data.train_y[idx] for idx in batches])
            logits = train_forward(params, buffers, torch.stack(xb))
            losses = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(len(seeds), -1).mean(1)
            alive &= torch.isfinite(losses).detach()  # a diverged seed scores chance from here on
            optimizer.zero_grad(set_to_none=True)
            torch.where(alive, losses, torch.zeros_like(losses)).sum().backward()
            _clip_per_seed(weights, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
        for acc, into in ((accuracy(data.val_x, data.val_y), val), (accuracy(data.test_x, data.test_y), test)):
            for per_seed, a in zip(into, acc):
                per_seed.append(a)
    curve.val, curve.test = val, test
    curve.seconds = time.perf_counter() - start
    return curve


def _clip_per_seed(weights: list[torch.Tensor], max_norm: float) -> None:
    """clip_grad_norm_ for each seed's slice of the stacked parameters."""
    grads = [w.grad for w in weights if w.grad is not None]
    norms = torch.stack([g.pow(2).flatten(1).sum(1) for g in grads]).sum(0).sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))


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
             log: Callable[[str], None] = print, device: str = "cpu") -> int:
    """Append rows for the first `cells` cells of the seeded order that `path` lacks; resumable."""
    data = make_task(task).to(device)
    if path.is_file():
        with open(path, newline="") as f:
            found = next(csv.reader(f), [])
        if found != header(cfg.epochs, len(seeds)):
            raise ValueError(f"{path}: its columns are not those of {cfg.epochs} epochs and {len(seeds)} seeds; "
                             "resume it with the setting that wrote it, or write a new file")
    done = done_cells(path)
    todo = [(i, c) for i, c in enumerate(all_cells(order_seed)[:cells]) if c not in done]
    new_file = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"{len(done)} cells done, {len(todo)} to go -> {path}")
    with open(path, "a", newline="") as f:
        out = csv.writer(f)
        if new_file:
            out.writerow(header(cfg.epochs, len(seeds)))
            f.flush()
        for n, (index, cell) in enumerate(todo, start=1):
            curve = train_curves(cell, data, cfg, seeds)
            out.writerow(row(index, curve))
            f.flush()
            log(f"{len(done) + n}/{cells} {cell} val {100 * np.mean([v[-1] for v in curve.val]):.2f} "
                f"{curve.seconds:.1f}s")
    return len(todo)


# The setting of benchmarks/data/digits-curves.csv (measured in its README).
TASK = CurveTask(train_images=700, val_images=550, test_images=547, eval_copies=4,
                 rotation=15.0, scale=0.1, shift=0.5, noise=0.1, seed=0)
TRAINING = CurveConfig(channels=4, cells_per_stage=1, epochs=12, batch_size=64, learning_rate=0.05)
SEEDS = tuple(range(16))


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


def iter_rows(path: Path) -> Iterator[dict]:
    with open(path, newline="") as f:
        yield from csv.DictReader(f)
