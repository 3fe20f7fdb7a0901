"""Waiting for something to happen, in tests: poll, and fail with what was awaited."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 60.0, interval: float = 0.25, *,
             details: Optional[Callable[[], str]] = None, logs: Sequence[Path] = ()) -> Any:
    """Poll `probe()` every `interval` seconds until it returns something truthy, and return that.
    A probe may assert: an AssertionError counts as "not yet". After `timeout` seconds, fail
    naming `what` and the last value, with `details()` and the tails of `logs` if given."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except AssertionError as exc:
            value = exc
        if value and not isinstance(value, AssertionError):
            return value
        if time.monotonic() > deadline:
            extra = [details()] if details is not None else []
            extra += [f"--- {p.name}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                      for p in logs if p.exists()]
            raise AssertionError("\n".join([f"timed out after {timeout:g}s waiting for {what} (last: {value!r})",
                                            *extra]))
        time.sleep(interval)
