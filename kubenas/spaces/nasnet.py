"""The NASNet search space (Zoph et al. 2018, section 3).

A cell has B blocks. Each block picks two hidden states (the two cell inputs,
or an earlier block of the same cell), an operation for each, and a combine.
Blocks no other block consumes are concatenated into the cell's output.
Input 0 is the output of cell k-2, input 1 of cell k-1, input 2+j is block j.

A genotype may instead say which hidden states each cell concatenates, with
the same numbering: `"concat": {"normal": [0, 2, 3, 4, 5, 6]}`. The published
NASNet-A needs it (its reference implementation concatenates the k-2 input in
the normal cell, and in the reduction cell a block that another block
consumes). The list must hold every block nothing consumes; it is not a
searched decision, so samples never carry it.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

from kubenas.errors import InvalidGenotype, InvalidSpec
from kubenas.spaces.base import (
    Genotype,
    SearchSpace,
    check_choice,
    check_input,
    check_learnable,
    expression_canonical,
    validate_model,
)
from kubenas.spaces.decisions import Assignment, Categorical, Decision

# The 13 operations of the paper, in its order.
NASNET_OPERATIONS: tuple[str, ...] = (
    "identity",
    "conv_1x3_3x1",
    "conv_1x7_7x1",
    "dil_conv_3x3",
    "avg_pool_3x3",
    "max_pool_3x3",
    "max_pool_5x5",
    "max_pool_7x7",
    "conv_1x1",
    "conv_3x3",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "sep_conv_7x7",
)
COMBINES: tuple[str, ...] = ("add", "concat")
CELL_TYPES = ("normal", "reduction")


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: tuple[StrictInt, StrictInt]
    ops: tuple[StrictStr, StrictStr]
    combine: Literal["add", "concat"]


class _Concat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    normal: Optional[list[StrictInt]] = None
    reduction: Optional[list[StrictInt]] = None


class _Cells(BaseModel):
    model_config = ConfigDict(extra="forbid")
    normal: list[_Block]
    reduction: list[_Block]
    concat: Optional[_Concat] = None


def unused_blocks(blocks: list[dict]) -> list[int]:
    """Blocks that no later block consumes: they form the cell's output."""
    used = {i - 2 for block in blocks for i in block["inputs"] if i >= 2}
    return [b for b in range(len(blocks)) if b not in used]


def cell_outputs(genotype: Genotype, cell: str) -> list[int]:
    """The hidden states (0, 1 the cell inputs, 2+j block j) a cell concatenates."""
    concat = (genotype.get("concat") or {}).get(cell)
    if concat is not None:
        return list(concat)
    if genotype["space"] == "darts":
        return [2 + b for b in range(len(genotype[cell]))]
    return [2 + b for b in unused_blocks(genotype[cell])]


def _check_concat(field: str, states: list[int], blocks: list[dict]) -> list[int]:
    if not states:
        raise InvalidGenotype(f"{field}: is empty; name at least one hidden state to concatenate")
    for k, state in enumerate(states):
        check_input(f"{field}[{k}]", state, 2 + len(blocks))
    if len(set(states)) != len(states):
        raise InvalidGenotype(f"{field}: {states} names a hidden state twice")
    lost = [2 + b for b in unused_blocks(blocks) if 2 + b not in states]
    if lost:
        raise InvalidGenotype(f"{field}: {states} leaves out {lost}, which no block consumes (their work "
                              "would be lost); add them")
    return sorted(states)


class NasnetSpace(SearchSpace):
    name = "nasnet"
    default_blocks = 5
    all_operations = NASNET_OPERATIONS

    def __init__(self, spec=None):
        super().__init__(spec)
        self.blocks = self.spec.blocks or self.default_blocks
        self.operations = self._restricted(self.spec.operations, self.all_operations, "operations")
        check_learnable(self.operations)
        self.combines = self._restricted(self.spec.combines, COMBINES, "combines")

    @staticmethod
    def _restricted(subset, full: tuple[str, ...], field: str) -> tuple[str, ...]:
        if subset is None:
            return full
        for op in subset:
            if op not in full:
                raise InvalidSpec(f"searchSpace.{field}: {op!r} is not accepted; choose from {list(full)}")
        return tuple(op for op in full if op in subset)  # paper order, no duplicates

    @property
    def cell_decisions(self) -> list[Decision]:
        decisions: list[Decision] = []
        for cell in CELL_TYPES:
            for b in range(self.blocks):
                states = tuple(range(2 + b))
                decisions += [
                    Categorical(f"{cell}.{b}.input_a", states),
                    Categorical(f"{cell}.{b}.input_b", states),
                    Categorical(f"{cell}.{b}.op_a", self.operations),
                    Categorical(f"{cell}.{b}.op_b", self.operations),
                    Categorical(f"{cell}.{b}.combine", self.combines),
                ]
        return decisions

    def _decode_cell(self, a: Assignment) -> Genotype:
        return {
            cell: [
                {
                    "inputs": [a[f"{cell}.{b}.input_a"], a[f"{cell}.{b}.input_b"]],
                    "ops": [a[f"{cell}.{b}.op_a"], a[f"{cell}.{b}.op_b"]],
                    "combine": a[f"{cell}.{b}.combine"],
                }
                for b in range(self.blocks)
            ]
            for cell in CELL_TYPES
        }

    def _encode_cell(self, g: Genotype) -> Assignment:
        a: Assignment = {}
        for cell in CELL_TYPES:
            for b, block in enumerate(g[cell]):
                a[f"{cell}.{b}.input_a"], a[f"{cell}.{b}.input_b"] = block["inputs"]
                a[f"{cell}.{b}.op_a"], a[f"{cell}.{b}.op_b"] = block["ops"]
                a[f"{cell}.{b}.combine"] = block["combine"]
        return a

    def _validate_cell(self, data: dict) -> Genotype:
        cells = validate_model(_Cells, data, "genotype")
        out: Genotype = {}
        for cell in CELL_TYPES:
            blocks = getattr(cells, cell)
            if len(blocks) != self.blocks:
                raise InvalidGenotype(f"genotype.{cell}: has {len(blocks)} blocks; this space has B={self.blocks}")
            for b, block in enumerate(blocks):
                where = f"genotype.{cell}[{b}]"
                for k, i in enumerate(block.inputs):
                    check_input(f"{where}.inputs[{k}]", i, 2 + b)
                for k, op in enumerate(block.ops):
                    check_choice(f"{where}.ops[{k}]", op, self.operations)
                check_choice(f"{where}.combine", block.combine, self.combines)
            out[cell] = [{"inputs": list(b.inputs), "ops": list(b.ops), "combine": b.combine} for b in blocks]
        if cells.concat is not None:
            concat = {cell: _check_concat(f"genotype.concat.{cell}", states, out[cell])
                      for cell, states in cells.concat.model_dump(exclude_none=True).items()}
            if concat:
                out["concat"] = concat
        return out

    def _canonical_cell(self, g: Genotype) -> str:
        # The output is part of the expression, so a concat list equal to the default
        # (the unconsumed blocks) hashes like a genotype without one.
        parts = []
        for cell in CELL_TYPES:
            blocks = [(b["combine"], list(zip(b["inputs"], b["ops"]))) for b in g[cell]]
            parts.append(f"{cell}=" + expression_canonical(blocks, cell_outputs(g, cell)))
        return "/".join(parts)
