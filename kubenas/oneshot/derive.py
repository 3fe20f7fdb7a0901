"""Discrete genotypes from architecture weights (DARTS' derivation), and the next best ones.

The paper's rule, per space:
  - darts: at each node keep the two incoming edges whose strongest operation other than
    `none` is strongest, each with that operation (Liu et al. 2019, section 2.4);
  - nasbench201: at each edge its strongest operation other than `none` (a cell of all
    `none` computes nothing);
  - nasnet: per operand of a block, its strongest input and its strongest operation (the
    two softmaxes of the mixture, see kubenas/nn/supernet.py); the combine is the space's
    `add` when it allows it (the mixture adds), else `concat`.

Scores are log-probabilities under the softmaxes, so the argmax genotype is first and the
others follow by total log-probability (k-best over independent decisions, best first);
genotypes equal under the space's canonical hash count once.

DARTS' known collapse (Zela et al. 2020; Chen et al. 2019): the parameter-free skip_connect
gains weight early because it trains fastest, and derived cells fill up with it. As P-DARTS
does, `max_skips` caps the skip connections of a derived cell (per cell type): the
enumeration above skips genotypes with more, so the first one kept is the most probable cell
within the cap. When none within the cap is found in `max_tries`, the uncapped ones are kept.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Callable, Iterator

import torch

from kubenas.spaces import Genotype, SearchSpace
from kubenas.spaces.nasbench201 import EDGES, format_cellstr
from kubenas.spaces.nasnet import CELL_TYPES

Option = tuple[float, Any]  # (log-probability, choice)


def _ranked(log_probs: torch.Tensor, names: tuple[str, ...], drop_none: bool = True) -> list[Option]:
    options = [(float(lp), name) for lp, name in zip(log_probs.tolist(), names)
               if not (drop_none and name == "none" and len(names) > 1)]
    return sorted(options, key=lambda o: -o[0])


def _decisions(space: SearchSpace, alphas: dict[str, torch.Tensor], width: int
               ) -> tuple[list[list[Option]], Callable[[list[Any]], Genotype]]:
    """Independent decisions (options best first) and the genotype of one choice per decision."""
    logp = {k: torch.log_softmax(v.detach().float().cpu(), dim=-1) for k, v in alphas.items()}
    ops = tuple(space.operations)
    if space.name == "nasbench201":
        decisions = [_ranked(logp["cell"][e], ops) for e in range(len(EDGES))]
        return decisions, lambda chosen: {"space": space.name, "cell": format_cellstr(list(chosen)), "hparams": {}}
    if space.name == "darts":
        decisions = []
        for kind in CELL_TYPES:
            for n in range(space.blocks):
                first = n * (n + 3) // 2
                per_edge = [_ranked(logp[kind][first + src], ops)[:width] for src in range(2 + n)]
                pairs = []
                for i, j in itertools.combinations(range(2 + n), 2):
                    for (lp_i, op_i), (lp_j, op_j) in itertools.product(per_edge[i], per_edge[j]):
                        pairs.append((lp_i + lp_j, {"inputs": [i, j], "ops": [op_i, op_j]}))
                decisions.append(sorted(pairs, key=lambda o: -o[0])[:width])

        def darts_genotype(chosen: list[Any]) -> Genotype:
            nodes = iter(chosen)
            return {"space": space.name, **{kind: [next(nodes) for _ in range(space.blocks)] for kind in CELL_TYPES},
                    "hparams": {}}
        return decisions, darts_genotype
    combine = "add" if "add" in space.combines else space.combines[0]
    decisions = []
    for kind in CELL_TYPES:
        for b in range(space.blocks):
            for p in range(2):
                decisions.append(_ranked(logp[f"{kind}_inputs_{b}"][p], tuple(range(2 + b)), drop_none=False))
                decisions.append(_ranked(logp[f"{kind}_ops"][b, p], ops))

    def nasnet_genotype(chosen: list[Any]) -> Genotype:
        it = iter(chosen)
        cells = {}
        for kind in CELL_TYPES:
            blocks = []
            for _ in range(space.blocks):
                in_a, op_a, in_b, op_b = next(it), next(it), next(it), next(it)
                blocks.append({"inputs": [in_a, in_b], "ops": [op_a, op_b], "combine": combine})
            cells[kind] = blocks
        return {"space": space.name, **cells, "hparams": {}}
    return decisions, nasnet_genotype


def k_best(decisions: list[list[Option]]) -> Iterator[tuple[float, list[int]]]:
    """Choices (one index per decision) by total score, best first (lazy best-first search)."""
    start = tuple(0 for _ in decisions)
    total = sum(d[0][0] for d in decisions)
    heap = [(-total, start)]
    seen = {start}
    while heap:
        neg, idx = heapq.heappop(heap)
        yield -neg, list(idx)
        for d, i in enumerate(idx):
            if i + 1 < len(decisions[d]):
                nxt = idx[:d] + (i + 1,) + idx[d + 1:]
                if nxt not in seen:
                    seen.add(nxt)
                    score = -neg - decisions[d][i][0] + decisions[d][i + 1][0]
                    heapq.heappush(heap, (-score, nxt))


def skip_count(genotype: Genotype) -> int:
    """skip_connect operations of a genotype's cell (the largest count over its cell types)."""
    from kubenas.spaces.nasbench201 import parse_cellstr

    if "cell" in genotype:
        return parse_cellstr(genotype["cell"]).count("skip_connect")
    return max(sum(op == "skip_connect" for block in genotype[kind] for op in block["ops"]) for kind in CELL_TYPES)


def derive_from_alphas(space: SearchSpace, alphas: dict[str, torch.Tensor], k: int = 1,
                       max_tries: int = 2000, max_skips: int | None = None) -> list[tuple[Genotype, float]]:
    """The derived genotype first, then the next most probable ones: up to `k` genotypes
    distinct by canonical hash, each with its log-probability, every one valid in `space`;
    with `max_skips`, only cells with at most that many skip connections (see above)."""
    decisions, build = _decisions(space, alphas, width=max(2, k + 1) if max_skips is None else max(4, k + 1))
    out: list[tuple[Genotype, float]] = []
    over_cap: list[tuple[Genotype, float]] = []
    hashes: set[str] = set()
    for tries, (score, idx) in enumerate(k_best(decisions)):
        if len(out) >= k or tries >= max_tries:
            break
        genotype = space.validate(build([decisions[d][i][1] for d, i in enumerate(idx)]))
        h = space.hash(genotype)
        if h not in hashes:
            hashes.add(h)
            if max_skips is not None and skip_count(genotype) > max_skips:
                over_cap.append((genotype, score))
            else:
                out.append((genotype, score))
    return out or over_cap[:k]
