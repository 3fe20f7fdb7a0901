"""Connecting to Redis and living through its outages.

Every Redis failure surfaces as redis.ConnectionError / TimeoutError (or a
transient error reply such as LOADING during a restart); the processes' loops
retry those with `Backoff`, and `Outage` logs when an outage starts and ends
rather than every retry. The queue's operations are safe to repeat.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ReadOnlyError, ResponseError
from redis.retry import Retry

from kubenas.errors import InvalidSpec

# What a process retries with backoff (BusyLoadingError is a ConnectionError;
# ReadOnlyError comes from a replica during a failover).
RETRYABLE = (redis.ConnectionError, redis.TimeoutError, ReadOnlyError)

# Error replies that pass (a full Redis, a failover): retried with backoff like a lost connection.
TRANSIENT_REPLIES = ("OOM", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "LOADING", "READONLY", "NOREPLICAS", "BUSY")

URL_FORMS = "redis://[:password@]host:port/db, rediss://... for TLS, or unix:///path/to/socket"


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, RETRYABLE):
        return True
    return isinstance(exc, ResponseError) and str(exc).split(" ", 1)[0].upper() in TRANSIENT_REPLIES


def redact(url: str) -> str:
    """The URL with its password replaced by ***, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def database_index(url: str) -> int:
    """The database index a URL selects (its path, or `?db=`); 0 when it names none."""
    parts = urlsplit(url)
    raw = parse_qs(parts.query).get("db", [""])[0]
    if not raw and parts.scheme in ("redis", "rediss"):
        raw = parts.path.lstrip("/")
    if not raw:
        return 0
    if not raw.isdigit():
        raise InvalidSpec(f"--redis-url: the database index {raw!r} in {redact(url)!r} is not accepted: "
                          "use a whole number from 0 to the server's `databases` setting minus one (0-15 by default)")
    return int(raw)


def connect(url: str, *, password: Optional[str] = None, client_name: Optional[str] = None,
            socket_timeout: float = 5.0) -> redis.Redis:
    """A client for `redis://[user:password@]host:port/db` or `rediss://` (TLS; e.g.
    `?ssl_cert_reqs=required&ssl_ca_certs=/etc/redis/ca.crt`). The password may instead
    come from `password` or the environment variable KUBENAS_REDIS_PASSWORD.
    Connects lazily: an unreachable Redis shows up on the first command (see `check`)."""
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise InvalidSpec(f"--redis-url: {redact(url)!r} is not accepted; use {URL_FORMS}")
    database_index(url)
    kwargs: dict[str, Any] = dict(
        socket_timeout=socket_timeout, socket_connect_timeout=5.0, socket_keepalive=True,
        health_check_interval=15, client_name=client_name,
        # One immediate retry covers a pooled connection that died with a Redis restart;
        # outages are handled by the processes' own backoff, which logs and counts them.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )
    password = password or os.environ.get("KUBENAS_REDIS_PASSWORD") or None
    if password and not urlsplit(url).password:
        kwargs["password"] = password
    try:
        return redis.Redis.from_url(url, **kwargs)
    except (ValueError, TypeError) as exc:
        raise InvalidSpec(f"--redis-url: {redact(url)!r} cannot be used: {exc}") from None


def check(client: redis.Redis, url: str) -> bool:
    """One round trip at start-up. True when Redis answered, False when it is unreachable
    for now (the caller's loop retries); InvalidSpec for what no retry can fix: a database
    index the server does not have, a wrong password, a refused client name."""
    try:
        client.ping()
        return True
    except AuthenticationError as exc:
        raise InvalidSpec(f"--redis-url: Redis at {redact(url)!r} refused the password ({exc}); "
                          "set it in the URL or KUBENAS_REDIS_PASSWORD") from None
    except ResponseError as exc:
        text = str(exc)
        if "DB index" in text or "invalid DB" in text.lower():
            raise InvalidSpec(f"--redis-url: the database index {database_index(url)} in {redact(url)!r} is out of "
                              "range for this Redis server: use 0 to its `databases` setting minus one "
                              "(0-15 by default)") from None
        if is_transient(exc):
            return False
        if "NOAUTH" in text or "WRONGPASS" in text:
            raise InvalidSpec(f"--redis-url: Redis at {redact(url)!r} needs a password: {text}") from None
        raise InvalidSpec(f"--redis-url: Redis at {redact(url)!r} refused the connection: {text}") from None
    except RETRYABLE:
        return False


class Backoff:
    """Exponential backoff with jitter: base, 2*base, ... up to cap seconds."""

    def __init__(self, base: float = 0.1, cap: float = 5.0, rng: Optional[random.Random] = None):
        self.base, self.cap = base, cap
        self.attempt = 0
        self.rng = rng or random.Random()

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt = min(self.attempt + 1, 30)
        return delay * (0.5 + 0.5 * self.rng.random())

    def reset(self) -> None:
        self.attempt = 0


class Outage:
    """One process's view of Redis being unreachable: logs when an outage starts
    and ends (not every retry), and sleeps with backoff between attempts."""

    def __init__(self, logger: logging.Logger, on_error: Optional[Callable[[], Any]] = None,
                 backoff: Optional[Backoff] = None):
        self.log = logger
        self.on_error = on_error
        self.backoff = backoff or Backoff()
        self.since: Optional[float] = None
        self.errors = 0

    def noticed(self, exc: BaseException) -> None:
        """Count and log a failed call (without waiting)."""
        self.errors += 1
        if self.on_error is not None:
            self.on_error()
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("Redis is unreachable (%s: %s); retrying with backoff", type(exc).__name__, exc)
        else:
            self.log.debug("Redis still unreachable (%s)", exc)

    def failed(self, exc: BaseException, stop: Optional[threading.Event] = None) -> None:
        """Count and log a failed call, then wait before the next attempt."""
        self.noticed(exc)
        delay = self.backoff.next_delay()
        if stop is not None:
            stop.wait(delay)
        else:
            time.sleep(delay)

    def ok(self) -> bool:
        """Call after a successful round trip; True when this ended an outage."""
        if self.since is None:
            return False
        self.log.warning("Redis is reachable again after %.1f s (%d failed attempts)",
                         time.monotonic() - self.since, self.errors)
        self.since = None
        self.errors = 0
        self.backoff.reset()
        return True
