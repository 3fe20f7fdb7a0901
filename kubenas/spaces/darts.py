"""The DARTS cell space (Liu et al. 2019).

Each of 4 intermediate nodes sums two operations applied to two distinct
earlier states (the two cell inputs or an earlier node); the cell output
concatenates every intermediate node. Eight operations, `none` included.
"""

from __future__ import annotations

from itertools import combinations

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr

from kubenas.errors import InvalidGenotype, InvalidSpec
from kubenas.spaces.base import Genotype, check_choice, check_input, expression_canonical, validate_model
from kubenas.spaces.decisions import Assignment, Categorical, Decision
from kubenas.spaces.nasnet import CELL_TYPES, NasnetSpace

DARTS_OPERATIONS: tuple[str, ...] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class _Node(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: tuple[StrictInt, StrictInt]
    ops: tuple[StrictStr, StrictStr]


class _Cells(BaseModel):
    model_config = ConfigDict(extra="forbid")
    normal: list[_Node]
    reduction: list[_Node]


class DartsSpace(NasnetSpace):
    name = "darts"
    default_blocks = 4
    all_operations = DARTS_OPERATIONS

    def __init__(self, spec=None):
        if spec is not None and spec.combines is not None:
            raise InvalidSpec("searchSpace.combines: only the nasnet space has combines; darts always adds")
        super().__init__(spec)
        self.combines = ("add",)

    @property
    def cell_decisions(self) -> list[Decision]:
        decisions: list[Decision] = []
        for cell in CELL_TYPES:
            for n in range(self.blocks):
                # One decision for the unordered pair keeps the two inputs distinct.
                pairs = tuple(combinations(range(2 + n), 2))
                decisions += [
                    Categorical(f"{cell}.{n}.inputs", pairs),
                    Categorical(f"{cell}.{n}.op_a", self.operations),
                    Categorical(f"{cell}.{n}.op_b", self.operations),
                ]
        return decisions

    def _decode_cell(self, a: Assignment) -> Genotype:
        return {
            cell: [
                {"inputs": list(a[f"{cell}.{n}.inputs"]), "ops": [a[f"{cell}.{n}.op_a"], a[f"{cell}.{n}.op_b"]]}
                for n in range(self.blocks)
            ]
            for cell in CELL_TYPES
        }

    def _encode_cell(self, g: Genotype) -> Assignment:
        a: Assignment = {}
        for cell in CELL_TYPES:
            for n, node in enumerate(g[cell]):
                a[f"{cell}.{n}.inputs"] = tuple(node["inputs"])
                a[f"{cell}.{n}.op_a"], a[f"{cell}.{n}.op_b"] = node["ops"]
        return a

    def _validate_cell(self, data: dict) -> Genotype:
        cells = validate_model(_Cells, data, "genotype")
        out: Genotype = {}
        for cell in CELL_TYPES:
            nodes = getattr(cells, cell)
            if len(nodes) != self.blocks:
                raise InvalidGenotype(f"genotype.{cell}: has {len(nodes)} nodes; this space has {self.blocks}")
            normalised = []
            for n, node in enumerate(nodes):
                where = f"genotype.{cell}[{n}]"
                for k, i in enumerate(node.inputs):
                    check_input(f"{where}.inputs[{k}]", i, 2 + n)
                if node.inputs[0] == node.inputs[1]:
                    raise InvalidGenotype(f"{where}.inputs: the two inputs must differ (got {list(node.inputs)})")
                for k, op in enumerate(node.ops):
                    check_choice(f"{where}.ops[{k}]", op, self.operations)
                # Inputs ascending, each op travelling with its input.
                pairs = sorted(zip(node.inputs, node.ops))
                normalised.append({"inputs": [p[0] for p in pairs], "ops": [p[1] for p in pairs]})
            out[cell] = normalised
        return out

    def _canonical_cell(self, g: Genotype) -> str:
        parts = []
        for cell in CELL_TYPES:
            blocks = [("add", list(zip(n["inputs"], n["ops"]))) for n in g[cell]]
            parts.append(f"{cell}=" + expression_canonical(blocks, [2 + n for n in range(len(blocks))]))
        return "/".join(parts)
