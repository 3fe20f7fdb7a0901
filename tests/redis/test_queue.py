"""The queue protocol against a real redis-server, one operation at a time."""

from __future__ import annotations

import subprocess
import time

import pytest
import redis

from kubenas.queue.keys import SearchKeys
from kubenas.queue.messages import ResultMessage, TrialMessage, decode_entry, DeadLetterMessage
from kubenas.queue.connection import connect, redact
from kubenas.queue.controller_side import ControllerQueue, Limits, RejectedEntry
from kubenas.queue.trainer_side import Claim, TrainerQueue
from kubenas.spec import TrainingSpec

pytestmark = pytest.mark.redis

GENOTYPE = {"space": "nasbench201", "cell": "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|", "hparams": {}}


def trial(keys: SearchKeys, trial_id: str = "t000000", **kw) -> TrialMessage:
    return TrialMessage(search=keys.search, trial_id=trial_id, genotype=GENOTYPE, epochs=1,
                        training=TrainingSpec(), **kw)


def result(keys: SearchKeys, claim: Claim, **kw) -> ResultMessage:
    return ResultMessage(**{"search": keys.search, "trial_id": claim.trial.trial_id, "trainer": "a",
                            "attempt": claim.attempt, "status": "succeeded", "reward": 0.5, **kw})


LEASE = 0.3


@pytest.fixture()
def queue(redis_server, keys) -> ControllerQueue:
    """The controller's side."""
    q = ControllerQueue(connect(redis_server.url), keys)
    q.ensure_groups()
    return q


def trainer(queue: ControllerQueue, consumer: str) -> TrainerQueue:
    """A trainer process's side of the same queue."""
    return TrainerQueue(queue.r, queue.keys, consumer, lease_seconds=LEASE)


def other(queue: ControllerQueue) -> ControllerQueue:
    """A second controller process's view of the same queue."""
    return ControllerQueue(queue.r, queue.keys)


def test_publishing_is_idempotent(queue, keys):
    first = queue.publish([trial(keys)])
    again = queue.publish([trial(keys)])
    assert first["t000000"][1] is True and again["t000000"] == (first["t000000"][0], False)
    assert queue.r.xlen(keys.trials) == 1
    queue.r.xdel(keys.trials, first["t000000"][0])  # the entry is lost (e.g. Redis lost data)
    third = queue.publish([trial(keys)])
    assert third["t000000"][1] is True and queue.r.xlen(keys.trials) == 1


def test_a_heartbeat_keeps_the_lease_and_an_expired_lease_moves_the_trial(queue, keys):
    queue.publish([trial(keys)])
    a, b = trainer(queue, "a"), trainer(queue, "b")
    claim = a.claim(block_ms=10)
    assert isinstance(claim, Claim) and claim.attempt == 1 and not claim.reclaimed
    for _ in range(4):  # heartbeats for longer than the lease: nobody takes it over
        time.sleep(0.15)
        assert a.heartbeat(claim) == (True, None)
        assert b.claim(block_ms=10) is None
    time.sleep(0.4)  # no heartbeat past the lease
    taken = b.claim(block_ms=10)
    assert isinstance(taken, Claim) and taken.reclaimed and taken.attempt == 2
    assert taken.trial == claim.trial
    owned, _ = a.heartbeat(claim)
    assert owned is False  # the old owner learns it lost the trial


def test_a_trainer_whose_lease_was_taken_over_cannot_settle_the_new_owners_trial(queue, keys):
    queue.publish([trial(keys, max_attempts=1)])
    a, b = trainer(queue, "a"), trainer(queue, "b")
    stale = a.claim(block_ms=10)
    time.sleep(LEASE + 0.2)  # a stops heartbeating past its lease
    taken = b.claim(block_ms=10)
    assert isinstance(taken, Claim) and taken.reclaimed

    def pending_owners() -> list[str]:
        return [p["consumer"].decode() for p in queue.r.xpending_range(keys.trials, "trainers", "-", "+", 10)]

    assert a.acknowledge(stale) is False  # refused: the entry is b's now
    assert pending_owners() == ["b"]
    assert a.dead_letter(stale, result(keys, stale, status="failed", reward=None, error="x")) is False
    assert a.retry_later(stale, "RuntimeError: late") is False and a.hand_back(stale) is False
    assert pending_owners() == ["b"] and queue.r.xlen(keys.dead_letter) == 0 and a.last_error("t000000") is None
    # a's late result is kept (the controller applies the first result of a trial), b's entry stays.
    assert a.complete(stale, result(keys, stale)) is False
    assert pending_owners() == ["b"] and queue.r.xlen(keys.results) == 1
    assert b.heartbeat(taken) == (True, None)  # b trains on, undisturbed
    assert b.complete(taken, result(keys, taken)) is True and pending_owners() == []


