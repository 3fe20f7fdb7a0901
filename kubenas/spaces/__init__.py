"""Search spaces: sampling, validation, canonical forms and hashes of genotypes."""

from __future__ import annotations

from typing import Any

from kubenas.errors import InvalidGenotype
from kubenas.spaces.base import Genotype, SearchSpace
from kubenas.spaces.config import HyperparameterSpec, SearchSpaceSpec
from kubenas.spaces.darts import DartsSpace
from kubenas.spaces.nasbench201 import NasBench201Space
from kubenas.spaces.nasnet import NasnetSpace

SPACES: dict[str, type[SearchSpace]] = {cls.name: cls for cls in (NasnetSpace, DartsSpace, NasBench201Space)}


def build_space(spec: SearchSpaceSpec | dict | str | None = None) -> SearchSpace:
    """A space from its spec section, a dict of it, or just its name."""
    if spec is None:
        spec = SearchSpaceSpec()
    elif isinstance(spec, str):
        spec = SearchSpaceSpec(type=spec)
    elif isinstance(spec, dict):
        spec = SearchSpaceSpec.model_validate(spec)
    return SPACES[spec.type](spec)


def space_of(genotype: Any) -> SearchSpace:
    """The unrestricted space a genotype names in its `space` field."""
    name = genotype.get("space") if isinstance(genotype, dict) else None
    if name not in SPACES:
        raise InvalidGenotype(f"genotype.space: {name!r} is not accepted; choose one of {sorted(SPACES)}")
    return build_space(name)


__all__ = [
    "SPACES", "SearchSpace", "SearchSpaceSpec", "HyperparameterSpec", "Genotype",
    "NasnetSpace", "DartsSpace", "NasBench201Space", "build_space", "space_of",
]
