"""The contract of a one-shot algorithm: train the supernet an epoch at a time, keep its
architecture-side state (alphas, a policy) in step on every rank, save and load that
state for checkpoints, and derive its top genotypes at the end."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kubenas.nn.supernet import Supernet
from kubenas.oneshot.common import (
    OneShotSettings,
    Shards,
    average_gradients,
    broadcast_from_rank0,
    evaluate,
    make_weight_optimizer,
    rank_batch,
    ranks_diverged,
    recalibrate,
    steps_per_epoch,
)
from kubenas.spaces import Genotype, SearchSpace

Scored = list[tuple[Genotype, float]]


class OneShotAlgorithm(ABC):
    name: str
    # Parts of the training split the weights see (DARTS keeps the second half for alphas).
    weight_parts: int = 1
    # Whether the derived genotypes are ranked by supernet score (else in derive()'s order).
    rank_by_score: bool = True
    # Whether each step runs one path (most candidates then get no gradient).
    samples_paths: bool = True

    def __init__(self, supernet: Supernet, space: SearchSpace, settings: OneShotSettings, shards: Shards,
                 device: torch.device):
        self.net = supernet.to(device)
        self.space = space
        self.settings = settings
        self.shards = shards
        self.device = device
        # A path leaves most candidates unused (and a mixture the concat adapters of the nasnet
        # space): DDP must not wait for their gradients.
        adapters = any(True for name, _ in self.net.named_parameters() if ".adapters." in name)
        self.ddp = DistributedDataParallel(self.net, device_ids=[device.index] if device.type == "cuda" else None,
                                           find_unused_parameters=self.samples_paths or adapters)
        steps = settings.epochs * steps_per_epoch(len(shards.train_x), settings, shards.world, self.weight_parts)
        self.optimizer, self.scheduler = make_weight_optimizer(self.net, settings, steps)
        self.arch: nn.Module = nn.Module()  # what a checkpoint stores beside the supernet

    def seed_for(self, epoch: int, stream: int = 0) -> int:
        """The same seed on every rank, so every rank samples the same paths."""
        return (self.settings.seed * 1_000_003 + epoch * 101 + stream) % (2 ** 63)

    def state_module(self) -> nn.Module:
        """The supernet and the architecture-side parameters, as one module for a checkpoint."""
        return nn.ModuleDict({"supernet": self.net, "arch": self.arch})

    def sync(self) -> None:
        """Rank 0's batch-norm statistics everywhere (each rank updated them on its own shard)."""
        broadcast_from_rank0(list(self.net.buffers()))

    @abstractmethod
    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One epoch; returns train_loss, train_acc, val_loss, val_acc and arch_entropy."""

    @abstractmethod
    def derive(self) -> Scored:
        """Genotypes with their supernet scores, best first (distinct by hash)."""

    def arch_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """JSON and tensors of the architecture side beyond `arch`'s parameters (optimizer, baseline)."""
        return {}, {}

    def load_arch_state(self, values: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        pass

    def path_metrics(self, genotypes: list[Genotype]) -> list[tuple[float, float]]:
        """(validation loss, validation accuracy) of each path, starting from the shared weights:
        trained alone for `fine_tune_steps` steps (gradients averaged over the ranks), then batch
        norm re-estimated for it. The supernet is put back after each path. A path whose loss
        stops being finite scores (inf, 0)."""
        s = self.settings
        batch = rank_batch(s, self.shards.world)
        saved = {k: v.clone() for k, v in self.net.state_dict().items()}
        was_training = self.net.training
        metrics = []
        for genotype in genotypes:
            try:
                if not self._fine_tune(genotype):
                    metrics.append((math.inf, 0.0))
                    continue
                recalibrate(self.net, genotype, self.shards, batch, s.calibration_batches, self.device, s.seed)
                metrics.append(evaluate(self.net, self.shards, max(256, batch), self.device, genotype=genotype,
                                        running_stats=True))
            finally:
                self.net.load_state_dict(saved)
                self.net.train(was_training)
        return metrics

    def score(self, genotypes: list[Genotype]) -> list[float]:
        """Each path's supernet score, higher is better: minus its validation loss after
        `path_metrics`. The loss ranks cells closer to their stand-alone accuracy than the
        accuracy itself, which moves by whole images (benchmarks/oneshot.py reports both)."""
        return [-loss for loss, _ in self.path_metrics(genotypes)]

    def _fine_tune(self, genotype: Genotype) -> bool:
        """False when the path's loss stopped being finite. Not through DDP, which expects every
        parameter of a mixture (darts): the path's gradients are averaged by hand."""
        s = self.settings
        if s.fine_tune_steps < 1:
            return True
        self.net.train()
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer, scheduler = make_weight_optimizer(self.net, s, s.fine_tune_steps)
        done = epoch = 0
        while done < s.fine_tune_steps:
            for xb, yb in self.shards.batches("train", rank_batch(s, self.shards.world), epoch,
                                              self.seed_for(epoch, stream=7)):
                loss = F.cross_entropy(self.net(xb.to(self.device), genotype=genotype), yb.to(self.device))
                if ranks_diverged(loss):
                    return False
                grads = torch.autograd.grad(loss, params, allow_unused=True)  # None: not on the path
                for p, grad in zip(params, grads):
                    p.grad = grad
                average_gradients(params)
                nn.utils.clip_grad_norm_(params, s.grad_clip)
                optimizer.step()
                scheduler.step()
                done += 1
                if done == s.fine_tune_steps:
                    break
            epoch += 1
        return True

    def timed_epoch(self, epoch: int) -> dict[str, float]:
        started = time.perf_counter()
        report = self.train_epoch(epoch)
        self.sync()
        report["seconds"] = time.perf_counter() - started
        return report


def top_distinct(space: SearchSpace, scored: Scored, k: Optional[int], by_score: bool = True) -> list[dict[str, Any]]:
    """The best `k` genotypes, one per canonical hash: by score (the first seen wins a tie),
    or in the given order (DARTS ranks by architecture weights, not by supernet score)."""
    seen: set[str] = set()
    out = []
    for genotype, score in (sorted(scored, key=lambda gs: -gs[1]) if by_score else scored):
        h = space.hash(genotype)
        if h in seen:
            continue
        seen.add(h)
        out.append({"genotype": genotype, "hash": h, "score": float(score) if math.isfinite(score) else None})
        if k is not None and len(out) >= k:
            break
    return out
