"""The NAS-Bench-201 cell space (Dong & Yang 2020).

Four nodes; node j sums one operation on every earlier node i < j, so six
edges with five operations each (15,625 cells). The genotype keeps the
benchmark's own cell string, so results can be looked up in its tables.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, StrictStr

from kubenas.errors import InvalidGenotype, InvalidSpec
from kubenas.spaces.base import Genotype, SearchSpace, check_learnable, validate_model
from kubenas.spaces.decisions import Assignment, Categorical, Decision

NB201_OPERATIONS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NODES = 4
# (to, from) for the six edges, in the order the cell string lists them.
EDGES: tuple[tuple[int, int], ...] = tuple((j, i) for j in range(1, NODES) for i in range(j))


class _Cell(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cell: StrictStr


def format_cellstr(ops: list[str]) -> str:
    """`|op~0|+|op~0|op~1|+|op~0|op~1|op~2|` from the six edge operations."""
    nodes, k = [], 0
    for j in range(1, NODES):
        nodes.append("|" + "|".join(f"{ops[k + i]}~{i}" for i in range(j)) + "|")
        k += j
    return "+".join(nodes)


def parse_cellstr(text: str, operations: tuple[str, ...] = NB201_OPERATIONS) -> list[str]:
    """The six edge operations of a cell string, or InvalidGenotype saying what is wrong."""
    nodes = text.split("+")
    if len(nodes) != NODES - 1:
        raise InvalidGenotype(f"genotype.cell: expected {NODES - 1} nodes separated by '+', got {len(nodes)} in {text!r}")
    ops: list[str] = []
    for j, node in enumerate(nodes, start=1):
        if not (node.startswith("|") and node.endswith("|")):
            raise InvalidGenotype(f"genotype.cell: node {j} must be written |op~i|...|, got {node!r}")
        edges = node[1:-1].split("|")
        if len(edges) != j:
            raise InvalidGenotype(f"genotype.cell: node {j} needs {j} edges, got {len(edges)} in {node!r}")
        for i, edge in enumerate(edges):
            op, sep, src = edge.partition("~")
            if not sep or src != str(i):
                raise InvalidGenotype(f"genotype.cell: node {j} edge {i} must read '<op>~{i}', got {edge!r}")
            if op not in operations:
                raise InvalidGenotype(f"genotype.cell: {op!r} is not accepted; choose one of {list(operations)}")
            ops.append(op)
    return ops


class NasBench201Space(SearchSpace):
    name = "nasbench201"

    def __init__(self, spec=None):
        super().__init__(spec)
        if self.spec.blocks is not None or self.spec.combines is not None:
            raise InvalidSpec("searchSpace: blocks and combines do not apply to nasbench201 (its cell is fixed)")
        subset = self.spec.operations
        for op in subset or ():
            if op not in NB201_OPERATIONS:
                raise InvalidSpec(f"searchSpace.operations: {op!r} is not accepted; choose from {list(NB201_OPERATIONS)}")
        self.operations = tuple(op for op in NB201_OPERATIONS if subset is None or op in subset)
        check_learnable(self.operations)

    @property
    def cell_decisions(self) -> list[Decision]:
        return [Categorical(f"edge.{j}<-{i}", self.operations) for j, i in EDGES]

    def _decode_cell(self, a: Assignment) -> Genotype:
        return {"cell": format_cellstr([a[f"edge.{j}<-{i}"] for j, i in EDGES])}

    def _encode_cell(self, g: Genotype) -> Assignment:
        return {f"edge.{j}<-{i}": op for (j, i), op in zip(EDGES, parse_cellstr(g["cell"]))}

    def _validate_cell(self, data: dict) -> Genotype:
        cell = validate_model(_Cell, data, "genotype").cell
        return {"cell": format_cellstr(parse_cellstr(cell, self.operations))}

    def _canonical_cell(self, g: Genotype) -> str:
        # The benchmark indexes cells by their exact string, isomorphic ones included.
        return g["cell"]
