"""Supernets: every candidate operation of every edge or block of a cell space, with
shared weights, for the one-shot algorithms (kubenas/oneshot).

Two forward modes:
  - `model(x, genotype=g)` runs the sampled path of g on the shared weights (ENAS,
    single-path one-shot). The genotype is assumed valid for the space (callers sample
    it from the space or validate it first; `subnet_state_dict` validates).
  - `model(x, weights=w)` runs every operation, weighted by `w` (softmaxes over
    architecture parameters, one tensor per name of `arch_shapes()`), as DARTS does.

Weight names follow the stand-alone networks of `kubenas.nn.networks.build_model`: the
skeleton (stem, reductions, classifier) has the same names, and an operation of a
stand-alone cell (`cells.3.ops.5.*`, `cells.3.edges.2.*`) is one module of the
supernet's candidates (`cells.3.ops.<block>.<input>.<op>.*`, `cells.3.edges.2.<op>.*`).
`subnet_state_dict(g)` is that map: a stand-alone network of g loads it (strict) and
computes what the supernet's path computes.

Sharing and relaxation per space:
  - nasbench201: one set of candidates per edge; the mixture is a softmax per edge
    (shared by all cells), as in DARTS and the NAS-Bench-201 paper's baselines.
  - darts: one set of candidates per (node, input) edge; the mixture sums, at each node,
    every incoming edge's softmax-weighted operations (Liu et al. 2019).
  - nasnet: one set per (block, input) pair, shared by the block's two operands (two
    operands on the same input with the same operation use the same weights). The
    mixture relaxes each operand twice: a softmax over the block's possible inputs and
    a softmax over the operations, h = sum_i p_in(i) sum_o p_op(o) o(state_i); the
    combine is not relaxed (a concat changes the width): the mixture adds, and the
    cell's output concatenates every block (as DARTS' cells do).
    A block that concatenates has twice the channels, and which blocks a cell outputs
    depends on the genotype, so the widths of cell outputs vary: layers that read a
    cell output (the next cells' pre-processing, the classifier) keep a weight for the
    widest layout (a slot per block, 2C wide when concat is allowed) and use the columns
    of the states present.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from kubenas.errors import InvalidGenotype
from kubenas.nn.networks import ModelConfig, ResidualBlock
from kubenas.nn.ops import OPS_BY_SPACE, FactorizedReduce, ReLUConvBN
from kubenas.spaces import SearchSpace
from kubenas.spaces.nasbench201 import EDGES, NODES, parse_cellstr
from kubenas.spaces.nasnet import CELL_TYPES, unused_blocks

Weights = dict[str, torch.Tensor]
Columns = Optional[torch.Tensor]  # input channels of a shared layer in use (None: all)


class Supernet(nn.Module):
    space: SearchSpace

    def arch_shapes(self) -> dict[str, tuple[int, ...]]:
        """Architecture parameters of the mixture mode: name -> shape (softmax over the last dim)."""
        raise NotImplementedError

    def subnet_state_dict(self, genotype: dict) -> dict[str, torch.Tensor]:
        """The weights of `genotype`'s stand-alone network (build_model) taken from the shared ones."""
        raise NotImplementedError

    def _check(self, genotype: dict) -> dict:
        genotype = self.space.validate_architecture(genotype)
        if genotype.get("concat"):
            raise InvalidGenotype("genotype.concat: a supernet path outputs the blocks nothing consumes; "
                                  "explicit concat lists are not searched")
        return genotype


# --- NAS-Bench-201 ----------------------------------------------------------------------------

class NB201SuperCell(nn.Module):
    def __init__(self, operations: tuple[str, ...], c: int):
        super().__init__()
        ops = OPS_BY_SPACE["nasbench201"]
        self.operations = operations
        self.edges = nn.ModuleList(nn.ModuleDict({name: ops[name](c, 1) for name in operations}) for _ in EDGES)

    def forward(self, x: torch.Tensor, edge_ops: Optional[list[str]], weights: Optional[torch.Tensor]):
        nodes = [x]
        k = 0
        for j in range(1, NODES):
            total = 0
            for i in range(j):
                if edge_ops is not None:
                    h = self.edges[k][edge_ops[k]](nodes[i])
                else:
                    h = sum(weights[k, o] * op(nodes[i]) for o, op in enumerate(self.edges[k].values()))
                total = total + h
                k += 1
            nodes.append(total)
        return nodes[-1]


