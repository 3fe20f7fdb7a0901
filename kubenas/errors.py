"""Errors a person can act on: each names the field, the value and what is accepted."""

from __future__ import annotations

from pydantic import ValidationError


class KubenasError(Exception):
    """Base for every error kubenas raises on purpose."""


class InvalidGenotype(KubenasError, ValueError):
    """A genotype that does not belong to its search space."""


class InvalidSpec(KubenasError, ValueError):
    """A manifest or configuration that cannot be used."""


class DatasetError(KubenasError):
    """A dataset that is unknown, missing or malformed."""


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """Turn a pydantic error into short lines of `field: problem (got value)`."""
    lines = []
    errors = exc.errors()
    for err in errors[:3]:
        path = ".".join(str(p) for p in err["loc"])
        where = f"{prefix}.{path}" if prefix and path else (prefix or path or "<root>")
        got = err.get("input")
        got_text = "" if err["type"] == "missing" else f" (got {_short(got)})"
        lines.append(f"{where}: {err['msg']}{got_text}")
    if len(errors) > 3:
        lines.append(f"and {len(errors) - 3} more")
    return "; ".join(lines)


def _short(value: object, limit: int = 60) -> str:
    import reprlib

    # Bounded before rendering: an alias-expanded value can be gigabytes as a full repr.
    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxtuple, r.maxset = 3, limit, limit, 4, 4, 4, 4
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
