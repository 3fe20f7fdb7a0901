"""Tabular benchmarks: one row per architecture with its validation and test accuracy.

A table is a CSV with the columns `cellstr`, `val_acc` and `test_acc` (more
columns are ignored). A learning-curve table also has `val_acc_e1` ..
`val_acc_eE` and `test_acc_e1` .. `test_acc_eE`: the accuracies after each
of E epochs of the same training run, so a trial trained for e epochs reads
epoch e (see kubenas.bench.curves); `parameters` and `multiply_adds`, when
present, are the cell's costs; `val_acc_s0` .. `val_acc_sK`, when present, each training
seed's final validation accuracy (val_acc is their mean), so a benchmark can give a trial
one training's noisy reward instead of the mean (kubenas.bench.harness, reward "one-seed").
`cellstr` is a NAS-Bench-201 cell string (`|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`) or a
genotype as JSON (any space of kubenas, named by its `space` field). The search space is the one the cells
belong to; for NAS-Bench-201 strings, restricted to the operations that occur.
Rows are keyed by the space's canonical hash, so the harness looks results up
the same way the dedup layer recognises repeats.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from kubenas.errors import DatasetError, InvalidGenotype, KubenasError
from kubenas.objectives import COST_KEYS
from kubenas.spaces import Genotype, SearchSpace, build_space, space_of
from kubenas.spaces.nasbench201 import NB201_OPERATIONS, parse_cellstr

REQUIRED = ("cellstr", "val_acc", "test_acc")
# Column -> the key of a trial's cost dict.
COST_COLUMNS = {"parameters": COST_KEYS["parameters"], "multiply_adds": COST_KEYS["multiplyAdds"]}


@dataclass
class TableRow:
    cellstr: str
    val_acc: float
    test_acc: float
    val_curve: tuple[float, ...] = ()  # after epoch 1, 2, ... (learning-curve tables only)
    test_curve: tuple[float, ...] = ()
    cost: Optional[dict[str, float]] = None  # params, multiply_adds (when the table has them)
    val_seeds: tuple[float, ...] = ()  # each training seed's final val_acc (tables that keep them)


class Table:
    def __init__(self, path: str, space: SearchSpace, entries: dict[str, TableRow], epochs: Optional[int] = None):
        self.path = path
        self.space = space
        self.entries = entries  # space hash -> entry
        self.epochs = epochs  # E for a learning-curve table (every entry has E epochs); None otherwise
        self._edges: Optional[list[tuple[tuple[str, ...], TableRow]]] = None

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, genotype: Genotype) -> Optional[TableRow]:
        return self.entries.get(self.space.hash(genotype))

    def nearest(self, genotype: Genotype) -> TableRow:
        """The row whose NAS-Bench-201 cell differs from the genotype's in the fewest edges
        (ties: the earliest row). On a table of part of the space this stands in for a cell
        it lacks, as the nearest-neighbour surrogate of the whole space."""
        if self._edges is None:
            if any(row.cellstr.startswith("{") for row in self.entries.values()):
                raise KubenasError(f"{self.path}: the nearest cell is defined for NAS-Bench-201 cell strings only")
            self._edges = [(tuple(parse_cellstr(row.cellstr)), row) for row in self.entries.values()]
        ops = tuple(parse_cellstr(genotype["cell"]))
        return min(self._edges, key=lambda edges_row: sum(a != b for a, b in zip(edges_row[0], ops)))[1]

    @property
    def best_val(self) -> TableRow:
        return max(self.entries.values(), key=lambda e: e.val_acc)


def _number(text: str, column: str, line: int, path: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}, line {line}: {column} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise DatasetError(f"{path}, line {line}: {column} must be finite, got {text!r}")
    return value


def load_table(path: str | Path) -> Table:
    """Read and check a benchmark table; errors name the file, line and column."""
    path = str(path)
    if not Path(path).is_file():
        raise DatasetError(f"{path}: no such file (a CSV with columns {', '.join(REQUIRED)})")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; the header must name "
                                   f"{', '.join(REQUIRED)} (found {', '.join(header) or 'no header'})")
            epochs = _curve_epochs(header, path)
            curve_columns = [f"{kind}_acc_e{e}" for kind in ("val", "test") for e in range(1, (epochs or 0) + 1)]
            cost_columns = [c for c in COST_COLUMNS if c in header]
            seed_columns = sorted((c for c in header if c.startswith("val_acc_s") and c[9:].isdigit()),
                                  key=lambda c: int(c[9:]))
            raw = []
            for line, row in enumerate(reader, start=2):
                if None in row or any(row.get(c) is None for c in header):
                    raise DatasetError(f"{path}, line {line}: expected {len(header)} fields as in the header")
                curves = [_number(row[c], c, line, path) for c in curve_columns]
                cost = {COST_COLUMNS[c]: _number(row[c], c, line, path) for c in cost_columns} or None
                seeds = tuple(_number(row[c], c, line, path) for c in seed_columns)
                raw.append((line, row["cellstr"].strip(), _number(row["val_acc"], "val_acc", line, path),
                            _number(row["test_acc"], "test_acc", line, path), curves, cost, seeds))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise DatasetError(f"{path}: not a readable CSV ({exc})") from None
    if not raw:
        raise DatasetError(f"{path}: the table has a header but no rows")

    json_cells = raw[0][1].startswith("{")
    if json_cells:
        space = _json_space(raw, path)
    else:
        used = set()
        for line, cell, *_ in raw:
            try:
                used.update(parse_cellstr(cell))
            except InvalidGenotype as exc:
                raise DatasetError(f"{path}, line {line}: cellstr is not a NAS-Bench-201 cell string nor a JSON "
                                   f"genotype: {exc}") from None
        space = build_space({"type": "nasbench201", "operations": [op for op in NB201_OPERATIONS if op in used]})

    entries: dict[str, TableRow] = {}
    first_line: dict[str, int] = {}
    for line, cell, val, test, curves, cost, seeds in raw:
        try:
            genotype = space.from_json(cell) if json_cells else {"space": space.name, "cell": cell, "hparams": {}}
            key = space.hash(genotype)
        except InvalidGenotype as exc:
            raise DatasetError(f"{path}, line {line}: {exc}") from None
        if key in entries:
            raise DatasetError(f"{path}, line {line}: the same architecture as line {first_line[key]}; "
                               "each architecture may appear once")
        half = len(curves) // 2
        entries[key] = TableRow(cell, val, test, tuple(curves[:half]), tuple(curves[half:]), cost, seeds)
        first_line[key] = line
    return Table(path, space, entries, epochs)


def _curve_epochs(header: list[str], path: str) -> Optional[int]:
    """E when the header has val_acc_e1..val_acc_eE and test_acc_e1..test_acc_eE; None without curves."""
    found = {kind: sorted(int(c[len(kind) + 6:]) for c in header
                          if c.startswith(f"{kind}_acc_e") and c[len(kind) + 6:].isdigit())
             for kind in ("val", "test")}
    if not found["val"] and not found["test"]:
        return None
    epochs = max(found["val"] + found["test"])
    for kind, numbers in found.items():
        if numbers != list(range(1, epochs + 1)):
            absent = sorted(set(range(1, epochs + 1)) - set(numbers))
            raise DatasetError(f"{path}: a learning-curve table needs {kind}_acc_e1 .. {kind}_acc_e{epochs}; "
                               f"missing {', '.join(f'{kind}_acc_e{e}' for e in absent)}")
    return epochs


def _json_space(raw: list, path: str) -> SearchSpace:
    line, cell = raw[0][0], raw[0][1]
    try:
        genotype = json.loads(cell)
        space = space_of(genotype)
    except (json.JSONDecodeError, InvalidGenotype) as exc:
        raise DatasetError(f"{path}, line {line}: cellstr is neither a NAS-Bench-201 cell string nor a "
                           f"genotype as JSON: {exc}") from None
    if genotype.get("hparams"):
        raise DatasetError(f"{path}, line {line}: tables of genotypes with hyperparameters are not supported "
                           "(the harness cannot know their ranges)")
    return build_space(space.name)
