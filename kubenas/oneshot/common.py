"""What the three one-shot algorithms share: settings, data shards, the weight step on a
sampled path or a mixture, evaluation, batch-norm recalibration, and the collectives that
keep every rank's copy identical.

Pure training logic: no files, no environment. The process group is torch.distributed's
default group (world size 1 included); the worker (kubenas/oneshot/worker.py) sets it up.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler

from kubenas.nn.supernet import Supernet
from kubenas.oneshot.parameters import ALGORITHM_PARAMETERS

# Every algorithm's parameters in one mapping (a name means the same in each algorithm).
_DEFAULTS = {name: value for parameters in ALGORITHM_PARAMETERS.values() for name, value in parameters.items()}


@dataclass(frozen=True)
class OneShotSettings:
    """Hyperparameters of a one-shot search (spec.training plus strategy.parameters)."""

    epochs: int = 10
    # Per step over all ranks: each of W ranks takes batch_size // W (rank_batch, at least 1), so a
    # step sees W * (batch_size // W) images, batch_size rounded down to a multiple of W.
    batch_size: int = 64
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    seed: int = 0
    # The algorithms' parameters: defaults (and why) in kubenas/oneshot/parameters.py.
    top_k: int = _DEFAULTS["top_k"]
    calibration_batches: int = _DEFAULTS["calibration_batches"]
    fine_tune_steps: int = _DEFAULTS["fine_tune_steps"]
    # darts
    order: int = _DEFAULTS["order"]
    arch_learning_rate: float = _DEFAULTS["arch_learning_rate"]
    arch_weight_decay: float = _DEFAULTS["arch_weight_decay"]
    max_skips: int = _DEFAULTS["max_skips"]
    # enas
    policy_steps: int = _DEFAULTS["policy_steps"]
    policy_samples: int = _DEFAULTS["policy_samples"]
    policy_learning_rate: float = _DEFAULTS["policy_learning_rate"]
    entropy_weight: float = _DEFAULTS["entropy_weight"]
    baseline_decay: float = _DEFAULTS["baseline_decay"]
    hidden: int = _DEFAULTS["hidden"]
    # spos
    evolution_population: int = _DEFAULTS["evolution_population"]
    evolution_cycles: int = _DEFAULTS["evolution_cycles"]
    mutation_probability: float = _DEFAULTS["mutation_probability"]


@dataclass
class Shards:
    """The in-memory splits; each rank reads its DistributedSampler shard of them."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    rank: int = 0
    world: int = 1

    def batches(self, which: str, batch: int, epoch: int, seed: int,
                part: Optional[tuple[int, int]] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's shuffled batches of `which` (train or val); `part` = (i, n) takes the i-th of n
        contiguous parts first (DARTS' two halves of the training data). Every rank gets the
        same number of batches (the sampler pads), so collectives stay in step."""
        x, y = (self.train_x, self.train_y) if which == "train" else (self.val_x, self.val_y)
        if part is not None:
            i, n = part
            size = len(x) // n
            x, y = x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]
        sampler = DistributedSampler(range(len(x)), num_replicas=self.world, rank=self.rank, shuffle=True,
                                     seed=seed, drop_last=False)
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.long)
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            yield x[idx], y[idx]

    def validation_shard(self, batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's part of the validation split, in order: every image exactly once over all
        ranks (a padded sampler repeats some, and scores would depend on the world size). Ranks
        may get different numbers of batches: no collective may run per batch."""
        idx = torch.arange(self.rank, len(self.val_x), self.world)
        for start in range(0, len(idx), batch):
            part = idx[start:start + batch]
            yield self.val_x[part], self.val_y[part]


# Sampled paths whose validation accuracy, averaged, is an epoch's supernet accuracy (enas, spos).
EVAL_PATHS = 3


def rank_batch(settings: OneShotSettings, world: int) -> int:
    return max(1, settings.batch_size // world)


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def average_gradients(params: list[torch.Tensor]) -> None:
    """Average .grad over ranks (architecture parameters, which DDP does not wrap)."""
    if world_size() == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world_size())


def broadcast_from_rank0(tensors: list[torch.Tensor]) -> None:
    """Rank 0's values everywhere: a guard against any drift in state all ranks compute."""
    if world_size() == 1:
        return
    nccl = dist.get_backend() == "nccl"
    with torch.no_grad():
        for t in tensors:
            data = t.data if isinstance(t, nn.Parameter) else t
            if nccl and data.device.type == "cpu":  # NCCL moves CUDA tensors only (the ENAS policy is on the CPU)
                staged = data.cuda()
                dist.broadcast(staged, src=0)
                data.copy_(staged.cpu())
            else:
                dist.broadcast(data, src=0)


def digest(state: dict[str, torch.Tensor]) -> str:
    """A short sha256 of every tensor's bytes, in key order: equal on ranks that agree."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def make_weight_optimizer(net: nn.Module, settings: OneShotSettings, steps: int):
    optimizer = torch.optim.SGD(net.parameters(), lr=settings.learning_rate, momentum=settings.momentum,
                                weight_decay=settings.weight_decay, nesterov=settings.momentum > 0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    return optimizer, scheduler


def ranks_diverged(loss: torch.Tensor) -> int:
    """How many ranks' loss is not finite (the same answer on every rank)."""
    return int(all_reduce_sum([0.0 if torch.isfinite(loss) else 1.0], loss.device)[0])


def weight_step(ddp: nn.Module, optimizer, scheduler, xb: torch.Tensor, yb: torch.Tensor, settings: OneShotSettings,
                **forward: Any) -> tuple[float, int]:
    """One data-parallel step of the shared weights; returns (loss sum, correct)."""
    logits = ddp(xb, **forward)
    loss = F.cross_entropy(logits, yb)
    # Every rank decides together: a rank that raised alone would leave the others waiting in
    # DDP's all-reduce until the timeout, and the restarted group would only diverge again.
    diverged = ranks_diverged(loss)
    if diverged:
        raise FloatingPointError(
            f"the supernet's training loss became non-finite on {int(diverged)} of {world_size()} ranks "
            f"(this rank's: {loss.item():g}); training.learningRate {settings.learning_rate:g} is likely "
            "too high: lower it")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(ddp.parameters(), settings.grad_clip)
    optimizer.step()
    scheduler.step()
    return loss.item() * len(yb), int((logits.argmax(1) == yb).sum())


@contextmanager
def batch_statistics(net: nn.Module) -> Iterator[None]:
    """Batch norm on the batch's own statistics, leaving the running ones untouched
    (momentum 0): how a sampled path is scored cheaply on shared weights."""
    saved = [(m, m.momentum, m.training) for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = net.training
    net.eval()
    for m, _, _ in saved:
        m.train()
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, training in saved:
            m.momentum = momentum
            m.train(training)
        net.train(was_training)


def evaluate(net: Supernet, shards: Shards, batch: int, device: torch.device, *, genotype: Optional[dict] = None,
             weights: Optional[dict] = None, running_stats: bool = False) -> tuple[float, float]:
    """(loss, accuracy) over every rank's validation shard (all-reduced: equal on all ranks).
    Batch statistics unless `running_stats` (after recalibration)."""
    correct = loss = seen = 0.0
    context = _eval_running(net) if running_stats else batch_statistics(net)
    with torch.no_grad(), context:
        for xb, yb in shards.validation_shard(batch):
            xb, yb = xb.to(device), yb.to(device)
            logits = net(xb, genotype=genotype, weights=weights)
            loss += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += float((logits.argmax(1) == yb).sum())
            seen += len(yb)
    loss, correct, seen = all_reduce_sum([loss, correct, seen], device)
    return loss / max(1.0, seen), correct / max(1.0, seen)


@contextmanager
def _eval_running(net: nn.Module) -> Iterator[None]:
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)


def recalibrate(net: Supernet, genotype: dict, shards: Shards, batch: int, batches: int, device: torch.device,
                seed: int) -> None:
    """Guo et al. 2020: reset every batch norm's running statistics and re-estimate them
    (a cumulative average) on a few training batches run through this path only."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = net.training
    net.train()
    try:
        with torch.no_grad():
            for i, (xb, _) in enumerate(shards.batches("train", batch, 0, seed)):
                if i >= batches:
                    break
                net(xb.to(device), genotype=genotype)
    finally:
        for m, momentum in zip(bns, saved):
            m.momentum = momentum
        net.train(was_training)


def entropy_of(weights: dict[str, torch.Tensor]) -> float:
    """Mean entropy (nats) of the softmax rows of the architecture weights."""
    values = [-(w * torch.log(w.clamp_min(1e-12))).sum(-1).mean() for w in weights.values()]
    return float(torch.stack(values).mean()) if values else math.nan


def steps_per_epoch(n: int, settings: OneShotSettings, world: int, parts: int = 1) -> int:
    per_rank = math.ceil((n // parts) / world)
    return max(1, math.ceil(per_rank / rank_batch(settings, world)))
