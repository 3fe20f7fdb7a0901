"""The message models: validated on both ends, bounded, and `decode` never crashes its caller."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubenas.queue.messages import (
    MAX_MESSAGE_BYTES,
    ControlMessage,
    DeadLetterMessage,
    MessageRejected,
    ProgressMessage,
    ResultMessage,
    TrialMessage,
    clip_error,
    decode,
    decode_entry,
)
from kubenas.spec import TrainingSpec

GENOTYPE = {"space": "nasbench201", "cell": "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|"
                                            "nor_conv_3x3~1|skip_connect~2|", "hparams": {}}


def trial(**kw) -> TrialMessage:
    return TrialMessage(**{"search": "ns/s", "trial_id": "t000001", "genotype": GENOTYPE, "epochs": 3,
                           "training": TrainingSpec(), **kw})


def result(**kw) -> ResultMessage:
    return ResultMessage(**{"search": "ns/s", "trial_id": "t000001", "trainer": "trainer-0", "attempt": 1,
                            "status": "succeeded", "reward": 0.9, "curve": [0.5, 0.9], "cost": {"params": 1e4},
                            **kw})


def test_every_message_round_trips_through_json():
    messages = [trial(fidelity=1, scheduled=True), result(),
                result(status="failed", reward=None, error="boom"),
                ProgressMessage(search="ns/s", trial_id="t1", trainer="x", attempt=2, epoch=3, val_acc=0.5),
                ControlMessage(action="stop", epoch=2, epochs=2, reason="below the median"),
                DeadLetterMessage(search="ns/s", trial_id="t1", attempts=3, error="OOM", trial=trial())]
    for message in messages:
        data = message.encode()
        assert json.loads(data)  # plain JSON on the wire
        assert decode(data, type(message)) == message


def test_the_training_spec_travels_in_camel_case_as_in_manifests():
    data = json.loads(trial(training=TrainingSpec(batch_size=32)).encode())
    assert data["training"]["batchSize"] == 32


@pytest.mark.parametrize("data, reason", [
    (b"", "not JSON"),
    (b"{", "not JSON"),
    (b"\xff\xfe\x00", "not UTF-8"),
    (b"[1, 2]", "expected a JSON object"),
    (b"[" * 50_000, "nested too deeply"),
    (b'{"a":' * 10_000, "not JSON"),
    (b"x" * (MAX_MESSAGE_BYTES + 1), "over the limit"),
    (json.dumps({"v": 2}).encode(), "not a ResultMessage"),
    (None, "expected bytes"),
])
def test_garbage_is_rejected_with_a_reason(data, reason):
    with pytest.raises(MessageRejected, match=reason):
        decode(data, ResultMessage)


def test_every_truncation_of_a_valid_message_is_rejected():
    data = result().encode()
    for cut in range(len(data)):
        with pytest.raises(MessageRejected):
            decode(data[:cut], ResultMessage)


@pytest.mark.parametrize("change, field", [
    ({"reward": float("nan")}, "reward"),
    ({"reward": 1.5}, "reward"),
    ({"reward": None}, "needs a reward"),
    ({"status": "failed", "reward": None}, "needs an error"),
    ({"trial_id": "../../etc"}, "trial_id"),
    ({"curve": [0.1] * 1001}, "curve"),
    ({"error": "x" * 5000}, "error"),
    ({"attempt": 0}, "attempt"),
])
def test_results_are_validated(change, field):
    data = json.loads(result().encode())
    data.update(change)
    with pytest.raises(MessageRejected, match=field):
        decode(json.dumps(data).encode(), ResultMessage)


def test_a_message_of_another_kind_is_rejected():
    with pytest.raises(MessageRejected, match="kind"):
        decode(trial().encode(), ResultMessage)


def test_encode_refuses_a_message_over_the_limit():
    with pytest.raises(MessageRejected, match="over the limit"):
        trial(genotype={"space": "nasnet", "junk": "x" * MAX_MESSAGE_BYTES}).encode()


def test_unknown_fields_are_ignored_for_rolling_upgrades():
    data = json.loads(result().encode())
    data["added_in_a_later_version"] = {"anything": 1}
    assert decode(json.dumps(data).encode(), ResultMessage) == result()


def test_stream_entries_must_hold_exactly_the_payload_field():
    good = {b"m": result().encode()}
    assert decode_entry(good, ResultMessage).reward == 0.9
    for fields in ({}, {b"x": b"1"}, {b"m": result().encode(), b"extra": b"1"}, None, [b"m"]):
        with pytest.raises(MessageRejected):
            decode_entry(fields, ResultMessage)


def test_clip_error_keeps_errors_within_bounds():
    text = "start " + "x" * 10_000 + " the end"
    clipped = clip_error(text)
    assert len(clipped) <= 2000 and clipped.startswith("start") and clipped.endswith("the end")
    result(status="failed", reward=None, error=clipped)  # fits the model


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_decode_never_raises_anything_but_rejection(data):
    for model in (TrialMessage, ResultMessage, ProgressMessage, ControlMessage):
        try:
            decode(data, model)
        except MessageRejected:
            pass


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children,
                                                                                     max_size=5), max_leaves=30))
def test_decode_of_arbitrary_json_never_raises_anything_but_rejection(value):
    data = json.dumps(value).encode()
    for model in (TrialMessage, ResultMessage, ProgressMessage, ControlMessage):
        try:
            decode(data, model)
        except MessageRejected:
            pass