def test_an_error_hands_the_trial_back_at_once_and_costs_an_attempt(queue, keys):
    queue.publish([trial(keys)])
    a = trainer(queue, "a")
    claim = a.claim(block_ms=10)
    assert a.retry_later(claim, "CUDA error: out of memory")
    again = trainer(queue, "b").claim(block_ms=10)  # no lease wait
    assert isinstance(again, Claim) and again.attempt == 2
    assert a.last_error("t000000") == "CUDA error: out of memory"


def test_sigterm_hand_back_does_not_cost_an_attempt(queue, keys):
    queue.publish([trial(keys)])
    a = trainer(queue, "a")
    claim = a.claim(block_ms=10)
    assert a.hand_back(claim)
    again = trainer(queue, "b").claim(block_ms=10)
    assert isinstance(again, Claim) and again.attempt == 1 and again.reclaimed
    assert a.hand_back(claim) is False  # no longer its trial


def test_completing_posts_the_result_and_acknowledges_atomically(queue, keys):
    queue.publish([trial(keys)])
    a = trainer(queue, "a")
    claim = a.claim(block_ms=10)
    a.complete(claim, result(keys, claim))
    assert queue.r.xpending(keys.trials, "trainers")["pending"] == 0
    entries, rejected = queue.read(block_ms=10)
    assert not rejected and [e.message.trial_id for e in entries] == ["t000000"]
    queue.ack(results=[entries[0].entry_id], finished=["t000000"])
    # Everything about the trial is gone: bounded by what is in flight.
    assert queue.r.xlen(keys.trials) == 0 and queue.r.xlen(keys.results) == 0
    assert not queue.r.hexists(keys.dispatched, "t000000")


def test_a_suspend_withdraws_only_the_trials_no_trainer_has_read(queue, keys):
    queue.publish([trial(keys, f"t{i:06d}") for i in range(4)])
    a, b = trainer(queue, "a"), trainer(queue, "b")
    running = a.claim(block_ms=10)  # t000000: read, training
    done = b.claim(block_ms=10)  # t000001: trained; its result is on the way to the controller
    assert b.complete(done, result(keys, done)) is True
    queue.r.xdel(keys.trials, queue.r.hget(keys.dispatched, "t000003"))  # t000003: its entry lost (trimmed)
    assert queue.withdraw(["t000000", "t000001", "t000002", "t000003"]) == ["t000002", "t000003"]
    assert trainer(queue, "c").claim(block_ms=10) is None  # nothing left to hand out
    assert a.heartbeat(running) == (True, None)  # the running trial is untouched
    assert not queue.r.hexists(keys.dispatched, "t000002") and not queue.r.hexists(keys.dispatched, "t000003")
    assert queue.r.hexists(keys.dispatched, "t000000") and queue.r.hexists(keys.dispatched, "t000001")


def test_a_trainer_reading_while_the_controller_withdraws_gets_each_trial_or_not_never_both(queue, keys):
    """The check and the delete are one step: a trial is either read by a trainer (it runs) or
    withdrawn, never both and never neither, however the two interleave."""
    import threading

    ids = [f"t{i:06d}" for i in range(300)]
    queue.publish([trial(keys, trial_id) for trial_id in ids])
    read: list[str] = []
    stop = threading.Event()

    def read_all() -> None:  # a trainer taking trials as fast as it can, on its own connection
        reader = TrainerQueue(queue.r, keys, "a", lease_seconds=600)  # the client's pool: a connection each
        while not stop.is_set():
            claim = reader.claim(block_ms=5)
            if isinstance(claim, Claim):
                read.append(claim.trial.trial_id)

    thread = threading.Thread(target=read_all)
    thread.start()
    withdrawn: list[str] = []
    try:
        while len(read) < 20:  # withdraw while the trainer is busy reading
            time.sleep(0.001)
        for start in range(0, len(ids), 10):
            withdrawn += queue.withdraw(ids[start:start + 10])
    finally:
        stop.set()
        thread.join(10)
    assert read and withdrawn  # both happened
    assert not set(read) & set(withdrawn)
    assert sorted(read + withdrawn) == ids


def test_the_controller_rereads_unacknowledged_results_after_a_restart(queue, keys):
    queue.publish([trial(keys)])
    a = trainer(queue, "a")
    claim = a.claim(block_ms=10)
    a.complete(claim, result(keys, claim))
    entries, _ = queue.read(block_ms=10)
    assert len(entries) == 1
    restarted = other(queue)  # a new controller process: reads its own pending entries first
    again, _ = restarted.read(block_ms=10)
    assert [e.entry_id for e in again] == [entries[0].entry_id]


