"""Single-path one-shot (Guo et al. 2020): the supernet trains on one uniformly sampled
path per batch (every rank samples the same path from the same seed); then an evolution
searches the trained supernet, each candidate scored by its validation accuracy with
batch-norm statistics recalibrated for it (the shared running statistics mix every path's).

Evolution, as the paper's: a random population, then `evolution_cycles` rounds in which
the best quarter of everything scored so far breeds the next population, half by mutation
(each decision resampled with `mutation_probability`) and half by uniform crossover;
candidates already scored are not scored again.
"""

from __future__ import annotations

import random

from kubenas.oneshot.base import OneShotAlgorithm, Scored
from kubenas.oneshot.common import EVAL_PATHS, all_reduce_sum, evaluate, rank_batch, weight_step
from kubenas.spaces import Genotype
from kubenas.strategies.encoding import Encoding

class Spos(OneShotAlgorithm):
    name = "spos"

    def train_epoch(self, epoch: int) -> dict[str, float]:
        s = self.settings
        batch = rank_batch(s, self.shards.world)
        rng = random.Random(self.seed_for(epoch))
        self.net.train()
        loss_sum = correct = seen = 0.0
        for xb, yb in self.shards.batches("train", batch, epoch, self.seed_for(epoch, stream=1)):
            loss, right = weight_step(self.ddp, self.optimizer, self.scheduler, xb.to(self.device),
                                      yb.to(self.device), s, genotype=self.space.sample(rng))
            loss_sum, correct, seen = loss_sum + loss, correct + right, seen + len(yb)
        # The same paths every epoch, so the accuracy is comparable across epochs.
        fixed = random.Random(self.seed_for(0, stream=2))
        evals = [evaluate(self.net, self.shards, max(256, batch), self.device, genotype=self.space.sample(fixed))
                 for _ in range(EVAL_PATHS)]
        loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen], self.device)  # every shard
        return {"train_loss": loss_sum / max(1.0, seen), "train_acc": correct / max(1.0, seen),
                "val_loss": sum(e[0] for e in evals) / len(evals), "val_acc": sum(e[1] for e in evals) / len(evals)}

    def derive(self) -> Scored:
        s = self.settings
        encoding = Encoding(self.space)
        rng = random.Random(self.seed_for(10 ** 6, stream=5))
        scores: dict[str, tuple[Genotype, float]] = {}
        tried: set[tuple[int, ...]] = set()  # index vectors (several may share one canonical hash)

        def score(candidates: list[list[int]]) -> None:
            fresh: dict[str, Genotype] = {}
            for indices in candidates:
                tried.add(tuple(indices))
                genotype = encoding.genotype(indices)
                h = self.space.hash(genotype)
                if h not in scores:
                    fresh.setdefault(h, genotype)
            values = self.score(list(fresh.values()))
            scores.update({h: (g, v) for (h, g), v in zip(fresh.items(), values)})

        score([encoding.random(rng) for _ in range(s.evolution_population)])
        for _ in range(s.evolution_cycles):
            if len(tried) >= encoding.cardinality:
                break  # a small space is scored whole: nothing is left to find
            ranked = sorted(scores.values(), key=lambda gv: -gv[1])
            parents = [encoding.indices(g) for g, _ in ranked[:max(2, s.evolution_population // 4)]]
            children = []
            for i in range(s.evolution_population):
                if i % 2 == 0 or len(parents) < 2:  # crossover needs two (distinct) parents
                    child = [rng.randrange(n) if rng.random() < s.mutation_probability else v
                             for v, n in zip(rng.choice(parents), encoding.sizes)]
                    if child in parents:
                        child = encoding.mutate(child, rng)
                else:
                    a, b = rng.sample(parents, 2)
                    child = [x if rng.random() < 0.5 else y for x, y in zip(a, b)]
                children.append(child)
            score(children)
        return list(scores.values())
