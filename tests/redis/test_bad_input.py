"""Bad input at the queue's and the trainer's edges: refused at start with one line naming
the field, the value and what is accepted; never a traceback, never a password."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from kubenas.errors import InvalidSpec
from kubenas.local.redis_server import RedisServer
from kubenas.queue.connection import check, connect
from kubenas.queue.keys import SearchKeys

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("namespace, name, field", [
    ("my namespace", "search", "namespace"),  # Redis refuses client names with spaces
    ("Team", "search", "namespace"),
    ("ns\n", "search", "namespace"),
    ("ns", "my search", "name"),
    ("ns", "-search", "name"),
    ("ns", "s" * 254, "name"),
])
def test_a_search_name_redis_or_kubernetes_would_refuse_is_refused(namespace, name, field):
    with pytest.raises(InvalidSpec) as err:
        SearchKeys(namespace, name)
    message = str(err.value)
    assert message.startswith(f"{field}: ") and "lowercase letters, digits" in message and "\n" not in message
    assert len(message) < 300


def test_names_kubernetes_accepts_are_accepted():
    keys = SearchKeys("team-a", "search.v2-1")
    assert keys.prefix == "kubenas:team-a/search.v2-1"


def test_a_database_index_that_is_not_a_number_is_refused_without_the_password():
    with pytest.raises(InvalidSpec) as err:
        connect("redis://:hunter2@localhost:6379/zero")
    message = str(err.value)
    assert message.startswith("--redis-url: the database index 'zero'") and "0-15" in message
    assert "hunter2" not in message and ":***@" in message


def test_a_database_index_out_of_range_is_refused_at_start_without_the_password(tmp_path: Path):
    with RedisServer(tmp_path / "r", password="hunter2") as server:
        good = f"redis://:hunter2@127.0.0.1:{server.port}/15"
        assert check(connect(good), good) is True
        bad = f"redis://:hunter2@127.0.0.1:{server.port}/99"
        with pytest.raises(InvalidSpec) as err:
            check(connect(bad), bad)
        message = str(err.value)
        assert message.startswith("--redis-url: the database index 99") and "out of range" in message
        assert "hunter2" not in message
        wrong = f"redis://:nope@127.0.0.1:{server.port}/0"
        with pytest.raises(InvalidSpec, match="refused the password"):
            check(connect(wrong), wrong)
    # Unreachable is not a configuration error: the process waits for Redis to come up.
    assert check(connect(good, socket_timeout=1), good) is False


def trainer(*flags: str, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubenas_trainer", "--name", "search", "--metrics-port", "-1",
                           *flags], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **(env or {})))


def refused_with(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("flags, needles", [
    (("--threads", "-1"), ("--threads: -1", "1 or more")),
    (("--threads", "0"), ("--threads: 0", "1 or more")),
    (("--metrics-port", "70000"), ("--metrics-port: 70000", "1-65535")),
    (("--lease-seconds", "-5"), ("--lease-seconds: -5", "above 0")),
    (("--lease-seconds", "nan"), ("--lease-seconds: nan", "above 0")),
    (("--device", "gpu"), ("--device: 'gpu'", "auto, cpu, cuda or cuda:N")),
    (("--max-trials", "0"), ("--max-trials: 0", "1 or more")),
    (("--trainer-id", "my trainer"), ("--trainer-id: 'my trainer'", "without spaces")),
    (("--namespace", "My Team"), ("namespace: 'My Team'", "lowercase letters")),
])
def test_the_trainer_refuses_bad_flags_at_start(flags, needles):
    refused_with(trainer(*flags, "--redis-url", "redis://127.0.0.1:1/0"), *needles)


def test_the_trainer_refuses_cuda_on_a_machine_without_a_gpu():
    for device in ("cuda", "cuda:1"):
        line = refused_with(trainer("--device", device, "--redis-url", "redis://127.0.0.1:1/0",
                                    env={"CUDA_VISIBLE_DEVICES": ""}), f"--device: {device!r}")
        assert "no CUDA GPU" in line and "auto or cpu" in line


def test_the_trainer_refuses_a_database_index_out_of_range(tmp_path: Path):
    with RedisServer(tmp_path / "r", password="hunter2") as server:
        line = refused_with(trainer("--redis-url", f"redis://:hunter2@127.0.0.1:{server.port}/99"),
                            "--redis-url: the database index 99", "out of range")
        assert "hunter2" not in line
