"""Small helpers shared by CLI commands: readable failures instead of tracebacks."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable

from kubenas.errors import KubenasError
from kubenas.files import read_bounded
from kubenas.spaces import Genotype, load_genotype

MAX_GENOTYPE_BYTES = 1 << 20


def fail(message: str) -> int:
    print(f"kubenas: error: {message}", file=sys.stderr)
    return 2


def whole_number_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from low to high, refused in one line otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; use {low} to {high}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not accepted; use {low} to {high}")
        return value

    return parse


def number_in(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] ((low, high] with low_open)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
            raise argparse.ArgumentTypeError(
                f"{text} is not accepted; use a number {'above' if low_open else 'from'} {low:g} "
                f"{'and at most' if low_open else 'to'} {high:g}")
        return value

    return parse


def read_genotype(path: str) -> Genotype:
    """A genotype from a JSON file ('-' for stdin), validated against its space."""
    data = read_bounded(path, MAX_GENOTYPE_BYTES, path, hint="a genotype is a small JSON file", stdin_dash=True)
    return load_genotype(data, path)


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        c, h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise KubenasError(f"--input: expected CxHxW such as 3x32x32, got {text!r}") from None
    if not (1 <= c <= 64 and 1 <= h <= 4096 and 1 <= w <= 4096):
        raise KubenasError(f"--input: {text!r} is not accepted; channels 1 to 64, height and width 1 to 4096")
    return c, h, w
