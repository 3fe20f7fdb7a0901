"""Weight inheritance: start a child network from its parent's weights.

A child that differs from its parent in a few decisions (an evolution
mutation, a local-search neighbour) copies the weights of every part whose
position and operation are unchanged; the changed parts start fresh (Real et
al. 2017; LEMONADE, Elsken et al. 2019). The parts are read off the names the
builder gives its modules (kubenas/nn/networks.py, cells.py):

- NAS-Bench-201: `cells.{i}.edges.{k}.*` is edge k (in `EDGES` order) of cell i;
  every cell repeats the same six operations.
- NASNet and DARTS: `cells.{i}.ops.{k}.*` and `cells.{i}.adapters.{k}.*` are
  operand k of cell i, that is side k % 2 of block k // 2 of the cell's kind
  (normal or reduction); an operand is unchanged when both its input and its
  operation are (the input decides the stride and what the weights were
  trained on).
- Everything else (stem, the cells' preprocessing and output reductions,
  NAS-Bench-201's residual blocks, the classifier, the auxiliary head) belongs
  to no decision and copies whenever the shapes match.

A tensor copies only when its shape matches too, so a child whose channels
differ (a concat block upstream, another macro configuration) never receives
a wrong-shaped weight: those tensors keep their fresh initialisation.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from kubenas.spaces import space_of
from kubenas.spaces.nasbench201 import parse_cellstr

SHARED = ("shared",)  # the part of layers that belong to no decision


def _cell_kinds(model: nn.Module) -> list[str]:
    """normal/reduction for each cell of a NASNet/DARTS network (the builder's own flags)."""
    return ["reduction" if getattr(cell, "reduction", False) else "normal" for cell in model.cells]


def _part(name: str, genotype: dict, kinds: list[str]) -> Optional[tuple]:
    """The genotype part a tensor belongs to: SHARED, a signature of the decision
    that built it (equal signatures: same position, same operation), or None
    where the genotype has no such position (the tensor cannot be matched)."""
    parts = name.split(".")
    if parts[0] != "cells" or len(parts) < 4:
        return SHARED
    cell, group, k = int(parts[1]), parts[2], parts[3]
    if genotype["space"] == "nasbench201":
        if group != "edges":
            return SHARED
        ops = parse_cellstr(genotype["cell"])
        return ("edge", int(k), ops[int(k)]) if int(k) < len(ops) else None
    if group not in ("ops", "adapters"):
        return SHARED  # pre0, pre1, output_reduce: shape-checked only
    if cell >= len(kinds):
        return None
    kind = kinds[cell]
    block, side = divmod(int(k), 2)
    blocks = genotype[kind]
    if block >= len(blocks):
        return None
    return (kind, block, side, blocks[block]["inputs"][side], blocks[block]["ops"][side])


def inherit_weights(child_model: nn.Module, child_genotype: dict, parent_tensors: dict[str, torch.Tensor],
                    parent_genotype: dict) -> dict[str, int]:
    """Copy into `child_model` (built for `child_genotype`) every tensor of the parent's
    state dict (`parent_tensors`, e.g. read from a safetensors checkpoint) whose part is
    unchanged and whose shape matches. Both networks must come from the same macro
    configuration for the cells to line up; a mismatch is caught by the shape check.

    Returns {"copied": tensors copied, "fresh": tensors left as initialised,
    "copied_parameters": trainable values copied}.
    """
    if child_genotype.get("space") != parent_genotype.get("space"):
        raise ValueError(f"inherit_weights: the parent is a {parent_genotype.get('space')!r} genotype, "
                         f"the child a {child_genotype.get('space')!r} one")
    child_genotype = space_of(child_genotype).validate_architecture(child_genotype)
    parent_genotype = space_of(parent_genotype).validate_architecture(parent_genotype)
    kinds = _cell_kinds(child_model) if child_genotype["space"] != "nasbench201" else []
    parent_cells = {int(n.split(".")[1]) for n in parent_tensors if n.startswith("cells.")}
    child_cells = {int(n.split(".")[1]) for n, _ in child_model.state_dict().items() if n.startswith("cells.")}
    same_depth = parent_cells == child_cells
    parameters = {name for name, _ in child_model.named_parameters()}

    copied = fresh = copied_parameters = 0
    with torch.no_grad():
        for name, tensor in child_model.state_dict().items():  # shares storage with the model
            source = parent_tensors.get(name)
            part = _part(name, child_genotype, kinds)
            unchanged = (
                source is not None and part is not None
                and (part == SHARED or (same_depth and part == _part(name, parent_genotype, kinds)))
                and tuple(source.shape) == tuple(tensor.shape)
            )
            if not unchanged:
                fresh += 1
                continue
            tensor.copy_(source)
            copied += 1
            if name in parameters:
                copied_parameters += tensor.numel()
    return {"copied": copied, "fresh": fresh, "copied_parameters": copied_parameters}