def test_dead_letter(queue, keys):
    queue.publish([trial(keys, max_attempts=1)])
    a = trainer(queue, "a")
    claim = a.claim(block_ms=10)
    a.retry_later(claim, "RuntimeError: boom")
    b = trainer(queue, "b")
    over = b.claim(block_ms=10)
    assert over.attempt == 2 > over.trial.max_attempts
    b.dead_letter(over, result(keys, over, status="failed", reward=None, error="failed 1 attempts; boom"))
    letters = queue.r.xrange(keys.dead_letter)
    assert decode_entry(letters[0][1], DeadLetterMessage).trial.trial_id == "t000000"
    entries, _ = queue.read(block_ms=10)
    assert entries[0].message.status == "failed" and "boom" in entries[0].message.error
    assert queue.r.xpending(keys.trials, "trainers")["pending"] == 0


def test_malformed_entries_are_rejected_and_removed(queue, keys):
    for payload in (b"not json", b'{"v": 1, "kind": "trial"}', b"\x00\xff" * 10, b"x" * 100_000):
        queue.r.xadd(keys.trials, {b"m": payload})
    queue.r.xadd(keys.trials, {b"wrong": b"field"})
    queue.r.xadd(keys.results, {b"m": b'{"truncated": '})
    queue.r.xadd(keys.progress, {b"m": b"[]"})
    a = trainer(queue, "a")
    outcomes = [a.claim(block_ms=10) for _ in range(5)]
    assert all(isinstance(o, RejectedEntry) for o in outcomes), outcomes
    assert queue.r.xlen(keys.trials) == 0  # deleted, so no trainer sees them again
    entries, rejected = queue.read(block_ms=10)
    assert not entries and {r.stream for r in rejected} == {"results", "progress"}


def test_messages_for_another_search_are_rejected(queue, keys):
    stranger = trial(SearchKeys("other", "search"))
    queue.r.xadd(keys.trials, {b"m": stranger.encode()})
    got = trainer(queue, "a").claim(block_ms=10)
    assert isinstance(got, RejectedEntry) and "not" in got.reason


def test_searches_sharing_one_redis_use_separate_keys(redis_server):
    a, b = SearchKeys("ns", "one"), SearchKeys("ns", "two")
    qa, qb = (ControllerQueue(connect(redis_server.url), k) for k in (a, b))
    for q, k in ((qa, a), (qb, b)):
        q.ensure_groups()
        q.publish([trial(k)])
    assert all(key.startswith(a.prefix + ":") for key in a.all())
    assert not set(a.all()) & set(b.all())
    assert trainer(qa, "x").claim(block_ms=10).trial.search == "ns/one"
    assert trainer(qb, "x").claim(block_ms=10).trial.search == "ns/two"


def test_streams_are_capped(redis_server, keys):
    q = TrainerQueue(connect(redis_server.url), keys, "a", limits=Limits(progress=500))
    q.ensure_groups()
    from kubenas.queue.messages import ProgressMessage

    message = ProgressMessage(search=keys.search, trial_id="t1", trainer="a", attempt=1, epoch=1)
    for _ in range(20):
        pipe = q.r.pipeline(transaction=False)
        for _ in range(250):
            pipe.xadd(keys.progress, {b"m": message.encode()}, maxlen=500, approximate=True)
        pipe.execute()
    q.report_progress(message)
    assert q.r.xlen(keys.progress) < 700  # 5,001 added; MAXLEN ~ 500 trims by whole nodes


def test_urls_with_a_password(tmp_path, monkeypatch):
    from kubenas.local.redis_server import RedisServer

    with RedisServer(tmp_path / "r", password="s3cret/+:x") as server:
        assert connect(f"redis://:{'s3cret%2F%2B%3Ax'}@127.0.0.1:{server.port}/0").ping()
        with pytest.raises(redis.AuthenticationError):
            connect(f"redis://127.0.0.1:{server.port}/0").ping()
        monkeypatch.setenv("KUBENAS_REDIS_PASSWORD", "s3cret/+:x")
        assert connect(f"redis://127.0.0.1:{server.port}/0").ping()
    assert redact("redis://:hunter2@host:6379/0") == "redis://:***@host:6379/0"


def test_tls_with_a_password(tmp_path, keys):
    from kubenas.local.redis_server import RedisServer, free_port

    ca, cert, key = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    ca_key = tmp_path / "ca.key"

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
            "-days", "1", "-subj", "/CN=kubenas test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(tmp_path / "server.csr"),
            "-subj", "/CN=127.0.0.1")
    (tmp_path / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", str(tmp_path / "server.csr"), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(tmp_path / "ext.cnf"))
    port = free_port()
    server = RedisServer(tmp_path / "r", port=free_port(), password="pw", extra=(
        "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"))
    with server:
        url = f"rediss://:pw@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
        q = ControllerQueue(connect(url), keys)
        q.ensure_groups()
        q.publish([trial(keys)])
        assert trainer(q, "a").claim(block_ms=10).trial.trial_id == "t000000"
        with pytest.raises(redis.ConnectionError):  # plain TCP to the TLS port fails
            connect(f"redis://:pw@127.0.0.1:{port}/0", socket_timeout=2).ping()
