"""DARTS (Liu et al. 2019): a softmax over every edge's operations relaxes the choice; the
architecture parameters (alphas) and the weights are optimised in turns on two halves of
the training data (weights on the first, alphas on the second).

Order 1 takes the alphas' gradient at the current weights. Order 2 differentiates through
one virtual SGD step w' = w - xi * grad_w L_train(w, alpha) (xi the weights' current
learning rate; the virtual step leaves momentum out, as the paper's equations do) and
approximates the Hessian-vector product by finite differences:
    grad_alpha L_val(w', alpha) - xi * (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps)
with w+- = w +- eps * grad_w' L_val(w', alpha) and eps = 0.01 / ||grad_w' L_val(w', alpha)||.

Ranks: each computes the alphas' gradient on its shard, the gradients are averaged
(all-reduce) and every rank takes the same Adam step; rank 0's alphas are then broadcast
as a guard. The weights train data-parallel (DDP) on the mixture with the alphas fixed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kubenas.oneshot.base import OneShotAlgorithm, Scored
from kubenas.oneshot.common import (
    all_reduce_sum,
    average_gradients,
    broadcast_from_rank0,
    entropy_of,
    evaluate,
    rank_batch,
    weight_step,
)
from kubenas.oneshot.derive import derive_from_alphas
from kubenas.training.checkpoints import load_optimizer_parts, optimizer_parts


class Darts(OneShotAlgorithm):
    name = "darts"
    weight_parts = 2
    rank_by_score = False
    samples_paths = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        gen = torch.Generator().manual_seed(self.seed_for(0, stream=7))
        self.alphas = nn.ParameterDict({
            name: nn.Parameter((1e-3 * torch.randn(shape, generator=gen)).to(self.device))
            for name, shape in self.net.arch_shapes().items()})
        self.arch = self.alphas
        self.arch_optimizer = torch.optim.Adam(self.alphas.parameters(), lr=self.settings.arch_learning_rate,
                                               betas=(0.5, 0.999), weight_decay=self.settings.arch_weight_decay)

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: torch.softmax(alpha, dim=-1) for name, alpha in self.alphas.items()}

    # --- the architecture step ------------------------------------------------------------
    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.net(x, weights=self.weights()), y)

    def arch_step(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor) -> None:
        alphas = list(self.alphas.values())
        if self.settings.order == 1:
            grads = torch.autograd.grad(self._loss(x_val, y_val), alphas)
        else:
            grads = self._second_order(x_train, y_train, x_val, y_val)
        for alpha, grad in zip(alphas, grads):
            alpha.grad = grad.detach().clone()
        average_gradients(alphas)
        self.arch_optimizer.step()
        self.arch_optimizer.zero_grad(set_to_none=True)
        broadcast_from_rank0(alphas)

    def _second_order(self, x_train, y_train, x_val, y_val) -> list[torch.Tensor]:
        alphas = list(self.alphas.values())
        params = [p for p in self.net.parameters() if p.requires_grad]
        xi = self.optimizer.param_groups[0]["lr"]
        decay = self.settings.weight_decay
        saved = [p.detach().clone() for p in params]
        grads = torch.autograd.grad(self._loss(x_train, y_train), params, allow_unused=True)
        try:
            with torch.no_grad():  # the virtual step w' (SGD with weight decay, no momentum)
                for p, g in zip(params, grads):
                    p.sub_(xi * ((g if g is not None else 0.0) + decay * p))
            found = torch.autograd.grad(self._loss(x_val, y_val), alphas + params, allow_unused=True)
            d_alpha = found[:len(alphas)]
            d_w = [g if g is not None else torch.zeros_like(p) for g, p in zip(found[len(alphas):], params)]
            eps = 0.01 / (torch.cat([g.flatten() for g in d_w]).norm() + 1e-12)
            hessian = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for p, s, g in zip(params, saved, d_w):
                        p.copy_(s + sign * eps * g)
                hessian.append(torch.autograd.grad(self._loss(x_train, y_train), alphas))
        finally:
            with torch.no_grad():  # back to exactly w
                for p, s in zip(params, saved):
                    p.copy_(s)
        return [da - xi * (hp - hm) / (2 * eps) for da, hp, hm in zip(d_alpha, *hessian)]

    # --- an epoch -----------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, float]:
        s = self.settings
        batch = rank_batch(s, self.shards.world)
        self.net.train()
        seed = self.seed_for(epoch)
        halves = zip(self.shards.batches("train", batch, epoch, seed, part=(0, 2)),
                     self.shards.batches("train", batch, epoch, seed + 1, part=(1, 2)))
        loss_sum = correct = seen = 0.0
        for (xt, yt), (xv, yv) in halves:
            xt, yt, xv, yv = xt.to(self.device), yt.to(self.device), xv.to(self.device), yv.to(self.device)
            self.arch_step(xt, yt, xv, yv)
            fixed = {k: v.detach() for k, v in self.weights().items()}
            loss, right = weight_step(self.ddp, self.optimizer, self.scheduler, xt, yt, s, weights=fixed)
            loss_sum, correct, seen = loss_sum + loss, correct + right, seen + len(yt)
        with torch.no_grad():
            fixed = {k: v.detach() for k, v in self.weights().items()}
        val_loss, val_acc = evaluate(self.net, self.shards, max(256, batch), self.device, weights=fixed)
        loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen], self.device)  # every shard
        return {"train_loss": loss_sum / max(1.0, seen), "train_acc": correct / max(1.0, seen),
                "val_loss": val_loss, "val_acc": val_acc, "arch_entropy": entropy_of(fixed)}

    def derive(self) -> Scored:
        """The derived genotype first, then the next most probable ones, each scored on the
        supernet (batch norm recalibrated); the order stays the alphas'."""
        candidates = derive_from_alphas(self.space, dict(self.alphas.items()), self.settings.top_k,
                                        max_skips=self.settings.max_skips)
        genotypes = [g for g, _ in candidates]
        scores = self.score(genotypes)
        return list(zip(genotypes, scores))

    def arch_state(self):
        return optimizer_parts(self.arch_optimizer, "arch_optimizer")

    def load_arch_state(self, values, tensors) -> None:
        load_optimizer_parts(self.arch_optimizer, values, tensors, "arch_optimizer")
