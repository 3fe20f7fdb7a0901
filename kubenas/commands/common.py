"""Small helpers shared by CLI commands: readable failures instead of tracebacks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kubenas.errors import KubenasError
from kubenas.spaces import Genotype, space_of


def fail(message: str) -> int:
    print(f"kubenas: error: {message}", file=sys.stderr)
    return 2


def read_genotype(path: str) -> Genotype:
    """A genotype from a JSON file ('-' for stdin), validated against its space."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KubenasError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return space_of(data).validate_architecture(data)


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise KubenasError(f"--input: expected CxHxW such as 3x32x32, got {text!r}") from None
    return c, h, w
