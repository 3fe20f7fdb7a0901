"""Cells: the NASNet/DARTS block cell and the NAS-Bench-201 cell."""

from __future__ import annotations

import torch
from torch import nn

from kubenas.nn.ops import IDENTITY_OPS, FactorizedReduce, OpFactory, ReLUConvBN, drop_path
from kubenas.spaces.nasbench201 import EDGES, NODES
from kubenas.spaces.nasnet import unused_blocks


class BlockCell(nn.Module):
    """A NASNet cell (or a DARTS cell: every block adds, every block is an output).

    blocks: [{"inputs": [i, j], "ops": [a, b], "combine": "add"|"concat"}, ...]
    States 0 and 1 are the outputs of the two previous cells; 2+b is block b.
    In a reduction cell, operations on the cell inputs use stride 2.
    """

    def __init__(self, blocks: list[dict], ops: dict[str, OpFactory], c_prev_prev: int, c_prev: int, c: int,
                 reduction: bool, reduction_prev: bool, outputs: list[int] | None = None):
        """outputs: the hidden states to concatenate (default: the blocks nothing consumes)."""
        super().__init__()
        self.reduction = reduction
        self.blocks = blocks
        # A reduction just before us left the k-2 state at twice our resolution.
        self.pre0 = FactorizedReduce(c_prev_prev, c) if reduction_prev else ReLUConvBN(c_prev_prev, c, 1, 1, 0)
        self.pre1 = ReLUConvBN(c_prev, c, 1, 1, 0)
        state_channels = [c, c]
        self.adapters = nn.ModuleList()
        self.ops = nn.ModuleList()
        self.droppable: list[bool] = []
        for block in blocks:
            for src, name in zip(block["inputs"], block["ops"]):
                # A concat block has 2c channels: project before any op sees it.
                ch = state_channels[src]
                self.adapters.append(nn.Identity() if ch == c else ReLUConvBN(ch, c, 1, 1, 0))
                stride = 2 if reduction and src < 2 else 1
                self.ops.append(ops[name](c, stride))
                # As the reference: every operation but the identity is dropped.
                self.droppable.append(name not in IDENTITY_OPS)
            state_channels.append(2 * c if block.get("combine", "add") == "concat" else c)
        self.outputs = [2 + b for b in unused_blocks(blocks)] if outputs is None else list(outputs)
        # A reduction cell that concatenates a cell input halves it first.
        self.output_reduce = nn.ModuleDict({
            str(state): FactorizedReduce(c, c) for state in self.outputs if reduction and state < 2})
        self.out_channels = sum(state_channels[state] for state in self.outputs)
        self.drop_prob = 0.0

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        k = 0
        for block in self.blocks:
            parts = []
            for src in block["inputs"]:
                h = self.ops[k](self.adapters[k](states[src]))
                if self.training and self.droppable[k]:
                    h = drop_path(h, self.drop_prob)
                parts.append(h)
                k += 1
            if block.get("combine", "add") == "concat":
                states.append(torch.cat(parts, dim=1))
            else:
                states.append(parts[0] + parts[1])
        return torch.cat([self.output_reduce[str(i)](states[i]) if str(i) in self.output_reduce else states[i]
                          for i in self.outputs], dim=1)


class NB201Cell(nn.Module):
    """Node j sums one operation on each earlier node; the output is the last node."""

    def __init__(self, edge_ops: list[str], ops: dict[str, OpFactory], c: int):
        super().__init__()
        self.edges = nn.ModuleList(ops[name](c, 1) for name in edge_ops)
        self.droppable = [name not in IDENTITY_OPS for name in edge_ops]
        self.out_channels = c
        self.drop_prob = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        k = 0
        for j in range(1, NODES):
            total = 0
            for i in range(j):
                assert EDGES[k] == (j, i)
                h = self.edges[k](nodes[i])
                if self.training and self.droppable[k]:
                    h = drop_path(h, self.drop_prob)
                total = total + h
                k += 1
            nodes.append(total)
        return nodes[-1]
