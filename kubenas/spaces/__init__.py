"""Search spaces: sampling, validation, canonical forms and hashes of genotypes."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kubenas.errors import InvalidGenotype, InvalidSpec, describe_validation_error
from kubenas.spaces.base import Genotype, SearchSpace, parse_json
from kubenas.spaces.config import MAX_BLOCKS, HyperparameterSpec, SearchSpaceSpec
from kubenas.spaces.darts import DartsSpace
from kubenas.spaces.nasbench201 import NasBench201Space
from kubenas.spaces.nasnet import CELL_TYPES, NasnetSpace

SPACES: dict[str, type[SearchSpace]] = {cls.name: cls for cls in (NasnetSpace, DartsSpace, NasBench201Space)}


def build_space(spec: SearchSpaceSpec | dict | str | None = None) -> SearchSpace:
    """A space from its spec section, a dict of it, or just its name."""
    try:
        if spec is None:
            spec = SearchSpaceSpec()
        elif isinstance(spec, str):
            spec = SearchSpaceSpec(type=spec)
        elif isinstance(spec, dict):
            spec = SearchSpaceSpec.model_validate(spec)
    except ValidationError as exc:
        raise InvalidSpec(describe_validation_error(exc, "searchSpace")) from None
    return SPACES[spec.type](spec)


def space_of(genotype: Any) -> SearchSpace:
    """The unrestricted space a genotype belongs to: the one its `space` field names,
    with as many blocks per cell as the genotype has (a search may set `blocks`)."""
    name = genotype.get("space") if isinstance(genotype, dict) else None
    if not isinstance(name, str) or name not in SPACES:
        raise InvalidGenotype(f"genotype.space: {_short(name)} is not accepted; choose one of {sorted(SPACES)}")
    if name == "nasbench201":
        return build_space(name)
    counts = [len(genotype[cell]) for cell in CELL_TYPES if isinstance(genotype.get(cell), list)]
    if not counts:
        return build_space(name)  # validation names the missing cells
    # The larger count, so a cell with fewer blocks is the one named as wrong.
    blocks = max(counts)
    if not 1 <= blocks <= MAX_BLOCKS:
        cell = next(c for c in CELL_TYPES if isinstance(genotype.get(c), list) and len(genotype[c]) == blocks)
        raise InvalidGenotype(f"genotype.{cell}: has {blocks} blocks; accepted 1..{MAX_BLOCKS}")
    return build_space({"type": name, "blocks": blocks})


def load_genotype(text: str | bytes, where: str = "genotype") -> Genotype:
    """A genotype from JSON text, its cell validated against the space it names
    (its hyperparameters pass through: which are searched is a search's business)."""
    data = parse_json(text, where)
    if not isinstance(data, dict):
        raise InvalidGenotype(f"{where}: a genotype is a JSON object with a space field; got a {type(data).__name__}")
    return space_of(data).validate_architecture(data)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


__all__ = [
    "SPACES", "SearchSpace", "SearchSpaceSpec", "HyperparameterSpec", "Genotype",
    "NasnetSpace", "DartsSpace", "NasBench201Space", "build_space", "space_of", "load_genotype", "MAX_BLOCKS",
]
