"""ENAS (Pham et al. 2018): the NASNet policy (kubenas.strategies.policy_gradient's
PolicyLSTM) samples paths of one supernet whose weights all children share. Each epoch
alternates two phases:
  1. the shared weights train for one pass over the training data, each batch on a path
     the policy samples (data-parallel: every rank samples the same path from the same
     generator, and DDP averages the gradients);
  2. the policy trains for `policy_steps` REINFORCE steps: a sampled path's reward is its
     accuracy on a validation batch with the shared weights (each rank scores its shard,
     the counts are all-reduced, so the reward and the update are the same everywhere),
     against an exponential moving average baseline, plus an entropy bonus.
At the end, `policy_samples` paths drawn from the policy are scored on the whole validation
split (batch norm recalibrated per path) and the best distinct ones are kept.
"""

from __future__ import annotations

from typing import Iterator

import torch

from kubenas.oneshot.base import OneShotAlgorithm, Scored
from kubenas.oneshot.common import (
    EVAL_PATHS,
    all_reduce_sum,
    batch_statistics,
    broadcast_from_rank0,
    evaluate,
    rank_batch,
    weight_step,
)
from kubenas.spaces import Genotype
from kubenas.strategies.encoding import Encoding
from kubenas.strategies.policy_gradient import PolicyLSTM
from kubenas.training.checkpoints import load_optimizer_parts, optimizer_parts

class Enas(OneShotAlgorithm):
    name = "enas"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.encoding = Encoding(self.space)
        self.policy = PolicyLSTM(self.encoding.sizes, self.settings.hidden)  # on the CPU: it is tiny
        self.policy.reset_parameters(torch.Generator().manual_seed(self.seed_for(0, stream=7)))
        self.arch = self.policy
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.settings.policy_learning_rate)
        self.baseline: float | None = None

    def sample(self, generator: torch.Generator, n: int = 1) -> list[Genotype]:
        with torch.no_grad():
            actions, _, _ = self.policy(n, generator=generator)
        return [self.encoding.genotype(a) for a in actions.tolist()]

    def _val_batches(self, batch: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cycle = 0
        while True:
            yield from self.shards.batches("val", batch, epoch * 1000 + cycle, self.seed_for(epoch, stream=3))
            cycle += 1

    def train_epoch(self, epoch: int) -> dict[str, float]:
        s = self.settings
        batch = rank_batch(s, self.shards.world)
        gen = torch.Generator().manual_seed(self.seed_for(epoch))
        self.net.train()
        loss_sum = correct = seen = 0.0
        for xb, yb in self.shards.batches("train", batch, epoch, self.seed_for(epoch, stream=1)):
            (genotype,) = self.sample(gen)
            loss, right = weight_step(self.ddp, self.optimizer, self.scheduler, xb.to(self.device),
                                      yb.to(self.device), s, genotype=genotype)
            loss_sum, correct, seen = loss_sum + loss, correct + right, seen + len(yb)
        entropies = self.train_policy(gen, self._val_batches(batch, epoch))
        paths = self.sample(torch.Generator().manual_seed(self.seed_for(epoch, stream=2)), EVAL_PATHS)
        evals = [evaluate(self.net, self.shards, max(256, batch), self.device, genotype=g) for g in paths]
        loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen], self.device)  # every shard
        return {"train_loss": loss_sum / max(1.0, seen), "train_acc": correct / max(1.0, seen),
                "val_loss": sum(e[0] for e in evals) / len(evals), "val_acc": sum(e[1] for e in evals) / len(evals),
                "arch_entropy": sum(entropies) / len(entropies) if entropies else self._entropy(gen)}

    def _entropy(self, gen: torch.Generator) -> float:
        with torch.no_grad():
            return float(self.policy(1, generator=gen)[2].mean())

    def train_policy(self, gen: torch.Generator, val: Iterator[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
        s = self.settings
        entropies = []
        for _ in range(s.policy_steps):
            actions, logp, entropy = self.policy(1, generator=gen)
            genotype = self.encoding.genotype(actions[0].tolist())
            xb, yb = next(val)
            with torch.no_grad(), batch_statistics(self.net):
                right = float((self.net(xb.to(self.device), genotype=genotype).argmax(1) == yb.to(self.device)).sum())
            right, count = all_reduce_sum([right, float(len(yb))], self.device)
            reward = right / max(1.0, count)
            # Against earlier rewards only (as kubenas.strategies.policy_gradient does).
            advantage = 0.0 if self.baseline is None else reward - self.baseline
            self.baseline = reward if self.baseline is None else (
                s.baseline_decay * self.baseline + (1 - s.baseline_decay) * reward)
            loss = -advantage * logp.sum() - s.entropy_weight * entropy.sum()
            self.policy_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.policy_optimizer.step()
            broadcast_from_rank0(list(self.policy.parameters()))
            entropies.append(float(entropy.detach().mean()))
        return entropies

    def derive(self) -> Scored:
        gen = torch.Generator().manual_seed(self.seed_for(10 ** 6, stream=5))
        unique: dict[str, Genotype] = {}
        for genotype in self.sample(gen, max(self.settings.policy_samples, self.settings.top_k)):
            unique.setdefault(self.space.hash(genotype), genotype)
        genotypes = list(unique.values())
        return list(zip(genotypes, self.score(genotypes)))

    def arch_state(self):
        values, tensors = optimizer_parts(self.policy_optimizer, "policy_optimizer")
        values["baseline"] = self.baseline
        return values, tensors

    def load_arch_state(self, values, tensors) -> None:
        load_optimizer_parts(self.policy_optimizer, values, tensors, "policy_optimizer")
        self.baseline = values.get("baseline")
