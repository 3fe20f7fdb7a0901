"""The operator's two messages through a search's Redis.

- in: the controller's summary (kubenas:{ns}/{name}:summary), copied into the status;
- out: the live spec (kubenas:{ns}/{name}:live-spec): the budget, suspend and a
  revision (metadata.generation). The controller polls it and applies a newer
  revision within a second, without a restart. It is rewritten on every
  reconcile and every status poll: idempotent, and a Redis that restarted
  without persistence gets it back.

Failures come back as a `Problem` (a condition's reason and message), never as
an exception: the RedisReachable condition says what is wrong.
"""

from __future__ import annotations

from typing import Optional

import redis
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from kubenas.errors import InvalidSpec
from kubenas.queue.connection import redact
from kubenas.queue.keys import SearchKeys
from kubenas.queue.live_spec import LiveSpec, write_live_spec
from kubenas.spec import ArchitectureSearch, SearchSummary

from kubenas_operator import builders
from kubenas_operator.kube import api_message
from kubenas_operator.runtime import Runtime
from kubenas_operator.status import Problem

# The reasons of RedisReachable=False (their Warning Events are forgotten once Redis answers).
REDIS_PROBLEMS = ("SecretNotFound", "SecretForbidden", "SecretUnreadable", "SecretKeyMissing", "InvalidURL",
                  "Unreachable", "AuthenticationFailed", "SummaryInvalid", "RedisError")


class RedisProblem(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.problem = Problem(reason, message)


def live_spec(manifest: ArchitectureSearch, generation: int) -> LiveSpec:
    """What may change while the search runs, stamped with the object's generation."""
    return LiveSpec(budget=manifest.spec.budget, suspend=manifest.spec.suspend, revision=generation)


def redis_url(runtime: Runtime, ref: builders.SearchRef, manifest: ArchitectureSearch) -> str:
    """Where the search's Redis is; RedisProblem when that cannot be known."""
    redis_spec = manifest.spec.redis
    if redis_spec.mode == "managed":
        if runtime.settings.redis_url_override:  # the documented test seam
            return runtime.settings.redis_url_override
        password = builders.derive_redis_password(runtime.settings.require_password_key(), ref.namespace, ref.name)
        return builders.managed_redis_url(ref, password)
    assert redis_spec.url_secret is not None
    secret, key = redis_spec.url_secret.name, redis_spec.url_secret.key
    try:
        url = runtime.kube.read_secret_value(ref.namespace, secret, key)
    except ApiException as exc:
        if exc.status == 404:
            raise RedisProblem("SecretNotFound", f"Secret {ref.namespace}/{secret} (redis.urlSecret) does not exist")
        if exc.status == 403:
            sa = f"{runtime.settings.operator_namespace}:{runtime.settings.service_account}"
            raise RedisProblem("SecretForbidden", (
                f"the operator may not read Secret {ref.namespace}/{secret} (redis.urlSecret); grant it with: "
                f"kubectl -n {ref.namespace} create role kubenas-redis-url --verb=get --resource=secrets "
                f"--resource-name={secret} && kubectl -n {ref.namespace} create rolebinding kubenas-redis-url "
                f"--role=kubenas-redis-url --serviceaccount={sa}"))
        raise RedisProblem("SecretUnreadable", f"reading Secret {ref.namespace}/{secret}: {api_message(exc)}")
    if not url:
        raise RedisProblem("SecretKeyMissing", f"Secret {ref.namespace}/{secret} has no key {key!r} (redis.urlSecret.key)")
    return url


def exchange(runtime: Runtime, ref: builders.SearchRef, manifest: ArchitectureSearch
             ) -> tuple[Optional[SearchSummary], Optional[Problem]]:
    """Write the live spec, read the summary (None until the controller published one)."""
    try:
        url = redis_url(runtime, ref, manifest)
        client = runtime.redis_client(url)
    except RedisProblem as exc:
        return None, exc.problem
    except InvalidSpec as exc:
        return None, Problem("InvalidURL", f"redis.urlSecret: {exc}")
    keys = SearchKeys(ref.namespace, ref.name)
    where = redact(url)
    try:
        write_live_spec(client, keys, live_spec(manifest, ref.generation))
        raw = client.get(keys.summary)
    except redis.AuthenticationError:
        runtime.drop_redis_client(url)
        return None, Problem("AuthenticationFailed", f"Redis at {where} refused the password")
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        runtime.drop_redis_client(url)
        text = str(exc).replace(url, where)
        return None, Problem("Unreachable", f"cannot reach the search's Redis at {where}: {text}"[:1000])
    except redis.RedisError as exc:
        return None, Problem("RedisError", f"Redis at {where}: {type(exc).__name__}: {exc}"[:1000])
    if raw is None:
        return None, None
    try:
        return SearchSummary.model_validate_json(raw), None
    except ValidationError as exc:
        return None, Problem("SummaryInvalid", f"the controller's summary is not valid: {exc.errors()[0]['msg']}")


def push_live_spec(runtime: Runtime, ref: builders.SearchRef, manifest: ArchitectureSearch) -> Optional[Problem]:
    """Right after a spec change, so a running controller hears of it at once (best effort:
    a Redis that is not up yet gets the record from the next status poll)."""
    _, problem = exchange(runtime, ref, manifest)
    return problem
