"""The contract every search space keeps.

A genotype is plain JSON-safe data (a dict with a `space` key); a space knows
how to sample, validate, canonicalise and hash it, and how to map it to and
from the flat decision assignment strategies work with.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from abc import ABC, abstractmethod
from typing import Any

from pydantic import BaseModel, ValidationError

from kubenas.errors import InvalidGenotype, InvalidSpec, describe_validation_error
from kubenas.spaces.config import INTEGER_HYPERPARAMETERS, SearchSpaceSpec
from kubenas.spaces.decisions import (
    Assignment,
    Categorical,
    Decision,
    Numeric,
    sample_assignment,
)

Genotype = dict[str, Any]
HP_PREFIX = "hp."


def hyperparameter_decisions(spec: SearchSpaceSpec) -> list[Decision]:
    decisions: list[Decision] = []
    for hp in spec.hyperparameters:
        name = HP_PREFIX + hp.name
        if hp.type == "categorical":
            decisions.append(Categorical(name, tuple(hp.choices or ())))
        else:
            integer = hp.type == "int" or hp.name in INTEGER_HYPERPARAMETERS
            decisions.append(Numeric(name, float(hp.low), float(hp.high), log=hp.log, integer=integer))
    return decisions


class SearchSpace(ABC):
    name: str

    def __init__(self, spec: SearchSpaceSpec | None = None):
        self.spec = spec or SearchSpaceSpec(type=self.name)
        self.hp_decisions = hyperparameter_decisions(self.spec)

    # --- what each space defines -------------------------------------------------
    @property
    @abstractmethod
    def cell_decisions(self) -> list[Decision]:
        """The architecture's decisions, in the order a controller samples them."""

    @abstractmethod
    def _decode_cell(self, assignment: Assignment) -> Genotype:
        """Architecture part of a genotype from an assignment (no `space`, no `hparams`)."""

    @abstractmethod
    def _encode_cell(self, genotype: Genotype) -> Assignment:
        """Inverse of `_decode_cell`, for a validated genotype."""

    @abstractmethod
    def _validate_cell(self, data: dict) -> Genotype:
        """Check the architecture part against this space; returns the normalised form."""

    @abstractmethod
    def _canonical_cell(self, genotype: Genotype) -> str:
        """A string equal for equal architectures and different otherwise."""

    # --- shared behaviour ----------------------------------------------------------
    @property
    def decisions(self) -> list[Decision]:
        return self.cell_decisions + self.hp_decisions

    def sample(self, rng: random.Random) -> Genotype:
        return self.decode(sample_assignment(self.decisions, rng))

    def decode(self, assignment: Assignment) -> Genotype:
        genotype = {"space": self.name, **self._decode_cell(assignment)}
        genotype["hparams"] = {d.name[len(HP_PREFIX):]: assignment[d.name] for d in self.hp_decisions}
        return genotype

    def encode(self, genotype: Genotype) -> Assignment:
        genotype = self.validate(genotype)
        assignment = self._encode_cell(genotype)
        assignment.update({HP_PREFIX + k: v for k, v in genotype["hparams"].items()})
        return assignment

    def validate(self, data: Any) -> Genotype:
        """Return the normalised genotype or raise InvalidGenotype naming the field."""
        if isinstance(data, (str, bytes)):
            return self.from_json(data)
        genotype = self.validate_architecture(data)
        genotype["hparams"] = self._validate_hparams(data.get("hparams", {}))
        return genotype

    def validate_architecture(self, data: Any) -> Genotype:
        """Validate the cell only, passing `hparams` through: what a model builder
        needs, since which hyperparameters are searched is the search's business."""
        if not isinstance(data, dict):
            raise InvalidGenotype(f"genotype: expected a JSON object, got {type(data).__name__}")
        if data.get("space") != self.name:
            raise InvalidGenotype(f"genotype.space: {data.get('space')!r} is not accepted here; expected {self.name!r}")
        body = {k: v for k, v in data.items() if k not in ("space", "hparams")}
        hparams = data.get("hparams", {})
        if not isinstance(hparams, dict):
            raise InvalidGenotype(f"genotype.hparams: expected an object, got {type(hparams).__name__}")
        return {"space": self.name, **self._validate_cell(body), "hparams": _check_hparam_values(hparams)}

    def _validate_hparams(self, hparams: Any) -> dict:
        if not isinstance(hparams, dict):
            raise InvalidGenotype(f"genotype.hparams: expected an object, got {type(hparams).__name__}")
        expected = {d.name[len(HP_PREFIX):]: d for d in self.hp_decisions}
        unknown = set(hparams) - set(expected)
        if unknown:
            raise InvalidGenotype(
                f"genotype.hparams: {sorted(unknown)} are not searched here; accepted: {sorted(expected) or 'none'}"
            )
        missing = set(expected) - set(hparams)
        if missing:
            raise InvalidGenotype(f"genotype.hparams: missing {sorted(missing)}")
        out = {}
        for key, decision in expected.items():
            try:
                out[key] = decision.validate(hparams[key])
            except InvalidGenotype as exc:
                raise InvalidGenotype(f"genotype.hparams.{str(exc).removeprefix(HP_PREFIX)}") from None
        return out

    def canonical(self, genotype: Genotype) -> str:
        # Hyperparameters are hashed as given: which ones a search may set is checked
        # by `validate` where genotypes enter a search, not here.
        genotype = self.validate_architecture(genotype)
        hp = json.dumps(genotype["hparams"], sort_keys=True, separators=(",", ":"))
        return f"{self.name}:{self._canonical_cell(genotype)}|hp={hp}"

    def hash(self, genotype: Genotype) -> str:
        """Stable across processes and versions: equal architectures hash equal."""
        return hashlib.sha256(self.canonical(genotype).encode()).hexdigest()[:16]

    @staticmethod
    def to_json(genotype: Genotype) -> str:
        return json.dumps(genotype, sort_keys=True, separators=(",", ":"))

    def from_json(self, text: str | bytes) -> Genotype:
        return self.validate(parse_json(text))


