"""Fixtures of the `kubenas run` tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.local.support import Cli


@pytest.fixture()
def clis():
    """Start CLIs through this; whatever still runs at the end is killed (its children die with it)."""
    started: list[Cli] = []

    def start(*args: str, **kwargs: Any) -> Cli:
        cli = Cli(*args, **kwargs)
        started.append(cli)
        return cli

    yield start
    for cli in started:
        cli.kill()