class NB201Supernet(Supernet):
    """NB201Network's skeleton with super cells (names as NB201Network's)."""

    def __init__(self, space: SearchSpace, cfg: ModelConfig):
        super().__init__()
        self.space = space
        self.operations = tuple(space.operations)
        c = cfg.channels
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.cells = nn.ModuleList()
        self.reductions = nn.ModuleDict()
        for stage in range(3):
            if stage > 0:
                self.reductions[str(len(self.cells))] = ResidualBlock(c, 2 * c)
                c *= 2
            for _ in range(cfg.cells_per_stage):
                self.cells.append(NB201SuperCell(self.operations, c))
        self.last = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=False))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, cfg.num_classes)

    def arch_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"cell": (len(EDGES), len(self.operations))}

    def forward(self, x: torch.Tensor, genotype: Optional[dict] = None, weights: Optional[Weights] = None):
        edge_ops = parse_cellstr(genotype["cell"]) if genotype is not None else None
        w = None if genotype is not None else weights["cell"]
        x = self.stem(x)
        for i, cell in enumerate(self.cells):
            if str(i) in self.reductions:
                x = self.reductions[str(i)](x)
            x = cell(x, edge_ops, w)
        return self.classifier(torch.flatten(self.pool(self.last(x)), 1))

    def subnet_state_dict(self, genotype: dict) -> dict[str, torch.Tensor]:
        edge_ops = parse_cellstr(self._check(genotype)["cell"], self.operations)
        out = {}
        for key, value in self.state_dict().items():
            parts = key.split(".")
            if parts[0] == "cells" and parts[2] == "edges":
                if parts[4] != edge_ops[int(parts[3])]:
                    continue
                key = ".".join(parts[:4] + parts[5:])
            out[key] = value
        return out


# --- NASNet and DARTS block cells ----------------------------------------------------------------