# A genotype is a few levels deep ({"concat": {"normal": [...]}}); anything far deeper
# is a mistake, refused before it can exhaust the interpreter's recursion limit.
MAX_JSON_DEPTH = 32


def parse_json(text: str | bytes, where: str = "genotype") -> Any:
    """JSON text of a genotype as Python data, or InvalidGenotype saying what is wrong:
    not UTF-8, not JSON, nested too deeply, or a number JSON cannot hold (NaN, Infinity)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidGenotype(f"{where} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                                  f"{exc.start}); a genotype is a JSON file") from None
    try:
        data = json.loads(text, parse_constant=_NonFinite, parse_float=_float_or_non_finite)
    except json.JSONDecodeError as exc:
        raise InvalidGenotype(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InvalidGenotype(f"{where}: JSON nested too deeply; a genotype is at most "
                              f"{MAX_JSON_DEPTH} levels deep") from None
    _check_depth(data, where)
    _check_finite(data)
    return data


class _NonFinite(str):
    """A number JSON spelled but a float cannot be used as (NaN, Infinity, 1e400), as written."""


def _float_or_non_finite(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _check_finite(data: Any) -> None:
    """Non-finite numbers are refused, naming where they stand (genotype.hparams.epochs)."""
    stack: list[tuple[Any, str]] = [(data, "genotype")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, _NonFinite):
            raise InvalidGenotype(f"{path}: {value} is not accepted; give a finite number")
        if isinstance(value, dict):
            stack.extend((v, f"{path}.{k}") for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))


def _check_depth(data: Any, where: str) -> None:
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidGenotype(f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep; "
                                  "a genotype is a few levels deep")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children)


def _check_hparam_values(hparams: dict) -> dict:
    """Passed-through hyperparameters still name a training field and stay within its
    bounds (as training checks them): `epochs: Infinity` must not wait for a trainer."""
    from kubenas.spec import HYPERPARAMETER_BOUNDS, TrainingSpec  # spec imports the spaces' config

    unknown = set(hparams) - set(HYPERPARAMETER_BOUNDS)
    if unknown:
        raise InvalidGenotype(f"genotype.hparams: {sorted(unknown)} are not hyperparameters; "
                              f"accepted: {sorted(HYPERPARAMETER_BOUNDS)}")
    try:
        TrainingSpec.model_validate(hparams)
    except ValidationError as exc:
        raise InvalidGenotype(describe_validation_error(exc, "genotype.hparams")) from None
    return dict(hparams)


def validate_model(model: type[BaseModel], data: Any, prefix: str) -> BaseModel:
    """Structural validation with a readable, field-naming message."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidGenotype(describe_validation_error(exc, prefix)) from None


def check_learnable(operations: tuple[str, ...]) -> None:
    """Refuse an operation list whose every cell computes zero: nothing could learn."""
    if set(operations) <= {"none"}:
        raise InvalidSpec(f"searchSpace.operations: {list(operations)} is not accepted; with only 'none' every cell "
                          "outputs zero and no architecture can learn; add an operation with weights or a skip")


def check_choice(field: str, value: str, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise InvalidGenotype(f"{field}: {value!r} is not accepted; choose one of {list(accepted)}")


def check_input(field: str, value: int, limit: int) -> None:
    if not 0 <= value < limit:
        raise InvalidGenotype(f"{field}: input {value} is out of range; accepted 0..{limit - 1} "
                              "(0 and 1 are the cell inputs, 2+j is block j)")


def expression_canonical(blocks: list[tuple[str, list[tuple[int, str]]]], outputs: list[int]) -> str:
    """Canonical form of a cell DAG under block reordering and operand swapping.

    Each block is (combine, [(input, op), ...]); an input below 2 is a cell input.
    A block's expression inlines its inputs' expressions with operands sorted,
    and the cell is the sorted multiset of its output states' expressions
    (`outputs` are hidden-state indices: 0, 1 the cell inputs, 2+j block j).
    """
    memo: dict[int, str] = {}

    def expr(state: int) -> str:
        if state < 2:
            return f"in{state}"
        if state not in memo:
            combine, operands = blocks[state - 2]
            parts = sorted(f"{op}({expr(src)})" for src, op in operands)
            memo[state] = f"{combine}[{','.join(parts)}]"
        return memo[state]

    return "out{" + ";".join(sorted(expr(state) for state in outputs)) + "}"
