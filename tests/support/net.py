"""Network helpers for tests."""

from __future__ import annotations

from kubenas.local.redis_server import free_port  # one definition: the embedded Redis picks its port with it

__all__ = ["free_port"]