def _pre(module: nn.Module, x: torch.Tensor, cols: Columns) -> torch.Tensor:
    """A pre-processing layer on the input channels `cols` of its (widest) weight."""
    if cols is None:
        return module(x)
    if isinstance(module, FactorizedReduce):
        x = module.relu(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        a = F.conv2d(x, module.conv_a.weight[:, cols], stride=2)
        b = F.conv2d(shifted, module.conv_b.weight[:, cols], stride=2)
        return module.bn(torch.cat([a, b], dim=1))
    relu, conv, bn = module
    return bn(F.conv2d(relu(x), conv.weight[:, cols]))


def _pre_state(module: nn.Module, prefix: str, cols: Columns) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in module.state_dict(prefix=prefix).items():
        if cols is not None and key.endswith("weight") and value.dim() == 4:
            value = value[:, cols]
        out[key] = value
    return out


class BlockSuperCell(nn.Module):
    """A NASNet or DARTS cell with every (block, input, operation) candidate.

    `slot`: the channels a block's state may take in the cell's widest output (2c where
    concat is allowed); a cell's output columns index that layout.
    """

    def __init__(self, space_name: str, blocks: int, operations: tuple[str, ...], concat: bool,
                 c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        factories = OPS_BY_SPACE[space_name]
        self.space_name = space_name
        self.blocks = blocks
        self.operations = operations
        self.c = c
        self.slot = 2 * c if concat else c
        self.reduction = reduction
        self.pre0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, 0)
        self.ops = nn.ModuleList(
            nn.ModuleList(nn.ModuleDict({name: factories[name](c, 2 if reduction and src < 2 else 1)
                                         for name in operations}) for src in range(2 + b))
            for b in range(blocks))
        # A concat block has 2c channels: a block reading it projects it first.
        self.adapters = nn.ModuleList(
            nn.ModuleDict({str(src): ReLUConvBN(2 * c, c, 1, 1, 0) for src in range(2, 2 + b)} if concat else {})
            for b in range(blocks))
        self.out_channels = blocks * self.slot

    def outputs(self, blocks: Optional[list[dict]]) -> list[int]:
        """Blocks in the output: all of them in a DARTS cell or a mixture, else those unconsumed."""
        if blocks is None or self.space_name == "darts":
            return list(range(self.blocks))
        return unused_blocks(blocks)

    def columns(self, blocks: Optional[list[dict]]) -> Columns:
        widths = [2 * self.c if blocks is not None and b.get("combine", "add") == "concat" else self.c
                  for b in (blocks or [{}] * self.blocks)]
        outs = self.outputs(blocks)
        if [widths[b] for b in outs] == [self.slot] * self.blocks:
            return None
        return torch.cat([torch.arange(b * self.slot, b * self.slot + widths[b]) for b in outs])

    def forward(self, s0: torch.Tensor, cols0: Columns, s1: torch.Tensor, cols1: Columns,
                blocks: Optional[list[dict]], weights: Optional[Weights], kind: str):
        states = [_pre(self.pre0, s0, cols0), _pre(self.pre1, s1, cols1)]
        for b in range(self.blocks):
            if blocks is not None:
                states.append(self._sampled_block(b, blocks[b], states))
            elif self.space_name == "darts":
                states.append(self._darts_block(b, states, weights[kind]))
            else:
                states.append(self._nasnet_block(b, states, weights[f"{kind}_inputs_{b}"], weights[f"{kind}_ops"][b]))
        out = torch.cat([states[2 + b] for b in self.outputs(blocks)], dim=1)
        return out, self.columns(blocks)

    def _sampled_block(self, b: int, block: dict, states: list[torch.Tensor]) -> torch.Tensor:
        parts = []
        for src, name in zip(block["inputs"], block["ops"]):
            x = states[src]
            if x.shape[1] != self.c:
                x = self.adapters[b][str(src)](x)
            parts.append(self.ops[b][src][name](x))
        if block.get("combine", "add") == "concat":
            return torch.cat(parts, dim=1)
        return parts[0] + parts[1]

    def _darts_block(self, b: int, states: list[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
        first = b * (b + 3) // 2  # edges of earlier nodes: 2 + 3 + ... + (b + 1)
        return sum(w[first + src, o] * op(states[src])
                   for src in range(2 + b) for o, op in enumerate(self.ops[b][src].values()))

    def _nasnet_block(self, b: int, states: list[torch.Tensor], w_in: torch.Tensor, w_op: torch.Tensor):
        # Each (input, op) output is computed once and shared by the two operands.
        outs = [[op(states[src]) for op in self.ops[b][src].values()] for src in range(2 + b)]
        total = 0
        for p in range(2):
            total = total + sum(w_in[p, src] * sum(w_op[p, o] * h for o, h in enumerate(outs[src]))
                                for src in range(2 + b))
        return total


class BlockSupernet(Supernet):
    """CellNetwork's CIFAR skeleton with super cells (names as CellNetwork's)."""

    def __init__(self, space: SearchSpace, cfg: ModelConfig):
        super().__init__()
        if getattr(cfg, "skeleton", "cifar") != "cifar":
            raise ValueError(f"training.skeleton: {cfg.skeleton!r} is not accepted for a supernet; use cifar")
        self.space = space
        self.operations = tuple(space.operations)
        self.blocks = space.blocks
        concat = space.name == "nasnet" and "concat" in space.combines
        c = cfg.channels
        c_stem = cfg.stem_multiplier * c
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
        c_pp, c_p = c_stem, c_stem
        n = cfg.cells_per_stage
        self.layout = ["normal"] * n + ["reduction"] + ["normal"] * n + ["reduction"] + ["normal"] * n
        self.cells = nn.ModuleList()
        reduction_prev = False
        for kind in self.layout:
            reduction = kind == "reduction"
            if reduction:
                c *= 2
            cell = BlockSuperCell(space.name, self.blocks, self.operations, concat, c_pp, c_p, c, reduction,
                                  reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, cell.out_channels
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, cfg.num_classes)

    def arch_shapes(self) -> dict[str, tuple[int, ...]]:
        n_ops = len(self.operations)
        if self.space.name == "darts":
            edges = sum(2 + b for b in range(self.blocks))
            return {kind: (edges, n_ops) for kind in CELL_TYPES}
        shapes: dict[str, tuple[int, ...]] = {}
        for kind in CELL_TYPES:
            shapes.update({f"{kind}_inputs_{b}": (2, 2 + b) for b in range(self.blocks)})
            shapes[f"{kind}_ops"] = (self.blocks, 2, n_ops)
        return shapes

    def forward(self, x: torch.Tensor, genotype: Optional[dict] = None, weights: Optional[Weights] = None):
        s0 = s1 = self.stem(x)
        cols0 = cols1 = None
        for kind, cell in zip(self.layout, self.cells):
            blocks = genotype[kind] if genotype is not None else None
            out, cols = cell(s0, cols0, s1, cols1, blocks, weights, kind)
            s0, cols0, s1, cols1 = s1, cols1, out, cols
        features = torch.flatten(self.pool(s1), 1)
        if cols1 is None:
            return self.classifier(features)
        return F.linear(features, self.classifier.weight[:, cols1], self.classifier.bias)

    def subnet_state_dict(self, genotype: dict) -> dict[str, torch.Tensor]:
        genotype = self._check(genotype)
        out = dict(self.stem.state_dict(prefix="stem."))
        cols = [None, None]  # of the two previous cells' outputs
        for i, (kind, cell) in enumerate(zip(self.layout, self.cells)):
            blocks = genotype[kind]
            prefix = f"cells.{i}."
            out.update(_pre_state(cell.pre0, prefix + "pre0.", cols[0]))
            out.update(_pre_state(cell.pre1, prefix + "pre1.", cols[1]))
            k = 0
            for b, block in enumerate(blocks):
                for src, name in zip(block["inputs"], block["ops"]):
                    if src >= 2 and blocks[src - 2].get("combine", "add") == "concat":
                        out.update(cell.adapters[b][str(src)].state_dict(prefix=f"{prefix}adapters.{k}."))
                    out.update(cell.ops[b][src][name].state_dict(prefix=f"{prefix}ops.{k}."))
                    k += 1
            cols = [cols[1], cell.columns(blocks)]
        weight = self.classifier.weight
        out["classifier.weight"] = weight if cols[1] is None else weight[:, cols[1]]
        out["classifier.bias"] = self.classifier.bias
        return {key: value.detach().clone() for key, value in out.items()}


def build_supernet(space: SearchSpace, cfg: ModelConfig) -> Supernet:
    """The supernet of a (possibly restricted) cell space."""
    if space.name == "nasbench201":
        return NB201Supernet(space, cfg)
    return BlockSupernet(space, cfg)
