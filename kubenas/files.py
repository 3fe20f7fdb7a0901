"""Files at the edges: a person's file read with a bound on its size (a wrong path cannot fill
memory), and files written whole or not at all."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Callable, Union

from kubenas.errors import KubenasError


def read_bounded(path: Union[str, os.PathLike], limit: int, where: str, *, hint: str = "",
                 error: Callable[[str], Exception] = KubenasError, stdin_dash: bool = False) -> bytes:
    """The bytes of `path`, or `error` saying '<where>: cannot read it: ...' or '<where>: larger than ...'.

    Reads at most limit + 1 bytes: pipes and devices report size 0, so only the read itself bounds them.
    With stdin_dash, the path '-' means standard input.
    """
    try:
        if stdin_dash and str(path) == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
    except OSError as exc:
        raise error(f"{where}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > limit:
        size = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"
        raise error(f"{where}: larger than {size}" + (f"; {hint}" if hint else ""))
    return data


def write_atomic(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write under a temporary name, then rename: a reader sees the old file or the new, never half
    of one. With fsync the bytes are on disk before the rename, so a crash cannot leave it empty."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
