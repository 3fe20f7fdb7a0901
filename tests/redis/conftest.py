"""Fixtures for tests against a REAL redis-server.

A missing redis-server fails these tests (never skips them): install it with
`apt-get install redis-server` (./dev test does).
"""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from kubenas.local.redis_server import RedisServer  # noqa: E402
from kubenas.queue.keys import SearchKeys  # noqa: E402


def _require_redis_server() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on the PATH: these tests need a real one "
                    "(apt-get install redis-server, or run ./dev test)")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """One real redis-server for the session (AOF on), on a free loopback port."""
    _require_redis_server()
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def own_redis(tmp_path: Path):
    """A redis-server of this test's own, for tests that stop, kill or pause it."""
    _require_redis_server()
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def keys() -> SearchKeys:
    """A search of its own on the shared Redis."""
    return SearchKeys("test", f"s-{uuid.uuid4().hex[:10]}")
