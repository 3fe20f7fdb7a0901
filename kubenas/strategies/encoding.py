"""The flat view strategies share: a genotype as one index per decision.

Every decision is treated as a categorical with `size` choices (numeric
decisions are binned, see `kubenas.spaces.decisions`). Mutation and
neighbourhoods work on these index vectors, features for predictors are
one-hot codes of them; the space turns index vectors back into genotypes.
Numpy only: no torch here.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

import numpy as np

from kubenas.spaces import Genotype, SearchSpace
from kubenas.spaces.decisions import Numeric, from_indices, to_indices

Indices = list[int]


class Encoding:
    def __init__(self, space: SearchSpace):
        self.space = space
        self.decisions = space.decisions
        self.sizes: list[int] = [d.size for d in self.decisions]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.width = int(sum(self.sizes))
        self.numeric = [isinstance(d, Numeric) for d in self.decisions]

    @property
    def cardinality(self) -> int:
        return math.prod(self.sizes)

    def indices(self, genotype: Genotype) -> Indices:
        return to_indices(self.decisions, self.space.encode(genotype))

    def genotype(self, indices: Sequence[int]) -> Genotype:
        return self.space.decode(from_indices(self.decisions, [int(i) for i in indices]))

    def random(self, rng: random.Random) -> Indices:
        return [rng.randrange(n) for n in self.sizes]

    def mutate(self, indices: Sequence[int], rng: random.Random) -> Indices:
        """Change one decision to another value (a numeric one moves one bin)."""
        out = list(indices)
        positions = [k for k, n in enumerate(self.sizes) if n > 1]
        if not positions:
            return out
        k = rng.choice(positions)
        if self.numeric[k]:
            step = rng.choice((-1, 1))
            out[k] = out[k] + step if 0 <= out[k] + step < self.sizes[k] else out[k] - step
        else:
            out[k] = (out[k] + rng.randrange(1, self.sizes[k])) % self.sizes[k]
        return out

    def neighbours(self, indices: Sequence[int]) -> list[Indices]:
        """All index vectors one change away (numeric decisions: adjacent bins only)."""
        out: list[Indices] = []
        for k, n in enumerate(self.sizes):
            if self.numeric[k]:
                values = [v for v in (indices[k] - 1, indices[k] + 1) if 0 <= v < n]
            else:
                values = [v for v in range(n) if v != indices[k]]
            for v in values:
                nb = list(indices)
                nb[k] = v
                out.append(nb)
        return out

    def onehot(self, rows: np.ndarray) -> np.ndarray:
        """One-hot codes (float64) of an (m, d) integer array of index vectors."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1, len(self.sizes))
        out = np.zeros((rows.shape[0], self.width))
        out[np.arange(rows.shape[0])[:, None], self.offsets + rows] = 1.0
        return out

    def enumerate_all(self) -> np.ndarray:
        """Every index vector of the space, first decision fastest (small spaces only)."""
        grids = np.meshgrid(*[np.arange(n) for n in self.sizes], indexing="ij")
        return np.stack([g.ravel(order="F") for g in grids], axis=1)
